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

use crate::config::{self, ModelConfig, Warmup};
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
use std::sync::{Arc, RwLock};
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
    /// The threads that run its graph, joining requests' runs with `[batching]`.
    pub batcher: schedule::batch::Batcher,
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

/// Every model the server serves, by name, each with its versions and their states.
pub struct Repository {
    models: BTreeMap<String, Entry>,
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
}

impl Entry {
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
}

/// The `version` a directory's model.toml sets, if it parses and sets one.
fn declared_version(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join(config::FILE_NAME)).ok()?;
    let table = text.parse::<toml::Table>().ok()?;
    table.get("version")?.as_str().map(str::to_string)
}

impl Repository {
    /// Find the models under `root`: each directory holding a `model.toml`, or numbered
    /// version directories that do. All start `Loading`; [`Repository::load`] brings them up.
    pub fn scan(root: &Path) -> anyhow::Result<Self> {
        let mut models = BTreeMap::new();
        let entries = std::fs::read_dir(root)
            .with_context(|| format!("cannot read model repository {}", root.display()))?;
        for entry in entries {
            let path = entry?.path();
            if !path.is_dir() {
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
            models.insert(name.to_string(), model);
        }
        Ok(Self { models })
    }

    /// Bring every model up; returns the models that ended unavailable, with the reasons
    /// (each is also logged). `fetcher` brings the files configs list; `plugin_cache`
    /// keeps compiled plugins across restarts. Call from a blocking thread of a tokio runtime.
    pub fn load(
        &self,
        options: &BackendOptions,
        fetcher: &Fetcher,
        plugin_cache: Option<&Path>,
    ) -> Vec<(String, String)> {
        // Graphs next: every plugin may call any loaded graph through wasi:nn.
        let mut loaded = Vec::new();
        let mut graphs = HashMap::new();
        for (name, version, dir, config, fetched_in) in self.configs(fetcher) {
            let started = Instant::now();
            let graph = config.and_then(|config| {
                let file = dir.join(&config.graph.file);
                let graph = infer::load(&file, &config.graph, config.executions(), options)
                    .context("cannot load its graph")?;
                tracing::info!(model = %name, backend = %config.graph.backend.name(), target = ?config.graph.target,
                    elapsed_ms = started.elapsed().as_millis() as u64, "graph loaded");
                Ok((config, graph))
            });
            match graph {
                Ok((config, graph)) => {
                    // Plugins reach another model's graph by its name: its default version's.
                    if self.models[name].versions[self.models[name].default].name == version {
                        graphs.insert(name.to_string(), graph.clone());
                    }
                    loaded.push((name, version, dir, config, graph, fetched_in + started.elapsed()));
                }
                Err(e) => self.set(name, version, State::Unavailable(format!("{e:#}"))),
            }
        }
        let graphs = Graphs::new(graphs);
        match PluginHost::new(plugin_cache) {
            Ok(host) => {
                for (name, version, dir, config, graph, spent) in loaded {
                    let state = match bring_up(&host, name, dir, config, graph, &graphs, spent) {
                        Ok(model) => State::Ready(Arc::new(model)),
                        Err(e) => State::Unavailable(format!("{e:#}")),
                    };
                    self.set(name, version, state);
                }
            }
            Err(e) => loaded.iter().for_each(|(name, version, ..)| {
                self.set(name, version, State::Unavailable(format!("cannot start the plugin engine: {e:#}")))
            }),
        }
        self.states()
            .filter_map(|(name, version, state)| match state {
                State::Unavailable(reason) => Some((
                    version.map_or_else(|| name.to_string(), |v| format!("{name} version {v}")),
                    reason,
                )),
                _ => None,
            })
            .collect()
    }

    /// Every model version's config, with the files it lists fetched (several at once),
    /// and the time that took.
    #[allow(clippy::type_complexity)]
    fn configs(&self, fetcher: &Fetcher) -> Vec<(&str, &str, &Path, anyhow::Result<ModelConfig>, Duration)> {
        let versions = self.models.iter().flat_map(|(name, m)| m.versions.iter().map(move |v| (name, v)));
        let configs = futures::stream::iter(versions)
            .map(|(name, version)| async move {
                let started = Instant::now();
                let dir = version.dir.as_path();
                let config = async {
                    let mut config = ModelConfig::load(dir)?;
                    if self.models[name].versioned {
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
                (name.as_str(), version.name.as_str(), dir, config, started.elapsed())
            })
            .buffered(FETCH_CONCURRENCY)
            .collect();
        tokio::runtime::Handle::current().block_on(configs)
    }

    fn set(&self, name: &str, version: &str, state: State) {
        match &state {
            State::Ready(_) => tracing::info!(model = %name, version, "ready"),
            State::Unavailable(reason) => tracing::error!(model = %name, version, "unavailable: {reason}"),
            State::Loading => {}
        }
        let slot = self.models[name].versions.iter().find(|v| v.name == version).expect("a scanned version");
        *slot.state.write().expect("state lock") = state;
    }

    /// Keep only the models named (before [`Repository::load`]).
    pub fn keep(&mut self, names: &[&str]) {
        self.models.retain(|name, _| names.contains(&name.as_str()));
    }

    /// True when the repository holds no model.
    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }

    /// Every model version's name, version and state; a model whose directory cannot be
    /// served at all comes once, without a version.
    pub fn states(&self) -> impl Iterator<Item = (&str, Option<&str>, State)> {
        self.models.iter().flat_map(|(name, model)| {
            let problem =
                model.problem.as_ref().map(|p| (name.as_str(), None, State::Unavailable(p.clone())));
            let versions = model.versions.iter().map(move |v| {
                (name.as_str(), Some(v.name.as_str()), v.state.read().expect("state lock").clone())
            });
            problem.into_iter().chain(versions)
        })
    }

    /// True when every model version is ready (`all`; true for none), or at least one is.
    pub fn ready(&self, all: bool) -> bool {
        let mut ready = self.states().map(|(_, _, s)| matches!(s, State::Ready(_)));
        if all { ready.all(|r| r) } else { ready.any(|r| r) }
    }

    /// The directory of `name` at `version` (default: its default version), if it is served.
    pub fn dir(&self, name: &str, version: Option<&str>) -> Result<&Path, Error> {
        self.slot(name, version).map(|(_, slot)| slot.dir.as_path())
    }

    fn slot(&self, name: &str, version: Option<&str>) -> Result<(&Entry, &Version), Error> {
        let model =
            self.models.get(name).ok_or_else(|| Error::NotFound(format!("unknown model '{name}'")))?;
        if let Some(problem) = &model.problem {
            return Err(Error::Unavailable(format!("model '{name}' is unavailable: {problem}")));
        }
        let slot = match version {
            None => &model.versions[model.default],
            Some(v) => model.versions.iter().find(|s| s.name == v).ok_or_else(|| {
                Error::NotFound(format!(
                    "model '{name}' has no version '{v}' (it serves {:?})",
                    model.names()
                ))
            })?,
        };
        Ok((model, slot))
    }

    /// The versions of `name` served, ascending, and the default one.
    pub fn versions(&self, name: &str) -> Option<(Vec<&str>, &str)> {
        let model = self.models.get(name)?;
        let default = model.versions.get(model.default)?;
        Some((model.names(), default.name.as_str()))
    }

    /// The model called `name`, at `version` (default: its default version), if it is ready.
    pub fn get(&self, name: &str, version: Option<&str>) -> Result<Arc<Model>, Error> {
        let (model, slot) = self.slot(name, version)?;
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
    let batcher = schedule::batch::Batcher::start(name, graph.clone(), config.batching.as_ref(), executions)?;
    let mut model = Model {
        name: name.to_string(),
        slots: schedule::Slots::new(&config.scheduling, config.batching.as_ref(), executions),
        batcher,
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
            decode::decode(&body, Some("0"), &model.config.inputs)?
        }
        (None, Some(inputs)) => {
            let body = serde_json::json!({ "inputs": inputs });
            decode::decode(body.to_string().as_bytes(), None, &model.config.inputs)?
        }
        _ => anyhow::bail!("a warm-up needs `file` or `inputs`"),
    };
    request.params = decode::parameters(&serde_json::to_string(&warmup.parameters)?)?;
    for _ in 0..warmup.count {
        schedule::run_blocking(model, request.inputs.clone(), &request.params)?;
    }
    Ok(())
}
