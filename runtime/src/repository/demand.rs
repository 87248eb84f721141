//! demand: on-demand models, loaded by the request that finds them out of memory.
//!
//! A request for a version that is `UNLOADED` (or whose failed load's back-off has passed)
//! starts its load; every request for it, that one included, waits for the same load, up
//! to `--load-wait-secs`, then gets 503 with `Retry-After` (the load goes on). Loads run on
//! blocking threads, never on the threads that serve requests. A load first reads its
//! config and fetches (several at once), loads the on-demand models whose graphs its plugin
//! calls (and keeps them from eviction while it runs), makes room under the budget (see
//! `resident`), then loads graph and plugin and warms them up as at start-up (unless these
//! files and config passed the warm-up before and their cost is known): up to
//! `--concurrent-loads` at once, but a model's first five loads alone, so that the memory
//! each is measured to add is its own (later loads of the same files are charged their
//! median).

use super::{Cause, Entry, Item, Model, Repository, State, Version, resident};
use crate::config::ModelConfig;
use crate::error::Error;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

impl Repository {
    /// The model called `name`, at `version` (default: its default version), loaded first if
    /// it loads on demand and is not in memory, with how long this request waited for that
    /// load; counts as its use for eviction.
    pub async fn acquire(
        self: &Arc<Self>,
        name: &str,
        version: Option<&str>,
    ) -> Result<(Arc<Model>, Option<Duration>), Error> {
        let entry = self.entry(name)?;
        let index = entry.index(name, version)?;
        let slot = &entry.versions[index];
        // Observed however the wait ends: the model ready, the load failed, the wait's limit,
        // or the client gone (this future dropped).
        let mut waiting: Option<Waiting> = None;
        loop {
            let retry = retry_in(slot);
            match slot.state() {
                State::Ready(model) => {
                    slot.last_used.store(self.clock(), Ordering::Relaxed);
                    return Ok((model, waiting.map(|w| w.since.elapsed())));
                }
                State::Loading if slot.on_demand() => {}
                State::Unloaded => {
                    self.start_load(&Item { name: name.to_string(), entry: entry.clone(), index })
                }
                State::Unavailable(_) if retry == Some(Duration::ZERO) => {
                    self.start_load(&Item { name: name.to_string(), entry: entry.clone(), index })
                }
                State::Unavailable(reason) if let Some(wait) = retry => {
                    let after = wait.as_secs().max(1);
                    // A request that waited for the load that failed is told only why.
                    let again = if waiting.is_none() {
                        format!("; it is tried again in {after} s")
                    } else {
                        String::new()
                    };
                    let message = format!("{} failed to load: {reason}{again}", entry.label(name, index));
                    return Err(Error::NotLoaded { message, retry_after_secs: after });
                }
                // Eager models, and on-demand ones whose config failed its check: as they are.
                _ => return self.get(name, version).map(|model| (model, None)),
            }
            let since =
                waiting.get_or_insert_with(|| Waiting { since: Instant::now(), repository: self }).since;
            let limit = self.wait();
            if !slot.settled(limit.saturating_sub(since.elapsed())).await {
                return Err(Error::NotLoaded {
                    message: format!(
                        "{} is still loading after {} s (--load-wait-secs); try again shortly",
                        entry.label(name, index),
                        limit.as_secs()
                    ),
                    retry_after_secs: 1,
                });
            }
        }
    }

    /// Whether `name` at `version` can serve a request now or after a load: a model's
    /// readiness. Loads nothing.
    pub fn servable(&self, name: &str, version: Option<&str>) -> Result<(), Error> {
        let entry = self.entry(name)?;
        let index = entry.index(name, version)?;
        let slot = &entry.versions[index];
        match slot.state() {
            State::Ready(_) => Ok(()),
            state if slot.loadable(&state, self.up.load(Ordering::Acquire)) => Ok(()),
            State::Unavailable(_) if retry_in(slot) == Some(Duration::ZERO) => Ok(()),
            _ => self.get(name, version).map(drop),
        }
    }

    /// What `name` at `version` declares (its config: inputs, outputs, plugin limits), without
    /// loading it: the loaded model's config, or an on-demand version's as last read while it
    /// is out of memory or loading. Not a use for eviction: a client that reads metadata (a
    /// dashboard, a client library before its first request) loads and evicts nothing.
    pub fn declared(&self, name: &str, version: Option<&str>) -> Result<Arc<ModelConfig>, Error> {
        let entry = self.entry(name)?;
        let slot = &entry.versions[entry.index(name, version)?];
        let declared = match slot.state() {
            State::Ready(model) => return Ok(model.config.clone()),
            State::Unloaded | State::Loading if slot.on_demand() => {
                slot.declared.lock().expect("declared lock").clone()
            }
            _ => None,
        };
        declared.map_or_else(|| self.get(name, version).map(|model| model.config.clone()), Ok)
    }

    /// Start loading `item` on a blocking thread, unless another request did first.
    fn start_load(self: &Arc<Self>, item: &Item) {
        if !claim(item.version()) {
            return;
        }
        let (repository, item) = (self.clone(), item.clone());
        tokio::spawn(async move {
            let loading = item.clone();
            let done =
                tokio::task::spawn_blocking(move || repository.load_now(&loading, Cause::Request)).await;
            if let Err(e) = done {
                let message = crate::error::panic_message(&*e.into_panic()).to_string();
                item.version().set(&item.name, State::Unavailable(format!("its load panicked: {message}")));
            }
        });
    }

    /// Load `item`, whose state this caller set to `Loading`: the models its plugin calls,
    /// room under the budget, then graph, plugin and warm-up. Sets its state either way.
    fn load_now(&self, item: &Item, cause: Cause) {
        let Some(loaded) = self.loaded.get() else { return };
        let settings = &loaded.loader.settings;
        let version = item.version();
        let deadline = Instant::now() + settings.wait;
        // Room can take until models in use go idle: it is waited for half as long as
        // requests wait, so that they learn why if it does not come.
        let room_by = Instant::now() + settings.wait / 2;
        let mut configured = super::configs(vec![item.clone()], &loaded.loader.fetcher, settings, true);
        let configured = configured.pop().expect("one config for one item");
        let config = match &configured.config {
            Ok(config) => config,
            Err(e) => return self.failed(item, cause, format!("{e:#}")),
        };
        // The models whose graphs its plugin calls, held (not evictable) until it is loaded.
        let mut held = Vec::new();
        for callee in config.plugin.graphs.iter().filter(|g| **g != item.name) {
            match self.load_callee(callee, deadline) {
                Ok(model) => held.push(model),
                Err(e) => {
                    return self.failed(
                        item,
                        cause,
                        format!("model '{callee}', whose graph its plugin calls: {e}"),
                    );
                }
            }
        }
        // What it cost when last loaded, else its estimate, is reserved while it loads; until
        // there is room for it, it holds nothing.
        let need = match (config.load.memory_mib, version.cost.swap(0, Ordering::Relaxed)) {
            (Some(mib), _) => mib << 20,
            (None, 0) => self.estimate(version, config),
            (None, last) => last,
        };
        loop {
            match self.make_room(version, need) {
                Ok(()) => break,
                Err(resident::Shortfall::Busy { .. }) if Instant::now() < room_by => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(short @ resident::Shortfall::Busy { .. }) => {
                    // Not the model's fault: no back-off and no failure counted; the requests
                    // waiting are told why, and a request a second later tries again.
                    tracing::warn!(model = %item.name, version = %version.name, "not loaded: {short}");
                    version.cost.store(need, Ordering::Relaxed);
                    let mut retry = version.retry.lock().expect("retry lock");
                    *retry = Some((Instant::now() + Duration::from_secs(1), retry.map_or(0, |(_, n)| n)));
                    drop(retry);
                    return version.set(&item.name, State::Unavailable(format!("no room now: {short}")));
                }
                Err(short) => return self.failed(item, cause, format!("cannot be loaded: {short}")),
            }
        }
        let graphs = self.bring_up(loaded, vec![configured], cause);
        self.graphs.lock().expect("graphs lock").extend(graphs);
        drop(held);
        // What it measured may be more than it reserved: make room for the difference.
        if let Err(short) = self.make_room(version, version.cost.load(Ordering::Relaxed)) {
            tracing::warn!(model = %item.name, version = %version.name,
                "loaded over the model memory budget until models in use go idle: {short}");
        }
    }

    /// `name`'s default version, loaded now if it is on demand and not in memory (waiting
    /// for a load already running), for a model whose plugin calls its graph.
    fn load_callee(&self, name: &str, deadline: Instant) -> Result<Arc<Model>, String> {
        let entry: Arc<Entry> = self.entry(name).map_err(|e| e.to_string())?;
        let index = entry.default;
        let slot: &Version = entry.versions.get(index).ok_or("it serves no version")?;
        loop {
            if claim(slot) {
                self.load_now(
                    &Item { name: name.to_string(), entry: entry.clone(), index },
                    Cause::Dependency,
                );
            }
            match slot.state() {
                State::Ready(model) => return Ok(model),
                State::Unavailable(reason) => return Err(reason),
                State::Unloaded => continue,
                State::Loading => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if !tokio::runtime::Handle::current().block_on(slot.settled(left)) {
                        return Err("still loading".into());
                    }
                }
            }
        }
    }

    /// How long a request waits for a load.
    fn wait(&self) -> Duration {
        self.loaded.get().map_or(super::LoadSettings::default().wait, |l| l.loader.settings.wait)
    }
}

/// A request's wait for a load, observed in `wasmserve_model_load_wait_seconds` when it ends.
struct Waiting<'a> {
    since: Instant,
    repository: &'a Repository,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.repository.metrics.waited(self.since.elapsed());
    }
}

/// Take the right to load `version`: it is not in memory, and not failed within its
/// back-off. Its state is then `Loading`, and the caller must load it.
fn claim(version: &Version) -> bool {
    let due = retry_in(version) == Some(Duration::ZERO);
    version.state.send_if_modified(|state| {
        let claimable = match state {
            State::Unloaded => true,
            State::Unavailable(_) => due,
            State::Loading | State::Ready(_) => false,
        };
        if claimable {
            *state = State::Loading;
        }
        claimable
    })
}

/// For an on-demand version whose load failed: how long until it may be tried again (zero:
/// now). None: it is not on demand, or it failed its start-up check (no retry).
fn retry_in(version: &Version) -> Option<Duration> {
    if !version.on_demand() {
        return None;
    }
    let retry = *version.retry.lock().expect("retry lock");
    retry.map(|(at, _)| at.saturating_duration_since(Instant::now()))
}
