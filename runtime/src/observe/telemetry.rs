//! telemetry: where logs and traces go. Log lines to standard error (text or JSON; RUST_LOG
//! sets the level), and, with an OTLP endpoint, every request's span tree (the request, its
//! plugin stages and inference) to an OpenTelemetry collector over OTLP/HTTP.
//!
//! A request whose headers carry a W3C `traceparent` joins the caller's trace.

use anyhow::Context;
use opentelemetry::propagation::Extractor;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, filter::Targets};

/// How log lines are written.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// For people: one readable line per event.
    Text,
    /// For log collectors: one JSON object per line, with the request span's fields.
    Json,
}

/// Keeps the trace exporter alive; dropping it sends what is still buffered.
pub struct Telemetry {
    traces: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.traces.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("wasmserve: could not send the last traces: {e}");
        }
    }
}

/// Install the log (and, with `otlp_endpoint`, trace) pipeline for the whole process.
/// `otlp_endpoint` is the collector's OTLP/HTTP base URL, e.g. `http://collector:4318`.
pub fn init(format: LogFormat, otlp_endpoint: Option<&str>) -> anyhow::Result<Telemetry> {
    let interactive = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,cranelift=warn,wasmtime=warn,llama-cpp-2=warn".into());
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal, never into log collectors.
        .with_ansi(interactive && std::env::var_os("NO_COLOR").is_none());
    let logs = match format {
        LogFormat::Text => logs.boxed(),
        LogFormat::Json => logs.json().with_current_span(true).with_span_list(false).boxed(),
    };
    let (traces, provider) = match otlp_endpoint {
        Some(endpoint) => {
            let provider = tracer_provider(endpoint)?;
            let tracer = provider.tracer("wasmserve");
            // Every span of the server (the per-stage ones are at debug level), whatever the
            // log level; the exporter's own HTTP client stays out, or it would trace itself.
            let spans = Targets::new().with_target("wasmserve", tracing::Level::DEBUG);
            (Some(tracing_opentelemetry::layer().with_tracer(tracer).with_filter(spans)), Some(provider))
        }
        None => (None, None),
    };
    tracing_subscriber::registry().with(logs.with_filter(filter)).with(traces).try_init()?;
    Ok(Telemetry { traces: provider })
}

fn tracer_provider(endpoint: &str) -> anyhow::Result<SdkTracerProvider> {
    use opentelemetry_otlp::WithExportConfig;
    let endpoint = endpoint.trim_end_matches('/');
    let url =
        if endpoint.ends_with("/v1/traces") { endpoint.to_string() } else { format!("{endpoint}/v1/traces") };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(&url)
        .build()
        .with_context(|| format!("cannot export traces to {url}"))?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name("wasmserve");
    }
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    Ok(SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource.build()).build())
}

/// Make `span` a child of the trace the request's `traceparent` header names, if any.
pub fn join_remote_trace(span: &tracing::Span, headers: &axum::http::HeaderMap) {
    struct Headers<'a>(&'a axum::http::HeaderMap);
    impl Extractor for Headers<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key).and_then(|v| v.to_str().ok())
        }
        fn keys(&self) -> Vec<&str> {
            self.0.keys().map(|k| k.as_str()).collect()
        }
    }
    let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(&Headers(headers)));
    // Without a trace pipeline there is nothing to join.
    let _ = span.set_parent(parent);
}

/// The progress of a long task (a download, a batch run): on a bar when a person is
/// watching, otherwise a line in the log every few seconds, which its owner writes when
/// [`Progress::add`] says one is due.
pub struct Progress {
    /// Units to do.
    pub total: u64,
    /// Units done.
    pub done: u64,
    started: std::time::Instant,
    logged: std::time::Instant,
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    /// How often a progress line is due when no bar is drawn.
    const LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

    /// Start counting from `done` of `total`; `bar` (styled by the caller) is drawn if given.
    pub fn new(total: u64, done: u64, bar: Option<indicatif::ProgressBar>) -> Self {
        let now = std::time::Instant::now();
        if let Some(bar) = &bar {
            bar.set_position(done);
            bar.reset_eta();
        }
        Self { total, done, started: now, logged: now, bar }
    }

    /// Count `n` more done; true when no bar is drawn and a log line is due.
    pub fn add(&mut self, n: u64) -> bool {
        self.done += n;
        match &self.bar {
            Some(bar) => {
                bar.inc(n);
                false
            }
            None if self.logged.elapsed() >= Self::LOG_EVERY => {
                self.logged = std::time::Instant::now();
                true
            }
            None => false,
        }
    }

    /// Clear the bar; the time since the start.
    pub fn finish(&self) -> std::time::Duration {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        self.started.elapsed()
    }

    /// Units done per second since the start (those counted from `new`'s `done` excluded).
    pub fn rate(&self, since: u64) -> f64 {
        (self.done - since) as f64 / self.started.elapsed().as_secs_f64().max(1e-3)
    }
}
