//! Many models on one server: on-demand loads shared by concurrent requests, the model
//! memory budget and least-recently-used eviction, failed loads, eager models, ensembles,
//! SIGTERM during a load.

use super::*;
use std::time::{Duration, Instant};

/// A repository of copies of the test model, named `names`, each model.toml edited by
/// `edit(name, text)`. Each copy has a larger plugin deadline (some tests send slow requests).
fn copies(names: &[&str], edit: impl Fn(&str, &str) -> String) -> tempfile::TempDir {
    let repo = tempfile::tempdir().unwrap();
    for name in names {
        let one = edited_repository(&test_models(), &["faulty"], |t| {
            edit(name, &t.replace("timeout_ms = 500", "timeout_ms = 10000"))
        });
        std::fs::rename(one.path().join("faulty"), repo.path().join(name)).unwrap();
    }
    repo
}

/// `[load]` with a policy and a declared cost, added to a model.toml.
fn load_table(policy: &str, memory_mib: u64) -> impl Fn(&str, &str) -> String {
    let table = format!("\n[load]\npolicy = \"{policy}\"\nmemory_mib = {memory_mib}\n");
    move |_, text| format!("{text}{table}")
}

const X: [f32; 6] = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0];

/// Infer on `model` with `params`; the answer's status and, when 200, its `y`.
fn infer_params(server: &Server, model: &str, params: Value) -> (u16, Option<Vec<f32>>, server::Response) {
    let body = json!({"parameters": params, "inputs": [{"name": "x", "shape": [3, 2], "datatype": "FP32", "data": X}]});
    let r = server.post(&format!("/v2/models/{model}/infer"), &[], body.to_string().as_bytes());
    let y = (r.status == 200).then(|| f32s(&r.output("y")["data"]));
    (r.status, y, r)
}

/// The graph's answer to X: Y = X * [[1, 2], [3, 4], [5, 6]].
const Y: [f32; 6] = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];

/// The sum of the metric lines that start with `prefix` (a name and the first labels).
fn metric(server: &Server, prefix: &str) -> f64 {
    let (_, text) = server.get("/metrics");
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Each model version's state in the repository index, by name.
fn states(server: &Server) -> std::collections::BTreeMap<String, String> {
    let (_, index) = server.get_json("/v2/repository/index");
    index
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap().to_string(), e["state"].as_str().unwrap().to_string()))
        .collect()
}

#[test]
fn a_budget_for_two_serves_three_alternating_models_evicting_the_least_recently_used() {
    let repo = copies(&["a", "b", "c"], load_table("on_demand", 40));
    let server = Server::start(repo.path(), &["--model-memory-mib", "100"]);
    // Ready with nothing loaded: the configs were checked, nothing else.
    assert_eq!(states(&server).values().collect::<Vec<_>>(), ["UNLOADED"; 3]);
    let (_, index) = server.get_json("/v2/repository/index");
    assert_eq!(index[0]["policy"], "on_demand", "{index}");
    for round in 0..4 {
        for model in ["a", "b", "c"] {
            let (status, y, r) = infer_params(&server, model, json!({}));
            assert_eq!(
                (status, y),
                (200, Some(Y.to_vec())),
                "round {round}, {model}: {}",
                String::from_utf8_lossy(&r.body)
            );
            let loaded: Vec<_> =
                states(&server).into_iter().filter(|(_, s)| s == "READY").map(|(n, _)| n).collect();
            let expected = if (round, model) == (0, "a") { 1 } else { 2 };
            assert_eq!(loaded.len(), expected, "{loaded:?}");
            assert!(loaded.contains(&model.to_string()));
        }
    }
    // Each request after the first two found its model evicted: 12 loads, 10 evictions.
    assert_eq!(metric(&server, "wasmserve_model_loads_total{"), 12.0);
    assert_eq!(metric(&server, "wasmserve_model_evictions_total{"), 10.0);
    assert_eq!(metric(&server, "wasmserve_models_resident_bytes "), (80 << 20) as f64);
    assert_eq!(metric(&server, "wasmserve_model_memory_budget_bytes "), (100 << 20) as f64);
    let (_, index) = server.get_json("/v2/repository/index");
    let ready: Vec<&Value> = index.as_array().unwrap().iter().filter(|e| e["state"] == "READY").collect();
    assert!(
        ready.iter().all(|e| e["resident_bytes"] == json!(40 << 20) && e["idle_secs"].is_number()),
        "{index}"
    );
    assert!(server.log().contains("evicted: the least recently used idle model"), "{}", server.log());
}

#[test]
fn a_model_with_a_request_in_flight_is_never_evicted_under_it() {
    let repo = copies(&["a", "b", "c"], load_table("on_demand", 40));
    let server = Server::start(repo.path(), &["--model-memory-mib", "100"]);
    assert_eq!(infer_params(&server, "b", json!({})).0, 200);
    // a is the least recently used once b is touched after it, but a slow request holds it.
    let slow = std::thread::scope(|s| {
        let slow = s.spawn(|| infer_params(&server, "a", json!({"sleep_ms": "2500"})));
        let deadline = Instant::now() + Duration::from_secs(10);
        while states(&server)["a"] != "READY" {
            assert!(Instant::now() < deadline, "a never loaded");
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(infer_params(&server, "b", json!({})).0, 200);
        // c needs room: b is idle, a busy; b goes although a was used longer ago.
        let (status, y, _) = infer_params(&server, "c", json!({}));
        assert_eq!((status, y), (200, Some(Y.to_vec())));
        let now = states(&server);
        assert_eq!((now["a"].as_str(), now["b"].as_str(), now["c"].as_str()), ("READY", "UNLOADED", "READY"));
        slow.join().unwrap()
    });
    assert_eq!((slow.0, slow.1), (200, Some(Y.to_vec())));
    assert_eq!(metric(&server, "wasmserve_model_evictions_total{model=\"a\""), 0.0);
    // Idle now, a is the oldest and goes for b.
    assert_eq!(infer_params(&server, "b", json!({})).0, 200);
    assert_eq!(states(&server)["a"], "UNLOADED");
}

#[test]
fn a_load_with_no_room_while_every_model_is_in_use_answers_503_with_why_then_loads() {
    let repo = copies(&["a", "b", "c"], load_table("on_demand", 40));
    // Room is waited for half of --load-wait-secs.
    let server = &Server::start(repo.path(), &["--model-memory-mib", "100", "--load-wait-secs", "2"]);
    std::thread::scope(|s| {
        let slow: Vec<_> = ["a", "b"]
            .into_iter()
            .map(|m| s.spawn(move || infer_params(server, m, json!({"sleep_ms": "3000"}))))
            .collect();
        let deadline = Instant::now() + Duration::from_secs(10);
        while states(server).values().filter(|s| *s == "READY").count() < 2 {
            assert!(Instant::now() < deadline, "a and b never loaded");
            std::thread::sleep(Duration::from_millis(20));
        }
        // a and b are in use and hold 80 of 100: c cannot have its 40 until one is idle.
        let (status, _, r) = infer_params(server, "c", json!({}));
        assert_eq!(status, 503, "{}", String::from_utf8_lossy(&r.body));
        assert!(
            r.error().contains("no room now: it needs 40.0 MiB and models in use hold 80.0 MiB"),
            "{}",
            r.error()
        );
        assert_eq!(r.retry_after.as_deref(), Some("1"));
        for t in slow {
            assert_eq!(t.join().unwrap().1, Some(Y.to_vec()));
        }
    });
    // Not the model's fault: no failure counted, and once a and b are idle c loads.
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(infer_params(server, "c", json!({})).1, Some(Y.to_vec()));
    assert_eq!(metric(server, "wasmserve_model_load_failures_total{"), 0.0);
}

/// Copies `names` of the test model, on demand, whose warm-up request sleeps `sleep_ms`;
/// `extra` added to each `[load]`.
fn slow_warm_up_copies(names: &[&str], extra: &str, sleep_ms: u64) -> tempfile::TempDir {
    copies(names, |_, t| {
        format!(
            "{t}\n[load]\npolicy = \"on_demand\"\n{extra}\n[[warmup]]\ninputs = [{{ name = \"x\", shape = [3, 2], datatype = \"FP32\", data = [1, 1, 1, 1, 1, 1] }}]\nparameters = {{ sleep_ms = \"{sleep_ms}\" }}\n"
        )
    })
}

#[test]
fn concurrent_first_requests_share_one_load() {
    // A warm-up that takes a while makes the load long enough for all 20 to find it running.
    let repo = slow_warm_up_copies(&["m"], "", 800);
    let server = Server::start(repo.path(), &[]);
    let answers: Vec<_> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..20).map(|_| s.spawn(|| infer_params(&server, "m", json!({})))).collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    for (status, y, r) in &answers {
        assert_eq!((*status, y.as_deref()), (200, Some(&Y[..])), "{}", String::from_utf8_lossy(&r.body));
        // Each says it waited for the load, and how long the load took (its warm-up sleeps
        // 800 ms); the next request does not.
        let timing = r.server_timing.as_deref().unwrap_or_default();
        let (waited, took) = (server_timing(timing, "load"), server_timing(timing, "model-load"));
        assert!(waited > 100.0 && took >= 800.0, "{timing}");
    }
    // The first to come started the load and waited for all of it.
    let longest = answers.iter().map(|a| server_timing(a.2.server_timing.as_deref().unwrap(), "load"));
    assert!(longest.fold(0.0, f64::max) >= 800.0);
    assert_eq!(infer_params(&server, "m", json!({})).2.server_timing, None);
    assert_eq!(
        metric(&server, "wasmserve_model_loads_total{model=\"m\",version=\"1\",cause=\"request\"}"),
        1.0
    );
    assert_eq!(metric(&server, "wasmserve_model_load_wait_seconds_count"), 20.0);
    assert!(metric(&server, "wasmserve_model_load_wait_seconds_sum") > 20.0 * 0.5);
}

#[test]
fn clients_that_leave_while_a_load_runs_neither_stop_it_nor_keep_the_model_from_eviction() {
    // A budget for one: m's load warms up for 800 ms, n then needs m's room.
    let repo = slow_warm_up_copies(&["m", "n"], "memory_mib = 40", 800);
    let server = Server::start(repo.path(), &["--model-memory-mib", "50"]);
    let body = json!({"inputs": [{"name": "x", "shape": [3, 2], "datatype": "FP32", "data": X}]}).to_string();
    let request = format!(
        "POST /v2/models/m/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    // Five clients ask for m and hang up while its load runs.
    let gone: Vec<_> = (0..5)
        .map(|_| {
            use std::io::Write;
            let mut stream = std::net::TcpStream::connect(server.base.trim_start_matches("http://")).unwrap();
            stream.write_all(request.as_bytes()).unwrap();
            stream
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(states(&server)["m"], "LOADING");
    drop(gone);
    std::thread::sleep(Duration::from_millis(100));
    // The load goes on for the one that stays, which waits for what is left of it.
    let (status, y, r) = infer_params(&server, "m", json!({}));
    assert_eq!((status, y), (200, Some(Y.to_vec())), "{}", String::from_utf8_lossy(&r.body));
    let waited = server_timing(r.server_timing.as_deref().unwrap(), "load");
    assert!((100.0..800.0).contains(&waited), "{waited}");
    assert_eq!(metric(&server, "wasmserve_model_loads_total{model=\"m\""), 1.0);
    // Every wait is counted, those that ended with the client gone too.
    assert_eq!(metric(&server, "wasmserve_model_load_wait_seconds_count"), 6.0);
    // Nothing the gone requests held keeps m in memory: it is idle, and goes for n.
    assert_eq!(infer_params(&server, "n", json!({})).1, Some(Y.to_vec()));
    let now = states(&server);
    assert_eq!((now["m"].as_str(), now["n"].as_str()), ("UNLOADED", "READY"));
    assert_eq!(metric(&server, "wasmserve_model_evictions_total{model=\"m\""), 1.0);
}

/// Requests to every one of `names` at once, each answered correctly; how long they took.
fn all_at_once(server: &Server, names: &[&str]) -> Duration {
    let started = Instant::now();
    std::thread::scope(|s| {
        let threads: Vec<_> =
            names.iter().map(|m| s.spawn(move || infer_params(server, m, json!({})))).collect();
        for t in threads {
            let (status, y, r) = t.join().unwrap();
            assert_eq!((status, y), (200, Some(Y.to_vec())), "{}", String::from_utf8_lossy(&r.body));
        }
    });
    started.elapsed()
}

#[test]
fn a_first_load_runs_alone_and_a_measured_model_reloads_for_a_request_without_its_warm_up() {
    // Copies of one model, each warm-up 800 ms, no declared cost: what each load adds to
    // memory is measured.
    let names = ["a", "b", "c", "d", "e", "f"];
    let repo = slow_warm_up_copies(&names, "", 800);
    let token = "a-control-token-of-some-length";
    let server = Server::start_with(repo.path(), &["--concurrent-loads", "2"], |cmd| {
        cmd.env("WASMSERVE_CONTROL_TOKEN", token);
    });
    let warm_ups = |server: &Server| server.log().matches("warm-up done").count();
    // Never measured: each load runs alone, with its warm-up, until five are; the sixth is
    // charged their median, and its request waits for no warm-up these files passed.
    let first = all_at_once(&server, &names);
    assert!(first >= Duration::from_millis(5 * 800), "{first:?}");
    assert_eq!(warm_ups(&server), 5, "{}", server.log());
    let (_, index) = server.get_json("/v2/repository/index");
    let charged: Vec<u64> =
        index.as_array().unwrap().iter().map(|m| m["resident_bytes"].as_u64().unwrap()).collect();
    assert!(charged.iter().all(|&c| c > 0), "{index}");
    // Evicted, then asked for again: their cost is known, their files passed the warm-up, so
    // the requests wait for loads without it, and nobody for 800 ms.
    let auth = format!("Bearer {token}");
    for name in names {
        let r =
            server.post(&format!("/v2/repository/models/{name}/unload"), &[("Authorization", &auth)], b"");
        assert_eq!(r.status, 200);
    }
    let again = all_at_once(&server, &names);
    assert!(again < Duration::from_millis(800), "{again:?}");
    assert_eq!(warm_ups(&server), 5, "{}", server.log());
    assert_eq!(server.log().matches("warmed_up=false").count(), 7, "{}", server.log());
    assert_eq!(metric(&server, "wasmserve_model_loads_total{"), 12.0);
    // A load nobody waits for (the repository API's) warms up as at start-up.
    let r = server.post("/v2/repository/models/a/load", &[("Authorization", &auth)], b"");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(warm_ups(&server), 6, "{}", server.log());
}

#[test]
fn loads_of_a_known_cost_run_up_to_concurrent_loads_at_once() {
    // A declared cost: nothing to measure, so loads run beside each other from the first.
    // Six first requests at once, two loads at a time (--concurrent-loads 2): the first two
    // warm up together (800 ms, not 1600); the four after them skip the warm-up their files
    // have passed.
    let names = ["a", "b", "c", "d", "e", "f"];
    let repo = slow_warm_up_copies(&names, "memory_mib = 1", 800);
    let server = Server::start(repo.path(), &["--concurrent-loads", "2"]);
    let took = all_at_once(&server, &names);
    assert!(took >= Duration::from_millis(800) && took < Duration::from_millis(1600), "{took:?}");
    assert_eq!(server.log().matches("warm-up done").count(), 2, "{}", server.log());
    assert_eq!(metric(&server, "wasmserve_model_loads_total{"), 6.0);
}

#[test]
fn a_broken_on_demand_model_answers_503_with_its_reason_and_the_others_serve() {
    let repo = copies(&["good", "broken", "huge"], |name, t| match name {
        "huge" => format!("{t}\n[load]\npolicy = \"on_demand\"\nmemory_mib = 500\n"),
        _ => format!("{t}\n[load]\npolicy = \"on_demand\"\n"),
    });
    // The config is fine; the graph file is not an ONNX model.
    let graph = repo.path().join("broken/model.onnx");
    std::fs::remove_file(&graph).unwrap();
    std::fs::write(&graph, b"not a graph").unwrap();
    let server = Server::start(repo.path(), &["--model-memory-mib", "100"]);
    let (status, _, r) = infer_params(&server, "broken", json!({}));
    assert_eq!(status, 503);
    assert!(r.error().starts_with("model 'broken' failed to load: cannot load its graph"), "{}", r.error());
    assert!(r.retry_after.is_some());
    // Within its back-off it is not loaded again: answered at once, with when to retry.
    let (status, _, r) = infer_params(&server, "broken", json!({}));
    assert_eq!(status, 503);
    assert!(r.error().contains("it is tried again in"), "{}", r.error());
    let retry: u64 = r.retry_after.unwrap().parse().unwrap();
    assert!((1..=5).contains(&retry), "{retry}");
    assert_eq!(metric(&server, "wasmserve_model_load_failures_total{model=\"broken\""), 1.0);
    // Larger than the budget: a clear error, nothing evicted for it.
    assert_eq!(infer_params(&server, "good", json!({})).0, 200);
    let (status, _, r) = infer_params(&server, "huge", json!({}));
    assert_eq!(status, 503);
    assert!(r.error().contains("can never fit the model memory budget of 100.0 MiB"), "{}", r.error());
    assert_eq!(states(&server)["good"], "READY");
    assert_eq!(metric(&server, "wasmserve_model_evictions_total{"), 0.0);
    // The server stays ready and the good model serves.
    assert_eq!(server.get("/v2/health/ready").0, 200);
    assert_eq!(server.get("/v2/models/good/ready").0, 200);
    assert_eq!(server.get("/v2/models/broken/ready").0, 503);
    assert_eq!(infer_params(&server, "good", json!({})).1, Some(Y.to_vec()));
    // The requests that waited for a load count in the wait's metric, whether it failed or not:
    // broken's first, huge's, good's first.
    assert_eq!(metric(&server, "wasmserve_model_load_wait_seconds_count"), 3.0);
}

#[test]
fn eager_models_are_never_evicted_and_ensembles_load_and_stay_together() {
    // e is eager (the server default); caller's plugin runs callee's graph; x and y churn.
    let repo = copies(&["e", "caller", "callee", "x", "y"], |name, t| match name {
        "e" => format!("{t}\n[load]\nmemory_mib = 30\n"),
        "caller" => format!(
            "{}\n[load]\npolicy = \"on_demand\"\nmemory_mib = 20\n",
            t.replace("[plugin]\n", "[plugin]\ngraphs = [\"callee\"]\n")
        ),
        _ => format!("{t}\n[load]\npolicy = \"on_demand\"\nmemory_mib = 20\n"),
    });
    let server = Server::start(repo.path(), &["--model-memory-mib", "100"]);
    assert_eq!(states(&server)["e"], "READY");
    // Loading the caller brings the callee.
    let (status, y, _) = infer_params(&server, "caller", json!({"graph": "callee"}));
    assert_eq!((status, y), (200, Some(Y.to_vec())));
    assert_eq!(states(&server)["callee"], "READY");
    assert_eq!(
        metric(&server, "wasmserve_model_loads_total{model=\"callee\",version=\"1\",cause=\"dependency\"}"),
        1.0
    );
    // 30 (e) + 20 + 20 held; x fits (90); y needs room: the least recently used idle
    // model not called by a loaded one is the caller, which goes (and the callee is then free).
    for model in ["x", "y", "x", "y"] {
        assert_eq!(infer_params(&server, model, json!({})).0, 200, "{model}");
        let now = states(&server);
        assert_eq!(now["e"], "READY");
        assert!(now["caller"] != "READY" || now["callee"] == "READY", "{now:?}");
    }
    assert_eq!(metric(&server, "wasmserve_model_evictions_total{model=\"e\""), 0.0);
    assert!(metric(&server, "wasmserve_models_resident_bytes ") <= (100 << 20) as f64);
    assert_eq!(infer_params(&server, "e", json!({})).1, Some(Y.to_vec()));
    // The repository API: unload evicts an on-demand model; load brings it back now.
    let token = "a-control-token-of-some-length";
    drop(server);
    let server = Server::start_with(repo.path(), &["--model-memory-mib", "100"], |cmd| {
        cmd.env("WASMSERVE_CONTROL_TOKEN", token);
    });
    let control = |action: &str, model: &str| {
        let auth = format!("Bearer {token}");
        server
            .post(&format!("/v2/repository/models/{model}/{action}"), &[("Authorization", &auth)], b"")
            .status
    };
    assert_eq!(control("load", "x"), 200);
    assert_eq!(states(&server)["x"], "READY");
    assert_eq!(control("unload", "x"), 200);
    assert_eq!(states(&server)["x"], "UNLOADED");
    assert_eq!(
        metric(&server, "wasmserve_model_evictions_total{model=\"x\",version=\"1\",reason=\"unload\"}"),
        1.0
    );
    assert_eq!(infer_params(&server, "x", json!({})).1, Some(Y.to_vec()));
}

#[test]
fn sigterm_while_a_load_runs_exits_cleanly() {
    let repo = slow_warm_up_copies(&["slow"], "", 3000);
    let mut server = Server::start(repo.path(), &["--drain-timeout-secs", "10"]);
    let started = std::thread::scope(|s| {
        let waiting = s.spawn(|| infer_params(&server, "slow", json!({})).0);
        let deadline = Instant::now() + Duration::from_secs(10);
        while states(&server)["slow"] != "LOADING" {
            assert!(Instant::now() < deadline, "the load never started");
            std::thread::sleep(Duration::from_millis(20));
        }
        let pid = server.pid().to_string();
        let started = Instant::now();
        assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        // The request waiting for the load is answered (the load finishes within the drain).
        assert_eq!(waiting.join().unwrap(), 200);
        started
    });
    let status = server.terminate_wait();
    assert!(status.success(), "{status}:\n{}", server.log());
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
}

#[test]
fn versions_routes_and_shadows_load_on_demand_each_version_on_its_own() {
    // v: two on-demand versions (default 2); r: a route to v version 1, shadowed by version 2.
    let repo = copies(&[], |_, t| t.to_string());
    for version in ["1", "2"] {
        let one = copies(&["one"], load_table("on_demand", 10));
        std::fs::create_dir_all(repo.path().join("v")).unwrap();
        std::fs::rename(one.path().join("one"), repo.path().join("v").join(version)).unwrap();
    }
    std::fs::write(repo.path().join("v/versions.toml"), "policy = \"all\"\ndefault = 2\n").unwrap();
    std::fs::create_dir(repo.path().join("r")).unwrap();
    std::fs::write(
        repo.path().join("r/route.toml"),
        "[[variants]]\nmodel = \"v\"\nversion = \"1\"\n[shadow]\nmodel = \"v\"\nversion = \"2\"\n",
    )
    .unwrap();
    let server = Server::start(repo.path(), &[]);
    let version_states = || {
        let (_, index) = server.get_json("/v2/repository/index");
        index.as_array().unwrap().iter().map(|e| e["state"].as_str().unwrap().to_string()).collect::<Vec<_>>()
    };
    assert_eq!(version_states(), ["UNLOADED", "UNLOADED"]);
    // Readiness of an unloaded on-demand model: it can serve.
    assert_eq!(server.get("/v2/models/v/versions/1/ready").0, 200);
    let (status, y, r) = infer_params(&server, "r", json!({}));
    assert_eq!((status, y), (200, Some(Y.to_vec())));
    assert_eq!(r.json()["model_version"], "1");
    // The shadow's copy loads version 2 beside the answer.
    let deadline = Instant::now() + Duration::from_secs(10);
    while version_states() != ["READY", "READY"] {
        assert!(Instant::now() < deadline, "{:?}", version_states());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        metric(&server, "wasmserve_model_loads_total{model=\"v\",version=\"2\",cause=\"request\"}"),
        1.0
    );
    // Unversioned requests go to the default version, already in memory: no load.
    let (_, _, r) = infer_params(&server, "v", json!({}));
    assert_eq!((r.json()["model_version"].as_str(), r.server_timing), (Some("2"), None));
}

#[test]
fn metadata_and_configuration_answer_from_the_config_and_load_nothing() {
    // a and b on demand, room for one; r: a route to a.
    let repo = copies(&["a", "b"], load_table("on_demand", 40));
    std::fs::create_dir(repo.path().join("r")).unwrap();
    std::fs::write(repo.path().join("r/route.toml"), "[[variants]]\nmodel = \"a\"\n").unwrap();
    let server = Server::start(repo.path(), &["--model-memory-mib", "50"]);
    let described = || {
        ["/v2/models/a", "/v2/models/a/versions/1", "/v2/models/a/config", "/v2/models/r"].map(|path| {
            let (status, body) = server.get_json(path);
            assert_eq!(status, 200, "{path}: {body}");
            body
        })
    };
    // What a client library asks before its first request, or a dashboard of every model.
    let unloaded = described();
    assert_eq!(unloaded[0]["inputs"][0]["name"], "x", "{}", unloaded[0]);
    assert_eq!(unloaded[0]["versions"], json!(["1"]));
    assert_eq!(unloaded[2]["input"][0]["name"], "x", "{}", unloaded[2]);
    assert_eq!(unloaded[3]["name"], "a", "a route answers with its variant's: {}", unloaded[3]);
    assert_eq!(states(&server).values().collect::<Vec<_>>(), ["UNLOADED"; 2]);
    assert_eq!(metric(&server, "wasmserve_model_loads_total{"), 0.0);
    // Loaded, it says the same.
    assert_eq!(infer_params(&server, "a", json!({})).0, 200);
    assert_eq!(described(), unloaded);
    // Evicted for b, the same again, and asking neither loads a nor evicts b.
    assert_eq!(infer_params(&server, "b", json!({})).0, 200);
    assert_eq!(states(&server)["a"], "UNLOADED");
    assert_eq!(described(), unloaded);
    assert_eq!(states(&server)["b"], "READY");
    assert_eq!(metric(&server, "wasmserve_model_loads_total{"), 2.0);
    assert_eq!(metric(&server, "wasmserve_model_evictions_total{"), 1.0);
    assert_eq!(server.get("/v2/models/a/versions/2").0, 404);
    assert_eq!(server.get("/v2/models/nope/config").0, 404);
}

/// The duration of metric `name` in a `Server-Timing` header (`load;dur=412.3, model-load;dur=61.0`).
fn server_timing(header: &str, name: &str) -> f64 {
    let metric = header.split(", ").find_map(|m| m.strip_prefix(name)?.strip_prefix(";dur="));
    metric.unwrap_or_else(|| panic!("no {name} in {header:?}")).parse().unwrap()
}

#[test]
fn an_on_demand_model_makes_its_other_sessions_when_its_requests_need_them() {
    let Some(library) = onnxruntime_library() else { return };
    // minilm on ONNX Runtime with two executions (a session each), loaded on demand.
    let repo = edited_repository(&examples(), &["minilm"], |t| {
        format!("{t}\n[load]\npolicy = \"on_demand\"\n\n[scheduling]\nexecutions = 2\n")
    });
    let token = "a-control-token-of-some-length";
    let server = Server::start_with(repo.path(), &[], |cmd| {
        cmd.env("ORT_DYLIB_PATH", &library).env("WASMSERVE_CONTROL_TOKEN", token);
    });
    let made = |server: &Server| server.log().matches("another ONNX Runtime session made").count();
    let charged = |server: &Server| {
        let (_, index) = server.get_json("/v2/repository/index");
        index[0]["resident_bytes"].as_u64().unwrap()
    };
    // Long enough to run for tens of milliseconds: two sent at once overlap.
    let sentences: Vec<String> =
        (0..32).map(|i| format!("sentence {i}, long enough to take a while")).collect();
    let sentences: Vec<&str> = sentences.iter().map(String::as_str).collect();
    let expected = embed(&server, &sentences, json!({}));
    assert!(server.log().contains("sessions=AsNeeded"), "{}", server.log());
    // Alone, it runs on the one session it loaded with, however many requests come one by one.
    for _ in 0..3 {
        assert_eq!(embed(&server, &sentences, json!({})), expected);
    }
    assert_eq!(made(&server), 0);
    let one = charged(&server);
    // Two at once: the second finds the session busy and makes the other (once), and gets
    // the same answer from it; the model is charged for it.
    for _ in 0..4 {
        std::thread::scope(|s| {
            let both = [
                s.spawn(|| embed(&server, &sentences, json!({}))),
                s.spawn(|| embed(&server, &sentences, json!({}))),
            ];
            for answer in both {
                let answer = answer.join().unwrap();
                for (a, b) in answer.iter().zip(&expected) {
                    assert!(cosine(a, b) > 0.9999);
                }
            }
        });
    }
    assert_eq!(made(&server), 1, "{}", server.log());
    let two = charged(&server);
    assert!(two >= one + (20 << 20), "charged {one} with one session, {two} with two");
    // Unloaded and loaded again: one session again, charged as before.
    let auth = format!("Bearer {token}");
    let unload = server.post("/v2/repository/models/minilm/unload", &[("Authorization", &auth)], b"");
    assert_eq!(unload.status, 200);
    assert_eq!(embed(&server, &sentences, json!({})), expected);
    assert_eq!(made(&server), 1);
    assert!(charged(&server) < two, "{} after a reload, {two} before", charged(&server));
}

#[test]
fn models_whose_plugins_hold_the_same_bytes_share_one_compiled_plugin_and_its_charge() {
    // Three copies of one plugin's bytes; the third meters fuel, which needs its own build.
    let repo = copies(&["a", "b", "fueled"], |name, t| match name {
        "fueled" => t.replace("[plugin]\n", "[plugin]\nfuel = 1000000000\n"),
        _ => t.to_string(),
    });
    let token = "a-control-token-of-some-length";
    let server = Server::start_with(repo.path(), &[], |cmd| {
        cmd.env("WASMSERVE_CONTROL_TOKEN", token);
    });
    let count = |what: &str| server.log().matches(what).count();
    assert_eq!((count("plugin compiled"), count("plugin shared")), (2, 1), "{}", server.log());
    for model in ["a", "b", "fueled"] {
        assert_eq!(infer_params(&server, model, json!({})).1, Some(Y.to_vec()), "{model}");
    }
    let charged = |model: &str| {
        let (_, index) = server.get_json("/v2/repository/index");
        let entry = index.as_array().unwrap().iter().find(|e| e["name"] == model).cloned();
        entry.unwrap()["resident_bytes"].as_u64().unwrap()
    };
    // a and b each bear half the code; unloaded, b leaves a the whole of it, reloaded, half.
    let (a, b) = (charged("a"), charged("b"));
    let auth = format!("Bearer {token}");
    let control = |what: &str| {
        server.post(&format!("/v2/repository/models/b/{what}"), &[("Authorization", &auth)], b"")
    };
    assert_eq!(control("unload").status, 200);
    let alone = charged("a");
    assert!(alone > a, "a is charged {a} beside b, {alone} alone");
    assert_eq!(control("load").status, 200);
    assert_eq!(count("plugin shared"), 2, "{}", server.log());
    // (b's own heap is measured again as it loads, and differs: a's does not move.)
    assert_eq!(charged("a"), a, "b was charged {b}, now {}", charged("b"));
    assert_eq!(infer_params(&server, "b", json!({})).1, Some(Y.to_vec()));
}
