//! model: what the repository holds and tells: a loaded model, a version's state and
//! status, why it was loaded, and the settings loads follow.

use crate::config::{LoadPolicy, ModelConfig};
use crate::infer;
use crate::schedule;
use std::sync::Arc;
use std::time::Duration;

/// A loaded model: its config, graph and plugin.
pub struct Model {
    /// The public name (its directory name).
    pub name: String,
    /// Its `model.toml`.
    pub config: Arc<ModelConfig>,
    /// Its graph, plugin, slots and threads: what schedule runs its requests with.
    pub runner: Arc<schedule::Runner>,
    /// From reading the config to ready: fetch, graph, plugin and warm-up.
    pub load_duration: Duration,
    /// The ONNX Runtime sessions its graph made after the load (loaded on demand, it makes
    /// one at load and the others when its runs need them), each charged as the first.
    pub sessions_made_later: infer::SessionsMadeLater,
}

/// Where a model version is: loading, in memory, not in memory (on demand), or failed.
#[derive(Clone)]
pub enum State {
    /// Its load runs (or, at start-up, has not started yet).
    Loading,
    /// Loaded and warmed up (a reload a request waits for skips a warm-up its files and
    /// config passed before).
    Ready(Arc<Model>),
    /// Loaded on demand and not in memory now: never loaded yet, evicted or unloaded. Its
    /// config was checked; its next request loads it.
    Unloaded,
    /// Failed to load or warm up; the reason.
    Unavailable(String),
}

impl State {
    /// `LOADING`, `READY`, `UNLOADED` or `UNAVAILABLE`, as in Triton's repository index.
    pub fn name(&self) -> &'static str {
        match self {
            State::Loading => "LOADING",
            State::Ready(_) => "READY",
            State::Unloaded => "UNLOADED",
            State::Unavailable(_) => "UNAVAILABLE",
        }
    }
}

/// Why a model version was loaded (the `cause` of `wasmserve_model_loads_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// At start-up: an eager model, or an on-demand one an eager model's plugin calls.
    Startup,
    /// A request for an on-demand model that was not in memory.
    Request,
    /// The repository API's `load`, or a change on disk.
    Reload,
    /// An on-demand model whose graph a loading model's plugin calls.
    Dependency,
}

impl Cause {
    /// Whether a request waits for loads of this cause.
    pub(super) fn waited_for(self) -> bool {
        matches!(self, Cause::Request | Cause::Dependency)
    }

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Cause::Startup => "startup",
            Cause::Request => "request",
            Cause::Reload => "reload",
            Cause::Dependency => "dependency",
        }
    }
}

/// When models load and how much memory loaded models may hold.
#[derive(Debug, Clone)]
pub struct LoadSettings {
    /// The policy of models whose `[load] policy` is not set.
    pub default_policy: LoadPolicy,
    /// Load every model at start-up whatever its policy (`batch`, `check`).
    pub all_eager: bool,
    /// Fetch on-demand models' files at start-up, so a first request downloads nothing.
    pub prefetch: bool,
    /// What loaded models may cost together, in bytes; none: no budget, nothing is evicted.
    pub budget: Option<u64>,
    /// How long a request waits for its model's load before 503.
    pub wait: Duration,
    /// How many loads (graph, plugin, warm-up) may run at once. A model whose cost is not
    /// known yet (its first loads: `measure::SAMPLES`) loads alone, to be measured.
    pub concurrent: usize,
}

impl Default for LoadSettings {
    /// Every model as its config says (eager when unset), files fetched at start-up, no
    /// budget, as many loads at once as there are CPUs.
    fn default() -> Self {
        Self {
            default_policy: LoadPolicy::Eager,
            all_eager: false,
            prefetch: true,
            budget: None,
            wait: Duration::from_secs(30),
            concurrent: std::thread::available_parallelism().map_or(1, usize::from),
        }
    }
}

impl LoadSettings {
    /// The policy a model with `config` is loaded by.
    pub(super) fn policy(&self, config: &ModelConfig) -> LoadPolicy {
        if self.all_eager { LoadPolicy::Eager } else { config.load.policy.unwrap_or(self.default_policy) }
    }
}

/// A model version's state as the repository index and the metrics show it.
pub struct Status {
    /// The model's name.
    pub name: String,
    /// The version; none for a model whose directory cannot be served at all.
    pub version: Option<String>,
    /// Where it is.
    pub state: State,
    /// Loaded on demand (evictable) rather than at start-up.
    pub on_demand: bool,
    /// What it is charged against the model memory budget while in memory, in bytes.
    pub resident_bytes: u64,
    /// How long ago a request last used it; none if none has.
    pub idle: Option<Duration>,
}
