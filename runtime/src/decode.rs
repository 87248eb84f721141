//! decode: an OIP inference request body into tensors the model's plugin takes.
//!
//! Three forms are accepted:
//! - JSON: `{"inputs": [{"name", "shape", "datatype", "data"}], "outputs": [...], "parameters": {...}}`,
//!   `data` flat or nested, in row-major order;
//! - the binary tensor extension: header `Inference-Header-Content-Length: N`, the first N
//!   bytes are the JSON (inputs carry `"parameters": {"binary_data_size": n}` instead of
//!   `data`), then each such input's raw bytes in order;
//! - raw: `Inference-Header-Content-Length: 0` and the body is the data of the model's one
//!   input (a BYTES input gets the whole body as its one element), so
//!   `curl --data-binary @file` works.

use crate::config::TensorSpec;
use crate::error::{Error, Result};
use crate::tensor::{Datatype, Tensor, element_count, push_bytes_element};
use serde::Deserialize;
use serde_json::{Map, Value};

/// The header that marks the binary tensor extension.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// Deepest nesting accepted in a tensor's `data`.
const MAX_NESTING: usize = 64;

/// A decoded inference request.
#[derive(Debug)]
pub struct InferRequest {
    /// The client's request id, echoed in the response.
    pub id: Option<String>,
    /// Request parameters, values rendered as strings, for the plugin.
    pub params: Vec<(String, String)>,
    /// Input tensors, checked against the model's declared inputs.
    pub inputs: Vec<Tensor>,
    /// Which outputs to return and how; empty means all.
    pub outputs: Vec<RequestedOutput>,
    /// Request-level `binary_data_output`: outputs default to binary.
    pub binary_outputs: bool,
}

/// An output the client asked for.
#[derive(Debug)]
pub struct RequestedOutput {
    /// Output name.
    pub name: String,
    /// `parameters.binary_data`, if given.
    pub binary: Option<bool>,
}

#[derive(Deserialize)]
struct RequestJson {
    id: Option<String>,
    #[serde(default)]
    parameters: Map<String, Value>,
    inputs: Vec<InputJson>,
    #[serde(default)]
    outputs: Vec<OutputJson>,
}

#[derive(Deserialize)]
struct InputJson {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: Map<String, Value>,
    data: Option<Value>,
}

#[derive(Deserialize)]
struct OutputJson {
    name: String,
    #[serde(default)]
    parameters: Map<String, Value>,
}

/// Decode a request body; `header_length` is the `Inference-Header-Content-Length` value.
pub fn decode(body: &[u8], header_length: Option<&str>, declared: &[TensorSpec]) -> Result<InferRequest> {
    let header_length = header_length
        .map(|v| {
            v.trim().parse::<usize>().map_err(|_| {
                Error::bad_request(format!("Inference-Header-Content-Length must be a byte count, got '{v}'"))
            })
        })
        .transpose()?;
    let request = match header_length {
        Some(0) => raw(body, declared)?,
        Some(n) => {
            if n > body.len() {
                return Err(Error::bad_request(format!(
                    "Inference-Header-Content-Length is {n} but the body has only {} bytes",
                    body.len()
                )));
            }
            let (json, binary) = body.split_at(n);
            from_json(json, binary)?
        }
        None => from_json(body, &[])?,
    };
    check_inputs(&request.inputs, declared)?;
    Ok(request)
}

fn raw(body: &[u8], declared: &[TensorSpec]) -> Result<InferRequest> {
    let [spec] = declared else {
        return Err(Error::bad_request(format!(
            "a raw body (Inference-Header-Content-Length: 0) needs a model with one input; this one has {}",
            declared.len()
        )));
    };
    let (shape, data) = match spec.datatype.size() {
        None => {
            let mut data = Vec::with_capacity(body.len() + 4);
            push_bytes_element(&mut data, body);
            (vec![1], data)
        }
        Some(size) => {
            let fixed: usize = spec.shape.iter().filter(|&&d| d >= 0).map(|&d| d as usize).product();
            let variable = spec.shape.iter().filter(|&&d| d < 0).count();
            let elements = body.len() / size;
            if !body.len().is_multiple_of(size)
                || variable > 1
                || fixed == 0
                || !elements.is_multiple_of(fixed)
                || (variable == 0 && elements != fixed)
            {
                return Err(Error::bad_request(format!(
                    "a raw body of {} bytes does not fit input '{}' ({} {:?})",
                    body.len(),
                    spec.name,
                    spec.datatype,
                    spec.shape
                )));
            }
            let shape =
                spec.shape.iter().map(|&d| if d < 0 { (elements / fixed) as i64 } else { d }).collect();
            (shape, body.to_vec())
        }
    };
    Ok(InferRequest {
        id: None,
        params: Vec::new(),
        inputs: vec![Tensor { name: spec.name.clone(), datatype: spec.datatype, shape, data }],
        outputs: Vec::new(),
        binary_outputs: false,
    })
}

fn from_json(json: &[u8], mut binary: &[u8]) -> Result<InferRequest> {
    let request: RequestJson = serde_json::from_slice(json)
        .map_err(|e| Error::bad_request(format!("malformed inference request: {e}")))?;
    let mut inputs = Vec::with_capacity(request.inputs.len());
    for input in request.inputs {
        let datatype = datatype(&input.name, &input.datatype)?;
        let count = element_count(&input.name, &input.shape)?;
        let data = match (input.parameters.get("binary_data_size"), input.data) {
            (Some(size), None) => {
                let size = size.as_u64().ok_or_else(|| {
                    Error::bad_request(format!(
                        "input '{}': binary_data_size must be a byte count",
                        input.name
                    ))
                })? as usize;
                if size > binary.len() {
                    return Err(Error::bad_request(format!(
                        "input '{}': binary_data_size is {size} but only {} bytes of binary data remain",
                        input.name,
                        binary.len()
                    )));
                }
                let (data, rest) = binary.split_at(size);
                binary = rest;
                data.to_vec()
            }
            (None, Some(data)) => json_data(&input.name, datatype, count, data)?,
            (Some(_), Some(_)) => {
                return Err(Error::bad_request(format!(
                    "input '{}' has both binary_data_size and data",
                    input.name
                )));
            }
            (None, None) => {
                return Err(Error::bad_request(format!("input '{}' has no data", input.name)));
            }
        };
        let tensor = Tensor { name: input.name, datatype, shape: input.shape, data };
        tensor.validate()?;
        inputs.push(tensor);
    }
    if !binary.is_empty() {
        return Err(Error::bad_request(format!(
            "{} bytes of binary data follow the inputs that no input's binary_data_size accounts for",
            binary.len()
        )));
    }
    let binary_outputs =
        request.parameters.get("binary_data_output").and_then(Value::as_bool).unwrap_or(false);
    Ok(InferRequest {
        id: request.id,
        params: render_params(request.parameters),
        inputs,
        outputs: request
            .outputs
            .into_iter()
            .map(|o| RequestedOutput {
                binary: o.parameters.get("binary_data").and_then(Value::as_bool),
                name: o.name,
            })
            .collect(),
        binary_outputs,
    })
}

/// An input's datatype from its protocol name.
pub(crate) fn datatype(input: &str, name: &str) -> Result<Datatype> {
    serde_json::from_value(Value::String(name.to_string())).map_err(|_| {
        Error::bad_request(format!(
            "input '{input}': unknown datatype '{name}' (expected BOOL, UINT8..UINT64, INT8..INT64, FP16, BF16, FP32, FP64 or BYTES)"
        ))
    })
}

impl InferRequest {
    /// Every requested output is one the model declares, asked for once. Checked before
    /// any work is done for the request.
    pub fn check_outputs(&self, declared: &[TensorSpec]) -> Result<()> {
        for (i, wanted) in self.outputs.iter().enumerate() {
            if !declared.iter().any(|s| s.name == wanted.name) {
                let names: Vec<&str> = declared.iter().map(|s| s.name.as_str()).collect();
                return Err(Error::bad_request(format!(
                    "unknown output '{}': the model's outputs are {names:?}",
                    wanted.name
                )));
            }
            if self.outputs[..i].iter().any(|o| o.name == wanted.name) {
                return Err(Error::bad_request(format!("output '{}' is requested twice", wanted.name)));
            }
        }
        Ok(())
    }
}

/// Request parameters as the plugin gets them: string values as they are, others as JSON.
pub fn render_params(parameters: Map<String, Value>) -> Vec<(String, String)> {
    parameters
        .into_iter()
        .map(|(k, v)| match v {
            Value::String(s) => (k, s),
            other => (k, other.to_string()),
        })
        .collect()
}

/// Every input the model declares is present, with its datatype and a fitting shape.
pub(crate) fn check_inputs(inputs: &[Tensor], declared: &[TensorSpec]) -> Result<()> {
    for input in inputs {
        let Some(spec) = declared.iter().find(|s| s.name == input.name) else {
            let names: Vec<&str> = declared.iter().map(|s| s.name.as_str()).collect();
            return Err(Error::bad_request(format!(
                "unknown input '{}': the model's inputs are {names:?}",
                input.name
            )));
        };
        if input.datatype != spec.datatype {
            return Err(Error::bad_request(format!(
                "input '{}' must be {}, got {}",
                input.name, spec.datatype, input.datatype
            )));
        }
        let fits = input.shape.len() == spec.shape.len()
            && input.shape.iter().zip(&spec.shape).all(|(&got, &want)| want < 0 || got == want);
        if !fits {
            return Err(Error::bad_request(format!(
                "input '{}' has shape {:?}; the model takes {:?} (-1: any size)",
                input.name, input.shape, spec.shape
            )));
        }
        if inputs.iter().filter(|i| i.name == input.name).count() > 1 {
            return Err(Error::bad_request(format!("input '{}' appears twice", input.name)));
        }
    }
    if let Some(missing) = declared.iter().find(|s| !inputs.iter().any(|i| i.name == s.name)) {
        return Err(Error::bad_request(format!("missing input '{}'", missing.name)));
    }
    Ok(())
}

/// Flatten JSON `data` (flat or nested) into wire bytes.
fn json_data(name: &str, datatype: Datatype, count: usize, data: Value) -> Result<Vec<u8>> {
    // Not `count`: a shape may claim far more elements than the body holds.
    let mut leaves = Vec::new();
    flatten(name, data, &mut leaves, 0)?;
    if leaves.len() != count {
        return Err(Error::bad_request(format!(
            "input '{name}': its shape holds {count} elements but data has {}",
            leaves.len()
        )));
    }
    let mut out = Vec::with_capacity(count * datatype.size().unwrap_or(8));
    for (i, leaf) in leaves.into_iter().enumerate() {
        encode_leaf(&mut out, datatype, leaf).ok_or_else(|| {
            Error::bad_request(format!("input '{name}': data[{i}] is not a valid {datatype} value"))
        })?;
    }
    Ok(out)
}

fn flatten(name: &str, value: Value, out: &mut Vec<Value>, depth: usize) -> Result<()> {
    match value {
        Value::Array(items) => {
            if depth >= MAX_NESTING {
                return Err(Error::bad_request(format!("input '{name}': data is nested too deeply")));
            }
            items.into_iter().try_for_each(|v| flatten(name, v, out, depth + 1))
        }
        leaf => {
            out.push(leaf);
            Ok(())
        }
    }
}

/// Append one JSON element as `datatype`; `None` if it does not fit.
fn encode_leaf(out: &mut Vec<u8>, datatype: Datatype, v: Value) -> Option<()> {
    fn int<T: TryFrom<i64> + TryFrom<u64>>(v: &Value) -> Option<T> {
        match v.as_i64() {
            Some(i) => T::try_from(i).ok(),
            None => T::try_from(v.as_u64()?).ok(),
        }
    }
    match datatype {
        Datatype::Bool => out.push(u8::from(v.as_bool()?)),
        Datatype::Uint8 => out.push(int::<u8>(&v)?),
        Datatype::Int8 => out.extend(int::<i8>(&v)?.to_le_bytes()),
        Datatype::Uint16 => out.extend(int::<u16>(&v)?.to_le_bytes()),
        Datatype::Int16 => out.extend(int::<i16>(&v)?.to_le_bytes()),
        Datatype::Uint32 => out.extend(int::<u32>(&v)?.to_le_bytes()),
        Datatype::Int32 => out.extend(int::<i32>(&v)?.to_le_bytes()),
        Datatype::Uint64 => out.extend(int::<u64>(&v)?.to_le_bytes()),
        Datatype::Int64 => out.extend(int::<i64>(&v)?.to_le_bytes()),
        Datatype::Fp16 => out.extend(half::f16::from_f64(v.as_f64()?).to_le_bytes()),
        Datatype::Bf16 => out.extend(half::bf16::from_f64(v.as_f64()?).to_le_bytes()),
        Datatype::Fp32 => out.extend((v.as_f64()? as f32).to_le_bytes()),
        Datatype::Fp64 => out.extend(v.as_f64()?.to_le_bytes()),
        Datatype::Bytes => push_bytes_element(out, v.as_str()?.as_bytes()),
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, datatype: Datatype, shape: &[i64]) -> TensorSpec {
        TensorSpec { name: name.into(), datatype, shape: shape.to_vec() }
    }

    #[test]
    fn nested_and_flat_json_decode_alike() {
        let declared = [spec("x", Datatype::Int32, &[-1, 2])];
        let flat = br#"{"inputs":[{"name":"x","shape":[2,2],"datatype":"INT32","data":[1,2,3,-4]}]}"#;
        let nested = br#"{"inputs":[{"name":"x","shape":[2,2],"datatype":"INT32","data":[[1,2],[3,-4]]}]}"#;
        let a = decode(flat, None, &declared).unwrap();
        let b = decode(nested, None, &declared).unwrap();
        assert_eq!(a.inputs, b.inputs);
        assert_eq!(a.inputs[0].data[12..], (-4i32).to_le_bytes());
    }

    #[test]
    fn every_datatype_decodes_from_json() {
        for (dt, value, bytes) in [
            ("BOOL", "true", vec![1u8]),
            ("UINT8", "255", vec![255]),
            ("INT8", "-1", vec![255]),
            ("UINT16", "513", vec![1, 2]),
            ("INT16", "-2", vec![254, 255]),
            ("UINT32", "1", vec![1, 0, 0, 0]),
            ("INT32", "-1", vec![255; 4]),
            ("UINT64", "18446744073709551615", vec![255; 8]),
            ("INT64", "-1", vec![255; 8]),
            ("FP16", "1.0", half::f16::from_f32(1.0).to_le_bytes().to_vec()),
            ("BF16", "1.0", half::bf16::from_f32(1.0).to_le_bytes().to_vec()),
            ("FP32", "0.5", 0.5f32.to_le_bytes().to_vec()),
            ("FP64", "0.25", 0.25f64.to_le_bytes().to_vec()),
            ("BYTES", "\"hi\"", vec![2, 0, 0, 0, b'h', b'i']),
        ] {
            let datatype: Datatype = serde_json::from_value(Value::String(dt.into())).unwrap();
            let body =
                format!(r#"{{"inputs":[{{"name":"x","shape":[1],"datatype":"{dt}","data":[{value}]}}]}}"#);
            let request = decode(body.as_bytes(), None, &[spec("x", datatype, &[1])]).unwrap();
            assert_eq!(request.inputs[0].data, bytes, "{dt}");
        }
    }

    #[test]
    fn out_of_range_values_are_rejected() {
        let body = br#"{"inputs":[{"name":"x","shape":[1],"datatype":"UINT8","data":[256]}]}"#;
        let err = decode(body, None, &[spec("x", Datatype::Uint8, &[1])]).unwrap_err();
        assert!(err.to_string().contains("data[0] is not a valid UINT8"), "{err}");
    }

    #[test]
    fn binary_extension_reads_inputs_in_order() {
        let json = br#"{"inputs":[{"name":"a","shape":[2],"datatype":"UINT8","parameters":{"binary_data_size":2}},{"name":"b","shape":[1],"datatype":"UINT8","data":[7]}]}"#;
        let mut body = json.to_vec();
        body.extend([5, 6]);
        let declared = [spec("a", Datatype::Uint8, &[2]), spec("b", Datatype::Uint8, &[1])];
        let len = json.len().to_string();
        let request = decode(&body, Some(&len), &declared).unwrap();
        assert_eq!(request.inputs[0].data, [5, 6]);
        assert_eq!(request.inputs[1].data, [7]);
        body.push(9);
        let err = decode(&body, Some(&len), &declared).unwrap_err();
        assert!(err.to_string().contains("1 bytes of binary data follow"), "{err}");
    }

    #[test]
    fn raw_body_fills_the_single_input() {
        let r = decode(b"%PDF-1.4", Some("0"), &[spec("bytes", Datatype::Bytes, &[-1])]).unwrap();
        assert_eq!(r.inputs[0].shape, [1]);
        assert_eq!(&r.inputs[0].data[4..], b"%PDF-1.4");
        let r = decode(&[0u8; 24], Some("0"), &[spec("x", Datatype::Fp32, &[-1, 3])]).unwrap();
        assert_eq!(r.inputs[0].shape, [2, 3]);
        assert!(decode(&[0u8; 5], Some("0"), &[spec("x", Datatype::Fp32, &[-1])]).is_err());
    }

    #[test]
    fn requested_outputs_are_checked_before_any_work() {
        let declared = [spec("x", Datatype::Fp32, &[1])];
        let body = |outputs: &str| {
            format!(
                r#"{{"inputs":[{{"name":"x","shape":[1],"datatype":"FP32","data":[1]}}],"outputs":{outputs}}}"#
            )
        };
        let outputs = [spec("y", Datatype::Fp32, &[1])];
        let ok = decode(body(r#"[{"name":"y"}]"#).as_bytes(), None, &declared).unwrap();
        assert!(ok.check_outputs(&outputs).is_ok());
        let twice = decode(body(r#"[{"name":"y"},{"name":"y"}]"#).as_bytes(), None, &declared).unwrap();
        assert!(twice.check_outputs(&outputs).unwrap_err().to_string().contains("requested twice"));
        let unknown = decode(body(r#"[{"name":"z"}]"#).as_bytes(), None, &declared).unwrap();
        assert!(unknown.check_outputs(&outputs).unwrap_err().to_string().contains("unknown output 'z'"));
    }

    #[test]
    fn mismatches_name_the_input() {
        let declared = [spec("x", Datatype::Fp32, &[-1, 2])];
        let cases = [
            (
                r#"{"inputs":[{"name":"x","shape":[1,2],"datatype":"FP32","data":[1]}]}"#,
                "shape holds 2 elements but data has 1",
            ),
            (
                r#"{"inputs":[{"name":"x","shape":[1,2],"datatype":"INT32","data":[1,2]}]}"#,
                "input 'x' must be FP32, got INT32",
            ),
            (
                r#"{"inputs":[{"name":"x","shape":[2],"datatype":"FP32","data":[1,2]}]}"#,
                "input 'x' has shape [2]",
            ),
            (r#"{"inputs":[]}"#, "missing input 'x'"),
            (r#"{"inputs":[{"name":"y","shape":[1],"datatype":"FP32","data":[1]}]}"#, "unknown input 'y'"),
            (
                r#"{"inputs":[{"name":"x","shape":[1,2],"datatype":"FLOAT","data":[1,2]}]}"#,
                "unknown datatype 'FLOAT'",
            ),
            (r#"{"inputs": [}"#, "malformed inference request"),
            // A shape that claims a trillion elements is refused, not allocated for.
            (
                r#"{"inputs":[{"name":"x","shape":[500000000000,2],"datatype":"FP32","data":[1,2]}]}"#,
                "shape holds 1000000000000 elements but data has 2",
            ),
        ];
        for (body, expected) in cases {
            let err = decode(body.as_bytes(), None, &declared).unwrap_err();
            assert!(err.to_string().contains(expected), "{body}: {err}");
            assert_eq!(err.status(), 400);
        }
    }
}
