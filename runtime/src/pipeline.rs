//! pipeline: one inference request as every front end runs it (REST in `server`, gRPC in
//! `grpc`, offline in `offline`), around the protocol's decode and encode: the shared
//! state, the target (model, or a route's variant and shadow), the request's span, metrics
//! and logged failure (`AppState::observed`), and the run itself (`run`: output
//! selection checked, then schedule).

use crate::config::{ModelConfig, RouteConfig, Variant};
use crate::decode;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::repository::{Model, Repository};
use crate::schedule::{self, Timings};
use axum::http::{HeaderMap, StatusCode};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tracing::Instrument;

/// When `/v2/health/ready` says yes.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum ReadyWhen {
    /// Every model is ready (the default: a pod takes traffic only when it can serve it all).
    All,
    /// At least one model is ready.
    Any,
}

/// What every front end shares: the repository, the metrics, the server's settings.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

struct Inner {
    repository: Arc<Repository>,
    /// The bearer token the control endpoints require; none: control is off.
    control_token: Option<String>,
    metrics: Metrics,
    max_body_bytes: usize,
    /// The largest BYTES element a model without its own `[limits]` takes.
    max_bytes_element: usize,
    ready_when: ReadyWhen,
    draining: AtomicBool,
    payloads: crate::payloads::Payloads,
}

impl AppState {
    /// State over a repository whose models may still be loading; `control_token` opens the
    /// control endpoints to requests that carry it; `max_bytes_element` is the BYTES element
    /// limit of models that set none; `payloads`: the payload logging defaults (its sender
    /// starts on the current tokio runtime).
    pub fn new(
        repository: Arc<Repository>,
        max_body_bytes: usize,
        max_bytes_element: usize,
        ready_when: ReadyWhen,
        control_token: Option<String>,
        payloads: crate::payloads::Settings,
    ) -> Self {
        let metrics = Metrics::new(repository.load_metrics());
        let payloads = crate::payloads::Payloads::new(payloads, metrics.payloads());
        Self(Arc::new(Inner {
            metrics,
            payloads,
            repository,
            control_token,
            max_body_bytes,
            max_bytes_element,
            ready_when,
            draining: AtomicBool::new(false),
        }))
    }

    /// The models served.
    pub(crate) fn repository(&self) -> &Arc<Repository> {
        &self.0.repository
    }

    /// What the server counts.
    pub(crate) fn metrics(&self) -> &Metrics {
        &self.0.metrics
    }

    /// The payload logger.
    pub(crate) fn payloads(&self) -> &crate::payloads::Payloads {
        &self.0.payloads
    }

    /// The largest request body (REST) or message (gRPC) accepted.
    pub(crate) fn max_body_bytes(&self) -> usize {
        self.0.max_body_bytes
    }

    /// The limits on one request's inputs to a model with `config`.
    pub(crate) fn input_limits(&self, config: &ModelConfig) -> crate::config::InputLimits {
        config.input_limits(self.0.max_bytes_element)
    }

    /// The bearer token the control endpoints require; none: control is off.
    pub(crate) fn control_token(&self) -> Option<&str> {
        self.0.control_token.as_deref()
    }

    /// The server is shutting down: readiness turns false from now on.
    pub fn drain(&self) {
        self.0.draining.store(true, Ordering::SeqCst);
    }

    /// What `/v2/health/ready` answers.
    pub fn ready(&self) -> bool {
        !self.0.draining.load(Ordering::SeqCst)
            && self.0.repository.ready(self.0.ready_when == ReadyWhen::All)
    }

    /// The route a request's path names, if it names one (a route has no versions).
    pub(crate) fn route(&self, path: &ModelPath) -> Result<Option<Arc<RouteConfig>>> {
        match self.0.repository.route(&path.model) {
            Some(_) if path.version.is_some() => {
                Err(Error::NotFound(format!("'{}' is a route: it has no versions", path.model)))
            }
            route => Ok(route),
        }
    }

    /// Whether the model a request's path names (a route: its variants) can serve now or
    /// once loaded on demand: what model readiness answers. Loads nothing.
    pub(crate) fn model_ready(&self, path: &ModelPath) -> Result<()> {
        let repository = &self.0.repository;
        let Some(route) = self.route(path)? else {
            return repository.servable(&path.model, path.version.as_deref());
        };
        route.variants.iter().try_for_each(|v| repository.servable(&v.model, v.version.as_deref()))
    }

    /// What the model a request's path names declares (a route: the variant it picks, as
    /// for a request without headers), and that model's name. Loads nothing (see
    /// [`Repository::declared`]): metadata and configuration answer from it.
    pub(crate) fn declared(&self, path: &ModelPath) -> Result<(String, Arc<ModelConfig>)> {
        let (name, version) = match self.route(path)? {
            Some(route) => {
                let variant = pick(&path.model, &route, &HeaderMap::new());
                (variant.model.clone(), variant.version.clone())
            }
            None => (path.model.clone(), path.version.clone()),
        };
        let config = self.0.repository.declared(&name, version.as_deref())?;
        Ok((name, config))
    }

    /// Where an inference request goes: the model its path names or, when the name is a
    /// route, the variant the route picks (by the sticky header's value, else at random by
    /// weight) and the shadow that gets a copy. A model loaded on demand is loaded first
    /// (the request waits for it).
    pub(crate) async fn target(&self, path: &ModelPath, headers: &HeaderMap) -> Result<Target> {
        let repository = &self.0.repository;
        let Some(route) = self.route(path)? else {
            let (model, waited) = repository.acquire(&path.model, path.version.as_deref()).await?;
            return Ok(Target { model, waited, routed: None });
        };
        let variant = pick(&path.model, &route, headers);
        let (model, waited) = repository.acquire(&variant.model, variant.version.as_deref()).await?;
        let shadow = route.shadow.clone();
        let variant = crate::config::target_label(&variant.model, variant.version.as_deref());
        Ok(Target { model, waited, routed: Some(Routed { route: path.model.clone(), variant, shadow }) })
    }
}

/// The variant of `route` (called `name`) a request goes to: by the sticky header's value
/// when the request carries it, else at random by weight.
fn pick<'a>(name: &str, route: &'a RouteConfig, headers: &HeaderMap) -> &'a Variant {
    let sticky = route.sticky_header.as_deref().and_then(|h| headers.get(h));
    let draw = match sticky {
        // The same value picks the same variant on every replica and after restarts.
        Some(value) => {
            use sha2::Digest;
            let digest = sha2::Sha256::new().chain_update(name).chain_update([0]).chain_update(value);
            u64::from_le_bytes(digest.finalize()[..8].try_into().expect("8 bytes"))
        }
        None => fastrand::u64(..),
    };
    route.pick(draw)
}

/// The model that answers a request, and the route that chose it, if one did.
pub(crate) struct Target {
    pub(crate) model: Arc<Model>,
    /// How long the request waited for the model's on-demand load, if it did.
    pub(crate) waited: Option<std::time::Duration>,
    pub(crate) routed: Option<Routed>,
}

/// A route's choice for one request.
pub(crate) struct Routed {
    route: String,
    /// The variant that answers, as responses and metrics name it.
    pub(crate) variant: String,
    shadow: Option<crate::config::RouteTarget>,
}

impl Target {
    /// The variant that answers, for the response's parameters.
    pub(crate) fn variant(&self) -> Option<&str> {
        self.routed.as_ref().map(|r| r.variant.as_str())
    }

    /// Send a copy of `request` to the route's shadow, if it has one: it runs beside the
    /// answer, counted and logged, and whatever it answers goes nowhere else.
    pub(crate) fn shadow(&self, state: &AppState, request: &decode::InferRequest) {
        let Some(Routed { route, shadow: Some(shadow), .. }) = &self.routed else { return };
        let label = crate::config::target_label(&shadow.model, shadow.version.as_deref());
        let (state, route, shadow) = (state.clone(), route.clone(), shadow.clone());
        let (inputs, params) = (request.inputs.clone(), request.params.clone());
        let rows = rows(&inputs);
        tokio::spawn(async move {
            // A shadow loaded on demand is loaded for its copy, off the answer's path.
            let model = match state.0.repository.acquire(&shadow.model, shadow.version.as_deref()).await {
                Ok((model, _)) => model,
                Err(e) => {
                    tracing::debug!(route = %route, shadow = %label, "no copy to the shadow: {e}");
                    return;
                }
            };
            let started = std::time::Instant::now();
            let timer = state.0.metrics.start(&model.name, &model.config.version);
            let answer = schedule::run(model.clone(), inputs, params).await;
            let elapsed_ms = started.elapsed().as_millis() as u64;
            let code = timer.finish(answer.as_ref().map(|(_, timings)| (timings, rows)));
            match &answer {
                Ok((outputs, _)) => {
                    let shapes: Vec<String> =
                        outputs.iter().map(|t| format!("{} {:?}", t.name, t.shape)).collect();
                    tracing::info!(route = %route, shadow = %label, elapsed_ms, outputs = ?shapes, "shadow answered");
                }
                Err(e) => tracing::warn!(route = %route, shadow = %label, elapsed_ms, "shadow failed: {e}"),
            }
            state.0.metrics.routed(&route, &label, true, code);
        });
    }
}

/// `{model}` and, on the versioned routes, `{version}`.
#[derive(serde::Deserialize)]
pub(crate) struct ModelPath {
    pub(crate) model: String,
    pub(crate) version: Option<String>,
}

/// The header that carries a request's id; a client's own is kept, else one is made.
pub const REQUEST_ID: &str = "x-request-id";

/// A request's id: the client's own (the request's `id` field, else the `x-request-id`
/// header) when it is sensible, else a new random UUID. Its bits come from a per-thread
/// generator seeded once, not from the kernel per request (a system call on every request,
/// for an id that needs to be unique, not secret).
pub(crate) fn request_id(id: Option<&str>, headers: &HeaderMap) -> String {
    id.filter(|v| !v.is_empty())
        .or_else(|| headers.get(REQUEST_ID).and_then(|v| v.to_str().ok()))
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map_or_else(
            || uuid::Builder::from_random_bytes(fastrand::u128(..).to_le_bytes()).into_uuid().to_string(),
            str::to_string,
        )
}

impl AppState {
    /// One inference request as both protocols run it: in its span (joined to the caller's
    /// trace), counted in the metrics, its failure logged. `work` gets the model and returns
    /// the answer with the stage timings and the number of inferences (rows).
    pub(crate) async fn observed<R>(
        &self,
        path: &ModelPath,
        id: &str,
        headers: &HeaderMap,
        work: impl AsyncFnOnce(&Target) -> Result<(R, Timings, u64)>,
    ) -> Result<R> {
        let span = tracing::info_span!("request", id = %id, model = %path.model,
            otel.name = %format_args!("infer {}", path.model), otel.kind = "server",
            http.response.status_code = tracing::field::Empty);
        crate::telemetry::join_remote_trace(&span, headers);
        let answer = async {
            let target = self.target(path, headers).await?;
            let model = &target.model;
            let timer = self.0.metrics.start(&model.name, &model.config.version);
            let result = work(&target).await;
            let code = timer.finish(result.as_ref().map(|(_, timings, rows)| (timings, *rows)));
            if let Some(routed) = &target.routed {
                self.0.metrics.routed(&routed.route, &routed.variant, false, code);
            }
            result.map(|(answer, ..)| answer)
        }
        .instrument(span.clone())
        .await;
        let status = match &answer {
            Ok(_) => StatusCode::OK,
            Err(e) => {
                span.in_scope(|| e.log());
                e.status()
            }
        };
        span.record("http.response.status_code", i64::from(status.as_u16()));
        answer
    }
}

/// The request's checked outputs, then schedule (plugin, graph, plugin); with the stage
/// timings and the number of inferences (rows of the first input) for the metrics.
pub(crate) async fn run(
    model: &Arc<Model>,
    request: &mut decode::InferRequest,
) -> Result<(Vec<crate::tensor::Tensor>, Timings, u64)> {
    request.check_outputs(&model.config.outputs)?;
    let inputs = std::mem::take(&mut request.inputs);
    let rows = rows(&inputs);
    let params = std::mem::take(&mut request.params);
    let (outputs, timings) = schedule::run(model.clone(), inputs, params).await?;
    Ok((outputs, timings, rows))
}

/// A REST body (the OIP's and OpenAI's), up to `--max-body-mib`: refused on its declared length before anything is
/// read, and chunked bodies stop at the limit.
pub(crate) async fn read_body(
    state: &AppState,
    headers: &HeaderMap,
    body: axum::body::Body,
) -> Result<bytes::Bytes> {
    let limit = state.max_body_bytes();
    let too_large =
        || Error::TooLarge(format!("request body is larger than {limit} bytes (see --max-body-mib)"));
    let declared =
        headers.get(axum::http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        // `listen` puts a deadline between the body's parts.
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(error) = source {
            if error.is::<tower_http::timeout::TimeoutError>() {
                return Error::Timeout("the request body stopped arriving (see --body-timeout-secs)".into());
            }
            // `budget` refuses a chunked body past --request-memory-mib.
            if let Some(status) = error.downcast_ref::<tonic::Status>() {
                let message = status.message().to_string();
                return match status.code() {
                    tonic::Code::ResourceExhausted => Error::TooLarge(message),
                    _ => Error::OverBudget(message),
                };
            }
            source = error.source();
        }
        too_large()
    })
}

/// Inferences a request asks for: the rows (dimension 0) of its first input.
fn rows(inputs: &[crate::tensor::Tensor]) -> u64 {
    inputs.first().and_then(|t| t.shape.first()).map_or(1, |&d| d.max(0) as u64)
}
