//! settings: what the plugin does, from `[text]` in model.toml (handed over by the host in
//! the `WASMSERVE_TEXT` environment variable, with the graph's inputs and output) and, where
//! `[text]` is silent, from the model's own files the way `transformers` and
//! `sentence-transformers` read them: `tokenizer.json` or `vocab.txt`, `config.json`
//! (`id2label`, `problem_type`, `max_position_embeddings`), `tokenizer_config.json`
//! (`do_lower_case`, `model_max_length`), `sentence_bert_config.json` (`max_seq_length`),
//! `1_Pooling/config.json` (the pooling mode).

use crate::entities::Aggregation;
use serde::Deserialize;
use serde_json::Value;
use wasmserve_plugin::text::{Tokenizer, bert_wordpiece, truncate};
use wasmserve_plugin::{OrError, PluginError, internal};

/// Where the model's files are.
const DATA: &str = "/data";

// These enums are the host's `[text]` (runtime/protocol/src/config/text.rs) as this plugin
// reads it from WASMSERVE_TEXT: the two sides of one contract, in two workspaces.

/// The task, `[text] task`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    /// Sentences in, one vector each.
    Embed,
    /// Sentences in, a label and the probabilities of every label each.
    Classify,
    /// A query and documents in, a relevance score per document (a cross-encoder).
    Rerank,
    /// Sentences in, their entities (labelled tokens grouped) with character offsets.
    Entities,
}

/// How token vectors become one sentence vector.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    /// The mean over the sentence's tokens (its attention mask).
    Mean,
    /// The first token's ([CLS]).
    Cls,
    /// The last real token's (decoder embedding models).
    Last,
    /// None: the graph's output is one vector per sentence already.
    None,
}

/// What turns a classifier's logits into scores.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Function {
    /// Probabilities over the labels, summing to 1 (single-label models).
    Softmax,
    /// Each label's own probability (multi-label models, one-logit rerankers).
    Sigmoid,
    /// The logits as they are.
    None,
}

/// `WASMSERVE_TEXT`, as the host writes it: `[text]` with the graph's inputs and output.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Given {
    task: Task,
    tokenizer: Option<String>,
    max_tokens: Option<usize>,
    lowercase: Option<bool>,
    pooling: Option<Pooling>,
    normalize: Option<bool>,
    labels: Option<Vec<String>>,
    function: Option<Function>,
    aggregation: Option<Aggregation>,
    /// The graph inputs the plugin feeds: those of `input_ids`, `attention_mask` and
    /// `token_type_ids` the graph declares.
    graph_inputs: Vec<String>,
    /// The graph output it reads.
    output: String,
    /// That output's rank: 3 for token vectors `[n, len, dim]`, 2 for `[n, dim]` or logits.
    output_rank: usize,
}

/// Everything resolved: what the plugin runs with.
pub struct Settings {
    pub task: Task,
    pub tokenizer: Tokenizer,
    pub pooling: Pooling,
    pub normalize: bool,
    pub labels: Vec<String>,
    pub function: Function,
    pub aggregation: Aggregation,
    pub graph_inputs: Vec<String>,
    pub output: String,
}

/// A JSON file of the model's, if it has it.
fn json(name: &str) -> Result<Option<Value>, PluginError> {
    match std::fs::read(format!("{DATA}/{name}")) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).or_internal(&format!("{name} is not JSON")),
        Err(_) => Ok(None),
    }
}

fn exists(name: &str) -> bool {
    std::path::Path::new(&format!("{DATA}/{name}")).is_file()
}

impl Settings {
    /// Read `WASMSERVE_TEXT` and the model's files.
    pub fn load() -> Result<Self, PluginError> {
        let given = std::env::var("WASMSERVE_TEXT")
            .or_internal("WASMSERVE_TEXT is not set: the host sets it from [text]")?;
        let given: Given = serde_json::from_str(&given).or_internal("WASMSERVE_TEXT")?;
        let config = json("config.json")?.unwrap_or(Value::Null);
        let tokenizer_config = json("tokenizer_config.json")?.unwrap_or(Value::Null);
        let max_tokens = given.max_tokens.map_or_else(|| max_tokens(&config, &tokenizer_config), Ok)?;
        let tokenizer = tokenizer(&given, &tokenizer_config, max_tokens)?;
        let pooling = match (given.pooling, given.output_rank) {
            (Some(pooling), _) => pooling,
            (None, 2) => Pooling::None,
            (None, _) => pooling_of_the_model()?,
        };
        // Token vectors [n, len, dim] are pooled; one vector per text [n, dim] is taken as it is.
        let fits = match pooling {
            Pooling::None => given.output_rank == 2,
            _ => given.output_rank == 3,
        };
        if given.task == Task::Embed && !fits {
            return Err(internal(format!(
                "[text] pooling = \"{}\" does not fit graph output '{}' of rank {}: token vectors [n, len, dim] take \
                 mean, cls or last; one vector per text [n, dim] takes none",
                format!("{pooling:?}").to_lowercase(),
                given.output,
                given.output_rank
            )));
        }
        let labels = match given.labels {
            Some(labels) => labels,
            None => labels_of_the_model(&config)?,
        };
        let multi_label =
            config.get("problem_type").and_then(Value::as_str) == Some("multi_label_classification");
        let function = given.function.unwrap_or(match (given.task, labels.len()) {
            (Task::Rerank, _) | (_, 1) => Function::Sigmoid,
            _ if multi_label => Function::Sigmoid,
            _ => Function::Softmax,
        });
        Ok(Self {
            task: given.task,
            tokenizer,
            pooling,
            normalize: given.normalize.unwrap_or(true),
            labels,
            function,
            aggregation: given.aggregation.unwrap_or(Aggregation::Simple),
            graph_inputs: given.graph_inputs,
            output: given.output,
        })
    }
}

/// sentence-transformers' `max_seq_length`, else the tokenizer's `model_max_length` (when
/// it is a real limit, not transformers' "no limit" 1e30), else the position embeddings,
/// else 512.
fn max_tokens(config: &Value, tokenizer_config: &Value) -> Result<usize, PluginError> {
    let number =
        |v: Option<&Value>| v.and_then(Value::as_f64).filter(|n| (1.0..1e6).contains(n)).map(|n| n as usize);
    let sentence = json("sentence_bert_config.json")?;
    Ok(number(sentence.as_ref().and_then(|s| s.get("max_seq_length")))
        .or_else(|| number(tokenizer_config.get("model_max_length")))
        .or_else(|| number(config.get("max_position_embeddings")).map(|n| n.min(512)))
        .unwrap_or(512))
}

/// `tokenizer.json` (any model: WordPiece, BPE, Unigram), else a BERT `vocab.txt`.
fn tokenizer(given: &Given, tokenizer_config: &Value, max_tokens: usize) -> Result<Tokenizer, PluginError> {
    let file = match &given.tokenizer {
        Some(file) => file.clone(),
        None if exists("tokenizer.json") => "tokenizer.json".into(),
        None if exists("vocab.txt") => "vocab.txt".into(),
        None => {
            return Err(internal(
                "the model directory has neither tokenizer.json nor vocab.txt: add one, or name it in [text] tokenizer",
            ));
        }
    };
    let bytes = std::fs::read(format!("{DATA}/{file}")).or_internal(&format!("reading {file}"))?;
    if file.ends_with(".json") {
        let mut tokenizer = Tokenizer::from_bytes(&bytes).or_internal(&file)?;
        // The plugin pads its batch itself; a fixed padding in the file would only add tokens.
        tokenizer.with_padding(None);
        truncate(&mut tokenizer, max_tokens)?;
        Ok(tokenizer)
    } else {
        let lowercase = given
            .lowercase
            .or_else(|| tokenizer_config.get("do_lower_case").and_then(Value::as_bool))
            .unwrap_or(true);
        bert_wordpiece(&bytes, lowercase, max_tokens).map_err(|e| e.context(&file))
    }
}

/// sentence-transformers' `1_Pooling/config.json`, else mean pooling.
fn pooling_of_the_model() -> Result<Pooling, PluginError> {
    let Some(config) = json("1_Pooling/config.json")? else { return Ok(Pooling::Mean) };
    let on = |key: &str| config.get(key).and_then(Value::as_bool) == Some(true);
    Ok(if on("pooling_mode_cls_token") {
        Pooling::Cls
    } else if on("pooling_mode_lasttoken") {
        Pooling::Last
    } else if on("pooling_mode_mean_tokens") {
        Pooling::Mean
    } else {
        return Err(internal(
            "1_Pooling/config.json asks for a pooling this plugin lacks (it has mean, cls and lasttoken): set [text] pooling",
        ));
    })
}

/// `config.json`'s `id2label` in index order; an empty list when it has none.
fn labels_of_the_model(config: &Value) -> Result<Vec<String>, PluginError> {
    let Some(map) = config.get("id2label").and_then(Value::as_object) else { return Ok(Vec::new()) };
    let mut labels = vec![None; map.len()];
    for (index, label) in map {
        let i: usize = index.parse().or_internal(&format!("config.json id2label: key '{index}'"))?;
        let slot = labels
            .get_mut(i)
            .or_internal(&format!("config.json id2label: {i} is past its {} labels", map.len()))?;
        *slot = Some(label.as_str().or_internal("config.json id2label: labels are strings")?.to_string());
    }
    Ok(labels.into_iter().map(Option::unwrap_or_default).collect())
}
