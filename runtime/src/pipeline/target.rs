//! target: where a request goes (the model it names, or the variant its route picks), and
//! the copy a route sends to its shadow.

use super::AppState;
use crate::config::{RouteConfig, Variant};
use crate::decode;
use crate::repository::Model;
use crate::schedule;
use axum::http::HeaderMap;
use std::sync::Arc;

/// The variant of `route` (called `name`) a request goes to: by the sticky header's value
/// when the request carries it, else at random by weight.
pub(super) fn pick<'a>(name: &str, route: &'a RouteConfig, headers: &HeaderMap) -> &'a Variant {
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
    pub(super) route: String,
    /// The variant that answers, as responses and metrics name it.
    pub(crate) variant: String,
    pub(super) shadow: Option<crate::config::RouteTarget>,
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
}

/// Inferences a request asks for: the rows (dimension 0) of its first input.
pub(super) fn rows(inputs: &[crate::tensor::Tensor]) -> u64 {
    inputs.first().and_then(|t| t.shape.first()).map_or(1, |&d| d.max(0) as u64)
}
