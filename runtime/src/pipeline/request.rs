//! request: one inference through the pipeline, from what a front end hands over to the
//! answer it encodes.

use super::target::{Routed, Target};
use super::{AppState, ModelPath};
use crate::config::InputLimits;
use crate::decode::{self, HEADER_LENGTH, InferRequest};
use crate::error::{Error, Result};
use crate::observe::Timings;
use crate::observe::metrics::{Metrics, RequestTimer};
use crate::observe::payloads::{Call, Logged};
use crate::repository::Model;
use crate::schedule;
use crate::tensor::Tensor;
use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

/// One inference request as a front end hands it over.
pub(crate) struct Inference<'a> {
    /// The model (or route) and version it names.
    pub(crate) path: ModelPath,
    /// Its id (see `front::http::request_id`).
    pub(crate) id: &'a str,
    /// Its headers (gRPC: metadata): a route's sticky header, the caller's trace, REST's
    /// `Inference-Header-Content-Length`.
    pub(crate) headers: &'a HeaderMap,
    /// What it carries.
    pub(crate) payload: Payload,
    /// The body as the client sent it, for payload logging; none: not logged.
    pub(crate) logged_body: Option<Bytes>,
}

/// What a request carries, before it meets its model.
pub(crate) enum Payload {
    /// A REST body: JSON, JSON and binary tensors, or raw data (by its
    /// `Inference-Header-Content-Length`); or why it could not be read.
    Body(Result<Bytes>),
    /// Tensors already (gRPC, OpenAI), checked against the model's inputs here as a body's
    /// are; or why the request could not be made into them.
    Tensors(Result<InferRequest>),
}

/// A payload that could be read: what is decoded against the model.
enum Read {
    Body(Bytes),
    Tensors(InferRequest),
}

impl Payload {
    /// What the request carries, or why it could not be read.
    fn read(self) -> Result<Read> {
        Ok(match self {
            Payload::Body(body) => Read::Body(body?),
            Payload::Tensors(request) => Read::Tensors(request?),
        })
    }
}

/// What the pipeline gives back: the answer, or why there is none (counted, logged and in
/// the request's span already).
pub(crate) struct Reply {
    pub(crate) answer: Result<Answer>,
    /// The request's payload log, if it is logged: the front end hands it its response
    /// (`observe::payloads::respond`).
    pub(crate) logged: Option<Logged>,
}

/// A request's outputs and what its response names. The front end encodes them, then
/// closes the [`Observation`] with how that went. It owns all it holds (`'static`), so an
/// answer produced in parts can be moved into a streamed body.
pub(crate) struct Answer {
    /// The model that answered.
    pub(crate) model: Arc<Model>,
    /// The route's variant that answered, if a route chose.
    pub(crate) variant: Option<String>,
    /// How long the request waited for its model's on-demand load, if it did.
    pub(crate) waited: Option<Duration>,
    /// The request as decoded: its id, the outputs it asked for and how.
    pub(crate) request: InferRequest,
    /// Every output the plugin returned, checked against the model's config.
    pub(crate) outputs: Vec<Tensor>,
    /// The request's span, metrics and route count, open until the response is made.
    pub(crate) observation: Observation,
}

/// One request's span, metrics and route count, from its target to its response. Closed
/// with the response's outcome ([`Observation::close`]); dropped open, the request counts
/// as cancelled (its client went away).
pub(crate) struct Observation {
    /// The server's metrics, held: an observation may outlive the call that opened it.
    pub(super) metrics: Arc<Metrics>,
    span: tracing::Span,
    /// Once the target is known: its timer, and the route's variant if a route chose.
    counted: Option<(RequestTimer, Option<(String, String)>)>,
    /// The stage timings and rows, once scheduled.
    pub(super) done: Option<(Timings, u64)>,
}

impl Observation {
    /// The observation of a request to `model` (`path`) with `id` and `headers`: its span
    /// (joined to the caller's trace), named `verb model`.
    pub(super) fn open(state: &AppState, verb: &str, model: &str, id: &str, headers: &HeaderMap) -> Self {
        let span = tracing::info_span!("request", id = %id, model = %model,
            otel.name = %format_args!("{verb} {model}"), otel.kind = "server",
            http.response.status_code = tracing::field::Empty);
        crate::observe::telemetry::join_remote_trace(&span, headers);
        Self { metrics: state.0.metrics.clone(), span, counted: None, done: None }
    }

    /// The request's span.
    pub(super) fn span(&self) -> tracing::Span {
        self.span.clone()
    }

    /// The target is known: count the request against `model`, and the route's variant.
    pub(super) fn count(&mut self, model: &Model, routed: Option<&Routed>) {
        let routed = routed.map(|r| (r.route.clone(), r.variant.clone()));
        self.counted = Some((self.metrics.start(&model.name, &model.config.version), routed));
    }

    /// The response is made (`Ok`) or the request failed: counted, its status in the span,
    /// a failure logged.
    pub(crate) fn close(self, outcome: Result<(), &Error>) {
        if let Some((timer, routed)) = self.counted {
            // An answer exists only once scheduled: `done` is there whenever it succeeds.
            let (timings, rows) = self.done.unwrap_or_default();
            let code = timer.finish(outcome.map(|()| (&timings, rows)));
            if let Some((route, variant)) = routed {
                self.metrics.routed(&route, &variant, false, code);
            }
        }
        let status = match outcome {
            Ok(()) => StatusCode::OK,
            Err(e) => {
                self.span.in_scope(|| e.log());
                e.status()
            }
        };
        self.span.record("http.response.status_code", i64::from(status.as_u16()));
    }
}

impl AppState {
    /// One inference request, whatever its protocol: the target resolved (a model loaded
    /// on demand is loaded first), in its span (joined to the caller's trace), counted,
    /// logged to the payload sink if its model says so, decoded against the model, copied
    /// to the route's shadow, and scheduled.
    pub(crate) async fn infer(&self, inference: Inference<'_>) -> Reply {
        let Inference { path, id, headers, payload, logged_body } = inference;
        let mut observation = Observation::open(self, "infer", &path.model, id, headers);
        let span = observation.span();
        let mut logged = None;
        let answer = async {
            let target = self.target(&path, headers).await?;
            let model = target.model.clone();
            observation.count(&model, target.routed.as_ref());
            let payload = payload.read()?;
            if let Some(body) = logged_body {
                let call = Call { requested: &path.model, variant: target.variant(), id };
                let names = (model.name.as_str(), model.config.version.as_str());
                logged = self.0.payloads.request(&model.config.logger, names, call, headers, body);
            }
            let header_length = match (&payload, headers.get(HEADER_LENGTH)) {
                (Read::Body(_), Some(value)) => Some(
                    value
                        .to_str()
                        .map_err(|_| Error::bad_request("Inference-Header-Content-Length is not text"))?,
                ),
                _ => None,
            };
            let limits = model.config.input_limits(self.0.max_bytes_element);
            let mut request = decode_for(&model, payload, header_length, limits)?;
            shadow(&target, self, &request);
            let (outputs, timings, rows) = run(&model, &mut request).await?;
            observation.done = Some((timings, rows));
            let variant = target.variant().map(str::to_string);
            Ok::<_, Error>((model, variant, target.waited, request, outputs))
        }
        .instrument(span)
        .await;
        let answer = match answer {
            Ok((model, variant, waited, request, outputs)) => {
                Ok(Answer { model, variant, waited, request, outputs, observation })
            }
            Err(e) => {
                observation.close(Err(&e));
                Err(e)
            }
        };
        Reply { answer, logged }
    }
}

/// The request `payload` carries, checked against `model`'s inputs and `limits`.
fn decode_for(
    model: &Model,
    payload: Read,
    header_length: Option<&str>,
    limits: InputLimits,
) -> Result<InferRequest> {
    if model.config.generates() {
        return Err(schedule::not_tensors(&model.name));
    }
    let declared = &model.config.inputs;
    match payload {
        Read::Body(body) => decode::decode(&body, header_length, declared, limits),
        Read::Tensors(request) => {
            decode::check_inputs(&request.inputs, declared, limits)?;
            Ok(request)
        }
    }
}

/// Send a copy of `request` to the route's shadow, if it has one: it runs beside the
/// answer, counted and logged, and whatever it answers goes nowhere else.
fn shadow(target: &Target, state: &AppState, request: &InferRequest) {
    let Some(Routed { route, shadow: Some(shadow), .. }) = &target.routed else { return };
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
        let answer = schedule::run(model.runner.clone(), inputs, params).await;
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

/// The request's checked outputs, then schedule (plugin, graph, plugin); with the stage
/// timings and the number of inferences (rows of the first input) for the metrics.
async fn run(model: &Arc<Model>, request: &mut InferRequest) -> Result<(Vec<Tensor>, Timings, u64)> {
    request.check_outputs(&model.config.outputs)?;
    let inputs = std::mem::take(&mut request.inputs);
    let rows = rows(&inputs);
    let params = std::mem::take(&mut request.params);
    let (outputs, timings) = schedule::run(model.runner.clone(), inputs, params).await?;
    Ok((outputs, timings, rows))
}

/// One request through `model` with no server around it (offline inference): `body` with
/// its `header_length` decoded as the server would within `limits`, then scheduled; no
/// span, metrics, payload log or shadow. Returns the decoded request and the outputs.
pub(crate) async fn run_alone(
    model: &Arc<Model>,
    body: Bytes,
    header_length: Option<&str>,
    limits: InputLimits,
) -> Result<(InferRequest, Vec<Tensor>)> {
    let mut request = decode_for(model, Read::Body(body), header_length, limits)?;
    let (outputs, ..) = run(model, &mut request).await?;
    Ok((request, outputs))
}

/// Inferences a request asks for: the rows (dimension 0) of its first input.
fn rows(inputs: &[crate::tensor::Tensor]) -> u64 {
    inputs.first().and_then(|t| t.shape.first()).map_or(1, |&d| d.max(0) as u64)
}
