//! ONNX Runtime provisioned by the server itself when no library is configured: out of the
//! pinned `onnxruntime` wheel on PyPI, into the fetch cache, verified on every start.
//! Needs the network to PyPI: skipped without it, except under CI, where it must run.

use super::assert_serves;
use super::server::{Server, edited_repository, test_models};
use sha2::{Digest, Sha256};
use std::net::ToSocketAddrs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The library's sha256 in the x86_64 wheel (runtime/src/infer/onnx.rs pins it).
const LIBRARY_SHA256: &str = "6c1585d1bbf45b0712ea4a21b705c5fcb4ba04ff2e30f1fbf81a49faf658638f";

fn pypi_reachable() -> bool {
    let reachable = ("files.pythonhosted.org", 443)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .is_some_and(|addr| std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(10)).is_ok());
    match reachable {
        true => true,
        false if std::env::var_os("CI").is_some() => panic!("CI must reach PyPI to provision ONNX Runtime"),
        false => {
            eprintln!("skipped: files.pythonhosted.org is not reachable");
            false
        }
    }
}

/// `wasmserve check DIR` with no library configured and `cache` as its cache directory;
/// `offline`: in a network namespace of its own, where nothing is reachable. Returns
/// success, stdout and the log.
fn check(dir: &Path, cache: &Path, offline: bool) -> (bool, String, String) {
    let bin = env!("CARGO_BIN_EXE_wasmserve");
    let mut cmd = match offline {
        true => {
            let mut cmd = Command::new("unshare");
            cmd.args(["--net", "--map-root-user", bin]);
            cmd
        }
        false => Command::new(bin),
    };
    let out = cmd
        .arg("check")
        .arg(dir)
        .arg("--cache-dir")
        .arg(cache)
        .env_remove("ORT_DYLIB_PATH")
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

/// The provisioned library in the cache.
fn cached_library(cache: &Path) -> PathBuf {
    let unpacked = cache.join("models/unpacked");
    std::fs::read_dir(&unpacked)
        .unwrap()
        .map(|e| e.unwrap().path().join("onnxruntime/capi/libonnxruntime.so.1.32.0"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("no library under {}", unpacked.display()))
}

fn sha256(path: &Path) -> String {
    format!("{:x}", Sha256::digest(std::fs::read(path).unwrap()))
}

#[test]
fn onnx_runtime_is_provisioned_from_its_wheel_once_and_verified_at_every_start() {
    if std::env::consts::ARCH != "x86_64" || !pypi_reachable() {
        return;
    }
    let repo = edited_repository(&test_models(), &["faulty"], |t| {
        let warmup = "[[warmup]]\ninputs = [{ name = \"x\", datatype = \"FP32\", shape = [3, 2], data = [1, 2, 3, 4, 5, 6] }]\n";
        format!("{}\n{warmup}", t.replace("[plugin]", "backend = \"onnx\"\n[plugin]"))
    });
    let model = repo.path().join("faulty");
    let cache = tempfile::tempdir().unwrap();
    let cache_arg = cache.path().to_str().unwrap();

    // An empty cache and no library configured: the server downloads the wheel and serves.
    let server = Server::start_with(repo.path(), &["--cache-dir", cache_arg], |cmd| {
        cmd.env_remove("ORT_DYLIB_PATH");
    });
    let log = server.log();
    assert!(log.contains("downloaded") && log.contains("ONNX Runtime provisioned"), "{log}");
    let (_, meta) = server.get("/v2/models/faulty");
    assert!(meta.contains("onnx/onnx"), "{meta}");
    assert_serves(&server);
    drop(server);
    let library = cached_library(cache.path());
    assert_eq!(sha256(&library), LIBRARY_SHA256);

    // A second start takes it from the cache, and `check` says which library the model uses.
    let (ok, out, log) = check(&model, cache.path(), false);
    assert!(ok, "{out}\n{log}");
    assert!(out.contains(&format!("ready (ONNX Runtime from {})", library.display())), "{out}");
    assert!(log.contains("in the cache") && !log.contains("downloaded"), "{log}");

    // A library changed on disk is never loaded: unpacked again from the verified wheel.
    std::fs::write(&library, b"not a library").unwrap();
    let (ok, out, log) = check(&model, cache.path(), false);
    assert!(ok, "{out}\n{log}");
    assert!(log.contains("cached file changed on disk; unpacking it again"), "{log}");
    assert_eq!(sha256(&cached_library(cache.path())), LIBRARY_SHA256);

    // Offline with a copy in the cache: it serves from there.
    let (ok, out, log) = check(&model, cache.path(), true);
    assert!(ok, "{out}\n{log}");

    // Offline with an empty cache: a clear error, and the way out.
    let empty = tempfile::tempdir().unwrap();
    let (ok, out, log) = check(&model, empty.path(), true);
    assert!(!ok, "{out}\n{log}");
    assert!(
        out.contains("cannot provision ONNX Runtime 1.32.0 from https://files.pythonhosted.org/"),
        "{out}"
    );
    assert!(out.contains("--onnxruntime-library") && out.contains("allow that once"), "{out}");
    assert!(!log.contains("panicked"), "{log}");
}
