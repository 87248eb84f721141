//! repository: the models a server serves, loaded from a directory of model directories.
//!
//! ```text
//! models/
//!   magika/
//!     model.toml      config (see `config`)
//!     model.onnx      the graph
//!     plugin.wasm     pre/post-processing component
//!     data/           files the plugin reads at /data
//! ```

use crate::config::{self, ModelConfig};
use crate::error::Error;
use crate::infer::{self, BackendOptions, Graphs};
use crate::plugin::{Plugin, PluginHost};
use anyhow::Context;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

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
}

impl Model {
    /// `backend` for metadata, e.g. `onnx/tract`.
    pub fn platform(&self) -> String {
        format!("onnx/{}", self.config.graph.backend.name())
    }
}

/// Every model the server serves, by name.
pub struct Repository {
    models: BTreeMap<String, Arc<Model>>,
}

impl Repository {
    /// Load every model directory under `root` (a directory holding `model.toml`).
    pub fn load(root: &Path, options: &BackendOptions) -> anyhow::Result<Self> {
        let mut dirs: Vec<(String, PathBuf)> = Vec::new();
        let entries = std::fs::read_dir(root)
            .with_context(|| format!("cannot read model repository {}", root.display()))?;
        for entry in entries {
            let path = entry?.path();
            if path.join(config::FILE_NAME).is_file() {
                let name = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .with_context(|| format!("model directory name {} is not UTF-8", path.display()))?;
                dirs.push((name.to_string(), path));
            } else if path.is_dir() {
                tracing::warn!(dir = %path.display(), "skipped: no {}", config::FILE_NAME);
            }
        }
        anyhow::ensure!(
            !dirs.is_empty(),
            "no models in {}: each model is a directory with a {}",
            root.display(),
            config::FILE_NAME
        );
        dirs.sort();

        // Graphs first: every plugin may call any loaded graph through wasi:nn.
        let mut loaded = Vec::new();
        let mut graphs = HashMap::new();
        for (name, dir) in dirs {
            let config = ModelConfig::load(&dir)?;
            let started = Instant::now();
            let graph = infer::load(&dir.join(&config.graph.file), &config.graph, options)
                .with_context(|| format!("model '{name}': cannot load its graph"))?;
            tracing::info!(model = %name, backend = config.graph.backend.name(),
                target = ?config.graph.target, elapsed_ms = started.elapsed().as_millis() as u64, "graph loaded");
            graphs.insert(name.clone(), graph.clone());
            loaded.push((name, dir, config, graph));
        }
        let graphs = Graphs::new(graphs);
        let host = PluginHost::new()?;
        let mut models = BTreeMap::new();
        for (name, dir, config, graph) in loaded {
            let started = Instant::now();
            let plugin = host
                .load(&name, &dir, &config.plugin, graphs.clone())
                .with_context(|| format!("model '{name}': cannot load its plugin"))?;
            tracing::info!(model = %name, elapsed_ms = started.elapsed().as_millis() as u64, "plugin compiled");
            models.insert(name.clone(), Arc::new(Model { name, config, graph, plugin }));
        }
        Ok(Self { models })
    }

    /// The model called `name`, at `version` if one is asked for.
    pub fn get(&self, name: &str, version: Option<&str>) -> Result<Arc<Model>, Error> {
        let model =
            self.models.get(name).ok_or_else(|| Error::NotFound(format!("unknown model '{name}'")))?;
        match version {
            Some(v) if v != model.config.version => Err(Error::NotFound(format!(
                "model '{name}' has no version '{v}' (it serves version '{}')",
                model.config.version
            ))),
            _ => Ok(model.clone()),
        }
    }

    /// Every model, by name.
    pub fn models(&self) -> impl Iterator<Item = &Arc<Model>> {
        self.models.values()
    }
}
