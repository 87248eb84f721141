//! ggml: generative models in GGUF files, run by llama.cpp (through the `llama-cpp-2` crate),
//! reached through wasi-nn's `ggml` encoding.
//!
//! A loaded model is an [`Engine`]: one thread that owns llama.cpp's context (the key/value
//! cache of every sequence) and runs its forward passes. To a plugin the graph is a
//! wasi-nn graph whose execution context is one sequence ([`sequence`]): each `compute`
//! feeds tokens (the prompt, then one sampled token at a time) and returns the logits of the
//! last one. The engine joins the steps of every sequence in flight into one batch per
//! forward pass (continuous batching): a new prompt joins at the next pass, a finished
//! sequence leaves and its slot of the cache is cleared for the next.

mod engine;
mod sequence;
mod sizing;

use super::generation::Generator;
use crate::config::{Generation, GraphConfig, Target};
use anyhow::Context;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use wasmtime_wasi_nn::Graph;

pub use engine::Engine;

/// llama.cpp's process-wide state: initialised once, its logs in ours (`RUST_LOG=llama_cpp_2=info`).
fn backend() -> anyhow::Result<&'static llama_cpp_2::llama_backend::LlamaBackend> {
    static BACKEND: OnceLock<Result<llama_cpp_2::llama_backend::LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
            llama_cpp_2::llama_backend::LlamaBackend::init().map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| anyhow::anyhow!("cannot start llama.cpp: {e}"))
}

/// Load model `name`'s GGUF file at `path` with `settings`, its passes on `threads` threads
/// (on a GPU where `graph.target` says so: [`on_gpu`]): the graph plugins reach through
/// wasi-nn, and what the server shows of the engine.
pub fn load(
    name: &str,
    path: &Path,
    graph: &GraphConfig,
    settings: &Generation,
    threads: usize,
) -> anyhow::Result<(Graph, Generator)> {
    let gpu = on_gpu(name, graph)?;
    let engine = Engine::start(name, path, settings, threads, gpu)
        .with_context(|| format!("cannot load GGUF model {}", path.display()))?;
    let generator = engine.generator();
    let graph: Box<dyn wasmtime_wasi_nn::backend::BackendGraph> = Box::new(GgufGraph(engine));
    Ok((Graph::from(graph), generator))
}

/// Whether the model's layers and cache go to a GPU: `target = "gpu"` needs a build with
/// CUDA (`--features cuda`) and a GPU llama.cpp sees; else it fails, or with `gpu_fallback`
/// runs on the CPU.
fn on_gpu(name: &str, graph: &GraphConfig) -> anyhow::Result<bool> {
    if graph.target == Target::Cpu {
        return Ok(false);
    }
    backend()?;
    let gpus = llama_cpp_2::list_llama_ggml_backend_devices();
    let gpu = gpus.iter().find(|d| d.device_type == llama_cpp_2::LlamaBackendDeviceType::Gpu);
    let why = match gpu {
        Some(gpu) => {
            tracing::info!(model = %name, gpu = %gpu.description, memory_free_mib = gpu.memory_free >> 20, "ggml on the GPU");
            return Ok(true);
        }
        None if cfg!(feature = "cuda") => "llama.cpp finds no GPU",
        None => "this wasmserve was built without CUDA for ggml (cargo build --release --features cuda)",
    };
    anyhow::ensure!(
        graph.gpu_fallback,
        "target = \"gpu\": {why}; set gpu_fallback = true to run on the CPU instead"
    );
    tracing::warn!(model = %name, "{why}: running on the CPU, as gpu_fallback allows");
    Ok(false)
}

/// The graph plugins see: each execution context a sequence of the engine.
struct GgufGraph(Arc<Engine>);

impl wasmtime_wasi_nn::backend::BackendGraph for GgufGraph {
    fn init_execution_context(
        &self,
    ) -> Result<wasmtime_wasi_nn::ExecutionContext, wasmtime_wasi_nn::backend::BackendError> {
        let sequence = sequence::Sequence::open(self.0.clone()).map_err(super::nn_error)?;
        let context: Box<dyn wasmtime_wasi_nn::backend::BackendExecutionContext> = Box::new(sequence);
        Ok(context.into())
    }
}
