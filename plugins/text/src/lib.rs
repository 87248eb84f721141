//! The built-in text plugin: any Hugging Face encoder served from its own files, the task
//! chosen by `[text]` in model.toml (the host ships this plugin inside its binary and hands
//! it `[text]` in the `WASMSERVE_TEXT` environment variable; see `settings`).
//!
//! - `embed`: `text` BYTES [n] -> `embedding` FP32 [n, dim] (pooled: mean, CLS or last
//!   token; L2-normalised unless `normalize` is off, or the request says `normalize=false`).
//! - `classify`: `text` BYTES [n] -> `label` BYTES [n] (the best), `score` FP32 [n] (its
//!   probability), `scores` FP32 [n, labels] (every label's, in `id2label` order). A request
//!   with parameter `top_k` = k gets `label` and `score` as [n, k]: each text's k most
//!   probable labels, best first.
//! - `rerank`: `query` BYTES [1] and `documents` BYTES [n] -> `score` FP32 [n], each
//!   document's relevance to the query: one cross-encoder row per (query, document) pair.
//!
//! - `entities`: `text` BYTES [n] -> `entities` BYTES [n], each text's entities as a JSON
//!   list, grouped as `transformers`' token-classification pipeline groups them (see
//!   `entities`; the request's `aggregation` parameter picks another grouping).
//!
//! Every task also answers `tokens` INT64 [n]: the tokens each row became, specials included.
//!
//! It is an ordinary plugin built with the SDK: to serve something it does not do, copy
//! `plugins/text` and change it.

mod entities;
mod settings;

use entities::Aggregation;
use settings::{Function, Pooling, Settings, Task};
use std::sync::OnceLock;
use wasmserve_plugin::classify::softmax;
use wasmserve_plugin::text::{Encoded, encode, encode_pairs};
use wasmserve_plugin::warm::{Guest, WarmUp};
use wasmserve_plugin::{OrError, Params, PluginError, Prepared, Tensor, find, internal, invalid, param};

/// Resolved once per instance.
static SETTINGS: OnceLock<Result<Settings, PluginError>> = OnceLock::new();

fn settings() -> Result<&'static Settings, PluginError> {
    SETTINGS.get_or_init(Settings::load).as_ref().map_err(Clone::clone)
}

/// The non-empty texts of input `name`.
fn texts<'a>(inputs: &'a [Tensor], name: &str) -> Result<Vec<&'a str>, PluginError> {
    let texts = find(inputs, name)?.texts()?;
    if texts.is_empty() {
        return Err(invalid(format!("tensor '{name}' holds no text")));
    }
    Ok(texts)
}

struct Text;

impl Guest for Text {
    fn preprocess(inputs: Vec<Tensor>, params: Params) -> Result<Prepared, PluginError> {
        let s = settings()?;
        // A bad parameter fails before the graph runs.
        match s.task {
            Task::Classify => drop(top_k(&params)?),
            Task::Entities => drop(aggregation(s, &params)?),
            Task::Embed | Task::Rerank => {}
        }
        let encoded = match s.task {
            Task::Embed | Task::Classify | Task::Entities => encode(&s.tokenizer, &texts(&inputs, "text")?)?,
            Task::Rerank => {
                let query = texts(&inputs, "query")?;
                let [query] = query.as_slice() else {
                    return Err(invalid(format!(
                        "tensor 'query' holds {} texts: a rerank takes one query",
                        query.len()
                    )));
                };
                let pairs: Vec<_> = texts(&inputs, "documents")?.into_iter().map(|d| (*query, d)).collect();
                encode_pairs(&s.tokenizer, &pairs)?
            }
        };
        let Encoded { input_ids, attention_mask, token_type_ids } = encoded;
        let mut context = vec![attention_mask.clone()];
        if s.task == Task::Entities {
            // Postprocess tokenises the texts again for their offsets.
            context.push(find(&inputs, "text")?.clone());
        }
        let graph_inputs = [input_ids, attention_mask, token_type_ids]
            .into_iter()
            .filter(|t| s.graph_inputs.contains(&t.name))
            .collect();
        Ok(Prepared { graph_inputs, context })
    }

    fn postprocess(
        outputs: Vec<Tensor>,
        context: Vec<Tensor>,
        params: Params,
    ) -> Result<Vec<Tensor>, PluginError> {
        let s = settings()?;
        let output = find(&outputs, &s.output)
            .map_err(|_| internal(format!("the graph gave no output '{}'", s.output)))?;
        let mask = find(&context, "attention_mask")?;
        let (rows, length) = (mask.rows(), mask.shape.get(1).copied().unwrap_or(0) as usize);
        let mask = mask.view::<i64>()?.to_vec();
        let tokens: Vec<i64> =
            mask.chunks(length.max(1)).map(|row| row.iter().filter(|&&m| m != 0).count() as i64).collect();
        let values = output.view::<f32>()?.to_vec();
        if output.shape.first() != Some(&(rows as i64)) {
            return Err(internal(format!(
                "graph output '{}' has shape {:?} for {rows} rows",
                s.output, output.shape
            )));
        }
        let width = values.len() / rows.max(1);
        let mut answer = match s.task {
            Task::Embed => {
                let normalize = s.normalize && param(&params, "normalize") != Some("false");
                let (embeddings, dim) = pool(s.pooling, &values, &output.shape, &mask, length)?;
                let mut embeddings = embeddings;
                if normalize {
                    for v in embeddings.chunks_mut(dim) {
                        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
                        v.iter_mut().for_each(|x| *x /= norm);
                    }
                }
                vec![Tensor::new("embedding", [rows as i64, dim as i64], &embeddings)]
            }
            Task::Classify => {
                check_labels(s, width)?;
                let scores: Vec<f32> =
                    values.chunks(width).flat_map(|row| activate(s.function, row)).collect();
                // Without `top_k`, the best label alone, one per row: [n], not [n, 1].
                let k = top_k(&params)?;
                let take = k.unwrap_or(1).min(width);
                let (mut labels, mut best) =
                    (Vec::with_capacity(rows * take), Vec::with_capacity(rows * take));
                for row in scores.chunks(width) {
                    for (i, score) in wasmserve_plugin::classify::top_k(row, take) {
                        labels.push(s.labels.get(i).cloned().unwrap_or_else(|| format!("LABEL_{i}")));
                        best.push(score);
                    }
                }
                let shape = match k {
                    Some(_) => vec![rows as i64, take as i64],
                    None => vec![rows as i64],
                };
                vec![
                    Tensor::bytes("label", shape.clone(), &labels),
                    Tensor::new("score", shape, &best),
                    Tensor::new("scores", [rows as i64, width as i64], &scores),
                ]
            }
            Task::Entities => {
                let aggregation = aggregation(s, &params)?;
                let labels = output.shape.get(2).copied().unwrap_or(0) as usize;
                if output.shape.len() != 3 || output.shape[1] as usize != length || labels == 0 {
                    return Err(internal(format!(
                        "graph output '{}' has shape {:?}: entities need logits [n, {length}, labels]",
                        s.output, output.shape
                    )));
                }
                check_labels(s, labels)?;
                let texts = find(&context, "text")?.texts()?;
                let mut answers = Vec::with_capacity(rows);
                for (row, text) in texts.iter().enumerate() {
                    let encoding = s.tokenizer.encode_char_offsets(*text, true).or_internal("tokenising")?;
                    let logits = &values[row * length * labels..(row + 1) * length * labels];
                    let found =
                        entities::entities(&s.tokenizer, text, &encoding, logits, &s.labels, aggregation);
                    answers.push(serde_json::to_string(&found).or_internal("entities as JSON")?);
                }
                vec![Tensor::bytes("entities", [rows as i64], &answers)]
            }
            Task::Rerank => {
                // One logit: its sigmoid; more (a relevant / not relevant pair): the last
                // label's probability.
                let scores: Vec<f32> = values
                    .chunks(width)
                    .map(|row| *activate(s.function, row).last().unwrap_or(&f32::NAN))
                    .collect();
                vec![Tensor::new("score", [rows as i64], &scores)]
            }
        };
        answer.push(Tensor::new("tokens", [rows as i64], &tokens));
        Ok(answer)
    }
}

/// One vector per row from token vectors `[n, len, dim]` (or the vectors as they are, with
/// `Pooling::None`), and its dimension.
fn pool(
    pooling: Pooling,
    values: &[f32],
    shape: &[i64],
    mask: &[i64],
    length: usize,
) -> Result<(Vec<f32>, usize), PluginError> {
    let rows = shape[0] as usize;
    if pooling == Pooling::None {
        return Ok((values.to_vec(), values.len() / rows.max(1)));
    }
    let &[_, len, dim] = shape else {
        return Err(internal(format!("token vectors of shape {shape:?}, expected [n, len, dim]")));
    };
    let (len, dim) = (len as usize, dim as usize);
    if len != length {
        return Err(internal(format!("token vectors for {len} tokens, but the batch has {length}")));
    }
    let mut pooled = vec![0f32; rows * dim];
    for (row, out) in pooled.chunks_mut(dim).enumerate() {
        let real = |t: usize| mask[row * len + t] != 0;
        let token = |t: usize| &values[(row * len + t) * dim..][..dim];
        match pooling {
            Pooling::Mean => {
                let count = (0..len).filter(|&t| real(t)).count();
                for t in (0..len).filter(|&t| real(t)) {
                    out.iter_mut().zip(token(t)).for_each(|(o, v)| *o += v);
                }
                out.iter_mut().for_each(|o| *o /= (count as f32).max(1e-9));
            }
            Pooling::Cls => out.copy_from_slice(token(0)),
            Pooling::Last => {
                let last = (0..len).rev().find(|&t| real(t)).unwrap_or(0);
                out.copy_from_slice(token(last));
            }
            Pooling::None => unreachable!("returned above"),
        }
    }
    Ok((pooled, dim))
}

/// Request parameter `top_k` (`classify`): how many labels each text gets, if the request
/// asks for a number (more than the model has gives them all).
fn top_k(params: &Params) -> Result<Option<usize>, PluginError> {
    let Some(value) = param(params, "top_k") else { return Ok(None) };
    match value.parse::<usize>() {
        Ok(k) if k > 0 => Ok(Some(k)),
        _ => Err(invalid(format!(
            "parameter 'top_k' is '{value}'; it is a whole number of labels, at least 1"
        ))),
    }
}

/// The grouping of entities: request parameter `aggregation`, else the model's.
fn aggregation(s: &Settings, params: &Params) -> Result<Aggregation, PluginError> {
    match param(params, "aggregation") {
        Some(value) => Aggregation::parse(value).ok_or_else(|| {
            invalid(format!(
                "parameter 'aggregation' is '{value}'; it is none, simple, first, average or max"
            ))
        }),
        None => Ok(s.aggregation),
    }
}

/// The labels, if the model names them, are as many as the graph gives scores for.
fn check_labels(s: &Settings, scores: usize) -> Result<(), PluginError> {
    if s.labels.is_empty() || s.labels.len() == scores {
        return Ok(());
    }
    Err(internal(format!(
        "the model has {} labels (config.json id2label, or [text] labels) but graph output '{}' gives {scores} \
         scores per token or text",
        s.labels.len(),
        s.output
    )))
}

/// Scores from one row of logits.
fn activate(function: Function, logits: &[f32]) -> Vec<f32> {
    match function {
        Function::Softmax => softmax(logits),
        Function::Sigmoid => logits.iter().map(|&x| 1.0 / (1.0 + (-x).exp())).collect(),
        Function::None => logits.to_vec(),
    }
}

/// At start-up: the settings and the model's files must load, and a sentence tokenise, or
/// the model never becomes ready.
impl WarmUp for Text {
    fn warm_up() -> Result<(), PluginError> {
        let s = settings()?;
        let encoded = encode(&s.tokenizer, &["The model is warming up."])?;
        if encoded.input_ids.shape.get(1).copied().unwrap_or(0) < 3 {
            return Err(internal("the tokenizer made fewer than 3 tokens of a sentence"));
        }
        Ok(())
    }
}

wasmserve_plugin::export_plugin_with_warm_up!(Text);
