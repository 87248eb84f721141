//! query: what the repository answers about its models: states, versions, routes, the
//! loaded model a name and version resolve to.

use super::*;

impl Repository {
    /// Keep only the models named (before [`Repository::load`]).
    pub fn keep(&mut self, names: &[&str]) {
        self.models.get_mut().expect("models lock").retain(|name, _| names.contains(&name.as_str()));
    }

    /// True when the repository holds no model.
    pub fn is_empty(&self) -> bool {
        self.models.read().expect("models lock").is_empty()
    }

    /// Every model version's state and residency; a model whose directory cannot be served
    /// at all (or that was unloaded) comes once, without a version.
    pub fn statuses(&self) -> Vec<Status> {
        let models = self.models.read().expect("models lock");
        let now = self.clock();
        let mut statuses = Vec::new();
        for (name, model) in models.iter() {
            if let Some(problem) = &model.problem {
                statuses.push(Status {
                    name: name.clone(),
                    version: None,
                    state: State::Unavailable(problem.clone()),
                    on_demand: false,
                    resident_bytes: 0,
                    idle: None,
                });
            }
            for v in &model.versions {
                let state = v.state();
                let used = v.last_used.load(Ordering::Relaxed);
                statuses.push(Status {
                    name: name.clone(),
                    version: Some(v.name.clone()),
                    // What it is charged now: its plugin's pool and its graph's sessions
                    // grow after the load.
                    resident_bytes: match &state {
                        State::Ready(model) => v.charged_as(model),
                        _ => 0,
                    },
                    state,
                    on_demand: v.on_demand(),
                    idle: (used > 0).then(|| Duration::from_millis(now.saturating_sub(used))),
                });
            }
        }
        statuses
    }

    /// The model memory budget, in bytes, if there is one.
    pub fn budget(&self) -> Option<u64> {
        self.loaded.get().and_then(|l| l.loader.settings.budget)
    }

    /// True when every model version counts as ready (`all`; true for none), or at least
    /// one does. On-demand versions count unless their config failed its check, once their
    /// files are fetched.
    pub fn ready(&self, all: bool) -> bool {
        let up = self.up.load(Ordering::Acquire);
        let models = self.models.read().expect("models lock");
        let mut ready = models.values().flat_map(|m| {
            let broken = m.problem.is_some().then_some(false);
            broken.into_iter().chain(m.versions.iter().map(|v| v.counts_ready(up)))
        });
        if all { ready.all(|r| r) } else { ready.any(|r| r) }
    }

    /// The directory of `name` at `version` (default: its default version), if it is served.
    pub fn dir(&self, name: &str, version: Option<&str>) -> Result<PathBuf, Error> {
        let model = self.entry(name)?;
        Ok(model.versions[model.index(name, version)?].dir.clone())
    }

    /// The versions of `name` served, ascending.
    pub fn versions(&self, name: &str) -> Vec<String> {
        self.versions_named(name, None).unwrap_or_default()
    }

    /// The versions of `name` a request for `version` (`None`: all of them) covers, whatever
    /// their state; `NotFound` for a model or version not served.
    pub fn versions_named(&self, name: &str, version: Option<&str>) -> Result<Vec<String>, Error> {
        let entry = self.entry(name)?;
        match version {
            None => Ok(entry.names().iter().map(|n| n.to_string()).collect()),
            Some(v) if entry.names().contains(&v) => Ok(vec![v.to_string()]),
            Some(v) => Err(entry.no_version(name, v)),
        }
    }

    /// The model called `name`, at `version` (default: its default version), if it is in
    /// memory now; loads nothing (see [`Repository::acquire`]).
    pub fn get(&self, name: &str, version: Option<&str>) -> Result<Arc<Model>, Error> {
        let entry = self.entry(name)?;
        let index = entry.index(name, version)?;
        let at = entry.label(name, index);
        match entry.versions[index].state() {
            State::Ready(model) => Ok(model),
            State::Loading => Err(Error::Unavailable(format!("{at} is loading"))),
            State::Unloaded => Err(Error::Unavailable(format!("{at} is not loaded (it loads on demand)"))),
            State::Unavailable(reason) => Err(Error::Unavailable(format!("{at} is unavailable: {reason}"))),
        }
    }

    /// The route called `name`, if there is one.
    pub fn route(&self, name: &str) -> Option<Arc<RouteConfig>> {
        self.routes.read().expect("routes lock").get(name).cloned()
    }

    pub(super) fn entry(&self, name: &str) -> Result<Arc<Entry>, Error> {
        let models = self.models.read().expect("models lock");
        models.get(name).cloned().ok_or_else(|| Error::NotFound(format!("unknown model '{name}'")))
    }
}
