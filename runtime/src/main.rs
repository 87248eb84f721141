//! The `wasmserve` command.

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use std::future::IntoFuture;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use wasmserve::fetch::Fetcher;
use wasmserve::infer::BackendOptions;
use wasmserve::repository::{Loader, Repository};
use wasmserve::server::{AppState, ReadyWhen, control_router, router};
use wasmserve::telemetry::{self, LogFormat};

/// A model server: WebAssembly plugins pre- and post-process, tract or ONNX Runtime infers,
/// clients speak the Open Inference Protocol (KServe v2) over HTTP.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// Log line format (RUST_LOG sets the level, e.g. RUST_LOG=wasmserve=debug).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "WASMSERVE_LOG_FORMAT")]
    log_format: LogFormat,

    /// Send every request's trace (request, plugin stages, inference) to this OpenTelemetry
    /// collector over OTLP/HTTP, e.g. http://collector:4318. The standard OTEL_EXPORTER_OTLP_*
    /// variables (headers, timeout) and OTEL_SERVICE_NAME apply. A request with a W3C
    /// `traceparent` header joins the caller's trace.
    #[arg(long, global = true, value_name = "URL", env = "WASMSERVE_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve every model in a model repository over HTTP.
    ///
    /// The server listens at once: /v2/health/live answers 200 while models load.
    /// Each model then loads its graph, compiles its plugin and runs its warm-up requests;
    /// /v2/health/ready answers 200 once every model is ready. A model that fails stays
    /// unavailable with the reason in its answers, in /v2/repository/index and in the log,
    /// and the others serve (or, with --exit-on-error, the server stops).
    ///
    /// On SIGTERM or Ctrl-C: readiness turns false at once, requests keep being served for
    /// --shutdown-delay-secs (so load balancers can stop sending), then the server stops
    /// accepting connections, finishes the requests in flight and exits 0.
    Serve(ServeArgs),

    /// Run one model over many inputs offline (precomputed predictions), into JSON Lines.
    ///
    /// --input is a file of JSON Lines, one inference request per line (a REST request
    /// body), or a directory whose files are each the raw data of the model's one input,
    /// taken in name order. Each record goes through the same plugin and graph as a served
    /// request; several run at once (--concurrency), so a model with [batching] batches them.
    ///
    /// --output gets one line per record, in input order:
    /// {"record": 0, "source": "in.jsonl:1", "response": {...}} with the response a server
    /// would give (outputs in JSON), or {"record": 0, "source": ..., "status": 400,
    /// "error": "..."}. A failed record does not stop the run; the summary in the log counts
    /// and names failures. Run again with the same --output after an interruption and it
    /// continues after the last complete line.
    ///
    /// Exits 0 once every record has a line (failures included), 1 if the run could not
    /// finish (the model failed to load, the input could not be read).
    Batch(BatchArgs),

    /// Check model directories before deploying them, as a server would bring them up.
    ///
    /// Each DIR is a model directory, or a repository whose every model is checked. The
    /// config must parse; the files it names must be there; files it fetches are fetched
    /// and their digests checked; the graph loads; the plugin compiles against the host's
    /// world; its warm-up and the config's [[warmup]] requests run through the whole path,
    /// which checks the plugin's outputs against [[outputs]]. Every problem is printed with
    /// a hint. Exits 0 when every model is ready (warnings allowed), 1 otherwise.
    Check(CheckArgs),

    /// Create things to build on: `new plugin NAME`.
    #[command(subcommand)]
    New(NewCommand),

    /// Print the JSON schema of a config file: `server` (--config), `model` (model.toml) or
    /// `versions` (a versioned model's versions.toml).
    Schema {
        /// Which file.
        #[arg(value_enum)]
        of: SchemaOf,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum SchemaOf {
    Server,
    Model,
    Versions,
}

/// `wasmserve serve`'s settings; also the keys of its `--config` file.
#[derive(clap::Args, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct ServeArgs {
    /// A TOML file with any of these settings (keys as the flags, with underscores:
    /// `repository = "models"`, `shutdown_delay_secs = 5`). Flags and environment
    /// variables override it.
    #[arg(long, short = 'c', value_name = "FILE", env = "WASMSERVE_CONFIG")]
    #[serde(skip)]
    config: Option<PathBuf>,

    /// Directory holding one directory per model, each with a model.toml.
    #[arg(long, short = 'r', value_name = "DIR", env = "WASMSERVE_REPOSITORY")]
    repository: Option<PathBuf>,

    /// Address to listen on. Use 0.0.0.0 to accept connections from other hosts
    /// (inside a container, for example).
    #[arg(long, default_value = "127.0.0.1", env = "WASMSERVE_HOST")]
    host: std::net::IpAddr,

    /// Port to listen on; 0 picks a free one (the log says which).
    #[arg(long, short = 'p', default_value_t = 8000, env = "WASMSERVE_PORT")]
    port: u16,

    /// Serve HTTPS (and gRPC over TLS) with this certificate chain, PEM; needs --tls-key.
    /// Without it the port speaks plain HTTP/1.1 and HTTP/2 (h2c).
    #[arg(long, value_name = "FILE", env = "WASMSERVE_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert, PEM (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "FILE", env = "WASMSERVE_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,

    /// ONNX Runtime's shared library, for models with backend = "onnx": e.g. the
    /// onnxruntime-gpu wheel's onnxruntime/capi/libonnxruntime.so.* for CUDA. Without it the
    /// server provisions ONNX Runtime 1.32.0's CPU library itself, out of the pinned
    /// onnxruntime wheel on PyPI into --cache-dir: downloaded once, its sha256 checked at
    /// every start. Not needed for tract models.
    #[arg(long, value_name = "PATH", env = "ORT_DYLIB_PATH")]
    onnxruntime_library: Option<PathBuf>,

    /// One pool of N intra-op threads that every ONNX Runtime session in the process shares,
    /// instead of a pool per session ([graph] threads and spin are then not used). For many
    /// ONNX Runtime models busy at once on many cores, where a pool per session puts several
    /// spinning threads on every core. 0: a pool per session, sized by [graph] threads.
    #[arg(long, default_value_t = 0, value_name = "N", env = "WASMSERVE_ONNXRUNTIME_THREADS")]
    onnxruntime_threads: usize,

    /// Largest request body accepted, in MiB; larger ones get 413.
    #[arg(long, default_value_t = 64, value_name = "MIB", env = "WASMSERVE_MAX_BODY_MIB")]
    max_body_mib: usize,

    /// Where fetched model files (models/), compiled plugins (plugins/) and ONNX Runtime's
    /// optimised graphs (graphs/) are kept, so a restart neither downloads, compiles nor
    /// optimises again (default: $XDG_CACHE_HOME/wasmserve or
    /// ~/.cache/wasmserve). On Kubernetes, a volume (emptyDir survives container restarts).
    /// Models that fetch files need it writable; otherwise it only saves time.
    #[arg(long, value_name = "DIR", env = "WASMSERVE_CACHE_DIR")]
    cache_dir: Option<PathBuf>,

    /// Keep nothing across restarts: fetch model files into a temporary directory removed at
    /// exit, and compile plugins and optimise graphs at every start.
    #[arg(long, conflicts_with = "cache_dir", env = "WASMSERVE_NO_CACHE")]
    #[serde(default)]
    no_cache: bool,

    /// When /v2/health/ready answers 200: when all models are ready, or any one.
    #[arg(long, value_enum, default_value_t = ReadyWhen::All, env = "WASMSERVE_READY_WHEN")]
    ready_when: ReadyWhen,

    /// Stop the server if any model fails to load or warm up, instead of serving the others.
    #[arg(long, env = "WASMSERVE_EXIT_ON_ERROR")]
    #[serde(default)]
    exit_on_error: bool,

    /// Serve (and report ready) even when the repository holds no model.
    #[arg(long, env = "WASMSERVE_ALLOW_EMPTY_REPOSITORY")]
    #[serde(default)]
    allow_empty_repository: bool,

    /// After SIGTERM, keep serving this long with readiness false before refusing new
    /// connections. On Kubernetes, a few seconds lets endpoints update first.
    #[arg(long, default_value_t = 0, value_name = "SECS", env = "WASMSERVE_SHUTDOWN_DELAY_SECS")]
    shutdown_delay_secs: u64,

    /// A file holding the bearer token that opens the control endpoints (POST
    /// /v2/repository/models/{m}/load and .../unload): clients send `Authorization: Bearer
    /// <token>`. Without a token (this or WASMSERVE_CONTROL_TOKEN) they answer 403. On
    /// Kubernetes, a Secret mounted as a file.
    #[arg(long, value_name = "FILE", env = "WASMSERVE_CONTROL_TOKEN_FILE")]
    control_token_file: Option<PathBuf>,

    /// The control token itself, from the environment only (a flag would show in `ps`).
    #[arg(
        long,
        hide = true,
        env = "WASMSERVE_CONTROL_TOKEN",
        hide_env_values = true,
        conflicts_with = "control_token_file"
    )]
    #[serde(skip)]
    control_token: Option<String>,

    /// Serve the control endpoints on this port only (same --host, same TLS), and not on
    /// --port: keep it out of the Service that clients reach.
    #[arg(long, value_name = "PORT", env = "WASMSERVE_CONTROL_PORT")]
    control_port: Option<u16>,

    /// Look at the repository every this many seconds and reload what changed on disk (a
    /// config, a plugin, a model file, versions.toml), load new model directories and
    /// unload removed ones; 0 (default): only at start-up and through the control endpoints.
    /// A reload warms the new version up before it takes traffic.
    #[arg(long, default_value_t = 0, value_name = "SECS", env = "WASMSERVE_POLL_SECS")]
    #[serde(default)]
    poll_secs: u64,

    /// After the delay, how long requests in flight may take to finish before the server
    /// exits anyway. Keep delay + drain under Kubernetes' terminationGracePeriodSeconds.
    #[arg(long, default_value_t = 30, value_name = "SECS", env = "WASMSERVE_DRAIN_TIMEOUT_SECS")]
    drain_timeout_secs: u64,
}

/// What `wasmserve new` creates.
#[derive(Subcommand)]
enum NewCommand {
    /// A plugin project that builds and serves as it is: a Rust crate (a pass-through to fill
    /// in with pre- and post-processing), the plugin SDK, and a model repository whose
    /// model.toml points at the built plugin and the graph, with the graph's inputs and outputs.
    ///
    /// Then: `cd NAME && cargo build --release` (needs `rustup target add wasm32-wasip2`), and
    /// `wasmserve serve --repository NAME/models`.
    Plugin {
        /// The plugin's and the model's name: lowercase letters, digits, '-' and '_'.
        name: String,
        /// Where to create the project (default: ./NAME). It must not exist or be empty.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// Your ONNX model: copied into the model directory, its inputs and outputs declared
        /// in model.toml. Default: a tiny example graph (Y = X * [[1, 2], [3, 4], [5, 6]]).
        #[arg(long, value_name = "FILE.onnx")]
        graph: Option<PathBuf>,
    },
}

/// `wasmserve check`'s settings.
#[derive(clap::Args)]
struct CheckArgs {
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

/// `wasmserve batch`'s settings.
#[derive(clap::Args)]
struct BatchArgs {
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

fn main() -> std::process::ExitCode {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let interactive = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let telemetry = match telemetry::init(cli.log_format, cli.otlp_endpoint.as_deref()) {
        Ok(telemetry) => telemetry,
        Err(e) => {
            eprintln!("error: {e:#}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Schema { of } => {
            let schema = match of {
                SchemaOf::Server => server_schema(),
                SchemaOf::Model => wasmserve::config::schema(),
                SchemaOf::Versions => wasmserve::config::versions_schema(),
            };
            println!("{}", serde_json::to_string_pretty(&schema).expect("JSON"));
            Ok(())
        }
        Command::New(NewCommand::Plugin { name, dir, graph }) => {
            let dir = dir.unwrap_or_else(|| PathBuf::from(&name));
            wasmserve::scaffold::plugin(&name, &dir, graph.as_deref()).map(|created| {
                let (dir, repository) = (created.dir.display(), created.repository.display());
                println!("created plugin '{name}' in {dir}: its code is {dir}/src/lib.rs");
                if let Some(note) = wasmserve::scaffold::ensure_target() {
                    println!("{note}");
                }
                println!("build it:   (cd {dir} && cargo build --release)");
                println!("serve it:   wasmserve serve --repository {repository}");
            })
        }
        Command::Check(args) => tokio::runtime::Runtime::new()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(check(args))),
        Command::Batch(args) => tokio::runtime::Runtime::new()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(batch(args, interactive && cli.log_format == LogFormat::Text))),
        Command::Serve(args) => tokio::runtime::Runtime::new().map_err(anyhow::Error::from).and_then(|rt| {
            let serve_matches = matches.subcommand_matches("serve").expect("the serve subcommand");
            let result = with_config_file(args, serve_matches)
                .and_then(|args| rt.block_on(serve(args, interactive && cli.log_format == LogFormat::Text)));
            // A model still loading must not hold the exit up.
            rt.shutdown_timeout(Duration::from_millis(500));
            result
        }),
    };
    let code = match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line with the whole cause chain; no backtrace.
            tracing::error!("{e:#}");
            std::process::ExitCode::FAILURE
        }
    };
    drop(telemetry); // sends the traces still buffered
    code
}

/// The JSON schema of the `--config` file (committed as `schemas/server.schema.json`).
fn server_schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(ServeArgs)).expect("a schema is JSON")
}

/// Layer the `--config` file under what flags and environment variables set: a key from the
/// file counts only where neither gave the setting.
fn with_config_file(args: ServeArgs, matches: &clap::ArgMatches) -> anyhow::Result<ServeArgs> {
    use clap::parser::ValueSource;
    let Some(path) = args.config.clone() else { return Ok(args) };
    let invalid = || format!("invalid config file {}", path.display());
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    let file: toml::Table = toml::from_str(&text).with_context(invalid)?;
    let mut merged = toml::Table::try_from(&args)?;
    let serve = Cli::command();
    let serve = serve.find_subcommand("serve").expect("the serve subcommand");
    let known: Vec<String> = serve.get_arguments().map(|a| a.get_id().to_string()).collect();
    for (key, value) in file {
        let known = key != "config" && known.contains(&key);
        anyhow::ensure!(known, "{}: unknown key `{key}` (see `wasmserve schema server`)", invalid());
        let set_by_user =
            matches!(matches.value_source(&key), Some(ValueSource::CommandLine | ValueSource::EnvVariable));
        if !set_by_user {
            merged.insert(key, value);
        }
    }
    let mut merged: ServeArgs = merged.try_into().with_context(invalid)?;
    merged.config = Some(path);
    merged.control_token = args.control_token;
    Ok(merged)
}

/// Serve until a signal. `progress_bars`: draw download progress bars (a person is watching).
async fn serve(args: ServeArgs, progress_bars: bool) -> anyhow::Result<()> {
    let root = args.repository.clone().context(
        "no model repository: pass --repository DIR, set WASMSERVE_REPOSITORY, or `repository` in --config",
    )?;
    let repository = Arc::new(Repository::scan(&root)?);
    anyhow::ensure!(
        !repository.is_empty() || args.allow_empty_repository,
        "no models in {}: each model is a directory with a model.toml (--allow-empty-repository serves none)",
        root.display()
    );
    // Read the certificate before listening: a bad one stops the start, not the first client.
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(wasmserve::tls::config(cert, key)?),
        (None, None) => None,
        _ => anyhow::bail!("--tls-cert and --tls-key go together"),
    };
    let control_token = match (&args.control_token_file, args.control_token) {
        (Some(file), _) => {
            let token = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read the control token file {}", file.display()))?;
            Some(token.trim().to_string())
        }
        (None, token) => token,
    };
    if control_token.as_deref().is_some_and(|t| t.len() < 16) {
        anyhow::bail!(
            "the control token is shorter than 16 characters: use a long random one (openssl rand -hex 32)"
        );
    }
    let addr = SocketAddr::new(args.host, args.port);
    let listener =
        tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
    let state = AppState::new(repository.clone(), args.max_body_mib << 20, args.ready_when, control_token);
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!("listening on {} ({scheme}; gRPC on the same port)", listener.local_addr()?);
    let mut app = router(state.clone());
    match args.control_port {
        Some(port) => {
            let addr = SocketAddr::new(args.host, port);
            let control = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (--control-port)"))?;
            tracing::info!("control endpoints on {} ({scheme})", control.local_addr()?);
            let app = control_router(state.clone());
            // Stopped with the process: nothing in flight there needs draining.
            match tls.clone() {
                Some(config) => {
                    tokio::spawn(wasmserve::tls::serve(control, app, config, std::future::pending()));
                }
                None => {
                    tokio::spawn(axum::serve(control, app).into_future());
                }
            }
        }
        None => app = app.merge(control_router(state.clone())),
    }

    let stopping = Arc::new(Notify::new());
    let shutdown = {
        let (state, stopping) = (state.clone(), stopping.clone());
        let delay = Duration::from_secs(args.shutdown_delay_secs);
        async move {
            shutdown_signal().await;
            state.drain();
            stopping.notify_one();
            tracing::info!(
                "shutting down: not ready; serving {delay:?} more, then finishing requests in flight"
            );
            tokio::time::sleep(delay).await;
            tracing::info!("shutting down: no new connections");
        }
    };
    let mut server = match tls {
        Some(config) => tokio::spawn(wasmserve::tls::serve(listener, app, config, shutdown)),
        None => tokio::spawn(axum::serve(listener, app).with_graceful_shutdown(shutdown).into_future()),
    };

    let options = BackendOptions {
        onnxruntime_library: args.onnxruntime_library,
        onnxruntime_threads: args.onnxruntime_threads,
        ..Default::default()
    };
    let caches = Caches::new(args.cache_dir, args.no_cache, progress_bars)?;
    let watched = repository.clone();
    let mut loading = tokio::task::spawn_blocking(move || caches.load(&repository, options));
    let (failures, scratch) = tokio::select! {
        loaded = &mut loading => loaded.context("model loading panicked")?,
        stopped = &mut server => return stopped?.context("server failed"),
    };
    if let (true, Some((name, reason))) = (args.exit_on_error, failures.first()) {
        anyhow::bail!("model '{name}' is unavailable: {reason} (--exit-on-error)");
    }
    tracing::info!(unavailable = failures.len(), "all models loaded");
    if args.poll_secs > 0 {
        let every = Duration::from_secs(args.poll_secs);
        tokio::spawn(async move {
            let mut seen = std::collections::HashMap::new();
            loop {
                let polling = watched.clone();
                seen = tokio::task::spawn_blocking(move || {
                    polling.poll(&mut seen);
                    seen
                })
                .await
                .unwrap_or_default();
                tokio::time::sleep(every).await;
            }
        });
    }

    let drain_limit = Duration::from_secs(args.shutdown_delay_secs + args.drain_timeout_secs);
    tokio::select! {
        stopped = &mut server => stopped?.context("server failed")?,
        _ = async { stopping.notified().await; tokio::time::sleep(drain_limit).await } => {
            tracing::warn!("requests still in flight after {drain_limit:?}; exiting anyway");
        }
    }
    tracing::info!("stopped");
    drop(scratch);
    Ok(())
}

/// Where models are fetched to and compiled plugins kept.
struct Caches {
    fetcher: Fetcher,
    plugins: Option<PathBuf>,
    /// Where ONNX Runtime's optimised graphs are kept.
    graphs: Option<PathBuf>,
    /// With --no-cache: the temporary directory fetched files go to, removed on drop.
    scratch: Option<tempfile::TempDir>,
}

impl Caches {
    fn new(cache_dir: Option<PathBuf>, no_cache: bool, progress_bars: bool) -> anyhow::Result<Self> {
        let cache = (!no_cache).then(|| cache_dir.or_else(default_cache_dir)).flatten();
        // Without a cache, fetched files still need a place: one that goes away at exit.
        let (fetched, scratch) = match &cache {
            Some(dir) => (dir.clone(), None),
            None => {
                let scratch = tempfile::Builder::new().prefix("wasmserve-").tempdir();
                let scratch = scratch.context("cannot create a temporary directory")?;
                (scratch.path().to_path_buf(), Some(scratch))
            }
        };
        let fetcher = Fetcher::new(&fetched.join("models"), progress_bars);
        let (plugins, graphs) = (cache.as_ref().map(|d| d.join("plugins")), cache.map(|d| d.join("graphs")));
        Ok(Self { fetcher, plugins, graphs, scratch })
    }

    /// Bring the repository's models up (see [`Repository::load`]); returns the failures and
    /// the scratch directory to keep until exit.
    fn load(
        self,
        repository: &Repository,
        options: BackendOptions,
    ) -> (Vec<(String, String)>, Option<tempfile::TempDir>) {
        let options = BackendOptions { graph_cache: self.graphs, ..options };
        let loader = Loader { options, fetcher: self.fetcher, plugin_cache: self.plugins };
        (repository.load(loader), self.scratch)
    }
}

/// `wasmserve batch`: load the model (and those whose graphs its plugin uses), then run
/// every record of the input through it.
async fn batch(args: BatchArgs, progress_bars: bool) -> anyhow::Result<()> {
    let mut repository = Repository::scan(&args.repository)?;
    let dir = repository.dir(&args.model, args.version.as_deref())?;
    let config = wasmserve::config::ModelConfig::load(&dir)?;
    repository.keep(&config.plugin.allowed_graphs(&args.model));
    let options = BackendOptions { onnxruntime_library: args.onnxruntime_library, ..Default::default() };
    let caches = Caches::new(args.cache_dir, args.no_cache, progress_bars)?;
    let repository = Arc::new(repository);
    let loading = repository.clone();
    let (_, scratch) = tokio::task::spawn_blocking(move || caches.load(&loading, options))
        .await
        .context("model loading panicked")?;
    let model = repository.get(&args.model, args.version.as_deref())?;
    let concurrency = args.concurrency.unwrap_or_else(|| model.slots.max_in_flight());
    wasmserve::batch::run(model, &args.input, &args.output, concurrency, progress_bars).await?;
    drop(scratch);
    Ok(())
}

/// `wasmserve check`: bring each directory's models up as `serve` would, and say what is wrong.
async fn check(args: CheckArgs) -> anyhow::Result<()> {
    use wasmserve::check;
    let mut problems = 0;
    for dir in &args.dirs {
        let (root, names) = check::layout(dir)?;
        let mut repository = Repository::scan(&root)?;
        if !names.is_empty() {
            repository.keep(&names.iter().map(String::as_str).collect::<Vec<_>>());
        }
        let mut found = Vec::new();
        for (name, version, _) in repository.states() {
            if let Ok(dir) = repository.dir(&name, version.as_deref()) {
                found.extend(check::files(&name, &dir));
            }
        }
        let options =
            BackendOptions { onnxruntime_library: args.onnxruntime_library.clone(), ..Default::default() };
        let caches = Caches::new(args.cache_dir.clone(), false, false)?;
        let repository = Arc::new(repository);
        let loading = repository.clone();
        let (failures, _scratch) = tokio::task::spawn_blocking(move || caches.load(&loading, options))
            .await
            .context("model loading panicked")?;
        for (model, reason) in failures {
            // A model with a problem found on disk fails to load because of it: said once.
            if found.iter().any(|p| !p.warning && model.split(' ').next() == Some(p.model.as_str())) {
                continue;
            }
            let hint = check::hint(&reason);
            found.push(check::Problem { model, message: reason, hint, warning: false });
        }
        for (name, version, state) in repository.states() {
            if let wasmserve::repository::State::Ready(model) = state {
                let at = version.map(|v| format!(" version {v}")).unwrap_or_default();
                println!("ok      {name}{at}: ready ({})", backend_of(&model.config.graph));
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

/// The backend a ready model runs on, for `check`: with ONNX Runtime, the library in use.
fn backend_of(graph: &wasmserve::config::GraphConfig) -> String {
    use wasmserve::config::Backend;
    match graph.backend {
        Backend::Tract => "tract, built in".into(),
        #[cfg(feature = "onnx")]
        Backend::Onnx => match wasmserve::infer::onnx::library() {
            Some(path) => format!("ONNX Runtime from {}", path.display()),
            None => "ONNX Runtime".into(),
        },
        #[cfg(not(feature = "onnx"))]
        Backend::Onnx => "ONNX Runtime".into(),
    }
}

fn default_cache_dir() -> Option<PathBuf> {
    let xdg = std::env::var_os("XDG_CACHE_HOME").map(PathBuf::from);
    xdg.or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .map(|d| d.join("wasmserve"))
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

#[cfg(test)]
mod tests {
    /// The committed schemas are what the structs say; regenerate with
    /// `cargo run -- schema server > schemas/server.schema.json` (and `model`).
    #[test]
    fn committed_schemas_match_the_config_structs() {
        for (of, committed, schema) in [
            ("server", include_str!("../../schemas/server.schema.json"), super::server_schema()),
            ("model", include_str!("../../schemas/model.schema.json"), wasmserve::config::schema()),
            (
                "versions",
                include_str!("../../schemas/versions.schema.json"),
                wasmserve::config::versions_schema(),
            ),
        ] {
            let committed: serde_json::Value = serde_json::from_str(committed).unwrap();
            assert!(
                committed == schema,
                "schemas/{of}.schema.json is out of date: `cargo run -- schema {of} > schemas/{of}.schema.json`"
            );
        }
    }
}
