//! magika: identify a file's content type from its bytes.
//!
//! Mirrors the Python `magika` 1.0.3 package (model `standard_v3_3`, prediction mode
//! high-confidence) so both give the same label for the same file:
//! - features: the first and last `block_size` bytes, whitespace-stripped, the first
//!   `beg_size` / last `end_size` of them, padded with `padding_token`;
//! - files too short for the model (or only whitespace) are `txt` if valid UTF-8, else
//!   `unknown`; an empty file is `empty`;
//! - the model's label goes through `overwrite_map`, and falls back to `txt`/`unknown`
//!   when its score is under the label's threshold.
//!
//! Data files (granted at `/data`): `config.min.json` (model config) and
//! `content_types_kb.min.json` (which labels are text), both from the magika wheel.
//!
//! Input `bytes`: BYTES [N], one file per element. Outputs: `label` BYTES [N], `score`
//! FP32 [N], `mime_type` BYTES [N].

use serde::Deserialize;
use std::collections::HashMap;
use wasmserve_plugin::classify::argmax;
use wasmserve_plugin::{DataFile, Guest, OrError, Params, PluginError, Prepared, Tensor, find, internal};

#[derive(Deserialize)]
struct ModelConfig {
    beg_size: usize,
    end_size: usize,
    block_size: usize,
    padding_token: i32,
    min_file_size_for_dl: usize,
    medium_confidence_threshold: f32,
    target_labels_space: Vec<String>,
    thresholds: HashMap<String, f32>,
    overwrite_map: HashMap<String, String>,
}

#[derive(Deserialize)]
struct ContentType {
    is_text: bool,
    mime_type: Option<String>,
}

fn json<T: serde::de::DeserializeOwned>(bytes: Vec<u8>) -> Result<T, PluginError> {
    serde_json::from_slice(&bytes).or_internal("JSON")
}

/// The model's configuration.
static CONFIG: DataFile<ModelConfig> = DataFile::new("config.min.json", json);
/// Which labels are text, and their MIME types.
static CONTENT_TYPES: DataFile<HashMap<String, ContentType>> =
    DataFile::new("content_types_kb.min.json", json);

/// Python's `bytes.isspace` set.
fn is_space(b: &u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

fn trim_start(mut b: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = b {
        if !is_space(first) {
            break;
        }
        b = rest;
    }
    b
}

fn trim_end(mut b: &[u8]) -> &[u8] {
    while let [rest @ .., last] = b {
        if !is_space(last) {
            break;
        }
        b = rest;
    }
    b
}

/// What the model cannot tell: `Some(label)` when the answer comes from the bytes alone.
fn label_without_model(file: &[u8], beg_stripped: &[u8], config: &ModelConfig) -> Option<&'static str> {
    let few = |content: &[u8]| if std::str::from_utf8(content).is_ok() { "txt" } else { "unknown" };
    if file.is_empty() {
        Some("empty")
    } else if file.len() < config.min_file_size_for_dl {
        Some(few(file))
    } else if beg_stripped.len() < config.min_file_size_for_dl {
        // After stripping, the n-th feature is padding: not enough content for the model.
        Some(few(&file[..file.len().min(config.block_size)]))
    } else {
        None
    }
}

struct Magika;

impl Guest for Magika {
    fn preprocess(inputs: Vec<Tensor>, _params: Params) -> Result<Prepared, PluginError> {
        let config = CONFIG.get()?;
        let files = find(&inputs, "bytes")?.elements()?;
        let width = config.beg_size + config.end_size;
        let mut features = Vec::with_capacity(files.len() * width);
        // Context: per file, 0 = use the model, 1/2/3 = empty/txt/unknown without it.
        let mut fixed = Vec::with_capacity(files.len());
        for file in &files {
            let block = file.len().min(config.block_size);
            let beg = trim_start(&file[..block]);
            let end = trim_end(&file[file.len() - block..]);
            let beg = &beg[..beg.len().min(config.beg_size)];
            let end = &end[end.len().saturating_sub(config.end_size)..];
            features.extend(beg.iter().map(|&b| i32::from(b)));
            features.extend(std::iter::repeat_n(config.padding_token, config.beg_size - beg.len()));
            features.extend(std::iter::repeat_n(config.padding_token, config.end_size - end.len()));
            features.extend(end.iter().map(|&b| i32::from(b)));
            fixed.push(match label_without_model(file, beg, config) {
                None => 0,
                Some("empty") => 1,
                Some("txt") => 2,
                Some(_) => 3,
            });
        }
        let n = files.len() as i64;
        Ok(Prepared {
            graph_inputs: vec![Tensor::new("bytes", [n, width as i64], &features)],
            context: vec![Tensor::new::<i32>("fixed", [n], &fixed)],
        })
    }

    fn postprocess(
        outputs: Vec<Tensor>,
        context: Vec<Tensor>,
        _params: Params,
    ) -> Result<Vec<Tensor>, PluginError> {
        let config = CONFIG.get()?;
        let kb = CONTENT_TYPES.get()?;
        let probabilities = find(&outputs, "target_label")?;
        let fixed = find(&context, "fixed")?.view::<i32>()?;
        let n = probabilities.rows();
        let rows = probabilities.view::<f32>()?.rows();
        if probabilities.shape != [n as i64, config.target_labels_space.len() as i64] || fixed.len() != n {
            return Err(internal(format!(
                "model returned scores of shape {:?} for {} files",
                probabilities.shape,
                fixed.len()
            )));
        }
        let mut labels = Vec::with_capacity(n);
        let mut best_scores = Vec::with_capacity(n);
        for (row, fixed) in rows.zip(fixed.iter()) {
            let (label, score) = match fixed {
                1 => ("empty", 1.0),
                2 => ("txt", 1.0),
                3 => ("unknown", 1.0),
                _ => {
                    let (best, score) = argmax(&row.to_vec()).or_internal("model returned no classes")?;
                    let dl_label = config.target_labels_space[best].as_str();
                    let label = config.overwrite_map.get(dl_label).map_or(dl_label, String::as_str);
                    let threshold = config
                        .thresholds
                        .get(dl_label)
                        .copied()
                        .unwrap_or(config.medium_confidence_threshold);
                    if score >= threshold {
                        (label, score)
                    } else if kb.get(label).is_some_and(|ct| ct.is_text) {
                        ("txt", score)
                    } else {
                        ("unknown", score)
                    }
                }
            };
            labels.push(label);
            best_scores.push(score);
        }
        let mimes: Vec<&str> = labels
            .iter()
            .map(|l| kb.get(*l).and_then(|ct| ct.mime_type.as_deref()).unwrap_or("application/octet-stream"))
            .collect();
        let n = n as i64;
        Ok(vec![
            Tensor::bytes("label", [n], &labels),
            Tensor::new("score", [n], &best_scores),
            Tensor::bytes("mime_type", [n], &mimes),
        ])
    }
}

wasmserve_plugin::export_plugin!(Magika);
