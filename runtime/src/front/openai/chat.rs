//! chat: `POST /v1/chat/completions` and `POST /v1/completions`, answered by a generative
//! model's plugin, whole or as server-sent events (`stream: true`) ending with `data: [DONE]`.
//!
//! Fields taken: `model`, `messages` (text content, or text parts) or `prompt` (a string, or
//! a list of one), `max_tokens` / `max_completion_tokens`, `temperature`, `top_p`, `seed`,
//! `stop` (a string or up to 4), `stream`, `stream_options.include_usage`, and, as llama.cpp
//! and vLLM take them, `top_k` and `repetition_penalty`. `user`, `store`, `metadata` and
//! `service_tier` are accepted and ignored; `n` other than 1, `logprobs`, `tools`,
//! `response_format` other than text, `logit_bias`, penalties other than 0, `echo`,
//! `suffix` and `best_of` other than 1 are refused (400, naming the field); a field OpenAI
//! does not know is refused as OpenAI refuses it ("Unrecognized request argument
//! supplied"). A client that leaves mid-stream stops its generation at the next step.

use super::{error, error_body};
use crate::error::{Error, Result};
use crate::front::http::{event_stream, read_body, request_id};
use crate::pipeline::{AppState, Generation, ModelPath, Part, Stream};
use crate::plugin::{FinishReason, GenerationEnd, GenerationRequest, Message, Prompt};
use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

/// Most stop strings (OpenAI's limit).
const MAX_STOP: usize = 4;

/// Fields of either request, as OpenAI names them.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Request {
    model: String,
    messages: Option<Vec<ChatMessage>>,
    prompt: Option<Value>,
    max_tokens: Option<u32>,
    max_completion_tokens: Option<u32>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<u32>,
    repetition_penalty: Option<f32>,
    seed: Option<i64>,
    stop: Option<Value>,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
    n: Option<u32>,
    best_of: Option<u32>,
    logprobs: Option<Value>,
    top_logprobs: Option<Value>,
    echo: Option<bool>,
    suffix: Option<String>,
    tools: Option<Value>,
    tool_choice: Option<Value>,
    parallel_tool_calls: Option<Value>,
    functions: Option<Value>,
    function_call: Option<Value>,
    response_format: Option<Value>,
    logit_bias: Option<serde_json::Map<String, Value>>,
    frequency_penalty: Option<f32>,
    presence_penalty: Option<f32>,
    // Accepted and ignored.
    #[serde(rename = "user")]
    _user: Option<Value>,
    #[serde(rename = "store")]
    _store: Option<Value>,
    #[serde(rename = "metadata")]
    _metadata: Option<Value>,
    #[serde(rename = "service_tier")]
    _service_tier: Option<Value>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

#[derive(Deserialize)]
struct ChatMessage {
    role: String,
    #[serde(default)]
    content: Option<Content>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Deserialize)]
struct ContentPart {
    #[serde(rename = "type")]
    kind: String,
    text: Option<String>,
}

/// Which endpoint: what the answer's objects are called and where the text goes.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Chat,
    Completion,
}

impl Kind {
    fn object(self, streamed: bool) -> &'static str {
        match (self, streamed) {
            (Kind::Chat, false) => "chat.completion",
            (Kind::Chat, true) => "chat.completion.chunk",
            (Kind::Completion, _) => "text_completion",
        }
    }

    fn id_prefix(self) -> &'static str {
        match self {
            Kind::Chat => "chatcmpl-",
            Kind::Completion => "cmpl-",
        }
    }
}

/// `POST /v1/chat/completions`.
pub(super) async fn chat(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    respond(state, headers, body, Kind::Chat).await
}

/// `POST /v1/completions`.
pub(super) async fn completions(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    respond(state, headers, body, Kind::Completion).await
}

/// What the client asked for beyond the generation itself.
struct Asked {
    kind: Kind,
    model: String,
    id: String,
    created: u64,
    stream: bool,
    include_usage: bool,
}

async fn respond(state: AppState, headers: HeaderMap, body: Body, kind: Kind) -> Response {
    let body = match read_body(state.max_body_bytes(), &headers, body).await {
        Ok(body) => body,
        Err(e) => return error(e),
    };
    // A body that is not a request names no model to count it against.
    let parsed = match serde_json::from_slice::<Request>(&body) {
        Ok(parsed) => parsed,
        Err(e) => return error(unrecognized(e)),
    };
    let model = parsed.model.clone();
    let id = request_id(None, &headers);
    let asked = Asked {
        kind,
        model: model.clone(),
        id: format!("{}{}", kind.id_prefix(), id),
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        stream: parsed.stream,
        include_usage: parsed.stream_options.as_ref().is_some_and(|o| o.include_usage),
    };
    let request = generation_request(parsed, kind);
    let path = ModelPath { model, version: None };
    let generation = Generation { path, id: &id, headers: &headers, request, logged_body: Some(body) };
    let (stream, logged) = state.generate(generation).await;
    match stream {
        Ok(stream) if asked.stream => streamed(stream, asked),
        Ok(stream) => whole(stream, asked).await,
        Err(e) => crate::observe::payloads::respond(logged, error(e)).await,
    }
}

/// A JSON body OpenAI would refuse, refused in its words.
fn unrecognized(e: serde_json::Error) -> Error {
    let message = e.to_string();
    match message.strip_prefix("unknown field `").and_then(|rest| rest.split_once('`')) {
        Some((field, _)) => Error::bad_request(format!("Unrecognized request argument supplied: {field}")),
        None => Error::bad_request(format!("invalid request: {message}")),
    }
}

/// The request as the plugin takes it, or why it cannot be served.
fn generation_request(r: Request, kind: Kind) -> Result<GenerationRequest> {
    let unsupported = |field: &str, why: &str| Err(Error::bad_request(format!("'{field}': {why}")));
    if r.n.is_some_and(|n| n != 1) {
        return unsupported("n", "only 1 choice per request is generated here: send several requests");
    }
    if r.best_of.is_some_and(|n| n != 1) {
        return unsupported("best_of", "only 1 is supported");
    }
    if r.logprobs.as_ref().is_some_and(|v| !v.is_null() && *v != json!(false)) || r.top_logprobs.is_some() {
        return unsupported("logprobs", "log probabilities are not returned by this server");
    }
    if r.echo == Some(true) {
        return unsupported("echo", "not supported");
    }
    if r.suffix.is_some() {
        return unsupported("suffix", "not supported");
    }
    if r.tools.is_some() || r.tool_choice.is_some() || r.parallel_tool_calls.is_some() {
        return unsupported("tools", "tool calls are not supported yet");
    }
    if r.functions.is_some() || r.function_call.is_some() {
        return unsupported("functions", "function calls are not supported");
    }
    if let Some(format) = &r.response_format
        && format.get("type").and_then(Value::as_str) != Some("text")
    {
        return unsupported("response_format", "only {\"type\": \"text\"} is supported");
    }
    if r.logit_bias.as_ref().is_some_and(|b| !b.is_empty()) {
        return unsupported("logit_bias", "not supported");
    }
    for (field, value) in
        [("frequency_penalty", r.frequency_penalty), ("presence_penalty", r.presence_penalty)]
    {
        if value.is_some_and(|v| v != 0.0) {
            return unsupported(field, "not supported (repetition_penalty is)");
        }
    }
    if let Some(t) = r.temperature.filter(|t| !(0.0..=2.0).contains(t)) {
        return unsupported("temperature", &format!("{t} is not between 0 and 2"));
    }
    if let Some(p) = r.top_p.filter(|p| !(0.0..=1.0).contains(p)) {
        return unsupported("top_p", &format!("{p} is not between 0 and 1"));
    }
    if let Some(p) = r.repetition_penalty.filter(|p| *p <= 0.0) {
        return unsupported("repetition_penalty", &format!("{p} is not above 0"));
    }
    if r.max_tokens.is_some() && r.max_completion_tokens.is_some() {
        return unsupported("max_tokens", "give max_tokens or max_completion_tokens, not both");
    }
    let max_tokens = r.max_tokens.or(r.max_completion_tokens);
    if max_tokens == Some(0) {
        return unsupported("max_tokens", "must be at least 1");
    }
    let prompt = match kind {
        Kind::Chat => {
            if r.prompt.is_some() {
                return unsupported("prompt", "a chat completion takes 'messages'");
            }
            let messages = r.messages.ok_or_else(|| Error::bad_request("'messages' is required"))?;
            if messages.is_empty() {
                return unsupported("messages", "at least one message is required");
            }
            Prompt::Chat(messages.into_iter().map(message).collect::<Result<_>>()?)
        }
        Kind::Completion => {
            if r.messages.is_some() {
                return unsupported(
                    "messages",
                    "a completion takes 'prompt' (chat goes to /v1/chat/completions)",
                );
            }
            Prompt::Text(prompt(r.prompt)?)
        }
    };
    let stop = match r.stop {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s],
        Some(Value::Array(items)) => items
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Ok(s),
                _ => Err(Error::bad_request("'stop': a string or a list of strings")),
            })
            .collect::<Result<_>>()?,
        Some(_) => return unsupported("stop", "a string or a list of strings"),
    };
    if stop.len() > MAX_STOP || stop.iter().any(String::is_empty) {
        return unsupported("stop", &format!("up to {MAX_STOP} strings, none empty"));
    }
    Ok(GenerationRequest {
        model: String::new(),
        prompt,
        context_length: 0,
        max_tokens,
        temperature: r.temperature,
        top_p: r.top_p,
        top_k: r.top_k,
        seed: r.seed.map(|s| s as u64),
        repetition_penalty: r.repetition_penalty,
        stop,
        params: Vec::new(),
    })
}

/// One chat message as the template takes it: its text (text parts joined).
fn message(m: ChatMessage) -> Result<Message> {
    let content = match m.content {
        None => String::new(),
        Some(Content::Text(text)) => text,
        Some(Content::Parts(parts)) => parts
            .into_iter()
            .map(|p| match (p.kind.as_str(), p.text) {
                ("text", Some(text)) => Ok(text),
                (kind, _) => Err(Error::bad_request(format!(
                    "'messages': content of type '{kind}' is not supported (text only)"
                ))),
            })
            .collect::<Result<Vec<_>>>()?
            .concat(),
    };
    Ok(Message { role: m.role, content })
}

/// A completion's prompt: a string, or a list of one.
fn prompt(value: Option<Value>) -> Result<String> {
    match value {
        Some(Value::String(text)) => Ok(text),
        Some(Value::Array(mut items)) if items.len() == 1 && items[0].is_string() => {
            Ok(items.remove(0).as_str().unwrap_or_default().to_string())
        }
        Some(Value::Array(_)) => Err(Error::bad_request(
            "'prompt': one string per request (token arrays and batches are not supported)",
        )),
        Some(_) => Err(Error::bad_request("'prompt' must be a string")),
        None => Err(Error::bad_request("'prompt' is required")),
    }
}

fn finish_reason(end: &GenerationEnd) -> &'static str {
    match end.finish_reason {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
    }
}

fn usage(end: &GenerationEnd) -> Value {
    let (prompt, completion) = (end.prompt_tokens, end.completion_tokens);
    json!({ "prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion })
}

/// The whole answer as one response, once the generation ends.
async fn whole(mut stream: Stream, asked: Asked) -> Response {
    let (text, end) = stream.whole().await;
    let logged = stream.logged.take();
    let response = match end {
        Ok(end) => {
            let choice = match asked.kind {
                Kind::Chat => json!({
                    "index": 0,
                    "message": { "role": "assistant", "content": text, "refusal": null },
                    "logprobs": null,
                    "finish_reason": finish_reason(&end),
                }),
                Kind::Completion => json!({
                    "index": 0, "text": text, "logprobs": null, "finish_reason": finish_reason(&end),
                }),
            };
            axum::Json(json!({
                "id": asked.id,
                "object": asked.kind.object(false),
                "created": asked.created,
                "model": asked.model,
                "system_fingerprint": null,
                "choices": [choice],
                "usage": usage(&end),
            }))
            .into_response()
        }
        Err(e) => error(e),
    };
    crate::observe::payloads::respond(logged, response).await
}

/// The answer as server-sent events: a chunk per part, the finish reason, the usage if
/// asked for, `[DONE]`. An error after the first part is an event with OpenAI's error body
/// (the `openai` package raises it), then the stream ends.
fn streamed(stream: Stream, asked: Asked) -> Response {
    let state = Streaming { stream, asked, text: String::new(), started: false, done: false };
    let events = futures::stream::unfold(state, |mut s| async move { Some((s.next_event().await?, s)) });
    event_stream(events)
}

/// A streamed answer between events.
struct Streaming {
    stream: Stream,
    asked: Asked,
    /// The answer so far, for the payload log.
    text: String,
    /// The chat's first chunk (the role) is sent.
    started: bool,
    done: bool,
}

impl Streaming {
    /// The next events, as one piece of the body; none once `[DONE]` is sent.
    async fn next_event(&mut self) -> Option<String> {
        if self.done {
            return None;
        }
        let mut out = String::new();
        if self.asked.kind == Kind::Chat && !self.started {
            self.started = true;
            let delta = json!({ "role": "assistant", "content": "" });
            out.push_str(
                &self.chunk(json!([{ "index": 0, "delta": delta, "logprobs": null, "finish_reason": null }])),
            );
        }
        match self.stream.next().await {
            Some(Part::Text(text)) => {
                self.text.push_str(&text);
                out.push_str(&self.chunk(json!([self.choice(Some(&text), None)])));
            }
            Some(Part::End(Ok(end))) => {
                out.push_str(&self.chunk(json!([self.choice(None, Some(finish_reason(&end)))])));
                if self.asked.include_usage {
                    out.push_str(&self.chunk_with_usage(usage(&end)));
                }
                out.push_str("data: [DONE]\n\n");
                self.done = true;
                self.log(200, Some(&end));
            }
            Some(Part::End(Err(e))) => {
                let status = e.status().as_u16();
                tracing::warn!(model = %self.asked.model, "generation failed mid-stream: {e}");
                out.push_str(&format!("data: {}\n\n", error_body(&e)));
                self.done = true;
                self.log(status, None);
            }
            None => {
                self.done = true;
                out.push_str("data: [DONE]\n\n");
            }
        }
        Some(out)
    }

    fn choice(&self, text: Option<&str>, finish: Option<&str>) -> Value {
        match self.asked.kind {
            Kind::Chat => {
                let delta = text.map_or(json!({}), |t| json!({ "content": t }));
                json!({ "index": 0, "delta": delta, "logprobs": null, "finish_reason": finish })
            }
            Kind::Completion => {
                json!({ "index": 0, "text": text.unwrap_or(""), "logprobs": null, "finish_reason": finish })
            }
        }
    }

    fn chunk(&self, choices: Value) -> String {
        let mut chunk = self.envelope();
        chunk["choices"] = choices;
        if self.asked.include_usage {
            chunk["usage"] = Value::Null;
        }
        format!("data: {chunk}\n\n")
    }

    fn chunk_with_usage(&self, usage: Value) -> String {
        let mut chunk = self.envelope();
        chunk["choices"] = json!([]);
        chunk["usage"] = usage;
        format!("data: {chunk}\n\n")
    }

    fn envelope(&self) -> Value {
        json!({
            "id": self.asked.id,
            "object": self.asked.kind.object(true),
            "created": self.asked.created,
            "model": self.asked.model,
            "system_fingerprint": null,
        })
    }

    /// Log the streamed answer as the whole response it adds up to.
    fn log(&mut self, status: u16, end: Option<&GenerationEnd>) {
        let Some(logged) = self.stream.logged.take() else { return };
        let body = json!({
            "id": self.asked.id,
            "object": self.asked.kind.object(false),
            "model": self.asked.model,
            "text": self.text,
            "finish_reason": end.map(finish_reason),
            "usage": end.map(usage),
        });
        logged.whole_response(status, bytes::Bytes::from(body.to_string()));
    }
}
