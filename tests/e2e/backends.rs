//! The backends: ONNX Runtime against tract, its optimised-graph cache, execution settings reaching the backends, GPU targets without CUDA.

use super::*;

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
    // ONNX Runtime 1.32 shows 3 threads named ort-env here: the pool's N - 1 (the caller of a
    // run is the Nth) and one more of its own, which a CI run under load did not see yet just
    // after ready (it counted 2). Wait for the pool, and bound the rest.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while threads_named(&server, "ort-env") < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let shared = threads_named(&server, "ort-env");
    assert!((2..=3).contains(&shared), "{shared} ort-env threads for a shared pool of 3");
    assert!(server.log().contains("one intra-op pool shared by every session"), "{}", server.log());
    // Its threads sleep when out of work, unless --onnxruntime-spin.
    assert!(server.log().contains("spin=false"), "{}", server.log());
    assert_serves(&server);
    let spinning = ["--onnxruntime-threads", "3", "--onnxruntime-spin"];
    let server = Server::start_env(repo.path(), &spinning, &[("ORT_DYLIB_PATH", &library)]);
    assert!(server.log().contains("spin=true"), "{}", server.log());
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
