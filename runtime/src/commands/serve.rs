//! serve: `wasmserve serve`, from its settings (flags, environment, `--config` file) to a
//! process that listens, brings its models up, serves until a signal and drains.

use super::Caches;
use crate::config::{LoadPolicy, LogMode, Logger};
use crate::front::{control_router, router};
use crate::infer::BackendOptions;
use crate::net::listen::{self, Limits};
use crate::pipeline::{AppState, ReadyWhen};
use crate::repository::{LoadSettings, Repository};
use anyhow::Context;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// `wasmserve serve`'s settings; also the keys of its `--config` file.
#[derive(clap::Args, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServeArgs {
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
    /// Its threads sleep when out of work unless --onnxruntime-spin.
    #[arg(long, default_value_t = 0, value_name = "N", env = "WASMSERVE_ONNXRUNTIME_THREADS")]
    onnxruntime_threads: usize,

    /// Let the shared pool's threads (--onnxruntime-threads) spin while waiting for work, as
    /// ONNX Runtime's own pools do: a request that runs alone finishes sooner (minilm 3.1
    /// against 4.6 ms on 2 cores, bench/shared_pool.py), but the spinning takes the cores that
    /// model loads, plugins and other models' requests need (200 models on demand: 12% fewer
    /// loads, bench/density.py --spin).
    #[arg(long, env = "WASMSERVE_ONNXRUNTIME_SPIN")]
    #[serde(default)]
    onnxruntime_spin: bool,

    /// Close a connection whose first request (TLS handshake included) has not arrived within
    /// this, and on HTTP/1 one whose next request's headers take longer from their first byte:
    /// slow clients cannot hold connections open (slowloris).
    #[arg(long, default_value_t = 10, value_name = "SECS", env = "WASMSERVE_HEADER_TIMEOUT_SECS")]
    header_timeout_secs: u64,

    /// Close a keep-alive connection with no request in flight after this (HTTP/2: GOAWAY).
    /// Keep it longer than the idle timeout of a proxy in front (60 s for most), so the
    /// proxy closes first and never sends on a connection being closed.
    #[arg(long, default_value_t = 75, value_name = "SECS", env = "WASMSERVE_IDLE_TIMEOUT_SECS")]
    idle_timeout_secs: u64,

    /// Answer 408 and close when a request body pauses longer than this between two parts.
    #[arg(long, default_value_t = 60, value_name = "SECS", env = "WASMSERVE_BODY_TIMEOUT_SECS")]
    body_timeout_secs: u64,

    /// Client connections open at once (each port counts its own); more are closed as soon
    /// as they are accepted and counted in wasmserve_connections_refused_total. Lowered to
    /// what the process's file limit (`ulimit -n`) allows, less 256 for model files.
    #[arg(long, default_value_t = 4096, value_name = "N", env = "WASMSERVE_MAX_CONNECTIONS")]
    max_connections: usize,

    /// HTTP/2 (and gRPC) requests at once on one connection; a client opening more waits.
    #[arg(long, default_value_t = 100, value_name = "N", env = "WASMSERVE_HTTP2_MAX_STREAMS")]
    http2_max_streams: u32,

    /// What requests in flight may hold together, in MiB: each is charged 3 times its body
    /// (the body, its decoded tensors, the plugin's copy) from its Content-Length before the
    /// body is read, or as a chunked body arrives. Past it, 503 with Retry-After (gRPC:
    /// UNAVAILABLE); a body that alone would need more, 413. Leave room for the models and
    /// the plugins' memories under the pod's memory limit.
    #[arg(long, default_value_t = 1024, value_name = "MIB", env = "WASMSERVE_REQUEST_MEMORY_MIB")]
    request_memory_mib: usize,

    /// Largest request body accepted, in MiB; larger ones get 413.
    #[arg(long, default_value_t = 64, value_name = "MIB", env = "WASMSERVE_MAX_BODY_MIB")]
    max_body_mib: usize,

    /// Largest BYTES element (a sentence, a file) a request may hand a model, in KiB; larger
    /// ones get 413 naming the input, before the plugin runs. A model's `[limits]
    /// max_bytes_element_kib` overrides it.
    #[arg(long, default_value_t = crate::config::DEFAULT_MAX_BYTES_ELEMENT_KIB, value_name = "KIB", env = "WASMSERVE_MAX_BYTES_ELEMENT_KIB")]
    max_bytes_element_kib: u64,

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

    /// When models load: `eager` (at start-up, before the server reports ready; never
    /// evicted) or `on_demand` (at a model's first request, which waits for it; evicted, least
    /// recently used first, when a load needs room under --model-memory-mib). A model's
    /// `[load] policy` overrides it. On-demand models' configs are still checked at start-up.
    #[arg(long, default_value_t = LoadPolicy::Eager, value_name = "POLICY", env = "WASMSERVE_LOAD_POLICY")]
    load_policy: LoadPolicy,

    /// What loaded models may hold together, in MiB (0: no budget, nothing is evicted). Each
    /// model is charged what its first loads added to malloc's heaps, plus its plugin's code
    /// and idle instances (or its `[load] memory_mib`); a load that would go over evicts idle
    /// on-demand models, least recently used first. Eager models count, and are never evicted.
    #[arg(long, default_value_t = 0, value_name = "MIB", env = "WASMSERVE_MODEL_MEMORY_MIB")]
    model_memory_mib: u64,

    /// How long a request for an on-demand model waits for its load before 503 with
    /// Retry-After (the load goes on; requests for a model share one load).
    #[arg(long, default_value_t = 30, value_name = "SECS", env = "WASMSERVE_LOAD_WAIT_SECS")]
    load_wait_secs: u64,

    /// How many on-demand loads (graph, plugin, warm-up) run at once (default: the number of
    /// CPUs). A model's first three loads run alone, so that the memory each adds is measured
    /// as its own; later loads of it (after an eviction), or of a copy with the same files and
    /// config, are charged the median and run beside each other.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..), env = "WASMSERVE_CONCURRENT_LOADS")]
    concurrent_loads: Option<u64>,

    /// Do not fetch on-demand models' files at start-up: their first load does (and its
    /// request waits for the download).
    #[arg(long, env = "WASMSERVE_NO_PREFETCH")]
    #[serde(default)]
    no_prefetch: bool,

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

    /// Log inference payloads to this sink, as KServe's logger does: each sampled request and
    /// its response as CloudEvents POSTed in HTTP binary mode (docs/api.md), for every model
    /// whose model.toml sets no `[logger] url` of its own. Default: none (off).
    #[arg(long, value_name = "URL", env = "WASMSERVE_PAYLOAD_LOG_URL")]
    payload_log_url: Option<String>,

    /// What payload logging sends, unless a model's `[logger] mode` says: all (requests and
    /// responses), request or response.
    #[arg(long, default_value = "all", value_name = "MODE", env = "WASMSERVE_PAYLOAD_LOG_MODE")]
    payload_log_mode: LogMode,

    /// The share of requests whose payloads are logged, 0 to 1, unless a model's `[logger]
    /// sample_rate` says.
    #[arg(long, default_value_t = 1.0, value_name = "RATE", env = "WASMSERVE_PAYLOAD_LOG_SAMPLE_RATE")]
    payload_log_sample_rate: f64,

    /// Most payload log events waiting for their sink, in MiB of bodies. Past it an event is
    /// dropped and counted (wasmserve_payload_events_total{outcome="dropped"}): inference
    /// never waits for the sink.
    #[arg(long, default_value_t = 64, value_name = "MIB", env = "WASMSERVE_PAYLOAD_LOG_QUEUE_MIB")]
    payload_log_queue_mib: usize,

    /// Request headers never logged (comma-separated, any case). The others go in each
    /// event's `ce-metadata`.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "authorization,proxy-authorization,cookie",
        value_name = "NAMES",
        env = "WASMSERVE_PAYLOAD_LOG_EXCLUDE_HEADERS"
    )]
    payload_log_exclude_headers: Vec<String>,
}

/// Serve until SIGTERM or Ctrl-C, then drain. `matches`: the `serve` subcommand's parsed
/// command line, which says which settings the `--config` file may fill in.
/// `progress_bars`: draw download progress bars (a person is watching).
pub fn run(args: ServeArgs, matches: &clap::ArgMatches, progress_bars: bool) -> anyhow::Result<()> {
    crate::allocator::give_back_large_buffers();
    let rt = super::runtime()?;
    let result = with_config_file(args, matches).and_then(|args| rt.block_on(serve(args, progress_bars)));
    // A model still loading must not hold the exit up.
    rt.shutdown_timeout(Duration::from_millis(500));
    result
}

/// The JSON schema of the `--config` file (committed as `schemas/server.schema.json`).
pub fn config_schema() -> serde_json::Value {
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
    let serve = <ServeArgs as clap::Args>::augment_args(clap::Command::new("serve"));
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

/// Serve until a signal.
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
        (Some(cert), Some(key)) => Some(crate::net::tls::config(cert, key)?),
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
    let max_bytes_element = usize::try_from(args.max_bytes_element_kib << 10).unwrap_or(usize::MAX);
    // The same checks a model's [logger] gets.
    Logger { url: args.payload_log_url.clone(), mode: None, sample_rate: Some(args.payload_log_sample_rate) }
        .check()
        .context("--payload-log-url / --payload-log-sample-rate")?;
    let payloads = crate::observe::payloads::Settings {
        url: args.payload_log_url.clone(),
        mode: args.payload_log_mode,
        sample_rate: args.payload_log_sample_rate,
        queue_bytes: args.payload_log_queue_mib << 20,
        exclude_headers: args
            .payload_log_exclude_headers
            .iter()
            .map(|h| h.trim().to_ascii_lowercase())
            .collect(),
    };
    let state = AppState::new(
        repository.clone(),
        args.max_body_mib << 20,
        max_bytes_element,
        args.ready_when,
        control_token,
        payloads,
    );
    let limits = Limits {
        header_timeout: Duration::from_secs(args.header_timeout_secs),
        idle_timeout: Duration::from_secs(args.idle_timeout_secs),
        body_timeout: Duration::from_secs(args.body_timeout_secs),
        max_connections: args.max_connections,
        http2_max_streams: args.http2_max_streams,
        request_memory: args.request_memory_mib << 20,
        streams: &crate::front::grpc::STREAM_PATHS,
    };
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
            let pending = std::future::pending();
            tokio::spawn(listen::serve(
                control,
                app,
                tls.clone(),
                limits,
                state.metrics().connections(),
                pending,
            ));
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
    tokio::spawn(crate::allocator::trim_when_wanted());
    let connections = state.metrics().connections();
    let mut server = tokio::spawn(listen::serve(listener, app, tls, limits, connections, shutdown));

    let options = BackendOptions {
        onnxruntime_library: args.onnxruntime_library,
        onnxruntime_threads: args.onnxruntime_threads,
        onnxruntime_spin: args.onnxruntime_spin,
        ..Default::default()
    };
    let settings = LoadSettings {
        default_policy: args.load_policy,
        all_eager: false,
        prefetch: !args.no_prefetch,
        budget: (args.model_memory_mib > 0).then_some(args.model_memory_mib << 20),
        wait: Duration::from_secs(args.load_wait_secs),
        concurrent: args.concurrent_loads.map_or(LoadSettings::default().concurrent, |n| n as usize),
    };
    let caches = Caches::new(args.cache_dir, args.no_cache, progress_bars)?;
    let watched = repository.clone();
    let mut loading = tokio::task::spawn_blocking(move || caches.load(&repository, options, settings));
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
