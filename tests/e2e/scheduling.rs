//! Scheduling: the queue's limits and timeouts, dynamic batching's answers.

use super::*;
use std::time::{Duration, Instant};

/// A metric's value for model `model` from `/metrics` text (0 when absent).
fn metric(text: &str, name: &str, model: &str) -> f64 {
    let prefix = format!("{name}{{model=\"{model}\"");
    text.lines()
        .find(|l| l.starts_with(&prefix))
        .and_then(|l| l.rsplit(' ').next())
        .map_or(0.0, |v| v.parse().unwrap())
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
fn requests_whose_clients_leave_are_dropped_before_their_plugin_and_graph_run() {
    // One execution thread and room for all 200 at once: they wait for the model's thread,
    // 100 ms each (the plugin sleeps), as in an overload.
    let repository = edited_repository(&test_models(), &["faulty"], |toml| {
        format!("{}\n[scheduling]\nexecutions = 1\nmax_in_flight = 256\nmax_queue = 256\n", slow(toml))
    });
    let server = Server::start(repository.path(), &[]);
    let addr = server.base.trim_start_matches("http://").to_string();
    // The plugin says so each time it preprocesses: the log counts the calls that ran.
    let body = json!({"parameters": {"sleep_ms": 100, "say": "preprocess ran"},
        "inputs": [{"name": "x", "shape": [3, 2], "datatype": "FP32", "data": [2, 2, 2, 2, 2, 2]}]})
    .to_string();
    let request = format!(
        "POST /v2/models/faulty/infer HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let runs =
        |server: &Server| metric(&server.get("/metrics").1, "wasmserve_inference_exec_count_total", "faulty");
    let before = runs(&server);
    let started = Instant::now();
    // Every other client gives up after 50 ms; the others wait for their answer.
    let clients: Vec<_> = (0..200)
        .map(|i| {
            let (addr, request) = (addr.clone(), request.clone());
            std::thread::spawn(move || {
                use std::io::{Read, Write};
                let mut stream = std::net::TcpStream::connect(&addr).unwrap();
                stream.write_all(request.as_bytes()).unwrap();
                if i % 2 == 1 {
                    std::thread::sleep(Duration::from_millis(50));
                    return None;
                }
                stream.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
                let mut answer = String::new();
                stream.read_to_string(&mut answer).unwrap();
                Some(answer)
            })
        })
        .collect();
    for client in clients {
        if let Some(answer) = client.join().unwrap() {
            assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        }
    }
    let elapsed = started.elapsed();
    let text = server.get("/metrics").1;
    let ran = runs(&server) - before;
    let preprocessed = server.log().matches("preprocess ran").count();
    eprintln!(
        "200 requests, 100 abandoned after 50 ms: {preprocessed} plugin calls, {ran} graph runs in {elapsed:?}"
    );
    // A few may start before their client leaves on a loaded machine; without cancellation
    // it was 190.
    assert!((100..=110).contains(&preprocessed), "{preprocessed} plugin calls for 100 clients that stayed");
    assert_eq!(ran, 100.0, "graph runs");
    // Under load a client may leave before the server has read its request: not counted.
    let cancelled = metric(&text, "wasmserve_inference_request_cancelled_total", "faulty");
    assert!((50.0..=100.0).contains(&cancelled), "{cancelled} requests counted as cancelled");
    assert_eq!(metric(&text, "wasmserve_inference_pending_requests", "faulty"), 0.0);
}
