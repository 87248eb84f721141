//! library: ONNX Runtime's shared library: the pinned wheel it is provisioned from, and
//! loading it once per process (a missing or broken library an error, never a panic).

use super::*;

/// The `onnxruntime` wheel (PyPI, MIT) that carries [`VERSION`]'s library for this machine,
/// as a fetch of the library out of it, and the library's own sha256 (checked on every use:
/// the server loads it as code). `None` where PyPI has no such wheel.
pub fn wheel() -> Option<(crate::config::Fetch, &'static str)> {
    // (wheel URL, wheel sha256, library sha256); the CPython tag does not matter: the library
    // inside is the same C++ build in every one of them.
    let (url, sha256, library) = match std::env::consts::ARCH {
        "x86_64" => (
            "https://files.pythonhosted.org/packages/a3/81/55845186c20cba59f614991f4065dea148e48eeb9749893768c85ce64327/onnxruntime-1.32.0-cp312-cp312-manylinux_2_28_x86_64.whl",
            "99e1074c4b2197accd5073052a465361be17b89c093b8ffb6e6bd8f986c52df8",
            "6c1585d1bbf45b0712ea4a21b705c5fcb4ba04ff2e30f1fbf81a49faf658638f",
        ),
        "aarch64" => (
            "https://files.pythonhosted.org/packages/4a/8f/1e43fb994513c7c7a9c6965272ef89d963c1bd4080993a6267bf913701d1/onnxruntime-1.32.0-cp312-cp312-manylinux_2_28_aarch64.whl",
            "e36c187006e7a7c8b8d6d57f1a209dd63f52430dca6c282b177718ad6b841054",
            "49852228a93995158b2a813d4df487d47a1b76b0eaa894507ef49e91b6d7954a",
        ),
        _ => return None,
    };
    if !cfg!(target_os = "linux") {
        return None;
    }
    let fetch = crate::config::Fetch {
        url: url.into(),
        sha256: sha256.into(),
        path: None,
        unpack: None,
        member: Some(format!("onnxruntime/capi/libonnxruntime.so.{VERSION}").into()),
    };
    Some((fetch, library))
}

/// The library this process loaded ONNX Runtime from, once a model used it.
pub fn library() -> Option<PathBuf> {
    LOADED.get().and_then(|loaded| loaded.as_ref().ok()).cloned()
}

pub(super) static LOADED: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// Load ONNX Runtime's library once per process. A missing or broken library is an error
/// here, never a panic inside ort.
pub(in crate::infer) fn init(options: &BackendOptions) -> anyhow::Result<()> {
    LOADED
        .get_or_init(|| {
            let path = options.onnxruntime_library.as_deref().ok_or(
                "backend = \"onnx\" needs ONNX Runtime's shared library, and none is pinned for this \
             platform to provision: pass --onnxruntime-library PATH or set ORT_DYLIB_PATH",
            )?;
            check_library(path).map_err(|e| format!("{e:#}"))?;
            // ort panics on a library it cannot use; turn that into an error.
            let lib = path.to_string_lossy().into_owned();
            let (shared, spin) = (options.onnxruntime_threads, options.onnxruntime_spin);
            let environment = move || -> ort::Result<bool> {
                let builder = ort::init_from(lib);
                if shared == 0 {
                    return builder.commit();
                }
                // Sessions run their graphs sequentially: no inter-op threads.
                let pool =
                    GlobalThreadPoolOptions::default().with_intra_threads(shared)?.with_inter_threads(1)?;
                // Threads that spin between one run and the next take cores from loads,
                // plugins and other models; they sleep unless --onnxruntime-spin.
                let pool = pool.with_spin_control(spin)?;
                builder.with_global_thread_pool(pool).commit()
            };
            // ONNX Runtime's own thread and the shared pool's are made here and take this thread's name.
            let committed = std::thread::Builder::new()
                .name("ort-env".into())
                .spawn(move || std::panic::catch_unwind(environment))
                .map_err(|e| format!("cannot start a thread: {e}"))?
                .join()
                .unwrap_or_else(Err);
            committed
                .map_err(|panic| {
                    let msg = crate::error::panic_message(&*panic);
                    format!("cannot load ONNX Runtime from {}: {msg}", path.display())
                })?
                .map_err(|e| format!("cannot initialise ONNX Runtime: {e}"))?;
            if shared > 0 {
                tracing::info!(
                    threads = shared,
                    spin,
                    "ONNX Runtime: one intra-op pool shared by every session"
                );
            }
            Ok(path.to_path_buf())
        })
        .clone()
        .map(drop)
        .map_err(|e| anyhow!(e))
}

pub(super) fn check_library(path: &Path) -> anyhow::Result<()> {
    let meta = std::fs::metadata(path).with_context(|| {
        format!("ONNX Runtime library {} does not exist or cannot be read", path.display())
    })?;
    anyhow::ensure!(meta.is_file(), "ONNX Runtime library {} is not a file", path.display());
    Ok(())
}
