//! `[scheduling]` and `[batching]`: a model's share of the machine, and joined graph runs.

use super::*;

/// `[batching]`: requests' graph inputs joined along dimension 0 into one graph run.
///
/// ```toml
/// [batching]
/// max_batch_size = 32              # rows (dimension 0) per graph run
/// max_queue_delay_us = 1000        # longest a request waits for others to join its batch
/// preferred_batch_sizes = [16, 32] # sizes sent at once, without waiting out the delay
/// # Text models: requests of different lengths share a batch, padded to its longest.
/// pad = { input_ids = 0, attention_mask = 0, token_type_ids = 0 }
/// cut = ["last_hidden_state"]      # outputs cut back to each request's own length
/// max_batch_tokens = 8192          # rows x the longest length, per graph run
/// ```
///
/// Pre- and post-processing stay per request, in the plugin; only the graph is batched.
/// Requests join a batch when their graph inputs agree in everything but dimension 0 (and,
/// for the inputs in `pad`, dimension 1).
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Batching {
    /// Most rows (dimension 0 of the graph inputs) in one graph run. A single request with
    /// more rows runs alone.
    pub max_batch_size: usize,
    /// Longest a request waits for others to join its batch, in microseconds, counted from
    /// the oldest request in the batch.
    #[serde(default = "default_max_queue_delay_us")]
    pub max_queue_delay_us: u64,
    /// Batch sizes worth sending as soon as they can be formed; the largest that can is
    /// sent. Empty: wait for `max_batch_size` rows or the delay.
    #[serde(default)]
    pub preferred_batch_sizes: Vec<usize>,
    /// Graph inputs whose dimension 1 is a length (a text's tokens), each with the value
    /// that pads it: requests of different lengths then share a batch, every request's rows
    /// padded to the batch's longest. The inputs not named here must still agree in every
    /// dimension but 0. Empty (the default): no padding.
    #[serde(default)]
    pub pad: std::collections::BTreeMap<String, f64>,
    /// Graph outputs whose dimension 1 is the padded length (a text model's hidden states,
    /// a token classifier's logits): each request gets them cut back to its own length, as
    /// if it had run alone. Needs `pad`.
    #[serde(default)]
    pub cut: Vec<String>,
    /// Most tokens in one graph run: its rows times its longest length (a request longer
    /// than that runs alone). 0 (the default): rows only. Needs `pad`.
    #[serde(default)]
    pub max_batch_tokens: usize,
}

fn default_max_queue_delay_us() -> u64 {
    1000
}

/// `[scheduling]`: the model's share of the machine, and how much waiting it accepts.
///
/// ```toml
/// [scheduling]
/// max_in_flight = 2       # requests running at once (plugin + graph); 0: one per core or execution,
///                         # or with [batching] enough to fill every execution's batch and the next
/// executions = 0          # requests (with [batching]: batches) run at once, each on a thread
///                         # of the model's own; 0: one per CPU core (ONNX Runtime: at most 4, 1 on a GPU)
/// max_queue = 64          # requests waiting for a slot; the next gets 503 + Retry-After
/// queue_timeout_ms = 0    # longest wait for a slot; 0: none (a request's `timeout` parameter, in µs, overrides)
/// ```
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Scheduling {
    /// Requests running at once; 0 means one per CPU core or execution (with `[batching]`, at least
    /// `max_batch_size × (executions + 1)`, so batches can fill while others run).
    #[serde(default)]
    pub max_in_flight: usize,
    /// Requests (with `[batching]`: batches) run at once, each on a thread of the model's
    /// own; on ONNX Runtime each has a session of its own. 0 means one per CPU core, on ONNX
    /// Runtime at most 4 (a session holds its own copy of the weights), the cores then shared
    /// out between them as intra-op threads (`graph.threads`), and 1 with `target = "gpu"`.
    #[serde(default)]
    pub executions: usize,
    /// Requests waiting for a slot; beyond it a request is refused at once (503, Retry-After).
    #[serde(default = "default_max_queue")]
    pub max_queue: usize,
    /// Longest wait for a slot, in milliseconds; 0 means no limit. A request's `timeout`
    /// parameter (microseconds, as Triton's) takes precedence.
    #[serde(default)]
    pub queue_timeout_ms: u64,
}

impl Default for Scheduling {
    fn default() -> Self {
        Self { max_in_flight: 0, executions: 0, max_queue: default_max_queue(), queue_timeout_ms: 0 }
    }
}

fn default_max_queue() -> usize {
    64
}
