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

use crate::config::{self, InputLimits, ModelConfig, RouteConfig, Warmup};
use crate::decode;
use crate::error::Error;
use crate::fetch::Fetcher;
use crate::infer::{self, BackendOptions, Graphs};
use crate::plugin::{Plugin, PluginHost};
use crate::schedule;
use anyhow::Context;
use futures::StreamExt;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

/// How many models fetch their files at once.
const FETCH_CONCURRENCY: usize = 4;

/// A loaded model: its config, graph and plugin.
pub struct Model {
    /// The public name (its directory name).
    pub name: String,
    /// Its `model.toml`.
    pub config: ModelConfig,
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
}

impl Model {
    /// `backend` for metadata, e.g. `onnx/tract`.
    pub fn platform(&self) -> String {
        format!("onnx/{}", self.config.graph.backend.name())
    }
}

/// Where a model is in its start-up.
#[derive(Clone)]
pub enum State {
    /// Not ready yet.
    Loading,
    /// Loaded and warmed up.
    Ready(Arc<Model>),
    /// Failed to load or warm up; the reason.
    Unavailable(String),
}

impl State {
    /// `LOADING`, `READY` or `UNAVAILABLE`, as in Triton's repository index.
    pub fn name(&self) -> &'static str {
        match self {
            State::Loading => "LOADING",
            State::Ready(_) => "READY",
            State::Unavailable(_) => "UNAVAILABLE",
        }
    }
}

/// Every model the server serves, by name, each with its versions and their states. Models
/// are loaded again or unloaded while serving ([`Repository::reload`]): a request holds the
/// model it started with until it finishes.
pub struct Repository {
    root: PathBuf,
    models: RwLock<BTreeMap<String, Arc<Entry>>>,
    /// Public names that send requests to other models (`route.toml`).
    routes: RwLock<BTreeMap<String, Arc<RouteConfig>>>,
    /// The graphs plugins reach by model name (each model's default version's).
    graphs: Mutex<HashMap<String, wasmtime_wasi_nn::Graph>>,
    loaded: OnceLock<Loaded>,
    /// One reload or unload at a time.
    changing: Mutex<()>,
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

/// One version of a model: its directory and where it is in its start-up.
struct Version {
    name: String,
    dir: PathBuf,
    state: RwLock<State>,
}

impl Version {
    fn new(name: String, dir: PathBuf) -> Self {
        Self { name, dir, state: RwLock::new(State::Loading) }
    }

    fn is_ready(&self) -> bool {
        matches!(*self.state.read().expect("state lock"), State::Ready(_))
    }

    fn set(&self, model: &str, state: State) {
        match &state {
            State::Ready(_) => tracing::info!(model, version = %self.name, "ready"),
            State::Unavailable(reason) => {
                tracing::error!(model, version = %self.name, "unavailable: {reason}")
            }
            State::Loading => {}
        }
        *self.state.write().expect("state lock") = state;
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

    /// `version` of this model `name` (default: the default version), if it is served.
    fn version(&self, name: &str, version: Option<&str>) -> Result<&Version, Error> {
        if let Some(problem) = &self.problem {
            return Err(Error::Unavailable(format!("model '{name}' is unavailable: {problem}")));
        }
        match version {
            None => Ok(&self.versions[self.default]),
            Some(v) => self.versions.iter().find(|s| s.name == v).ok_or_else(|| {
                Error::NotFound(format!("model '{name}' has no version '{v}' (it serves {:?})", self.names()))
            }),
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
        })
    }

    /// Bring every model up; returns the models that ended unavailable, with the reasons
    /// (each is also logged). The loader is kept for [`Repository::reload`]. Call from a
    /// blocking thread of a tokio runtime.
    pub fn load(&self, loader: Loader) -> Vec<(String, String)> {
        let host = PluginHost::new(loader.plugin_cache.as_deref());
        let loaded = self.loaded.get_or_init(|| Loaded { loader, host });
        let models: Vec<(String, Arc<Entry>)> =
            self.models.read().expect("models lock").iter().map(|(n, e)| (n.clone(), e.clone())).collect();
        let graphs = self.bring_up(loaded, &models);
        self.graphs.lock().expect("graphs lock").extend(graphs);
        self.states()
            .into_iter()
            .filter_map(|(name, version, state)| match state {
                State::Unavailable(reason) => Some((
                    version.map_or_else(|| name.to_string(), |v| format!("{name} version {v}")),
                    reason,
                )),
                _ => None,
            })
            .collect()
    }

    /// Load `name` again from its directory (a new model, new versions, a changed policy or
    /// files) and swap it in once every version it serves is ready; until then, and if any
    /// fails, the versions serving now go on serving, and requests in flight finish on them.
    /// Call from a blocking thread of a tokio runtime, after [`Repository::load`].
    pub fn reload(&self, name: &str) -> Result<(), Error> {
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
        let graphs = self.bring_up(loaded, &[(name.to_string(), entry.clone())]);
        let failed: Vec<String> = entry
            .versions
            .iter()
            .filter_map(|v| match &*v.state.read().expect("state lock") {
                State::Ready(_) => None,
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

    /// Stop serving `name`: its requests in flight finish, new ones get 503 until it is
    /// loaded again.
    pub fn unload(&self, name: &str) -> Result<(), Error> {
        let _one_at_a_time = self.changing.lock().expect("change lock");
        if self.routes.write().expect("routes lock").remove(name).is_some() {
            tracing::info!(route = %name, "route removed");
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
    /// logged and not tried again until the directory changes again. Call from a blocking
    /// thread of a tokio runtime; the first call (empty `seen`) only takes stock.
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
                    if let Err(e) = self.reload(name) {
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

    /// Load the graphs and bring up the plugins of `models`' versions, setting each
    /// version's state; returns the graphs other plugins reach by these models' names.
    fn bring_up(
        &self,
        loaded: &Loaded,
        models: &[(String, Arc<Entry>)],
    ) -> HashMap<String, wasmtime_wasi_nn::Graph> {
        let mut ready = Vec::new();
        let mut graphs = HashMap::new();
        for (name, version, dir, config, fetched_in) in configs(models, &loaded.loader.fetcher) {
            let started = Instant::now();
            let graph = config.and_then(|config| {
                let file = dir.join(&config.graph.file);
                let options = loaded.loader.options_for(&config.graph)?;
                let executions = config.executions();
                let graph = infer::load(name, &file, &config.graph, executions, &options)
                    .context("cannot load its graph")?;
                tracing::info!(model = %name, backend = %config.graph.backend.name(), target = ?config.graph.target,
                    executions, graph_threads = config.graph.graph_threads(executions),
                    elapsed_ms = started.elapsed().as_millis() as u64, "graph loaded");
                Ok((config, graph))
            });
            match graph {
                Ok((config, graph)) => {
                    // Plugins reach another model's graph by its name: its default version's.
                    if version.name == version_default(models, name) {
                        graphs.insert(name.to_string(), graph.clone());
                    }
                    ready.push((name, version, dir, config, graph, fetched_in + started.elapsed()));
                }
                Err(e) => version.set(name, State::Unavailable(format!("{e:#}"))),
            }
        }
        // Every plugin may reach the graphs loaded before and those loaded now.
        let mut registry = self.graphs.lock().expect("graphs lock").clone();
        registry.extend(graphs.clone());
        let registry = Graphs::new(registry);
        for (name, version, dir, config, graph, spent) in ready {
            let state = match &loaded.host {
                Ok(host) => match bring_up(host, name, dir, config, graph, &registry, spent) {
                    Ok(model) => State::Ready(Arc::new(model)),
                    Err(e) => State::Unavailable(format!("{e:#}")),
                },
                Err(e) => State::Unavailable(format!("cannot start the plugin engine: {e:#}")),
            };
            version.set(name, state);
        }
        graphs
    }

    /// Keep only the models named (before [`Repository::load`]).
    pub fn keep(&mut self, names: &[&str]) {
        self.models.get_mut().expect("models lock").retain(|name, _| names.contains(&name.as_str()));
    }

    /// True when the repository holds no model.
    pub fn is_empty(&self) -> bool {
        self.models.read().expect("models lock").is_empty()
    }

    /// Every model version's name, version and state; a model whose directory cannot be
    /// served at all (or that was unloaded) comes once, without a version.
    pub fn states(&self) -> Vec<(String, Option<String>, State)> {
        let models = self.models.read().expect("models lock");
        let mut states = Vec::new();
        for (name, model) in models.iter() {
            if let Some(problem) = &model.problem {
                states.push((name.clone(), None, State::Unavailable(problem.clone())));
            }
            for v in &model.versions {
                states.push((
                    name.clone(),
                    Some(v.name.clone()),
                    v.state.read().expect("state lock").clone(),
                ));
            }
        }
        states
    }

    /// True when every model version is ready (`all`; true for none), or at least one is.
    pub fn ready(&self, all: bool) -> bool {
        let mut ready = self.states().into_iter().map(|(_, _, s)| matches!(s, State::Ready(_)));
        if all { ready.all(|r| r) } else { ready.any(|r| r) }
    }

    /// The directory of `name` at `version` (default: its default version), if it is served.
    pub fn dir(&self, name: &str, version: Option<&str>) -> Result<PathBuf, Error> {
        let model = self.entry(name)?;
        Ok(model.version(name, version)?.dir.clone())
    }

    /// The versions of `name` served, ascending.
    pub fn versions(&self, name: &str) -> Vec<String> {
        self.entry(name).map(|m| m.names().iter().map(|n| n.to_string()).collect()).unwrap_or_default()
    }

    /// The model called `name`, at `version` (default: its default version), if it is ready.
    pub fn get(&self, name: &str, version: Option<&str>) -> Result<Arc<Model>, Error> {
        let model = self.entry(name)?;
        let slot = model.version(name, version)?;
        let at = if model.versioned {
            format!("model '{name}' version {}", slot.name)
        } else {
            format!("model '{name}'")
        };
        match &*slot.state.read().expect("state lock") {
            State::Ready(model) => Ok(model.clone()),
            State::Loading => Err(Error::Unavailable(format!("{at} is loading"))),
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

/// The name of `name`'s default version among `models`.
fn version_default<'a>(models: &'a [(String, Arc<Entry>)], name: &str) -> &'a str {
    let (_, entry) = models.iter().find(|(n, _)| n == name).expect("a model being loaded");
    entry.versions.get(entry.default).map_or("", |v| v.name.as_str())
}

/// Every version's config of `models`, with the files it lists fetched (several at once),
/// and the time that took.
#[allow(clippy::type_complexity)]
fn configs<'a>(
    models: &'a [(String, Arc<Entry>)],
    fetcher: &Fetcher,
) -> Vec<(&'a str, &'a Version, &'a Path, anyhow::Result<ModelConfig>, Duration)> {
    let versions = models.iter().flat_map(|(name, m)| m.versions.iter().map(move |v| (name, m, v)));
    let configs = futures::stream::iter(versions)
        .map(|(name, model, version)| async move {
            let started = Instant::now();
            let dir = version.dir.as_path();
            let config = async {
                let mut config = ModelConfig::load(dir)?;
                if model.versioned {
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
                fetcher.fetch(name, dir, &mut config).await?;
                Ok(config)
            }
            .await;
            (name.as_str(), version, dir, config, started.elapsed())
        })
        .buffered(FETCH_CONCURRENCY)
        .collect();
    tokio::runtime::Handle::current().block_on(configs)
}

/// Compile the plugin and run the warm-up requests: a model that passes is ready.
/// `spent`: the time its fetch and graph took, for [`Model::load_duration`].
fn bring_up(
    host: &PluginHost,
    name: &str,
    dir: &Path,
    config: ModelConfig,
    graph: wasmtime_wasi_nn::Graph,
    graphs: &Graphs,
    spent: Duration,
) -> anyhow::Result<Model> {
    let started = Instant::now();
    // Through wasi:nn a plugin reaches its own model's graph and those its config grants.
    let allowed = graphs.for_plugin((name, &graph), &config.plugin.graphs).context("`plugin.graphs`")?;
    let plugin = host.load(name, dir, &config.plugin, allowed).context("cannot load its plugin")?;
    tracing::info!(model = %name, elapsed_ms = started.elapsed().as_millis() as u64, "plugin compiled");
    if plugin.has_warm_up() {
        let started = Instant::now();
        plugin.warm_up().context("the plugin's warm-up failed")?;
        tracing::info!(model = %name, elapsed_ms = started.elapsed().as_millis() as u64, "plugin warmed up");
    }
    let executions = config.executions();
    let mut model = Model {
        name: name.to_string(),
        slots: schedule::Slots::new(&config.scheduling, config.batching.as_ref(), executions),
        executions: schedule::Executions::start(name, &graph, config.batching.as_ref(), executions)?,
        config,
        graph,
        plugin,
        load_duration: Default::default(),
    };
    for (i, warmup) in model.config.warmup.iter().enumerate() {
        let started = Instant::now();
        warm_up(&model, dir, warmup).with_context(|| format!("warm-up {} failed", i + 1))?;
        tracing::info!(model = %name, warmup = i + 1, count = warmup.count,
            elapsed_ms = started.elapsed().as_millis() as u64, "warm-up done");
    }
    model.load_duration = spent + started.elapsed();
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
