//! Model management: versions, reloads and rollbacks under load, the control token, polling, routes.

use super::*;

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
