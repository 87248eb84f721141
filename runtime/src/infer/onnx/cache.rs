//! cache: the model file read only when needed, and the graph ONNX Runtime optimised for
//! this machine, kept across restarts.

use super::*;

/// A model file, read when its bytes are first needed: a session from the cached optimised
/// graph needs none of them, only their digest, which this process remembers for each path
/// it has read with the file's size and modification time then (what the fetch cache and hot
/// reload change with its contents). A reload of an evicted model so reads neither the model
/// nor hashes it again.
pub(super) struct ModelFile<'a> {
    pub(super) path: &'a Path,
    /// Its size and modification time.
    pub(super) stamp: Stamp,
    pub(super) bytes: std::cell::OnceCell<Vec<u8>>,
}

type Stamp = (u64, Option<std::time::SystemTime>);

impl<'a> ModelFile<'a> {
    pub(super) fn new(path: &'a Path) -> anyhow::Result<Self> {
        let meta = std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
        Ok(Self { path, stamp: (meta.len(), meta.modified().ok()), bytes: Default::default() })
    }

    pub(super) fn bytes(&self) -> anyhow::Result<&[u8]> {
        if let Some(bytes) = self.bytes.get() {
            return Ok(bytes);
        }
        let bytes =
            std::fs::read(self.path).with_context(|| format!("cannot read {}", self.path.display()))?;
        Ok(self.bytes.get_or_init(|| bytes))
    }

    pub(super) fn into_bytes(self) -> anyhow::Result<Vec<u8>> {
        self.bytes()?;
        Ok(self.bytes.into_inner().unwrap_or_default())
    }

    /// The sha256 of its bytes.
    pub(super) fn digest(&self) -> anyhow::Result<[u8; 32]> {
        use sha2::{Digest, Sha256};
        type Digests = std::collections::HashMap<PathBuf, (Stamp, [u8; 32])>;
        static DIGESTS: OnceLock<Mutex<Digests>> = OnceLock::new();
        let digests = DIGESTS.get_or_init(Default::default);
        match digests.lock().expect("digests lock").get(self.path) {
            Some((stamp, digest)) if *stamp == self.stamp => return Ok(*digest),
            _ => {}
        }
        let digest: [u8; 32] = Sha256::digest(self.bytes()?).into();
        digests.lock().expect("digests lock").insert(self.path.to_path_buf(), (self.stamp, digest));
        Ok(digest)
    }
}

/// Where the graph ONNX Runtime optimises out of `model` for this machine is kept in `dir`.
/// The name digests everything the result depends on: the model's bytes, the library (path,
/// size and modification time: another release optimises differently), the optimisation
/// level and the CPU's feature flags (level 3 lays tensors out for the instructions it finds,
/// and ONNX Runtime warns that such a graph runs only where it was made). All but the model
/// are read once per process: it loads one library, on one machine.
pub(super) fn optimised_path(
    dir: &Path,
    model: &ModelFile,
    library: Option<&Path>,
) -> anyhow::Result<PathBuf> {
    use sha2::{Digest, Sha256};
    static MACHINE: OnceLock<[u8; 32]> = OnceLock::new();
    let machine = MACHINE.get_or_init(|| {
        let mut key = Sha256::new();
        if let Some(library) = library {
            key.update(library.as_os_str().as_encoded_bytes());
            if let Ok(meta) = std::fs::metadata(library) {
                key.update(meta.len().to_le_bytes());
                let modified =
                    meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
                key.update(modified.unwrap_or_default().as_nanos().to_le_bytes());
            }
        }
        key.update(format!("level3 {}", std::env::consts::ARCH));
        // x86's "flags" and Arm's "Features": the same on every core, so the first line will do.
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        key.update(
            cpuinfo.lines().find(|l| l.starts_with("flags") || l.starts_with("Features")).unwrap_or(""),
        );
        key.finalize().into()
    });
    let digest = Sha256::new().chain_update(model.digest()?).chain_update(machine).finalize();
    let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
    Ok(dir.join(format!("{hex}.onnx")))
}

/// A CPU session from the optimised graph at `path` when an earlier start saved one (one
/// that does not load is removed), else optimised from `model` and saved there: under a name
/// of its own first, then renamed, so no reader sees half a file. A cache that cannot be
/// written costs the saving, never the model.
pub(super) fn cached_session(
    name: &str,
    model: &ModelFile,
    config: &GraphConfig,
    threads: usize,
    path: &Path,
    first: bool,
) -> anyhow::Result<Session> {
    if path.is_file() {
        match session(name, Source::Optimised(path), config, threads, false) {
            Ok(session) => {
                if first {
                    tracing::info!(model = name, path = %path.display(), "optimised graph loaded from the cache");
                }
                return Ok(session);
            }
            Err(e) => {
                tracing::warn!(model = name, path = %path.display(),
                    "the cached optimised graph does not load ({e:#}); optimising the model again");
                let _ = std::fs::remove_file(path);
            }
        }
    }
    let not_kept = |e: &dyn std::fmt::Display| {
        tracing::warn!(
            model = name,
            "cannot keep the optimised graph in {} ({e:#}); the next start optimises again",
            path.display()
        );
    };
    if let Err(e) = path.parent().map_or(Ok(()), std::fs::create_dir_all) {
        not_kept(&e);
        return session(name, Source::Model(model.bytes()?, None), config, threads, false);
    }
    static SAVES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = SAVES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let partial = path.with_extension(format!("{}.{n}.part", std::process::id()));
    match session(name, Source::Model(model.bytes()?, Some(&partial)), config, threads, false) {
        Ok(session) => {
            // Optimised either way: a graph that cannot be kept costs the next start, not this one.
            match std::fs::rename(&partial, path) {
                Ok(()) => {
                    tracing::info!(model = name, path = %path.display(), "optimised graph saved to the cache")
                }
                Err(e) => not_kept(&e),
            }
            let _ = std::fs::remove_file(&partial);
            Ok(session)
        }
        // ONNX Runtime could not write the file, or the model does not load: without the
        // saving, a model that loads serves and one that does not says why.
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            let session = session(name, Source::Model(model.bytes()?, None), config, threads, false)?;
            not_kept(&format!("{e:#}"));
            Ok(session)
        }
    }
}
