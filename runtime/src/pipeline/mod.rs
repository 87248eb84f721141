//! pipeline: the one way in for an inference request, whatever its front end (REST, gRPC,
//! OpenAI, offline): [`AppState::infer`] resolves the target (model, or a route's variant
//! and shadow), opens the request's span, starts its metrics, decodes its body against the
//! model (the protocol's `decode`), sends a copy to the shadow, and schedules it; the front
//! end encodes the [`Answer`] it returns and closes it. Nothing here calls back into a
//! front end.
//!
//! Generation has its entry beside it ([`AppState::generate`]): the same target, span,
//! metrics and payload log, and a [`Stream`] of the answer's parts.
//!
//! The seam for answers produced in parts (generation): an [`Answer`] carries its request's
//! observation still open (span, timer, route count) and the front end closes it once the
//! response is sent, so an answer whose outputs arrive over time closes it after its last
//! part, and its metrics count the whole stream. An answer owns what it holds (the metrics
//! and the payload log through their `Arc`s), so it can move into a streamed body.

mod generate;
mod request;
mod target;

pub(crate) use generate::{Generation, Part, Stream};
pub(crate) use request::{Answer, Inference, Payload, Reply, run_alone};

use crate::config::ModelConfig;
use crate::observe::metrics::Metrics;
use crate::observe::payloads::{Payloads, Settings};
use crate::repository::Repository;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

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
    metrics: Arc<Metrics>,
    max_body_bytes: usize,
    /// The largest BYTES element a model without its own `[limits]` takes.
    max_bytes_element: usize,
    ready_when: ReadyWhen,
    draining: AtomicBool,
    payloads: Arc<Payloads>,
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
        payloads: Settings,
    ) -> Self {
        let metrics = Arc::new(Metrics::new(repository.load_metrics()));
        let payloads = Arc::new(Payloads::new(payloads, metrics.payloads()));
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
}

/// `{model}` and, on the versioned routes, `{version}`.
#[derive(serde::Deserialize)]
pub(crate) struct ModelPath {
    pub(crate) model: String,
    pub(crate) version: Option<String>,
}
