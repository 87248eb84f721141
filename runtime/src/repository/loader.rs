//! loader: what (re)loading a model needs (backend settings, the fetcher, the plugin
//! cache), the ONNX Runtime library a graph loads with, and bringing one version up: its
//! config and files, its plugin, its warm-ups.

use super::*;

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
    pub(super) fn options_for(&self, graph: &config::GraphConfig) -> anyhow::Result<BackendOptions> {
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

/// Each item's config, with the files it lists fetched (several at once) unless the item
/// is on demand and `fetch_on_demand` is off, and the time that took. Each version's policy
/// is set from its config here.
pub(super) fn configs(
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
pub(super) fn bring_up(
    host: &PluginHost,
    name: &str,
    dir: &Path,
    config: Arc<ModelConfig>,
    infer::Loaded { graph, sessions_made_later, generator }: infer::Loaded,
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
    let model = Model {
        name: name.to_string(),
        runner: Arc::new(schedule::Runner::start(name, &config, graph, generator, plugin)?),
        config,
        load_duration: Default::default(),
        sessions_made_later,
    };
    if warm && model.runner.generator().is_some() {
        let started = Instant::now();
        schedule::warm_up_generation(&model.runner).context("the warm-up generation failed")?;
        tracing::info!(model = %name, elapsed_ms = started.elapsed().as_millis() as u64, "warm-up generation done");
    }
    for (i, warmup) in model.config.warmup.iter().enumerate().filter(|_| warm) {
        let started = Instant::now();
        warm_up(&model, dir, warmup).with_context(|| format!("warm-up {} failed", i + 1))?;
        tracing::info!(model = %name, warmup = i + 1, count = warmup.count,
            elapsed_ms = started.elapsed().as_millis() as u64, "warm-up done");
    }
    Ok(model)
}

/// Send one configured warm-up request through the whole pipeline, `count` times.
pub(super) fn warm_up(model: &Model, dir: &Path, warmup: &Warmup) -> anyhow::Result<()> {
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
        schedule::run_blocking(&model.runner, request.inputs.clone(), &request.params, &Default::default())?;
    }
    Ok(())
}
