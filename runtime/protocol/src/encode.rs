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
use serde::Serialize;
use serde::ser::{SerializeSeq, Serializer};

/// A response body: the JSON, then the binary outputs' bytes when there are any.
#[derive(Debug)]
pub struct Encoded {
    /// The JSON, then each binary output's bytes in order.
    pub body: Vec<u8>,
    /// Where the JSON ends when binary outputs follow it (`Inference-Header-Content-Length`).
    pub json_length: Option<usize>,
}

/// Build the response for `request` from the model's `outputs`.
///
/// JSON data is written element by element straight from the tensor's bytes (no JSON value
/// per element); binary outputs are appended after the JSON as they are.
/// `variant`: the route variant that answered, stated in the response's `parameters`.
pub fn encode(
    model: &str,
    version: &str,
    variant: Option<&str>,
    request: &InferRequest,
    outputs: Vec<Tensor>,
) -> Result<Encoded> {
    let selected = select(request, outputs)?;
    for (tensor, as_binary) in &selected {
        if !as_binary && tensor.datatype == Datatype::Bytes {
            check_utf8(tensor)?;
        }
    }
    let body = Body {
        id: request.id.as_deref(),
        model_name: model,
        model_version: version,
        parameters: variant.map(|variant| ResponseParameters { variant }),
        outputs: selected
            .iter()
            .map(|(t, as_binary)| Output {
                name: &t.name,
                datatype: t.datatype,
                shape: &t.shape,
                parameters: as_binary.then(|| BinarySize { binary_data_size: t.data.len() }),
                data: (!as_binary).then_some(Elements(t)),
            })
            .collect(),
    };
    let binary_bytes: usize = selected.iter().filter(|(_, b)| *b).map(|(t, _)| t.data.len()).sum();
    let json_guess = selected.iter().filter(|(_, b)| !b).map(|(t, _)| t.data.len() * 3).sum::<usize>() + 256;
    let mut payload = Vec::with_capacity(json_guess + binary_bytes);
    serde_json::to_writer(&mut payload, &body).map_err(|e| Error::Internal(e.to_string()))?;
    if !selected.iter().any(|(_, b)| *b) {
        return Ok(Encoded { body: payload, json_length: None });
    }
    let json_length = payload.len();
    for (tensor, _) in selected.iter().filter(|(_, b)| *b) {
        payload.extend_from_slice(&tensor.data);
    }
    Ok(Encoded { body: payload, json_length: Some(json_length) })
}

impl IntoResponse for Encoded {
    fn into_response(self) -> Response {
        match self.json_length {
            None => ([(header::CONTENT_TYPE, "application/json")], self.body).into_response(),
            Some(n) => (
                [
                    (header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream")),
                    (header::HeaderName::from_static(HEADER_LENGTH), HeaderValue::from(n)),
                ],
                self.body,
            )
                .into_response(),
        }
    }
}

#[derive(Serialize)]
struct Body<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    model_name: &'a str,
    model_version: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<ResponseParameters<'a>>,
    outputs: Vec<Output<'a>>,
}

#[derive(Serialize)]
struct ResponseParameters<'a> {
    variant: &'a str,
}

#[derive(Serialize)]
struct Output<'a> {
    name: &'a str,
    datatype: Datatype,
    shape: &'a [i64],
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<BinarySize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<Elements<'a>>,
}

#[derive(Serialize)]
struct BinarySize {
    binary_data_size: usize,
}

/// A BYTES output goes in JSON as strings: every element must be UTF-8.
fn check_utf8(t: &Tensor) -> Result<()> {
    for element in bytes_elements(&t.name, &t.data)? {
        if std::str::from_utf8(element).is_err() {
            return Err(Error::bad_request(format!(
                "output '{}' holds bytes that are not UTF-8 and cannot go in JSON: request it with \"binary_data\": true",
                t.name
            )));
        }
    }
    Ok(())
}

/// The outputs the request asked for (all when it named none), in its order, each with
/// whether it goes out as binary.
pub fn select(request: &InferRequest, outputs: Vec<Tensor>) -> Result<Vec<(Tensor, bool)>> {
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

/// A tensor's elements as a flat JSON array of numbers or booleans (BYTES elements as text,
/// lossily: check them first where that matters).
pub fn elements(tensor: &Tensor) -> Result<serde_json::Value> {
    serde_json::to_value(Elements(tensor)).map_err(|e| Error::Internal(e.to_string()))
}

/// A tensor's elements as a flat JSON array, read from its little-endian bytes as written.
struct Elements<'a>(&'a Tensor);

impl Serialize for Elements<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        fn each<const N: usize, S: Serializer, T: Serialize>(
            serializer: S,
            data: &[u8],
            f: impl Fn([u8; N]) -> T,
        ) -> std::result::Result<S::Ok, S::Error> {
            let chunks = data.chunks_exact(N);
            let mut seq = serializer.serialize_seq(Some(chunks.len()))?;
            for c in chunks {
                seq.serialize_element(&f(c.try_into().expect("chunk of N")))?;
            }
            seq.end()
        }
        let (d, s) = (&self.0.data, serializer);
        match self.0.datatype {
            Datatype::Bool => each::<1, _, _>(s, d, |b| b[0] != 0),
            Datatype::Uint8 => each::<1, _, _>(s, d, |b| b[0]),
            Datatype::Int8 => each::<1, _, _>(s, d, i8::from_le_bytes),
            Datatype::Uint16 => each::<2, _, _>(s, d, u16::from_le_bytes),
            Datatype::Int16 => each::<2, _, _>(s, d, i16::from_le_bytes),
            Datatype::Uint32 => each::<4, _, _>(s, d, u32::from_le_bytes),
            Datatype::Int32 => each::<4, _, _>(s, d, i32::from_le_bytes),
            Datatype::Uint64 => each::<8, _, _>(s, d, u64::from_le_bytes),
            Datatype::Int64 => each::<8, _, _>(s, d, i64::from_le_bytes),
            Datatype::Fp16 => each::<2, _, _>(s, d, |b| half::f16::from_le_bytes(b).to_f32()),
            Datatype::Bf16 => each::<2, _, _>(s, d, |b| half::bf16::from_le_bytes(b).to_f32()),
            Datatype::Fp32 => each::<4, _, _>(s, d, f32::from_le_bytes),
            Datatype::Fp64 => each::<8, _, _>(s, d, f64::from_le_bytes),
            Datatype::Bytes => {
                let elements = bytes_elements(&self.0.name, d).map_err(serde::ser::Error::custom)?;
                let mut seq = s.serialize_seq(Some(elements.len()))?;
                for e in elements {
                    // check_utf8 ran before serialising.
                    seq.serialize_element(&String::from_utf8_lossy(e))?;
                }
                seq.end()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::RequestedOutput;
    use crate::tensor::push_bytes_element;

    fn request(binary: Option<bool>) -> InferRequest {
        let outputs =
            vec![RequestedOutput { name: "t".into(), binary }, RequestedOutput { name: "x".into(), binary }];
        InferRequest { id: Some("r1".into()), params: vec![], inputs: vec![], outputs, binary_outputs: false }
    }

    fn outputs(text: &[u8]) -> Vec<Tensor> {
        let mut data = Vec::new();
        push_bytes_element(&mut data, text);
        let x = [1.5f32, -2.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        vec![
            Tensor { name: "x".into(), datatype: Datatype::Fp32, shape: vec![2], data: x },
            Tensor { name: "t".into(), datatype: Datatype::Bytes, shape: vec![1], data },
        ]
    }

    async fn body(encoded: Encoded) -> Vec<u8> {
        let response = encoded.into_response();
        axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap().to_vec()
    }

    #[tokio::test]
    async fn json_outputs_come_in_the_requested_order_with_their_values() {
        let response = encode("m", "1", None, &request(None), outputs(b"hello")).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&body(response).await).unwrap();
        assert_eq!(json["id"], "r1");
        assert_eq!(
            json["outputs"][0],
            serde_json::json!({"name": "t", "datatype": "BYTES", "shape": [1], "data": ["hello"]})
        );
        assert_eq!(json["outputs"][1]["data"], serde_json::json!([1.5, -2.0]));
    }

    #[tokio::test]
    async fn bytes_that_are_not_utf8_go_binary_or_fail_clearly() {
        let err = encode("m", "1", None, &request(None), outputs(&[0xff, 0xfe])).unwrap_err();
        assert!(err.to_string().contains("output 't' holds bytes that are not UTF-8"), "{err}");
        let encoded = encode("m", "1", None, &request(Some(true)), outputs(&[0xff, 0xfe])).unwrap();
        let n = encoded.json_length.unwrap();
        let response = encoded.into_response();
        assert_eq!(response.headers()[HEADER_LENGTH], n.to_string().as_str());
        let body = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
        assert_eq!(&body[n..n + 6], &[2, 0, 0, 0, 0xff, 0xfe]);
        assert_eq!(body.len(), n + 6 + 8);
    }
}
