//! metrics: what the server counts, in the Prometheus text format at `GET /metrics`.
//!
//! Names follow Triton's (`nv_inference_*`) so its users find their way, in Prometheus units
//! (seconds, `_total` counters):
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | `wasmserve_inference_request_success_total` | counter | model, version |
//! | `wasmserve_inference_request_failure_total` | counter | model, version, code (HTTP status) |
//! | `wasmserve_inference_count_total` | counter: inferences (batch rows) | model, version |
//! | `wasmserve_inference_pending_requests` | gauge: requests in the server now | model, version |
//! | `wasmserve_inference_request_cancelled_total` | counter: requests whose client went away before the answer (what they still waited for was not run) | model, version |
//! | `wasmserve_request_duration_seconds` | histogram: whole request, body to response | model, version |
//! | `wasmserve_queue_duration_seconds` | histogram: waiting for a slot (`[scheduling]`), a worker thread and a free execution (and a batch to form) | model, version |
//! | `wasmserve_preprocess_duration_seconds` | histogram: plugin preprocess, instance included | model, version |
//! | `wasmserve_compute_duration_seconds` | histogram: the graph | model, version |
//! | `wasmserve_postprocess_duration_seconds` | histogram: plugin postprocess | model, version |
//! | `wasmserve_inference_exec_count_total` | counter: graph runs (a batch is one) | model, version |
//! | `wasmserve_batch_rows` | histogram: rows in the graph run that served a request (with `[batching]`, the whole batch's) | model, version |
//! | `wasmserve_batch_tokens` | histogram: with `[batching] pad`, the batch's rows times its longest length (padding included) | model, version |
//! | `wasmserve_model_ready` | gauge: 1 when loaded and warmed up | model, version |
//! | `wasmserve_model_load_duration_seconds` | gauge: config to ready, warm-up included when it runs | model, version |
//! | `wasmserve_route_requests_total` | counter: requests a route sent on | route, variant, role (`served` or `shadow`), code |
//! | `wasmserve_connections_open` | gauge: client connections open now | |
//! | `wasmserve_connections_refused_total` | counter: connections closed at accept, `--max-connections` being open | |
//! | `wasmserve_connections_timed_out_total` | counter: connections closed by a deadline (see `listen`) | phase (`headers` or `idle`) |
//! | `wasmserve_request_memory_refused_total` | counter: requests refused by the request memory budget (see `budget`) | |
//! | `wasmserve_request_memory_bytes` | gauge: what requests in flight are charged against it now | |
//! | `wasmserve_model_loads_total` | counter: model versions loaded, by cause (`startup`, `request`, `reload`, `dependency`) | model, version, cause |
//! | `wasmserve_model_load_failures_total` | counter: loads that failed | model, version, cause |
//! | `wasmserve_model_evictions_total` | counter: versions taken out of memory, by reason (`budget`, `unload`) | model, version, reason |
//! | `wasmserve_model_load_seconds` | histogram: one load, config to ready | cause |
//! | `wasmserve_model_load_wait_seconds` | histogram: how long requests waited for an on-demand load, however the wait ended (loaded, failed, timed out, client gone) | |
//! | `wasmserve_model_resident_bytes` | gauge: what a loaded version is charged against the model memory budget | model, version |
//! | `wasmserve_models_resident_bytes` | gauge: all loaded versions together | |
//! | `wasmserve_model_memory_budget_bytes` | gauge: `--model-memory-mib` (0: none) | |
//! | `wasmserve_payload_events_total` | counter: payload log events, by outcome (`sent`, `dropped`: the queue was full, `failed`: after retries; see `payloads`) | outcome |
//! | `wasmserve_payload_queue_bytes` | gauge: payload log events waiting to be sent | |
//!
//! Warm-up requests are not counted. Generative models add theirs (`generation`).

use super::Timings;
use super::generation::{EngineGauges, GenerationMetrics};
use super::payloads::PayloadMetrics;
use super::statistics::Statistics;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabels {
    model: String,
    version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
    variant: String,
    role: &'static str,
    code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    phase: &'static str,
}

/// What the listener counts about connections (handles into [`Metrics`]).
#[derive(Clone, Default)]
pub struct ConnectionMetrics {
    /// Connections open now.
    pub open: Gauge,
    /// Connections closed at accept because the cap was reached.
    pub refused: Counter,
    timed_out: Family<PhaseLabels, Counter>,
    /// Requests refused by the request memory budget.
    pub memory_refused: Counter,
    /// Bytes the requests in flight are charged now.
    pub request_memory: Gauge,
}

impl ConnectionMetrics {
    /// A connection was closed by its deadline in `phase` (`headers`, `idle`).
    pub fn timed_out(&self, phase: &'static str) {
        self.timed_out.get_or_create(&PhaseLabels { phase }).inc();
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LoadLabels {
    model: String,
    version: String,
    cause: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EvictionLabels {
    model: String,
    version: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CauseLabels {
    cause: &'static str,
}

/// What the repository counts about loading and evicting models (handles into [`Metrics`]).
#[derive(Clone)]
pub struct LoadMetrics {
    loads: Family<LoadLabels, Counter>,
    failures: Family<LoadLabels, Counter>,
    evictions: Family<EvictionLabels, Counter>,
    duration: Family<CauseLabels, Histogram, fn() -> Histogram>,
    wait: Histogram,
}

impl Default for LoadMetrics {
    fn default() -> Self {
        Self {
            loads: Family::default(),
            failures: Family::default(),
            evictions: Family::default(),
            duration: Family::new_with_constructor(seconds_histogram as fn() -> Histogram),
            wait: seconds_histogram(),
        }
    }
}

impl LoadMetrics {
    /// A version loaded, for `cause` (`startup`, `request`, `reload`, `dependency`), in `took`.
    pub fn loaded(&self, model: &str, version: &str, cause: &'static str, took: Duration) {
        let labels = LoadLabels { model: model.to_string(), version: version.to_string(), cause };
        self.loads.get_or_create(&labels).inc();
        self.duration.get_or_create(&CauseLabels { cause }).observe(took.as_secs_f64());
    }

    /// A version's load, for `cause`, failed.
    pub fn failed(&self, model: &str, version: &str, cause: &'static str) {
        let labels = LoadLabels { model: model.to_string(), version: version.to_string(), cause };
        self.failures.get_or_create(&labels).inc();
    }

    /// A version was taken out of memory.
    pub fn evicted(&self, model: &str, version: &str, reason: &'static str) {
        let labels = EvictionLabels { model: model.to_string(), version: version.to_string(), reason };
        self.evictions.get_or_create(&labels).inc();
    }

    /// A request waited this long for its model's load.
    pub fn waited(&self, took: Duration) {
        self.wait.observe(took.as_secs_f64());
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    model: String,
    version: String,
    code: u16,
}

type Histograms = Family<ModelLabels, Histogram, fn() -> Histogram>;

fn seconds_histogram() -> Histogram {
    // 100 µs to about 13 s.
    Histogram::new(exponential_buckets(1e-4, 2.0, 18))
}

fn rows_histogram() -> Histogram {
    // 1 to 1024 rows.
    Histogram::new(exponential_buckets(1.0, 2.0, 11))
}

fn tokens_histogram() -> Histogram {
    // 16 to 65,536 tokens.
    Histogram::new(exponential_buckets(16.0, 2.0, 13))
}

/// The server's metrics.
pub struct Metrics {
    registry: Registry,
    success: Family<ModelLabels, Counter>,
    failure: Family<FailureLabels, Counter>,
    inferences: Family<ModelLabels, Counter>,
    executions: Family<ModelLabels, Counter>,
    pending: Family<ModelLabels, Gauge>,
    cancelled: Family<ModelLabels, Counter>,
    request: Histograms,
    queue: Histograms,
    preprocess: Histograms,
    compute: Histograms,
    postprocess: Histograms,
    batch_rows: Histograms,
    batch_tokens: Histograms,
    ready: Family<ModelLabels, Gauge>,
    load: Family<ModelLabels, Gauge<f64, AtomicU64>>,
    routed: Family<RouteLabels, Counter>,
    connections: ConnectionMetrics,
    resident: Family<ModelLabels, Gauge>,
    resident_total: Gauge,
    budget: Gauge,
    statistics: Statistics,
    payloads: PayloadMetrics,
    generation: GenerationMetrics,
}

impl Metrics {
    /// The server's metrics, with the repository's load counters among them.
    pub fn new(loads: &LoadMetrics) -> Self {
        let histograms = || Histograms::new_with_constructor(seconds_histogram as fn() -> Histogram);
        let mut registry = Registry::with_prefix("wasmserve");
        let generation = GenerationMetrics::register(&mut registry);
        let mut m = Self {
            registry,
            generation,
            success: Family::default(),
            failure: Family::default(),
            inferences: Family::default(),
            executions: Family::default(),
            pending: Family::default(),
            cancelled: Family::default(),
            request: histograms(),
            queue: histograms(),
            preprocess: histograms(),
            compute: histograms(),
            postprocess: histograms(),
            batch_rows: Histograms::new_with_constructor(rows_histogram as fn() -> Histogram),
            batch_tokens: Histograms::new_with_constructor(tokens_histogram as fn() -> Histogram),
            ready: Family::default(),
            load: Family::default(),
            routed: Family::default(),
            connections: ConnectionMetrics::default(),
            resident: Family::default(),
            resident_total: Gauge::default(),
            budget: Gauge::default(),
            statistics: Default::default(),
            payloads: Default::default(),
        };
        let r = &mut m.registry;
        r.register("inference_request_success", "Inference requests answered 200", m.success.clone());
        r.register(
            "inference_request_failure",
            "Inference requests that failed, by HTTP status",
            m.failure.clone(),
        );
        r.register("inference_count", "Inferences performed (batch rows)", m.inferences.clone());
        r.register("inference_exec_count", "Graph runs (a batch of requests is one)", m.executions.clone());
        r.register("inference_pending_requests", "Inference requests in the server now", m.pending.clone());
        r.register(
            "inference_request_cancelled",
            "Inference requests whose client went away before the answer",
            m.cancelled.clone(),
        );
        r.register("request_duration_seconds", "Whole inference request", m.request.clone());
        r.register(
            "queue_duration_seconds",
            "Waiting for a slot, a worker thread and a free execution (and a batch to form)",
            m.queue.clone(),
        );
        r.register(
            "preprocess_duration_seconds",
            "Plugin preprocess, instance creation included",
            m.preprocess.clone(),
        );
        r.register("compute_duration_seconds", "Graph inference", m.compute.clone());
        r.register("postprocess_duration_seconds", "Plugin postprocess", m.postprocess.clone());
        r.register(
            "batch_rows",
            "Rows in the graph run that served the request (the whole batch's with batching)",
            m.batch_rows.clone(),
        );
        r.register(
            "batch_tokens",
            "With [batching] pad: rows times the longest length in the graph run that served the request",
            m.batch_tokens.clone(),
        );
        r.register("model_ready", "1 when the model version is loaded and warmed up", m.ready.clone());
        r.register("model_load_duration_seconds", "From reading the config to ready", m.load.clone());
        r.register("route_requests", "Requests a route sent to a variant or its shadow", m.routed.clone());
        let c = &m.connections;
        r.register("connections_open", "Client connections open now", c.open.clone());
        r.register(
            "connections_refused",
            "Connections closed at accept because --max-connections were open",
            c.refused.clone(),
        );
        r.register(
            "connections_timed_out",
            "Connections closed by a deadline: headers (--header-timeout-secs) or idle (--idle-timeout-secs)",
            c.timed_out.clone(),
        );
        r.register(
            "request_memory_refused",
            "Requests refused because those in flight held --request-memory-mib (503) or it could never hold them (413)",
            c.memory_refused.clone(),
        );
        r.register(
            "request_memory_bytes",
            "What the request bodies in flight are charged against --request-memory-mib now",
            c.request_memory.clone(),
        );
        r.register("model_loads", "Model versions loaded, by cause", loads.loads.clone());
        r.register(
            "model_load_failures",
            "Model version loads that failed, by cause",
            loads.failures.clone(),
        );
        r.register(
            "model_evictions",
            "Model versions taken out of memory, by reason",
            loads.evictions.clone(),
        );
        r.register("model_load_seconds", "One model version's load, config to ready", loads.duration.clone());
        r.register(
            "model_load_wait_seconds",
            "How long requests waited for their model's on-demand load (however the wait ended)",
            loads.wait.clone(),
        );
        r.register(
            "model_resident_bytes",
            "What a loaded model version is charged against --model-memory-mib",
            m.resident.clone(),
        );
        r.register(
            "models_resident_bytes",
            "What loaded model versions are charged together",
            m.resident_total.clone(),
        );
        r.register(
            "model_memory_budget_bytes",
            "--model-memory-mib in bytes (0: no budget)",
            m.budget.clone(),
        );
        m.payloads.register(r);
        m
    }
}

/// One model version's gauges, as `/metrics` reads them.
pub struct VersionGauges {
    /// The model's name.
    pub model: String,
    /// Its version (empty for a model directory that cannot be served at all).
    pub version: String,
    /// Ready to serve: how long its load took (config to ready); none while not ready.
    pub loaded: Option<Duration>,
    /// What it is charged against the model memory budget now.
    pub resident_bytes: u64,
    /// A generative model's engine, read now.
    pub engine: Option<EngineGauges>,
}

/// Tracks one inference request from its start; records when finished, or as cancelled
/// when dropped unfinished (its client went away).
pub struct RequestTimer {
    metrics: Arc<Metrics>,
    labels: ModelLabels,
    started: std::time::Instant,
    finished: bool,
}

impl Drop for RequestTimer {
    fn drop(&mut self) {
        if !self.finished {
            self.metrics.pending.get_or_create(&self.labels).dec();
            self.metrics.cancelled.get_or_create(&self.labels).inc();
        }
    }
}

impl Metrics {
    /// Count a request to `model` as pending until [`RequestTimer::finish`]. The timer holds
    /// the metrics, so it may outlive the caller (an answer streamed in parts).
    pub fn start(self: &Arc<Self>, model: &str, version: &str) -> RequestTimer {
        let labels = ModelLabels { model: model.to_string(), version: version.to_string() };
        self.pending.get_or_create(&labels).inc();
        RequestTimer { metrics: self.clone(), labels, started: std::time::Instant::now(), finished: false }
    }

    /// The same requests as Triton's statistics extension counts them.
    pub fn statistics(&self) -> &Statistics {
        &self.statistics
    }

    /// The generation metrics.
    pub fn generation(&self) -> &GenerationMetrics {
        &self.generation
    }

    /// The payload logger's counters.
    pub fn payloads(&self) -> PayloadMetrics {
        self.payloads.clone()
    }

    /// The connection counters, for the listener.
    pub fn connections(&self) -> ConnectionMetrics {
        self.connections.clone()
    }

    /// The text exposition, with the model gauges set from `models` (every version the
    /// repository has now) and the model memory `budget` in bytes (0: none).
    pub fn encode(&self, models: impl IntoIterator<Item = VersionGauges>, budget: u64) -> String {
        let mut total = 0;
        for version in models {
            let label = ModelLabels { model: version.model, version: version.version };
            self.ready.get_or_create(&label).set(i64::from(version.loaded.is_some()));
            if let Some(load) = version.loaded {
                self.load.get_or_create(&label).set(load.as_secs_f64());
            }
            self.resident.get_or_create(&label).set(version.resident_bytes as i64);
            if let Some(engine) = &version.engine {
                self.generation.engine(&label.model, &label.version, engine);
            }
            total += version.resident_bytes;
        }
        self.resident_total.set(total as i64);
        self.budget.set(budget as i64);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String");
        out
    }
}

impl Metrics {
    /// A route sent a request to `variant` (`shadow`: a copy to its shadow) and got `code`.
    pub fn routed(&self, route: &str, variant: &str, shadow: bool, code: u16) {
        let role = if shadow { "shadow" } else { "served" };
        let labels = RouteLabels { route: route.to_string(), variant: variant.to_string(), role, code };
        self.routed.get_or_create(&labels).inc();
    }
}

impl RequestTimer {
    /// The request ended: answered, with its stage timings and row count, or failed.
    /// Returns the HTTP status it ended with.
    pub fn finish(mut self, outcome: Result<(&Timings, u64), &crate::error::Error>) -> u16 {
        self.finished = true;
        let (status, done) = match outcome {
            Ok(done) => (200, Some(done)),
            Err(e) => (e.status().as_u16(), None),
        };
        let m = &self.metrics;
        let labels = &self.labels;
        m.pending.get_or_create(labels).dec();
        let elapsed = self.started.elapsed();
        m.request.get_or_create(labels).observe(elapsed.as_secs_f64());
        m.statistics.record(&labels.model, &labels.version, elapsed, done);
        if status == 200 {
            m.success.get_or_create(labels).inc();
        } else {
            let failure =
                FailureLabels { model: labels.model.clone(), version: labels.version.clone(), code: status };
            m.failure.get_or_create(&failure).inc();
        }
        if let Some((t, rows)) = done {
            m.inferences.get_or_create(labels).inc_by(rows);
            m.executions.get_or_create(labels).inc_by(t.graph_runs);
            let observe = |h: &Histograms, d: Duration| h.get_or_create(labels).observe(d.as_secs_f64());
            observe(&m.queue, t.queue);
            observe(&m.preprocess, t.preprocess);
            observe(&m.compute, t.compute);
            observe(&m.postprocess, t.postprocess);
            m.batch_rows.get_or_create(labels).observe(t.batch_rows as f64);
            if t.batch_tokens > 0 {
                m.batch_tokens.get_or_create(labels).observe(t.batch_tokens as f64);
            }
        }
        status
    }
}
