//! bring_up: loading the graphs and plugins of configured versions, measuring what each
//! costs, and setting each version's state.

use super::*;

impl Repository {
    /// Load the graphs and bring up the plugins of `configured`, setting each version's
    /// state and measuring what it costs; returns the graphs other plugins reach by these
    /// models' names (for the caller to register once it keeps them).
    pub(super) fn bring_up(
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
                let config = text::fit(config, &file)?;
                let options = loaded.loader.options_for(&config.graph)?;
                let executions = config.executions();
                // A model loaded on demand makes its other sessions when its runs need them.
                let sessions = match item.version().on_demand() {
                    true => infer::Sessions::AsNeeded,
                    false => infer::Sessions::AtLoad,
                };
                let graph = infer::load_model(name, &file, &config, sessions, &options)
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
                        graphs.insert(name.to_string(), graph.graph.clone());
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
            // At least its file, and a generative model's key/value cache (all its slots).
            let cache = graph.generator.as_ref().map_or(0, |g| g.cache_bytes);
            let floor = file_size(&version.dir.join(&config.graph.file)) + cache;
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
                    self.metrics.loaded(name, &version.name, cause.label(), model.load_duration);
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
    pub(super) fn failed(&self, item: &Item, cause: Cause, reason: String) {
        let version = item.version();
        self.metrics.failed(&item.name, &version.name, cause.label());
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
}
