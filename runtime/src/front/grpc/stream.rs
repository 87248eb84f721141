//! stream: `ModelStreamInfer`, Triton's bidirectional stream (what `tritonclient.grpc`'s
//! `start_stream` and `async_stream_infer` speak).
//!
//! Requests are answered as they arrive, side by side, each response tagged with its
//! request's `id`; a failed request is answered by an `error_message` (and its id) and the
//! stream goes on. A tensor model's request gets one response, as `ModelInfer` gives. A
//! generative model's request is Triton's decoupled one (vLLM's and TensorRT-LLM's models):
//! the prompt in the BYTES input `text_input`; the settings as one-element inputs
//! (`max_tokens`, `temperature`, `stream`...), in `sampling_parameters` (vLLM: a JSON object
//! in a BYTES input) or as the request's parameters; the answer in the BYTES output
//! `text_output`, one response per part of the text when `stream` is true, else one with the
//! whole. The prompt is not echoed (as with vLLM's `exclude_input_in_output`). With
//! `triton_enable_empty_final_response` (tritonclient's `enable_empty_final_response`) every
//! response says whether it is the last (`triton_final_response`), and the last is empty.
//! A client that closes the stream stops its generations at their next step.

use super::{Grpc, decode, path, status};
use crate::error::{Error, Result};
use crate::pipeline::{Generation, Part, Stream};
use crate::proto::infer_parameter::ParameterChoice;
use crate::proto::model_infer_response::InferOutputTensor;
use crate::proto::{InferParameter, ModelInferRequest, ModelInferResponse, ModelStreamInferResponse};
use crate::tensor::{Datatype, Tensor, bytes_elements, push_bytes_element};
use axum::http::HeaderMap;
use serde_json::{Map, Value};
use std::collections::HashMap;
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

/// The responses of one `ModelStreamInfer` call.
pub(super) type Responses =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<ModelStreamInferResponse, Status>> + Send + 'static>>;

/// Responses waiting for the client to read them, per stream, before answering slows.
const RESPONSES_BUFFERED: usize = 64;

/// The request parameter that asks for a last, empty response (and the flag on each).
const ENABLE_FINAL: &str = "triton_enable_empty_final_response";
const FINAL: &str = "triton_final_response";

/// Answers every request the client sends on the stream, each in its own task; the
/// responses end once the client has finished sending and every answer has gone out.
pub(super) fn answer(
    grpc: Grpc,
    mut requests: Streaming<ModelInferRequest>,
    headers: HeaderMap,
) -> Responses {
    let (sender, mut responses) = mpsc::channel(RESPONSES_BUFFERED);
    tokio::spawn(async move {
        loop {
            let request = tokio::select! {
                request = requests.message() => request,
                // The client went: nothing more to read or answer.
                () = sender.closed() => return,
            };
            match request {
                Ok(Some(request)) => {
                    let (grpc, sender, headers) = (grpc.clone(), sender.clone(), headers.clone());
                    tokio::spawn(async move { one(grpc, request, headers, sender).await });
                }
                Ok(None) => return,
                Err(e) => {
                    let _ = sender.send(Err(e)).await;
                    return;
                }
            }
        }
    });
    Box::pin(futures::stream::poll_fn(move |cx| responses.poll_recv(cx)))
}

/// Where one request's responses go, tagged and flagged as it asked.
struct Answers {
    sender: mpsc::Sender<Result<ModelStreamInferResponse, Status>>,
    id: String,
    /// Whether each response says if it is the last (and the last is an empty one).
    flag_final: bool,
}

impl Answers {
    /// Sends a response (`Err`: the client has gone).
    async fn send(&self, mut response: ModelInferResponse) -> Result<(), ()> {
        response.id.clone_from(&self.id);
        if self.flag_final {
            response.parameters.insert(FINAL.into(), flag(false));
        }
        let message =
            ModelStreamInferResponse { error_message: String::new(), infer_response: Some(response) };
        self.sender.send(Ok(message)).await.map_err(|_| ())
    }

    /// The request's end: an empty last response where asked for, or its error.
    async fn end(&self, end: Result<(), Status>, names: (String, String)) {
        let error_message = match end {
            Ok(()) if !self.flag_final => return,
            Ok(()) => String::new(),
            Err(e) => e.message().to_string(),
        };
        let mut response = ModelInferResponse {
            model_name: names.0,
            model_version: names.1,
            id: self.id.clone(),
            ..Default::default()
        };
        if self.flag_final {
            response.parameters.insert(FINAL.into(), flag(true));
        }
        let message = ModelStreamInferResponse { error_message, infer_response: Some(response) };
        let _ = self.sender.send(Ok(message)).await;
    }
}

fn flag(value: bool) -> InferParameter {
    InferParameter { parameter_choice: Some(ParameterChoice::BoolParam(value)) }
}

/// One request of the stream, answered.
async fn one(
    grpc: Grpc,
    mut request: ModelInferRequest,
    headers: HeaderMap,
    sender: mpsc::Sender<Result<ModelStreamInferResponse, Status>>,
) {
    let flag_final = matches!(
        request.parameters.remove(ENABLE_FINAL).and_then(|p| p.parameter_choice),
        Some(ParameterChoice::BoolParam(true))
    );
    let answers = Answers { sender, id: request.id.clone(), flag_final };
    let names = (request.model_name.clone(), request.model_version.clone());
    let model = path(request.model_name.clone(), request.model_version.clone());
    let generative = grpc.0.declared(&model).is_ok_and(|(_, config)| config.generation.is_some());
    let end = if generative {
        generate(&grpc, request, &headers, &answers).await
    } else {
        match grpc.infer(request, &headers).await {
            Ok(response) => answers.send(response).await.map_err(|()| Status::cancelled("the client went")),
            Err(e) => Err(e),
        }
    };
    answers.end(end, names).await;
}

/// A generative model's request: its text as it comes (or whole), until its end.
async fn generate(
    grpc: &Grpc,
    mut request: ModelInferRequest,
    headers: &HeaderMap,
    answers: &Answers,
) -> Result<(), Status> {
    let id = super::request_id(Some(&request.id), headers);
    let model = path(request.model_name.clone(), request.model_version.clone());
    let parameters = std::mem::take(&mut request.parameters);
    let settings = decode(request).and_then(|tensors| settings(tensors.inputs, parameters));
    let streamed = matches!(&settings, Ok((_, true)));
    let request = settings.and_then(|(body, _)| super::super::generate::generation_request(body));
    let generation = Generation { path: model, id: &id, headers, request, logged_body: None };
    let mut stream = grpc.0.generate(generation).await.0.map_err(status)?;
    let gone = || Status::cancelled("the client went");
    if !streamed {
        let (text, end) = tokio::select! {
            whole = stream.whole() => whole,
            // Dropping the stream stops the generation at its next step.
            () = answers.sender.closed() => return Err(gone()),
        };
        end.map_err(status)?;
        return answers.send(text_output(&stream, &text)).await.map_err(|()| gone());
    }
    while let Some(part) = stream.next().await {
        match part {
            Part::Text(text) => answers.send(text_output(&stream, &text)).await.map_err(|()| gone())?,
            Part::End(end) => return end.map(|_| ()).map_err(status),
        }
    }
    Ok(())
}

/// A response holding `text` as the output `text_output` (BYTES, one element).
fn text_output(stream: &Stream, text: &str) -> ModelInferResponse {
    let mut data = Vec::with_capacity(text.len() + 4);
    push_bytes_element(&mut data, text.as_bytes());
    ModelInferResponse {
        model_name: stream.model.name.clone(),
        model_version: stream.model.config.version.clone(),
        outputs: vec![InferOutputTensor {
            name: "text_output".into(),
            datatype: Datatype::Bytes.name().into(),
            shape: vec![1],
            ..Default::default()
        }],
        raw_output_contents: vec![data],
        ..Default::default()
    }
}

/// The request's inputs and parameters as the generate extension's body (see
/// [`generation_request`](super::super::generate::generation_request)): `text_input` and
/// the settings, and whether it asked for the text as it comes (`stream`).
fn settings(
    inputs: Vec<Tensor>,
    parameters: HashMap<String, InferParameter>,
) -> Result<(Map<String, Value>, bool)> {
    let mut body = Map::new();
    let mut settings = Map::new();
    for (name, parameter) in parameters {
        let value = match parameter.parameter_choice {
            Some(ParameterChoice::BoolParam(b)) => Value::Bool(b),
            Some(ParameterChoice::Int64Param(n)) => n.into(),
            Some(ParameterChoice::Uint64Param(n)) => n.into(),
            Some(ParameterChoice::DoubleParam(x)) => x.into(),
            Some(ParameterChoice::StringParam(s)) => Value::String(s),
            None => continue,
        };
        // Triton's own (sequence ids, priority, timeout) are not the model's settings.
        if !name.starts_with("triton_") && !matches!(name.as_str(), "priority" | "timeout" | "sequence_id") {
            settings.insert(name, value);
        }
    }
    for tensor in inputs {
        let value = scalar(&tensor)?;
        match tensor.name.as_str() {
            "text_input" => {
                body.insert(tensor.name, value);
            }
            "sampling_parameters" => {
                let Value::String(json) = value else {
                    return Err(Error::bad_request(
                        "input 'sampling_parameters' must be BYTES (a JSON object)",
                    ));
                };
                match serde_json::from_str(&json) {
                    Ok(Value::Object(sampling)) => settings.extend(sampling),
                    _ => {
                        return Err(Error::bad_request(
                            "input 'sampling_parameters' must hold a JSON object",
                        ));
                    }
                }
            }
            // TensorRT-LLM's models take their settings as inputs.
            _ => {
                settings.insert(tensor.name, value);
            }
        }
    }
    let streamed = match settings.remove("stream") {
        None | Some(Value::Bool(false)) => false,
        Some(Value::Bool(true)) => true,
        Some(other) => return Err(Error::bad_request(format!("'stream' must be a boolean, not {other}"))),
    };
    // The prompt is never echoed: the setting that asks that it not be is what is done.
    settings.remove("exclude_input_in_output");
    body.insert("parameters".into(), Value::Object(settings));
    Ok((body, streamed))
}

/// A one-element input as a JSON value (BYTES as a string).
fn scalar(tensor: &Tensor) -> Result<Value> {
    let name = &tensor.name;
    let one = || Error::bad_request(format!("input '{name}' must hold one element"));
    if tensor.datatype == Datatype::Bytes {
        let [element] = bytes_elements(name, &tensor.data)?[..] else { return Err(one()) };
        let text = std::str::from_utf8(element)
            .map_err(|_| Error::bad_request(format!("input '{name}' must be UTF-8 text")))?;
        return Ok(Value::String(text.to_string()));
    }
    // Numbers and booleans as the JSON encoder writes outputs.
    let Value::Array(values) = crate::encode::elements(tensor)? else { unreachable!("a JSON array") };
    <[Value; 1]>::try_from(values).map(|[value]| value).map_err(|_| one())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(name: &str, datatype: Datatype, data: Vec<u8>) -> Tensor {
        Tensor { name: name.into(), datatype, shape: vec![1], data }
    }

    #[test]
    fn vllm_and_tensorrt_llm_requests_become_the_generate_body() {
        let mut prompt = Vec::new();
        push_bytes_element(&mut prompt, b"Once upon");
        let mut sampling = Vec::new();
        push_bytes_element(&mut sampling, br#"{"temperature": 0, "top_p": 0.5}"#);
        let inputs = vec![
            tensor("text_input", Datatype::Bytes, prompt),
            tensor("sampling_parameters", Datatype::Bytes, sampling),
            tensor("max_tokens", Datatype::Int32, 7i32.to_le_bytes().to_vec()),
            tensor("stream", Datatype::Bool, vec![1]),
            tensor("exclude_input_in_output", Datatype::Bool, vec![1]),
            tensor("bias", Datatype::Int8, vec![0xff]),
            tensor("scale", Datatype::Fp32, 0.25f32.to_le_bytes().to_vec()),
        ];
        let parameters = HashMap::from([
            ("seed".to_string(), InferParameter { parameter_choice: Some(ParameterChoice::Int64Param(3)) }),
            (
                "priority".to_string(),
                InferParameter { parameter_choice: Some(ParameterChoice::Uint64Param(1)) },
            ),
        ]);
        let (body, streamed) = settings(inputs, parameters).unwrap();
        assert!(streamed);
        assert_eq!(
            Value::Object(body),
            serde_json::json!({"text_input": "Once upon", "parameters": {
                "temperature": 0, "top_p": 0.5, "max_tokens": 7, "bias": -1, "scale": 0.25, "seed": 3}})
        );
    }

    #[test]
    fn settings_of_the_wrong_shape_or_type_are_refused() {
        let two = tensor("max_tokens", Datatype::Int32, vec![0; 8]);
        assert!(settings(vec![two], HashMap::new()).unwrap_err().to_string().contains("one element"));
        let stream = tensor("stream", Datatype::Int32, 1i32.to_le_bytes().to_vec());
        assert!(
            settings(vec![stream], HashMap::new())
                .unwrap_err()
                .to_string()
                .contains("'stream' must be a boolean")
        );
        let mut not_json = Vec::new();
        push_bytes_element(&mut not_json, b"temperature=0");
        let sampling = tensor("sampling_parameters", Datatype::Bytes, not_json);
        assert!(settings(vec![sampling], HashMap::new()).unwrap_err().to_string().contains("JSON object"));
    }
}
