//! fetch: the first start-up step. A model's `[[fetch]]` files (see [`crate::config::Fetch`]) come
//! from their URLs into a cache, each checked against its pinned sha256, and the model then
//! sees them at their `path` as if they were in its directory.
//!
//! The cache (`<cache-dir>/models/`) is shared by restarts and by servers on one volume:
//!
//! ```text
//! blobs/sha256/<digest>   downloads whose digest matched; nothing else ever gets such a name
//! unpacked/<key>/         an archive's contents, unpacked once per downloaded archive
//! views/<key>/            one per fetch list: hard links at the paths models see
//! ```
//!
//! Everything is written under a temporary name and renamed into place when complete, so an
//! interrupted fetch leaves nothing that a later start trusts. A cached blob is re-hashed
//! before use, so a file changed on disk is fetched again rather than served; unpacked and
//! view directories are keyed by the identity (device, inode, mtime) of the files they were
//! made from, so a fetched-again file never shows through an old link.

use crate::config::{Fetch, ModelConfig, Unpack};
use anyhow::Context;
use futures::StreamExt;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use object_store::{ObjectStore, ObjectStoreExt, ObjectStoreScheme, path::Path as StorePath};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

mod progress;
mod store;
mod unpack;

use progress::Progress;
use store::{classify, permanent};
pub(crate) use store::{is_cloud, open};
use unpack::{build_view, unpack};

/// How many times a download is tried before the model is given up on.
const ATTEMPTS: u32 = 5;
/// The wait before the second attempt; it doubles after each failure, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// A download that receives nothing for this long is abandoned (and retried).
const STALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Leftover temporary files older than this are removed at start-up: an interrupted fetch.
const STALE_AFTER: Duration = Duration::from_secs(3600);

/// Fetches models' files into a cache directory.
pub struct Fetcher {
    root: PathBuf,
    bars: Option<MultiProgress>,
    /// One lock per digest: a file several fetches name is downloaded once.
    locks: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Digests checked (hashed or downloaded) by this process.
    verified: std::sync::Mutex<HashSet<String>>,
}

/// Why a download failed, and whether trying again may help.
enum Failure {
    Transient(anyhow::Error),
    Permanent(anyhow::Error),
}

impl Fetcher {
    /// A fetcher keeping its files under `cache` (created when a model first needs it).
    /// `progress_bar`: draw bars on the terminal, as well as logging progress.
    pub fn new(cache: &Path, progress_bar: bool) -> Self {
        let fetcher = Self {
            root: cache.to_path_buf(),
            bars: progress_bar.then(MultiProgress::new),
            locks: Default::default(),
            verified: Default::default(),
        };
        fetcher.remove_stale();
        fetcher
    }

    /// Fetch what `config` lists and point its paths at the fetched files. `dir` is the
    /// model's directory, for relative URLs and paths.
    pub async fn fetch(&self, model: &str, dir: &Path, config: &mut ModelConfig) -> anyhow::Result<()> {
        if config.fetch.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let sources =
            futures::future::try_join_all(config.fetch.iter().map(|f| self.source(model, dir, f))).await?;
        let (root, fetches) = (self.root.clone(), config.fetch.clone());
        let view = tokio::task::spawn_blocking(move || build_view(&root, &fetches, &sources)).await??;
        resolve(config, &view);
        tracing::info!(model, files = config.fetch.len(), elapsed_ms = started.elapsed().as_millis() as u64,
            view = %view.display(), "fetched");
        Ok(())
    }

    /// One `member` of a pinned archive, itself checked against `sha256` on every call: a
    /// copy changed on disk is unpacked again from the (re-verified) archive, never used.
    /// For files the server runs as code, such as ONNX Runtime's library; `what` names the
    /// fetch in the log.
    pub async fn verified_member(&self, what: &str, fetch: &Fetch, sha256: &str) -> anyhow::Result<PathBuf> {
        let member = fetch.member.as_deref().context("verified_member needs a fetch with a member")?;
        for attempt in 1..=2 {
            let file = self.source(what, &self.root, fetch).await?;
            let path = file.clone();
            let actual = tokio::task::spawn_blocking(move || sha256_file(&path)).await??;
            if actual == sha256 {
                return Ok(file);
            }
            anyhow::ensure!(
                attempt == 1,
                "{} unpacked from {} has sha256 {actual}, not the pinned {sha256}",
                member.display(),
                fetch.url
            );
            // The unpacked tree holding it: the file less the member's path.
            let tree = file.ancestors().nth(member.components().count()).expect("the member is inside");
            tracing::warn!(what, file = %file.display(), "cached file changed on disk; unpacking it again");
            std::fs::remove_dir_all(tree).with_context(|| format!("cannot remove {}", tree.display()))?;
        }
        unreachable!("the second attempt returns")
    }

    /// The fetched file, or the archive's unpacked contents (or its `member`), in the cache.
    async fn source(&self, model: &str, dir: &Path, fetch: &Fetch) -> anyhow::Result<PathBuf> {
        let blob =
            self.blob(model, dir, fetch).await.with_context(|| format!("cannot fetch {}", fetch.url))?;
        let kind = fetch.unpack();
        if kind == Unpack::None {
            return Ok(blob);
        }
        let member = fetch.member.clone().unwrap_or_default();
        let what = format!("{}\n{}", digest_of(fetch), member.display());
        let dest = self.root.join("unpacked").join(key(&what, std::slice::from_ref(&blob))?);
        let tree = dest.clone();
        tokio::task::spawn_blocking(move || unpack(&blob, kind, &member, &dest))
            .await?
            .with_context(|| format!("cannot unpack {}", fetch.url))?;
        let Some(member) = &fetch.member else { return Ok(tree) };
        let source = tree.join(member);
        anyhow::ensure!(
            source.symlink_metadata().is_ok(),
            "{} has no member '{}'",
            fetch.url,
            member.display()
        );
        Ok(source)
    }

    /// The verified download in `blobs/`: from the cache when it is there and intact, else
    /// fetched, with retries on failures that may pass.
    async fn blob(&self, model: &str, dir: &Path, fetch: &Fetch) -> anyhow::Result<PathBuf> {
        let digest = digest_of(fetch);
        let dest = self.root.join("blobs/sha256").join(&digest);
        let lock = self.locks.lock().expect("locks").entry(digest.clone()).or_default().clone();
        let _held = lock.lock().await;
        if self.verified.lock().expect("verified").contains(&digest) {
            return Ok(dest);
        }
        self.fetch_blob(model, dir, fetch, &digest, &dest).await?;
        self.verified.lock().expect("verified").insert(digest);
        Ok(dest)
    }

    async fn fetch_blob(
        &self,
        model: &str,
        dir: &Path,
        fetch: &Fetch,
        digest: &str,
        dest: &Path,
    ) -> anyhow::Result<()> {
        if dest.is_file() {
            let path = dest.to_path_buf();
            let actual = tokio::task::spawn_blocking(move || sha256_file(&path)).await??;
            if actual == digest {
                tracing::info!(model, url = %fetch.url, "in the cache");
                return Ok(());
            }
            tracing::warn!(model, file = %dest.display(), "cached file changed on disk; fetching again");
            std::fs::remove_file(dest).with_context(|| format!("cannot remove {}", dest.display()))?;
        }
        let parent = dest.parent().expect("a blob has a directory");
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create the cache directory {}", parent.display()))?;
        let (store, location) = open(&fetch.url, dir)?;
        let mut backoff = FIRST_BACKOFF;
        for attempt in 1.. {
            match self.download(model, &fetch.url, &*store, &location, dest, digest).await {
                Ok(()) => break,
                Err(Failure::Transient(e)) if attempt < ATTEMPTS => {
                    tracing::warn!(model, url = %fetch.url, attempt, "fetch failed, trying again in {backoff:?}: {e:#}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                Err(Failure::Transient(e)) => {
                    return Err(e.context(format!("gave up after {attempt} attempts")));
                }
                Err(Failure::Permanent(e)) => return Err(e),
            }
        }
        Ok(())
    }

    /// One attempt: stream into a temporary file beside `dest`, hashing on the way, and
    /// rename it to `dest` only when the digest matches.
    async fn download(
        &self,
        model: &str,
        url: &str,
        store: &dyn ObjectStore,
        location: &StorePath,
        dest: &Path,
        digest: &str,
    ) -> Result<(), Failure> {
        let part = temporary(dest);
        let result = async {
            let response = store.get(location).await.map_err(classify)?;
            let total = response.meta.size;
            let mut file = tokio::fs::File::create(&part).await.map_err(permanent(&part))?;
            let mut hasher = Sha256::new();
            let mut progress = Progress::new(model, url, total, self.bars.as_ref());
            let mut stream = response.into_stream();
            loop {
                let chunk = tokio::time::timeout(STALL_TIMEOUT, stream.next()).await.map_err(|_| {
                    Failure::Transient(anyhow::anyhow!("nothing received for {STALL_TIMEOUT:?}"))
                })?;
                let Some(chunk) = chunk else { break };
                let chunk = chunk.map_err(classify)?;
                hasher.update(&chunk);
                file.write_all(&chunk).await.map_err(permanent(&part))?;
                progress.add(chunk.len() as u64);
            }
            if progress.counter.done != total {
                return Err(Failure::Transient(anyhow::anyhow!(
                    "the connection ended after {} of {total} bytes",
                    progress.counter.done
                )));
            }
            file.sync_all().await.map_err(permanent(&part))?;
            let actual = format!("{:x}", hasher.finalize());
            if actual != digest {
                return Err(Failure::Permanent(anyhow::anyhow!(
                    "sha256 mismatch: the config pins {digest}, the URL served {actual} ({total} bytes)"
                )));
            }
            tokio::fs::rename(&part, dest).await.map_err(permanent(dest))?;
            progress.finish();
            Ok(())
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&part).await;
        }
        result
    }

    /// Remove what interrupted fetches left behind (old enough that no live fetch owns it).
    fn remove_stale(&self) {
        for sub in ["blobs/sha256", "unpacked", "views"] {
            let Ok(entries) = std::fs::read_dir(self.root.join(sub)) else { continue };
            for entry in entries.flatten() {
                let path = entry.path();
                let name = entry.file_name();
                let old = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t.elapsed().unwrap_or_default() > STALE_AFTER);
                if name.to_string_lossy().ends_with(".part") && old {
                    tracing::info!(path = %path.display(), "removing what an interrupted fetch left");
                    let _ = std::fs::remove_dir_all(&path).or_else(|_| std::fs::remove_file(&path));
                }
            }
        }
    }
}

/// The fetch's digest, lower-case: the cache key.
fn digest_of(fetch: &Fetch) -> String {
    fetch.sha256.to_ascii_lowercase()
}

/// A cache key for what is made of `sources` as `what` says: it changes when any of the
/// files is replaced.
fn key(what: &str, sources: &[PathBuf]) -> anyhow::Result<String> {
    use std::os::unix::fs::MetadataExt;
    let mut hasher = Sha256::new();
    hasher.update(what);
    for source in sources {
        let meta = source.metadata().with_context(|| format!("cannot read {}", source.display()))?;
        hasher.update(format!("\n{}:{}:{}:{}", meta.dev(), meta.ino(), meta.mtime(), meta.mtime_nsec()));
    }
    Ok(format!("{:x}", hasher.finalize())[..16].to_string())
}

/// A unique temporary name beside `path`, ending in `.part`.
fn temporary(path: &Path) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    path.with_file_name(format!(".{name}.{}.{n}.part", std::process::id()))
}

/// The sha256 of a file, in hex.
fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let mut file = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(format!("{:x}", hasher.finalize()));
        }
        hasher.update(&buf[..n]);
    }
}

/// Point the config's paths at the view where it provides them.
fn resolve(config: &mut ModelConfig, view: &Path) {
    let pick = |path: &mut PathBuf| {
        let fetched = view.join(&*path);
        if fetched.exists() {
            *path = fetched;
        }
    };
    pick(&mut config.graph.file);
    config.plugin.file.iter_mut().for_each(pick);
    config.plugin.data.iter_mut().for_each(pick);
    config.warmup.iter_mut().filter_map(|w| w.file.as_mut()).for_each(pick);
}

#[cfg(test)]
mod tests {
    #[test]
    fn cloud_urls_are_told_from_paths_and_http() {
        for cloud in [
            "s3://b/k",
            "s3a://b/k",
            "gs://b/k",
            "az://c/k",
            "azure://c/k",
            "abfs://c@a.dfs.core.windows.net/k",
            "abfss://c@a.dfs.core.windows.net/k",
        ] {
            assert!(super::is_cloud(cloud), "{cloud}");
        }
        for other in ["out.jsonl", "/data/out/", "./in", "https://example.com/x", "file:///tmp/x"] {
            assert!(!super::is_cloud(other), "{other}");
        }
    }

    use super::*;

    fn fetch(url: &str, member: Option<&str>) -> Fetch {
        Fetch {
            url: url.into(),
            sha256: "0".repeat(64),
            path: None,
            unpack: None,
            member: member.map(PathBuf::from),
        }
    }

    #[test]
    fn archives_are_known_by_their_ending() {
        assert_eq!(fetch("https://h/m.tar.gz?x=1", None).unpack(), Unpack::TarGz);
        assert_eq!(fetch("s3://b/m.TGZ", None).unpack(), Unpack::TarGz);
        assert_eq!(fetch("m.zip", None).unpack(), Unpack::Zip);
        assert_eq!(fetch("https://h/magika-1.0.3-py3-none-any.whl", None).unpack(), Unpack::Zip);
        assert_eq!(fetch("https://h/m.onnx", None).unpack(), Unpack::None);
        assert_eq!(fetch("https://h/dir/m.onnx?sig=abc", None).path(), PathBuf::from("m.onnx"));
        assert_eq!(fetch("https://h/m.tar.gz", None).path(), PathBuf::new());
    }

    #[test]
    fn unpacking_refuses_paths_outside_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("evil.tar.gz");
        {
            let gz =
                flate2::write::GzEncoder::new(std::fs::File::create(&archive).unwrap(), Default::default());
            let mut tar = tar::Builder::new(gz);
            let mut header = tar::Header::new_gnu();
            let data = b"owned";
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            // Written raw: tar::Builder itself refuses `..` in set_path.
            header.as_gnu_mut().unwrap().name[..13].copy_from_slice(b"../escaped.tx");
            header.set_cksum();
            tar.append(&header, &data[..]).unwrap();
            tar.into_inner().unwrap().finish().unwrap();
        }
        let dest = dir.path().join("out/unpacked");
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        // tar skips such entries; the rest of the archive unpacks.
        unpack(&archive, Unpack::TarGz, Path::new(""), &dest).unwrap();
        assert!(!dir.path().join("out/escaped.tx").exists(), "an entry escaped the directory");
        assert_eq!(std::fs::read_dir(&dest).unwrap().count(), 0);
        assert_eq!(std::fs::read_dir(dir.path().join("out")).unwrap().count(), 1, "no temporary left");
    }

    #[test]
    fn views_place_files_and_directories_and_refuse_overlaps() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("tree/sub")).unwrap();
        std::fs::write(src.join("model.onnx"), b"graph").unwrap();
        std::fs::write(src.join("tree/sub/vocab.txt"), b"words").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", src.join("tree/passwd")).unwrap();
        let mut graph = fetch("https://h/model.onnx", None);
        graph.sha256 = "1".repeat(64);
        let mut data = fetch("https://h/data.tar.gz", Some("tree"));
        data.path = Some("data".into());
        let root = dir.path().join("cache");
        let view =
            build_view(&root, &[graph.clone(), data], &[src.join("model.onnx"), src.join("tree")]).unwrap();
        assert_eq!(std::fs::read(view.join("model.onnx")).unwrap(), b"graph");
        assert_eq!(std::fs::read(view.join("data/sub/vocab.txt")).unwrap(), b"words");
        assert!(!view.join("data/passwd").exists(), "symbolic links are left out");

        let mut twice = graph.clone();
        twice.sha256 = "2".repeat(64);
        let err = build_view(&root, &[graph, twice], &[src.join("model.onnx"), src.join("model.onnx")])
            .unwrap_err();
        assert!(format!("{err:#}").contains("two fetches provide"), "{err:#}");
    }

    #[test]
    fn config_paths_default_from_the_url() {
        let config = r#"
[[fetch]]
url = "https://example.com/a/model.onnx"
sha256 = "fe2d2eb49c5f88a9e0a6c048e15d6ffdf86235519c2afc535044de433169ec8c"
[[fetch]]
url = "s3://bucket/data.tar.gz"
sha256 = "fe2d2eb49c5f88a9e0a6c048e15d6ffdf86235519c2afc535044de433169ec8c"
path = "data"
[graph]
file = "model.onnx"
[plugin]
file = "p.wasm"
[[inputs]]
name = "x"
datatype = "FP32"
shape = [-1]
[[outputs]]
name = "y"
datatype = "FP32"
shape = [-1]
"#;
        let config: ModelConfig = toml::from_str(config).unwrap();
        let paths: Vec<_> = config.fetch.iter().map(Fetch::path).collect();
        assert_eq!(paths, [PathBuf::from("model.onnx"), PathBuf::from("data")]);
    }
}
