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
use crate::metrics::LoadMetrics;
use crate::plugin::{Plugin, PluginHost};
use crate::schedule;
use anyhow::Context;
use futures::StreamExt;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::watch;

mod demand;
pub mod resident;

/// How many models fetch their files at once.
const FETCH_CONCURRENCY: usize = 4;

/// A loaded model: its config, graph and plugin.
pub struct Model {
    /// The public name (its directory name).
    pub name: String,
    /// Its `model.toml`.
    pub config: Arc<ModelConfig>,
    /// The loaded graph.
    pub graph: wasmtime_wasi_nn::Graph,
    /// The compiled plugin.
    pub plugin: Plugin,
    /// How many of its requests run and wait.
    pub slots: schedule::Slots,
    /// The threads that run its requests (with `[batching]`: its joined graph runs).
    pub executions: schedule::Executions,
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
    fn waited_for(self) -> bool {
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
    /// known yet (its first [`SAMPLES`] loads) loads alone, to be measured.
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
    fn policy(&self, config: &ModelConfig) -> LoadPolicy {
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

/// A model: the versions its policy serves (ascending) and the default one, or why its
/// directory cannot be served at all (a broken `versions.toml`, no versions).
struct Entry {
    versions: Vec<Version>,
    default: usize,
    /// Numbered version directories, as opposed to one model.toml.
    versioned: bool,
    problem: Option<String>,
}

/// One version of a model: its directory, where it is, and what eviction needs to know.
struct Version {
    name: String,
    dir: PathBuf,
    state: watch::Sender<State>,
    /// Loaded on demand: evictable, and loaded again by its next request.
    on_demand: AtomicBool,
    /// What it is charged against the budget (bytes): measured at its last load, or the
    /// estimate its load reserved while it runs.
    cost: AtomicU64,
    /// What each ONNX Runtime session its graph makes after the load is charged (bytes):
    /// what its first session was measured to add.
    session_cost: AtomicU64,
    /// When a request last used it, in ms since the repository started (0: never).
    last_used: AtomicU64,
    /// After a failed on-demand load: when the next may start, and the failures in a row.
    retry: Mutex<Option<(Instant, u32)>>,
    /// Its config as last read (at start-up, and by each load): what an on-demand version
    /// out of memory declares, for metadata that loads nothing.
    declared: Mutex<Option<Arc<ModelConfig>>>,
}

impl Version {
    fn new(name: String, dir: PathBuf) -> Self {
        Self {
            name,
            dir,
            state: watch::Sender::new(State::Loading),
            on_demand: AtomicBool::new(false),
            cost: AtomicU64::new(0),
            session_cost: AtomicU64::new(0),
            last_used: AtomicU64::new(0),
            retry: Mutex::new(None),
            declared: Mutex::new(None),
        }
    }

    fn state(&self) -> State {
        self.state.borrow().clone()
    }

    /// Wait up to `within` for a load running to end (either way); false if it did not.
    async fn settled(&self, within: Duration) -> bool {
        let mut changed = self.state.subscribe();
        tokio::time::timeout(within, changed.wait_for(|s| !matches!(s, State::Loading))).await.is_ok()
    }

    fn is_ready(&self) -> bool {
        matches!(*self.state.borrow(), State::Ready(_))
    }

    fn on_demand(&self) -> bool {
        self.on_demand.load(Ordering::Relaxed)
    }

    /// What it is charged against the budget now: in memory, its declared cost, or what its
    /// load added to the heap and what its plugin holds (code, idle instances, as many as
    /// there are now); loading, what its load reserved; else nothing.
    fn charged(&self) -> u64 {
        match &*self.state.borrow() {
            State::Ready(model) => self.charged_as(model),
            State::Loading => self.cost.load(Ordering::Relaxed),
            State::Unloaded | State::Unavailable(_) => 0,
        }
    }

    /// What it is charged with `model` in memory.
    fn charged_as(&self, model: &Model) -> u64 {
        let cost = self.cost.load(Ordering::Relaxed);
        // A declared cost is all of it; a measured one leaves out the plugin and the sessions
        // made after the load, counted as they are.
        if model.config.load.memory_mib.is_some() {
            return cost;
        }
        let sessions = model.sessions_made_later.count() as u64 * self.session_cost.load(Ordering::Relaxed);
        cost + model.plugin.resident_bytes() + sessions
    }

    fn set(&self, model: &str, state: State) {
        match &state {
            State::Ready(_) => tracing::info!(model, version = %self.name, "ready"),
            State::Unavailable(reason) => {
                tracing::error!(model, version = %self.name, "unavailable: {reason}")
            }
            State::Loading | State::Unloaded => {}
        }
        drop(self.state.send_replace(state));
    }

    /// Counts toward the server's readiness: an eager version once ready; an on-demand one
    /// once loadable (a later failed load is its requests' business).
    fn counts_ready(&self, up: bool) -> bool {
        match &*self.state.borrow() {
            State::Ready(_) => true,
            State::Unavailable(_) => self.on_demand() && self.retry.lock().expect("retry lock").is_some(),
            state => self.loadable(state, up),
        }
    }

    /// On demand, in `state`, and able to serve once a request loads it: out of memory, or
    /// loading for a request; not while start-up loading runs (`up` false), when its files
    /// are being fetched.
    fn loadable(&self, state: &State, up: bool) -> bool {
        self.on_demand()
            && match state {
                State::Unloaded => true,
                State::Loading => up,
                State::Ready(_) | State::Unavailable(_) => false,
            }
    }
}

impl Entry {
    /// A model that cannot serve at all, and why.
    fn broken(problem: String) -> Self {
        Self { versions: Vec::new(), default: 0, versioned: false, problem: Some(problem) }
    }

    /// A model directory: a `model.toml` (one version, as its config says), or numbered
    /// version directories chosen by `versions.toml`. `None`: not a model directory.
    fn scan(dir: &Path) -> Option<Self> {
        if dir.join(config::FILE_NAME).is_file() {
            // The version is the config's; a config that does not parse fails at load.
            let version = declared_version(dir).unwrap_or_else(|| "1".into());
            let versions = vec![Version::new(version, dir.to_path_buf())];
            return Some(Self { versions, default: 0, versioned: false, problem: None });
        }
        let numbered: Vec<u64> = std::fs::read_dir(dir)
            .ok()?
            .filter_map(|e| e.ok())
            .filter(|e| e.path().join(config::FILE_NAME).is_file())
            .filter_map(|e| e.file_name().to_str()?.parse::<u64>().ok())
            .collect();
        if numbered.is_empty() && !dir.join(config::VERSIONS_FILE).is_file() {
            return None;
        }
        let chosen = config::Versions::load(dir).and_then(|versions| versions.select(&numbered));
        Some(match chosen {
            Ok((served, default)) => Self {
                default: served.iter().position(|&v| v == default).expect("the default is served"),
                versions: served
                    .iter()
                    .map(|v| Version::new(v.to_string(), dir.join(v.to_string())))
                    .collect(),
                versioned: true,
                problem: None,
            },
            Err(e) => {
                Self { versions: Vec::new(), default: 0, versioned: true, problem: Some(format!("{e:#}")) }
            }
        })
    }

    fn names(&self) -> Vec<&str> {
        self.versions.iter().map(|v| v.name.as_str()).collect()
    }

    /// The index of `version` of this model `name` (default: the default version), if it
    /// is served.
    fn index(&self, name: &str, version: Option<&str>) -> Result<usize, Error> {
        if let Some(problem) = &self.problem {
            return Err(Error::Unavailable(format!("model '{name}' is unavailable: {problem}")));
        }
        match version {
            None => Ok(self.default),
            Some(v) => self.versions.iter().position(|s| s.name == v).ok_or_else(|| self.no_version(name, v)),
        }
    }

    fn no_version(&self, name: &str, version: &str) -> Error {
        Error::NotFound(format!("model '{name}' has no version '{version}' (it serves {:?})", self.names()))
    }

    /// How requests and the log name version `index` of model `name`.
    fn label(&self, name: &str, index: usize) -> String {
        if self.versioned {
            format!("model '{name}' version {}", self.versions[index].name)
        } else {
            format!("model '{name}'")
        }
    }
}

/// The `version` a directory's model.toml sets, if it parses and sets one.
fn declared_version(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join(config::FILE_NAME)).ok()?;
    let table = text.parse::<toml::Table>().ok()?;
    table.get("version")?.as_str().map(str::to_string)
}

/// What (re)loading a model needs, kept from the first load for later ones.
pub struct Loader {
    /// Backend settings (ONNX Runtime's library).
    pub options: BackendOptions,
    /// Brings the files configs list.
    pub fetcher: Fetcher,
    /// Where compiled plugins are kept across restarts.
    pub plugin_cache: Option<PathBuf>,
    /// When models load, and the model memory budget.
    pub settings: LoadSettings,
}

impl Loader {
    /// The backend settings for `graph`: with `backend = "onnx"` and no library configured,
    /// ONNX Runtime's CPU library provisioned out of its pinned wheel through the fetch cache
    /// (downloaded once, verified on every use).
    fn options_for(&self, graph: &config::GraphConfig) -> anyhow::Result<BackendOptions> {
        if graph.backend != config::Backend::Onnx || self.options.onnxruntime_library.is_some() {
            return Ok(self.options.clone());
        }
        #[cfg(feature = "onnx")]
        if let Some(loaded) = infer::onnx::library() {
            // ONNX Runtime is loaded once per process: verified when it was.
            return Ok(BackendOptions { onnxruntime_library: Some(loaded), ..self.options.clone() });
        }
        #[cfg(feature = "onnx")]
        if let Some((wheel, library)) = infer::onnx::wheel() {
            anyhow::ensure!(
                graph.target == config::Target::Cpu || graph.gpu_fallback,
                "target = \"gpu\" needs onnxruntime-gpu's library (--onnxruntime-library or ORT_DYLIB_PATH): \
                 the server provisions only ONNX Runtime's CPU build"
            );
            let started = Instant::now();
            let what = "onnxruntime";
            let path = tokio::runtime::Handle::current()
                .block_on(self.fetcher.verified_member(what, &wheel, library))
                .with_context(|| {
                    format!(
                        "cannot provision ONNX Runtime {} from {} (no --onnxruntime-library or ORT_DYLIB_PATH \
                         is set, and the cache holds no copy); give the server access to it once, or point \
                         --onnxruntime-library at a libonnxruntime.so",
                        infer::onnx::VERSION,
                        wheel.url
                    )
                })?;
            tracing::info!(version = infer::onnx::VERSION, library = %path.display(),
                elapsed_ms = started.elapsed().as_millis() as u64, "ONNX Runtime provisioned");
            return Ok(BackendOptions { onnxruntime_library: Some(path), ..self.options.clone() });
        }
        Ok(self.options.clone())
    }
}

/// The loader and the plugin engine it started, once [`Repository::load`] ran.
struct Loaded {
    loader: Loader,
    host: anyhow::Result<PluginHost>,
    /// One permit per load that may run at once (`--concurrent-loads`).
    loads: tokio::sync::Semaphore,
}

/// One version to load: its model's name and entry, and which of the entry's versions.
#[derive(Clone)]
struct Item {
    name: String,
    entry: Arc<Entry>,
    index: usize,
}

impl Item {
    fn version(&self) -> &Version {
        &self.entry.versions[self.index]
    }

    /// Its graph is the one plugins reach by the model's name.
    fn is_default(&self) -> bool {
        self.index == self.entry.default
    }
}

/// An item with its config read and the files it lists fetched, and the time that took.
struct Configured {
    item: Item,
    config: anyhow::Result<Arc<ModelConfig>>,
    spent: Duration,
}

impl Repository {
    /// Find the models under `root`: each directory holding a `model.toml`, or numbered
    /// version directories that do. All start `Loading`; [`Repository::load`] brings them up.
    pub fn scan(root: &Path) -> anyhow::Result<Self> {
        let mut models = BTreeMap::new();
        let mut routes = BTreeMap::new();
        let entries = std::fs::read_dir(root)
            .with_context(|| format!("cannot read model repository {}", root.display()))?;
        for entry in entries {
            let path = entry?.path();
            if !path.is_dir() {
                continue;
            }
            if path.join(config::ROUTE_FILE).is_file() {
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
                match RouteConfig::load(&path) {
                    Ok(route) => drop(routes.insert(name, Arc::new(route))),
                    Err(e) => {
                        tracing::error!(route = %name, "unavailable: {e:#}");
                        models.insert(name, Arc::new(Entry::broken(format!("{e:#}"))));
                    }
                }
                continue;
            }
            let Some(model) = Entry::scan(&path) else {
                tracing::warn!(dir = %path.display(), "skipped: no {} (nor version directories)", config::FILE_NAME);
                continue;
            };
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .with_context(|| format!("model directory name {} is not UTF-8", path.display()))?;
            if let Some(problem) = &model.problem {
                tracing::error!(model = %name, "unavailable: {problem}");
            }
            models.insert(name.to_string(), Arc::new(model));
        }
        Ok(Self {
            root: root.to_path_buf(),
            models: RwLock::new(models),
            routes: RwLock::new(routes),
            graphs: Mutex::new(HashMap::new()),
            loaded: OnceLock::new(),
            changing: Mutex::new(()),
            evicting: Mutex::new(()),
            measuring: RwLock::new(()),
            measured: Mutex::new(HashMap::new()),
            started: Instant::now(),
            base: AtomicU64::new(0),
            up: AtomicBool::new(false),
            metrics: LoadMetrics::default(),
        })
    }

    /// What loads and evictions are counted in (registered by the server's metrics).
    pub fn load_metrics(&self) -> &LoadMetrics {
        &self.metrics
    }

    /// Bring the models up: every model's config is read and its files fetched (on-demand
    /// models' too, unless `prefetch` is off); eager models, and on-demand ones an eager
    /// model's plugin calls, are loaded and warmed up; the other on-demand models wait,
    /// `UNLOADED`, for their first request. Returns the models that ended unavailable, with the
    /// reasons (each is also logged). The loader is kept for later loads. Call from a blocking
    /// thread of a tokio runtime.
    pub fn load(&self, loader: Loader) -> Vec<(String, String)> {
        let host = PluginHost::new(loader.plugin_cache.as_deref());
        let loads = tokio::sync::Semaphore::new(loader.settings.concurrent.max(1));
        let loaded = self.loaded.get_or_init(|| Loaded { loader, host, loads });
        let settings = &loaded.loader.settings;
        let models: Vec<(String, Arc<Entry>)> =
            self.models.read().expect("models lock").iter().map(|(n, e)| (n.clone(), e.clone())).collect();
        let items = models.iter().flat_map(|(name, entry)| {
            (0..entry.versions.len()).map(|index| Item { name: name.clone(), entry: entry.clone(), index })
        });
        let configured = configs(items.collect(), &loaded.loader.fetcher, settings, settings.prefetch);
        // On-demand models whose graphs an eager model's plugin calls load with it.
        let called: HashSet<&str> = configured
            .iter()
            .filter(|c| !c.item.version().on_demand())
            .filter_map(|c| c.config.as_ref().ok())
            .flat_map(|c| c.plugin.graphs.iter().map(String::as_str))
            .collect();
        let called: HashSet<String> = called.into_iter().map(str::to_string).collect();
        let (now, later): (Vec<_>, Vec<_>) = configured.into_iter().partition(|c| {
            let version = c.item.version();
            !version.on_demand()
                || c.config.is_err()
                || (c.item.is_default() && called.contains(&c.item.name))
        });
        for c in later {
            if let Ok(config) = &c.config {
                // The backend's one-time start (ONNX Runtime's library) belongs to the server,
                // not to the first on-demand model that would otherwise pay for it.
                if let Err(e) = loaded
                    .loader
                    .options_for(&config.graph)
                    .and_then(|o| infer::prepare(config.graph.backend, &o))
                {
                    tracing::debug!(model = %c.item.name, "backend not prepared ahead: {e:#}");
                }
            }
            c.item.version().set(&c.item.name, State::Unloaded);
        }
        // Those called ones were not fetched if prefetching is off: they are now.
        let (unfetched, mut now): (Vec<_>, Vec<_>) = now
            .into_iter()
            .partition(|c| c.item.version().on_demand() && c.config.is_ok() && !settings.prefetch);
        let unfetched = unfetched.into_iter().map(|c| c.item).collect();
        now.extend(configs(unfetched, &loaded.loader.fetcher, settings, true));
        let graphs = self.bring_up(loaded, now, Cause::Startup);
        self.graphs.lock().expect("graphs lock").extend(graphs);
        let held: u64 = self.residents(None).0.iter().map(|r| r.cost).sum();
        self.base.store(resident::rss().saturating_sub(held), Ordering::Relaxed);
        self.up.store(true, Ordering::Release);
        if let Some(budget) = settings.budget.filter(|&budget| held > budget) {
            tracing::warn!(held = %resident::mib(held), budget = %resident::mib(budget),
                "the models loaded at start-up already hold more than --model-memory-mib: no on-demand model will fit");
        }
        self.statuses()
            .into_iter()
            .filter_map(|s| match s.state {
                State::Unavailable(reason) => Some((
                    s.version.map_or_else(|| s.name.clone(), |v| format!("{} version {v}", s.name)),
                    reason,
                )),
                _ => None,
            })
            .collect()
    }

    /// Load `name` again from its directory (a new model, new versions, a changed policy or
    /// files) and swap it in once every version it serves is ready (on-demand versions
    /// included: the repository API's `load` loads them now); until then, and if any fails,
    /// the versions serving now go on serving, and requests in flight finish on them.
    /// Call from a blocking thread of a tokio runtime, after [`Repository::load`].
    pub fn reload(&self, name: &str) -> Result<(), Error> {
        self.reload_as(name, true)
    }

    /// [`Repository::reload`]; `now`: load on-demand versions now, else leave them
    /// `UNLOADED` (their next request loads the new files).
    fn reload_as(&self, name: &str, now: bool) -> Result<(), Error> {
        let _one_at_a_time = self.changing.lock().expect("change lock");
        let loaded =
            self.loaded.get().ok_or_else(|| Error::Unavailable("the repository is still loading".into()))?;
        let dir = self.root.join(name);
        if valid_name(name) && dir.join(config::ROUTE_FILE).is_file() {
            let route = RouteConfig::load(&dir).map_err(|e| Error::bad_request(format!("{e:#}")))?;
            self.routes.write().expect("routes lock").insert(name.to_string(), Arc::new(route));
            self.models.write().expect("models lock").remove(name);
            tracing::info!(route = %name, "route reloaded");
            return Ok(());
        }
        let entry = valid_name(name).then(|| Entry::scan(&dir)).flatten().ok_or_else(|| {
            Error::NotFound(format!("no model directory '{name}' in {}", self.root.display()))
        })?;
        if let Some(problem) = &entry.problem {
            return Err(Error::bad_request(format!("model '{name}' cannot be loaded: {problem}")));
        }
        let entry = Arc::new(entry);
        let items = (0..entry.versions.len()).map(|index| Item {
            name: name.to_string(),
            entry: entry.clone(),
            index,
        });
        let settings = &loaded.loader.settings;
        let configured = configs(items.collect(), &loaded.loader.fetcher, settings, now || settings.prefetch);
        let mut loading = Vec::new();
        for c in configured {
            let version = c.item.version();
            let Some(config) = c.config.as_ref().ok().filter(|_| version.on_demand()) else {
                loading.push(c);
                continue;
            };
            if !now {
                version.set(name, State::Unloaded);
                continue;
            }
            let need = self.estimate(version, config);
            match self.make_room(version, need) {
                Ok(()) => loading.push(c),
                Err(short) => version.set(name, State::Unavailable(format!("cannot be loaded: {short}"))),
            }
        }
        let graphs = self.bring_up(loaded, loading, Cause::Reload);
        let failed: Vec<String> = entry
            .versions
            .iter()
            .filter_map(|v| match v.state() {
                State::Ready(_) | State::Unloaded => None,
                State::Unavailable(reason) => Some(format!("version {}: {reason}", v.name)),
                State::Loading => Some(format!("version {}: not loaded", v.name)),
            })
            .collect();
        let mut models = self.models.write().expect("models lock");
        let serving = models.get(name).is_some_and(|old| old.versions.iter().any(Version::is_ready));
        if !failed.is_empty() && serving {
            tracing::error!(model = %name, "reload failed; the versions loaded before keep serving: {}", failed.join("; "));
            return Err(Error::bad_request(format!(
                "model '{name}' was not reloaded, the versions loaded before keep serving: {}",
                failed.join("; ")
            )));
        }
        models.insert(name.to_string(), entry);
        drop(models);
        // A route of the same name (the directory was one) gives way to the model.
        self.routes.write().expect("routes lock").remove(name);
        self.graphs.lock().expect("graphs lock").extend(graphs);
        if failed.is_empty() {
            tracing::info!(model = %name, "reloaded");
            Ok(())
        } else {
            Err(Error::bad_request(format!("model '{name}' failed to load: {}", failed.join("; "))))
        }
    }

    /// Stop serving `name`: its requests in flight finish. An eager model answers 503 until
    /// it is loaded again; an on-demand model is evicted, and its next request loads it.
    pub fn unload(&self, name: &str) -> Result<(), Error> {
        let _one_at_a_time = self.changing.lock().expect("change lock");
        if self.routes.write().expect("routes lock").remove(name).is_some() {
            tracing::info!(route = %name, "route removed");
            return Ok(());
        }
        let entry = self.entry(name)?;
        if !entry.versions.is_empty() && entry.versions.iter().all(Version::on_demand) {
            for index in 0..entry.versions.len() {
                self.evict(&Item { name: name.to_string(), entry: entry.clone(), index }, "unload", true);
            }
            return Ok(());
        }
        let mut models = self.models.write().expect("models lock");
        let entry = models.get_mut(name).ok_or_else(|| Error::NotFound(format!("unknown model '{name}'")))?;
        *entry = Arc::new(Entry::broken("unloaded".into()));
        self.graphs.lock().expect("graphs lock").remove(name);
        tracing::info!(model = %name, "unloaded");
        Ok(())
    }

    /// Look for changes on disk: reload each model whose directory changed since `seen`
    /// was taken (any file's path, size or modification time), load new model directories,
    /// unload models whose directory is gone; `seen` is updated. A reload that fails is
    /// logged and not tried again until the directory changes again; an on-demand model's
    /// versions are left unloaded, for their next request to load the new files. Call from a
    /// blocking thread of a tokio runtime; the first call (empty `seen`) only takes stock.
    pub fn poll(&self, seen: &mut HashMap<String, u64>) {
        let first = seen.is_empty();
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            tracing::warn!(root = %self.root.display(), "cannot read the model repository; not polled");
            return;
        };
        let mut present = HashMap::new();
        for entry in entries.filter_map(|e| e.ok()) {
            let path = entry.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()).map(str::to_string) else { continue };
            if path.is_dir() && (path.join(config::ROUTE_FILE).is_file() || Entry::scan(&path).is_some()) {
                present.insert(name, fingerprint(&path));
            }
        }
        if !first {
            for (name, print) in &present {
                if seen.get(name) != Some(print) {
                    tracing::info!(model = %name, "its directory changed: reloading");
                    if let Err(e) = self.reload_as(name, false) {
                        tracing::error!(model = %name, "{e}");
                    }
                }
            }
            let mut gone: Vec<String> = self
                .models
                .read()
                .expect("models lock")
                .iter()
                .filter(|(name, entry)| {
                    !present.contains_key(*name) && entry.problem.as_deref() != Some("unloaded")
                })
                .map(|(name, _)| name.clone())
                .collect();
            let routes = self.routes.read().expect("routes lock");
            gone.extend(routes.keys().filter(|name| !present.contains_key(*name)).cloned());
            drop(routes);
            for name in gone {
                tracing::info!(model = %name, "its directory is gone: unloading");
                let _ = self.unload(&name);
            }
        }
        *seen = present;
    }

    /// Load the graphs and bring up the plugins of `configured`, setting each version's
    /// state and measuring what it costs; returns the graphs other plugins reach by these
    /// models' names (for the caller to register once it keeps them).
    fn bring_up(
        &self,
        loaded: &Loaded,
        configured: Vec<Configured>,
        cause: Cause,
    ) -> HashMap<String, wasmtime_wasi_nn::Graph> {
        // Up to --concurrent-loads at once; one whose cost is not known yet runs alone, so
        // that what it adds to the process's memory is its own.
        let _permit = tokio::runtime::Handle::current()
            .block_on(loaded.loads.acquire())
            .expect("the loads' semaphore is never closed");
        let keys: Vec<Option<u64>> = configured
            .iter()
            .map(|c| c.config.as_ref().ok().map(|config| content_key(c.item.version(), config)))
            .collect();
        let known = || {
            let measured = self.measured.lock().expect("measured lock");
            configured.iter().zip(&keys).all(|(c, key)| match (&c.config, key) {
                (Ok(config), Some(key)) => {
                    config.load.memory_mib.is_some() || measured.get(key).is_some_and(|m| m.len() >= SAMPLES)
                }
                _ => true,
            })
        };
        let alone = (!known()).then(|| self.measuring.write().expect("measuring lock"));
        // Another load of the same files may have been measured while this one waited.
        let alone = alone.filter(|_| !known());
        let _beside = alone.is_none().then(|| self.measuring.read().expect("measuring lock"));
        // What a load adds to the memory is measured where the measure is used: a load alone,
        // and the first of files whose memory is declared (sessions its graph makes later are
        // charged what the graph measured). Reading malloc's heaps walks them all, under their
        // locks: not for every reload.
        let unmeasured = |key: &Option<u64>| {
            let measured = self.measured.lock().expect("measured lock");
            key.is_some_and(|key| measured.get(&key).is_none_or(Vec::is_empty))
        };
        let mut ready = Vec::new();
        let mut graphs = HashMap::new();
        for (Configured { item, config, spent }, key) in configured.into_iter().zip(keys) {
            let meter = (alone.is_some() || unmeasured(&key)).then(resident::Meter::start);
            let (name, started) = (item.name.as_str(), Instant::now());
            let graph = config.and_then(|config| {
                let file = item.version().dir.join(&config.graph.file);
                let options = loaded.loader.options_for(&config.graph)?;
                let executions = config.executions();
                // A model loaded on demand makes its other sessions when its runs need them.
                let sessions = match item.version().on_demand() {
                    true => infer::Sessions::AsNeeded,
                    false => infer::Sessions::AtLoad,
                };
                let graph = infer::load(name, &file, &config.graph, executions, sessions, &options)
                    .context("cannot load its graph")?;
                tracing::info!(model = %name, backend = %config.graph.backend.name(), target = ?config.graph.target,
                    executions, ?sessions, graph_threads = config.graph.graph_threads(executions),
                    elapsed_ms = started.elapsed().as_millis() as u64, "graph loaded");
                Ok((config, graph))
            });
            match graph {
                Ok((config, graph)) => {
                    // Plugins reach another model's graph by its name: its default version's.
                    if item.is_default() {
                        graphs.insert(name.to_string(), graph.0.clone());
                    }
                    let grew = meter.map(|meter| meter.grown());
                    ready.push((item, config, graph, spent + started.elapsed(), grew, key));
                }
                Err(e) => self.failed(&item, cause, format!("{e:#}")),
            }
        }
        // Every plugin may reach the graphs loaded before and those loaded now.
        let mut registry = self.graphs.lock().expect("graphs lock").clone();
        registry.extend(graphs.clone());
        let registry = Graphs::new(registry);
        for (item, config, graph, spent, grew, key) in ready {
            let (name, version) = (item.name.as_str(), item.version());
            let host = match &loaded.host {
                Ok(host) => host,
                Err(e) => {
                    self.failed(&item, cause, format!("cannot start the plugin engine: {e:#}"));
                    continue;
                }
            };
            let meter = grew.is_some().then(resident::Meter::start);
            let declared = config.load.memory_mib.map(|mib| mib << 20);
            let floor = file_size(&version.dir.join(&config.graph.file));
            // A request waiting for this load would wait for the warm-up too, and its own run
            // warms the model as well: files and config that passed the warm-up in this
            // process (that loaded before) skip it, once measured (a measured load runs it,
            // as every load did).
            let warm = alone.is_some()
                || !cause.waited_for()
                || !key.is_some_and(|key| self.measured.lock().expect("measured lock").contains_key(&key));
            let started = Instant::now();
            match bring_up(host, name, &version.dir, config, graph, &registry, warm) {
                Ok(mut model) => {
                    model.load_duration = spent + started.elapsed();
                    // Its heap: the median of what loads of the same files and config
                    // measured alone, this one's too if it ran alone; its plugin's code and
                    // idle instances are counted as they are. Sessions its graph makes
                    // later are charged what its graph added (one session, loaded on demand).
                    let grew = grew.zip(meter).map(|(graph, meter)| (graph.heap, graph + meter.grown()));
                    let this = grew
                        .map(|(graph, all)| Measured { heap: all.heap.max(floor), graph: graph.max(floor) });
                    let mut measured = self.measured.lock().expect("measured lock");
                    let samples = measured.entry(key.unwrap_or_default()).or_default();
                    if let Some(this) = this.filter(|_| alone.is_some() && samples.len() < SAMPLES) {
                        samples.push(this);
                    }
                    let this = this.unwrap_or(Measured { heap: floor, graph: floor });
                    let heap = median(samples.iter().map(|m| m.heap)).unwrap_or(this.heap);
                    let session = median(samples.iter().map(|m| m.graph)).unwrap_or(this.graph);
                    drop(measured);
                    version.cost.store(declared.unwrap_or(heap), Ordering::Relaxed);
                    version.session_cost.store(session, Ordering::Relaxed);
                    version.last_used.store(self.clock(), Ordering::Relaxed);
                    *version.retry.lock().expect("retry lock") = None;
                    self.metrics.loaded(name, &version.name, cause, model.load_duration);
                    tracing::info!(model = %name, version = %version.name, cause = cause.label(),
                        elapsed_ms = model.load_duration.as_millis() as u64,
                        resident = %resident::mib(version.charged_as(&model)),
                        heap_grew = grew.map(|(_, all)| tracing::field::display(resident::mib(all.heap))),
                        rss_grew = grew.map(|(_, all)| tracing::field::display(resident::mib(all.rss))),
                        declared = declared.is_some(), measured_alone = alone.is_some(), warmed_up = warm, "loaded");
                    version.set(name, State::Ready(Arc::new(model)));
                }
                Err(e) => self.failed(&item, cause, format!("{e:#}")),
            }
        }
        // What loading used and freed (the graph file's bytes, the backend's scratch) goes
        // back to the system now, not at the next eviction.
        crate::allocator::trim();
        graphs
    }

    /// `item` failed to load: unavailable with `reason`; an on-demand version loaded after
    /// start-up may be tried again after a back-off that doubles with each failure in a row.
    fn failed(&self, item: &Item, cause: Cause, reason: String) {
        let version = item.version();
        self.metrics.failed(&item.name, &version.name, cause);
        if version.on_demand() && cause != Cause::Startup {
            let mut retry = version.retry.lock().expect("retry lock");
            let failures = retry.map_or(1, |(_, n)| n + 1);
            let wait = RETRY_FIRST.saturating_mul(1 << (failures - 1).min(16)).min(RETRY_MOST);
            *retry = Some((Instant::now() + wait, failures));
            tracing::warn!(model = %item.name, version = %version.name, failures,
                "load failed; the next request tries again in {} s", wait.as_secs());
        }
        version.set(&item.name, State::Unavailable(reason));
    }

    /// Take `item` out of memory: only when nothing uses it, unless `force` (its requests in
    /// flight finish on it either way). Returns whether it was taken out.
    fn evict(&self, item: &Item, reason: &'static str, force: bool) -> bool {
        let version = item.version();
        let mut taken = None;
        let charged = version.charged();
        version.state.send_if_modified(|state| match state {
            State::Ready(model) if force || Arc::strong_count(model) == 1 => {
                taken = Some(std::mem::replace(state, State::Unloaded));
                true
            }
            _ => false,
        });
        let Some(State::Ready(model)) = taken else { return false };
        let started = Instant::now();
        // Its next load reserves what it held.
        version.cost.store(charged, Ordering::Relaxed);
        // Not during a load's measurement: what this frees would count against it. The
        // repository API's unload does not wait for a load (it runs on a serving thread).
        let measuring = match force {
            false => Some(self.measuring.read().expect("measuring lock")),
            true => self.measuring.try_read().ok(),
        };
        if item.is_default() {
            self.graphs.lock().expect("graphs lock").remove(&item.name);
        }
        let idle_secs = self.clock().saturating_sub(version.last_used.load(Ordering::Relaxed)) / 1000;
        self.metrics.evicted(&item.name, &version.name, reason);
        let why = match reason {
            "budget" => "the least recently used idle model, to make room under --model-memory-mib",
            _ => "the repository API's unload",
        };
        drop(model);
        // What its graph and plugin held goes back to the system, not only to malloc's heaps:
        // now, and again shortly, once its threads have let go of its graph's sessions.
        if measuring.is_some() {
            crate::allocator::trim();
        }
        crate::allocator::trim_soon();
        tracing::info!(model = %item.name, version = %version.name, idle_secs,
            freed = %resident::mib(version.cost.load(Ordering::Relaxed)),
            elapsed_ms = started.elapsed().as_millis() as u64, "evicted: {why}");
        true
    }

    /// Evict idle on-demand models, least recently used first, until `need` more bytes fit
    /// the budget beside what is loaded and loading, and reserve them for `loading` (the
    /// version that needs them, not counted otherwise).
    fn make_room(&self, loading: &Version, need: u64) -> Result<(), resident::Shortfall> {
        let Some(budget) = self.budget() else {
            loading.cost.store(need, Ordering::Relaxed);
            return Ok(());
        };
        let _one_at_a_time = self.evicting.lock().expect("evicting lock");
        // The measured memory counts in the first plan only: what eviction frees shows in it
        // only once malloc gives it back, and it is not waited for.
        let mut observed = resident::rss().saturating_sub(self.base.load(Ordering::Relaxed));
        loop {
            let (residents, items) = self.residents(Some(loading));
            let victims = resident::plan(&residents, budget, need, observed)?;
            if victims.is_empty() {
                loading.cost.store(need, Ordering::Relaxed);
                return Ok(());
            }
            // One that turned busy since is skipped, and the plan made again.
            let evicted = victims.iter().filter(|&&i| self.evict(&items[i], "budget", false)).count();
            if evicted == 0 {
                let held = residents.iter().map(|r| r.cost).sum::<u64>().max(observed);
                return Err(resident::Shortfall::Busy { need, held, budget });
            }
            if evicted == victims.len() {
                loading.cost.store(need, Ordering::Relaxed);
                return Ok(());
            }
            observed = 0;
        }
    }

    /// The versions in memory or loading (but `except`), as eviction sees them.
    fn residents(&self, except: Option<&Version>) -> (Vec<resident::Resident>, Vec<Item>) {
        let models: Vec<(String, Arc<Entry>)> =
            self.models.read().expect("models lock").iter().map(|(n, e)| (n.clone(), e.clone())).collect();
        // Graphs a loaded model's plugin calls (other than its own model's).
        let mut called = HashSet::new();
        for (name, entry) in &models {
            for version in &entry.versions {
                if let State::Ready(model) = &*version.state.borrow() {
                    called.extend(model.config.plugin.graphs.iter().filter(|g| *g != name).cloned());
                }
            }
        }
        let (mut residents, mut items) = (Vec::new(), Vec::new());
        for (name, entry) in &models {
            for (index, version) in entry.versions.iter().enumerate() {
                if except.is_some_and(|e| std::ptr::eq(e, version)) {
                    continue;
                }
                let busy = match &*version.state.borrow() {
                    State::Ready(model) => Arc::strong_count(model) > 1,
                    State::Loading => true,
                    State::Unloaded | State::Unavailable(_) => continue,
                };
                residents.push(resident::Resident {
                    cost: version.charged(),
                    last_used: version.last_used.load(Ordering::Relaxed),
                    pinned: !version.on_demand(),
                    busy: busy || (index == entry.default && called.contains(name)),
                });
                items.push(Item { name: name.clone(), entry: entry.clone(), index });
            }
        }
        (residents, items)
    }

    /// Milliseconds since the repository started: the clock of `last_used`.
    fn clock(&self) -> u64 {
        self.started.elapsed().as_millis() as u64 + 1
    }

    /// Keep only the models named (before [`Repository::load`]).
    pub fn keep(&mut self, names: &[&str]) {
        self.models.get_mut().expect("models lock").retain(|name, _| names.contains(&name.as_str()));
    }

    /// True when the repository holds no model.
    pub fn is_empty(&self) -> bool {
        self.models.read().expect("models lock").is_empty()
    }

    /// Every model version's state and residency; a model whose directory cannot be served
    /// at all (or that was unloaded) comes once, without a version.
    pub fn statuses(&self) -> Vec<Status> {
        let models = self.models.read().expect("models lock");
        let now = self.clock();
        let mut statuses = Vec::new();
        for (name, model) in models.iter() {
            if let Some(problem) = &model.problem {
                statuses.push(Status {
                    name: name.clone(),
                    version: None,
                    state: State::Unavailable(problem.clone()),
                    on_demand: false,
                    resident_bytes: 0,
                    idle: None,
                });
            }
            for v in &model.versions {
                let state = v.state();
                let used = v.last_used.load(Ordering::Relaxed);
                statuses.push(Status {
                    name: name.clone(),
                    version: Some(v.name.clone()),
                    // What it is charged now: its plugin's pool and its graph's sessions
                    // grow after the load.
                    resident_bytes: match &state {
                        State::Ready(model) => v.charged_as(model),
                        _ => 0,
                    },
                    state,
                    on_demand: v.on_demand(),
                    idle: (used > 0).then(|| Duration::from_millis(now.saturating_sub(used))),
                });
            }
        }
        statuses
    }

    /// The model memory budget, in bytes, if there is one.
    pub fn budget(&self) -> Option<u64> {
        self.loaded.get().and_then(|l| l.loader.settings.budget)
    }

    /// True when every model version counts as ready (`all`; true for none), or at least
    /// one does. On-demand versions count unless their config failed its check, once their
    /// files are fetched.
    pub fn ready(&self, all: bool) -> bool {
        let up = self.up.load(Ordering::Acquire);
        let models = self.models.read().expect("models lock");
        let mut ready = models.values().flat_map(|m| {
            let broken = m.problem.is_some().then_some(false);
            broken.into_iter().chain(m.versions.iter().map(|v| v.counts_ready(up)))
        });
        if all { ready.all(|r| r) } else { ready.any(|r| r) }
    }

    /// The directory of `name` at `version` (default: its default version), if it is served.
    pub fn dir(&self, name: &str, version: Option<&str>) -> Result<PathBuf, Error> {
        let model = self.entry(name)?;
        Ok(model.versions[model.index(name, version)?].dir.clone())
    }

    /// The versions of `name` served, ascending.
    pub fn versions(&self, name: &str) -> Vec<String> {
        self.versions_named(name, None).unwrap_or_default()
    }

    /// The versions of `name` a request for `version` (`None`: all of them) covers, whatever
    /// their state; `NotFound` for a model or version not served.
    pub fn versions_named(&self, name: &str, version: Option<&str>) -> Result<Vec<String>, Error> {
        let entry = self.entry(name)?;
        match version {
            None => Ok(entry.names().iter().map(|n| n.to_string()).collect()),
            Some(v) if entry.names().contains(&v) => Ok(vec![v.to_string()]),
            Some(v) => Err(entry.no_version(name, v)),
        }
    }

    /// The model called `name`, at `version` (default: its default version), if it is in
    /// memory now; loads nothing (see [`Repository::acquire`]).
    pub fn get(&self, name: &str, version: Option<&str>) -> Result<Arc<Model>, Error> {
        let entry = self.entry(name)?;
        let index = entry.index(name, version)?;
        let at = entry.label(name, index);
        match entry.versions[index].state() {
            State::Ready(model) => Ok(model),
            State::Loading => Err(Error::Unavailable(format!("{at} is loading"))),
            State::Unloaded => Err(Error::Unavailable(format!("{at} is not loaded (it loads on demand)"))),
            State::Unavailable(reason) => Err(Error::Unavailable(format!("{at} is unavailable: {reason}"))),
        }
    }

    /// The route called `name`, if there is one.
    pub fn route(&self, name: &str) -> Option<Arc<RouteConfig>> {
        self.routes.read().expect("routes lock").get(name).cloned()
    }

    fn entry(&self, name: &str) -> Result<Arc<Entry>, Error> {
        let models = self.models.read().expect("models lock");
        models.get(name).cloned().ok_or_else(|| Error::NotFound(format!("unknown model '{name}'")))
    }
}

/// The first wait before an on-demand model that failed to load is tried again; it doubles
/// with each failure in a row, up to [`RETRY_MOST`].
const RETRY_FIRST: Duration = Duration::from_secs(5);
const RETRY_MOST: Duration = Duration::from_secs(300);

/// A file's size, 0 if it cannot be read.
fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

impl Repository {
    /// What a model not loaded before is expected to cost, reserved while its first load
    /// runs (then replaced by what was measured): its declared `memory_mib`, else what a load
    /// of the same files and config measured, else twice its graph file and four times its
    /// plugin (the sizes backends and compiled plugins grow to), or the mean of what the
    /// models in memory were measured to cost, if more.
    fn estimate(&self, version: &Version, config: &ModelConfig) -> u64 {
        let dir = &version.dir;
        if let Some(mib) = config.load.memory_mib {
            return mib << 20;
        }
        if let Some(heap) = self
            .measured
            .lock()
            .expect("measured lock")
            .get(&content_key(version, config))
            .and_then(|m| median(m.iter().map(|m| m.heap)))
        {
            return heap;
        }
        let files =
            2 * file_size(&dir.join(&config.graph.file)) + 4 * file_size(&dir.join(&config.plugin.file));
        let loaded: Vec<u64> =
            self.statuses().iter().map(|s| s.resident_bytes).filter(|&bytes| bytes > 0).collect();
        let mean = loaded.iter().sum::<u64>() / (loaded.len() as u64).max(1);
        files.max(mean)
    }
}

/// How many times loads of the same files and config are measured alone before later ones
/// are charged the median and run beside others: one measurement can be off by what
/// requests served meanwhile allocated or freed, and a first load also pays the server's own
/// one-time costs. The early loads of a server under traffic are the likeliest to be off
/// (its other models' first requests grow their backends' arenas meanwhile): with three, two
/// of them often were (on 200 magika copies: 5.1, 6.4 and 0.6 MiB, where runs of five read
/// mostly 0.6 and 3.5), and the median charged every copy 5.1 MiB; five outvote two.
const SAMPLES: usize = 5;

/// What one load measured alone added to malloc's heaps (bytes): in all, and its graph's
/// part (at least its file's size each).
#[derive(Debug, Clone, Copy)]
struct Measured {
    heap: u64,
    graph: u64,
}

/// The lower median; none of none.
fn median(samples: impl Iterator<Item = u64>) -> Option<u64> {
    let mut sorted: Vec<u64> = samples.collect();
    sorted.sort_unstable();
    sorted.get(sorted.len().saturating_sub(1) / 2).copied()
}

/// What a version's load is measured by: its config, which files its graph, plugin and
/// plugin data are (their real paths, sizes and modification times), and whether it loads
/// on demand (one ONNX Runtime session at load) or not (all of them). Versions that load the
/// same files with the same config the same way cost the same.
fn content_key(version: &Version, config: &ModelConfig) -> u64 {
    use std::hash::{Hash, Hasher};
    let (dir, mut hasher) = (&version.dir, std::collections::hash_map::DefaultHasher::new());
    (format!("{config:?}"), version.on_demand()).hash(&mut hasher);
    let files = [Some(&config.graph.file), Some(&config.plugin.file), config.plugin.data.as_ref()];
    for file in files.into_iter().flatten().map(|f| dir.join(f)) {
        let real = std::fs::canonicalize(&file).unwrap_or(file);
        let meta = std::fs::metadata(&real).ok();
        (real, meta.as_ref().map(|m| m.len()), meta.and_then(|m| m.modified().ok())).hash(&mut hasher);
    }
    hasher.finish()
}

/// A digest of every file's path, size and modification time under `dir`.
fn fingerprint(dir: &Path) -> u64 {
    use std::hash::{Hash, Hasher};
    fn walk(dir: &Path, depth: usize, files: &mut Vec<(PathBuf, u64, Option<std::time::SystemTime>)>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for entry in entries.filter_map(|e| e.ok()) {
            let path = entry.path();
            match std::fs::metadata(&path) {
                Ok(m) if m.is_dir() && depth < 8 => walk(&path, depth + 1, files),
                Ok(m) => files.push((path, m.len(), m.modified().ok())),
                Err(_) => {}
            }
        }
    }
    let mut files = Vec::new();
    walk(dir, 0, &mut files);
    files.sort();
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    files.hash(&mut hasher);
    hasher.finish()
}

/// A model name from a request names a directory of the repository, never a path.
fn valid_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\\', '\0'])
}

/// Each item's config, with the files it lists fetched (several at once) unless the item
/// is on demand and `fetch_on_demand` is off, and the time that took. Each version's policy
/// is set from its config here.
fn configs(
    items: Vec<Item>,
    fetcher: &Fetcher,
    settings: &LoadSettings,
    fetch_on_demand: bool,
) -> Vec<Configured> {
    let configs = futures::stream::iter(items)
        .map(|item| async move {
            let started = Instant::now();
            let version = item.version();
            let dir = version.dir.as_path();
            let config = async {
                let mut config = ModelConfig::load(dir)?;
                if item.entry.versioned {
                    // A numbered directory's version is its number.
                    if let Some(declared) = declared_version(dir).filter(|d| *d != version.name) {
                        anyhow::bail!(
                            "{} says version \"{declared}\" but its directory is {}",
                            dir.join(config::FILE_NAME).display(),
                            version.name
                        );
                    }
                    config.version = version.name.clone();
                }
                let on_demand = settings.policy(&config) == LoadPolicy::OnDemand;
                version.on_demand.store(on_demand, Ordering::Relaxed);
                if !on_demand || fetch_on_demand {
                    fetcher.fetch(&item.name, dir, &mut config).await?;
                }
                let config = Arc::new(config);
                *version.declared.lock().expect("declared lock") = Some(config.clone());
                Ok(config)
            }
            .await;
            Configured { item, config, spent: started.elapsed() }
        })
        .buffered(FETCH_CONCURRENCY)
        .collect();
    tokio::runtime::Handle::current().block_on(configs)
}

/// Compile the plugin and, when `warm`, call its warm-up and run the warm-up requests: a
/// model that passes is ready (its `load_duration` for the caller to set).
fn bring_up(
    host: &PluginHost,
    name: &str,
    dir: &Path,
    config: Arc<ModelConfig>,
    (graph, sessions_made_later): (wasmtime_wasi_nn::Graph, infer::SessionsMadeLater),
    graphs: &Graphs,
    warm: bool,
) -> anyhow::Result<Model> {
    let started = Instant::now();
    // Through wasi:nn a plugin reaches its own model's graph and those its config grants.
    let allowed = graphs.for_plugin((name, &graph), &config.plugin.graphs).context("`plugin.graphs`")?;
    let plugin = host.load(name, dir, &config.plugin, allowed).context("cannot load its plugin")?;
    let elapsed_ms = started.elapsed().as_millis() as u64;
    match plugin.shared_with() {
        0 => tracing::info!(model = %name, elapsed_ms, "plugin compiled"),
        others => {
            tracing::info!(model = %name, elapsed_ms, others, "plugin shared: loaded models run the same bytes")
        }
    }
    if warm && plugin.has_warm_up() {
        let started = Instant::now();
        plugin.warm_up().context("the plugin's warm-up failed")?;
        tracing::info!(model = %name, elapsed_ms = started.elapsed().as_millis() as u64, "plugin warmed up");
    }
    let executions = config.executions();
    let model = Model {
        name: name.to_string(),
        slots: schedule::Slots::new(&config.scheduling, config.batching.as_ref(), executions),
        executions: schedule::Executions::start(name, &graph, config.batching.as_ref(), executions)?,
        config,
        graph,
        plugin,
        load_duration: Default::default(),
        sessions_made_later,
    };
    for (i, warmup) in model.config.warmup.iter().enumerate().filter(|_| warm) {
        let started = Instant::now();
        warm_up(&model, dir, warmup).with_context(|| format!("warm-up {} failed", i + 1))?;
        tracing::info!(model = %name, warmup = i + 1, count = warmup.count,
            elapsed_ms = started.elapsed().as_millis() as u64, "warm-up done");
    }
    Ok(model)
}

/// Send one configured warm-up request through the whole pipeline, `count` times.
fn warm_up(model: &Model, dir: &Path, warmup: &Warmup) -> anyhow::Result<()> {
    let mut request = match (&warmup.file, &warmup.inputs) {
        (Some(file), None) => {
            let path = dir.join(file);
            let body = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
            decode::decode(&body, Some("0"), &model.config.inputs, InputLimits::NONE)?
        }
        (None, Some(inputs)) => {
            let body = serde_json::json!({ "inputs": inputs });
            decode::decode(body.to_string().as_bytes(), None, &model.config.inputs, InputLimits::NONE)?
        }
        _ => anyhow::bail!("a warm-up needs `file` or `inputs`"),
    };
    request.params = decode::parameters(&serde_json::to_string(&warmup.parameters)?)?;
    for _ in 0..warmup.count {
        schedule::run_blocking(model, request.inputs.clone(), &request.params, &Default::default())?;
    }
    Ok(())
}
