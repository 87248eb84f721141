//! A server's life: start-up errors, readiness after warm-up, the compiled-plugin cache, the config file, SIGTERM.

use super::*;

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

#[test]
fn ready_only_after_warm_up_and_never_after_a_failed_one() {
    let repo = edited_repository(
        &test_models(),
        &["faulty"],
        with_warmup(r#"say = "warm-up reached the plugin", sleep_ms = "1500""#),
    );
    let mut server = Server::start_listening(repo.path(), &[]);
    // Status codes and the KServe v2 spec's JSON bodies (its Python SDK reads them).
    assert_eq!(server.get_json("/v2/health/live"), (200, json!({"live": true})), "live while loading");
    assert_eq!(
        server.get_json("/v2/health/ready"),
        (503, json!({"ready": false})),
        "not ready before warm-up"
    );
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
    assert_eq!(server.get_json("/v2/health/ready"), (200, json!({"ready": true})));
    assert_eq!(server.get_json("/v2/models/faulty/ready"), (200, json!({"name": "faulty", "ready": true})));
    assert_eq!(server.get_json("/v2/models/faulty/versions/1/ready").1["ready"], true);
    let (status, missing) = server.get_json("/v2/models/nothing/ready");
    assert_eq!((status, missing["error"].as_str()), (404, Some("unknown model 'nothing'")));
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
        let (status, body) = server.get_json("/v2/models/broken/ready");
        assert_eq!((status, &body["name"], &body["ready"]), (503, &json!("broken"), &json!(false)));
        assert!(body["error"].as_str().unwrap().contains(reason), "{body}");
        assert_serves(&server);
    }

    // `--ready-when any`: ready once one model is, while another still warms up.
    let repo = edited_repository(&test_models(), &["faulty"], |t| t.to_string());
    let late = edited_repository(&test_models(), &["faulty"], with_warmup(r#"sleep_ms = "3000""#));
    std::fs::rename(late.path().join("faulty"), repo.path().join("late")).unwrap();
    let mut server = Server::start_listening(repo.path(), &["--ready-when", "any"]);
    server.wait_ready();
    let (_, index) = server.get_json("/v2/repository/index");
    assert_eq!((&index[0]["state"], &index[1]["state"]), (&json!("READY"), &json!("LOADING")), "{index}");
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
