//! The `wasmserve` command: parses the command line and calls the library's entry point for
//! the subcommand (`wasmserve::commands`), which does the rest.

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use std::path::PathBuf;
use wasmserve::commands::{self, SchemaOf, batch::BatchArgs, check::CheckArgs, serve::ServeArgs};
use wasmserve::observe::telemetry::{self, LogFormat};

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
    // Boxed: the serve settings outweigh every other command's.
    Serve(Box<ServeArgs>),

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
    /// Input and output may be in object storage (s3://, gs://, az://), and --shard I/N
    /// runs one of N parts of the input (a Kubernetes Indexed Job's pod: --shard N), each
    /// into part-I-of-N.jsonl under --output; see docs/batch-inference.md.
    ///
    /// Exits 0 once every record has a line (failures included), 1 if the run could not
    /// finish (the model failed to load, the input could not be read).
    Batch(BatchArgs),

    /// Check model directories before deploying them, as a server would bring them up.
    ///
    /// Each DIR is a model directory, or a repository whose every model is checked; a model
    /// directory comes up with the models whose graphs its plugin runs ([plugin] graphs),
    /// from the repository around it. The
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
        /// in model.toml as the file declares them (an output the file fixes at one row but
        /// that has one per input row, per row), on tract if tract runs it, else on ONNX
        /// Runtime. scikit-learn models: export with skl2onnx's options={'zipmap': False}.
        /// Default: a tiny example graph (Y = X * [[1, 2], [3, 4], [5, 6]]).
        #[arg(long, value_name = "FILE.onnx")]
        graph: Option<PathBuf>,
        /// ONNX Runtime's shared library (libonnxruntime.so): a graph tract cannot run is run
        /// once on it, and refused if it fails there too. Without it such a graph is written
        /// for ONNX Runtime unchecked (`wasmserve check` runs it once the plugin is built).
        #[arg(long, value_name = "PATH", env = "ORT_DYLIB_PATH")]
        onnxruntime_library: Option<PathBuf>,
    },
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
    let progress_bars = interactive && cli.log_format == LogFormat::Text;
    let result = match cli.command {
        Command::Schema { of } => {
            println!("{}", serde_json::to_string_pretty(&commands::schema(of)).expect("JSON"));
            Ok(())
        }
        Command::New(NewCommand::Plugin { name, dir, graph, onnxruntime_library }) => {
            commands::new::plugin(&name, dir, graph.as_deref(), onnxruntime_library.as_deref())
        }
        Command::Check(args) => commands::check::run(args),
        Command::Batch(args) => commands::batch::run(args, progress_bars),
        Command::Serve(args) => {
            let serve = matches.subcommand_matches("serve").expect("the serve subcommand");
            commands::serve::run(*args, serve, progress_bars)
        }
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
