//! Model files fetched at start-up: from a real HTTP server run by the test (with scripted
//! failures), from archives and local paths. S3 is tested against moto's server in
//! tests/python/test_fetch_s3.py.

use super::server::{Server, edited_repository, test_models};
use super::{assert_model_serves, walk};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the file server does to the next request instead of answering it well.
enum Fault {
    /// Answer with this status and no body.
    Status(u16),
    /// Announce the whole length, send this many bytes, close the connection.
    CutAfter(usize),
    /// Send the body 16 bytes at a time with this pause between.
    Trickle(Duration),
}

#[derive(Default)]
struct Script {
    files: HashMap<String, Vec<u8>>,
    faults: VecDeque<Fault>,
    hits: usize,
}

/// A real HTTP/1.1 server on loopback that serves files and misbehaves on request.
struct FileServer {
    base: String,
    script: Arc<Mutex<Script>>,
}

impl FileServer {
    fn start(files: &[(&str, Vec<u8>)]) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let files = files.iter().map(|(path, bytes)| (path.to_string(), bytes.clone())).collect();
        let script = Arc::new(Mutex::new(Script { files, ..Default::default() }));
        let shared = script.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let script = shared.clone();
                std::thread::spawn(move || answer(stream, &script));
            }
        });
        Self { base, script }
    }

    fn fail_next(&self, fault: Fault) {
        self.script.lock().unwrap().faults.push_back(fault);
    }

    fn hits(&self) -> usize {
        self.script.lock().unwrap().hits
    }
}

fn answer(mut stream: TcpStream, script: &Mutex<Script>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    reader.read_line(&mut request_line).unwrap();
    let mut line = String::new();
    while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
        line.clear();
    }
    let path = request_line.split(' ').nth(1).unwrap_or_default().to_string();
    let (body, fault) = {
        let mut script = script.lock().unwrap();
        script.hits += 1;
        (script.files.get(&path).cloned(), script.faults.pop_front())
    };
    let Some(body) = body else {
        let _ = stream.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return;
    };
    if let Some(Fault::Status(code)) = fault {
        let _ = write!(stream, "HTTP/1.1 {code} Failing\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return;
    }
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes());
    match fault {
        Some(Fault::CutAfter(n)) => {
            let _ = stream.write_all(&body[..n]);
        }
        Some(Fault::Trickle(pause)) => {
            for chunk in body.chunks(16) {
                if stream.write_all(chunk).is_err() {
                    return;
                }
                std::thread::sleep(pause);
            }
        }
        _ => {
            let _ = stream.write_all(&body);
        }
    }
}

fn sha256(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

fn test_file(name: &str) -> Vec<u8> {
    std::fs::read(test_models().join("faulty").join(name)).unwrap()
}

/// The test model, its graph fetched from `url` (pinned to `sha`) instead of read locally.
fn fetching_graph(url: &str, sha: &str) -> tempfile::TempDir {
    edited_repository(&test_models(), &["faulty"], |toml| {
        let toml = toml.replace("file = \"model.onnx\"", "file = \"fetched.onnx\"");
        format!("{toml}\n[[fetch]]\nurl = \"{url}\"\nsha256 = \"{sha}\"\npath = \"fetched.onnx\"\n")
    })
}

/// Files in `dir` and below whose name ends in `.part`: what an unfinished write leaves.
fn partial_files(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if name.ends_with(".part") {
                found.push(name);
            } else if entry.path().is_dir() {
                stack.push(entry.path());
            }
        }
    }
    found
}

#[test]
fn fetches_retry_transient_failures_and_the_cache_serves_restarts() {
    let graph = test_file("model.onnx");
    let files = FileServer::start(&[("/models/mul.onnx", graph.clone())]);
    // First an error status, then a connection cut halfway: both are tried again.
    files.fail_next(Fault::Status(503));
    files.fail_next(Fault::CutAfter(graph.len() / 2));
    let repo = fetching_graph(&format!("{}/models/mul.onnx", files.base), &sha256(&graph));
    let cache = tempfile::tempdir().unwrap();
    let args = ["--cache-dir", cache.path().to_str().unwrap()];

    let server = Server::start(repo.path(), &args);
    assert_model_serves(&server, "faulty");
    assert_eq!(files.hits(), 3, "503, cut, whole:\n{}", server.log());
    assert!(server.log().contains("fetch failed, trying again"), "{}", server.log());
    assert!(partial_files(cache.path()).is_empty(), "{:?}", partial_files(cache.path()));
    let blob = cache.path().join("models/blobs/sha256").join(sha256(&graph));
    assert_eq!(std::fs::read(&blob).unwrap(), graph);
    drop(server);

    // A restart finds the file in the cache: no second download.
    let server = Server::start(repo.path(), &args);
    assert_model_serves(&server, "faulty");
    assert_eq!(files.hits(), 3);
    assert!(server.log().contains("in the cache"), "{}", server.log());
    drop(server);

    // A cached file changed on disk is not trusted: it is fetched again.
    std::fs::write(&blob, b"tampered").unwrap();
    let server = Server::start(repo.path(), &args);
    assert_model_serves(&server, "faulty");
    assert_eq!(files.hits(), 4);
    assert!(server.log().contains("cached file changed on disk"), "{}", server.log());
    drop(server);

    // --no-cache: a temporary directory, fetched into again, and gone after the exit.
    let tmp = tempfile::tempdir().unwrap();
    let mut server = Server::start_env(repo.path(), &["--no-cache"], &[("TMPDIR", tmp.path())]);
    assert_model_serves(&server, "faulty");
    assert_eq!(files.hits(), 5);
    assert!(walk(tmp.path()) > 0, "the fetched files are under TMPDIR while serving");
    let pid = server.pid().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    assert!(server.terminate_wait().success());
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0, "the temporary directory is removed");
}

#[test]
fn a_wrong_digest_or_a_missing_file_keeps_the_model_unavailable() {
    let graph = test_file("model.onnx");
    let files = FileServer::start(&[("/mul.onnx", graph.clone())]);
    let wrong = sha256(b"something else");
    let repo = fetching_graph(&format!("{}/mul.onnx", files.base), &wrong);
    let missing = fetching_graph(&format!("{}/nope.onnx", files.base), &wrong);
    std::fs::rename(missing.path().join("faulty"), repo.path().join("missing")).unwrap();
    let cache = tempfile::tempdir().unwrap();

    let server = Server::start_listening(repo.path(), &["--cache-dir", cache.path().to_str().unwrap()]);
    let index = server.wait_loaded();
    assert_eq!(server.get("/v2/health/ready").0, 503);
    let reason = |i: usize| index[i]["reason"].as_str().unwrap().to_string();
    assert_eq!(index[0]["state"], "UNAVAILABLE");
    assert!(reason(0).contains(&format!("cannot fetch {}/mul.onnx", files.base)), "{}", reason(0));
    assert!(
        reason(0).contains(&format!(
            "sha256 mismatch: the config pins {wrong}, the URL served {}",
            sha256(&graph)
        )),
        "{}",
        reason(0)
    );
    assert_eq!(index[1]["state"], "UNAVAILABLE");
    assert!(reason(1).contains("not found"), "{}", reason(1));
    // Neither is retried: trying again cannot help.
    assert_eq!(files.hits(), 2, "{}", server.log());
    assert_eq!(walk(&cache.path().join("models/blobs")), 0, "nothing kept from a bad fetch");
    let (status, body) = server.get("/v2/models/faulty/ready");
    assert_eq!(status, 503);
    assert!(body.contains("sha256 mismatch"), "{body}");
}

/// A server of the test model (its own cache, and `args`) caught while it downloads the
/// model's graph from a file server that trickles it, 16 bytes every `pause` (130 bytes).
struct MidDownload {
    files: FileServer,
    repo: tempfile::TempDir,
    cache: tempfile::TempDir,
    server: Server,
}

impl MidDownload {
    fn start(pause: Duration, args: &[&str]) -> Self {
        let graph = test_file("model.onnx");
        let files = FileServer::start(&[("/mul.onnx", graph.clone())]);
        files.fail_next(Fault::Trickle(pause));
        let repo = fetching_graph(&format!("{}/mul.onnx", files.base), &sha256(&graph));
        let cache = tempfile::tempdir().unwrap();
        let server = Server::start_listening(
            repo.path(),
            &[&["--cache-dir", cache.path().to_str().unwrap()], args].concat(),
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while partial_files(cache.path()).is_empty() {
            assert!(Instant::now() < deadline, "no download started:\n{}", server.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { files, repo, cache, server }
    }
}

#[test]
fn a_download_killed_midway_is_never_trusted() {
    let MidDownload { files, repo, cache, server } = MidDownload::start(Duration::from_millis(300), &[]);
    drop(server); // SIGKILL, mid-download
    let graph = test_file("model.onnx");
    assert!(!cache.path().join("models/blobs/sha256").join(sha256(&graph)).exists());

    let server = Server::start(repo.path(), &["--cache-dir", cache.path().to_str().unwrap()]);
    assert_model_serves(&server, "faulty");
    assert_eq!(files.hits(), 2, "the restart downloads again:\n{}", server.log());
}

#[test]
fn archives_and_local_paths_unpack_into_the_model_directory() {
    let (graph, plugin) = (test_file("model.onnx"), test_file("plugin.wasm"));
    let toml = std::fs::read_to_string(test_models().join("faulty/model.toml")).unwrap();

    // A .tar.gz over HTTP, of which the model takes one directory.
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), Default::default()));
    for (name, bytes) in [("bundle/model.onnx", &graph), ("bundle/plugin.wasm", &plugin), ("README", &vec![])]
    {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        tar.append_data(&mut header, name, &bytes[..]).unwrap();
    }
    let tar_gz = tar.into_inner().unwrap().finish().unwrap();
    let files = FileServer::start(&[("/bundle.tar.gz", tar_gz.clone())]);
    let repo = tempfile::tempdir().unwrap();
    let tarred = repo.path().join("tarred");
    std::fs::create_dir(&tarred).unwrap();
    let fetch = format!(
        "[[fetch]]\nurl = \"{}/bundle.tar.gz\"\nsha256 = \"{}\"\nmember = \"bundle\"\n",
        files.base,
        sha256(&tar_gz)
    );
    std::fs::write(tarred.join("model.toml"), format!("{toml}\n{fetch}")).unwrap();

    // A zip (as a Python wheel is) found by a path relative to the model directory.
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, bytes) in [("model.onnx", &graph), ("plugin.wasm", &plugin)] {
        zip.start_file(name, zip::write::SimpleFileOptions::default()).unwrap();
        zip.write_all(bytes).unwrap();
    }
    let zipped_bytes = zip.finish().unwrap().into_inner();
    let zipped = repo.path().join("zipped");
    std::fs::create_dir(&zipped).unwrap();
    std::fs::write(zipped.join("files.zip"), &zipped_bytes).unwrap();
    let fetch = format!("[[fetch]]\nurl = \"files.zip\"\nsha256 = \"{}\"\n", sha256(&zipped_bytes));
    std::fs::write(zipped.join("model.toml"), format!("{toml}\n{fetch}")).unwrap();

    let cache = tempfile::tempdir().unwrap();
    let server = Server::start(repo.path(), &["--cache-dir", cache.path().to_str().unwrap()]);
    assert_model_serves(&server, "tarred");
    assert_model_serves(&server, "zipped");
    assert!(partial_files(cache.path()).is_empty());
}

/// A command that runs what follows it with a 2 MiB tmpfs (read-only with `ro`) mounted at
/// `dir`, in a mount namespace of its own: a small disk, or a read-only one, for one server.
/// None where mount namespaces are not available (a failure under CI, which has them).
fn on_small_filesystem(dir: &Path, ro: bool) -> Option<Vec<String>> {
    let options = if ro { "ro,size=2m" } else { "size=2m" };
    let script = format!("mount -t tmpfs -o {options} tmpfs '{}' && exec \"$@\"", dir.display());
    let wrapper: Vec<String> = ["unshare", "--map-root-user", "--mount", "sh", "-c", &script, "sh"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let works = std::process::Command::new(&wrapper[0]).args(&wrapper[1..]).arg("true").status();
    match works {
        Ok(status) if status.success() => Some(wrapper),
        _ if std::env::var_os("CI").is_some() => {
            panic!("CI must be able to mount a tmpfs in a mount namespace")
        }
        _ => {
            eprintln!("skipped: no mount namespaces here (unshare --map-root-user --mount)");
            None
        }
    }
}

#[test]
fn a_full_or_read_only_cache_fails_only_the_models_that_fetch_and_says_why() {
    // `big` fetches 4 MiB into a cache that holds 2; `faulty` fetches nothing.
    let big = vec![7u8; 4 << 20];
    let files = FileServer::start(&[("/big.bin", big.clone())]);
    let repo = edited_repository(&test_models(), &["faulty"], str::to_string);
    let fetching = edited_repository(&test_models(), &["faulty"], |toml| {
        format!(
            "{toml}\n[[fetch]]\nurl = \"{}/big.bin\"\nsha256 = \"{}\"\npath = \"big.bin\"\n",
            files.base,
            sha256(&big)
        )
    });
    std::fs::rename(fetching.path().join("faulty"), repo.path().join("big")).unwrap();
    for read_only in [false, true] {
        let cache = tempfile::tempdir().unwrap();
        let Some(wrapper) = on_small_filesystem(cache.path(), read_only) else { return };
        let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
        let args = ["--cache-dir", cache.path().to_str().unwrap()];
        let server = Server::start_under(&wrapper, repo.path(), &args);
        let index = server.wait_loaded();
        let entry =
            |name: &str| index.as_array().unwrap().iter().find(|m| m["name"] == name).unwrap().clone();
        assert_eq!(entry("faulty")["state"], "READY", "{index}\n{}", server.log());
        assert_model_serves(&server, "faulty");
        let big_entry = entry("big");
        assert_eq!(big_entry["state"], "UNAVAILABLE", "{index}");
        let reason = big_entry["reason"].as_str().unwrap();
        let (what, expected) = if read_only {
            ("cannot create the cache directory", "Read-only file system")
        } else {
            ("cannot write the cache", "No space left on device")
        };
        assert!(reason.contains(what) && reason.contains(expected), "{reason}");
        assert!(reason.contains(&cache.path().display().to_string()), "names the cache directory: {reason}");
        let (status, body) = server.get("/v2/models/big/ready");
        assert_eq!(status, 503);
        assert!(body.contains(expected), "{body}");
        // Nothing half-written is left to be trusted: the cache as the server sees it.
        let seen =
            Path::new(&format!("/proc/{}/root", server.pid())).join(cache.path().strip_prefix("/").unwrap());
        assert!(partial_files(&seen).is_empty(), "{:?}", partial_files(&seen));
        assert_eq!(walk(&seen.join("models/blobs")), 0, "no blob kept");
        if read_only {
            assert!(server.log().contains("the cache directory cannot be written"), "{}", server.log());
        }
        // Not tried again: a disk does not empty itself, nor turn writable.
        assert!(files.hits() <= 1, "{} downloads\n{}", files.hits(), server.log());
        files.script.lock().unwrap().hits = 0;
    }
}

#[test]
fn a_server_of_on_demand_models_is_ready_only_once_their_files_are_fetched() {
    // Over a second of download.
    let MidDownload { files, repo: _repo, cache, mut server } =
        MidDownload::start(Duration::from_millis(150), &["--load-policy", "on_demand"]);
    // Its config is read and its policy known, but its file is still on the way: a pod
    // that took traffic now would make the first request wait for the download.
    assert_eq!(server.get("/v2/health/ready").0, 503, "ready during the prefetch:\n{}", server.log());
    server.wait_ready();
    assert!(partial_files(cache.path()).is_empty());
    let (_, index) = server.get_json("/v2/repository/index");
    assert_eq!(index[0]["state"], "UNLOADED", "{index}");
    assert_model_serves(&server, "faulty");
    assert_eq!(files.hits(), 1, "one download, at start-up:\n{}", server.log());
}
