//! pipeline: the one way in for an inference request, whatever its front end (REST, gRPC,
//! OpenAI, offline): [`AppState::infer`] resolves the target (model, or a route's variant
//! and shadow), opens the request's span, starts its metrics, decodes its body against the
//! model (the protocol's `decode`), sends a copy to the shadow, and schedules it; the front
//! end encodes the [`Answer`] it returns and closes it. Nothing here calls back into a
//! front end.
//!
//! The seam for answers produced in parts (generation): an [`Answer`] carries its request's
//! observation still open (span, timer, route count) and the front end closes it once the
//! response is sent, so an answer whose outputs arrive over time closes it after its last
//! part, and its metrics count the whole stream.

mod request;
mod target;

pub(crate) use request::{Answer, Inference, Payload, Reply, run_alone};
pub(crate) use target::Target;

use crate::config::{ModelConfig, RouteConfig};
use crate::error::{Error, Result};
use crate::observe::metrics::Metrics;
use crate::observe::payloads::{Payloads, Settings};
use crate::repository::Repository;
use axum::http::HeaderMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use target::{Routed, pick};

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
    payloads: Payloads,
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
        let metrics = Metrics::new(repository.load_metrics());
        let payloads = Payloads::new(payloads, metrics.payloads());
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

/// `{model}` and, on the versioned routes, `{version}`.
#[derive(serde::Deserialize)]
pub(crate) struct ModelPath {
    pub(crate) model: String,
    pub(crate) version: Option<String>,
}
