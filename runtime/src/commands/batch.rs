//! batch: `wasmserve batch`, offline inference over files with one model (and the models
//! whose graphs its plugin uses); the work itself is [`crate::offline`].

use super::Caches;
use crate::infer::BackendOptions;
use crate::repository::{LoadSettings, Repository};
use anyhow::Context;
use std::path::PathBuf;
use std::sync::Arc;

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

    /// A JSON Lines file of inference requests, or a directory of input files.
    #[arg(long, short = 'i', value_name = "FILE|DIR")]
    input: PathBuf,

    /// The JSON Lines file to write, or to continue where an earlier run stopped.
    #[arg(long, short = 'o', value_name = "FILE")]
    output: PathBuf,

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
    let concurrency = args.concurrency.unwrap_or_else(|| model.slots.max_in_flight());
    crate::offline::run(model, &args.input, &args.output, concurrency, progress_bars).await?;
    drop(scratch);
    Ok(())
}
