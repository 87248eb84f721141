//! openai: OpenAI-compatible endpoints, what the `openai` package, LangChain and LlamaIndex
//! speak.
//!
//! | method | path | answer |
//! |---|---|---|
//! | POST | `/v1/chat/completions` | a chat answer from a generative model, whole or streamed (server-sent events) |
//! | POST | `/v1/completions` | a text's continuation from a generative model, whole or streamed |
//! | POST | `/v1/embeddings` | the vectors of `input` (a string or a list of strings) from the model `model` names |
//! | GET | `/v1/models` | the models that answer them (generative ones, and those with `[embeddings]`) |
//! | GET | `/v1/models/{m}` | one of them |
//!
//! Embeddings ([`embeddings`]): a model answers when its config has `[embeddings]` (which
//! input takes the texts, which output holds the vectors, and optionally which holds each
//! text's token count, for `usage`); `model` may also name a route over such models. A
//! request becomes one OIP inference of the model's default version, through the same
//! pipeline as `/v2` requests: input limits, plugin, queue, batching, metrics, traces and
//! the route's shadow. Not supported: token arrays as `input` (400: send text), `dimensions`
//! other than the model's own (400). `user` is accepted and ignored.
//!
//! Chat and completions ([`chat`]): a generative model (`graph.backend = "ggml"`) answers;
//! see that module for the fields it takes.
//!
//! Errors use OpenAI's body (`{"error": {"message", "type", "param", "code"}}`) with the
//! status (and `Retry-After`) the OIP endpoints give the same error.

mod chat;
mod embeddings;

use crate::error::Error;
use crate::pipeline::AppState;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

/// The OpenAI-compatible routes, for the server's router.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/chat/completions", post(chat::chat))
        .route("/v1/completions", post(chat::completions))
        .route("/v1/embeddings", post(embeddings::embeddings))
        .route("/v1/models", get(models))
        .route("/v1/models/{model}", get(model))
}

/// An error as OpenAI's clients read it: the status and headers the OIP endpoints give it,
/// OpenAI's body.
fn error(e: Error) -> Response {
    let body = error_body(&e);
    let mut response = e.into_response();
    *response.body_mut() = Body::from(body.to_string());
    response
}

/// OpenAI's error body for `e` (also what a stream sends when it fails after its first part).
fn error_body(e: &Error) -> serde_json::Value {
    let kind = match e.status().as_u16() {
        401 => "authentication_error",
        403 => "permission_error",
        s if s >= 500 => "server_error",
        _ => "invalid_request_error",
    };
    let code = matches!(e, Error::NotFound(_)).then_some("model_not_found");
    json!({ "error": { "message": e.to_string(), "type": kind, "param": null, "code": code } })
}

/// OpenAI's model object for a model that answers here.
fn model_object(name: &str, created: u64) -> serde_json::Value {
    json!({ "id": name, "object": "model", "created": created, "owned_by": "wasmserve" })
}

/// When `name`'s default version's config was last written (OpenAI's `created`), if it has
/// `[embeddings]` or generates, whether or not it is in memory (from its declared config:
/// nothing is loaded or read again).
fn openai_model(state: &AppState, name: &str) -> Option<u64> {
    let repository = state.repository();
    let config = repository.declared(name, None).ok()?;
    if config.embeddings.is_none() && !config.generates() {
        return None;
    }
    let dir = repository.dir(name, None).ok()?;
    let created = std::fs::metadata(dir.join(crate::config::FILE_NAME))
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    Some(created)
}

/// `GET /v1/models`: the models that answer here.
async fn models(State(state): State<AppState>) -> Response {
    let mut names: Vec<String> = state.repository().statuses().into_iter().map(|s| s.name).collect();
    names.dedup();
    let data: Vec<_> =
        names.iter().filter_map(|name| Some(model_object(name, openai_model(&state, name)?))).collect();
    axum::Json(json!({ "object": "list", "data": data })).into_response()
}

/// `GET /v1/models/{m}`.
async fn model(State(state): State<AppState>, Path(name): Path<String>) -> Response {
    match openai_model(&state, &name) {
        Some(created) => axum::Json(model_object(&name, created)).into_response(),
        None => error(Error::NotFound(format!("no model '{name}' answers OpenAI's endpoints"))),
    }
}
