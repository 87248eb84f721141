//! End-to-end tests: each starts the real `wasmserve` binary and talks HTTP to it.
//! Run with `make test` (it fetches the models, builds the plugins and sets ORT_DYLIB_PATH).

mod fetch;
mod provision;
mod server;

use serde_json::{Value, json};
use server::{Server, edited_repository, examples, onnxruntime_library, run_to_failure, test_models};
use std::path::{Path, PathBuf};

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

#[test]
fn magika_labels_match_the_python_package() {
    let server = Server::start(&examples(), &[]);
    let expected = read_json(&fixture("magika/expected.json"));
    let expected = expected.as_object().unwrap();
    assert!(expected.len() >= 12, "need at least 12 sample files");
    let mut mismatches = Vec::new();
    for (name, want) in expected {
        let bytes = std::fs::read(fixture("magika/files").join(name)).unwrap();
        let (label, score) = identify(&server, &bytes);
        let want_score = want["score"].as_f64().unwrap() as f32;
        if label != want["label"] || (score - want_score).abs() > 0.01 {
            mismatches.push(format!("{name}: got {label} {score:.4}, python magika says {want}"));
        }
    }
    assert!(mismatches.is_empty(), "{mismatches:#?}");

    // Several files in one request, through the binary tensor extension.
    let r = identify_many(&server, &["doc.pdf", "main.rs", "photo.jpg"], json!([{"name": "label"}]));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["outputs"].as_array().unwrap().len(), 1, "only the requested output");
    assert_eq!(r.output("label")["data"], json!(["pdf", "rust", "jpeg"]));
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

/// A metric's value for model `model` from `/metrics` text (0 when absent).
fn metric(text: &str, name: &str, model: &str) -> f64 {
    let prefix = format!("{name}{{model=\"{model}\"");
    text.lines()
        .find(|l| l.starts_with(&prefix))
        .and_then(|l| l.rsplit(' ').next())
        .map_or(0.0, |v| v.parse().unwrap())
}

#[test]
fn a_misbehaving_model_does_not_fail_or_stall_another() {
    // `faulty` loops, traps and exhausts memory on every request, from 6 clients at once;
    // `steady` (the same graph and plugin, asked nothing odd) must keep answering.
    let repo = edited_repository(&test_models(), &["faulty"], |t| {
        t.replace("[plugin]", "[scheduling]\nmax_in_flight = 1\n[plugin]")
    });
    let steady = edited_repository(&test_models(), &["faulty"], str::to_string);
    std::fs::rename(steady.path().join("faulty"), repo.path().join("steady")).unwrap();
    let server = Server::start(repo.path(), &[]);
    let timed = |n: usize, at_least: std::time::Duration| -> (Vec<std::time::Duration>, usize) {
        let mut times = Vec::new();
        let mut failed = 0;
        let began = std::time::Instant::now();
        while times.len() < n || began.elapsed() < at_least {
            let started = std::time::Instant::now();
            let r = server.infer("steady", &json!({"inputs": [{"name": "x", "shape": [3, 2], "datatype": "FP32", "data": [1, 1, 1, 1, 1, 1]}]}));
            times.push(started.elapsed());
            failed += usize::from(r.status != 200);
        }
        times.sort();
        (times, failed)
    };
    let (quiet, _) = timed(50, std::time::Duration::ZERO);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (under_attack, failed, faults) = std::thread::scope(|s| {
        let attackers: Vec<_> = ["loop", "trap", "memory", "loop", "trap", "memory"]
            .into_iter()
            .map(|fault| {
                let (server, stop) = (&server, &stop);
                s.spawn(move || {
                    let mut answered = 0;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let status = faulty(server, fault).status;
                        assert!(status == 500 || status == 503, "{fault}: {status}");
                        answered += 1;
                    }
                    answered
                })
            })
            .collect();
        std::thread::sleep(std::time::Duration::from_millis(300));
        let (times, failed) = timed(100, std::time::Duration::from_secs(3));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let faults: usize = attackers.into_iter().map(|a| a.join().unwrap()).sum();
        (times, failed, faults)
    });
    let p99 = |t: &[std::time::Duration]| t[t.len() * 99 / 100 - 1];
    eprintln!(
        "steady p50/p99 quiet {:?}/{:?}, under attack {:?}/{:?}; {faults} faulty requests",
        quiet[25],
        p99(&quiet),
        under_attack[50],
        p99(&under_attack)
    );
    assert_eq!(failed, 0, "steady failed while faulty misbehaved");
    assert!(faults > 12, "the attack ran ({faults} faulty requests)");
    // The bound README states: a misbehaving model holds at most its max_in_flight cores,
    // so another model's p99 stays under 100 ms on 2 cores.
    assert!(
        p99(&under_attack) < std::time::Duration::from_millis(100),
        "steady p99 {:?} under attack",
        p99(&under_attack)
    );
}

#[test]
fn a_metered_plugin_stops_at_its_fuel_and_serves_within_it() {
    let repo = edited_repository(&test_models(), &["faulty"], |t| {
        slow(t).replace("[plugin]", "[plugin]\nfuel = 5000000")
    });
    let server = Server::start(repo.path(), &[]);
    assert_serves(&server);
    let started = std::time::Instant::now();
    let r = faulty(&server, "loop");
    assert_eq!(r.status, 500);
    assert_eq!(r.error(), "plugin 'faulty' failed: exceeded its fuel of 5000000 instructions (plugin.fuel)");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "stopped by fuel, not by the 5 s time limit"
    );
    assert_serves(&server);
    assert_eq!(server.get_json("/v2/models/faulty").1["parameters"]["plugin_fuel"], 5000000);
}

#[test]
fn a_plugin_returning_more_than_its_output_limit_fails_that_request() {
    let repo = edited_repository(&test_models(), &["faulty"], |t| {
        t.replace("[plugin]", "[plugin]\nmax_output_mib = 1")
    });
    let server = Server::start(repo.path(), &[]);
    let r = faulty(&server, "oversized");
    assert_eq!(r.status, 500);
    let message = "plugin 'faulty' failed: preprocess returned 2 MiB of tensor data, over its limit of 1 MiB (plugin.max_output_mib)";
    assert_eq!(r.error(), message);
    assert_serves(&server);
}

#[test]
fn a_plugin_over_its_table_limit_fails_with_the_limit_named() {
    // The faulty plugin's function table has about 70 elements: under a cap of 50 it cannot
    // even be instantiated for its warm-up, so the model never serves (a plugin growing its
    // table at run time meets the same check).
    let repo = edited_repository(&test_models(), &["faulty"], |t| {
        t.replace("[plugin]", "[plugin]\nmax_table_elements = 50")
    });
    let server = Server::start_listening(repo.path(), &[]);
    let index = server.wait_loaded();
    let reason = "the plugin's warm-up failed: plugin 'faulty' failed: exceeded its table limit of 50 elements (plugin.max_table_elements)";
    assert_eq!(index[0]["reason"], reason);
    let r = faulty(&server, "none");
    assert_eq!(r.status, 503);
    assert!(r.error().contains(reason), "{}", r.error());
    let (status, body) = server.get("/v2/health/live");
    assert_eq!(status, 200, "{body}\n{}", server.log());
}

#[test]
fn a_plugin_runs_only_its_own_graph_and_those_its_config_grants() {
    let repo = edited_repository(&test_models(), &["faulty"], str::to_string);
    for (name, graphs) in [("granted", r#"["faulty"]"#), ("dangling", r#"["nope"]"#)] {
        let copy = edited_repository(&test_models(), &["faulty"], |t| {
            t.replace("[plugin]", &format!("[plugin]\ngraphs = {graphs}"))
        });
        std::fs::rename(copy.path().join("faulty"), repo.path().join(name)).unwrap();
    }
    let server = Server::start_listening(repo.path(), &[]);
    let index = server.wait_loaded();
    assert_eq!((&index[0]["name"], &index[0]["state"]), (&json!("dangling"), &json!("UNAVAILABLE")));
    let reason = index[0]["reason"].as_str().unwrap();
    assert!(reason.contains("`plugin.graphs`: no model named 'nope' has a loaded graph"), "{reason}");
    let by_name = |model: &str, graph: &str| {
        server.infer(
            model,
            &json!({"parameters": {"graph": graph},
            "inputs": [{"name": "x", "shape": [3, 2], "datatype": "FP32", "data": [1, 1, 1, 1, 1, 1]}]}),
        )
    };
    let (_, meta) = server.get("/v2/models/granted");
    let params = serde_json::from_str::<Value>(&meta).unwrap()["parameters"].clone();
    assert_eq!(params["plugin_graphs"], "granted,faulty", "{meta}");
    assert_eq!((&params["plugin_network"], &params["plugin_data_dir"]), (&json!(false), &Value::Null));
    assert_eq!(
        (&params["plugin_memory_limit_mib"], &params["plugin_max_table_elements"]),
        (&json!(64), &json!(1_000_000))
    );
    assert_eq!(by_name("granted", "faulty").status, 200, "a granted graph");
    assert_eq!(by_name("granted", "granted").status, 200, "its own graph");
    let r = by_name("faulty", "granted");
    assert_eq!(r.status, 500, "a graph not granted");
    assert!(r.error().contains("graph 'granted' load-by-name: ErrorCode::NotFound"), "{}", r.error());
}

#[test]
fn instances_are_reused_until_one_traps_or_reuse_is_off() {
    let calls = |server: &Server, fault: &str| {
        let r = server.infer(
            "faulty",
            &json!({"parameters": {"fault": fault}, "inputs": [{"name": "x", "shape": [3, 2], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6]}]}),
        );
        r.error().rsplit("call ").next().unwrap_or_default().to_string()
    };
    let server = Server::start(&test_models(), &[]);
    // The warm-up request ran first in the same instance; a refusal keeps the instance.
    let first: u32 = calls(&server, "count").parse().unwrap();
    assert_eq!(calls(&server, "count"), (first + 1).to_string());
    assert_eq!(server.infer("faulty", &json!({"parameters": {"fault": "trap"}, "inputs": [{"name": "x", "shape": [3, 2], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6]}]})).status, 500);
    assert_eq!(calls(&server, "count"), "1", "a trapped instance is never reused");
    drop(server);
    let repo = edited_repository(&test_models(), &["faulty"], |t| {
        t.replace("[plugin]", "[plugin]\nreuse_instances = false")
    });
    let server = Server::start(repo.path(), &[]);
    assert_eq!((calls(&server, "count"), calls(&server, "count")), ("1".into(), "1".into()));
}

#[test]
fn batched_requests_of_different_sizes_get_exactly_their_own_answers() {
    let files = read_json(&fixture("magika/expected.json"));
    let names: Vec<&str> = files.as_object().unwrap().keys().map(String::as_str).collect();
    // Request k asks about 1 to 3 files, so batches mix sizes and cut requests at odd rows.
    let requests: Vec<Vec<&str>> =
        (0..24).map(|k| (0..1 + k % 3).map(|i| names[(k * 5 + i) % names.len()]).collect()).collect();
    let answers = |server: &Server, concurrently: bool| -> Vec<Value> {
        let ask = |names: &Vec<&str>| {
            let r = identify_many(server, names, json!([]));
            assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
            json!([r.output("label")["data"], r.output("score")["data"]])
        };
        if !concurrently {
            return requests.iter().map(ask).collect();
        }
        let barrier = std::sync::Barrier::new(requests.len());
        std::thread::scope(|s| {
            let handles: Vec<_> = requests
                .iter()
                .map(|names| {
                    s.spawn(|| {
                        barrier.wait();
                        ask(names)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    };
    let unbatched = {
        let repo = edited_repository(&examples(), &["magika"], str::to_string);
        answers(&Server::start(repo.path(), &[]), false)
    };
    let repo = edited_repository(&examples(), &["magika"], |t| {
        format!("{t}\n[batching]\nmax_batch_size = 8\nmax_queue_delay_us = 200000\n")
    });
    let server = Server::start(repo.path(), &[]);
    let batched = answers(&server, true);
    for (k, (got, want)) in batched.iter().zip(&unbatched).enumerate() {
        assert_eq!(got[0], want[0], "request {k} ({:?}): labels", requests[k]);
        for (g, w) in f32s(&got[1]).iter().zip(f32s(&want[1])) {
            assert!((g - w).abs() < 1e-4, "request {k} ({:?}): score {g} batched, {w} alone", requests[k]);
        }
    }
    // The graph ran fewer times than there were requests: rows served in batches larger
    // than the request's own.
    let text = server.get("/metrics").1;
    let rows = metric(&text, "wasmserve_inference_count_total", "magika");
    let batch_rows = metric(&text, "wasmserve_batch_rows_sum", "magika");
    assert_eq!(rows, requests.iter().map(Vec::len).sum::<usize>() as f64);
    assert!(batch_rows > 2.0 * rows, "requests did not share batches: {batch_rows} vs {rows} rows\n{text}");
    let runs = metric(&text, "wasmserve_inference_exec_count_total", "magika");
    assert!(
        (1.0..requests.len() as f64 / 2.0).contains(&runs),
        "{runs} graph runs for {} requests",
        requests.len()
    );
}

#[test]
fn minilm_embeddings_match_the_reference() {
    let server = Server::start(&examples(), &[]);
    let expected = read_json(&fixture("minilm/expected.json"));
    let sentences: Vec<&str> =
        expected["sentences"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
    let got = embed(&server, &sentences, json!({}));
    for (i, (row, want)) in got.iter().zip(expected["embeddings"].as_array().unwrap()).enumerate() {
        let c = cosine(row, &f32s(want));
        assert!(c >= 0.999, "sentence {i} ({:?}): cosine {c} with the reference", sentences[i]);
        let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "sentence {i} is not L2-normalised: {norm}");
    }
    assert!(cosine(&got[0], &got[1]) > cosine(&got[0], &got[2]) + 0.3, "similar pair must score higher");
    // One at a time (no padding) gives the same vectors as the padded batch.
    let alone = embed(&server, &sentences[2..3], json!({}));
    assert!(cosine(&alone[0], &got[2]) > 0.9999);
    // Request parameters reach the plugin.
    let raw = embed(&server, &sentences[..1], json!({"normalize": false}));
    let norm = raw[0].iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() > 0.01, "normalize=false must skip normalisation (norm {norm})");
}

#[test]
fn health_metadata_and_binary_outputs() {
    let server = Server::start(&examples(), &[]);
    assert_eq!(server.get("/v2/health/live").0, 200);
    assert_eq!(server.get("/v2/health/ready").0, 200);
    assert_eq!(server.get("/v2/models/magika/ready").0, 200);
    assert_eq!(server.get("/v2/models/magika/versions/1/ready").0, 200);
    let (status, body) = server.get("/v2");
    assert_eq!(status, 200);
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["name"], "wasmserve");
    let (status, body) = server.get("/v2/models/minilm");
    assert_eq!(status, 200);
    let meta: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(meta["inputs"], json!([{"name": "text", "datatype": "BYTES", "shape": [-1]}]));
    assert_eq!(meta["outputs"], json!([{"name": "embedding", "datatype": "FP32", "shape": [-1, 384]}]));
    assert_eq!(meta["versions"], json!(["1"]));
    assert_eq!(server.get("/v2/models/minilm/versions/1"), (status, body));
    assert_eq!(server.get("/v2/models/minilm/versions/2").0, 404);

    // binary_data_output: the embedding comes back as raw little-endian floats after the JSON.
    let request = json!({"id": "req-7", "parameters": {"binary_data_output": true},
        "inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["hello"]}]});
    let r = server.infer("minilm", &request);
    assert_eq!(r.status, 200);
    let n = r.header_length.expect("binary response carries Inference-Header-Content-Length");
    let json = r.json();
    assert_eq!(json["id"], "req-7");
    assert_eq!(json["outputs"][0]["parameters"]["binary_data_size"], 384 * 4);
    let floats: Vec<f32> = r.body[n..].chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    let as_json = embed(&server, &["hello"], json!({}));
    assert_eq!(floats, as_json[0]);
}

#[test]
fn bad_requests_get_clear_errors() {
    let server = Server::start(&examples(), &["--max-body-mib", "1"]);
    let text = |data: Value, datatype: &str, shape: Value| json!({"inputs": [{"name": "text", "shape": shape, "datatype": datatype, "data": data}]});
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("minilm", b"{\"inputs\": [".to_vec(), 400, "malformed inference request"),
        (
            "minilm",
            text(json!([1.0]), "FP32", json!([1])).to_string().into(),
            400,
            "input 'text' must be BYTES, got FP32",
        ),
        (
            "minilm",
            text(json!(["a", "b"]), "BYTES", json!([3])).to_string().into(),
            400,
            "holds 3 elements but data has 2",
        ),
        (
            "minilm",
            text(json!(["a"]), "BYTES", json!([1, 1])).to_string().into(),
            400,
            "input 'text' has shape [1, 1]",
        ),
        ("minilm", json!({"inputs": []}).to_string().into(), 400, "missing input 'text'"),
        (
            "minilm",
            text(json!(["a"]), "STRING", json!([1])).to_string().into(),
            400,
            "unknown datatype 'STRING'",
        ),
        ("nope", text(json!(["a"]), "BYTES", json!([1])).to_string().into(), 404, "unknown model 'nope'"),
    ];
    for (model, body, status, message) in cases {
        let r = server.post(&format!("/v2/models/{model}/infer"), &[], &body);
        assert_eq!(r.status, status, "{message}: {}", String::from_utf8_lossy(&r.body));
        assert!(r.error().contains(message), "expected {message:?} in {:?}", r.error());
    }
    let r = server.post("/v2/models/minilm/versions/9/infer", &[], b"{}");
    assert_eq!((r.status, r.error().contains("no version '9'")), (404, true), "{}", r.error());
    let r = server.infer(
        "minilm",
        &json!({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a"]}], "outputs": [{"name": "nope"}]}),
    );
    assert_eq!(
        (r.status, r.error()),
        (400, "unknown output 'nope': the model's outputs are [\"embedding\"]".to_string())
    );
    // A plugin's refusal names the plugin: minilm takes UTF-8 only.
    let r = server.post("/v2/models/minilm/infer", &RAW, &[0xff, 0xfe, 0x00]);
    assert_eq!(r.status, 400);
    assert!(
        r.error().starts_with("plugin 'minilm' rejected the input: text[0] is not UTF-8"),
        "{}",
        r.error()
    );
    // Too large: 413 on the declared length, before the body is read; the server carries on.
    let (status, body) = server.raw_http(
        "POST /v2/models/magika/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 2097152\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("larger than 1048576 bytes"), "{body}");
    assert_eq!(server.get("/v2/models/none/ready").0, 404);
    assert_eq!(server.get("/v3/whatever").0, 404);
    assert_eq!(identify(&server, b"#!/bin/sh\necho hello world\nexit 0\n").0, "shell");
}

/// The server's peak resident memory, in bytes; `reset` starts a new peak (Linux).
fn peak_rss(server: &Server, reset: bool) -> u64 {
    let proc = format!("/proc/{}", server.pid());
    if reset {
        std::fs::write(format!("{proc}/clear_refs"), "5").unwrap();
    }
    let status = std::fs::read_to_string(format!("{proc}/status")).unwrap();
    let kib = status.lines().find_map(|l| l.strip_prefix("VmHWM:")).unwrap();
    kib.trim().trim_end_matches(" kB").parse::<u64>().unwrap() << 10
}

#[test]
fn hostile_bodies_cost_a_small_multiple_of_their_size() {
    // Bodies of 32 MiB that once made the server hold 14 to 53 times as much as they
    // weigh (bench/request_memory.py has every case). Each is refused with a 400, and the
    // server's peak memory grows by less than four times the body while it decides.
    let server = Server::start(&test_models(), &["--max-body-mib", "40"]);
    let size = 32usize << 20;
    let fill = |head: &str, unit: &dyn Fn(usize) -> String, tail: &str| {
        let mut body = head.to_string();
        let mut i = 0;
        while body.len() + tail.len() < size {
            body += &unit(i);
            i += 1;
        }
        body.pop();
        body + tail
    };
    let x = r#"{"name":"x","shape":[3,2],"datatype":"FP32","data":[1,2,3,4,5,6]}"#;
    let cases = [
        (
            fill(
                r#"{"inputs":[{"name":"x","shape":[3,2],"datatype":"FP32","data":["#,
                &|_| "[0],".into(),
                "]}]}",
            ),
            "input 'x': its shape holds 6 elements but data has",
        ),
        (
            fill(r#"{"parameters":{"#, &|i| format!(r#""p{i}":0,"#), &format!(r#"}},"inputs":[{x}]}}"#)),
            "more than 64 parameters",
        ),
        (fill(r#"{"inputs":["#, &|_| format!("{x},"), "]}"), "more than 1024 inputs"),
    ];
    for (body, expected) in cases {
        let before = peak_rss(&server, true);
        let r = server.post("/v2/models/faulty/infer", &[], body.as_bytes());
        let grew = peak_rss(&server, false) - before;
        assert_eq!(r.status, 400, "{expected}: {}", r.error());
        assert!(r.error().contains(expected), "{expected}: {}", r.error());
        assert!(grew < 4 * size as u64, "{expected}: peak memory grew by {} MiB", grew >> 20);
    }
    assert_model_serves(&server, "faulty");
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

#[test]
fn a_faulty_plugin_fails_only_its_own_request() {
    let server = Server::start(&test_models(), &[]);
    assert_serves(&server);
    for (fault, status, message) in [
        ("trap", 500, "plugin 'faulty' failed: wasm trap: wasm `unreachable` instruction executed"),
        ("loop", 500, "plugin 'faulty' failed: exceeded its time limit of 500 ms"),
        ("memory", 500, "plugin 'faulty' failed: exceeded its memory limit of 64 MiB"),
        ("invalid", 400, "plugin 'faulty' rejected the input: asked to refuse"),
        ("internal", 500, "plugin 'faulty' failed: asked to fail"),
        ("malformed", 500, "preprocess returned a malformed tensor"),
        // Rust keeps its stack in linear memory: running out of it is an out-of-bounds access.
        ("recurse", 500, "plugin 'faulty' failed: wasm trap: out of bounds memory access"),
        ("nn-wrong-type", 500, "plugin 'faulty' failed: graph 'faulty' compute: ErrorCode::"),
    ] {
        let r = faulty(&server, fault);
        assert_eq!(r.status, status, "{fault}: {}", String::from_utf8_lossy(&r.body));
        assert!(r.error().contains(message), "{fault}: expected {message:?} in {:?}", r.error());
        assert_serves(&server);
    }
    // The plugin sees no filesystem beyond what its config grants (here: nothing), no
    // environment, no arguments, and no network: not even the server's own open port.
    let r = faulty(&server, "read-outside");
    assert_eq!(r.status, 400);
    assert!(r.error().contains("reading /etc/passwd: Err"), "{}", r.error());
    let r = faulty(&server, "env");
    assert!(r.error().ends_with("env: 0 variables, 0 arguments"), "{}", r.error());
    // Its clocks tick in whole milliseconds: the smallest step it can see is 1 ms.
    let r = faulty(&server, "clock");
    let step: u64 =
        r.error().rsplit("monotonic step ").next().unwrap().trim_end_matches(" ns").parse().unwrap();
    assert!(r.error().contains("clock: wall 0 ns into its ms"), "{}", r.error());
    assert!(step > 0 && step.is_multiple_of(1_000_000), "{}", r.error());
    let addr = server.base.trim_start_matches("http://").to_string();
    let r = server.infer(
        "faulty",
        &json!({"parameters": {"fault": "connect", "addr": addr},
        "inputs": [{"name": "x", "shape": [3, 2], "datatype": "FP32", "data": [1, 1, 1, 1, 1, 1]}]}),
    );
    assert!(r.error().contains(&format!("connect {addr}: Err")), "{}", r.error());

    // A plugin may run a loaded graph itself through wasi:nn, by model name.
    let by_name = |graph: &str| {
        server.infer(
            "faulty",
            &json!({"parameters": {"graph": graph},
            "inputs": [{"name": "x", "shape": [3, 2], "datatype": "FP32", "data": [1, 1, 1, 1, 1, 1]}]}),
        )
    };
    let r = by_name("faulty");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.output("y")["data"], json!([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]));
    let r = by_name("nope");
    assert_eq!(r.status, 500, "a graph that is not there is the deployment's fault, not the client's");
    assert!(r.error().contains("graph 'nope' load-by-name: ErrorCode::NotFound"), "{}", r.error());

    // Plugin work never blocks the threads that answer health checks.
    std::thread::scope(|s| {
        let loops: Vec<_> = (0..4).map(|_| s.spawn(|| faulty(&server, "loop").status)).collect();
        std::thread::sleep(std::time::Duration::from_millis(100));
        for _ in 0..5 {
            assert_eq!(server.get("/v2/health/live").0, 200);
        }
        assert!(loops.into_iter().all(|h| h.join().unwrap() == 500));
    });
    assert_serves(&server);
}

#[test]
fn start_up_errors_name_the_cause() {
    let typo = edited_repository(&test_models(), &["faulty"], |t| t.replace("timeout_ms", "timeout_msec"));
    let (_, log) = run_to_failure(typo.path(), &["--exit-on-error"], &[]);
    assert!(log.contains("faulty/model.toml") && log.contains("unknown field `timeout_msec`"), "{log}");

    let onnx = edited_repository(&test_models(), &["faulty"], |t| {
        t.replace("[plugin]", "backend = \"onnx\"\n[plugin]")
    });
    let (_, log) = run_to_failure(
        onnx.path(),
        &["--exit-on-error"],
        &[("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so")],
    );
    assert!(log.contains("/nonexistent/libonnxruntime.so does not exist"), "{log}");
    assert!(!log.contains("panicked"), "{log}");

    let empty = tempfile::tempdir().unwrap();
    let (_, log) = run_to_failure(empty.path(), &[], &[]);
    assert!(log.contains("no models in"), "{log}");
}

#[test]
fn onnx_runtime_agrees_with_tract() {
    let Some(library) = onnxruntime_library() else { return };
    // Two executions: two ONNX Runtime sessions, used at once by concurrent requests.
    let repo = edited_repository(&examples(), &["magika", "minilm"], |t| {
        format!("{t}\n[scheduling]\nexecutions = 2\n")
    });
    let onnx = Server::start_env(repo.path(), &[], &[("ORT_DYLIB_PATH", &library)]);
    let on_tract = edited_repository(&examples(), &["magika", "minilm"], |t| {
        t.replace("backend = \"onnx\"", "backend = \"tract\"")
    });
    let tract = Server::start(on_tract.path(), &[]);
    let (_, meta) = tract.get("/v2/models/magika");
    assert!(meta.contains("onnx/tract"), "{meta}");
    let (_, meta) = onnx.get("/v2/models/magika");
    assert!(meta.contains("onnx/onnx"), "{meta}");
    std::thread::scope(|s| {
        for name in ["doc.pdf", "main.rs", "photo.jpg", "index.html", "notes.txt"] {
            let (onnx, tract) = (&onnx, &tract);
            s.spawn(move || {
                let bytes = std::fs::read(fixture("magika/files").join(name)).unwrap();
                let (a, b) = (identify(onnx, &bytes), identify(tract, &bytes));
                assert_eq!(a.0, b.0, "{name}");
                assert!((a.1 - b.1).abs() < 1e-3, "{name}: scores {} vs {}", a.1, b.1);
            });
        }
    });
    let sentences = ["A man is playing a guitar.", "The report is due on Friday."];
    for (a, b) in embed(&onnx, &sentences, json!({})).iter().zip(embed(&tract, &sentences, json!({}))) {
        assert!(cosine(a, &b) > 0.999, "backends disagree: cosine {}", cosine(a, &b));
    }
}

/// The optimised graphs in a cache directory, and whether a half-written one was left.
fn optimised_graphs(cache: &Path) -> (Vec<PathBuf>, bool) {
    let Ok(entries) = std::fs::read_dir(cache.join("graphs")) else { return (vec![], false) };
    let files: Vec<PathBuf> = entries.map(|e| e.unwrap().path()).collect();
    let partial = files.iter().any(|f| f.to_string_lossy().ends_with(".part"));
    (files.into_iter().filter(|f| f.extension().is_some_and(|e| e == "onnx")).collect(), partial)
}

#[test]
fn onnx_runtime_keeps_the_graph_it_optimised_across_restarts() {
    let Some(library) = onnxruntime_library() else { return };
    let repo = edited_repository(&test_models(), &["faulty"], |t| {
        format!("{}\n[scheduling]\nexecutions = 2\n", t.replace("[plugin]", "backend = \"onnx\"\n[plugin]"))
    });
    let cache = tempfile::tempdir().unwrap();
    let args = ["--cache-dir", cache.path().to_str().unwrap()];
    let start = || Server::start_env(repo.path(), &args, &[("ORT_DYLIB_PATH", &library)]);

    // First start: optimised once, saved, and the second session loads what the first saved.
    let server = start();
    assert_serves(&server);
    let log = server.log();
    assert_eq!(log.matches("optimised graph saved to the cache").count(), 1, "{log}");
    let (graphs, partial) = optimised_graphs(cache.path());
    assert_eq!(graphs.len(), 1, "{graphs:?}");
    assert!(!partial, "a half-written graph was left behind");
    drop(server);

    // A restart loads it as it is, and answers the same.
    let server = start();
    assert_serves(&server);
    let log = server.log();
    assert!(
        log.contains("optimised graph loaded from the cache") && !log.contains("saved to the cache"),
        "{log}"
    );
    drop(server);

    // A damaged file is not trusted: removed, optimised again, saved again.
    std::fs::write(&graphs[0], b"not a graph").unwrap();
    let server = start();
    assert_serves(&server);
    let log = server.log();
    assert!(log.contains("does not load") && log.contains("optimised graph saved to the cache"), "{log}");
    assert!(std::fs::metadata(&graphs[0]).unwrap().len() > 100);
    drop(server);

    // --no-cache keeps nothing: every start optimises.
    let elsewhere = tempfile::tempdir().unwrap();
    let server = Server::start_with(repo.path(), &["--no-cache"], |cmd| {
        cmd.env("ORT_DYLIB_PATH", &library).env("XDG_CACHE_HOME", elsewhere.path());
    });
    assert_serves(&server);
    assert!(!server.log().contains("optimised graph"), "{}", server.log());
    assert!(!elsewhere.path().join("wasmserve").exists());
}

/// How many of the server's threads have a name starting with `prefix`.
fn threads_named(server: &Server, prefix: &str) -> usize {
    std::fs::read_dir(format!("/proc/{}/task", server.pid()))
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.unwrap().path().join("comm")).ok())
        .filter(|name| name.starts_with(prefix))
        .count()
}

#[test]
fn execution_settings_reach_the_backends() {
    let Some(library) = onnxruntime_library() else { return };
    let configured = |backend: &str, threads: usize, executions: usize| {
        edited_repository(&test_models(), &["faulty"], move |t| {
            let graph = format!("backend = \"{backend}\"\nthreads = {threads}\n[plugin]");
            format!("{}\n[scheduling]\nexecutions = {executions}\n", t.replace("[plugin]", &graph))
        })
    };
    // ONNX Runtime: a session per execution, each running on its caller's thread and
    // `threads - 1` intra-op threads of its own (named after the model: ort-faulty).
    for (threads, executions, pool) in [(3, 2, 4), (1, 3, 0)] {
        let repo = configured("onnx", threads, executions);
        let server = Server::start_env(repo.path(), &[], &[("ORT_DYLIB_PATH", &library)]);
        assert_eq!(threads_named(&server, "exec-faulty"), executions, "threads = {threads}");
        assert_eq!(
            threads_named(&server, "ort-faulty"),
            pool,
            "threads = {threads}, executions = {executions}"
        );
        assert_serves(&server);
    }
    // --onnxruntime-threads: one pool for every session, made with ONNX Runtime's environment
    // on a thread named ort-env, and none of the sessions' own.
    let repo = configured("onnx", 3, 2);
    let args = ["--onnxruntime-threads", "3"];
    let server = Server::start_env(repo.path(), &args, &[("ORT_DYLIB_PATH", &library)]);
    assert_eq!(threads_named(&server, "ort-faulty"), 0);
    // The environment's own thread, and the pool's N - 1 (the caller of a run is the Nth).
    assert_eq!(threads_named(&server, "ort-env"), 3);
    assert!(server.log().contains("one intra-op pool shared by every session"), "{}", server.log());
    assert_serves(&server);
    // tract: one pool of `threads` for the model's matrix products, shared by its executions;
    // none with 1.
    for (threads, pool) in [(3, 3), (1, 0)] {
        let repo = configured("tract", threads, 2);
        let server = Server::start(repo.path(), &[]);
        assert_eq!(threads_named(&server, "tract-faulty"), pool, "threads = {threads}");
        assert_serves(&server);
    }
}

#[test]
fn gpu_target_without_cuda_fails_or_falls_back_as_configured() {
    let Some(library) = onnxruntime_library() else { return };
    let library = library.to_str().unwrap();
    let gpu = |fallback: bool| {
        edited_repository(&test_models(), &["faulty"], move |t| {
            t.replace(
                "[plugin]",
                &format!("backend = \"onnx\"\ntarget = \"gpu\"\ngpu_fallback = {fallback}\n[plugin]"),
            )
        })
    };
    // The CPU-only onnxruntime wheel has no CUDA provider (a GPU machine with onnxruntime-gpu
    // passes the first half instead; this suite runs on CPU machines).
    let strict = gpu(false);
    let (_, log) = run_to_failure(strict.path(), &["--exit-on-error"], &[("ORT_DYLIB_PATH", library)]);
    assert!(log.contains("target = \"gpu\" needs ONNX Runtime with CUDA"), "{log}");
    let lenient = gpu(true);
    let server = Server::start_env(lenient.path(), &[], &[("ORT_DYLIB_PATH", Path::new(library))]);
    assert!(server.log().contains("running on the CPU as gpu_fallback allows"), "{}", server.log());
    assert_serves(&server);
}

/// The faulty model with a warm-up request that carries these parameters (and room for
/// slow calls: a 5 s plugin deadline).
fn with_warmup(params: &str) -> impl Fn(&str) -> String + '_ {
    move |toml| {
        let toml = slow(toml);
        format!(
            "{toml}\n[[warmup]]\ninputs = [{{ name = \"x\", shape = [3, 2], datatype = \"FP32\", data = [1, 2, 3, 4, 5, 6] }}]\nparameters = {{ {params} }}\n"
        )
    }
}

fn slow(toml: &str) -> String {
    toml.replace("timeout_ms = 500", "timeout_ms = 5000")
}

#[test]
fn ready_only_after_warm_up_and_never_after_a_failed_one() {
    let repo = edited_repository(
        &test_models(),
        &["faulty"],
        with_warmup(r#"say = "warm-up reached the plugin", sleep_ms = "1500""#),
    );
    let mut server = Server::start_listening(repo.path(), &[]);
    assert_eq!(server.get("/v2/health/live").0, 200, "live while loading");
    assert_eq!(server.get("/v2/health/ready").0, 503, "not ready before warm-up");
    let (status, index) = server.get_json("/v2/repository/index");
    assert_eq!((status, &index[0]["state"]), (200, &json!("LOADING")));
    let r = faulty(&server, "none");
    assert_eq!(r.status, 503);
    assert_eq!(r.error(), "model 'faulty' is loading");
    server.wait_ready();
    let log = server.log();
    assert!(log.contains("warm-up reached the plugin"), "{log}");
    // The plugin's own warm-up export runs first, then the config's warm-up requests.
    let own = log.find("faulty: warm-up ran").unwrap_or_else(|| panic!("no plugin warm-up in\n{log}"));
    assert!(own < log.find("warm-up reached the plugin").unwrap(), "{log}");
    assert_eq!(server.get_json("/v2/repository/index").1[0]["state"], "READY");
    assert_serves(&server);
    drop(server);

    // Two models, one whose warm-up the plugin refuses: that one never becomes ready.
    let repo = edited_repository(&test_models(), &["faulty"], slow);
    let broken = edited_repository(&test_models(), &["faulty"], with_warmup(r#"fault = "invalid""#));
    std::fs::rename(broken.path().join("faulty"), repo.path().join("broken")).unwrap();
    for (ready_when, ready) in [("all", 503), ("any", 200)] {
        let server = Server::start_listening(repo.path(), &["--ready-when", ready_when]);
        let index = server.wait_loaded();
        assert_eq!(server.get("/v2/health/ready").0, ready, "--ready-when {ready_when}");
        let reason = "warm-up 1 failed: plugin 'broken' rejected the input: asked to refuse";
        assert_eq!(index[0]["name"], "broken");
        assert_eq!(index[0]["state"], "UNAVAILABLE");
        assert_eq!(index[0]["reason"], reason);
        assert_eq!(index[1]["state"], "READY");
        let (status, body) = server.get("/v2/models/broken/ready");
        assert_eq!(status, 503);
        assert!(body.contains(reason), "{body}");
        assert_serves(&server);
    }
}

#[test]
fn a_failing_plugin_warm_up_keeps_its_model_unavailable() {
    let repo = tempfile::tempdir().unwrap();
    for (model, behaviour) in [("fails", "fail"), ("loops", "loop"), ("passes", "pass")] {
        let one = edited_repository(&test_models(), &["faulty"], |t| {
            t.replace("[plugin]", "[plugin]\ndata = \"data\"")
        });
        let dir = repo.path().join(model);
        std::fs::rename(one.path().join("faulty"), &dir).unwrap();
        std::fs::create_dir(dir.join("data")).unwrap();
        std::fs::write(dir.join("data/warm-up"), behaviour).unwrap();
    }
    let server = Server::start_listening(repo.path(), &[]);
    let index = server.wait_loaded();
    let reasons: Vec<_> =
        index.as_array().unwrap().iter().map(|m| (m["name"].clone(), m["reason"].clone())).collect();
    assert_eq!(
        reasons,
        [
            (
                json!("fails"),
                json!("the plugin's warm-up failed: plugin 'fails' failed: asked to fail its warm-up")
            ),
            (
                json!("loops"),
                json!(
                    "the plugin's warm-up failed: plugin 'loops' failed: exceeded its time limit of 500 ms"
                )
            ),
            (json!("passes"), Value::Null),
        ]
    );
    assert_eq!(server.get("/v2/health/ready").0, 503);
    assert_model_serves(&server, "passes");
}

#[test]
fn a_full_queue_refuses_at_once_and_a_wait_past_the_timeout_gives_up() {
    let repo = edited_repository(&test_models(), &["faulty"], |t| {
        format!("{}\n[scheduling]\nmax_in_flight = 1\nmax_queue = 1\n", slow(t))
    });
    let server = Server::start(repo.path(), &[]);
    let request = |params: Value| {
        server.infer(
            "faulty",
            &json!({"parameters": params, "inputs": [{"name": "x", "shape": [3, 2], "datatype": "FP32", "data": [2, 2, 2, 2, 2, 2]}]}),
        )
    };
    std::thread::scope(|s| {
        // One runs, one waits: the third is refused at once, with Retry-After.
        let running = s.spawn(|| request(json!({"sleep_ms": 1500})).status);
        std::thread::sleep(std::time::Duration::from_millis(300));
        let waiting = s.spawn(|| request(json!({})).status);
        std::thread::sleep(std::time::Duration::from_millis(300));
        let started = std::time::Instant::now();
        let refused = request(json!({}));
        assert!(started.elapsed() < std::time::Duration::from_millis(500), "refused at once");
        assert_eq!(refused.status, 503);
        assert_eq!(refused.retry_after.as_deref(), Some("1"));
        assert!(
            refused
                .error()
                .contains("model 'faulty' is busy: 1 running (max_in_flight) and 1 waiting (max_queue)"),
            "{}",
            refused.error()
        );
        assert_eq!(
            (running.join().unwrap(), waiting.join().unwrap()),
            (200, 200),
            "nothing accepted is lost"
        );
    });
    std::thread::scope(|s| {
        // A request's `timeout` (µs, as Triton's) bounds its wait for a slot.
        let running = s.spawn(|| request(json!({"sleep_ms": 1500})).status);
        std::thread::sleep(std::time::Duration::from_millis(300));
        let r = request(json!({"timeout": 200000}));
        assert_eq!(r.status, 503);
        assert!(r.error().contains("no slot free within the timeout of 200 ms"), "{}", r.error());
        assert_eq!(running.join().unwrap(), 200);
    });
    assert_serves(&server);
    let metrics = server.get("/metrics").1;
    assert!(
        metrics.contains(
            r#"wasmserve_inference_request_failure_total{model="faulty",version="1",code="503"} 2"#
        ),
        "{metrics}"
    );
}

#[test]
fn sigterm_finishes_every_request_in_flight_then_exits_zero() {
    let repo = edited_repository(&test_models(), &["faulty"], slow);
    let mut server = Server::start(repo.path(), &["--shutdown-delay-secs", "1"]);
    // Each request outlives the 1 s delay, so it finishes after new connections are refused.
    let slow = json!({"parameters": {"sleep_ms": "1500"},
        "inputs": [{"name": "x", "shape": [3, 2], "datatype": "FP32", "data": [2, 2, 2, 2, 2, 2]}]});
    let answers = std::thread::scope(|s| {
        let requests: Vec<_> = (0..6).map(|_| s.spawn(|| server.infer("faulty", &slow))).collect();
        std::thread::sleep(std::time::Duration::from_millis(200));
        let pid = server_pid(&server);
        assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        std::thread::sleep(std::time::Duration::from_millis(200));
        // Readiness turns false at once; during the delay, requests are still served.
        assert_eq!(server.get("/v2/health/ready").0, 503);
        assert_eq!(server.get("/v2/health/live").0, 200);
        requests.into_iter().map(|r| r.join().unwrap()).collect::<Vec<_>>()
    });
    for r in &answers {
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.output("y")["data"], json!([2.0, 4.0, 6.0, 8.0, 10.0, 12.0]));
    }
    let status = server.terminate_wait();
    assert!(status.success(), "exit status {status}:\n{}", server.log());
    assert!(server.log().contains("stopped"), "{}", server.log());
    // Gone: new connections are refused.
    assert_eq!(server.get("/v2/health/live").0, 0);
}

fn server_pid(server: &Server) -> String {
    server.pid().to_string()
}

#[test]
fn compiled_plugins_are_cached_across_restarts() {
    let cache = tempfile::tempdir().unwrap();
    let dir = cache.path().to_str().unwrap();
    let files = || walk(cache.path());
    let compile_ms = |log: &str| -> Vec<String> {
        log.lines()
            .filter(|l| l.contains("plugin compiled"))
            .filter_map(|l| l.split("elapsed_ms=").nth(1)?.split(' ').next().map(str::to_string))
            .collect()
    };
    let first = Server::start(&examples(), &["--cache-dir", dir]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while files() < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(files() >= 2, "one compiled artefact per plugin under {dir}");
    let cold = compile_ms(&first.log());
    drop(first);
    let second = Server::start(&examples(), &["--cache-dir", dir]);
    assert_eq!(identify(&second, b"#!/bin/sh\necho cached\nexit 0\n").0, "shell");
    eprintln!("plugin compile, cold cache: {cold:?}; warm cache: {:?}", compile_ms(&second.log()));
}

fn walk(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| entries.flatten().map(|e| if e.path().is_dir() { walk(&e.path()) } else { 1 }).sum())
        .unwrap_or(0)
}

#[test]
fn request_ids_reach_the_response_and_the_json_logs() {
    let server = Server::start(&test_models(), &["--log-format", "json"]);
    let body = json!({"parameters": {"fault": "internal"},
        "inputs": [{"name": "x", "shape": [3, 2], "datatype": "FP32", "data": [1, 1, 1, 1, 1, 1]}]});
    let r =
        server.post("/v2/models/faulty/infer", &[("X-Request-Id", "req-42")], body.to_string().as_bytes());
    assert_eq!((r.status, r.request_id.as_deref()), (500, Some("req-42")));
    // Without one, the server makes one up and says which.
    let made_up = faulty(&server, "none").request_id.expect("x-request-id on every answer");
    assert_eq!(made_up.len(), 36, "a UUID: {made_up}");
    std::thread::sleep(std::time::Duration::from_millis(200));
    let failure = server
        .log()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .find(|l| l["fields"]["message"] == "request failed")
        .expect("the failure is logged");
    assert_eq!(failure["span"]["id"], "req-42", "{failure}");
    assert_eq!(failure["span"]["model"], "faulty", "{failure}");
    assert_eq!(failure["level"], "ERROR");
}

#[test]
fn config_file_settings_yield_to_flags_and_environment() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("wasmserve.toml");
    std::fs::write(&config, "max_body_mib = 1\nready_when = \"any\"\n").unwrap();
    let config = config.to_str().unwrap();
    let two_mib = "POST /v2/models/faulty/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 2097152\r\nConnection: close\r\n\r\n";
    let from_file = Server::start(&test_models(), &["--config", config]);
    assert_eq!(from_file.raw_http(two_mib).0, 413, "the file's 1 MiB limit applies");
    drop(from_file);
    let flag = Server::start(&test_models(), &["--config", config, "--max-body-mib", "4"]);
    let body = vec![0u8; 2 << 20];
    let r = flag.post("/v2/models/faulty/infer", &RAW, &body);
    assert_eq!(r.status, 400, "a flag overrides the file: read, then refused as the wrong shape");
    drop(flag);
    let env = Server::start_env(
        &test_models(),
        &["--config", config],
        &[("WASMSERVE_MAX_BODY_MIB", Path::new("4"))],
    );
    let r = env.post("/v2/models/faulty/infer", &RAW, &body);
    assert_eq!(r.status, 400, "the environment overrides the file");
}

/// `wasmserve batch` over `input` into `output`, on the test models.
fn batch_command(input: &Path, output: &Path) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_wasmserve"));
    cmd.args(["batch", "--model", "faulty", "--concurrency", "4", "--repository"]).arg(test_models());
    cmd.arg("--input").arg(input).arg("--output").arg(output);
    cmd.env("RUST_LOG", "info").stdin(std::process::Stdio::null());
    cmd
}

fn lines(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn a_batch_killed_midway_resumes_to_exactly_the_online_answers() {
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("requests.jsonl"), dir.path().join("answers.jsonl"));
    // 3,000 requests, every 250th malformed (a shape the model does not take), and a blank
    // line that is no record; each sleeps 1 ms in the plugin so the run lasts long enough
    // to be killed midway.
    let records = 3000;
    let mut text = String::new();
    for i in 0..records {
        let shape = if i % 250 == 7 { json!([2, 3]) } else { json!([3, 2]) };
        let data: Vec<f32> = (0..6).map(|k| ((i * 7 + k) % 23) as f32 - 11.0).collect();
        let request = json!({"id": format!("r{i}"), "parameters": {"sleep_ms": "1"},
            "inputs": [{"name": "x", "shape": shape, "datatype": "FP32", "data": data}]});
        text += &format!("{request}\n");
        if i == 10 {
            text += "\n";
        }
    }
    std::fs::write(&input, &text).unwrap();

    let mut first = batch_command(&input, &output).stderr(std::process::Stdio::null()).spawn().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::fs::read(&output).map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count()) < 500 {
        assert!(std::time::Instant::now() < deadline, "no progress in 60 s");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    first.kill().unwrap(); // SIGKILL: no chance to finish a line or flush
    first.wait().unwrap();
    let partial = lines(&output).len();
    assert!((500..records).contains(&partial), "killed midway: {partial} lines");

    let second = batch_command(&input, &output).output().unwrap();
    let log = String::from_utf8_lossy(&second.stderr);
    assert!(second.status.success(), "{log}");
    assert!(log.contains("resuming after the records already written"), "{log}");

    let answers = lines(&output);
    assert_eq!(answers.len(), records, "one line per record");
    assert_eq!(answers.iter().filter(|a| a["status"] == 400).count(), records / 250);
    let server = Server::start(&test_models(), &[]);
    let requests: Vec<Value> =
        text.lines().filter(|l| !l.is_empty()).map(|l| serde_json::from_str(l).unwrap()).collect();
    for (i, (answer, request)) in answers.iter().zip(&requests).enumerate() {
        assert_eq!(answer["record"], i, "in input order, each once");
        let line = if i <= 10 { i + 1 } else { i + 2 };
        assert_eq!(answer["source"], format!("requests.jsonl:{line}"));
        let online = server.infer("faulty", request);
        if online.status == 200 {
            assert_eq!(answer["response"], online.json(), "record {i}");
        } else {
            assert_eq!(
                (answer["status"].as_u64(), answer["error"].as_str()),
                (Some(online.status as u64), Some(online.error().as_str())),
                "record {i}"
            );
        }
    }
}

#[test]
fn a_batch_over_a_directory_answers_each_file_as_a_raw_request() {
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("in"), dir.path().join("out.jsonl"));
    std::fs::create_dir(&input).unwrap();
    let floats = |v: f32| (0..6).flat_map(|k| (v + k as f32).to_le_bytes()).collect::<Vec<u8>>();
    let files = [("a.bin", floats(1.0)), ("b.bin", vec![0; 5]), ("c.bin", floats(-3.5))];
    for (name, bytes) in &files {
        std::fs::write(input.join(name), bytes).unwrap();
    }
    let run = batch_command(&input, &output).output().unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let answers = lines(&output);
    let server = Server::start(&test_models(), &[]);
    assert_eq!(answers.len(), files.len());
    for (answer, (name, bytes)) in answers.iter().zip(&files) {
        assert_eq!(answer["source"], *name);
        let online = server.post("/v2/models/faulty/infer", &RAW, bytes);
        match online.status {
            200 => assert_eq!(answer["response"], online.json(), "{name}"),
            status => assert_eq!(
                (answer["status"].as_u64(), answer["error"].as_str()),
                (Some(status as u64), Some(online.error().as_str())),
                "{name}"
            ),
        }
    }
    assert_eq!(answers[1]["status"], 400, "5 bytes are no [3, 2] FP32 tensor");
}

#[test]
fn versions_are_served_by_their_policy_and_the_default_answers_unversioned_paths() {
    let repo = tempfile::tempdir().unwrap();
    let copy = |model: &str, version: u32, edit: &dyn Fn(&str) -> String| {
        let one = edited_repository(&test_models(), &["faulty"], edit);
        std::fs::create_dir_all(repo.path().join(model)).unwrap();
        std::fs::rename(one.path().join("faulty"), repo.path().join(model).join(version.to_string()))
            .unwrap();
    };
    for version in 1..=3 {
        copy("m", version, &|t| t.to_string());
    }
    // A version whose model.toml claims another number never serves.
    copy("m", 4, &|t| format!("version = \"7\"\n{t}"));
    // Every version served; unversioned requests pinned to 2 (a rollback is this line).
    std::fs::write(repo.path().join("m/versions.toml"), "policy = \"all\"\ndefault = 2\n").unwrap();
    copy("broken", 1, &|t| t.to_string());
    std::fs::write(repo.path().join("broken/versions.toml"), "policy = \"specific\"\nversions = [1, 4]\n")
        .unwrap();

    let server = Server::start_listening(repo.path(), &[]);
    let index = server.wait_loaded();
    let entries: Vec<(String, String, String)> = index
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().into(),
                e["version"].as_str().unwrap_or("-").into(),
                e["state"].as_str().unwrap().into(),
            )
        })
        .collect();
    let expected = [
        ("broken", "-", "UNAVAILABLE"),
        ("m", "1", "READY"),
        ("m", "2", "READY"),
        ("m", "3", "READY"),
        ("m", "4", "UNAVAILABLE"),
    ];
    assert_eq!(entries, expected.map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string())), "{index}");
    assert_eq!(index[0]["reason"], "`versions` lists 4, which has no directory (present: [1])");
    assert!(
        index[4]["reason"].as_str().unwrap().ends_with("says version \"7\" but its directory is 4"),
        "{index}"
    );

    let request =
        json!({"inputs": [{"name": "x", "shape": [3, 2], "datatype": "FP32", "data": [1, 1, 1, 1, 1, 1]}]});
    let body = request.to_string();
    let version_of = |path: &str| {
        let r = server.post(path, &[], body.as_bytes());
        (
            r.status,
            if r.status == 200 { r.json()["model_version"].as_str().unwrap().to_string() } else { r.error() },
        )
    };
    assert_eq!(version_of("/v2/models/m/infer"), (200, "2".into()));
    assert_eq!(version_of("/v2/models/m/versions/3/infer"), (200, "3".into()));
    assert_eq!(version_of("/v2/models/m/versions/1/infer"), (200, "1".into()));
    let (status, error) = version_of("/v2/models/m/versions/4/infer");
    assert_eq!(status, 503);
    assert!(error.starts_with("model 'm' version 4 is unavailable: "), "{error}");
    assert_eq!(
        version_of("/v2/models/m/versions/9/infer"),
        (404, "model 'm' has no version '9' (it serves [\"1\", \"2\", \"3\", \"4\"])".into())
    );
    assert_eq!(version_of("/v2/models/broken/infer").0, 503);
    assert_eq!(server.get_json("/v2/models/m").1["versions"], json!(["1", "2", "3", "4"]));
    assert_eq!(server.get("/v2/models/m/versions/3/ready").0, 200);
    assert_eq!(server.get("/v2/models/m/versions/4/ready").0, 503);
    let (_, metrics) = server.get("/metrics");
    assert!(metrics.contains("wasmserve_model_ready{model=\"m\",version=\"3\"} 1"), "{metrics}");
    assert!(metrics.contains("wasmserve_model_ready{model=\"m\",version=\"4\"} 0"), "{metrics}");
}

/// Three clients send `path` a request without pause while `work` runs; returns the
/// `model_version` of every answer and every failure.
fn under_load(server: &Server, path: &str, work: impl FnOnce()) -> (Vec<String>, Vec<String>) {
    let body =
        json!({"inputs": [{"name": "x", "shape": [3, 2], "datatype": "FP32", "data": [1, 1, 1, 1, 1, 1]}]})
            .to_string();
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let clients: Vec<_> = (0..3)
            .map(|_| {
                s.spawn(|| {
                    let (mut versions, mut failures) = (Vec::new(), Vec::new());
                    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                        let r = server.post(path, &[], body.as_bytes());
                        match r.status {
                            200 => versions.push(r.json()["model_version"].as_str().unwrap().to_string()),
                            _ => failures.push(format!("{}: {}", r.status, r.error())),
                        }
                    }
                    (versions, failures)
                })
            })
            .collect();
        work();
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let mut all = (Vec::new(), Vec::new());
        for client in clients {
            let (versions, failures) = client.join().unwrap();
            all.0.extend(versions);
            all.1.extend(failures);
        }
        all
    })
}

/// POST to a control endpoint at `base` with `token` (if any): status and error message.
fn control(base: &str, path: &str, token: Option<&str>) -> (u16, String, Option<String>) {
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let mut request = agent.post(format!("{base}{path}"));
    if let Some(token) = token {
        request = request.header("Authorization", format!("Bearer {token}"));
    }
    let mut r = request.send(&[] as &[u8]).unwrap();
    let challenge = r.headers().get("www-authenticate").map(|v| v.to_str().unwrap().to_string());
    let body = r.body_mut().read_to_string().unwrap_or_default();
    let error =
        serde_json::from_str::<Value>(&body).ok().and_then(|v| v["error"].as_str().map(str::to_string));
    (r.status().as_u16(), error.unwrap_or(body), challenge)
}

#[test]
fn reloads_and_rollbacks_under_load_fail_no_request_and_a_broken_version_never_serves() {
    const TOKEN: &str = "0123456789abcdef0123456789abcdef";
    let repo = tempfile::tempdir().unwrap();
    let version = |n: u32, warm_up: &str| {
        let one = edited_repository(&test_models(), &["faulty"], |t| {
            t.replace("[plugin]", "[plugin]\ndata = \"data\"")
        });
        let dir = repo.path().join("m").join(n.to_string());
        std::fs::create_dir_all(dir.parent().unwrap()).unwrap();
        std::fs::rename(one.path().join("faulty"), &dir).unwrap();
        std::fs::create_dir(dir.join("data")).unwrap();
        std::fs::write(dir.join("data/warm-up"), warm_up).unwrap();
    };
    version(1, "pass");
    version(2, "pass");
    let token_file = repo.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let args = ["--control-token-file", token_file.to_str().unwrap(), "--control-port", "0"];
    let server = Server::start(repo.path(), &args);
    let log = server.log();
    let at = log.split("control endpoints on ").nth(1).expect("the control address in the log");
    let base = format!(
        "http://{}",
        at.split(|c: char| !(c.is_ascii_digit() || c == '.' || c == ':')).next().unwrap()
    );
    let load = |token| control(&base, "/v2/repository/models/m/load", token);

    // The token guards the control port; the serving port has no control endpoints.
    let (status, error, challenge) = load(None);
    assert_eq!((status, challenge.as_deref()), (401, Some("Bearer realm=\"wasmserve\"")), "{error}");
    assert!(error.contains("Authorization: Bearer"), "{error}");
    assert_eq!(load(Some("0123456789abcdef0123456789abcdeX")).0, 401);
    assert_eq!(control(&server.base, "/v2/repository/models/m/load", Some(TOKEN)).0, 404);
    assert!(!server.log().contains(TOKEN), "the token never reaches the log");

    let body =
        json!({"inputs": [{"name": "x", "shape": [3, 2], "datatype": "FP32", "data": [1, 1, 1, 1, 1, 1]}]})
            .to_string();
    let (answers, failures) = under_load(&server, "/v2/models/m/infer", || {
        let pause = || std::thread::sleep(std::time::Duration::from_millis(300));
        pause();
        // Roll back: serve version 1 only.
        std::fs::write(repo.path().join("m/versions.toml"), "policy = \"specific\"\nversions = [1]\n")
            .unwrap();
        assert_eq!(load(Some(TOKEN)).0, 200);
        pause();
        // A new version whose warm-up fails never takes traffic; version 1 keeps serving.
        version(3, "fail");
        std::fs::write(repo.path().join("m/versions.toml"), "policy = \"latest\"\n").unwrap();
        let (status, error, _) = load(Some(TOKEN));
        assert_eq!(status, 400, "{error}");
        assert!(error.contains("the versions loaded before keep serving: version 3:"), "{error}");
        assert!(error.contains("asked to fail its warm-up"), "{error}");
        pause();
        // Forward again, to a version that works.
        std::fs::write(repo.path().join("m/versions.toml"), "policy = \"specific\"\nversions = [2]\n")
            .unwrap();
        assert_eq!(load(Some(TOKEN)).0, 200);
        pause();
    });
    assert_eq!(failures, Vec::<String>::new(), "no request fails during reloads and rollbacks");
    let count = |v: &str| answers.iter().filter(|a| *a == v).count();
    assert!(count("2") > 0 && count("1") > 0, "both versions served: {} and {}", count("2"), count("1"));
    assert_eq!(count("3"), 0, "the broken version never served");
    println!("{} requests during the reloads, none failed", answers.len());

    // Unload, then load again.
    assert_eq!(control(&base, "/v2/repository/models/m/unload", Some(TOKEN)).0, 200);
    let r = server.post("/v2/models/m/infer", &[], body.as_bytes());
    assert_eq!((r.status, r.error()), (503, "model 'm' is unavailable: unloaded".to_string()));
    assert_eq!(load(Some(TOKEN)).0, 200);
    assert_eq!(server.post("/v2/models/m/infer", &[], body.as_bytes()).status, 200);
    assert_eq!(control(&base, "/v2/repository/models/nope/load", Some(TOKEN)).0, 404);
    assert_eq!(control(&base, "/v2/repository/models/..%2Ftmp/load", Some(TOKEN)).0, 404);
}

#[test]
fn control_endpoints_are_off_without_a_token() {
    let server = Server::start(&test_models(), &[]);
    let (status, error, _) =
        control(&server.base, "/v2/repository/models/faulty/load", Some("anything-at-all-long"));
    assert_eq!(status, 403);
    assert!(error.starts_with("repository control is off"), "{error}");
    let (status, _, _) = control(&server.base, "/v2/repository/models/faulty/unload", None);
    assert_eq!(status, 403);
    assert_model_serves(&server, "faulty");
}

#[test]
fn polling_picks_up_changed_new_and_removed_model_directories() {
    let repo = tempfile::tempdir().unwrap();
    let copy = |to: &Path| {
        let one = edited_repository(&test_models(), &["faulty"], |t| t.to_string());
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::rename(one.path().join("faulty"), to).unwrap();
    };
    copy(&repo.path().join("m/1"));
    copy(&repo.path().join("m/2"));
    let server = Server::start(repo.path(), &["--poll-secs", "1"]);
    let body =
        json!({"inputs": [{"name": "x", "shape": [3, 2], "datatype": "FP32", "data": [1, 1, 1, 1, 1, 1]}]})
            .to_string();
    let answer = |model: &str| {
        let r = server.post(&format!("/v2/models/{model}/infer"), &[], body.as_bytes());
        if r.status == 200 {
            r.json()["model_version"].as_str().unwrap().to_string()
        } else {
            r.status.to_string()
        }
    };
    let eventually = |model: &str, expected: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while answer(model) != expected {
            assert!(
                std::time::Instant::now() < deadline,
                "{model} never answered {expected}:\n{}",
                server.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    };
    assert_eq!(answer("m"), "2");
    std::fs::write(repo.path().join("m/versions.toml"), "policy = \"specific\"\nversions = [1]\n").unwrap();
    eventually("m", "1");
    copy(&repo.path().join("new"));
    eventually("new", "1");
    std::fs::remove_dir_all(repo.path().join("new")).unwrap();
    eventually("new", "503");
    assert!(server.log().contains("its directory changed: reloading"), "{}", server.log());
}

#[test]
fn a_changed_plugin_and_model_file_reload_under_load_and_a_bad_digest_never_serves() {
    const TOKEN: &str = "a-token-long-enough-for-the-server";
    let repo = edited_repository(&test_models(), &["faulty"], |t| {
        let line = t.lines().find(|l| l.starts_with("description")).unwrap();
        t.replace(line, "description = \"before\"")
    });
    let dir = repo.path().join("faulty");
    let server = Server::start_env(repo.path(), &[], &[("WASMSERVE_CONTROL_TOKEN", Path::new(TOKEN))]);
    let load = || control(&server.base, "/v2/repository/models/faulty/load", Some(TOKEN));
    let description = || server.get_json("/v2/models/faulty").1["parameters"]["description"].clone();
    let replace = |name: &str| {
        // A new file in place of the link: new content as far as the server can tell.
        let bytes = std::fs::read(dir.join(name)).unwrap();
        std::fs::remove_file(dir.join(name)).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    };
    let config = std::fs::read_to_string(dir.join("model.toml")).unwrap();
    let (answers, failures) = under_load(&server, "/v2/models/faulty/infer", || {
        std::thread::sleep(std::time::Duration::from_millis(200));
        replace("plugin.wasm");
        replace("model.onnx");
        std::fs::write(dir.join("model.toml"), config.replace("before", "after")).unwrap();
        assert_eq!(load().0, 200);
        assert_eq!(description(), "after");
        // A file whose digest does not match what model.toml pins: the load fails, the
        // model loaded before keeps serving.
        std::fs::write(dir.join("extra.bin"), b"not what was pinned").unwrap();
        let pinned = format!(
            "{}\n[[fetch]]\nurl = \"extra.bin\"\nsha256 = \"{}\"\npath = \"extra.copy\"\n",
            config.replace("before", "broken"),
            "0".repeat(64)
        );
        std::fs::write(dir.join("model.toml"), pinned).unwrap();
        let (status, error, _) = load();
        assert_eq!(status, 400, "{error}");
        assert!(error.contains("sha256"), "{error}");
        assert_eq!(description(), "after");
        std::thread::sleep(std::time::Duration::from_millis(200));
    });
    assert_eq!(failures, Vec::<String>::new(), "no request fails while the model reloads");
    assert!(answers.len() > 50, "the load ran: {} answers", answers.len());
}

#[test]
fn a_route_splits_by_weight_sticks_by_header_and_never_returns_the_shadow() {
    let repo = tempfile::tempdir().unwrap();
    for model in ["a", "b", "c"] {
        let one = edited_repository(&test_models(), &["faulty"], |t| t.to_string());
        std::fs::rename(one.path().join("faulty"), repo.path().join(model)).unwrap();
    }
    std::fs::create_dir(repo.path().join("ab")).unwrap();
    let route = "sticky_header = \"x-user\"\n[[variants]]\nmodel = \"a\"\nweight = 30\n[[variants]]\nmodel = \"b\"\nweight = 70\n[shadow]\nmodel = \"c\"\n";
    std::fs::write(repo.path().join("ab/route.toml"), route).unwrap();
    let server = Server::start(repo.path(), &[]);
    let body =
        json!({"inputs": [{"name": "x", "shape": [3, 2], "datatype": "FP32", "data": [1, 1, 1, 1, 1, 1]}]})
            .to_string();
    let ask = |user: Option<&str>| {
        let headers: Vec<(&str, &str)> = user.map(|u| ("x-user", u)).into_iter().collect();
        let r = server.post("/v2/models/ab/infer", &headers, body.as_bytes());
        assert_eq!(r.status, 200, "{}", r.error());
        let json = r.json();
        let (name, variant) =
            (json["model_name"].as_str().unwrap(), json["parameters"]["variant"].as_str().unwrap());
        assert_eq!(name, variant, "the response names the variant that answered");
        name.to_string()
    };
    let requests = 10_000;
    let served: Vec<String> = std::thread::scope(|s| {
        let clients: Vec<_> =
            (0..4).map(|_| s.spawn(|| (0..requests / 4).map(|_| ask(None)).collect::<Vec<_>>())).collect();
        clients.into_iter().flat_map(|c| c.join().unwrap()).collect()
    });
    let share = served.iter().filter(|m| *m == "a").count() as f64 / requests as f64;
    println!("route ab: {:.2}% to a (weight 30%) over {requests} requests", share * 100.0);
    assert!((share - 0.30).abs() < 0.02, "a served {:.2}% of {requests}", share * 100.0);
    assert!(served.iter().all(|m| m == "a" || m == "b"), "the shadow never answers a client");
    // The same user always gets the same variant; users are spread over both.
    let mut seen = std::collections::BTreeSet::new();
    for user in 0..40 {
        let user = format!("user-{user}");
        let first = ask(Some(&user));
        for _ in 0..5 {
            assert_eq!(ask(Some(&user)), first, "{user} moved to another variant");
        }
        seen.insert(first);
    }
    assert_eq!(seen.len(), 2, "users land on both variants");
    // Every request was copied to the shadow (answered, or refused when it was busy), and its
    // answers were counted, not returned.
    let total = requests + 40 * 6;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let shadowed = loop {
        let (_, metrics) = server.get("/metrics");
        let shadowed: f64 = metrics
            .lines()
            .filter(|l| l.starts_with("wasmserve_route_requests_total{") && l.contains("role=\"shadow\""))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum();
        if shadowed as usize >= total || std::time::Instant::now() > deadline {
            break shadowed as usize;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert_eq!(shadowed, total, "one copy per request to the shadow");
    let (_, metrics) = server.get("/metrics");
    assert!(
        metrics.contains(
            "wasmserve_route_requests_total{route=\"ab\",variant=\"a\",role=\"served\",code=\"200\"}"
        ),
        "{metrics}"
    );
    assert_eq!(server.post("/v2/models/ab/versions/1/infer", &[], body.as_bytes()).status, 404);
}

#[test]
fn an_error_answer_leaves_a_keep_alive_connection_usable() {
    use std::io::{Read, Write};
    // The body arrives after the headers, as clients that write them apart send it: the
    // server reads it before answering 404, so the connection carries the next request.
    let server = Server::start(&test_models(), &[]);
    let mut stream = std::net::TcpStream::connect(server.base.trim_start_matches("http://")).unwrap();
    stream.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
    let body = br#"{"inputs":[{"name":"x","shape":[3,2],"datatype":"FP32","data":[1,1,1,1,1,1]}]}"#;
    let head =
        format!("POST /v2/models/nope/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n", body.len());
    stream.write_all(head.as_bytes()).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    stream.write_all(body).unwrap();
    let mut answer = [0u8; 4096];
    let n = stream.read(&mut answer).unwrap();
    assert!(
        String::from_utf8_lossy(&answer[..n]).starts_with("HTTP/1.1 404"),
        "{}",
        String::from_utf8_lossy(&answer[..n])
    );
    stream.write_all(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let n = stream.read(&mut answer).unwrap();
    assert!(
        String::from_utf8_lossy(&answer[..n]).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer[..n])
    );
}

/// `wasmserve check DIR`: exit status and what it printed.
fn check(dir: &Path) -> (bool, String) {
    let out =
        std::process::Command::new(env!("CARGO_BIN_EXE_wasmserve")).arg("check").arg(dir).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn check_passes_a_good_model_and_names_each_broken_one_with_a_hint() {
    let warmup = "[[warmup]]\ninputs = [{ name = \"x\", datatype = \"FP32\", shape = [3, 2], data = [1, 2, 3, 4, 5, 6] }]\n";
    let good = edited_repository(&test_models(), &["faulty"], |t| format!("{t}\n{warmup}"));
    let (ok, out) = check(&good.path().join("faulty"));
    assert!(ok, "{out}");
    assert!(out.contains("ok      faulty version 1: ready"), "{out}");
    type Edit<'a> = &'a dyn Fn(&str) -> String;
    type Damage<'a> = &'a dyn Fn(&Path);
    let plugin = |bytes: &'static [u8]| {
        move |d: &Path| {
            std::fs::remove_file(d.join("plugin.wasm")).unwrap();
            std::fs::write(d.join("plugin.wasm"), bytes).unwrap();
        }
    };
    // A file fetched with a digest it does not have (the test graph itself, by file://).
    let onnx = test_models().join("faulty/model.onnx");
    let wrong_digest = |t: &str| {
        let zeros = "0".repeat(64);
        format!(
            "{t}\n[[fetch]]\nurl = \"file://{}\"\nsha256 = \"{zeros}\"\npath = \"extra.onnx\"\n",
            onnx.display()
        )
    };
    let cases: [(&str, Edit, Damage, &str, &str); 7] = [
        ("wrong digest", &wrong_digest, &|_| {}, "sha256", "sha256sum FILE"),
        (
            "unknown key",
            &|t| t.replace("[plugin]", "[plugin]\ntimeout = 5"),
            &|_| {},
            "unknown field `timeout`",
            "wasmserve schema model",
        ),
        (
            "missing graph",
            &|t| t.to_string(),
            &|d| std::fs::remove_file(d.join("model.onnx")).unwrap(),
            "`graph.file` names model.onnx",
            "[[fetch]]",
        ),
        (
            "not a component",
            &|t| t.to_string(),
            &plugin(b"\0asm junk"),
            "cannot load its plugin",
            "wasm32-wasip2",
        ),
        (
            "a core module",
            &|t| t.to_string(),
            &plugin(b"\0asm\x01\0\0\0"),
            "cannot load its plugin",
            "not a component: build for wasm32-wasip2",
        ),
        (
            "a component without the exports",
            &|t| t.to_string(),
            &plugin(b"\0asm\x0d\0\x01\0"),
            "does not export the wasmserve:plugin world",
            "export_plugin!",
        ),
        (
            "outputs disagree",
            &|t| {
                format!(
                    "{}\n{warmup}",
                    t.replacen("datatype = \"FP32\"\nshape = [3, 2]\n\n[[outputs]]", "", 0)
                        .replace("name = \"y\"\ndatatype = \"FP32\"", "name = \"y\"\ndatatype = \"INT32\"")
                )
            },
            &|_| {},
            "postprocess returned 'y' as FP32, the config declares INT32",
            "[[outputs]]",
        ),
    ];
    for (case, edit, damage, message, hint) in cases {
        let repo = edited_repository(&test_models(), &["faulty"], edit);
        damage(&repo.path().join("faulty"));
        let (ok, out) = check(&repo.path().join("faulty"));
        assert!(!ok, "{case}: {out}");
        assert!(out.contains(message), "{case}: expected {message:?} in\n{out}");
        assert!(out.contains(hint), "{case}: expected hint {hint:?} in\n{out}");
    }
}
