//! evict: taking idle versions out of memory to make room for a load under the budget
//! (which ones: `resident`).

use super::*;

impl Repository {
    /// Take `item` out of memory: only when nothing uses it, unless `force` (its requests in
    /// flight finish on it either way). Returns whether it was taken out.
    pub(super) fn evict(&self, item: &Item, reason: &'static str, force: bool) -> bool {
        let version = item.version();
        let mut taken = None;
        let charged = version.charged();
        version.state.send_if_modified(|state| match state {
            State::Ready(model) if force || Arc::strong_count(model) == 1 => {
                taken = Some(std::mem::replace(state, State::Unloaded));
                true
            }
            _ => false,
        });
        let Some(State::Ready(model)) = taken else { return false };
        let started = Instant::now();
        // Its next load reserves what it held.
        version.cost.store(charged, Ordering::Relaxed);
        // Not during a load's measurement: what this frees would count against it. The
        // repository API's unload does not wait for a load (it runs on a serving thread).
        let measuring = match force {
            false => Some(self.measuring.read().expect("measuring lock")),
            true => self.measuring.try_read().ok(),
        };
        if item.is_default() {
            self.graphs.lock().expect("graphs lock").remove(&item.name);
        }
        let idle_secs = self.clock().saturating_sub(version.last_used.load(Ordering::Relaxed)) / 1000;
        self.metrics.evicted(&item.name, &version.name, reason);
        let why = match reason {
            "budget" => "the least recently used idle model, to make room under --model-memory-mib",
            _ => "the repository API's unload",
        };
        drop(model);
        // What its graph and plugin held goes back to the system, not only to malloc's heaps:
        // now, and again shortly, once its threads have let go of its graph's sessions.
        if measuring.is_some() {
            crate::allocator::trim();
        }
        crate::allocator::trim_soon();
        tracing::info!(model = %item.name, version = %version.name, idle_secs,
            freed = %resident::mib(version.cost.load(Ordering::Relaxed)),
            elapsed_ms = started.elapsed().as_millis() as u64, "evicted: {why}");
        true
    }

    /// Evict idle on-demand models, least recently used first, until `need` more bytes fit
    /// the budget beside what is loaded and loading, and reserve them for `loading` (the
    /// version that needs them, not counted otherwise).
    pub(super) fn make_room(&self, loading: &Version, need: u64) -> Result<(), resident::Shortfall> {
        let Some(budget) = self.budget() else {
            loading.cost.store(need, Ordering::Relaxed);
            return Ok(());
        };
        let _one_at_a_time = self.evicting.lock().expect("evicting lock");
        // The measured memory counts in the first plan only: what eviction frees shows in it
        // only once malloc gives it back, and it is not waited for.
        let mut observed = resident::rss().saturating_sub(self.base.load(Ordering::Relaxed));
        loop {
            let (residents, items) = self.residents(Some(loading));
            let victims = resident::plan(&residents, budget, need, observed)?;
            if victims.is_empty() {
                loading.cost.store(need, Ordering::Relaxed);
                return Ok(());
            }
            // One that turned busy since is skipped, and the plan made again.
            let evicted = victims.iter().filter(|&&i| self.evict(&items[i], "budget", false)).count();
            if evicted == 0 {
                let held = residents.iter().map(|r| r.cost).sum::<u64>().max(observed);
                return Err(resident::Shortfall::Busy { need, held, budget });
            }
            if evicted == victims.len() {
                loading.cost.store(need, Ordering::Relaxed);
                return Ok(());
            }
            observed = 0;
        }
    }

    /// The versions in memory or loading (but `except`), as eviction sees them.
    pub(super) fn residents(&self, except: Option<&Version>) -> (Vec<resident::Resident>, Vec<Item>) {
        let models: Vec<(String, Arc<Entry>)> =
            self.models.read().expect("models lock").iter().map(|(n, e)| (n.clone(), e.clone())).collect();
        // Graphs a loaded model's plugin calls (other than its own model's).
        let mut called = HashSet::new();
        for (name, entry) in &models {
            for version in &entry.versions {
                if let State::Ready(model) = &*version.state.borrow() {
                    called.extend(model.config.plugin.graphs.iter().filter(|g| *g != name).cloned());
                }
            }
        }
        let (mut residents, mut items) = (Vec::new(), Vec::new());
        for (name, entry) in &models {
            for (index, version) in entry.versions.iter().enumerate() {
                if except.is_some_and(|e| std::ptr::eq(e, version)) {
                    continue;
                }
                let busy = match &*version.state.borrow() {
                    State::Ready(model) => Arc::strong_count(model) > 1,
                    State::Loading => true,
                    State::Unloaded | State::Unavailable(_) => continue,
                };
                residents.push(resident::Resident {
                    cost: version.charged(),
                    last_used: version.last_used.load(Ordering::Relaxed),
                    pinned: !version.on_demand(),
                    busy: busy || (index == entry.default && called.contains(name)),
                });
                items.push(Item { name: name.clone(), entry: entry.clone(), index });
            }
        }
        (residents, items)
    }

    /// Milliseconds since the repository started: the clock of `last_used`.
    pub(super) fn clock(&self) -> u64 {
        self.started.elapsed().as_millis() as u64 + 1
    }
}
