//! End-to-end tests: each starts the real `wasmserve` binary and talks HTTP to it.
//! Run with `make test` (it fetches the models, builds the plugins and sets ORT_DYLIB_PATH).

mod backends;
mod check;
mod connections;
mod fetch;
mod lifecycle;
mod offline;
mod on_demand;
mod protocol;
mod provision;
mod references;
mod repository;
mod sandbox;
mod scheduling;
mod server;

use serde_json::{Value, json};
use server::{Server, edited_repository, examples, onnxruntime_library, run_to_failure, test_models};
use std::path::{Path, PathBuf};

// Helpers the scenarios share; each scenario file keeps its own.

const RAW: [(&str, &str); 1] = [("Inference-Header-Content-Length", "0")];

fn fixture(path: &str) -> std::path::PathBuf {
    server::root().join("tests/fixtures").join(path)
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn f32s(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (norm(a) * norm(b))
}

/// Label and score of one file, sent raw (`curl --data-binary @file`).
fn identify(server: &Server, bytes: &[u8]) -> (String, f32) {
    let r = server.post("/v2/models/magika/infer", &RAW, bytes);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let label = r.output("label")["data"][0].as_str().unwrap().to_string();
    (label, r.output("score")["data"][0].as_f64().unwrap() as f32)
}

/// Embeddings of `sentences`, one row each.
fn embed(server: &Server, sentences: &[&str], params: Value) -> Vec<Vec<f32>> {
    let r = server.infer(
        "minilm",
        &json!({"parameters": params, "inputs": [{"name": "text", "shape": [sentences.len()], "datatype": "BYTES", "data": sentences}]}),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let out = r.output("embedding");
    assert_eq!(out["shape"], json!([sentences.len(), 384]));
    f32s(&out["data"]).chunks(384).map(<[f32]>::to_vec).collect()
}

/// Several fixture files in one magika request, through the binary tensor extension.
fn identify_many(server: &Server, names: &[&str], outputs: Value) -> server::Response {
    let mut data = Vec::new();
    for name in names {
        let bytes = std::fs::read(fixture("magika/files").join(name)).unwrap();
        data.extend((bytes.len() as u32).to_le_bytes());
        data.extend(bytes);
    }
    let header = json!({"inputs": [{"name": "bytes", "shape": [names.len()], "datatype": "BYTES", "parameters": {"binary_data_size": data.len()}}],
                        "outputs": outputs})
    .to_string();
    let mut body = header.clone().into_bytes();
    body.extend(&data);
    let len = header.len().to_string();
    server.post("/v2/models/magika/infer", &[("Inference-Header-Content-Length", &len)], &body)
}

/// `fault` asks the test plugin to misbehave; the graph squares nothing, it multiplies by W.
fn faulty(server: &Server, fault: &str) -> server::Response {
    server.infer(
        "faulty",
        &json!({"parameters": {"fault": fault}, "inputs": [{"name": "x", "shape": [3, 2], "datatype": "FP32", "data": [2, 2, 2, 2, 2, 2]}]}),
    )
}

fn assert_serves(server: &Server) {
    assert_model_serves(server, "faulty");
}

/// `model` (the test model's graph and plugin, under any name) answers correctly.
fn assert_model_serves(server: &Server, model: &str) {
    let r = server.infer(
        model,
        &json!({"inputs": [{"name": "x", "shape": [3, 2], "datatype": "FP32", "data": [2, 2, 2, 2, 2, 2]}]}),
    );
    assert_eq!(r.status, 200, "{model}: {}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.output("y")["data"], json!([2.0, 4.0, 6.0, 8.0, 10.0, 12.0]));
}

fn slow(toml: &str) -> String {
    toml.replace("timeout_ms = 500", "timeout_ms = 5000")
}

fn walk(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| entries.flatten().map(|e| if e.path().is_dir() { walk(&e.path()) } else { 1 }).sum())
        .unwrap_or(0)
}
