//! A plugin for the server's own tests. It feeds input `x` (FP32 [3, 2]) to the graph `X`
//! and returns the graph's `Y` as `y`, unless the request parameter `fault` asks it to
//! misbehave in `preprocess`:
//! - `trap`: a Rust panic (a wasm trap);
//! - `loop`: spin forever (stopped by the call deadline);
//! - `memory`: allocate until the memory cap refuses;
//! - `invalid` / `internal`: return that plugin error;
//! - `malformed`: return a graph input whose data does not fit its shape;
//! - `read-outside`: try to read a file outside `/data`, fail with what happened.

use wasmserve_plugin::{
    Datatype, Guest, Params, PluginError, Prepared, Tensor, find, internal, invalid, param,
};

struct Faulty;

impl Guest for Faulty {
    fn preprocess(inputs: Vec<Tensor>, params: Params) -> Result<Prepared, PluginError> {
        let x = find(&inputs, "x")?;
        match param(&params, "fault") {
            Some("trap") => panic!("asked to trap"),
            Some("loop") => {
                let mut n = 0u64;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            Some("memory") => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 16 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            Some("invalid") => return Err(invalid("asked to refuse")),
            Some("internal") => return Err(internal("asked to fail")),
            Some("malformed") => {
                let bad = Tensor {
                    name: "X".into(),
                    datatype: Datatype::Fp32,
                    shape: vec![3, 2],
                    data: vec![0; 5],
                };
                return Ok(Prepared { graph_inputs: vec![bad], context: vec![] });
            }
            Some("read-outside") => {
                let got = std::fs::read("/etc/passwd").map(|b| b.len());
                return Err(invalid(format!("reading /etc/passwd: {got:?}")));
            }
            _ => {}
        }
        let mut graph_input = x.clone();
        graph_input.name = "X".into();
        Ok(Prepared { graph_inputs: vec![graph_input], context: vec![] })
    }

    fn postprocess(
        outputs: Vec<Tensor>,
        _context: Vec<Tensor>,
        _params: Params,
    ) -> Result<Vec<Tensor>, PluginError> {
        let mut y = find(&outputs, "Y")?.clone();
        y.name = "y".into();
        Ok(vec![y])
    }
}

wasmserve_plugin::export_plugin!(Faulty);
