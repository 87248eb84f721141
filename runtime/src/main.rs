//! The `wasmserve` command.

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use wasmserve::infer::BackendOptions;
use wasmserve::repository::Repository;
use wasmserve::server::{AppState, router};

/// A model server: WebAssembly plugins pre- and post-process, tract or ONNX Runtime infers,
/// clients speak the Open Inference Protocol (KServe v2) over HTTP.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve every model in a model repository over HTTP.
    ///
    /// The server answers /v2/health/live at once and /v2/health/ready once every model's
    /// graph is loaded and its plugin compiled. A model that fails to load stops the server
    /// with a message naming the model and the cause.
    Serve(ServeArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Directory holding one directory per model, each with a model.toml.
    #[arg(long, short = 'r', value_name = "DIR", env = "WASMSERVE_REPOSITORY")]
    repository: PathBuf,

    /// Address to listen on. Use 0.0.0.0 to accept connections from other hosts
    /// (the container image does).
    #[arg(long, default_value = "127.0.0.1", env = "WASMSERVE_HOST")]
    host: std::net::IpAddr,

    /// Port to listen on; 0 picks a free one (the log says which).
    #[arg(long, short = 'p', default_value_t = 8000, env = "WASMSERVE_PORT")]
    port: u16,

    /// ONNX Runtime's shared library, for models with backend = "onnx"; e.g. the
    /// onnxruntime wheel's onnxruntime/capi/libonnxruntime.so.1.32.0, or onnxruntime-gpu's
    /// for CUDA. Not needed for tract models.
    #[arg(long, value_name = "PATH", env = "ORT_DYLIB_PATH")]
    onnxruntime_library: Option<PathBuf>,

    /// Largest request body accepted, in MiB; larger ones get 413.
    #[arg(long, default_value_t = 64, value_name = "MIB")]
    max_body_mib: usize,
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,cranelift=warn,wasmtime=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match Cli::parse().command {
        Command::Serve(args) => tokio::runtime::Runtime::new()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(serve(args))),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line with the whole cause chain; no backtrace.
            tracing::error!("{e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let addr = SocketAddr::new(args.host, args.port);
    let listener =
        tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
    let state = AppState::new(args.max_body_mib << 20);
    tracing::info!("listening on {}", listener.local_addr()?);

    let options = BackendOptions { onnxruntime_library: args.onnxruntime_library };
    let root = args.repository;
    let loading = tokio::task::spawn_blocking(move || Repository::load(&root, &options));
    let server = axum::serve(listener, router(state.clone())).with_graceful_shutdown(shutdown_signal());
    let server = tokio::spawn(async move { server.await });

    let repository = loading.await.context("model loading panicked")??;
    let names: Vec<&str> = repository.models().map(|m| m.name.as_str()).collect();
    tracing::info!(models = ?names, "ready");
    state.set_repository(repository);
    server.await??;
    tracing::info!("stopped");
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
    tracing::info!("shutting down: finishing requests in flight");
}
