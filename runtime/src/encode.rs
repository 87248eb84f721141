//! encode: output tensors into an OIP inference response, JSON or binary.
//!
//! An output goes out as binary when the request asked (`"binary_data": true` on the
//! output, or `"binary_data_output": true` in the request's parameters); the response then
//! carries `Inference-Header-Content-Length` and the outputs' bytes follow the JSON.

use crate::decode::{HEADER_LENGTH, InferRequest};
use crate::error::{Error, Result};
use crate::tensor::{Datatype, Tensor, bytes_elements};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// Build the response for `request` from the model's `outputs`.
pub fn encode(model: &str, version: &str, request: &InferRequest, outputs: Vec<Tensor>) -> Result<Response> {
    let selected = select(request, outputs)?;
    let mut binary = Vec::new();
    let mut any_binary = false;
    let mut json_outputs = Vec::with_capacity(selected.len());
    for (tensor, as_binary) in selected {
        let mut out = json!({ "name": tensor.name, "datatype": tensor.datatype, "shape": tensor.shape });
        if as_binary {
            any_binary = true;
            out["parameters"] = json!({ "binary_data_size": tensor.data.len() });
            binary.extend_from_slice(&tensor.data);
        } else {
            out["data"] = json_data(&tensor)?;
        }
        json_outputs.push(out);
    }
    let mut body = json!({ "model_name": model, "model_version": version, "outputs": json_outputs });
    if let Some(id) = &request.id {
        body["id"] = json!(id);
    }
    let json = serde_json::to_vec(&body).map_err(|e| Error::Internal(e.to_string()))?;
    if !any_binary {
        return Ok(([(header::CONTENT_TYPE, "application/json")], json).into_response());
    }
    let header_length = HeaderValue::from(json.len());
    let mut payload = json;
    payload.extend_from_slice(&binary);
    Ok((
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream")),
            (header::HeaderName::from_static(HEADER_LENGTH), header_length),
        ],
        payload,
    )
        .into_response())
}

/// The outputs the request asked for (all when it named none), in its order, each with
/// whether it goes out as binary.
pub(crate) fn select(request: &InferRequest, outputs: Vec<Tensor>) -> Result<Vec<(Tensor, bool)>> {
    if request.outputs.is_empty() {
        return Ok(outputs.into_iter().map(|t| (t, request.binary_outputs)).collect());
    }
    let mut outputs = outputs;
    request
        .outputs
        .iter()
        .map(|wanted| {
            // decode checked the names against the config, schedule the plugin's answer.
            let i = outputs.iter().position(|t| t.name == wanted.name).ok_or_else(|| {
                Error::Internal(format!("output '{}' is missing from the plugin's answer", wanted.name))
            })?;
            Ok((outputs.swap_remove(i), wanted.binary.unwrap_or(request.binary_outputs)))
        })
        .collect()
}

/// A tensor's elements as a flat JSON array.
fn json_data(t: &Tensor) -> Result<Value> {
    fn each<const N: usize>(data: &[u8], f: impl Fn([u8; N]) -> Value) -> Value {
        Value::Array(data.chunks_exact(N).map(|c| f(c.try_into().expect("chunk of N"))).collect())
    }
    let d = &t.data;
    Ok(match t.datatype {
        Datatype::Bool => each::<1>(d, |b| json!(b[0] != 0)),
        Datatype::Uint8 => each::<1>(d, |b| json!(b[0])),
        Datatype::Int8 => each::<1>(d, |b| json!(i8::from_le_bytes(b))),
        Datatype::Uint16 => each::<2>(d, |b| json!(u16::from_le_bytes(b))),
        Datatype::Int16 => each::<2>(d, |b| json!(i16::from_le_bytes(b))),
        Datatype::Uint32 => each::<4>(d, |b| json!(u32::from_le_bytes(b))),
        Datatype::Int32 => each::<4>(d, |b| json!(i32::from_le_bytes(b))),
        Datatype::Uint64 => each::<8>(d, |b| json!(u64::from_le_bytes(b))),
        Datatype::Int64 => each::<8>(d, |b| json!(i64::from_le_bytes(b))),
        Datatype::Fp16 => each::<2>(d, |b| json!(half::f16::from_le_bytes(b).to_f32())),
        Datatype::Bf16 => each::<2>(d, |b| json!(half::bf16::from_le_bytes(b).to_f32())),
        Datatype::Fp32 => each::<4>(d, |b| json!(f32::from_le_bytes(b))),
        Datatype::Fp64 => each::<8>(d, |b| json!(f64::from_le_bytes(b))),
        Datatype::Bytes => Value::Array(
            bytes_elements(&t.name, d)?
                .into_iter()
                .map(|e| {
                    std::str::from_utf8(e).map(|s| json!(s)).map_err(|_| {
                        Error::bad_request(format!(
                            "output '{}' holds bytes that are not UTF-8 and cannot go in JSON: request it with \"binary_data\": true",
                            t.name
                        ))
                    })
                })
                .collect::<Result<_>>()?,
        ),
    })
}
