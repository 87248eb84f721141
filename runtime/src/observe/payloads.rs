//! payloads: inference payload logging as KServe's logger does it, for the audit, drift and
//! monitoring tools that consume its events.
//!
//! For each sampled inference request (REST `/v2/.../infer` and OpenAI `/v1/embeddings`),
//! two CloudEvents go to the model's sink in HTTP binary mode: the request as the client
//! sent it and the response as it received it (errors included), sharing one `ce-id` (the
//! request's id), with KServe's types `org.kubeflow.serving.inference.request` and
//! `.response` and its attributes (`ce-inferenceservicename`, `ce-endpoint`, `ce-namespace`,
//! `ce-component`), plus `ce-modelname`, `ce-modelversion`, `ce-statuscode` (responses) and
//! `ce-metadata` (the request's headers as JSON, those in `--payload-log-exclude-headers`
//! left out). A binary-extension body keeps its `Inference-Header-Content-Length` header.
//!
//! Events leave from a bounded queue on their own tasks: a request only queues its events,
//! so a slow or dead sink never slows or fails an inference. An event that does not fit the
//! queue (`--payload-log-queue-mib`) is dropped and counted (`wasmserve_payload_events_total
//! {outcome="dropped"}`, and a warning at most every 10 s); a send that fails is tried again
//! after 0.5, 1 and 2 s, then counted as `failed`.

use crate::config::{LogMode, Logger};
use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use axum::response::Response;
use bytes::Bytes;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, mpsc};

/// Who a request is, as its events name it: the name the client asked for (a model or a
/// route), the route's choice (the variant that answers), the request's id.
#[derive(Clone, Copy)]
pub struct Call<'a> {
    /// The model or route the client named.
    pub requested: &'a str,
    /// The route's variant that answers, if a route chose.
    pub variant: Option<&'a str>,
    /// The request's id.
    pub id: &'a str,
}

/// The server-wide payload logging settings (`--payload-log-*`), which a model's `[logger]`
/// overrides.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The default sink; none: only models with their own `[logger] url` log.
    pub url: Option<String>,
    /// What to log by default.
    pub mode: LogMode,
    /// The share of requests logged by default.
    pub sample_rate: f64,
    /// Most bytes of event bodies waiting to be sent.
    pub queue_bytes: usize,
    /// Request headers never put in an event (lower case).
    pub exclude_headers: Vec<String>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// What payload logging counts (handles into the server's metrics).
#[derive(Clone, Default)]
pub struct PayloadMetrics {
    events: Family<OutcomeLabels, Counter>,
    queued: Gauge,
}

impl PayloadMetrics {
    /// Registers the counters under the server's registry.
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "payload_events",
            "Payload log events by outcome: sent, dropped (the queue was full), failed (after retries)",
            self.events.clone(),
        );
        registry.register(
            "payload_queue_bytes",
            "Bytes of payload log events waiting to be sent",
            self.queued.clone(),
        );
    }

    fn count(&self, outcome: &'static str) {
        self.events.get_or_create(&OutcomeLabels { outcome }).inc();
    }
}

/// One event on its way to a sink.
struct Event {
    url: Arc<str>,
    headers: HeaderMap,
    body: Bytes,
}

/// The payload logger: decides per request, queues events, sends them.
pub struct Payloads {
    settings: Settings,
    queue: mpsc::UnboundedSender<Event>,
    /// Bytes queued or being sent now.
    queued: Arc<AtomicU64>,
    metrics: PayloadMetrics,
    /// When the last "dropped" warning was logged (ms since `started`).
    warned: AtomicU64,
    started: Instant,
    /// `ce-source`: this server.
    source: HeaderValue,
    namespace: Option<HeaderValue>,
}

/// Sends at once to the sinks, at most.
const SENDERS: usize = 16;
/// Longest one send may take.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);
/// Waits before the second, third and fourth tries of a failed send.
const RETRIES: [Duration; 3] = [Duration::from_millis(500), Duration::from_secs(1), Duration::from_secs(2)];

impl Payloads {
    /// The logger, its sender running on the current tokio runtime.
    pub fn new(settings: Settings, metrics: PayloadMetrics) -> Self {
        let (queue, events) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicU64::new(0));
        tokio::spawn(send_all(events, queued.clone(), metrics.clone()));
        let host = std::env::var("HOSTNAME")
            .ok()
            .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".into());
        let source = HeaderValue::try_from(format!("wasmserve://{host}"))
            .unwrap_or(HeaderValue::from_static("wasmserve://localhost"));
        let namespace = std::env::var("POD_NAMESPACE").ok().and_then(|n| HeaderValue::try_from(n).ok());
        Self {
            settings,
            queue,
            queued,
            metrics,
            warned: AtomicU64::new(0),
            started: Instant::now(),
            source,
            namespace,
        }
    }

    /// Whether this request to `model` at `version`, whose config has `logger`, is logged;
    /// if so, its request event (`body` as the client sent it) is queued now, and what is
    /// returned logs the response ([`respond`]). `call` names the request: the name the
    /// client asked for (a model or a route), the route's choice, the request's id.
    pub fn request(
        self: &Arc<Self>,
        logger: &Logger,
        (model, version): (&str, &str),
        call: Call<'_>,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Option<Logged> {
        let Call { requested, variant, id } = call;
        let Logger { url, mode, sample_rate } = logger;
        let url = url.as_deref().or(self.settings.url.as_deref())?;
        let mode = mode.unwrap_or(self.settings.mode);
        let rate = sample_rate.unwrap_or(self.settings.sample_rate);
        if rate <= 0.0 || (rate < 1.0 && fastrand::f64() >= rate) {
            return None;
        }
        let mut attributes = HeaderMap::new();
        let mut set = |name: &'static str, value: &str| {
            if let Ok(value) = HeaderValue::try_from(value) {
                attributes.insert(HeaderName::from_static(name), value);
            }
        };
        set("ce-specversion", "1.0");
        set("ce-id", id);
        set("ce-inferenceservicename", requested);
        set("ce-modelname", model);
        set("ce-modelversion", version);
        set("ce-endpoint", variant.unwrap_or("default"));
        set("ce-component", "predictor");
        set("ce-metadata", &self.metadata(headers));
        attributes.insert(HeaderName::from_static("ce-source"), self.source.clone());
        if let Some(namespace) = &self.namespace {
            attributes.insert(HeaderName::from_static("ce-namespace"), namespace.clone());
        }
        let logged = Logged { payloads: self.clone(), url: url.into(), mode, attributes };
        if mode.requests() {
            logged.send("org.kubeflow.serving.inference.request", None, body, headers);
        }
        Some(logged)
    }

    /// The request's headers as a JSON object (name to list of values), without the
    /// excluded ones and the ones an event sets itself.
    fn metadata(&self, headers: &HeaderMap) -> String {
        let mut kept = serde_json::Map::new();
        for name in headers.keys() {
            let excluded = self.settings.exclude_headers.iter().any(|e| e == name.as_str())
                || name == header::CONTENT_LENGTH
                || name == header::CONTENT_TYPE
                || name.as_str() == crate::decode::HEADER_LENGTH;
            if excluded {
                continue;
            }
            let values: Vec<_> = headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).collect();
            kept.insert(name.to_string(), serde_json::json!(values));
        }
        serde_json::Value::Object(kept).to_string()
    }

    fn enqueue(&self, event: Event) {
        let size = event_size(&event);
        let fits = self
            .queued
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |q| {
                (q + size <= self.settings.queue_bytes as u64).then_some(q + size)
            })
            .is_ok();
        if !fits {
            return self.dropped("the queue is full (--payload-log-queue-mib)");
        }
        self.metrics.queued.set(self.queued.load(Ordering::SeqCst) as i64);
        if self.queue.send(event).is_err() {
            self.queued.fetch_sub(size, Ordering::SeqCst);
            self.dropped("the sender has stopped");
        }
    }

    fn dropped(&self, why: &str) {
        self.metrics.count("dropped");
        let now = self.started.elapsed().as_millis() as u64;
        let last = self.warned.load(Ordering::Relaxed);
        if (last == 0 || now >= last + 10_000)
            && self.warned.compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            tracing::warn!(
                "payload log events dropped: {why}; wasmserve_payload_events_total{{outcome=\"dropped\"}} counts them"
            );
        }
    }
}

/// One logged request's events.
pub struct Logged {
    payloads: Arc<Payloads>,
    url: Arc<str>,
    mode: LogMode,
    attributes: HeaderMap,
}

/// The response as the client receives it (an error's too), logged if its request was,
/// and handed back unchanged.
pub async fn respond(logged: Option<Logged>, response: Response) -> Response {
    match logged {
        Some(log) => log.response(response).await,
        None => response,
    }
}

impl Logged {
    /// Log `body`, a response sent in parts (a streamed generation), as the whole it adds up to.
    pub fn whole_response(&self, status: u16, body: Bytes) {
        if self.mode.responses() {
            let json =
                HeaderMap::from_iter([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))]);
            self.send("org.kubeflow.serving.inference.response", Some(status), body, &json);
        }
    }

    async fn response(&self, response: Response) -> Response {
        if !self.mode.responses() {
            return response;
        }
        let (parts, body) = response.into_parts();
        // The server's answers are whole in memory already: this takes them as they are.
        let Ok(body) = axum::body::to_bytes(body, usize::MAX).await else {
            return Response::from_parts(parts, Body::empty());
        };
        let kind = "org.kubeflow.serving.inference.response";
        self.send(kind, Some(parts.status.as_u16()), body.clone(), &parts.headers);
        Response::from_parts(parts, Body::from(body))
    }

    fn send(&self, kind: &'static str, status: Option<u16>, body: Bytes, message: &HeaderMap) {
        let mut headers = self.attributes.clone();
        headers.insert(HeaderName::from_static("ce-type"), HeaderValue::from_static(kind));
        let time = humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string();
        headers.insert(HeaderName::from_static("ce-time"), HeaderValue::try_from(time).expect("ASCII"));
        if let Some(status) = status {
            headers.insert(HeaderName::from_static("ce-statuscode"), HeaderValue::from(status));
        }
        let content_type = message.get(header::CONTENT_TYPE).cloned().unwrap_or_else(|| {
            let binary = message.contains_key(crate::decode::HEADER_LENGTH);
            HeaderValue::from_static(if binary { "application/octet-stream" } else { "application/json" })
        });
        headers.insert(header::CONTENT_TYPE, content_type);
        if let Some(length) = message.get(crate::decode::HEADER_LENGTH) {
            headers.insert(HeaderName::from_static(crate::decode::HEADER_LENGTH), length.clone());
        }
        self.payloads.enqueue(Event { url: self.url.clone(), headers, body });
    }
}

/// What an event is charged against the queue: its body and about what its headers take.
fn event_size(event: &Event) -> u64 {
    (event.body.len() + 1024) as u64
}

/// Sends queued events, [`SENDERS`] at once, each tried up to four times.
async fn send_all(
    mut events: mpsc::UnboundedReceiver<Event>,
    queued: Arc<AtomicU64>,
    metrics: PayloadMetrics,
) {
    let client = match reqwest::Client::builder().timeout(SEND_TIMEOUT).build() {
        Ok(client) => client,
        Err(e) => return tracing::error!("payload logging is off: no HTTP client: {e}"),
    };
    let senders = Arc::new(Semaphore::new(SENDERS));
    while let Some(event) = events.recv().await {
        let permit = senders.clone().acquire_owned().await.expect("never closed");
        let (client, queued, metrics) = (client.clone(), queued.clone(), metrics.clone());
        tokio::spawn(async move {
            let size = event_size(&event);
            let outcome = send(&client, &event).await;
            if let Err(e) = &outcome {
                tracing::debug!(sink = %event.url, "payload log event not delivered: {e}");
            }
            metrics.count(if outcome.is_ok() { "sent" } else { "failed" });
            metrics.queued.set(queued.fetch_sub(size, Ordering::SeqCst).saturating_sub(size) as i64);
            drop(permit);
        });
    }
}

async fn send(client: &reqwest::Client, event: &Event) -> Result<(), String> {
    let mut waits = RETRIES.iter();
    loop {
        let sent =
            client.post(&*event.url).headers(event.headers.clone()).body(event.body.clone()).send().await;
        let error = match sent {
            Ok(answer) if answer.status().is_success() => return Ok(()),
            // The sink refused this event: sending it again would not help.
            Ok(answer) if answer.status().is_client_error() => {
                return Err(format!("the sink answered {}", answer.status()));
            }
            Ok(answer) => format!("the sink answered {}", answer.status()),
            Err(e) => e.to_string(),
        };
        match waits.next() {
            Some(wait) => tokio::time::sleep(*wait).await,
            None => return Err(error),
        }
    }
}
