//! target: where a request's path leads: the model it names, or the variant its route
//! picks (and the route's shadow); whether that can serve, and what it declares.

use super::{AppState, ModelPath};
use crate::config::{ModelConfig, RouteConfig, Variant};
use crate::error::{Error, Result};
use crate::repository::Model;
use axum::http::HeaderMap;
use std::sync::Arc;

impl AppState {
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
}
