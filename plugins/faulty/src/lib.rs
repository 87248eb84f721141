//! A plugin for the server's own tests. It feeds input `x` (FP32 [3, 2]) to the graph `X`
//! and returns the graph's `Y` as `y`, unless the request parameter `fault` asks it to
//! misbehave in `preprocess`:
//! - `trap`: a Rust panic (a wasm trap);
//! - `loop`: spin forever (stopped by the call deadline);
//! - `memory`: allocate until the memory cap refuses;
//! - `invalid` / `internal`: return that plugin error;
//! - `malformed`: return a graph input whose data does not fit its shape;
//! - `oversized`: return a 2 MiB graph input;
//! - `clock`: refuse with the wall clock's nanoseconds within its millisecond and how many
//!   nanoseconds the monotonic clock moved across a short spin (shows the clocks' grain);
//! - `recurse`: recurse until the stack runs out (Rust's, in linear memory);
//! - `nn-wrong-type`: run its own graph through `wasi:nn` with INT32 data for the FP32 input;
//! - `read-outside`: try to read a file outside `/data`, fail with what happened;
//! - `env`: fail with the number of environment variables and arguments it sees;
//! - `connect`: try to open a TCP connection to the address in parameter `addr`, fail with
//!   what happened;
//! - `count`: refuse with how many requests this instance has preprocessed, this one
//!   included (shows whether instances are reused).
//!
//! Before any of that, `say=TEXT` prints TEXT to stderr (the server's log) and `sleep_ms=N`
//! makes the call take N milliseconds: the tests' warm-up and slow requests.
//!
//! With `graph=NAME` it also runs graph NAME itself through `wasi:nn` (`load-by-name`) and
//! answers with that result instead of the host's: the path an ensemble plugin takes.
//!
//! Its `warm-up` export prints "faulty: warm-up ran" and succeeds, unless its data directory
//! holds a file `warm-up` saying `fail` (return an error) or `loop` (spin forever).

use wasmserve_plugin::nn::Graph;
use wasmserve_plugin::warm::{Guest, WarmUp};
use wasmserve_plugin::{
    Datatype, OrError, Params, PluginError, Prepared, Tensor, find, internal, invalid, param,
};

/// Deeper and deeper, each frame holding a little, until the stack is exhausted.
fn recurse(depth: u64) -> u64 {
    let frame = std::hint::black_box([depth; 16]);
    if depth == u64::MAX {
        return frame[0];
    }
    recurse(depth + 1).wrapping_add(frame[15])
}

/// Run graph `name` on `x` (as its input `X`) through wasi:nn; its `Y` as tensor `y`.
fn run_graph(name: &str, x: &Tensor) -> Result<Tensor, PluginError> {
    let input = Tensor { name: "X".into(), ..x.clone() };
    let outputs = Graph::load(name)?.run(&[input])?;
    let y = outputs.into_iter().find(|t| t.name == "Y").or_internal("graph returned no Y")?;
    Ok(Tensor { name: "y".into(), ..y })
}

struct Faulty;

impl Guest for Faulty {
    fn preprocess(inputs: Vec<Tensor>, params: Params) -> Result<Prepared, PluginError> {
        static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let calls = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let x = find(&inputs, "x")?;
        if let Some(text) = param(&params, "say") {
            eprintln!("{text}");
        }
        if let Some(ms) = param(&params, "sleep_ms").and_then(|v| v.parse().ok()) {
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
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
            Some("count") => return Err(invalid(format!("call {calls}"))),
            Some("internal") => return Err(internal("asked to fail")),
            Some("clock") => {
                let wall =
                    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                let (start, mut spins) = (std::time::Instant::now(), 0u64);
                while start.elapsed().is_zero() {
                    spins = std::hint::black_box(spins + 1);
                }
                let step = start.elapsed().as_nanos();
                return Err(invalid(format!(
                    "clock: wall {} ns into its ms, monotonic step {step} ns",
                    wall.subsec_nanos() % 1_000_000
                )));
            }
            Some("recurse") => {
                return Err(internal(format!("came back from depth {}", recurse(0))));
            }
            Some("nn-wrong-type") => {
                let y = run_graph("faulty", &Tensor { datatype: Datatype::Int32, ..x.clone() })?;
                return Err(internal(format!("the graph took INT32 data: {:?}", y.shape)));
            }
            Some("oversized") => {
                let big = Tensor {
                    name: "X".into(),
                    datatype: Datatype::Fp32,
                    shape: vec![1 << 19],
                    data: vec![0; 2 << 20],
                };
                return Ok(Prepared { graph_inputs: vec![big], context: vec![] });
            }
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
            Some("env") => {
                let (vars, args) = (std::env::vars().count(), std::env::args().count());
                return Err(invalid(format!("env: {vars} variables, {args} arguments")));
            }
            Some("connect") => {
                let addr = param(&params, "addr").unwrap_or("127.0.0.1:80");
                let got = std::net::TcpStream::connect(addr).map(|_| "connected");
                return Err(invalid(format!("connect {addr}: {got:?}")));
            }
            _ => {}
        }
        let context = match param(&params, "graph") {
            Some(name) => vec![run_graph(name, x)?],
            None => vec![],
        };
        let mut graph_input = x.clone();
        graph_input.name = "X".into();
        Ok(Prepared { graph_inputs: vec![graph_input], context })
    }

    fn postprocess(
        outputs: Vec<Tensor>,
        context: Vec<Tensor>,
        _params: Params,
    ) -> Result<Vec<Tensor>, PluginError> {
        if let Some(y) = context.into_iter().next() {
            return Ok(vec![y]);
        }
        let mut y = find(&outputs, "Y")?.clone();
        y.name = "y".into();
        Ok(vec![y])
    }
}

impl WarmUp for Faulty {
    fn warm_up() -> Result<(), PluginError> {
        eprintln!("faulty: warm-up ran");
        match std::fs::read_to_string("/data/warm-up").as_deref().map(str::trim) {
            Ok("fail") => Err(internal("asked to fail its warm-up")),
            Ok("loop") => loop {
                std::hint::black_box(());
            },
            _ => Ok(()),
        }
    }
}

wasmserve_plugin::export_plugin_with_warm_up!(Faulty);
