//! change: models loaded again, unloaded, or changed on disk while the server serves.

use super::*;

impl Repository {
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
    pub(super) fn reload_as(&self, name: &str, now: bool) -> Result<(), Error> {
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
}
