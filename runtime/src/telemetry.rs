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
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,cranelift=warn,wasmtime=warn".into());
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
