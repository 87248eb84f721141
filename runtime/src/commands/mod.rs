//! commands: the `wasmserve` subcommands as library entry points. The binary (`main.rs`)
//! only parses the command line and calls one of these; each owns its start-up sequence:
//! [`serve::run`], [`batch::run`], [`check::run`], [`new::plugin`] and [`schema`].
//! `serve`, `batch` and `check` bring their models up through the same caches.

pub mod batch;
pub mod check;
pub mod new;
pub mod serve;

use crate::fetch::Fetcher;
use crate::infer::BackendOptions;
use crate::repository::{LoadSettings, Loader, Repository};
use anyhow::Context;
use std::path::PathBuf;

/// Which config file's JSON schema `wasmserve schema` prints.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum SchemaOf {
    /// `wasmserve serve --config FILE`.
    Server,
    /// `model.toml`.
    Model,
    /// `versions.toml`.
    Versions,
}

/// The JSON schema of a config file (committed under `schemas/`).
pub fn schema(of: SchemaOf) -> serde_json::Value {
    match of {
        SchemaOf::Server => serve::config_schema(),
        SchemaOf::Model => crate::config::schema(),
        SchemaOf::Versions => crate::config::versions_schema(),
    }
}

/// A tokio runtime for one command.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Runtime::new().context("cannot start the async runtime")
}

/// Where models are fetched to and compiled plugins kept.
pub(crate) struct Caches {
    fetcher: Fetcher,
    plugins: Option<PathBuf>,
    /// Where ONNX Runtime's optimised graphs are kept.
    graphs: Option<PathBuf>,
    /// With --no-cache: the temporary directory fetched files go to, removed on drop.
    scratch: Option<tempfile::TempDir>,
}

impl Caches {
    pub(crate) fn new(
        cache_dir: Option<PathBuf>,
        no_cache: bool,
        progress_bars: bool,
    ) -> anyhow::Result<Self> {
        let cache = (!no_cache).then(|| cache_dir.or_else(default_cache_dir)).flatten();
        // Without a cache, fetched files still need a place: one that goes away at exit.
        let (fetched, scratch) = match &cache {
            Some(dir) => (dir.clone(), None),
            None => {
                let scratch = tempfile::Builder::new().prefix("wasmserve-").tempdir();
                let scratch = scratch.context("cannot create a temporary directory")?;
                (scratch.path().to_path_buf(), Some(scratch))
            }
        };
        if scratch.is_none() {
            warn_unless_writable(&fetched);
        }
        let fetcher = Fetcher::new(&fetched.join("models"), progress_bars);
        let (plugins, graphs) = (cache.as_ref().map(|d| d.join("plugins")), cache.map(|d| d.join("graphs")));
        Ok(Self { fetcher, plugins, graphs, scratch })
    }

    /// Bring the repository's models up (see [`Repository::load`]); returns the failures and
    /// the scratch directory to keep until exit.
    pub(crate) fn load(
        self,
        repository: &Repository,
        options: BackendOptions,
        settings: LoadSettings,
    ) -> (Vec<(String, String)>, Option<tempfile::TempDir>) {
        let options = BackendOptions { graph_cache: self.graphs, ..options };
        let loader = Loader { options, fetcher: self.fetcher, plugin_cache: self.plugins, settings };
        (repository.load(loader), self.scratch)
    }
}

/// Say at start-up, once, what a cache directory that cannot be written costs; the models that
/// fetch nothing still serve.
fn warn_unless_writable(dir: &std::path::Path) {
    let probe = std::fs::create_dir_all(dir).and_then(|()| tempfile::tempfile_in(dir).map(drop));
    if let Err(e) = probe {
        tracing::warn!(
            dir = %dir.display(),
            "the cache directory cannot be written ({e}): models that fetch files will be unavailable, and compiled \
             plugins and optimised graphs are not kept; give --cache-dir a writable directory (on Kubernetes, an \
             emptyDir), or --no-cache"
        );
    }
}

fn default_cache_dir() -> Option<PathBuf> {
    let xdg = std::env::var_os("XDG_CACHE_HOME").map(PathBuf::from);
    xdg.or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .map(|d| d.join("wasmserve"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed schemas are what the structs say; regenerate with
    /// `cargo run -- schema server > schemas/server.schema.json` (and `model`).
    #[test]
    fn committed_schemas_match_the_config_structs() {
        for (of, committed, schema) in [
            ("server", include_str!("../../../schemas/server.schema.json"), schema(SchemaOf::Server)),
            ("model", include_str!("../../../schemas/model.schema.json"), schema(SchemaOf::Model)),
            ("versions", include_str!("../../../schemas/versions.schema.json"), schema(SchemaOf::Versions)),
        ] {
            let committed: serde_json::Value = serde_json::from_str(committed).unwrap();
            assert!(
                committed == schema,
                "schemas/{of}.schema.json is out of date: `cargo run -- schema {of} > schemas/{of}.schema.json`"
            );
        }
    }
}
