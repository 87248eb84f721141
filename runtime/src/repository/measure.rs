//! measure: what a load costs, estimated before it runs and measured while it runs alone.

use super::*;

/// The first wait before an on-demand model that failed to load is tried again; it doubles
/// with each failure in a row, up to [`RETRY_MOST`].
pub(super) const RETRY_FIRST: Duration = Duration::from_secs(5);
pub(super) const RETRY_MOST: Duration = Duration::from_secs(300);

/// A file's size, 0 if it cannot be read.
pub(super) fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

impl Repository {
    /// What a model not loaded before is expected to cost, reserved while its first load
    /// runs (then replaced by what was measured): its declared `memory_mib`, else what a load
    /// of the same files and config measured, else twice its graph file and four times its
    /// plugin (the sizes backends and compiled plugins grow to), or the mean of what the
    /// models in memory were measured to cost, if more.
    pub(super) fn estimate(&self, version: &Version, config: &ModelConfig) -> u64 {
        let dir = &version.dir;
        if let Some(mib) = config.load.memory_mib {
            return mib << 20;
        }
        if let Some(heap) = self
            .measured
            .lock()
            .expect("measured lock")
            .get(&content_key(version, config))
            .and_then(|m| median(m.iter().map(|m| m.heap)))
        {
            return heap;
        }
        let plugin = match &config.plugin.file {
            Some(file) => file_size(&dir.join(file)),
            None => crate::plugin::BUILTIN_TEXT.len() as u64,
        };
        let files = 2 * file_size(&dir.join(&config.graph.file)) + 4 * plugin;
        let loaded: Vec<u64> =
            self.statuses().iter().map(|s| s.resident_bytes).filter(|&bytes| bytes > 0).collect();
        let mean = loaded.iter().sum::<u64>() / (loaded.len() as u64).max(1);
        files.max(mean)
    }
}

/// How many times loads of the same files and config are measured alone before later ones
/// are charged the median and run beside others: one measurement can be off by what
/// requests served meanwhile allocated or freed, and a first load also pays the server's own
/// one-time costs. The early loads of a server under traffic are the likeliest to be off
/// (its other models' first requests grow their backends' arenas meanwhile): with three, two
/// of them often were (on 200 magika copies: 5.1, 6.4 and 0.6 MiB, where runs of five read
/// mostly 0.6 and 3.5), and the median charged every copy 5.1 MiB; five outvote two.
pub(super) const SAMPLES: usize = 5;

/// What one load measured alone added to malloc's heaps (bytes): in all, and its graph's
/// part (at least its file's size each).
#[derive(Debug, Clone, Copy)]
pub(super) struct Measured {
    pub(super) heap: u64,
    pub(super) graph: u64,
}

/// The lower median; none of none.
pub(super) fn median(samples: impl Iterator<Item = u64>) -> Option<u64> {
    let mut sorted: Vec<u64> = samples.collect();
    sorted.sort_unstable();
    sorted.get(sorted.len().saturating_sub(1) / 2).copied()
}

/// What a version's load is measured by: its config, which files its graph, plugin and
/// plugin data are (their real paths, sizes and modification times), and whether it loads
/// on demand (one ONNX Runtime session at load) or not (all of them). Versions that load the
/// same files with the same config the same way cost the same.
pub(super) fn content_key(version: &Version, config: &ModelConfig) -> u64 {
    use std::hash::{Hash, Hasher};
    let (dir, mut hasher) = (&version.dir, std::collections::hash_map::DefaultHasher::new());
    (format!("{config:?}"), version.on_demand()).hash(&mut hasher);
    let files = [Some(&config.graph.file), config.plugin.file.as_ref(), config.plugin.data.as_ref()];
    for file in files.into_iter().flatten().map(|f| dir.join(f)) {
        let real = std::fs::canonicalize(&file).unwrap_or(file);
        let meta = std::fs::metadata(&real).ok();
        (real, meta.as_ref().map(|m| m.len()), meta.and_then(|m| m.modified().ok())).hash(&mut hasher);
    }
    hasher.finish()
}

/// A digest of every file's path, size and modification time under `dir`.
pub(super) fn fingerprint(dir: &Path) -> u64 {
    use std::hash::{Hash, Hasher};
    fn walk(dir: &Path, depth: usize, files: &mut Vec<(PathBuf, u64, Option<std::time::SystemTime>)>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for entry in entries.filter_map(|e| e.ok()) {
            let path = entry.path();
            match std::fs::metadata(&path) {
                Ok(m) if m.is_dir() && depth < 8 => walk(&path, depth + 1, files),
                Ok(m) => files.push((path, m.len(), m.modified().ok())),
                Err(_) => {}
            }
        }
    }
    let mut files = Vec::new();
    walk(dir, 0, &mut files);
    files.sort();
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    files.hash(&mut hasher);
    hasher.finish()
}
