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
//! ```

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

/// Every model the server serves, by name, each with its state.
pub struct Repository {
    models: BTreeMap<String, (PathBuf, RwLock<State>)>,
}

impl Repository {
    /// Find the models under `root`: each directory holding a `model.toml`. All start
    /// `Loading`; [`Repository::load`] brings them up.
    pub fn scan(root: &Path) -> anyhow::Result<Self> {
        let mut models = BTreeMap::new();
        let entries = std::fs::read_dir(root)
            .with_context(|| format!("cannot read model repository {}", root.display()))?;
        for entry in entries {
            let path = entry?.path();
            if path.join(config::FILE_NAME).is_file() {
                let name = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .with_context(|| format!("model directory name {} is not UTF-8", path.display()))?;
                models.insert(name.to_string(), (path, RwLock::new(State::Loading)));
            } else if path.is_dir() {
                tracing::warn!(dir = %path.display(), "skipped: no {}", config::FILE_NAME);
            }
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
        for (name, dir, config, fetched_in) in self.configs(fetcher) {
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
                    graphs.insert(name.to_string(), graph.clone());
                    loaded.push((name, dir, config, graph, fetched_in + started.elapsed()));
                }
                Err(e) => self.set(name, State::Unavailable(format!("{e:#}"))),
            }
        }
        let graphs = Graphs::new(graphs);
        match PluginHost::new(plugin_cache) {
            Ok(host) => {
                for (name, dir, config, graph, spent) in loaded {
                    let state = match bring_up(&host, name, dir, config, graph, &graphs, spent) {
                        Ok(model) => State::Ready(Arc::new(model)),
                        Err(e) => State::Unavailable(format!("{e:#}")),
                    };
                    self.set(name, state);
                }
            }
            Err(e) => loaded.iter().for_each(|(name, ..)| {
                self.set(name, State::Unavailable(format!("cannot start the plugin engine: {e:#}")))
            }),
        }
        self.states()
            .filter_map(|(name, state)| match state {
                State::Unavailable(reason) => Some((name.to_string(), reason)),
                _ => None,
            })
            .collect()
    }

    /// Every model's config, with the files it lists fetched (several models at once), and
    /// the time that took.
    fn configs(&self, fetcher: &Fetcher) -> Vec<(&str, &Path, anyhow::Result<ModelConfig>, Duration)> {
        let configs = futures::stream::iter(&self.models)
            .map(|(name, (dir, _))| async move {
                let started = Instant::now();
                let config = async {
                    let mut config = ModelConfig::load(dir)?;
                    fetcher.fetch(name, dir, &mut config).await?;
                    Ok(config)
                }
                .await;
                (name.as_str(), dir.as_path(), config, started.elapsed())
            })
            .buffered(FETCH_CONCURRENCY)
            .collect();
        tokio::runtime::Handle::current().block_on(configs)
    }

    fn set(&self, name: &str, state: State) {
        match &state {
            State::Ready(_) => tracing::info!(model = %name, "ready"),
            State::Unavailable(reason) => tracing::error!(model = %name, "unavailable: {reason}"),
            State::Loading => {}
        }
        *self.models[name].1.write().expect("state lock") = state;
    }

    /// True when the repository holds no model.
    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }

    /// Every model's name and state.
    pub fn states(&self) -> impl Iterator<Item = (&str, State)> {
        self.models
            .iter()
            .map(|(name, (_, state))| (name.as_str(), state.read().expect("state lock").clone()))
    }

    /// True when every model is ready (`all`; true for none), or at least one is.
    pub fn ready(&self, all: bool) -> bool {
        let mut ready = self.states().map(|(_, s)| matches!(s, State::Ready(_)));
        if all { ready.all(|r| r) } else { ready.any(|r| r) }
    }

    /// The model called `name`, at `version` if one is asked for, if it is ready.
    pub fn get(&self, name: &str, version: Option<&str>) -> Result<Arc<Model>, Error> {
        let (_, state) =
            self.models.get(name).ok_or_else(|| Error::NotFound(format!("unknown model '{name}'")))?;
        let model = match &*state.read().expect("state lock") {
            State::Ready(model) => model.clone(),
            State::Loading => return Err(Error::Unavailable(format!("model '{name}' is loading"))),
            State::Unavailable(reason) => {
                return Err(Error::Unavailable(format!("model '{name}' is unavailable: {reason}")));
            }
        };
        match version {
            Some(v) if v != model.config.version => Err(Error::NotFound(format!(
                "model '{name}' has no version '{v}' (it serves version '{}')",
                model.config.version
            ))),
            _ => Ok(model),
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
    let allowed = graphs.only(config.plugin.allowed_graphs(name)).context("`plugin.graphs`")?;
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
