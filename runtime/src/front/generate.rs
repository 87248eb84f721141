//! generate: Triton's generate extension, for generative models.
//!
//! | method | path | answer |
//! |---|---|---|
//! | POST | `/v2/models/{m}[/versions/{v}]/generate` | `{"model_name", "model_version", "text_output"}`: the whole answer |
//! | POST | `/v2/models/{m}[/versions/{v}]/generate_stream` | the same as server-sent events, one per part of the text |
//!
//! The body is Triton's: `text_input` (the prompt, continued as it is: no chat template)
//! and the sampling settings, at the top level (as TensorRT-LLM's models take them) or in
//! `parameters` (as vLLM's do): `max_tokens`, `temperature`, `top_p`, `top_k`, `seed`,
//! `repetition_penalty`, `stop` or `stop_words` (a string or a list), `stream` (ignored: the
//! path says). Other parameters reach the plugin as strings. Errors are Triton's: before the
//! first text an HTTP status with `{"error": "..."}`; after it, an event `data: {"error": "..."}`.

use super::http::{event_stream, read_body, request_id};
use crate::error::{Error, Result};
use crate::pipeline::{AppState, Generation, ModelPath, Part, Stream};
use crate::plugin::{GenerationRequest, Prompt};
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Map, Value, json};

/// The generate extension's routes, for the server's router.
pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v2/models/{model}/generate", post(whole))
        .route("/v2/models/{model}/versions/{version}/generate", post(whole))
        .route("/v2/models/{model}/generate_stream", post(streamed))
        .route("/v2/models/{model}/versions/{version}/generate_stream", post(streamed))
}

async fn whole(state: State<AppState>, path: Path<ModelPath>, headers: HeaderMap, body: Body) -> Response {
    generate(state, path, headers, body, false).await
}

async fn streamed(state: State<AppState>, path: Path<ModelPath>, headers: HeaderMap, body: Body) -> Response {
    generate(state, path, headers, body, true).await
}

async fn generate(
    State(state): State<AppState>,
    Path(path): Path<ModelPath>,
    headers: HeaderMap,
    body: Body,
    stream: bool,
) -> Response {
    let body = match read_body(state.max_body_bytes(), &headers, body).await {
        Ok(body) => body,
        Err(e) => return e.into_response(),
    };
    let id = request_id(None, &headers);
    let request = serde_json::from_slice::<Map<String, Value>>(&body)
        .map_err(|e| Error::bad_request(format!("invalid generate request: {e}")))
        .and_then(generation_request);
    let generation = Generation { path, id: &id, headers: &headers, request, logged_body: Some(body) };
    let (answer, logged) = state.generate(generation).await;
    let response = match answer {
        Ok(answer) if stream => return events(answer),
        Ok(mut answer) => {
            let names = names(&answer);
            let (text, end) = answer.whole().await;
            let response = match end {
                Ok(_) => axum::Json(
                    json!({ "model_name": names.0, "model_version": names.1, "text_output": text }),
                )
                .into_response(),
                Err(e) => e.into_response(),
            };
            return crate::observe::payloads::respond(answer.logged.take(), response).await;
        }
        Err(e) => e.into_response(),
    };
    crate::observe::payloads::respond(logged, response).await
}

/// The model's name and version, as Triton's answers name them.
fn names(stream: &Stream) -> (String, String) {
    (stream.model.name.clone(), stream.model.config.version.clone())
}

/// Each part of the answer as an event; the end as none (a failure as an error event).
fn events(stream: Stream) -> Response {
    let names = names(&stream);
    let events = futures::stream::unfold(Some(stream), move |stream| {
        let names = names.clone();
        async move {
            let mut stream = stream?;
            let event = match stream.next().await? {
                Part::Text(text) => {
                    json!({ "model_name": names.0, "model_version": names.1, "text_output": text })
                }
                Part::End(Ok(_)) => return None,
                Part::End(Err(e)) => {
                    let event = json!({ "error": e.to_string() });
                    return Some((format!("data: {event}\n\n"), None));
                }
            };
            Some((format!("data: {event}\n\n"), Some(stream)))
        }
    });
    event_stream(events)
}

/// Triton's body as the plugin takes it (gRPC's `ModelStreamInfer` builds one from its tensors).
pub(super) fn generation_request(mut body: Map<String, Value>) -> Result<GenerationRequest> {
    let text = match body.remove("text_input") {
        Some(Value::String(text)) => text,
        Some(_) => return Err(Error::bad_request("'text_input' must be a string")),
        None => return Err(Error::bad_request("'text_input' is required")),
    };
    let mut settings = match body.remove("parameters") {
        Some(Value::Object(parameters)) => parameters,
        Some(_) => return Err(Error::bad_request("'parameters' must be an object")),
        None => Map::new(),
    };
    // TensorRT-LLM's models take the settings at the top level.
    settings.extend(body);
    let number = |settings: &mut Map<String, Value>, key: &str| -> Result<Option<f64>> {
        match settings.remove(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => Ok(n.as_f64()),
            Some(other) => Err(Error::bad_request(format!("'{key}' must be a number, not {other}"))),
        }
    };
    let count = |value: Option<f64>, key: &str| -> Result<Option<u32>> {
        value
            .map(|v| {
                (v >= 0.0 && v.fract() == 0.0 && v <= f64::from(u32::MAX))
                    .then_some(v as u32)
                    .ok_or_else(|| Error::bad_request(format!("'{key}' must be a whole number, not {v}")))
            })
            .transpose()
    };
    let max_tokens = count(number(&mut settings, "max_tokens")?, "max_tokens")?;
    let top_k = count(number(&mut settings, "top_k")?, "top_k")?;
    let temperature = number(&mut settings, "temperature")?.map(|v| v as f32);
    let top_p = number(&mut settings, "top_p")?.map(|v| v as f32);
    let repetition_penalty = number(&mut settings, "repetition_penalty")?.map(|v| v as f32);
    let seed = number(&mut settings, "seed")?.map(|v| v as u64);
    if max_tokens == Some(0) {
        return Err(Error::bad_request("'max_tokens' must be at least 1"));
    }
    let mut stop = Vec::new();
    for key in ["stop", "stop_words"] {
        match settings.remove(key) {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) if s.is_empty() => {}
            Some(Value::String(s)) => stop.push(s),
            Some(Value::Array(items)) => {
                for item in items {
                    let Value::String(s) = item else {
                        return Err(Error::bad_request(format!("'{key}': a string or a list of strings")));
                    };
                    stop.push(s);
                }
            }
            Some(_) => return Err(Error::bad_request(format!("'{key}': a string or a list of strings"))),
        }
    }
    settings.remove("stream");
    let params = settings
        .into_iter()
        .map(|(k, v)| match v {
            Value::String(s) => (k, s),
            other => (k, other.to_string()),
        })
        .collect();
    Ok(GenerationRequest {
        model: String::new(),
        prompt: Prompt::Text(text),
        context_length: 0,
        max_tokens,
        temperature,
        top_p,
        top_k,
        seed,
        repetition_penalty,
        stop,
        params,
    })
}
