//! rest: the Open Inference Protocol (KServe v2) REST endpoints.
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
//! OpenAI's `/v1/embeddings`, `/v1/chat/completions`, `/v1/completions` and `/v1/models` are
//! served beside them (see `openai`), and Triton's `generate` and `generate_stream` for
//! generative models (see `generate`). The same port serves gRPC (`inference.GRPCInferenceService` and `grpc.health.v1.Health`,
//! see `grpc`) over HTTP/2.
//!
//! The endpoints that change what is served (`front::control_router`) need a bearer token, and
//! may listen on a port of their own:
//!
//! | method | path | answer |
//! |---|---|---|
//! | POST | `/v2/repository/models/{m}/load` | (re)load `m` from its directory; 200 once it serves |
//! | POST | `/v2/repository/models/{m}/unload` | stop serving `m` |

use super::control;
use super::http::{REQUEST_ID, read_body, request_id};
use crate::encode;
use crate::error::{Error, Result};
use crate::pipeline::{Answer, AppState, Inference, ModelPath, Payload, Reply};
use crate::repository::State as ModelState;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

/// The OIP's REST endpoints (the control endpoints apart, [`control_routes`]).
pub(super) fn routes() -> Router<AppState> {
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
}

/// REST's control endpoints, behind the control token.
pub(super) fn control_routes(state: &AppState) -> Router<AppState> {
    Router::new()
        .route("/v2/repository/models/{model}/load", post(load_model))
        .route("/v2/repository/models/{model}/unload", post(unload_model))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), authorized))
}

/// Let a control request through only with the server's token.
async fn authorized(
    State(state): State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let given = request.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    match control::allowed(&state, given, request.uri().path()) {
        Ok(()) => next.run(request).await,
        Err(e) => e.into_response(),
    }
}

/// Load a model (again) from its directory; answers once it serves, or why it does not.
async fn load_model(
    State(state): State<AppState>,
    Path(model): Path<String>,
    body: bytes::Bytes,
) -> Result<StatusCode> {
    refuse_body_parameters(&body, &[])?;
    control::load(&state, model).await?;
    Ok(StatusCode::OK)
}

/// A REST control call's body, Triton's `{"parameters": {...}}` (or none), through
/// [`refuse_parameters`].
fn refuse_body_parameters(body: &[u8], allowed: &[&str]) -> Result<()> {
    let parameters = body_parameters(body)?;
    control::refuse_parameters(parameters.iter().map(|(k, v)| (k.as_str(), v.as_bool())), allowed)
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

async fn unload_model(
    State(state): State<AppState>,
    Path(model): Path<String>,
    body: bytes::Bytes,
) -> Result<StatusCode> {
    refuse_body_parameters(&body, &["unload_dependents"])?;
    control::unload(&state, &model)?;
    Ok(StatusCode::OK)
}

async fn server_metadata() -> Response {
    axum::Json(super::triton::server_metadata()).into_response()
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
    let index: Vec<_> = super::triton::index(&state)
        .into_iter()
        .map(|(model, status)| {
            let mut entry = json!({ "name": model.name, "state": model.state });
            if status.version.is_some() {
                entry["version"] = json!(model.version);
                entry["policy"] = json!(if status.on_demand { "on_demand" } else { "eager" });
                entry["resident_bytes"] = json!(status.resident_bytes);
            }
            if let Some(idle) = status.idle {
                entry["idle_secs"] = json!((idle.as_secs_f64() * 10.0).round() / 10.0);
            }
            if matches!(status.state, ModelState::Unavailable(_)) {
                entry["reason"] = json!(model.reason);
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
    Ok(axum::Json(crate::front::triton::config(&name, &config)).into_response())
}

/// Triton's statistics extension (see `triton`): every model's, a model's, or a version's.
async fn model_statistics(State(state): State<AppState>, path: Option<Path<ModelPath>>) -> Result<Response> {
    let model_stats = crate::front::triton::statistics(&state, path.as_ref().map(|p| &p.0))?;
    Ok(axum::Json(crate::proto::ModelStatisticsResponse { model_stats }).into_response())
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
    let body = read_body(state.max_body_bytes(), &headers, body).await;
    let logged_body = body.as_ref().ok().cloned();
    let inference = Inference { path, id: &id, headers: &headers, payload: Payload::Body(body), logged_body };
    let Reply { answer, logged } = state.infer(inference).await;
    let mut response = answer.map_or_else(Error::into_response, encode);
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    crate::observe::payloads::respond(logged, response).await
}

/// An answer as the OIP's response: JSON, or JSON and binary tensors. A request that waited
/// for its model's on-demand load says how long, and how long the load itself took (W3C
/// Server-Timing): the rest of the wait was spent queued behind other loads
/// (--concurrent-loads) or waiting for room under the budget.
fn encode(answer: Answer) -> Response {
    let Answer { model, variant, waited, request, outputs, observation } = answer;
    let encoded = encode::encode(&model.name, &model.config.version, variant.as_deref(), &request, outputs);
    observation.close(encoded.as_ref().map(|_| ()));
    let mut response = match encoded {
        Ok(encoded) => encoded.into_response(),
        Err(e) => return e.into_response(),
    };
    if let Some(waited) = waited {
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
        let timing = format!("load;dur={:.1}, model-load;dur={:.1}", ms(waited), ms(model.load_duration));
        response.headers_mut().insert("server-timing", HeaderValue::try_from(timing).expect("ASCII"));
    }
    response
}

/// A generative model's engine as its counters stand now.
fn engine_gauges(runner: &crate::schedule::Runner) -> Option<crate::observe::generation::EngineGauges> {
    use std::sync::atomic::Ordering::Relaxed;
    let generator = runner.generator()?;
    let c = &generator.counters;
    Some(crate::observe::generation::EngineGauges {
        steps: c.steps.load(Relaxed),
        reused: c.reused.load(Relaxed),
        step_sequences: c.sequences_stepped.load(Relaxed),
        step_time: std::time::Duration::from_nanos(c.step_nanos.load(Relaxed)),
        steps_by_sequences: std::array::from_fn(|i| c.steps_by_sequences[i].load(Relaxed)),
        sequences: c.sequences.load(Relaxed),
        queued: runner.slots.queued() as u64,
        cache_tokens: c.cached_tokens.load(Relaxed),
        cache_capacity: u64::from(generator.context) * generator.slots as u64,
    })
}

/// Prometheus / OpenMetrics text.
async fn metrics(State(state): State<AppState>) -> Response {
    use crate::observe::metrics::VersionGauges;
    let repository = state.repository();
    let versions = repository.statuses().into_iter().map(|status| VersionGauges {
        loaded: match &status.state {
            ModelState::Ready(model) => Some(model.load_duration),
            _ => None,
        },
        engine: match &status.state {
            ModelState::Ready(model) => engine_gauges(&model.runner),
            _ => None,
        },
        model: status.name,
        version: status.version.unwrap_or_default(),
        resident_bytes: status.resident_bytes,
    });
    let body = state.metrics().encode(versions, repository.budget().unwrap_or(0));
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body)
        .into_response()
}
