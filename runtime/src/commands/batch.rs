//! batch: `wasmserve batch`, offline inference over files with one model (and the models
//! whose graphs its plugin uses); the work itself is [`crate::front::offline`].
//!
//! Input and output may be in object storage (`s3://`, `gs://`, `az://`, the stores and
//! credentials `[[fetch]]` uses): the shard's input objects are downloaded to a scratch
//! directory (the others' stand there as empty files, never read), and the output is
//! written there and uploaded whole every `--checkpoint-secs` and at the end, so a run
//! started again continues after the last upload.

use super::Caches;
use crate::front::offline::Shard;
use crate::infer::BackendOptions;
use crate::repository::{LoadSettings, Repository};
use anyhow::Context;
use futures::{StreamExt, TryStreamExt};
use object_store::{ObjectStore, ObjectStoreExt, path::Path as StorePath};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// `wasmserve batch`'s settings.
#[derive(clap::Args)]
pub struct BatchArgs {
    /// Directory holding one directory per model, each with a model.toml.
    #[arg(long, short = 'r', value_name = "DIR", env = "WASMSERVE_REPOSITORY")]
    repository: PathBuf,

    /// The model to run: its directory's name in the repository. Only it, and the models
    /// whose graphs its plugin may use, are loaded.
    #[arg(long, short = 'm', value_name = "NAME")]
    model: String,

    /// The model's version to run; default: its default version.
    #[arg(long, value_name = "VERSION")]
    version: Option<String>,

    /// A JSON Lines file of inference requests, or a directory of input files; or the same
    /// in object storage: an object (s3://bucket/requests.jsonl) or a prefix whose objects
    /// are the input files (s3://bucket/inputs/).
    #[arg(long, short = 'i', value_name = "PATH|URL")]
    input: String,

    /// The JSON Lines file to write, or to continue where an earlier run stopped; local or
    /// in object storage. With --shard, a directory or a prefix ending in `/`, where the
    /// shard writes `part-I-of-N.jsonl`.
    #[arg(long, short = 'o', value_name = "PATH|URL")]
    output: String,

    /// Run one part of the input: `I/N` takes the records whose number is I modulo N (0 <= I
    /// < N), so N runs (a Kubernetes Indexed Job's pods) answer every record exactly once
    /// between them; `N` alone takes I from JOB_COMPLETION_INDEX.
    #[arg(long, value_name = "I/N")]
    shard: Option<Shard>,

    /// With the output in object storage: upload it this often while the run goes on
    /// (what a restarted run continues from).
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    checkpoint_secs: u64,

    /// Records in flight at once; default: the model's max_in_flight (with [batching],
    /// enough to fill its batches).
    #[arg(long, value_name = "N")]
    concurrency: Option<usize>,

    /// ONNX Runtime's shared library, for models with backend = "onnx"; default: provisioned
    /// from the pinned onnxruntime wheel (as for `serve`).
    #[arg(long, value_name = "PATH", env = "ORT_DYLIB_PATH")]
    onnxruntime_library: Option<PathBuf>,

    /// Where fetched model files and compiled plugins are kept (as for `serve`).
    #[arg(long, value_name = "DIR", env = "WASMSERVE_CACHE_DIR")]
    cache_dir: Option<PathBuf>,

    /// Keep nothing across runs (as for `serve`).
    #[arg(long, conflicts_with = "cache_dir", env = "WASMSERVE_NO_CACHE")]
    no_cache: bool,
}

/// Run the whole input through the model. `progress_bars`: draw a progress bar.
pub fn run(args: BatchArgs, progress_bars: bool) -> anyhow::Result<()> {
    super::runtime()?.block_on(batch(args, progress_bars))
}

/// `wasmserve batch`: load the model (and those whose graphs its plugin uses), then run
/// every record of the input through it.
async fn batch(args: BatchArgs, progress_bars: bool) -> anyhow::Result<()> {
    let mut repository = Repository::scan(&args.repository)?;
    let dir = repository.dir(&args.model, args.version.as_deref())?;
    let config = crate::config::ModelConfig::load(&dir)?;
    repository.keep(&config.plugin.allowed_graphs(&args.model));
    let options = BackendOptions { onnxruntime_library: args.onnxruntime_library, ..Default::default() };
    let caches = Caches::new(args.cache_dir, args.no_cache, progress_bars)?;
    let repository = Arc::new(repository);
    let loading = repository.clone();
    let (_, scratch) = tokio::task::spawn_blocking(move || {
        caches.load(&loading, options, LoadSettings { all_eager: true, ..Default::default() })
    })
    .await
    .context("model loading panicked")?;
    let model = repository.get(&args.model, args.version.as_deref())?;
    let concurrency = args.concurrency.unwrap_or_else(|| model.runner.slots.max_in_flight());
    let shard = args.shard.unwrap_or(Shard::ALL);
    let staging =
        tempfile::Builder::new().prefix("wasmserve-batch-").tempdir().context("no scratch directory")?;
    let input = match Place::of(&args.input)? {
        Place::Local(path) => path,
        Place::Remote(remote) => remote.download_input(shard, staging.path()).await?,
    };
    let output = part(&args.output, shard);
    match Place::of(&output)? {
        Place::Local(path) => {
            // As every tool writes its output: into the directory named, made if it is not there.
            if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
            }
            crate::front::offline::run(model, &input, shard, &path, concurrency, progress_bars).await?;
        }
        Place::Remote(remote) => {
            let local = staging.path().join("output.jsonl");
            remote.download_output(&local).await?;
            let every = Duration::from_secs(args.checkpoint_secs.max(1));
            let checkpoints = tokio::spawn(remote.clone().checkpoint(local.clone(), every));
            let done =
                crate::front::offline::run(model, &input, shard, &local, concurrency, progress_bars).await;
            checkpoints.abort();
            // What was answered is kept, even when the run stopped on an error.
            remote.upload(&local).await?;
            done?;
        }
    }
    drop(scratch);
    Ok(())
}

/// The shard's output: `part-I-of-N.jsonl` in a directory or under a prefix ending in `/`;
/// else the file or object named.
fn part(output: &str, shard: Shard) -> String {
    let folder = output.ends_with('/') || Path::new(output).is_dir();
    if shard == Shard::ALL && !folder {
        return output.to_string();
    }
    let name = format!("part-{:05}-of-{:05}.jsonl", shard.index, shard.count);
    format!("{}/{name}", output.trim_end_matches('/'))
}

/// Where an input or output is.
enum Place {
    Local(PathBuf),
    Remote(Remote),
}

/// An object or prefix in object storage.
#[derive(Clone)]
struct Remote {
    url: String,
    store: Arc<dyn ObjectStore>,
    path: StorePath,
}

impl Place {
    fn of(arg: &str) -> anyhow::Result<Self> {
        if !crate::fetch::is_cloud(arg) {
            return Ok(Place::Local(PathBuf::from(arg)));
        }
        let (store, path) = crate::fetch::open(arg, Path::new("."))?;
        Ok(Place::Remote(Remote { url: arg.to_string(), store: store.into(), path }))
    }
}

/// Objects downloaded at once.
const DOWNLOADS: usize = 16;

impl Remote {
    /// The input, local: one object as a file, or a prefix's objects as a directory with
    /// the shard's downloaded and the others' empty (they are never read).
    async fn download_input(&self, shard: Shard, staging: &Path) -> anyhow::Result<PathBuf> {
        let name = |p: &StorePath| p.filename().unwrap_or("input").to_string();
        if !self.url.ends_with('/') {
            let file = staging.join(name(&self.path));
            if self.download(&file).await? {
                return Ok(file);
            }
        }
        let listing = self
            .store
            .list_with_delimiter(Some(&self.path))
            .await
            .with_context(|| format!("cannot list {}", self.url))?;
        let mut keys: Vec<StorePath> = listing.objects.into_iter().map(|o| o.location).collect();
        keys.sort();
        anyhow::ensure!(!keys.is_empty(), "{}: no such object, and no objects under it", self.url);
        let dir = staging.join("input");
        std::fs::create_dir(&dir)?;
        let mut mine = Vec::new();
        for (number, key) in keys.iter().enumerate() {
            let file = dir.join(name(key));
            std::fs::File::create(&file)?;
            if shard.has(number as u64) {
                mine.push((key.clone(), file));
            }
        }
        tracing::info!(input = %self.url, objects = keys.len(), shard = mine.len(), "downloading the shard's input");
        futures::stream::iter(mine)
            .map(|(key, file)| async move {
                let bytes = self.store.get(&key).await?.bytes().await?;
                std::fs::write(&file, bytes)
                    .map_err(|e| object_store::Error::Generic { store: "local", source: e.into() })
            })
            .buffer_unordered(DOWNLOADS)
            .try_collect::<()>()
            .await
            .with_context(|| format!("cannot download {}", self.url))?;
        Ok(dir)
    }

    /// An earlier run's output, to continue from; nothing if there is none.
    async fn download_output(&self, local: &Path) -> anyhow::Result<()> {
        if self.download(local).await? {
            let bytes = std::fs::metadata(local)?.len();
            tracing::info!(output = %self.url, bytes, "continuing an earlier run's output");
        }
        Ok(())
    }

    /// The object itself (not a prefix) into `file`; false if there is no such object.
    async fn download(&self, file: &Path) -> anyhow::Result<bool> {
        match self.store.get(&self.path).await {
            Ok(object) => {
                let bytes = object.bytes().await.with_context(|| format!("cannot read {}", self.url))?;
                std::fs::write(file, bytes)?;
                Ok(true)
            }
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", self.url)),
        }
    }

    /// The local output's complete lines, as the output object.
    async fn upload(&self, local: &Path) -> anyhow::Result<()> {
        let mut bytes = match std::fs::read(local) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e).context("cannot read the output being written"),
        };
        bytes.truncate(bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1));
        self.store
            .put(&self.path, bytes.into())
            .await
            .with_context(|| format!("cannot write {}", self.url))?;
        Ok(())
    }

    /// Upload the output `every` so long, until aborted.
    async fn checkpoint(self, local: PathBuf, every: Duration) {
        loop {
            tokio::time::sleep(every).await;
            if let Err(e) = self.upload(&local).await {
                tracing::warn!(output = %self.url, "checkpoint failed (the next one tries again): {e:#}");
            }
        }
    }
}
