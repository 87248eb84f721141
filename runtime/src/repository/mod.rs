//! repository: the models a server serves, loaded from a directory of model directories.
//!
//! Start-up, per model: read the config -> fetch the files it lists -> load the graph ->
//! compile the plugin -> call its `warm-up` export, if any -> run the config's warm-up
//! requests through the whole pipeline -> ready. A model that fails any step
//! stays unavailable with the reason (in its endpoints' answers, the repository index and the
//! log); the others serve.
//!
//! ```text
//! models/
//!   magika/
//!     model.toml      config (see `config`)
//!     model.onnx      the graph
//!     plugin.wasm     pre/post-processing component
//!     data/           files the plugin reads at /data
//!   minilm/           a versioned model: each numbered directory is a model directory
//!     versions.toml   which versions are served, and the default (optional)
//!     1/model.toml ...
//!     2/model.toml ...
//! ```
//!
//! Every version served is loaded, warmed up and served on its own
//! (`/v2/models/{m}/versions/{v}/...`); requests that name no version go to the default.

use crate::config::{self, InputLimits, LoadPolicy, ModelConfig, RouteConfig, Warmup};
use crate::decode;
use crate::error::Error;
use crate::fetch::Fetcher;
use crate::infer::{self, BackendOptions, Graphs};
use crate::observe::metrics::LoadMetrics;
use crate::plugin::PluginHost;
use crate::schedule;
use anyhow::Context;
use futures::StreamExt;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::watch;

mod bring_up;
mod change;
mod demand;
mod evict;
mod loader;
mod measure;
mod model;
mod query;
pub mod resident;
mod startup;
mod text;
mod version;

pub use loader::Loader;
use loader::{bring_up, configs};
use measure::{Measured, RETRY_FIRST, RETRY_MOST, SAMPLES, content_key, file_size, fingerprint, median};
pub use model::{Cause, LoadSettings, Model, State, Status};
use version::{Configured, Entry, Item, Loaded, Version, declared_version};

/// How many models fetch their files at once.
const FETCH_CONCURRENCY: usize = 4;

/// Every model the server serves, by name, each with its versions and their states. Models
/// are loaded again or unloaded while serving ([`Repository::reload`]), on-demand ones loaded
/// at their first request and evicted when the budget needs room ([`Repository::acquire`]):
/// a request holds the model it started with until it finishes.
pub struct Repository {
    root: PathBuf,
    models: RwLock<BTreeMap<String, Arc<Entry>>>,
    /// Public names that send requests to other models (`route.toml`).
    routes: RwLock<BTreeMap<String, Arc<RouteConfig>>>,
    /// The graphs plugins reach by model name (each loaded model's default version's).
    graphs: Mutex<HashMap<String, wasmtime_wasi_nn::Graph>>,
    loaded: OnceLock<Loaded>,
    /// One reload or unload at a time.
    changing: Mutex<()>,
    /// One eviction decision at a time.
    evicting: Mutex<()>,
    /// A load whose cost is not known yet runs alone (this lock written), so that the growth
    /// of the process's memory across it is its own; loads of a known cost and evictions
    /// share it (read), up to `--concurrent-loads` loads at once.
    measuring: RwLock<()>,
    /// What loads alone measured, by what was loaded ([`content_key`]): up to [`SAMPLES`]
    /// each. Once there are that many, a version loaded again, or a copy of the same files
    /// and config, is charged their median and loads beside others. Every load that
    /// succeeds leaves an entry (empty if it was not measured), and the first load of a key
    /// runs its warm-up: a key here has passed its warm-up in this process.
    measured: Mutex<HashMap<u64, Vec<Measured>>>,
    /// The clock of `last_used`.
    started: Instant,
    /// The server's own resident memory, measured when start-up loading ended (what it
    /// held then less what its models were charged).
    base: AtomicU64,
    /// Start-up loading has ended: on-demand versions' files are fetched (a version is
    /// `Loading` until then) and eager ones loaded.
    up: AtomicBool,
    metrics: LoadMetrics,
}

/// A model name from a request names a directory of the repository, never a path.
fn valid_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\\', '\0'])
}
