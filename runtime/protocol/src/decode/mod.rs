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

use crate::config::{InputLimits, TensorSpec};
use crate::error::{Error, Result};
use crate::tensor::{Datatype, Tensor, bytes_elements, element_count, push_bytes_element};
use serde::Deserialize;
use serde::de;
use serde_json::Value;
use serde_json::value::RawValue;

mod check;
mod data;
mod json;

use check::check_element;
pub use check::check_inputs;
use data::json_data;
pub use data::number_element;
use json::from_json;
pub use json::parameters;

/// The header that marks the binary tensor extension.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// Deepest nesting accepted in a tensor's `data`.
const MAX_NESTING: usize = 64;
/// Most inputs, and most outputs, one request may name.
pub const MAX_TENSORS: usize = 1024;
/// Most dimensions in a shape.
pub const MAX_RANK: usize = 64;
/// Most parameters on a request, an input or an output.
pub const MAX_PARAMETERS: usize = 64;

/// What a request is refused for past one of the limits above, in every protocol's words.
fn too_many(max: usize, what: &str) -> String {
    format!("more than {max} {what}")
}

/// A list of `count` `what` (inputs, outputs, dimensions, parameters) within its `max`, the
/// limit the JSON parser holds REST's bodies to: for the protocols whose requests arrive
/// already parsed (gRPC), with the same error.
pub fn at_most(count: usize, max: usize, what: &str) -> Result<()> {
    match count > max {
        true => Err(Error::bad_request(too_many(max, what))),
        false => Ok(()),
    }
}

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

/// Decode a request body; `header_length` is the `Inference-Header-Content-Length` value.
/// The inputs are checked against the model's `declared` inputs and its `limits`.
pub fn decode(
    body: &[u8],
    header_length: Option<&str>,
    declared: &[TensorSpec],
    limits: InputLimits,
) -> Result<InferRequest> {
    let header_length = header_length
        .map(|v| {
            v.trim().parse::<usize>().map_err(|_| {
                Error::bad_request(format!("Inference-Header-Content-Length must be a byte count, got '{v}'"))
            })
        })
        .transpose()?;
    let request = match header_length {
        Some(0) => raw(body, declared, limits)?,
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
    check_inputs(&request.inputs, declared, limits)?;
    Ok(request)
}

fn raw(body: &[u8], declared: &[TensorSpec], limits: InputLimits) -> Result<InferRequest> {
    let [spec] = declared else {
        return Err(Error::bad_request(format!(
            "a raw body (Inference-Header-Content-Length: 0) needs a model with one input; this one has {}",
            declared.len()
        )));
    };
    let (shape, data) = match spec.datatype.size() {
        None => {
            // Refused before it is copied.
            check_element(&spec.name, 0, body.len(), limits)?;
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

/// An input's datatype from its protocol name.
pub fn datatype(input: &str, name: &str) -> Result<Datatype> {
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
        let a = decode(flat, None, &declared, InputLimits::NONE).unwrap();
        let b = decode(nested, None, &declared, InputLimits::NONE).unwrap();
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
            let request =
                decode(body.as_bytes(), None, &[spec("x", datatype, &[1])], InputLimits::NONE).unwrap();
            assert_eq!(request.inputs[0].data, bytes, "{dt}");
        }
    }

    #[test]
    fn floats_are_parsed_exactly() {
        // Found by the decode_json fuzz target: serde_json's default float parsing was one
        // unit in the last place off for one of these (a long mantissa, and the same number
        // in the shortest form the server answers with), so an answer fed back changed.
        let long = format!("5{}e-324", "1".repeat(127));
        let shortest = serde_json::to_string(&long.parse::<f64>().unwrap()).unwrap();
        for text in [long, shortest] {
            let body =
                format!(r#"{{"inputs":[{{"name":"x","shape":[1],"datatype":"FP64","data":[{text}]}}]}}"#);
            let request =
                decode(body.as_bytes(), None, &[spec("x", Datatype::Fp64, &[1])], InputLimits::NONE).unwrap();
            assert_eq!(request.inputs[0].data, text.parse::<f64>().unwrap().to_le_bytes(), "{text}");
        }
    }

    #[test]
    fn out_of_range_and_misplaced_values_are_rejected() {
        for (datatype, data, expected) in [
            ("UINT8", "[256]", "data[0] is not a valid UINT8 value"),
            ("INT64", "[1, 2.5]", "data[1] is not a valid INT64 value"),
            // JSON has no infinity: a float the datatype cannot hold is refused, not made inf.
            ("FP32", "[1, 1e39]", "data[1] is not a valid FP32 value"),
            ("FP16", "[70000, 1]", "data[0] is not a valid FP16 value"),
            ("BOOL", "[1, true]", "data[0] is not a valid BOOL value"),
            ("BYTES", "[\"a\", null]", "data[1] is not a valid BYTES value"),
            ("FP64", "[{\"a\": 1}, 2]", "data[0] is not a valid FP64 value"),
        ] {
            let dt: Datatype = serde_json::from_value(Value::String(datatype.into())).unwrap();
            let body =
                format!(r#"{{"inputs":[{{"name":"x","shape":[2],"datatype":"{datatype}","data":{data}}}]}}"#);
            let err = decode(body.as_bytes(), None, &[spec("x", dt, &[2])], InputLimits::NONE).unwrap_err();
            assert_eq!(err.to_string(), format!("input 'x': {expected}"), "{body}");
        }
    }

    #[test]
    fn request_limits_are_enforced_while_parsing() {
        let declared = [spec("x", Datatype::Int8, &[-1])];
        let x = r#"{"name":"x","shape":[1],"datatype":"INT8","data":[1]}"#;
        let many = |item: &str, n: usize| vec![item; n].join(",");
        let cases = [
            (format!(r#"{{"inputs":[{}]}}"#, many(x, MAX_TENSORS + 1)), "more than 1024 inputs"),
            (
                format!(r#"{{"inputs":[{x}],"outputs":[{}]}}"#, many(r#"{"name":"y"}"#, 1025)),
                "more than 1024 outputs",
            ),
            (
                format!(
                    r#"{{"inputs":[{{"name":"x","shape":[{}],"datatype":"INT8","data":[1]}}]}}"#,
                    many("1", 65)
                ),
                "more than 64 dimensions",
            ),
            (
                format!(
                    r#"{{"parameters":{{{}}},"inputs":[{x}]}}"#,
                    (0..65).map(|i| format!(r#""p{i}":1"#)).collect::<Vec<_>>().join(",")
                ),
                "more than 64 parameters",
            ),
            (format!(r#"{{"parameters":{{"p":1,"p":2}},"inputs":[{x}]}}"#), "parameter 'p' is given twice"),
            (
                format!(r#"{{"parameters":{{"p":[1,2]}},"inputs":[{x}]}}"#),
                "parameter 'p' must be a string, a number or a boolean",
            ),
            (
                format!(r#"{{"parameters":{{"binary_data_output":"yes"}},"inputs":[{x}]}}"#),
                "parameter 'binary_data_output' must be true or false",
            ),
        ];
        for (body, expected) in cases {
            let err = decode(body.as_bytes(), None, &declared, InputLimits::NONE).unwrap_err();
            assert!(err.to_string().contains(expected), "{expected}: {err}");
            assert_eq!(err.status(), 400);
        }
        // At the limits, and parameters reach the plugin as text.
        let body = format!(
            r#"{{"parameters":{{"s":"a\"b","n":-1.50,"b":true}},"inputs":[{x}],"outputs":[{}]}}"#,
            many(r#"{"name":"y","parameters":{"binary_data":true}}"#, MAX_TENSORS)
        );
        let request = decode(body.as_bytes(), None, &declared, InputLimits::NONE).unwrap();
        assert_eq!(request.outputs.len(), MAX_TENSORS);
        assert_eq!(request.outputs[0].binary, Some(true));
        let params: Vec<(&str, &str)> =
            request.params.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(params, [("s", "a\"b"), ("n", "-1.50"), ("b", "true")]);
    }

    #[test]
    fn nesting_is_limited_and_the_datatype_may_come_last() {
        let deep = format!("{}1{}", "[".repeat(70), "]".repeat(70));
        let body = format!(r#"{{"inputs":[{{"name":"x","shape":[1],"datatype":"INT8","data":{deep}}}]}}"#);
        let err =
            decode(body.as_bytes(), None, &[spec("x", Datatype::Int8, &[1])], InputLimits::NONE).unwrap_err();
        assert_eq!(err.to_string(), "input 'x': data is nested too deeply");
        let last = br#"{"inputs":[{"data":[[7]],"shape":[1],"name":"x","datatype":"INT8"}]}"#;
        assert_eq!(
            decode(last, None, &[spec("x", Datatype::Int8, &[1])], InputLimits::NONE).unwrap().inputs[0].data,
            [7]
        );
    }

    #[test]
    fn binary_extension_reads_inputs_in_order() {
        let json = br#"{"inputs":[{"name":"a","shape":[2],"datatype":"UINT8","parameters":{"binary_data_size":2}},{"name":"b","shape":[1],"datatype":"UINT8","data":[7]}]}"#;
        let mut body = json.to_vec();
        body.extend([5, 6]);
        let declared = [spec("a", Datatype::Uint8, &[2]), spec("b", Datatype::Uint8, &[1])];
        let len = json.len().to_string();
        let request = decode(&body, Some(&len), &declared, InputLimits::NONE).unwrap();
        assert_eq!(request.inputs[0].data, [5, 6]);
        assert_eq!(request.inputs[1].data, [7]);
        body.push(9);
        let err = decode(&body, Some(&len), &declared, InputLimits::NONE).unwrap_err();
        assert!(err.to_string().contains("1 bytes of binary data follow"), "{err}");
    }

    #[test]
    fn raw_body_fills_the_single_input() {
        let r = decode(b"%PDF-1.4", Some("0"), &[spec("bytes", Datatype::Bytes, &[-1])], InputLimits::NONE)
            .unwrap();
        assert_eq!(r.inputs[0].shape, [1]);
        assert_eq!(&r.inputs[0].data[4..], b"%PDF-1.4");
        let r =
            decode(&[0u8; 24], Some("0"), &[spec("x", Datatype::Fp32, &[-1, 3])], InputLimits::NONE).unwrap();
        assert_eq!(r.inputs[0].shape, [2, 3]);
        assert!(
            decode(&[0u8; 5], Some("0"), &[spec("x", Datatype::Fp32, &[-1])], InputLimits::NONE).is_err()
        );
    }

    #[test]
    fn bytes_elements_and_total_input_are_limited_in_every_form() {
        let declared = [spec("text", Datatype::Bytes, &[-1])];
        let limits = InputLimits { max_element: 8, max_total: 30 };
        let json = |data: &str| {
            format!(r#"{{"inputs":[{{"name":"text","shape":[2],"datatype":"BYTES","data":{data}}}]}}"#)
        };
        let fits = json(r#"["12345678","1"]"#);
        assert!(decode(fits.as_bytes(), None, &declared, limits).is_ok());
        let long = json(r#"["1","123456789"]"#);
        let err = decode(long.as_bytes(), None, &declared, limits).unwrap_err();
        assert_eq!(err.status(), 413);
        assert!(err.to_string().contains("input 'text': element 1 is 9 bytes"), "{err}");
        assert!(err.to_string().contains("at most 8 bytes"), "{err}");
        // Binary extension: the same element, as raw bytes after the header.
        let mut data = Vec::new();
        push_bytes_element(&mut data, b"123456789");
        let header = format!(
            r#"{{"inputs":[{{"name":"text","shape":[1],"datatype":"BYTES","parameters":{{"binary_data_size":{}}}}}]}}"#,
            data.len()
        );
        let body = [header.as_bytes(), &data].concat();
        let err = decode(&body, Some(&header.len().to_string()), &declared, limits).unwrap_err();
        assert!(err.to_string().contains("element 0 is 9 bytes"), "{err}");
        // Raw: the whole body is the one element.
        let err = decode(b"123456789", Some("0"), &declared, limits).unwrap_err();
        assert!(err.to_string().contains("element 0 is 9 bytes"), "{err}");
        // All inputs together: four elements of 8 bytes and their 4-byte lengths.
        let many = r#"{"inputs":[{"name":"text","shape":[4],"datatype":"BYTES","data":["12345678","12345678","12345678","12345678"]}]}"#;
        let err = decode(many.as_bytes(), None, &declared, limits).unwrap_err();
        assert_eq!(err.status(), 413);
        assert!(err.to_string().contains("the inputs hold 48 bytes of data ('text' 48)"), "{err}");
        assert!(err.to_string().contains("max_input_kib"), "{err}");
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
        let ok = decode(body(r#"[{"name":"y"}]"#).as_bytes(), None, &declared, InputLimits::NONE).unwrap();
        assert!(ok.check_outputs(&outputs).is_ok());
        let twice =
            decode(body(r#"[{"name":"y"},{"name":"y"}]"#).as_bytes(), None, &declared, InputLimits::NONE)
                .unwrap();
        assert!(twice.check_outputs(&outputs).unwrap_err().to_string().contains("requested twice"));
        let unknown =
            decode(body(r#"[{"name":"z"}]"#).as_bytes(), None, &declared, InputLimits::NONE).unwrap();
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
            let err = decode(body.as_bytes(), None, &declared, InputLimits::NONE).unwrap_err();
            assert!(err.to_string().contains(expected), "{body}: {err}");
            assert_eq!(err.status(), 400);
        }
    }
}
