//! embeddings: `POST /v1/embeddings`, one OIP inference of a model with `[embeddings]`.

use super::{OneInference, Usage, fp32s, oip_request, output, serve, texts_tensor, tokens};
use crate::config::{Embeddings, ModelConfig};
use crate::decode::InferRequest;
use crate::error::{Error, Result};
use crate::pipeline::AppState;
use crate::tensor::Tensor;
use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use base64::Engine;
use serde::{Deserialize, Serialize};

/// Most texts in one request (OpenAI's own limit).
const MAX_INPUTS: usize = 2048;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct EmbeddingsRequest {
    input: Input,
    model: String,
    #[serde(default)]
    encoding_format: Format,
    dimensions: Option<usize>,
    /// Accepted and ignored.
    #[serde(rename = "user")]
    _user: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Input {
    One(String),
    Many(Vec<String>),
    /// Token ids (a list of integers, or of lists): not supported.
    Other(serde::de::IgnoredAny),
}

#[derive(Deserialize, Default, Clone, Copy, PartialEq)]
#[serde(rename_all = "lowercase")]
enum Format {
    #[default]
    Float,
    /// Each vector's little-endian FP32 bytes, in base64 (what the `openai` package asks for).
    Base64,
}

impl Input {
    fn texts(&self) -> Result<Vec<&str>> {
        let texts = match self {
            Input::One(text) => vec![text.as_str()],
            Input::Many(texts) => texts.iter().map(String::as_str).collect(),
            Input::Other(_) => {
                return Err(Error::bad_request(
                    "'input' must be a string or a list of strings: token arrays are not supported, send the text",
                ));
            }
        };
        if texts.is_empty() || texts.len() > MAX_INPUTS {
            return Err(Error::bad_request(format!(
                "'input' must hold 1 to {MAX_INPUTS} texts, not {}",
                texts.len()
            )));
        }
        Ok(texts)
    }
}

#[derive(Serialize)]
pub(super) struct EmbeddingsResponse {
    object: &'static str,
    data: Vec<Embedding>,
    model: String,
    usage: Usage,
}

#[derive(Serialize)]
struct Embedding {
    object: &'static str,
    index: usize,
    embedding: Vector,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Vector {
    Float(Vec<f32>),
    Base64(String),
}

/// `POST /v1/embeddings`.
pub(super) async fn embeddings(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    serve::<EmbeddingsRequest>(state, headers, body, "embeddings").await
}

/// The `[embeddings]` of the model `name` with `config`, or why it does not answer
/// `/v1/embeddings`.
fn embeddings_of<'c>(name: &str, config: &'c ModelConfig) -> Result<&'c Embeddings> {
    config.embeddings.as_ref().ok_or_else(|| {
        Error::bad_request(format!(
            "model '{name}' is not an embedding model (its model.toml has no [embeddings])"
        ))
    })
}

impl OneInference for EmbeddingsRequest {
    type Answer = EmbeddingsResponse;

    fn model(&self) -> &str {
        &self.model
    }

    /// The texts as the OIP request the model takes: one BYTES element each (the pipeline
    /// checks it against the model's inputs and limits as it checks a `/v2` request).
    fn request(&self, name: &str, config: &ModelConfig) -> Result<InferRequest> {
        let spec = embeddings_of(name, config)?;
        let inputs = vec![texts_tensor(&spec.input, &self.input.texts()?)];
        Ok(oip_request(inputs, std::iter::once(&spec.output).chain(&spec.tokens)))
    }

    /// The model's outputs as OpenAI's answer.
    fn answer(
        self,
        _id: &str,
        name: &str,
        config: &ModelConfig,
        outputs: &[Tensor],
    ) -> Result<EmbeddingsResponse> {
        let spec = embeddings_of(name, config)?;
        let vectors = output(outputs, &spec.output)?;
        let &[rows, dims] = vectors.shape.as_slice() else {
            return Err(Error::Internal(format!("output '{}' has shape {:?}", spec.output, vectors.shape)));
        };
        let (rows, dims) = (rows as usize, dims as usize);
        if let Some(asked) = self.dimensions.filter(|&d| d != dims) {
            return Err(Error::bad_request(format!(
                "'dimensions': this model's embeddings have {dims} dimensions, not {asked} (shortening is not supported)"
            )));
        }
        let data = vectors
            .data
            .chunks_exact(dims * 4)
            .take(rows)
            .enumerate()
            .map(|(index, bytes)| Embedding {
                object: "embedding",
                index,
                embedding: match self.encoding_format {
                    Format::Base64 => Vector::Base64(base64::engine::general_purpose::STANDARD.encode(bytes)),
                    Format::Float => Vector::Float(fp32s(bytes)),
                },
            })
            .collect();
        let tokens = tokens(outputs, spec.tokens.as_ref())?;
        Ok(EmbeddingsResponse { object: "list", data, model: self.model, usage: Usage::of(tokens) })
    }
}
