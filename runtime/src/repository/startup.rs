//! startup: scanning the repository's directory and loading its models at start-up.

use super::*;

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
}
