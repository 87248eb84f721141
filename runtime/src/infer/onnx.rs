//! The ONNX Runtime backend, on the CPU or an NVIDIA GPU (CUDA execution provider).
//!
//! ONNX Runtime is loaded from a shared library at start-up: the one configured
//! (`--onnxruntime-library` / `ORT_DYLIB_PATH`; `onnxruntime-gpu`'s for CUDA), else the CPU
//! build the server provisions itself out of the pinned `onnxruntime` wheel ([`wheel`]),
//! through the same fetch cache as model files. The binary links none of it.

use super::{BackendOptions, NnTensor, Runner, graph};
use crate::config::{GraphConfig, Target};
use anyhow::{Context, anyhow, bail};
use ort::environment::GlobalThreadPoolOptions;
use ort::execution_providers::{CPUExecutionProvider, CUDAExecutionProvider, ExecutionProvider};
use ort::session::{Session, SessionInputValue, builder::GraphOptimizationLevel};
use ort::tensor::TensorElementType;
use ort::value::{DynValue, Tensor as OrtTensor, ValueType};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use wasmtime_wasi_nn::wit::TensorType;

/// One session per execution: `Session::run` takes `&mut self` in this ort release, so a
/// session runs one graph at a time. The first is made at load; the others at load too, or,
/// for a model loaded with [`Sessions::AsNeeded`], when a run finds every one made busy.
struct Onnx {
    sessions: Vec<OnceLock<Mutex<Session>>>,
    /// How to make the others as they are needed; `None`: all were made at load.
    more: Option<More>,
    made_later: super::SessionsMadeLater,
}

/// What a session made after the load is made from.
struct More {
    name: String,
    /// The graph as optimised and kept in the cache (its name digests the model's bytes, so
    /// a model file changed since cannot slip in), else the model's bytes, kept.
    source: Kept,
    config: GraphConfig,
    threads: usize,
    gpu: bool,
    /// Held while one is made: one at a time, and a run that finds it taken waits for a
    /// session instead.
    making: Mutex<()>,
    /// Set when one could not be made: the model goes on with the sessions it has.
    failed: std::sync::atomic::AtomicBool,
}

enum Kept {
    Optimised(PathBuf),
    Model(Vec<u8>),
}

impl More {
    fn make(&self) -> anyhow::Result<Session> {
        let source = match &self.source {
            Kept::Optimised(path) => Source::Optimised(path),
            Kept::Model(model) => Source::Model(model, None),
        };
        session(&self.name, source, &self.config, self.threads, self.gpu)
    }
}

/// The ONNX Runtime release the server provisions when no library is configured.
pub const VERSION: &str = "1.32.0";

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

static LOADED: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// Load ONNX Runtime's library once per process. A missing or broken library is an error
/// here, never a panic inside ort.
pub(super) fn init(options: &BackendOptions) -> anyhow::Result<()> {
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

fn check_library(path: &Path) -> anyhow::Result<()> {
    let meta = std::fs::metadata(path).with_context(|| {
        format!("ONNX Runtime library {} does not exist or cannot be read", path.display())
    })?;
    anyhow::ensure!(meta.is_file(), "ONNX Runtime library {} is not a file", path.display());
    Ok(())
}

/// Create `executions` sessions for the graph of model `name` at `path` with the execution
/// provider the config asks for, all of them now or, as `sessions` says, the first now and
/// the others when runs need them. On the CPU, with a graph cache, the graph ONNX Runtime
/// optimised is kept there ([`optimised_path`]): the first session of the first start
/// optimises and saves it, every other session loads it as it is, and the model file itself
/// is read only where no such graph is cached ([`ModelFile`]).
pub fn load(
    name: &str,
    path: &Path,
    config: &GraphConfig,
    executions: usize,
    sessions: super::Sessions,
    options: &BackendOptions,
) -> anyhow::Result<(wasmtime_wasi_nn::Graph, super::SessionsMadeLater)> {
    init(options)?;
    let model = ModelFile::new(path)?;
    let threads = config.graph_threads(executions);
    let cached = match (config.target, &options.graph_cache) {
        (Target::Cpu, Some(dir)) => {
            Some(optimised_path(dir, &model, options.onnxruntime_library.as_deref())?)
        }
        _ => None,
    };
    let cpu = |cached: Option<&Path>, first: bool| match cached {
        Some(path) => cached_session(name, &model, config, threads, path, first),
        None => session(name, Source::Model(model.bytes()?, None), config, threads, false),
    };
    let (first, gpu) = match config.target {
        Target::Cpu => (cpu(cached.as_deref(), true)?, false),
        Target::Gpu => match session(name, Source::Model(model.bytes()?, None), config, threads, true) {
            Ok(session) => (session, true),
            Err(e) if config.gpu_fallback => {
                tracing::warn!("no usable GPU ({e:#}); running on the CPU as gpu_fallback allows");
                (cpu(cached.as_deref(), true)?, false)
            }
            Err(e) => {
                return Err(e.context(
                    "target = \"gpu\" needs ONNX Runtime with CUDA (the onnxruntime-gpu wheel's library) \
                 and an NVIDIA GPU; set gpu_fallback = true to run on the CPU instead",
                ));
            }
        },
    };
    let inputs = first.inputs.iter().map(|i| i.name.clone()).collect();
    let outputs = first.outputs.iter().map(|o| o.name.clone()).collect();
    let made = |session| OnceLock::from(Mutex::new(session));
    let mut all = vec![made(first)];
    // A cache the first session could not write is not tried again by the others.
    let cached = cached.filter(|path| path.is_file());
    let now = match sessions {
        super::Sessions::AtLoad => executions,
        super::Sessions::AsNeeded => 1,
    };
    for _ in 1..now {
        all.push(made(match gpu {
            true => session(name, Source::Model(model.bytes()?, None), config, threads, true)?,
            false => cpu(cached.as_deref(), false)?,
        }));
    }
    all.resize_with(executions.max(1), OnceLock::new);
    let source = match cached {
        _ if now >= executions => None,
        Some(path) if !gpu => Some(Kept::Optimised(path)),
        _ => Some(Kept::Model(model.into_bytes()?)),
    };
    let more = source.map(|source| More {
        name: name.to_string(),
        source,
        config: config.clone(),
        threads,
        gpu,
        making: Mutex::new(()),
        failed: Default::default(),
    });
    let made_later = super::SessionsMadeLater::default();
    let runner = Onnx { sessions: all, more, made_later: made_later.clone() };
    Ok((graph(inputs, outputs, runner), made_later))
}

/// A model file, read when its bytes are first needed: a session from the cached optimised
/// graph needs none of them, only their digest, which this process remembers for each path
/// it has read with the file's size and modification time then (what the fetch cache and hot
/// reload change with its contents). A reload of an evicted model so reads neither the model
/// nor hashes it again.
struct ModelFile<'a> {
    path: &'a Path,
    /// Its size and modification time.
    stamp: Stamp,
    bytes: std::cell::OnceCell<Vec<u8>>,
}

type Stamp = (u64, Option<std::time::SystemTime>);

impl<'a> ModelFile<'a> {
    fn new(path: &'a Path) -> anyhow::Result<Self> {
        let meta = std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
        Ok(Self { path, stamp: (meta.len(), meta.modified().ok()), bytes: Default::default() })
    }

    fn bytes(&self) -> anyhow::Result<&[u8]> {
        if let Some(bytes) = self.bytes.get() {
            return Ok(bytes);
        }
        let bytes =
            std::fs::read(self.path).with_context(|| format!("cannot read {}", self.path.display()))?;
        Ok(self.bytes.get_or_init(|| bytes))
    }

    fn into_bytes(self) -> anyhow::Result<Vec<u8>> {
        self.bytes()?;
        Ok(self.bytes.into_inner().unwrap_or_default())
    }

    /// The sha256 of its bytes.
    fn digest(&self) -> anyhow::Result<[u8; 32]> {
        use sha2::{Digest, Sha256};
        type Digests = std::collections::HashMap<PathBuf, (Stamp, [u8; 32])>;
        static DIGESTS: OnceLock<Mutex<Digests>> = OnceLock::new();
        let digests = DIGESTS.get_or_init(Default::default);
        match digests.lock().expect("digests lock").get(self.path) {
            Some((stamp, digest)) if *stamp == self.stamp => return Ok(*digest),
            _ => {}
        }
        let digest: [u8; 32] = Sha256::digest(self.bytes()?).into();
        digests.lock().expect("digests lock").insert(self.path.to_path_buf(), (self.stamp, digest));
        Ok(digest)
    }
}

/// Where the graph ONNX Runtime optimises out of `model` for this machine is kept in `dir`.
/// The name digests everything the result depends on: the model's bytes, the library (path,
/// size and modification time: another release optimises differently), the optimisation
/// level and the CPU's feature flags (level 3 lays tensors out for the instructions it finds,
/// and ONNX Runtime warns that such a graph runs only where it was made). All but the model
/// are read once per process: it loads one library, on one machine.
fn optimised_path(dir: &Path, model: &ModelFile, library: Option<&Path>) -> anyhow::Result<PathBuf> {
    use sha2::{Digest, Sha256};
    static MACHINE: OnceLock<[u8; 32]> = OnceLock::new();
    let machine = MACHINE.get_or_init(|| {
        let mut key = Sha256::new();
        if let Some(library) = library {
            key.update(library.as_os_str().as_encoded_bytes());
            if let Ok(meta) = std::fs::metadata(library) {
                key.update(meta.len().to_le_bytes());
                let modified =
                    meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
                key.update(modified.unwrap_or_default().as_nanos().to_le_bytes());
            }
        }
        key.update(format!("level3 {}", std::env::consts::ARCH));
        // x86's "flags" and Arm's "Features": the same on every core, so the first line will do.
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        key.update(
            cpuinfo.lines().find(|l| l.starts_with("flags") || l.starts_with("Features")).unwrap_or(""),
        );
        key.finalize().into()
    });
    let digest = Sha256::new().chain_update(model.digest()?).chain_update(machine).finalize();
    let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
    Ok(dir.join(format!("{hex}.onnx")))
}

/// A CPU session from the optimised graph at `path` when an earlier start saved one (one
/// that does not load is removed), else optimised from `model` and saved there: under a name
/// of its own first, then renamed, so no reader sees half a file. A cache that cannot be
/// written costs the saving, never the model.
fn cached_session(
    name: &str,
    model: &ModelFile,
    config: &GraphConfig,
    threads: usize,
    path: &Path,
    first: bool,
) -> anyhow::Result<Session> {
    if path.is_file() {
        match session(name, Source::Optimised(path), config, threads, false) {
            Ok(session) => {
                if first {
                    tracing::info!(model = name, path = %path.display(), "optimised graph loaded from the cache");
                }
                return Ok(session);
            }
            Err(e) => {
                tracing::warn!(model = name, path = %path.display(),
                    "the cached optimised graph does not load ({e:#}); optimising the model again");
                let _ = std::fs::remove_file(path);
            }
        }
    }
    let not_kept = |e: &dyn std::fmt::Display| {
        tracing::warn!(
            model = name,
            "cannot keep the optimised graph in {} ({e:#}); the next start optimises again",
            path.display()
        );
    };
    if let Err(e) = path.parent().map_or(Ok(()), std::fs::create_dir_all) {
        not_kept(&e);
        return session(name, Source::Model(model.bytes()?, None), config, threads, false);
    }
    static SAVES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = SAVES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let partial = path.with_extension(format!("{}.{n}.part", std::process::id()));
    match session(name, Source::Model(model.bytes()?, Some(&partial)), config, threads, false) {
        Ok(session) => {
            // Optimised either way: a graph that cannot be kept costs the next start, not this one.
            match std::fs::rename(&partial, path) {
                Ok(()) => {
                    tracing::info!(model = name, path = %path.display(), "optimised graph saved to the cache")
                }
                Err(e) => not_kept(&e),
            }
            let _ = std::fs::remove_file(&partial);
            Ok(session)
        }
        // ONNX Runtime could not write the file, or the model does not load: without the
        // saving, a model that loads serves and one that does not says why.
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            let session = session(name, Source::Model(model.bytes()?, None), config, threads, false)?;
            not_kept(&format!("{e:#}"));
            Ok(session)
        }
    }
}

/// Where a session's graph comes from.
#[derive(Clone, Copy)]
enum Source<'a> {
    /// The model's own bytes, optimised now; with a path, the optimised graph is saved there.
    Model(&'a [u8], Option<&'a Path>),
    /// A graph optimised on an earlier start, loaded as it is.
    Optimised(&'a Path),
}

/// One session, made on a thread named `ort-NAME`: ONNX Runtime's intra-op threads take the
/// name of the thread that created them.
fn session(
    name: &str,
    source: Source,
    config: &GraphConfig,
    threads: usize,
    gpu: bool,
) -> anyhow::Result<Session> {
    std::thread::scope(|scope| {
        let made = std::thread::Builder::new()
            .name(format!("ort-{name}"))
            .spawn_scoped(scope, || new_session(source, config, threads, gpu))?;
        made.join().map_err(|panic| anyhow!("{}", crate::error::panic_message(&*panic)))?
    })
}

fn new_session(source: Source, config: &GraphConfig, threads: usize, gpu: bool) -> anyhow::Result<Session> {
    let level = match source {
        Source::Model(..) => GraphOptimizationLevel::Level3,
        Source::Optimised(_) => GraphOptimizationLevel::Disable,
    };
    let mut builder = Session::builder()?
        .with_optimization_level(level)?
        .with_intra_threads(threads)?
        .with_intra_op_spinning(config.spin)?;
    if gpu {
        let cuda = CUDAExecutionProvider::default();
        if !cuda.is_available()? {
            bail!("this ONNX Runtime library has no CUDA execution provider");
        }
        builder = builder.with_execution_providers([cuda.build().error_on_failure()])?;
    } else {
        builder = builder.with_execution_providers([CPUExecutionProvider::default().build()])?;
    }
    Ok(match source {
        Source::Model(model, None) => builder.commit_from_memory(model)?,
        Source::Model(model, Some(save)) => {
            builder.with_optimized_model_path(save)?.commit_from_memory(model)?
        }
        Source::Optimised(path) => builder.commit_from_file(path)?,
    })
}

impl Runner for Onnx {
    fn run(&self, inputs: Vec<NnTensor>) -> anyhow::Result<Vec<NnTensor>> {
        let inputs = inputs
            .into_iter()
            .map(|t| to_ort(t).map(SessionInputValue::from))
            .collect::<anyhow::Result<Vec<_>>>()?;
        // The session this thread ran last if it is free (each execution thread keeps its
        // own), else any free one, else a new one if more may be made, else wait for that one.
        thread_local!(static LAST: std::cell::Cell<usize> = const { std::cell::Cell::new(0) });
        let count = self.sessions.len();
        let last = LAST.get() % count;
        let free = (0..count)
            .map(|i| (last + i) % count)
            .find_map(|i| self.sessions[i].get()?.try_lock().ok().map(|s| (i, s)));
        let (used, mut session) = match free.or_else(|| self.another()) {
            Some(free) => free,
            None => {
                let i = if self.sessions[last].get().is_some() { last } else { 0 };
                let session = self.sessions[i].get().expect("the first session is made at load");
                (i, session.lock().map_err(|_| anyhow!("session poisoned"))?)
            }
        };
        LAST.set(used);
        let outputs = session.run(inputs.as_slice())?;
        outputs.iter().map(|(_, value)| from_ort(&value)).collect()
    }
}

impl Onnx {
    /// Make another session, when every one made is busy, more may be made and none is
    /// being made; `None` otherwise (the caller waits for one).
    fn another(&self) -> Option<(usize, std::sync::MutexGuard<'_, Session>)> {
        use std::sync::atomic::Ordering;
        let more = self.more.as_ref()?;
        if more.failed.load(Ordering::Relaxed) {
            return None;
        }
        let _making = more.making.try_lock().ok()?;
        let (i, slot) = self.sessions.iter().enumerate().find(|(_, s)| s.get().is_none())?;
        let started = std::time::Instant::now();
        match more.make() {
            Ok(session) => {
                let session = slot.get_or_init(|| Mutex::new(session));
                let made = self.made_later.0.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::info!(model = %more.name, sessions = 1 + made, of = self.sessions.len(),
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "another ONNX Runtime session made: every one was busy");
                session.try_lock().ok().map(|s| (i, s))
            }
            Err(e) => {
                more.failed.store(true, Ordering::Relaxed);
                tracing::warn!(model = %more.name, "cannot make another ONNX Runtime session ({e:#}); \
                    running on the ones made");
                None
            }
        }
    }
}

fn to_ort(t: NnTensor) -> anyhow::Result<DynValue> {
    let shape: Vec<i64> = t.dimensions.iter().map(|&d| i64::from(d)).collect();
    let d = &t.data;
    Ok(match t.ty {
        TensorType::Fp16 => {
            OrtTensor::from_array((shape, bytemuck::pod_collect_to_vec::<u8, half::f16>(d)))?.into_dyn()
        }
        TensorType::Bf16 => {
            OrtTensor::from_array((shape, bytemuck::pod_collect_to_vec::<u8, half::bf16>(d)))?.into_dyn()
        }
        TensorType::Fp32 => {
            OrtTensor::from_array((shape, bytemuck::pod_collect_to_vec::<u8, f32>(d)))?.into_dyn()
        }
        TensorType::Fp64 => {
            OrtTensor::from_array((shape, bytemuck::pod_collect_to_vec::<u8, f64>(d)))?.into_dyn()
        }
        TensorType::U8 => OrtTensor::from_array((shape, t.data))?.into_dyn(),
        TensorType::I32 => {
            OrtTensor::from_array((shape, bytemuck::pod_collect_to_vec::<u8, i32>(d)))?.into_dyn()
        }
        TensorType::I64 => {
            OrtTensor::from_array((shape, bytemuck::pod_collect_to_vec::<u8, i64>(d)))?.into_dyn()
        }
    })
}

fn from_ort(value: &ort::value::ValueRef<'_>) -> anyhow::Result<NnTensor> {
    fn extract<T: ort::tensor::PrimitiveTensorElementType + bytemuck::Pod>(
        value: &ort::value::ValueRef<'_>,
        ty: TensorType,
    ) -> anyhow::Result<NnTensor> {
        let (shape, data) = value.try_extract_tensor::<T>()?;
        let dimensions = shape.iter().map(|&d| u32::try_from(d)).collect::<Result<_, _>>()?;
        Ok(NnTensor::new(dimensions, ty, bytemuck::cast_slice(data).to_vec()))
    }
    match value.dtype() {
        ValueType::Tensor { ty, .. } => match ty {
            TensorElementType::Float16 => extract::<half::f16>(value, TensorType::Fp16),
            TensorElementType::Bfloat16 => extract::<half::bf16>(value, TensorType::Bf16),
            TensorElementType::Float32 => extract::<f32>(value, TensorType::Fp32),
            TensorElementType::Float64 => extract::<f64>(value, TensorType::Fp64),
            TensorElementType::Uint8 => extract::<u8>(value, TensorType::U8),
            TensorElementType::Int32 => extract::<i32>(value, TensorType::I32),
            TensorElementType::Int64 => extract::<i64>(value, TensorType::I64),
            other => bail!("graph output of type {other:?} has no wasi-nn equivalent"),
        },
        other => bail!("graph output {other:?} is not a tensor"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_model_file_is_hashed_again_only_when_its_identity_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.onnx");
        std::fs::write(&path, b"first").unwrap();
        let first = ModelFile::new(&path).unwrap().digest().unwrap();
        // The same size and modification time: taken for the same contents, not read again.
        let modified = std::fs::metadata(&path).unwrap().modified().unwrap();
        std::fs::write(&path, b"other").unwrap();
        std::fs::File::options().write(true).open(&path).unwrap().set_modified(modified).unwrap();
        let model = ModelFile::new(&path).unwrap();
        assert_eq!(model.digest().unwrap(), first);
        assert!(model.bytes.get().is_none(), "the file was read");
        // Changed as hot reload or a fetch changes it: hashed again.
        std::fs::write(&path, b"third!").unwrap();
        let third = ModelFile::new(&path).unwrap().digest().unwrap();
        assert_ne!(third, first);
        use sha2::Digest;
        assert_eq!(third, <[u8; 32]>::from(sha2::Sha256::digest(b"third!")));
        assert!(ModelFile::new(&dir.path().join("missing.onnx")).is_err());
    }
}
