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

mod cache;
mod convert;
mod library;

use cache::{ModelFile, cached_session, optimised_path};
use convert::{from_ort, to_ort};
pub(super) use library::init;
pub use library::{library, wheel};

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
