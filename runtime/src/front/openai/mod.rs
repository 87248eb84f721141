//! openai: OpenAI-compatible endpoints, what the `openai` package, LangChain and LlamaIndex
//! speak.
//!
//! | method | path | answer |
//! |---|---|---|
//! | POST | `/v1/chat/completions` | a chat answer from a generative model, whole or streamed (server-sent events) |
//! | POST | `/v1/completions` | a text's continuation from a generative model, whole or streamed |
//! | POST | `/v1/embeddings` | the vectors of `input` (a string or a list of strings) from the model `model` names |
//! | POST | `/v1/rerank` | `documents` ordered by their relevance to `query` (Cohere's and Jina's shape); also at `/v2/rerank`, Cohere's v2 path |
//! | GET | `/v1/models` | the models that answer them (generative ones, and those with `[embeddings]` or `[rerank]`) |
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
//! Rerank ([`rerank`]): a model answers when its config has `[rerank]` (a `[text]` reranker
//! has it): the query and every document go to the model as one OIP inference, so the
//! cross-encoder scores all the (query, document) pairs in one batched graph run.
//!
//! Chat and completions ([`chat`]): a generative model (`graph.backend = "ggml"`) answers;
//! see that module for the fields it takes.
//!
//! Errors use OpenAI's body (`{"error": {"message", "type", "param", "code"}}`) with the
//! status (and `Retry-After`) the OIP endpoints give the same error.

mod chat;
mod embeddings;
mod rerank;

use crate::config::ModelConfig;
use crate::decode::{InferRequest, RequestedOutput};
use crate::error::{Error, Result};
use crate::front::http::{read_body, request_id};
use crate::pipeline::{Answer, AppState, Inference, ModelPath, Payload};
use crate::tensor::{Datatype, Tensor, push_bytes_element};
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

/// The OpenAI-compatible routes, for the server's router.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/chat/completions", post(chat::chat))
        .route("/v1/completions", post(chat::completions))
        .route("/v1/embeddings", post(embeddings::embeddings))
        .route("/v1/rerank", post(rerank::rerank))
        // Cohere's v2 path (cohere.ClientV2), the same request less what v2 dropped.
        .route("/v2/rerank", post(rerank::rerank))
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
    if config.embeddings.is_none() && config.rerank.is_none() && !config.generates() {
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

/// An endpoint served by one OIP inference: it reads its body into the request, and makes
/// its answer of the outputs.
trait OneInference: Sized {
    /// What the endpoint answers.
    type Answer: serde::Serialize;
    /// The body, read: the model (or route) it names.
    fn model(&self) -> &str;
    /// The OIP request for the model whose config is `config` (what it declares: nothing is
    /// loaded), named `name` in errors.
    fn request(&self, name: &str, config: &ModelConfig) -> Result<InferRequest>;
    /// The answer to request `id`, of the outputs of the model `name` with `config` that
    /// answered.
    fn answer(self, id: &str, name: &str, config: &ModelConfig, outputs: &[Tensor]) -> Result<Self::Answer>;
}

/// Serve `E`: read its body, run its inference through the pipeline (as a `/v2` request
/// runs: input limits, plugin, queue, batching, metrics, traces, the route's shadow,
/// payload logging), answer in JSON or in OpenAI's error body.
async fn serve<E: OneInference + serde::de::DeserializeOwned>(
    state: AppState,
    headers: HeaderMap,
    body: Body,
    what: &str,
) -> Response {
    let mut logged = None;
    let answer = async {
        let body = read_body(state.max_body_bytes(), &headers, body).await?;
        let asked: E = serde_json::from_slice(&body)
            .map_err(|e| Error::bad_request(format!("invalid {what} request: {e}")))?;
        let path = ModelPath { model: asked.model().to_string(), version: None };
        // The request is built from what the model declares (loading nothing), then checked
        // against the model that answers.
        let (name, declared) = state.declared(&path)?;
        let payload = Payload::Tensors(Ok(asked.request(&name, &declared)?));
        let id = request_id(None, &headers);
        let inference = Inference { path, id: &id, headers: &headers, payload, logged_body: Some(body) };
        let reply = state.infer(inference).await;
        logged = reply.logged;
        let Answer { model, outputs, observation, .. } = reply.answer?;
        let answer = asked.answer(&id, &model.name, &model.config, &outputs);
        observation.close(answer.as_ref().map(|_| ()));
        answer
    }
    .await;
    let response = match answer {
        Ok(answer) => axum::Json(answer).into_response(),
        Err(e) => error(e),
    };
    crate::observe::payloads::respond(logged, response).await
}

/// `usage` of an answer that generates nothing: its input tokens.
#[derive(serde::Serialize)]
struct Usage {
    prompt_tokens: i64,
    total_tokens: i64,
}

impl Usage {
    fn of(tokens: i64) -> Self {
        Self { prompt_tokens: tokens, total_tokens: tokens }
    }
}

/// A BYTES tensor of `texts`, one element each.
fn texts_tensor(name: &str, texts: &[&str]) -> Tensor {
    let mut data = Vec::with_capacity(texts.iter().map(|t| t.len() + 4).sum());
    texts.iter().for_each(|t| push_bytes_element(&mut data, t.as_bytes()));
    Tensor { name: name.to_string(), datatype: Datatype::Bytes, shape: vec![texts.len() as i64], data }
}

/// An OIP request of `inputs` asking for the outputs named.
fn oip_request<'a>(inputs: Vec<Tensor>, outputs: impl IntoIterator<Item = &'a String>) -> InferRequest {
    let outputs =
        outputs.into_iter().map(|name| RequestedOutput { name: name.clone(), binary: None }).collect();
    InferRequest { id: None, params: Vec::new(), inputs, outputs, binary_outputs: false }
}

/// Output `name` of the model's answer.
fn output<'a>(outputs: &'a [Tensor], name: &str) -> Result<&'a Tensor> {
    outputs.iter().find(|t| t.name == name).ok_or_else(|| Error::Internal(format!("no output '{name}'")))
}

/// FP32 elements out of a tensor's little-endian data (vectors, scores).
fn fp32s(data: &[u8]) -> Vec<f32> {
    data.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes"))).collect()
}

/// The tokens the model's INT64 output `name` counts, all rows together (0 without one):
/// what `usage` reports.
fn tokens(outputs: &[Tensor], name: Option<&String>) -> Result<i64> {
    let Some(name) = name else { return Ok(0) };
    Ok(output(outputs, name)?
        .data
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")))
        .sum())
}
