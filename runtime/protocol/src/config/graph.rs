//! `[graph]`: the model file, the backend and where it runs.

use super::*;

/// Which inference engine runs a graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// tract: pure Rust, built in, CPU.
    #[default]
    Tract,
    /// ONNX Runtime, loaded from a shared library at start-up; CPU or CUDA.
    Onnx,
    /// llama.cpp's ggml, built in: a generative model in a GGUF file (wasi-nn's `ggml`
    /// encoding), its steps batched across every sequence in flight.
    Ggml,
}

impl Backend {
    /// The name used in configs and metadata.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Tract => "tract",
            Backend::Onnx => "onnx",
            Backend::Ggml => "ggml",
        }
    }
}

/// Where a graph runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// The host's CPU.
    #[default]
    Cpu,
    /// An NVIDIA GPU: ONNX Runtime's CUDA execution provider, or llama.cpp's CUDA backend for
    /// `ggml` (a build with `--features cuda`).
    Gpu,
}

/// `[graph]`: the model file and how to run it.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GraphConfig {
    /// The model file, relative to the model directory: ONNX, or GGUF with `backend = "ggml"`.
    pub file: PathBuf,
    /// Inference engine (default tract).
    #[serde(default)]
    pub backend: Backend,
    /// Device (default cpu).
    #[serde(default)]
    pub target: Target,
    /// With `target = "gpu"`: run on the CPU when no GPU is usable instead of failing.
    #[serde(default)]
    pub gpu_fallback: bool,
    /// Threads a graph run may use. ONNX Runtime: intra-op threads of each execution's
    /// session; 0 means the CPU cores shared out between the executions, at least 1. tract:
    /// the model's pool for matrix products, which its executions share; 0 means one per core,
    /// 1 runs each graph on its execution's thread alone.
    #[serde(default)]
    pub threads: usize,
    /// ONNX Runtime: intra-op threads spin while waiting for work (faster under load, busy
    /// cores when idle); false puts them to sleep at once.
    #[serde(default = "default_true")]
    pub spin: bool,
}

impl GraphConfig {
    /// `threads`, or its default for the backend and `executions` (see the field).
    pub fn graph_threads(&self, executions: usize) -> usize {
        match (self.threads, self.backend) {
            (0, Backend::Onnx) => (cores() / executions.max(1)).max(1),
            (0, Backend::Tract | Backend::Ggml) => cores(),
            (n, _) => n,
        }
    }
}

fn default_true() -> bool {
    true
}
