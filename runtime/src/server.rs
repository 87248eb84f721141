//! server: the Open Inference Protocol (KServe v2) REST endpoints.
//!
//! | method | path | answer |
//! |---|---|---|
//! | GET | `/v2` | server metadata |
//! | GET | `/v2/health/live` | 200 `{"live": true}` while the process serves HTTP |
//! | GET | `/v2/health/ready` | 200 `{"ready": true}` once every model is ready (or any, by flag) and not draining, else 503 `{"ready": false}` |
//! | POST, GET | `/v2/repository/index` | every model with its state and, if unavailable, why |
//! | GET | `/metrics` | Prometheus metrics (see `metrics`) |
//! | GET | `/v2/models/{m}[/versions/{v}]` | model metadata: the inputs and outputs a client uses |
//! | GET | `/v2/models/{m}[/versions/{v}]/ready` | 200 `{"name", "ready": true}` when the model can serve, else 503 with `"ready": false` and the `error` |
//! | POST | `/v2/models/{m}[/versions/{v}]/infer` | inference (JSON, binary extension, or raw body) |
//! | GET | `/v2/models/{m}[/versions/{v}]/config` | Triton's model configuration (see `triton`) |
//! | GET | `/v2/models[/{m}[/versions/{v}]]/stats` | Triton's statistics (see `triton`) |
//!
//! OpenAI's `/v1/embeddings` and `/v1/models` are served too, for embedding models (see
//! `openai`). The same port serves gRPC (`inference.GRPCInferenceService` and `grpc.health.v1.Health`,
//! see `grpc`) over HTTP/2.
//!
//! The endpoints that change what is served ([`control_router`]) need a bearer token, and
//! may listen on a port of their own:
//!
//! | method | path | answer |
//! |---|---|---|
//! | POST | `/v2/repository/models/{m}/load` | (re)load `m` from its directory; 200 once it serves |
//! | POST | `/v2/repository/models/{m}/unload` | stop serving `m` |

use crate::decode::{self, HEADER_LENGTH};
use crate::encode;
use crate::error::{Error, Result};
use crate::pipeline::{AppState, ModelPath, REQUEST_ID, Target, read_body, request_id, run};
use crate::repository::State as ModelState;
use crate::schedule::Timings;
use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

/// The router with every OIP endpoint.
pub fn router(state: AppState) -> Router {
    // gRPC's control calls reach this service only when --control-port serves them elsewhere
    // (else control_router's routes for them, merged in, come first).
    use crate::grpc::Control::Elsewhere;
    Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(|| async { axum::Json(json!({ "live": true })) }))
        .route("/v2/health/ready", get(server_ready))
        .route("/v2/repository/index", get(repository_index).post(repository_index))
        .route("/metrics", get(metrics))
        .route("/v2/models/{model}", get(model_metadata))
        .route("/v2/models/{model}/versions/{version}", get(model_metadata))
        .route("/v2/models/stats", get(model_statistics))
        .route("/v2/models/{model}/stats", get(model_statistics))
        .route("/v2/models/{model}/versions/{version}/stats", get(model_statistics))
        .route("/v2/models/{model}/config", get(model_config))
        .route("/v2/models/{model}/versions/{version}/config", get(model_config))
        .route("/v2/models/{model}/ready", get(model_ready))
        .route("/v2/models/{model}/versions/{version}/ready", get(model_ready))
        .route("/v2/models/{model}/infer", post(infer))
        .route("/v2/models/{model}/versions/{version}/infer", post(infer))
        .merge(crate::openai::routes())
        .route_service(
            crate::grpc::PATH,
            crate::grpc::service(state.clone(), state.max_body_bytes(), Elsewhere),
        )
        .route_service(crate::grpc::HEALTH_PATH, crate::grpc::health(state.clone()))
        .fallback(|| async { Error::NotFound("no such endpoint; see /v2".into()) })
        // The infer handler applies its own limit, answering 413 in the OIP error format.
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
        .layer(catch_panics())
}

/// The repository extension's endpoints that change what is served (REST's load and unload,
/// gRPC's RepositoryModelLoad and RepositoryModelUnload), each behind the control token
/// (`Authorization: Bearer ...`; 401 / UNAUTHENTICATED without it, 403 / PERMISSION_DENIED
/// when the server has none). Merge into [`router`], or serve on a port of their own.
pub fn control_router(state: AppState) -> Router {
    use crate::grpc::{CONTROL_PATHS, Control::Here};
    let router = Router::new()
        .route("/v2/repository/models/{model}/load", post(load_model))
        .route("/v2/repository/models/{model}/unload", post(unload_model))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), authorized))
        .with_state(state.clone());
    // gRPC's control calls check the token themselves, to answer in gRPC's terms.
    let grpc = crate::grpc::service(state.clone(), state.max_body_bytes(), Here);
    CONTROL_PATHS
        .iter()
        .fold(router, |router, path| router.route_service(path, grpc.clone()))
        .layer(catch_panics())
}

/// Let a control request through only with the server's token.
async fn authorized(
    State(state): State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let given = request.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    match control_allowed(&state, given, request.uri().path()) {
        Ok(()) => next.run(request).await,
        Err(e) => e.into_response(),
    }
}

/// Whether a control call (REST's load and unload, gRPC's RepositoryModelLoad and
/// RepositoryModelUnload) at `path` may run: `authorization` (the header, or gRPC's metadata)
/// must be `Bearer <the server's token>`, compared in constant time. Forbidden when the
/// server has no token, Unauthorized when it is missing or wrong.
pub(crate) fn control_allowed(state: &AppState, authorization: Option<&str>, path: &str) -> Result<()> {
    use subtle::ConstantTimeEq;
    let Some(token) = state.control_token() else {
        let off = "repository control is off: start the server with --control-token-file FILE or WASMSERVE_CONTROL_TOKEN";
        return Err(Error::Forbidden(off.into()));
    };
    match authorization.and_then(|v| v.strip_prefix("Bearer ")) {
        Some(given) if bool::from(given.as_bytes().ct_eq(token.as_bytes())) => Ok(()),
        _ => {
            tracing::warn!(%path, "control request refused: no valid bearer token");
            Err(Error::Unauthorized(
                "this call needs the header (gRPC: metadata) Authorization: Bearer <the server's control token>"
                    .into(),
            ))
        }
    }
}

/// Load a model (again) from its directory; answers once it serves, or why it does not.
async fn load_model(
    State(state): State<AppState>,
    Path(model): Path<String>,
    body: bytes::Bytes,
) -> Result<StatusCode> {
    refuse_body_parameters(&body, &[])?;
    load(&state, model).await?;
    Ok(StatusCode::OK)
}

/// A REST control call's body, Triton's `{"parameters": {...}}` (or none), through
/// [`refuse_parameters`].
fn refuse_body_parameters(body: &[u8], allowed: &[&str]) -> Result<()> {
    let parameters = body_parameters(body)?;
    refuse_parameters(parameters.iter().map(|(k, v)| (k.as_str(), v.as_bool())), allowed)
}

/// A REST control call's body, Triton's `{"parameters": {...}}`: its parameters (none when
/// there is no body).
fn body_parameters(body: &[u8]) -> Result<serde_json::Map<String, serde_json::Value>> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Default::default());
    }
    let body: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        Error::bad_request(format!("the body is not JSON ({e}): send none, or {{\"parameters\": {{}}}}"))
    })?;
    match body {
        serde_json::Value::Object(mut body) => match body.remove("parameters") {
            Some(serde_json::Value::Object(parameters)) => Ok(parameters),
            None => Ok(Default::default()),
            Some(_) => Err(Error::bad_request("\"parameters\" is not an object")),
        },
        _ => Err(Error::bad_request("the body is not a JSON object: send none, or {\"parameters\": {}}")),
    }
}

/// A load's or unload's parameters (Triton's `config` and `file:` overrides on load,
/// `unload_dependents` on unload), each a name and its value if a bool: none is taken but
/// `allowed` ones that are false (REST and gRPC).
pub(crate) fn refuse_parameters<'a>(
    parameters: impl IntoIterator<Item = (&'a str, Option<bool>)>,
    allowed: &[&str],
) -> Result<()> {
    for (name, value) in parameters {
        let known = allowed.contains(&name);
        if known && value == Some(false) {
            continue;
        }
        let why = match known {
            true => {
                "only false: the models a model's plugin calls are models of their own, unload each by its name"
            }
            false => {
                "a model loads from its directory in the repository as it is there: change its files, then load it"
            }
        };
        return Err(Error::bad_request(format!("parameter '{name}' is not supported ({why})")));
    }
    Ok(())
}

/// Load `model` (again) from its directory, off the serving threads (REST and gRPC).
pub(crate) async fn load(state: &AppState, model: String) -> Result<()> {
    let repository = state.repository().clone();
    tokio::task::spawn_blocking(move || repository.reload(&model))
        .await
        .map_err(|e| Error::Internal(format!("loading panicked: {e}")))?
}

async fn unload_model(
    State(state): State<AppState>,
    Path(model): Path<String>,
    body: bytes::Bytes,
) -> Result<StatusCode> {
    refuse_body_parameters(&body, &["unload_dependents"])?;
    state.repository().unload(&model)?;
    Ok(StatusCode::OK)
}

/// A panic while handling a request becomes a 500 for that request (logged with its
/// message); the connection, the other requests and the server carry on.
fn catch_panics() -> tower_http::catch_panic::CatchPanicLayer<fn(Box<dyn std::any::Any + Send>) -> Response> {
    fn answer(panic: Box<dyn std::any::Any + Send>) -> Response {
        let message = crate::error::panic_message(&*panic);
        let error = Error::Internal(format!("request handling panicked: {message}"));
        error.log();
        error.into_response()
    }
    tower_http::catch_panic::CatchPanicLayer::custom(answer as fn(_) -> _)
}

async fn server_metadata() -> Response {
    axum::Json(json!({
        "name": "wasmserve",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": crate::triton::EXTENSIONS,
    }))
    .into_response()
}

/// The KServe v2 spec's `$ready_server_response`: the status says it, the body too.
async fn server_ready(State(state): State<AppState>) -> Response {
    let ready = state.ready();
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, axum::Json(json!({ "ready": ready }))).into_response()
}

/// The OIP repository extension's index: every model version with its state (and why it is
/// not ready when it is not), its load policy, what it holds of the model memory budget and
/// how long since a request used it.
async fn repository_index(State(state): State<AppState>) -> Response {
    let index: Vec<_> = state
        .repository()
        .statuses()
        .into_iter()
        .map(|status| {
            let mut entry = json!({ "name": status.name, "state": status.state.name() });
            if let Some(version) = status.version {
                entry["version"] = json!(version);
                entry["policy"] = json!(if status.on_demand { "on_demand" } else { "eager" });
                entry["resident_bytes"] = json!(status.resident_bytes);
            }
            if let Some(idle) = status.idle {
                entry["idle_secs"] = json!((idle.as_secs_f64() * 10.0).round() / 10.0);
            }
            if let ModelState::Unavailable(reason) = &status.state {
                entry["reason"] = json!(reason);
            }
            entry
        })
        .collect();
    axum::Json(index).into_response()
}

/// A route answers with one of its variants' metadata (its variants take the same inputs).
/// From the model's config: an on-demand model out of memory is not loaded for it.
async fn model_metadata(State(state): State<AppState>, Path(path): Path<ModelPath>) -> Result<Response> {
    let (name, config) = state.declared(&path)?;
    let versions = state.repository().versions(&name);
    let mut body = json!({
        "name": name,
        "versions": versions,
        "platform": config.platform(),
        "inputs": config.inputs,
        "outputs": config.outputs,
    });
    // What the plugin may do: its limits and grants, as its config states them.
    let plugin = &config.plugin;
    body["parameters"] = json!({
        "plugin_data_dir": plugin.data.as_ref().map(|_| format!("{} (read-only)", crate::plugin::DATA_DIR)),
        "plugin_graphs": plugin.allowed_graphs(&name).join(","),
        "plugin_network": false,
        "plugin_environment": false,
        "plugin_memory_limit_mib": plugin.memory_limit_mib,
        "plugin_timeout_ms": plugin.timeout_ms,
        "plugin_fuel": plugin.fuel,
        "plugin_max_output_mib": plugin.max_output_mib,
        "plugin_max_table_elements": plugin.max_table_elements,
        "plugin_reuse_instances": plugin.reuse_instances,
    });
    // What one request may bring (413 past it), in KiB as `[limits]` sets it; no
    // `max_input_kib`: no limit but the body's.
    let limits = state.input_limits(&config);
    body["parameters"]["max_bytes_element_kib"] = json!(limits.max_element >> 10);
    if limits.max_total != usize::MAX {
        body["parameters"]["max_input_kib"] = json!(limits.max_total >> 10);
    }
    if let Some(description) = &config.description {
        body["parameters"]["description"] = json!(description);
    }
    Ok(axum::Json(body).into_response())
}

/// Triton's model configuration extension (see `triton`); a route answers with one of its
/// variants', and an on-demand model is not loaded for it, as for metadata.
async fn model_config(State(state): State<AppState>, Path(path): Path<ModelPath>) -> Result<Response> {
    let (name, config) = state.declared(&path)?;
    Ok(axum::Json(crate::triton::config(&name, &config)).into_response())
}

/// Triton's statistics extension (see `triton`): every model's, a model's, or a version's.
async fn model_statistics(State(state): State<AppState>, path: Option<Path<ModelPath>>) -> Result<Response> {
    let model_stats = crate::triton::statistics(&state, path.as_ref().map(|p| &p.0))?;
    Ok(axum::Json(crate::grpc::proto::ModelStatisticsResponse { model_stats }).into_response())
}

/// The KServe v2 spec's `$ready_model_response` (`name`, `ready`); not ready, with the
/// error's status and message too. An unknown model is a plain 404.
async fn model_ready(State(state): State<AppState>, Path(path): Path<ModelPath>) -> Response {
    match state.model_ready(&path) {
        Ok(()) => axum::Json(json!({ "name": path.model, "ready": true })).into_response(),
        Err(e @ Error::NotFound(_)) => e.into_response(),
        Err(e) => {
            let body = json!({ "name": path.model, "ready": false, "error": e.to_string() });
            (e.status(), axum::Json(body)).into_response()
        }
    }
}

async fn infer(
    State(state): State<AppState>,
    Path(path): Path<ModelPath>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let id = request_id(None, &headers);
    // The whole body is read before anything can fail: an answer sent while the client is
    // still sending makes the connection close under a client that keeps it alive.
    let body = read_body(&state, &headers, body).await;
    let mut logged = None;
    let answer = state
        .observed(&path, &id, &headers, async |target| {
            let body = body?;
            logged = state.payloads().request(
                &target.model,
                &path.model,
                target.variant(),
                &id,
                &headers,
                body.clone(),
            );
            let (request, outputs, timings, rows) = decode_and_run(&state, target, &headers, body).await?;
            let model = &target.model;
            let encoded =
                encode::encode(&model.name, &model.config.version, target.variant(), &request, outputs)?;
            let mut response = encoded.into_response();
            // A request that waited for its model's on-demand load says how long, and how long
            // the load itself took (W3C Server-Timing): the rest of the wait was spent queued
            // behind other loads (--concurrent-loads) or waiting for room under the budget.
            if let Some(waited) = target.waited {
                let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
                let timing = format!(
                    "load;dur={:.1}, model-load;dur={:.1}",
                    ms(waited),
                    ms(target.model.load_duration)
                );
                response.headers_mut().insert("server-timing", HeaderValue::try_from(timing).expect("ASCII"));
            }
            Ok((response, timings, rows))
        })
        .await;
    let mut response = answer.unwrap_or_else(Error::into_response);
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    crate::payloads::respond(logged, response).await
}

/// Decode a REST body, copy it to the route's shadow if any, then [`run`] it.
async fn decode_and_run(
    state: &AppState,
    target: &Target,
    headers: &HeaderMap,
    body: bytes::Bytes,
) -> Result<(decode::InferRequest, Vec<crate::tensor::Tensor>, Timings, u64)> {
    let header_length = headers
        .get(HEADER_LENGTH)
        .map(|v| v.to_str().map_err(|_| Error::bad_request("Inference-Header-Content-Length is not text")))
        .transpose()?;
    let limits = state.input_limits(&target.model.config);
    let mut request = decode::decode(&body, header_length, &target.model.config.inputs, limits)?;
    drop(body);
    target.shadow(state, &request);
    let (outputs, timings, rows) = run(&target.model, &mut request).await?;
    Ok((request, outputs, timings, rows))
}

/// Prometheus / OpenMetrics text.
async fn metrics(State(state): State<AppState>) -> Response {
    let body = state.metrics().encode(state.repository());
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body)
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    #[tokio::test]
    async fn a_panicking_handler_answers_500_and_the_router_keeps_serving() {
        let app = Router::new()
            .route(
                "/boom",
                get(|| async {
                    if std::hint::black_box(true) {
                        panic!("the handler broke");
                    }
                    "unreachable"
                }),
            )
            .route("/fine", get(|| async { "ok" }))
            .layer(catch_panics());
        let request = |path: &str| axum::http::Request::get(path).body(Body::empty()).unwrap();
        let response = app.clone().oneshot(request("/boom")).await.unwrap();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"], "internal error: request handling panicked: the handler broke");
        assert_eq!(app.oneshot(request("/fine")).await.unwrap().status(), StatusCode::OK);
    }
}
