//! What the fuzz targets share: the model a request is decoded against, picked by the
//! input's first byte, and the round trip through the server's own encoder.

use wasmserve_protocol::config::{InputLimits, TensorSpec};
use wasmserve_protocol::decode::{InferRequest, decode};
use wasmserve_protocol::encode::encode;
use wasmserve_protocol::tensor::{Datatype, Tensor, bytes_elements};

const DATATYPES: [Datatype; 14] = [
    Datatype::Bool,
    Datatype::Uint8,
    Datatype::Uint16,
    Datatype::Uint32,
    Datatype::Uint64,
    Datatype::Int8,
    Datatype::Int16,
    Datatype::Int32,
    Datatype::Int64,
    Datatype::Fp16,
    Datatype::Bf16,
    Datatype::Fp32,
    Datatype::Fp64,
    Datatype::Bytes,
];

/// The inputs a model declares, by a selector byte: `x` of one of the fourteen datatypes
/// (`selector % 14`), of any length (`[-1]`) or in rows of two (`[-1, 2]`, bit 4); with bit 7
/// set, a second input `y`, BYTES of any length.
pub fn declared(selector: u8) -> Vec<TensorSpec> {
    let shape = if selector & 0x10 == 0 { vec![-1] } else { vec![-1, 2] };
    let mut specs =
        vec![TensorSpec { name: "x".into(), datatype: DATATYPES[usize::from(selector) % 14], shape }];
    if selector & 0x80 != 0 {
        specs.push(TensorSpec { name: "y".into(), datatype: Datatype::Bytes, shape: vec![-1] });
    }
    specs
}

/// The input limits requests are decoded under: small, so the limit checks run too.
pub const LIMITS: InputLimits = InputLimits { max_element: 512, max_total: 64 << 10 };

/// Split a fuzz input into the selector byte and the body.
pub fn split(data: &[u8]) -> Option<(Vec<TensorSpec>, &[u8])> {
    let (&selector, body) = data.split_first()?;
    Some((declared(selector), body))
}

/// What the decoder accepted must be what the server could send back: every tensor's shape,
/// datatype and bytes agree, and encoding the tensors as a response (JSON or binary), turning
/// its `outputs` into `inputs` and decoding that gives the same tensors.
pub fn round_trip(request: InferRequest, declared: &[TensorSpec], binary: bool) {
    let tensors = request.inputs;
    for t in &tensors {
        t.validate().unwrap_or_else(|e| panic!("the decoder accepted an inconsistent tensor: {e}"));
    }
    let ask =
        InferRequest { id: None, params: vec![], inputs: vec![], outputs: vec![], binary_outputs: binary };
    let encoded = match encode("m", "1", None, &ask, tensors.clone()) {
        Ok(encoded) => encoded,
        // JSON cannot carry BYTES that are not UTF-8: the encoder refuses them, by design.
        Err(_) if !binary && tensors.iter().any(not_utf8) => return,
        Err(e) => panic!("encoding the decoded tensors failed: {e}"),
    };
    let json_end = encoded.json_length.unwrap_or(encoded.body.len());
    let mut answer: serde_json::Value =
        serde_json::from_slice(&encoded.body[..json_end]).expect("the encoder writes JSON");
    let mut body = serde_json::to_vec(&serde_json::json!({ "inputs": answer["outputs"].take() })).unwrap();
    let header = encoded.json_length.map(|_| body.len().to_string());
    body.extend_from_slice(&encoded.body[json_end..]);
    let again = decode(&body, header.as_deref(), declared, LIMITS)
        .unwrap_or_else(|e| panic!("the server's own answer does not decode: {e}"));
    assert_eq!(again.inputs, tensors, "a round trip through the encoder changed the tensors");
}

fn not_utf8(t: &Tensor) -> bool {
    t.datatype == Datatype::Bytes
        && bytes_elements(&t.name, &t.data).is_ok_and(|e| e.iter().any(|e| std::str::from_utf8(e).is_err()))
}
