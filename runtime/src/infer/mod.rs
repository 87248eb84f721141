//! infer: run a model's graph natively on a backend.
//!
//! Backends implement wasmtime-wasi-nn's backend traits, so a graph loaded once serves both
//! the host's pipeline ([`run`]) and plugins that call it themselves through `wasi:nn`
//! (`load-by-name`, via [`Graphs`]).

mod generation;
#[cfg(feature = "ggml")]
mod ggml;
mod signature;
mod tract;

pub use generation::{Counters, Generator, STEP_SEQUENCE_BUCKETS, Watch, watching};

#[cfg(feature = "onnx")]
pub mod onnx;

use crate::config::{Backend, GraphConfig};
use crate::tensor::{Datatype, Tensor};
use anyhow::{Context, anyhow, bail};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use wasmtime_wasi_nn::backend::{BackendError, NamedTensor};
use wasmtime_wasi_nn::wit::TensorType;
use wasmtime_wasi_nn::{Graph, GraphRegistry, Tensor as NnTensor};

/// Server-wide settings for the backends.
#[derive(Debug, Clone, Default)]
pub struct BackendOptions {
    /// ONNX Runtime's shared library (`libonnxruntime.so`), needed by `backend = "onnx"`;
    /// `None`: provisioned from the pinned wheel when a model needs it (see `infer::onnx::wheel`).
    pub onnxruntime_library: Option<PathBuf>,
    /// Where ONNX Runtime keeps the graphs it optimised for this machine across restarts
    /// (`<--cache-dir>/graphs`); `None` (`--no-cache`): every start optimises again.
    pub graph_cache: Option<PathBuf>,
    /// With N > 0, ONNX Runtime runs one pool of N intra-op threads shared by every session
    /// instead of a pool per session.
    pub onnxruntime_threads: usize,
    /// Whether that shared pool's threads spin while waiting for work (else they sleep).
    pub onnxruntime_spin: bool,
}

pub use signature::signature;

/// Whether tract can load this ONNX graph (`Err`: why not, such as an operator it lacks).
pub fn runs_on_tract(onnx: &[u8]) -> anyhow::Result<()> {
    tract::load("graph", onnx, 1).map(drop)
}

/// Run the ONNX graph `onnx` (read from `path`, where ONNX Runtime needs it) once on
/// `backend`, with no server around it: its outputs, or why it cannot run (an operator
/// tract lacks, an output it cannot hand out, a library that does not load). `new plugin`
/// checks the graphs it scaffolds this way.
pub fn run_once(
    onnx: &[u8],
    path: Option<&Path>,
    backend: Backend,
    options: &BackendOptions,
    inputs: Vec<Tensor>,
) -> anyhow::Result<Vec<Tensor>> {
    let graph = match (backend, path) {
        (Backend::Tract, _) => tract::load("graph", onnx, 1)?,
        (Backend::Onnx, Some(path)) => {
            let config = GraphConfig {
                file: path.to_path_buf(),
                backend,
                target: crate::config::Target::Cpu,
                gpu_fallback: false,
                threads: 1,
                spin: false,
            };
            load("graph", path, &config, 1, Sessions::AtLoad, options)?.0
        }
        (Backend::Onnx, None) => bail!("ONNX Runtime loads a graph from its file"),
        (Backend::Ggml, _) => bail!("a GGUF graph is no ONNX graph"),
    };
    let _state = thread_state();
    run(&graph, inputs)
}

/// When an ONNX Runtime graph's sessions (one per execution, each with its own copy of the
/// weights) are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sessions {
    /// All at load: what an eager model warms up and keeps.
    AtLoad,
    /// One at load, the others when a run finds every one made busy: a model loaded on
    /// demand, which most often serves a request at a time, costs one session until it is
    /// busier.
    AsNeeded,
}

/// How many sessions a graph loaded with [`Sessions::AsNeeded`] has made since its load
/// (always 0 for the others, and for tract, whose plan runs from any number of threads).
#[derive(Debug, Clone, Default)]
pub struct SessionsMadeLater(Arc<std::sync::atomic::AtomicUsize>);

impl SessionsMadeLater {
    /// The sessions made so far after the load.
    pub fn count(&self) -> usize {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Load model `name`'s graph at `path` on the backend its config names, able to run
/// `executions` times at once, its sessions made as `sessions` says. The backend's own
/// threads are named after the model (`ort-NAME`, `tract-NAME-N`), so `top -H` shows which
/// model uses the CPU.
pub fn load(
    name: &str,
    path: &Path,
    config: &GraphConfig,
    executions: usize,
    sessions: Sessions,
    options: &BackendOptions,
) -> anyhow::Result<(Graph, SessionsMadeLater)> {
    let read = || std::fs::read(path).with_context(|| format!("cannot read {}", path.display()));
    match config.backend {
        // A tract plan runs from any number of threads at once.
        Backend::Tract => {
            Ok((tract::load(name, &read()?, config.graph_threads(executions))?, Default::default()))
        }
        // It reads the model only where the graph it optimised from it is not cached.
        #[cfg(feature = "onnx")]
        Backend::Onnx => onnx::load(name, path, config, executions, sessions, options),
        #[cfg(not(feature = "onnx"))]
        Backend::Onnx => {
            let _ = (name, options, executions, sessions);
            bail!(
                "this wasmserve was built without the `onnx` feature: rebuild with `--features onnx` or use backend = \"tract\""
            )
        }
        Backend::Ggml => {
            bail!("a GGUF graph is a generative model's: it loads with its `[generation]` settings")
        }
    }
}

/// A model's loaded graph, and what the server shows of its engine.
pub struct Loaded {
    /// What plugins and the pipeline run.
    pub graph: Graph,
    /// ONNX Runtime sessions made after the load (see [`SessionsMadeLater`]).
    pub sessions_made_later: SessionsMadeLater,
    /// A generative model's engine: its context, slots and counters.
    pub generator: Option<Generator>,
}

/// Load the graph of model `name` with `config` from `path`: as [`load`] does, or, for a
/// generative model (GGUF on ggml), its engine with `[generation]`'s slots and context.
pub fn load_model(
    name: &str,
    path: &Path,
    config: &crate::config::ModelConfig,
    sessions: Sessions,
    options: &BackendOptions,
) -> anyhow::Result<Loaded> {
    if config.generates() {
        #[cfg(feature = "ggml")]
        {
            let threads = config.graph.graph_threads(1);
            let (graph, generator) = ggml::load(name, path, &config.graph, &config.generation(), threads)?;
            return Ok(Loaded { graph, sessions_made_later: Default::default(), generator: Some(generator) });
        }
        #[cfg(not(feature = "ggml"))]
        bail!(
            "this wasmserve was built without the `ggml` feature: rebuild with `--features ggml` to serve GGUF models"
        );
    }
    let executions = config.executions();
    let (graph, sessions_made_later) = load(name, path, &config.graph, executions, sessions, options)?;
    Ok(Loaded { graph, sessions_made_later, generator: None })
}

/// Load what `backend` needs once per process (ONNX Runtime's library and environment) ahead
/// of its first graph: so the first model loaded later on demand is not charged for it, and
/// does not wait for it.
pub fn prepare(backend: Backend, options: &BackendOptions) -> anyhow::Result<()> {
    match backend {
        Backend::Tract | Backend::Ggml => Ok(()),
        #[cfg(feature = "onnx")]
        Backend::Onnx => onnx::init(options),
        #[cfg(not(feature = "onnx"))]
        Backend::Onnx => {
            let _ = options;
            Ok(())
        }
    }
}

/// Run `graph` on `inputs` (named as the graph names them); returns every graph output.
pub fn run(graph: &Graph, inputs: Vec<Tensor>) -> anyhow::Result<Vec<Tensor>> {
    let inputs = inputs.into_iter().map(to_wasi_nn).collect::<anyhow::Result<Vec<_>>>()?;
    let mut context = graph.init_execution_context().map_err(backend_error)?;
    let outputs = context.compute_with_io(inputs).map_err(backend_error)?;
    outputs.into_iter().map(from_wasi_nn).collect()
}

/// Held by a thread that runs graphs for as long as it lives (a model's execution thread):
/// while it is held, the backends keep per-thread state between runs (tract's plan states
/// and their scratch space); dropping it frees that state, which must happen before the
/// thread ends.
pub struct ThreadState(());

/// Keep backend state on this thread until the returned guard is dropped.
pub fn thread_state() -> ThreadState {
    tract::keep_states(true);
    ThreadState(())
}

impl Drop for ThreadState {
    fn drop(&mut self) {
        tract::keep_states(false);
    }
}

/// Backend errors carry their cause one level down; keep it in the message.
fn backend_error(e: BackendError) -> anyhow::Error {
    match e {
        BackendError::BackendAccess(inner) => anyhow::Error::from(inner),
        other => anyhow!(other),
    }
}

fn to_wasi_nn(tensor: Tensor) -> anyhow::Result<NamedTensor> {
    let ty = match tensor.datatype {
        Datatype::Fp16 => TensorType::Fp16,
        Datatype::Bf16 => TensorType::Bf16,
        Datatype::Fp32 => TensorType::Fp32,
        Datatype::Fp64 => TensorType::Fp64,
        Datatype::Uint8 => TensorType::U8,
        Datatype::Int32 => TensorType::I32,
        Datatype::Int64 => TensorType::I64,
        other => bail!(
            "graph input '{}' is {other}; wasi-nn graphs take FP16, BF16, FP32, FP64, UINT8, INT32 or INT64",
            tensor.name
        ),
    };
    let dimensions = tensor
        .shape
        .iter()
        .map(|&d| u32::try_from(d))
        .collect::<Result<_, _>>()
        .with_context(|| format!("graph input '{}' has shape {:?}", tensor.name, tensor.shape))?;
    Ok(NamedTensor { name: tensor.name, tensor: wasmtime_wasi_nn::Tensor::new(dimensions, ty, tensor.data) })
}

fn from_wasi_nn(named: NamedTensor) -> anyhow::Result<Tensor> {
    let datatype = match named.tensor.ty {
        TensorType::Fp16 => Datatype::Fp16,
        TensorType::Bf16 => Datatype::Bf16,
        TensorType::Fp32 => Datatype::Fp32,
        TensorType::Fp64 => Datatype::Fp64,
        TensorType::U8 => Datatype::Uint8,
        TensorType::I32 => Datatype::Int32,
        TensorType::I64 => Datatype::Int64,
    };
    Ok(Tensor {
        name: named.name,
        datatype,
        shape: named.tensor.dimensions.iter().map(|&d| i64::from(d)).collect(),
        data: named.tensor.data,
    })
}

/// Every loaded graph by model name: the registry behind `wasi:nn`'s `load-by-name`.
/// Built once; each plugin store gets a cheap clone.
#[derive(Clone, Default)]
pub struct Graphs(Arc<HashMap<String, Graph>>);

impl Graphs {
    /// A registry holding these graphs.
    pub fn new(graphs: HashMap<String, Graph>) -> Self {
        Self(Arc::new(graphs))
    }

    /// The registry one plugin sees: its own model version's graph under the model's name,
    /// and the graphs of the models `granted` names (each model's default version); an error
    /// names a granted one that is not here.
    pub fn for_plugin(&self, own: (&str, &Graph), granted: &[String]) -> anyhow::Result<Self> {
        let mut chosen = HashMap::from([(own.0.to_string(), own.1.clone())]);
        for name in granted {
            let graph = self.0.get(name.as_str()).with_context(|| {
                let mut loaded: Vec<&String> = self.0.keys().collect();
                loaded.sort();
                format!("no model named '{name}' has a loaded graph (loaded: {loaded:?})")
            })?;
            chosen.insert(name.clone(), graph.clone());
        }
        Ok(Self::new(chosen))
    }
}

impl GraphRegistry for Graphs {
    fn get(&self, name: &str) -> Option<&Graph> {
        self.0.get(name)
    }

    fn get_mut(&mut self, _name: &str) -> Option<&mut Graph> {
        // Shared graphs are never mutated.
        None
    }
}

/// wasi-nn's error type wraps wasmtime's, not anyhow's.
fn nn_error(e: anyhow::Error) -> BackendError {
    BackendError::BackendAccess(wasmtime::Error::from_anyhow(e))
}

/// Index of the tensor `id` names in `names`, for backends' `set_input`/`get_output`.
fn position(names: &[String], id: &wasmtime_wasi_nn::backend::Id) -> Result<usize, BackendError> {
    use wasmtime_wasi_nn::backend::Id;
    let found = match id {
        Id::Index(i) => Some(*i as usize).filter(|&i| i < names.len()),
        Id::Name(n) => names.iter().position(|x| x == n),
    };
    found.ok_or_else(|| nn_error(anyhow!("graph has no tensor {id:?}; it has {names:?}")))
}

/// What a backend provides: one inference, tensors in the graph's input order in, every
/// output in the graph's output order out. Names live in [`graph`]'s wrapper.
trait Runner: Send + Sync + 'static {
    fn run(&self, inputs: Vec<NnTensor>) -> anyhow::Result<Vec<NnTensor>>;
}

/// A graph that runs `f`, with inputs `x` and outputs `y`: for tests of what runs graphs.
#[cfg(test)]
pub(crate) fn test_graph(
    f: impl Fn(Vec<NnTensor>) -> anyhow::Result<Vec<NnTensor>> + Send + Sync + 'static,
) -> Graph {
    struct Func<F>(F);
    impl<F: Fn(Vec<NnTensor>) -> anyhow::Result<Vec<NnTensor>> + Send + Sync + 'static> Runner for Func<F> {
        fn run(&self, inputs: Vec<NnTensor>) -> anyhow::Result<Vec<NnTensor>> {
            (self.0)(inputs)
        }
    }
    graph(vec!["x".into()], vec!["y".into()], Func(f))
}

/// A graph's input and output names, in its order.
struct Names {
    inputs: Vec<String>,
    outputs: Vec<String>,
}

/// Wrap a backend's runner as a wasi-nn graph with these input and output names.
fn graph(inputs: Vec<String>, outputs: Vec<String>, runner: impl Runner) -> Graph {
    let graph: Box<dyn wasmtime_wasi_nn::backend::BackendGraph> =
        Box::new(RunnerGraph { names: Arc::new(Names { inputs, outputs }), runner: Arc::new(runner) });
    graph.into()
}

#[derive(Clone)]
struct RunnerGraph {
    names: Arc<Names>,
    runner: Arc<dyn Runner>,
}

impl RunnerGraph {
    /// Run named inputs (any order); name the outputs. Errors name what is missing or unknown.
    fn run_named(&self, inputs: Vec<NamedTensor>) -> anyhow::Result<Vec<NamedTensor>> {
        let names = &self.names.inputs;
        if let Some(extra) = inputs.iter().find(|t| !names.contains(&t.name)) {
            bail!("the graph has no input '{}'; its inputs are {names:?}", extra.name);
        }
        let mut slots: Vec<Option<NnTensor>> = vec![None; names.len()];
        for input in inputs {
            let i = names.iter().position(|n| *n == input.name).expect("checked above");
            slots[i] = Some(input.tensor);
        }
        let ordered = slots
            .into_iter()
            .zip(names)
            .map(|(slot, name)| slot.ok_or_else(|| anyhow!("graph input '{name}' was not provided")))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let outputs = self.runner.run(ordered)?;
        anyhow::ensure!(
            outputs.len() == self.names.outputs.len(),
            "the backend returned {} outputs for a graph of {}",
            outputs.len(),
            self.names.outputs.len()
        );
        Ok(self
            .names
            .outputs
            .iter()
            .zip(outputs)
            .map(|(name, tensor)| NamedTensor { name: name.clone(), tensor })
            .collect())
    }
}

impl wasmtime_wasi_nn::backend::BackendGraph for RunnerGraph {
    fn init_execution_context(&self) -> Result<wasmtime_wasi_nn::ExecutionContext, BackendError> {
        let context: Box<dyn wasmtime_wasi_nn::backend::BackendExecutionContext> = Box::new(RunnerContext {
            inputs: vec![None; self.names.inputs.len()],
            outputs: Vec::new(),
            graph: self.clone(),
        });
        Ok(context.into())
    }
}

/// Execution state for the witx-style calls (`set_input`, `compute`, `get_output`).
struct RunnerContext {
    graph: RunnerGraph,
    inputs: Vec<Option<NnTensor>>,
    outputs: Vec<NnTensor>,
}

impl wasmtime_wasi_nn::backend::BackendExecutionContext for RunnerContext {
    fn set_input(
        &mut self,
        id: wasmtime_wasi_nn::backend::Id,
        tensor: &NnTensor,
    ) -> Result<(), BackendError> {
        let i = position(&self.graph.names.inputs, &id)?;
        self.inputs[i] = Some(tensor.clone());
        Ok(())
    }

    fn get_output(&mut self, id: wasmtime_wasi_nn::backend::Id) -> Result<NnTensor, BackendError> {
        let i = position(&self.graph.names.outputs, &id)?;
        self.outputs.get(i).cloned().ok_or_else(|| nn_error(anyhow!("no output yet: call compute first")))
    }

    fn compute(
        &mut self,
        inputs: Option<Vec<NamedTensor>>,
    ) -> Result<Option<Vec<NamedTensor>>, BackendError> {
        match inputs {
            Some(inputs) => Ok(Some(self.graph.run_named(inputs).map_err(nn_error)?)),
            None => {
                let inputs = self
                    .inputs
                    .iter()
                    .zip(&self.graph.names.inputs)
                    .map(|(t, name)| t.clone().ok_or_else(|| anyhow!("input '{name}' was not set")))
                    .collect::<anyhow::Result<Vec<_>>>()
                    .map_err(nn_error)?;
                self.outputs = self.graph.runner.run(inputs).map_err(nn_error)?;
                Ok(None)
            }
        }
    }
}
