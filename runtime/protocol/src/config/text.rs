//! `[text]`: a Hugging Face text model served from its own files, with no plugin to write.

use super::*;

/// `[text]`: the model is a Hugging Face encoder (ONNX) served by the built-in text plugin,
/// which the server carries: no `[plugin] file`, no `inputs` or `outputs` to write. The
/// plugin reads the model's own files in the model directory (`tokenizer.json` or
/// `vocab.txt`, `config.json`, `tokenizer_config.json`, `sentence_bert_config.json`,
/// `1_Pooling/config.json`) for whatever this section leaves out.
///
/// ```toml
/// [graph]
/// file = "onnx/model.onnx"
/// backend = "onnx"
///
/// [text]
/// task = "embed"        # or "classify", "rerank", "entities"
/// ```
///
/// The task sets the model's tensors:
/// - `embed`: `text` BYTES `[-1]` in; `embedding` FP32 `[-1, -1]` and `tokens` INT64 `[-1]`
///   out; it also answers `POST /v1/embeddings`.
/// - `classify`: `text` in; `label` BYTES `[-1]`, `score` FP32 `[-1]` (the label's
///   probability), `scores` FP32 `[-1, -1]` (every label's, in `id2label` order) and
///   `tokens` out.
/// - `rerank` (a cross-encoder): `query` BYTES `[1]` and `documents` BYTES `[-1]` in;
///   `score` FP32 `[-1]` (each document's relevance) and `tokens` out; it also answers
///   `POST /v1/rerank`.
/// - `entities` (token classification): `text` in; `entities` BYTES `[-1]` (each text's
///   entities, a JSON list as `transformers`' token-classification pipeline answers:
///   `entity_group`, `score`, `word`, `start`, `end` in characters) and `tokens` out.
///
/// With `[batching]`, requests of different lengths share a batch: `pad` and `cut` default
/// to the graph's token inputs and its token-vector output.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Text {
    /// What the model does.
    pub task: TextTask,
    /// The tokenizer, relative to the model directory: a `tokenizer.json` (any Hugging Face
    /// tokenizer) or a BERT `vocab.txt`. Default: `tokenizer.json`, else `vocab.txt`.
    #[serde(default)]
    pub tokenizer: Option<String>,
    /// Tokens a text is cut to, specials included. Default: sentence-transformers'
    /// `max_seq_length`, else the tokenizer's `model_max_length`, else the model's position
    /// embeddings (at most 512), else 512.
    #[serde(default)]
    pub max_tokens: Option<usize>,
    /// For a `vocab.txt`: lowercase and strip accents (uncased BERT). Default: the
    /// tokenizer config's `do_lower_case`, else true.
    #[serde(default)]
    pub lowercase: Option<bool>,
    /// `embed`: how token vectors become one vector. Default: `1_Pooling/config.json`'s mode,
    /// else `mean`; `none` where the graph's output is one vector per text already.
    #[serde(default)]
    pub pooling: Option<Pooling>,
    /// `embed`: L2-normalise the vectors (default true; a request may send
    /// `normalize = false`).
    #[serde(default)]
    pub normalize: Option<bool>,
    /// `classify`: the labels in the order of the logits. Default: `config.json`'s `id2label`.
    #[serde(default)]
    pub labels: Option<Vec<String>>,
    /// `classify` and `rerank`: what turns logits into scores. Default: `sigmoid` for a
    /// reranker, a one-logit model or `problem_type = "multi_label_classification"`, else
    /// `softmax`.
    #[serde(default)]
    pub function: Option<ScoreFunction>,
    /// `entities`: how labelled tokens become entities, as `transformers`' pipeline's
    /// `aggregation_strategy` (a request may send `aggregation`). Default `simple`.
    #[serde(default)]
    pub aggregation: Option<Aggregation>,
    /// The graph output the plugin reads. Default: `last_hidden_state` (`embed`, falling
    /// back to `sentence_embedding`) or `logits`, else the graph's first output.
    #[serde(default)]
    pub output: Option<String>,
}

/// `[text] task`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TextTask {
    /// Sentence embeddings.
    Embed,
    /// Text classification: a label and every label's probability.
    Classify,
    /// A cross-encoder: each document's relevance to a query.
    Rerank,
    /// Token classification: each text's entities, with character offsets.
    Entities,
}

/// `[text] aggregation`: `transformers`' `aggregation_strategy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Aggregation {
    /// Every token not labelled `O`, with its label.
    None,
    /// Adjacent tokens of one type joined (`B-` starts a new entity).
    Simple,
    /// Each word labelled by its first token, then words joined as `simple` joins tokens.
    First,
    /// Each word labelled by its tokens' mean probabilities, then joined.
    Average,
    /// Each word labelled by its most confident token, then joined.
    Max,
}

/// `[text] pooling`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    /// The mean of the text's token vectors.
    Mean,
    /// The first token's vector ([CLS]).
    Cls,
    /// The last real token's vector.
    Last,
    /// The graph's output is one vector per text already.
    None,
}

/// `[text] function`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ScoreFunction {
    /// Probabilities over the labels, summing to 1.
    Softmax,
    /// Each logit's own probability.
    Sigmoid,
    /// The logits as they are.
    None,
}

/// `[rerank]`: which of the model's tensors an OpenAI-style rerank request
/// (`POST /v1/rerank`, Cohere's and Jina's shape) uses. `[text] task = "rerank"` sets it.
///
/// ```toml
/// [rerank]
/// query = "query"          # a BYTES input, shape [1]
/// documents = "documents"  # a BYTES input, shape [-1]
/// score = "score"          # an FP32 output, shape [-1]: one score per document
/// tokens = "tokens"        # optional: an INT64 output, shape [-1], for `usage`
/// ```
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Rerank {
    /// The BYTES input that takes the query.
    pub query: String,
    /// The BYTES input, shape `[-1]`, that takes the documents.
    pub documents: String,
    /// The FP32 output, shape `[-1]`, with each document's relevance (higher: more relevant).
    pub score: String,
    /// An INT64 output, shape `[-1]`, with the tokens each document's row became.
    pub tokens: Option<String>,
}

impl Rerank {
    /// The tensors named exist with the datatypes and shapes above.
    pub(super) fn check(&self, inputs: &[TensorSpec], outputs: &[TensorSpec]) -> anyhow::Result<()> {
        for (key, name) in [("query", &self.query), ("documents", &self.documents)] {
            let input = named("rerank", inputs, "input", name)?;
            anyhow::ensure!(
                input.datatype == Datatype::Bytes && input.shape.len() == 1,
                "`rerank.{key}`: '{name}' must be BYTES with shape [-1] or [1]"
            );
        }
        anyhow::ensure!(
            inputs.len() == 2,
            "`rerank`: the model's inputs must be the query and the documents alone"
        );
        let score = named("rerank", outputs, "output", &self.score)?;
        anyhow::ensure!(
            score.datatype == Datatype::Fp32 && score.shape.len() == 1,
            "`rerank.score`: '{}' must be FP32 with shape [-1]",
            self.score
        );
        if let Some(tokens) = &self.tokens {
            let tokens = named("rerank", outputs, "output", tokens)?;
            anyhow::ensure!(
                tokens.datatype == Datatype::Int64 && tokens.shape.len() == 1,
                "`rerank.tokens`: '{}' must be INT64 with shape [-1]",
                tokens.name
            );
        }
        Ok(())
    }
}

fn spec(name: &str, datatype: Datatype, shape: &[i64]) -> TensorSpec {
    TensorSpec { name: name.into(), datatype, shape: shape.to_vec() }
}

impl Text {
    /// Turn `[text]` into the config the built-in plugin is served with: its data directory
    /// (the model directory), the task's tensors, `[embeddings]` or `[rerank]`, and a warm-up
    /// request unless the config has its own.
    pub(super) fn expand(&self, config: &mut ModelConfig) -> anyhow::Result<()> {
        anyhow::ensure!(
            config.plugin.file.is_none(),
            "`[text]` serves the model with the built-in text plugin: drop `plugin.file`, or drop `[text]` to \
             serve it with your own plugin"
        );
        anyhow::ensure!(
            config.inputs.is_empty() && config.outputs.is_empty(),
            "`[text]` sets the model's `inputs` and `outputs` from its task: drop them"
        );
        anyhow::ensure!(
            config.graph.backend != Backend::Ggml,
            "`[text]` is for ONNX encoders (`graph.backend = \"onnx\"` or \"tract\"); a GGUF model generates text"
        );
        config.plugin.data.get_or_insert_with(|| PathBuf::from("."));
        let text = |name: &str| spec(name, Datatype::Bytes, &[-1]);
        let tokens = spec("tokens", Datatype::Int64, &[-1]);
        let warmup = match self.task {
            TextTask::Embed => {
                config.inputs = vec![text("text")];
                config.outputs = vec![spec("embedding", Datatype::Fp32, &[-1, -1]), tokens];
                config.embeddings.get_or_insert_with(|| Embeddings {
                    input: "text".into(),
                    output: "embedding".into(),
                    tokens: Some("tokens".into()),
                });
                serde_json::json!([{ "name": "text", "datatype": "BYTES", "shape": [1], "data": [WARM_UP] }])
            }
            TextTask::Classify => {
                config.inputs = vec![text("text")];
                config.outputs = vec![
                    text("label"),
                    spec("score", Datatype::Fp32, &[-1]),
                    spec("scores", Datatype::Fp32, &[-1, -1]),
                    tokens,
                ];
                serde_json::json!([{ "name": "text", "datatype": "BYTES", "shape": [1], "data": [WARM_UP] }])
            }
            TextTask::Entities => {
                config.inputs = vec![text("text")];
                config.outputs = vec![text("entities"), tokens];
                serde_json::json!([{ "name": "text", "datatype": "BYTES", "shape": [1], "data": [WARM_UP] }])
            }
            TextTask::Rerank => {
                config.inputs = vec![spec("query", Datatype::Bytes, &[1]), text("documents")];
                config.outputs = vec![spec("score", Datatype::Fp32, &[-1]), tokens];
                config.rerank.get_or_insert_with(|| Rerank {
                    query: "query".into(),
                    documents: "documents".into(),
                    score: "score".into(),
                    tokens: Some("tokens".into()),
                });
                serde_json::json!([
                    { "name": "query", "datatype": "BYTES", "shape": [1], "data": ["Is the model warm?"] },
                    { "name": "documents", "datatype": "BYTES", "shape": [2], "data": [WARM_UP, "Paris is in France."] },
                ])
            }
        };
        if config.warmup.is_empty() {
            config.warmup.push(Warmup {
                file: None,
                inputs: Some(warmup),
                parameters: Default::default(),
                count: 1,
            });
        }
        Ok(())
    }
}

/// The warm-up sentence of a `[text]` model without `[[warmup]]` of its own.
const WARM_UP: &str = "The model is warming up.";

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "[graph]\nfile = \"model.onnx\"\nbackend = \"onnx\"\n[text]\n";

    fn parse(task: &str, extra: &str) -> anyhow::Result<ModelConfig> {
        ModelConfig::parse(&format!("{TEXT}task = \"{task}\"\n{extra}"))
    }

    fn names(specs: &[TensorSpec]) -> Vec<&str> {
        specs.iter().map(|s| s.name.as_str()).collect()
    }

    #[test]
    fn each_task_sets_its_tensors_endpoint_and_warm_up() {
        let embed = parse("embed", "").unwrap();
        assert_eq!(
            (names(&embed.inputs), names(&embed.outputs)),
            (vec!["text"], vec!["embedding", "tokens"])
        );
        assert_eq!(embed.embeddings.as_ref().map(|e| e.output.as_str()), Some("embedding"));
        assert_eq!(
            (embed.plugin.file.as_deref(), embed.plugin.data.as_deref()),
            (None, Some(Path::new(".")))
        );
        assert_eq!(embed.warmup.len(), 1);
        let rerank = parse("rerank", "").unwrap();
        assert_eq!(names(&rerank.inputs), ["query", "documents"]);
        assert_eq!(rerank.rerank.as_ref().map(|r| r.score.as_str()), Some("score"));
        assert!(rerank.embeddings.is_none());
        assert_eq!(names(&parse("classify", "").unwrap().outputs), ["label", "score", "scores", "tokens"]);
        assert_eq!(
            names(&parse("entities", "aggregation = \"max\"").unwrap().outputs),
            ["entities", "tokens"]
        );
        // A config's own warm-up replaces the default one.
        let own = parse(
            "embed",
            "[[warmup]]\ninputs = [{ name = \"text\", datatype = \"BYTES\", shape = [1], data = [\"x\"] }]\ncount = 2",
        );
        assert_eq!(own.unwrap().warmup[0].count, 2);
        // `pad` is left to the load (the graph's token inputs), so a token budget needs none.
        let batched = parse("embed", "[batching]\nmax_batch_size = 8\nmax_batch_tokens = 256").unwrap();
        assert_eq!(batched.batching.map(|b| (b.pad.len(), b.max_batch_tokens)), Some((0, 256)));
    }

    #[test]
    fn a_text_model_refuses_what_its_task_sets_and_says_why() {
        let err = |task: &str, extra: &str| format!("{:#}", parse(task, extra).unwrap_err());
        assert!(err("embed", "[plugin]\nfile = \"p.wasm\"").contains("drop `plugin.file`"));
        assert!(
            err("embed", "[[inputs]]\nname = \"x\"\ndatatype = \"BYTES\"\nshape = [-1]")
                .contains("drop them")
        );
        assert!(err("embed", "pooling = \"median\"").contains("unknown variant"));
        assert!(err("summarise", "").contains("unknown variant"));
        let ggml =
            ModelConfig::parse("[graph]\nfile = \"m.gguf\"\nbackend = \"ggml\"\n[text]\ntask = \"embed\"");
        assert!(format!("{:#}", ggml.unwrap_err()).contains("a GGUF model generates text"));
        let no_plugin = ModelConfig::parse(
            "[graph]\nfile = \"m.onnx\"\n[[inputs]]\nname = \"x\"\ndatatype = \"FP32\"\nshape = [1]\n[[outputs]]\nname = \"y\"\ndatatype = \"FP32\"\nshape = [1]",
        );
        assert!(format!("{:#}", no_plugin.unwrap_err()).contains("a model needs a plugin (or `[text]`"));
    }

    #[test]
    fn rerank_names_tensors_of_the_right_kind() {
        let model = |rerank: &str| {
            ModelConfig::parse(&format!(
                "[graph]\nfile = \"m.onnx\"\n[plugin]\nfile = \"p.wasm\"\n\
                 [[inputs]]\nname = \"q\"\ndatatype = \"BYTES\"\nshape = [1]\n\
                 [[inputs]]\nname = \"d\"\ndatatype = \"BYTES\"\nshape = [-1]\n\
                 [[outputs]]\nname = \"s\"\ndatatype = \"FP32\"\nshape = [-1]\n[rerank]\n{rerank}"
            ))
            .map_err(|e| format!("{e:#}"))
        };
        assert!(model("query = \"q\"\ndocuments = \"d\"\nscore = \"s\"").is_ok());
        assert!(
            model("query = \"q\"\ndocuments = \"d\"\nscore = \"x\"").unwrap_err().contains("no output 'x'")
        );
        let wrong = model("query = \"q\"\ndocuments = \"s\"\nscore = \"s\"").unwrap_err();
        assert!(wrong.contains("no input 's'"), "{wrong}");
    }
}
