//! openai: OpenAI-compatible endpoints for embedding models, what the `openai` package,
//! LangChain and LlamaIndex speak.
//!
//! | method | path | answer |
//! |---|---|---|
//! | POST | `/v1/embeddings` | the vectors of `input` (a string or a list of strings) from the model `model` names |
//! | GET | `/v1/models` | the models that answer it (those with `[embeddings]` in their model.toml) |
//! | GET | `/v1/models/{m}` | one of them |
//!
//! A model answers when its config has `[embeddings]` (which input takes the texts, which
//! output holds the vectors, and optionally which holds each text's token count, for
//! `usage`); `model` may also name a route over such models. A request becomes one OIP
//! inference of the model's default version, through the same pipeline as `/v2` requests:
//! input limits, plugin, queue, batching, metrics, traces and the route's shadow. Errors use
//! OpenAI's body (`{"error": {"message", "type", "param", "code"}}`) with the status (and
//! `Retry-After`) the OIP endpoints give the same error.
//!
//! Not supported: token arrays as `input` (400: send text), `dimensions` other than the
//! model's own (400). `user` is accepted and ignored.

use super::http::{read_body, request_id};
use crate::config::{Embeddings, ModelConfig};
use crate::decode::{InferRequest, RequestedOutput};
use crate::error::{Error, Result};
use crate::pipeline::{Answer, AppState, Inference, ModelPath, Payload};
use crate::tensor::{Datatype, Tensor, push_bytes_element};
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::json;

/// Most texts in one request (OpenAI's own limit).
const MAX_INPUTS: usize = 2048;

/// The OpenAI-compatible routes, for the server's router.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/models", get(models))
        .route("/v1/models/{model}", get(model))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EmbeddingsRequest {
    input: Input,
    model: String,
    #[serde(default)]
    encoding_format: Format,
    dimensions: Option<usize>,
    /// Accepted and ignored.
    #[serde(rename = "user")]
    _user: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Input {
    One(String),
    Many(Vec<String>),
    /// Token ids (a list of integers, or of lists): not supported.
    Other(serde::de::IgnoredAny),
}

#[derive(Deserialize, Default, Clone, Copy, PartialEq)]
#[serde(rename_all = "lowercase")]
enum Format {
    #[default]
    Float,
    /// Each vector's little-endian FP32 bytes, in base64 (what the `openai` package asks for).
    Base64,
}

impl Input {
    fn texts(self) -> Result<Vec<String>> {
        let texts = match self {
            Input::One(text) => vec![text],
            Input::Many(texts) => texts,
            Input::Other(_) => {
                return Err(Error::bad_request(
                    "'input' must be a string or a list of strings: token arrays are not supported, send the text",
                ));
            }
        };
        if texts.is_empty() || texts.len() > MAX_INPUTS {
            return Err(Error::bad_request(format!(
                "'input' must hold 1 to {MAX_INPUTS} texts, not {}",
                texts.len()
            )));
        }
        Ok(texts)
    }
}

#[derive(Serialize)]
struct EmbeddingsResponse {
    object: &'static str,
    data: Vec<Embedding>,
    model: String,
    usage: Usage,
}

#[derive(Serialize)]
struct Embedding {
    object: &'static str,
    index: usize,
    embedding: Vector,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Vector {
    Float(Vec<f32>),
    Base64(String),
}

#[derive(Serialize)]
struct Usage {
    prompt_tokens: i64,
    total_tokens: i64,
}

/// `POST /v1/embeddings`.
async fn embeddings(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let mut logged = None;
    let answer = async {
        let body = read_body(state.max_body_bytes(), &headers, body).await?;
        let EmbeddingsRequest { input, model, encoding_format, dimensions, .. } =
            serde_json::from_slice(&body)
                .map_err(|e| Error::bad_request(format!("invalid embeddings request: {e}")))?;
        let texts = input.texts()?;
        let path = ModelPath { model, version: None };
        let requested = path.model.clone();
        // The request is built from what the model declares (loading nothing), then checked
        // against the model that answers.
        let (name, declared) = state.declared(&path)?;
        let spec = embeddings_of(&name, &declared)?;
        let payload = Payload::Tensors(Ok(oip_request(spec, &texts)));
        let id = request_id(None, &headers);
        let inference = Inference { path, id: &id, headers: &headers, payload, logged_body: Some(body) };
        let reply = state.infer(inference).await;
        logged = reply.logged;
        let Answer { model, outputs, observation, .. } = reply.answer?;
        let asked = Asked { model: &requested, format: encoding_format, dimensions };
        let answer =
            embeddings_of(&model.name, &model.config).and_then(|spec| answer(spec, &outputs, &asked));
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

/// The `[embeddings]` of the model `name` with `config`, or why it does not answer
/// `/v1/embeddings`.
fn embeddings_of<'c>(name: &str, config: &'c ModelConfig) -> Result<&'c Embeddings> {
    config.embeddings.as_ref().ok_or_else(|| {
        Error::bad_request(format!(
            "model '{name}' is not an embedding model (its model.toml has no [embeddings])"
        ))
    })
}

/// The texts as the OIP request the model takes: one BYTES element each (the pipeline
/// checks it against the model's inputs and limits as it checks a `/v2` request).
fn oip_request(spec: &Embeddings, texts: &[String]) -> InferRequest {
    let mut data = Vec::with_capacity(texts.iter().map(|t| t.len() + 4).sum());
    texts.iter().for_each(|t| push_bytes_element(&mut data, t.as_bytes()));
    let inputs = vec![Tensor {
        name: spec.input.clone(),
        datatype: Datatype::Bytes,
        shape: vec![texts.len() as i64],
        data,
    }];
    let outputs = std::iter::once(&spec.output)
        .chain(&spec.tokens)
        .map(|name| RequestedOutput { name: name.clone(), binary: None })
        .collect();
    InferRequest { id: None, params: Vec::new(), inputs, outputs, binary_outputs: false }
}

/// How the client wants its answer.
struct Asked<'a> {
    /// The model (or route) the request named.
    model: &'a str,
    format: Format,
    dimensions: Option<usize>,
}

/// The model's outputs as OpenAI's answer.
fn answer(spec: &Embeddings, outputs: &[Tensor], request: &Asked) -> Result<EmbeddingsResponse> {
    let output = |name: &str| {
        outputs.iter().find(|t| t.name == name).ok_or_else(|| Error::Internal(format!("no output '{name}'")))
    };
    let vectors = output(&spec.output)?;
    let &[rows, dims] = vectors.shape.as_slice() else {
        return Err(Error::Internal(format!("output '{}' has shape {:?}", spec.output, vectors.shape)));
    };
    let (rows, dims) = (rows as usize, dims as usize);
    if let Some(asked) = request.dimensions.filter(|&d| d != dims) {
        return Err(Error::bad_request(format!(
            "'dimensions': this model's embeddings have {dims} dimensions, not {asked} (shortening is not supported)"
        )));
    }
    let data = vectors
        .data
        .chunks_exact(dims * 4)
        .take(rows)
        .enumerate()
        .map(|(index, bytes)| Embedding {
            object: "embedding",
            index,
            embedding: match request.format {
                Format::Base64 => Vector::Base64(base64::engine::general_purpose::STANDARD.encode(bytes)),
                Format::Float => Vector::Float(
                    bytes
                        .chunks_exact(4)
                        .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
                        .collect(),
                ),
            },
        })
        .collect();
    let tokens = match &spec.tokens {
        Some(name) => output(name)?
            .data
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")))
            .sum(),
        None => 0,
    };
    Ok(EmbeddingsResponse {
        object: "list",
        data,
        model: request.model.to_string(),
        usage: Usage { prompt_tokens: tokens, total_tokens: tokens },
    })
}

/// An error as OpenAI's clients read it: the status and headers the OIP endpoints give it,
/// OpenAI's body.
fn error(e: Error) -> Response {
    let status = e.status();
    let kind = match status.as_u16() {
        401 => "authentication_error",
        403 => "permission_error",
        s if s >= 500 => "server_error",
        _ => "invalid_request_error",
    };
    let code = matches!(e, Error::NotFound(_)).then_some("model_not_found");
    let body = json!({ "error": { "message": e.to_string(), "type": kind, "param": null, "code": code } });
    let mut response = e.into_response();
    *response.body_mut() = Body::from(body.to_string());
    response
}

/// OpenAI's model object for a model that answers `/v1/embeddings`.
fn model_object(name: &str, created: u64) -> serde_json::Value {
    json!({ "id": name, "object": "model", "created": created, "owned_by": "wasmserve" })
}

/// When `name`'s default version's config was last written (OpenAI's `created`), if it has
/// `[embeddings]`, whether or not it is in memory (from its declared config: nothing is
/// loaded or read again).
fn embedding_model(state: &AppState, name: &str) -> Option<u64> {
    let repository = state.repository();
    let config = repository.declared(name, None).ok()?;
    config.embeddings.as_ref()?;
    let dir = repository.dir(name, None).ok()?;
    let created = std::fs::metadata(dir.join(crate::config::FILE_NAME))
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    Some(created)
}

/// `GET /v1/models`: the models that answer `/v1/embeddings`.
async fn models(State(state): State<AppState>) -> Response {
    let mut names: Vec<String> = state.repository().statuses().into_iter().map(|s| s.name).collect();
    names.dedup();
    let data: Vec<_> =
        names.iter().filter_map(|name| Some(model_object(name, embedding_model(&state, name)?))).collect();
    axum::Json(json!({ "object": "list", "data": data })).into_response()
}

/// `GET /v1/models/{m}`.
async fn model(State(state): State<AppState>, Path(name): Path<String>) -> Response {
    match embedding_model(&state, &name) {
        Some(created) => axum::Json(model_object(&name, created)).into_response(),
        None => error(Error::NotFound(format!("no embedding model '{name}'"))),
    }
}
