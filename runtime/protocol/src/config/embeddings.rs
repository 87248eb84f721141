//! `[embeddings]`: the model answers OpenAI's `POST /v1/embeddings`.

use super::*;

/// `[embeddings]`: which of the model's tensors an OpenAI-compatible embeddings request
/// uses. The model then answers `POST /v1/embeddings` and is listed by `GET /v1/models`.
///
/// ```toml
/// [embeddings]
/// input = "text"        # a BYTES input, shape [-1]: the texts, one element each
/// output = "embedding"  # an FP32 output, shape [-1, N]: one vector per text
/// tokens = "tokens"     # optional: an INT64 output, shape [-1], each text's token count
/// ```
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Embeddings {
    /// The BYTES input, shape `[-1]`, that takes the texts; it must be the model's only input.
    pub input: String,
    /// The FP32 output, shape `[-1, N]`, with one vector per text.
    pub output: String,
    /// An INT64 output, shape `[-1]`, with the number of tokens the model's tokenizer made
    /// of each text: what `usage` reports. Without it `usage` reports 0 tokens.
    pub tokens: Option<String>,
}

impl Embeddings {
    /// The tensors named exist with the datatypes and shapes above.
    pub(super) fn check(&self, inputs: &[TensorSpec], outputs: &[TensorSpec]) -> anyhow::Result<()> {
        let input = named("embeddings", inputs, "input", &self.input)?;
        anyhow::ensure!(
            input.datatype == Datatype::Bytes && input.shape.len() == 1 && inputs.len() == 1,
            "`embeddings.input`: '{}' must be the model's only input, BYTES with shape [-1]",
            self.input
        );
        let output = named("embeddings", outputs, "output", &self.output)?;
        anyhow::ensure!(
            output.datatype == Datatype::Fp32 && output.shape.len() == 2,
            "`embeddings.output`: '{}' must be FP32 with shape [-1, N]",
            self.output
        );
        if let Some(tokens) = &self.tokens {
            let tokens = named("embeddings", outputs, "output", tokens)?;
            anyhow::ensure!(
                tokens.datatype == Datatype::Int64 && tokens.shape.len() == 1,
                "`embeddings.tokens`: '{}' must be INT64 with shape [-1]",
                tokens.name
            );
        }
        Ok(())
    }
}
