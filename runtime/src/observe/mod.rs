//! observe: what the server tells about itself, called from the layers above with labels
//! and numbers (never their types): [`metrics`] (`/metrics`), [`statistics`] (Triton's
//! statistics extension), [`payloads`] (requests and responses as CloudEvents to a sink),
//! [`telemetry`] (logs, traces, progress bars), [`generation`] (generative models). Nothing here imports a layer it counts.

pub mod generation;
pub mod metrics;
pub mod payloads;
pub mod statistics;
pub mod telemetry;

/// How long one request spent in each step.
#[derive(Debug, Default, Clone, Copy)]
pub struct Timings {
    /// Waiting for a slot, a worker thread and a free execution (with batching, also for
    /// the batch to form).
    pub queue: std::time::Duration,
    /// Plugin instance and preprocess.
    pub preprocess: std::time::Duration,
    /// The graph (with batching: the whole batch's run).
    pub compute: std::time::Duration,
    /// Plugin postprocess and the output check.
    pub postprocess: std::time::Duration,
    /// Rows in the graph run (with batching: the whole batch's).
    pub batch_rows: usize,
    /// Tokens in the graph run with `[batching] pad`: its rows times its longest length (0
    /// without padding).
    pub batch_tokens: usize,
    /// Graph runs this request accounts for: 1, or with batching 1 for one request of each
    /// batch and 0 for the others.
    pub graph_runs: u64,
}
