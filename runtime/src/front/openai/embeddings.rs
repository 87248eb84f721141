//! embeddings: `POST /v1/embeddings`, one OIP inference of a model with `[embeddings]`.

use super::error;
use crate::config::{Embeddings, ModelConfig};
use crate::decode::{InferRequest, RequestedOutput};
use crate::error::{Error, Result};
use crate::front::http::{read_body, request_id};
use crate::pipeline::{Answer, AppState, Inference, ModelPath, Payload};
use crate::tensor::{Datatype, Tensor, push_bytes_element};
use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde::{Deserialize, Serialize};

/// Most texts in one request (OpenAI's own limit).
const MAX_INPUTS: usize = 2048;

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
pub(super) async fn embeddings(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
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
