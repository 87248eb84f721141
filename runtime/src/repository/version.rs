//! version: a model's entry in the repository (its versions, or why its directory cannot
//! be served) and one version's state, cost and use.

use super::*;

/// A model: the versions its policy serves (ascending) and the default one, or why its
/// directory cannot be served at all (a broken `versions.toml`, no versions).
pub(super) struct Entry {
    pub(super) versions: Vec<Version>,
    pub(super) default: usize,
    /// Numbered version directories, as opposed to one model.toml.
    pub(super) versioned: bool,
    pub(super) problem: Option<String>,
}

/// One version of a model: its directory, where it is, and what eviction needs to know.
pub(super) struct Version {
    pub(super) name: String,
    pub(super) dir: PathBuf,
    pub(super) state: watch::Sender<State>,
    /// Loaded on demand: evictable, and loaded again by its next request.
    pub(super) on_demand: AtomicBool,
    /// What it is charged against the budget (bytes): measured at its last load, or the
    /// estimate its load reserved while it runs.
    pub(super) cost: AtomicU64,
    /// What each ONNX Runtime session its graph makes after the load is charged (bytes):
    /// what its first session was measured to add.
    pub(super) session_cost: AtomicU64,
    /// When a request last used it, in ms since the repository started (0: never).
    pub(super) last_used: AtomicU64,
    /// After a failed on-demand load: when the next may start, and the failures in a row.
    pub(super) retry: Mutex<Option<(Instant, u32)>>,
    /// Its config as last read (at start-up, and by each load): what an on-demand version
    /// out of memory declares, for metadata that loads nothing.
    pub(super) declared: Mutex<Option<Arc<ModelConfig>>>,
}

impl Version {
    pub(super) fn new(name: String, dir: PathBuf) -> Self {
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

    pub(super) fn state(&self) -> State {
        self.state.borrow().clone()
    }

    /// Wait up to `within` for a load running to end (either way); false if it did not.
    pub(super) async fn settled(&self, within: Duration) -> bool {
        let mut changed = self.state.subscribe();
        tokio::time::timeout(within, changed.wait_for(|s| !matches!(s, State::Loading))).await.is_ok()
    }

    pub(super) fn is_ready(&self) -> bool {
        matches!(*self.state.borrow(), State::Ready(_))
    }

    pub(super) fn on_demand(&self) -> bool {
        self.on_demand.load(Ordering::Relaxed)
    }

    /// What it is charged against the budget now: in memory, its declared cost, or what its
    /// load added to the heap and what its plugin holds (code, idle instances, as many as
    /// there are now); loading, what its load reserved; else nothing.
    pub(super) fn charged(&self) -> u64 {
        match &*self.state.borrow() {
            State::Ready(model) => self.charged_as(model),
            State::Loading => self.cost.load(Ordering::Relaxed),
            State::Unloaded | State::Unavailable(_) => 0,
        }
    }

    /// What it is charged with `model` in memory.
    pub(super) fn charged_as(&self, model: &Model) -> u64 {
        let cost = self.cost.load(Ordering::Relaxed);
        // A declared cost is all of it; a measured one leaves out the plugin and the sessions
        // made after the load, counted as they are.
        if model.config.load.memory_mib.is_some() {
            return cost;
        }
        let sessions = model.sessions_made_later.count() as u64 * self.session_cost.load(Ordering::Relaxed);
        cost + model.runner.plugin.resident_bytes() + sessions
    }

    pub(super) fn set(&self, model: &str, state: State) {
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
    pub(super) fn counts_ready(&self, up: bool) -> bool {
        match &*self.state.borrow() {
            State::Ready(_) => true,
            State::Unavailable(_) => self.on_demand() && self.retry.lock().expect("retry lock").is_some(),
            state => self.loadable(state, up),
        }
    }

    /// On demand, in `state`, and able to serve once a request loads it: out of memory, or
    /// loading for a request; not while start-up loading runs (`up` false), when its files
    /// are being fetched.
    pub(super) fn loadable(&self, state: &State, up: bool) -> bool {
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
    pub(super) fn broken(problem: String) -> Self {
        Self { versions: Vec::new(), default: 0, versioned: false, problem: Some(problem) }
    }

    /// A model directory: a `model.toml` (one version, as its config says), or numbered
    /// version directories chosen by `versions.toml`. `None`: not a model directory.
    pub(super) fn scan(dir: &Path) -> Option<Self> {
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

    pub(super) fn names(&self) -> Vec<&str> {
        self.versions.iter().map(|v| v.name.as_str()).collect()
    }

    /// The index of `version` of this model `name` (default: the default version), if it
    /// is served.
    pub(super) fn index(&self, name: &str, version: Option<&str>) -> Result<usize, Error> {
        if let Some(problem) = &self.problem {
            return Err(Error::Unavailable(format!("model '{name}' is unavailable: {problem}")));
        }
        match version {
            None => Ok(self.default),
            Some(v) => self.versions.iter().position(|s| s.name == v).ok_or_else(|| self.no_version(name, v)),
        }
    }

    pub(super) fn no_version(&self, name: &str, version: &str) -> Error {
        Error::NotFound(format!("model '{name}' has no version '{version}' (it serves {:?})", self.names()))
    }

    /// How requests and the log name version `index` of model `name`.
    pub(super) fn label(&self, name: &str, index: usize) -> String {
        if self.versioned {
            format!("model '{name}' version {}", self.versions[index].name)
        } else {
            format!("model '{name}'")
        }
    }
}

/// The `version` a directory's model.toml sets, if it parses and sets one.
pub(super) fn declared_version(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join(config::FILE_NAME)).ok()?;
    let table = text.parse::<toml::Table>().ok()?;
    table.get("version")?.as_str().map(str::to_string)
}

/// The loader and the plugin engine it started, once [`Repository::load`] ran.
pub(super) struct Loaded {
    pub(super) loader: Loader,
    pub(super) host: anyhow::Result<PluginHost>,
    /// One permit per load that may run at once (`--concurrent-loads`).
    pub(super) loads: tokio::sync::Semaphore,
}

/// One version to load: its model's name and entry, and which of the entry's versions.
#[derive(Clone)]
pub(super) struct Item {
    pub(super) name: String,
    pub(super) entry: Arc<Entry>,
    pub(super) index: usize,
}

impl Item {
    pub(super) fn version(&self) -> &Version {
        &self.entry.versions[self.index]
    }

    /// Its graph is the one plugins reach by the model's name.
    pub(super) fn is_default(&self) -> bool {
        self.index == self.entry.default
    }
}

/// An item with its config read and the files it lists fetched, and the time that took.
pub(super) struct Configured {
    pub(super) item: Item,
    pub(super) config: anyhow::Result<Arc<ModelConfig>>,
    pub(super) spent: Duration,
}
