//! server: the Open Inference Protocol (KServe v2) REST endpoints.
//!
//! | method | path | answer |
//! |---|---|---|
//! | GET | `/v2` | server metadata |
//! | GET | `/v2/health/live` | 200 while the process serves HTTP |
//! | GET | `/v2/health/ready` | 200 once every model is loaded, else 503 |
//! | GET | `/v2/models/{m}[/versions/{v}]` | model metadata: the inputs and outputs a client uses |
//! | GET | `/v2/models/{m}[/versions/{v}]/ready` | 200 when the model is ready |
//! | POST | `/v2/models/{m}[/versions/{v}]/infer` | inference (JSON, binary extension, or raw body) |

use crate::decode::{self, HEADER_LENGTH};
use crate::encode;
use crate::error::{Error, Result};
use crate::repository::{Model, Repository};
use crate::schedule;
use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use std::sync::{Arc, OnceLock};

/// What every handler shares.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

struct Inner {
    repository: OnceLock<Arc<Repository>>,
    max_body_bytes: usize,
}

impl AppState {
    /// State for a server whose models are not loaded yet.
    pub fn new(max_body_bytes: usize) -> Self {
        Self(Arc::new(Inner { repository: OnceLock::new(), max_body_bytes }))
    }

    /// Models loaded: the server becomes ready.
    pub fn set_repository(&self, repository: Repository) {
        let _ = self.0.repository.set(Arc::new(repository));
    }

    fn repository(&self) -> Result<&Arc<Repository>> {
        self.0.repository.get().ok_or_else(|| Error::Unavailable("models are still loading".into()))
    }

    fn model(&self, name: &str, version: Option<&str>) -> Result<Arc<Model>> {
        self.repository()?.get(name, version)
    }
}

/// The router with every OIP endpoint.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(|| async { StatusCode::OK }))
        .route("/v2/health/ready", get(server_ready))
        .route("/v2/models/{model}", get(model_metadata))
        .route("/v2/models/{model}/versions/{version}", get(model_metadata))
        .route("/v2/models/{model}/ready", get(model_ready))
        .route("/v2/models/{model}/versions/{version}/ready", get(model_ready))
        .route("/v2/models/{model}/infer", post(infer))
        .route("/v2/models/{model}/versions/{version}/infer", post(infer))
        .fallback(|| async { Error::NotFound("no such endpoint; see /v2".into()) })
        // The infer handler applies its own limit, answering 413 in the OIP error format.
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

async fn server_metadata() -> Response {
    axum::Json(json!({
        "name": "wasmserve",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": ["binary_tensor_data"],
    }))
    .into_response()
}

async fn server_ready(State(state): State<AppState>) -> StatusCode {
    if state.repository().is_ok() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }
}

/// `{model}` and, on the versioned routes, `{version}`.
#[derive(serde::Deserialize)]
struct ModelPath {
    model: String,
    version: Option<String>,
}

impl AppState {
    fn model_at(&self, path: &ModelPath) -> Result<Arc<Model>> {
        self.model(&path.model, path.version.as_deref())
    }
}

async fn model_metadata(State(state): State<AppState>, Path(path): Path<ModelPath>) -> Result<Response> {
    let model = state.model_at(&path)?;
    let mut body = json!({
        "name": model.name,
        "versions": [model.config.version],
        "platform": model.platform(),
        "inputs": model.config.inputs,
        "outputs": model.config.outputs,
    });
    if let Some(description) = &model.config.description {
        body["parameters"] = json!({ "description": description });
    }
    Ok(axum::Json(body).into_response())
}

async fn model_ready(State(state): State<AppState>, Path(path): Path<ModelPath>) -> Result<StatusCode> {
    state.model_at(&path).map(|_| StatusCode::OK)
}

async fn infer(
    State(state): State<AppState>,
    Path(path): Path<ModelPath>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    let model = state.model_at(&path)?;
    let limit = state.0.max_body_bytes;
    let too_large =
        || Error::TooLarge(format!("request body is larger than {limit} bytes (see --max-body-mib)"));
    // Refuse on the declared length before reading anything; chunked bodies stop at the limit.
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let body = axum::body::to_bytes(body, limit).await.map_err(|_| too_large())?;
    let header_length = headers
        .get(HEADER_LENGTH)
        .map(|v| v.to_str().map_err(|_| Error::bad_request("Inference-Header-Content-Length is not text")))
        .transpose()?;
    let mut request = decode::decode(&body, header_length, &model.config.inputs)?;
    request.check_outputs(&model.config.outputs)?;
    drop(body);
    let inputs = std::mem::take(&mut request.inputs);
    let params = std::mem::take(&mut request.params);
    let outputs = schedule::run(model.clone(), inputs, params).await?;
    encode::encode(&model.name, &model.config.version, &request, outputs)
}
