//! check: a model directory, before it is deployed, as a server would bring it up: the
//! config, the files it names, the files it fetches (digests), the graph, the plugin's world
//! and exports, the plugin's warm-up and the config's warm-up requests through the whole
//! request path (which checks the plugin's outputs against the declared ones). Every problem
//! comes with a hint; `wasmserve check` exits non-zero when there is one.

use super::Caches;
use crate::config::{self, ModelConfig};
use crate::infer::BackendOptions;
use crate::repository::{LoadSettings, Repository};
use anyhow::Context;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// `wasmserve check`'s settings.
#[derive(clap::Args)]
pub struct CheckArgs {
    /// Model directories, or repositories of them.
    #[arg(required = true, value_name = "DIR")]
    dirs: Vec<PathBuf>,

    /// ONNX Runtime's shared library, for models with backend = "onnx"; default: provisioned
    /// from the pinned onnxruntime wheel (as for `serve`).
    #[arg(long, value_name = "PATH", env = "ORT_DYLIB_PATH")]
    onnxruntime_library: Option<PathBuf>,

    /// Where fetched model files are kept (as for `serve`).
    #[arg(long, value_name = "DIR", env = "WASMSERVE_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
}

/// Check every directory; an error when a problem (not a warning) was found.
pub fn run(args: CheckArgs) -> anyhow::Result<()> {
    super::runtime()?.block_on(check(args))
}

/// `wasmserve check`: bring each directory's models up as `serve` would, and say what is wrong.
async fn check(args: CheckArgs) -> anyhow::Result<()> {
    let mut problems = 0;
    for dir in &args.dirs {
        let (root, names) = layout(dir)?;
        let mut repository = Repository::scan(&root)?;
        let mut found = Vec::new();
        if !names.is_empty() {
            // A model directory comes up with the models whose graphs its plugin runs, from
            // the repository around it, as it would serve there.
            let mut keep = names.clone();
            for name in &names {
                for used in graphs_used(&repository, name) {
                    match repository.dir(&used, None) {
                        Ok(_) => keep.push(used),
                        Err(_) => found.push(Problem {
                            model: name.clone(),
                            message: format!(
                                "its plugin runs the graph of model '{used}' ([plugin] graphs), which is not a \
                                 model in {}",
                                root.display()
                            ),
                            hint: "put that model's directory next to this one, or check the repository that \
                                   holds both",
                            warning: false,
                        }),
                    }
                }
            }
            repository.keep(&keep.iter().map(String::as_str).collect::<Vec<_>>());
        }
        for status in repository.statuses() {
            if let Ok(dir) = repository.dir(&status.name, status.version.as_deref()) {
                found.extend(files(&status.name, &dir));
            }
        }
        let options =
            BackendOptions { onnxruntime_library: args.onnxruntime_library.clone(), ..Default::default() };
        let caches = Caches::new(args.cache_dir.clone(), false, false)?;
        let repository = Arc::new(repository);
        let loading = repository.clone();
        let (failures, _scratch) = tokio::task::spawn_blocking(move || {
            caches.load(&loading, options, LoadSettings { all_eager: true, ..Default::default() })
        })
        .await
        .context("model loading panicked")?;
        for (model, reason) in failures {
            // A model with a problem found on disk fails to load because of it: said once.
            if found.iter().any(|p| !p.warning && model.split(' ').next() == Some(p.model.as_str())) {
                continue;
            }
            let hint = hint(&reason);
            found.push(Problem { model, message: reason, hint, warning: false });
        }
        for status in repository.statuses() {
            if let crate::repository::State::Ready(model) = status.state {
                let at = status.version.map(|v| format!(" version {v}")).unwrap_or_default();
                println!("ok      {}{at}: ready ({})", status.name, backend_of(&model.config.graph));
            }
        }
        for p in &found {
            println!(
                "{} {}: {}
        hint: {}",
                if p.warning { "warning" } else { "error  " },
                p.model,
                p.message,
                p.hint
            );
        }
        problems += found.iter().filter(|p| !p.warning).count();
    }
    anyhow::ensure!(problems == 0, "{problems} problem(s) found");
    Ok(())
}

/// The other models whose graphs `model`'s plugin may run (`[plugin] graphs`), as its default
/// version's config says; none when the config does not load (that is reported on its own).
fn graphs_used(repository: &Repository, model: &str) -> Vec<String> {
    let config = repository.dir(model, None).ok().and_then(|dir| ModelConfig::load(&dir).ok());
    let graphs = config.map(|c| c.plugin.graphs).unwrap_or_default();
    graphs.into_iter().filter(|g| g != model).collect()
}

/// The backend a ready model runs on, for `check`: with ONNX Runtime, the library in use.
fn backend_of(graph: &crate::config::GraphConfig) -> String {
    use crate::config::Backend;
    match graph.backend {
        Backend::Tract => "tract, built in".into(),
        #[cfg(feature = "onnx")]
        Backend::Onnx => match crate::infer::onnx::library() {
            Some(path) => format!("ONNX Runtime from {}", path.display()),
            None => "ONNX Runtime".into(),
        },
        #[cfg(not(feature = "onnx"))]
        Backend::Onnx => "ONNX Runtime".into(),
        Backend::Ggml => "llama.cpp's ggml, built in".into(),
    }
}

/// Something wrong (or missing) in a model directory, and what to do about it.
#[derive(Debug, PartialEq, Eq)]
pub struct Problem {
    /// The model (and version) it concerns.
    pub model: String,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub hint: &'static str,
    /// A warning: the model serves, but something a deploy should have is missing.
    pub warning: bool,
}

/// What can be seen without loading anything: the config parses, the files it names are
/// there, and it has a warm-up request. `dir` is one version's directory.
pub fn files(model: &str, dir: &Path) -> Vec<Problem> {
    let problem = |message: String, hint| Problem { model: model.to_string(), message, hint, warning: false };
    let config = match ModelConfig::load(dir) {
        Ok(config) => config,
        Err(e) => {
            return vec![problem(format!("{e:#}"), "`wasmserve schema model` lists every key and its type")];
        }
    };
    let fetched: Vec<std::path::PathBuf> = config.fetch.iter().map(|f| f.path()).collect();
    let mut problems = Vec::new();
    let mut named = vec![("graph.file", config.graph.file.as_path())];
    named.extend(config.plugin.file.as_deref().map(|f| ("plugin.file", f)));
    named.extend(config.warmup.iter().filter_map(|w| w.file.as_deref()).map(|f| ("warmup.file", f)));
    for (key, file) in named {
        // A fetch may bring a directory (an archive's member, or the whole archive: an empty
        // path), whose files are known only once fetched: loading the model checks them.
        if !dir.join(file).is_file() && !fetched.iter().any(|f| file.starts_with(f)) {
            // A model directory as Hugging Face tools leave it keeps its graph under onnx/.
            let found = match key {
                "graph.file" => onnx_files(dir),
                _ => Vec::new(),
            };
            let found = match found.is_empty() {
                true => String::new(),
                false => format!(" (the ONNX files there: {})", found.join(", ")),
            };
            problems.push(problem(
                format!("`{key}` names {}, which is not in {}{found}", file.display(), dir.display()),
                "put the file there, point the key at the file, or list it under [[fetch]] with its URL and sha256",
            ));
        }
    }
    if let Some(data) = &config.plugin.data
        && !dir.join(data).is_dir()
        && !fetched.iter().any(|f| f.starts_with(data))
    {
        problems.push(problem(
            format!("`plugin.data` names {}, which is not a directory in {}", data.display(), dir.display()),
            "create the directory (it is granted to the plugin read-only at /data), or remove the key",
        ));
    }
    // A generative model has none: its warm-up is one generated token, always run.
    if config.warmup.is_empty() && !config.generates() {
        problems.push(Problem {
            model: model.to_string(),
            message: "no [[warmup]] request: nothing runs the plugin and the graph together before clients do".into(),
            hint: "add [[warmup]] with `inputs` (or `file`) like a real request: the server then checks the outputs against [[outputs]] before it reports ready",
            warning: true,
        });
    }
    problems
}

/// The hint for why a model did not come up, by the step that failed.
pub fn hint(reason: &str) -> &'static str {
    // The most specific first: a warm-up that failed on the outputs names both.
    const HINTS: &[(&str, &str)] = &[
        ("postprocess returned", "the plugin's outputs must match [[outputs]] in name and datatype"),
        (
            "a wasm module with a component parser",
            "this is a core WebAssembly module, not a component: build for wasm32-wasip2 (not wasm32-wasip1 or wasm32-unknown-unknown), or wrap it with `wasm-tools component new`",
        ),
        (
            "does not export the wasmserve:plugin world",
            "a plugin exports preprocess and postprocess of wasmserve:plugin@0.1.0 (wit/plugin.wit, world model-plugin); with the Rust SDK, `wasmserve_plugin::export_plugin!(YourType)`",
        ),
        (
            "cannot provision ONNX Runtime",
            "the server fetches ONNX Runtime's CPU library from PyPI once (a 28 MB wheel) into the cache: allow that once (or copy a cache that has it), or point --onnxruntime-library / ORT_DYLIB_PATH at a libonnxruntime.so",
        ),
        ("exceeded its", "raise the limit named in [plugin], or make the plugin do less per call"),
        (
            "sha256",
            "the file's digest differs from [[fetch]] sha256: if the new file is the one you want, put its digest in model.toml (sha256sum FILE)",
        ),
        ("plugin.graphs", "every model in `plugin.graphs` must be in the same repository and load"),
        (
            "cannot load its graph",
            "check [graph] `file` and `backend`: tract reads ONNX without anything installed; backend = \"onnx\" runs ONNX Runtime (provisioned, or --onnxruntime-library); backend = \"ggml\" reads GGUF",
        ),
        (
            "cannot load its plugin",
            "build the plugin for wasm32-wasip2 against the host's wit/ (world model-plugin), e.g. `cargo build --release --target wasm32-wasip2`",
        ),
        (
            "warm-up",
            "the plugin or the graph failed on the warm-up request: send the same request to `wasmserve serve` and read the log",
        ),
    ];
    HINTS.iter().find(|(key, _)| reason.contains(key)).map_or(
        "run `wasmserve serve --repository` on the directory and read the log around the failure",
        |(_, hint)| hint,
    )
}

/// Where a directory's models are: a model directory is checked as itself, a repository
/// as every model in it. Returns the repository root and the model names to check (none: all).
pub fn layout(dir: &Path) -> anyhow::Result<(std::path::PathBuf, Vec<String>)> {
    let is_model = dir.join(config::FILE_NAME).is_file()
        || dir.join(config::VERSIONS_FILE).is_file()
        || std::fs::read_dir(dir)?.filter_map(|e| e.ok()).any(|e| {
            e.file_name().to_str().is_some_and(|n| n.parse::<u64>().is_ok())
                && e.path().join(config::FILE_NAME).is_file()
        });
    if !is_model {
        return Ok((dir.to_path_buf(), Vec::new()));
    }
    let dir = std::path::absolute(dir)?;
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| anyhow::anyhow!("{} has no name", dir.display()))?;
    let parent = dir.parent().ok_or_else(|| anyhow::anyhow!("{} has no parent", dir.display()))?;
    Ok((parent.to_path_buf(), vec![name.to_string()]))
}

/// The `.onnx` files in `dir` and its direct subdirectories, relative to it.
fn onnx_files(dir: &std::path::Path) -> Vec<String> {
    let entries = |d: &std::path::Path| {
        std::fs::read_dir(d).into_iter().flatten().filter_map(|e| e.ok()).map(|e| e.path())
    };
    let mut found: Vec<String> = entries(dir)
        .flat_map(|p| if p.is_dir() { entries(&p).collect() } else { vec![p] })
        .filter(|p| p.extension().is_some_and(|e| e == "onnx"))
        .filter_map(|p| Some(p.strip_prefix(dir).ok()?.display().to_string()))
        .collect();
    found.sort();
    found
}
