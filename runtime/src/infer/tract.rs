//! The tract backend: pure Rust, built in, CPU.
//!
//! A graph is optimised once with its symbolic dimensions (batch, sequence) left symbolic,
//! so one plan serves every shape. Some exports compute shapes in ways tract cannot type
//! symbolically (magika's one-hot `Expand`); those get a plan per distinct set of input
//! shapes instead, made on first use and kept (up to [`MAX_PLANS`]).

use super::{NnTensor, Runner, graph};
use crate::config::TensorSpec;
use crate::tensor::Datatype;
use anyhow::{Context, anyhow};
use std::sync::{Arc, Mutex};
use tract_linalg::multithread::{Executor, multithread_tract_scope};
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;
use wasmtime_wasi_nn::wit::TensorType;

#[cfg(target_endian = "big")]
compile_error!("tensor data is little-endian on the wire and in memory: big-endian hosts are not supported");

/// Most per-shape plans kept for one graph; past it the oldest-made is dropped.
const MAX_PLANS: usize = 32;

type Plan = Arc<TypedSimplePlan>;
type Shapes = Vec<(DatumType, Vec<usize>)>;

enum Plans {
    Symbolic(Plan),
    PerShape { model: InferenceModel, plans: Mutex<Vec<(Shapes, Plan)>> },
}

struct Tract {
    plans: Plans,
    /// Where matrix products run: a pool of the model's own, or the calling thread.
    executor: Executor,
}

/// tract's errors carry their cause chain; keep it on one line.
fn err(e: TractError) -> anyhow::Error {
    anyhow!("{e:#}")
}

/// Parse an ONNX model; with its input and output names, as wasi:nn and the config name them.
fn parse(model: &[u8]) -> anyhow::Result<(InferenceModel, Vec<String>, Vec<String>)> {
    let model = tract_onnx::onnx()
        .model_for_read(&mut &*model)
        .map_err(err)
        .context("tract cannot parse the ONNX model")?;
    let inputs =
        model.input_outlets().map_err(err)?.iter().map(|o| model.node(o.node).name.clone()).collect();
    let outputs = model
        .output_outlets()
        .map_err(err)?
        .iter()
        .map(|o| model.outlet_label(*o).unwrap_or(&model.node(o.node).name).to_string())
        .collect();
    Ok((model, inputs, outputs))
}

/// Parse, optimise and plan model `name`'s ONNX graph, whose matrix products use `threads`
/// threads (a pool of the model's own, threads `tract-NAME-N`, when more than one).
pub fn load(name: &str, model: &[u8], threads: usize) -> anyhow::Result<wasmtime_wasi_nn::Graph> {
    let (model, inputs, outputs) = parse(model)?;
    let plans = match model.clone().into_optimized().and_then(|m| m.into_runnable()) {
        Ok(plan) => Plans::Symbolic(plan),
        Err(symbolic) => {
            // Check now that the graph plans at all, with every unknown dimension at 1.
            let shapes = default_shapes(&model)?;
            let plan = plan_for(&model, &shapes)
                .with_context(|| format!("tract cannot optimise the model ({symbolic:#})"))?;
            tracing::info!("tract plans this graph per input shape: {symbolic:#}");
            Plans::PerShape { model, plans: Mutex::new(vec![(shapes, plan)]) }
        }
    };
    let executor = match threads {
        0 | 1 => Executor::SingleThread,
        n => Executor::multithread_with_name(n, &format!("tract-{name}")),
    };
    Ok(graph(inputs, outputs, Tract { plans, executor }))
}

/// The inputs and outputs of an ONNX model as tract's type inference sees them: names,
/// element types, dimensions (-1 where the model leaves one open). `infer::signature` asks
/// it only for what the file does not declare.
pub fn signature(model: &[u8]) -> anyhow::Result<(Vec<TensorSpec>, Vec<TensorSpec>)> {
    let (model, input_names, output_names) = parse(model)?;
    let spec = |name: String, datum: DatumType, shape: Vec<i64>| -> anyhow::Result<TensorSpec> {
        let datatype = match datum {
            DatumType::Bool => Datatype::Bool,
            DatumType::U8 => Datatype::Uint8,
            DatumType::U16 => Datatype::Uint16,
            DatumType::U32 => Datatype::Uint32,
            DatumType::U64 => Datatype::Uint64,
            DatumType::I8 => Datatype::Int8,
            DatumType::I16 => Datatype::Int16,
            DatumType::I32 => Datatype::Int32,
            DatumType::I64 => Datatype::Int64,
            DatumType::F16 => Datatype::Fp16,
            DatumType::F32 => Datatype::Fp32,
            DatumType::F64 => Datatype::Fp64,
            DatumType::String => Datatype::Bytes,
            other => anyhow::bail!("'{name}' has type {other:?}, which the Open Inference Protocol lacks"),
        };
        Ok(TensorSpec { name, datatype, shape })
    };
    let mut inputs = Vec::new();
    for (i, name) in input_names.into_iter().enumerate() {
        let fact = model.input_fact(i).map_err(err)?;
        let datum =
            fact.datum_type.concretize().with_context(|| format!("input '{name}' has no declared type"))?;
        let shape =
            fact.shape.dims().map(|d| d.concretize().and_then(|d| d.as_i64()).unwrap_or(-1)).collect();
        inputs.push(spec(name, datum, shape)?);
    }
    // Outputs as type inference finds them: a model need not declare them. Where the inputs'
    // unknown dimensions leave it stuck, with each at 1.
    let typed = match model.clone().into_typed() {
        Ok(typed) => typed,
        Err(_) => with_shapes(&model, &default_shapes(&model)?)?
            .into_typed()
            .map_err(err)
            .context("tract cannot infer the outputs' types")?,
    };
    let mut outputs = Vec::new();
    for (name, o) in output_names.into_iter().zip(typed.output_outlets().map_err(err)?) {
        let fact = typed.outlet_fact(*o).map_err(err)?;
        let shape = fact.shape.iter().map(|d| d.to_i64().unwrap_or(-1)).collect();
        outputs.push(spec(name, fact.datum_type, shape)?);
    }
    Ok((inputs, outputs))
}

fn default_shapes(model: &InferenceModel) -> anyhow::Result<Shapes> {
    (0..model.inputs.len())
        .map(|i| {
            let fact = model.input_fact(i).map_err(err)?;
            let dt = fact.datum_type.concretize().with_context(|| format!("input {i} has no known type"))?;
            let dims = fact
                .shape
                .dims()
                .map(|d| d.concretize().and_then(|d| d.as_i64()).map_or(1, |d| d.max(1) as usize))
                .collect();
            Ok((dt, dims))
        })
        .collect()
}

/// `model` with its inputs fixed to `shapes`.
fn with_shapes(model: &InferenceModel, shapes: &Shapes) -> anyhow::Result<InferenceModel> {
    let mut model = model.clone();
    for (i, (dt, shape)) in shapes.iter().enumerate() {
        model.set_input_fact(i, InferenceFact::dt_shape(*dt, shape.clone())).map_err(err)?;
    }
    Ok(model)
}

fn plan_for(model: &InferenceModel, shapes: &Shapes) -> anyhow::Result<Plan> {
    with_shapes(model, shapes)?.into_optimized().and_then(|m| m.into_runnable()).map_err(err)
}

impl Tract {
    fn plan(&self, inputs: &TVec<TValue>) -> anyhow::Result<Plan> {
        match &self.plans {
            Plans::Symbolic(plan) => Ok(plan.clone()),
            Plans::PerShape { model, plans } => {
                let shapes: Shapes = inputs.iter().map(|t| (t.datum_type(), t.shape().to_vec())).collect();
                if let Some((_, plan)) = plans.lock().expect("plan cache").iter().find(|(s, _)| *s == shapes)
                {
                    return Ok(plan.clone());
                }
                let plan = plan_for(model, &shapes)?;
                let mut plans = plans.lock().expect("plan cache");
                if plans.len() >= MAX_PLANS {
                    plans.remove(0);
                }
                plans.push((shapes, plan.clone()));
                Ok(plan)
            }
        }
    }
}

impl Runner for Tract {
    fn run(&self, inputs: Vec<NnTensor>) -> anyhow::Result<Vec<NnTensor>> {
        let inputs =
            inputs.iter().map(|t| to_tract(t).map(TValue::from)).collect::<anyhow::Result<TVec<_>>>()?;
        let plan = self.plan(&inputs)?;
        let mut state = take_state(&plan)?;
        let outputs = multithread_tract_scope(self.executor.clone(), || state.run(inputs)).map_err(err)?;
        // Kept only after a run that succeeded: a failed one may have left it half-way.
        keep_state(state);
        outputs.iter().map(|t| from_tract(t)).collect()
    }
}

/// Most plan states one thread keeps (one per plan it ran lately).
const STATES_PER_THREAD: usize = 4;

thread_local! {
    /// The states of the plans this thread ran last, on threads that keep them (see
    /// [`keep_states`]): a run reuses its plan's state, and with it the scratch space tract
    /// keeps per state, instead of spawning one each time.
    static STATES: std::cell::RefCell<Option<Vec<TypedSimpleState>>> = const { std::cell::RefCell::new(None) };
}

/// Whether this thread keeps plan states between runs. A state must be dropped before its
/// thread ends (dropping one reaches into tract's own thread-locals, gone by then), so only
/// threads that say when they end keep any: see [`super::ThreadState`].
pub(super) fn keep_states(on: bool) {
    let dropped = STATES.with_borrow_mut(|states| std::mem::replace(states, on.then(Vec::new)));
    drop(dropped);
}

/// This thread's state for `plan`, or a new one.
fn take_state(plan: &Plan) -> anyhow::Result<TypedSimpleState> {
    let kept = STATES.with_borrow_mut(|states| {
        let states = states.as_mut()?;
        let i = states.iter().position(|s| Arc::ptr_eq(s.plan(), plan))?;
        Some(states.swap_remove(i))
    });
    match kept {
        Some(state) => Ok(state),
        None => plan.spawn().map_err(err),
    }
}

/// Keep `state` for this thread's next run of its plan, if this thread keeps states.
fn keep_state(state: TypedSimpleState) {
    let dropped = STATES.with_borrow_mut(|states| match states {
        Some(states) => {
            states.push(state);
            (states.len() > STATES_PER_THREAD).then(|| states.remove(0))
        }
        None => Some(state),
    });
    drop(dropped);
}

fn to_tract(t: &NnTensor) -> anyhow::Result<Tensor> {
    let shape: Vec<usize> = t.dimensions.iter().map(|&d| d as usize).collect();
    let d = &t.data;
    match t.ty {
        TensorType::Fp16 => Tensor::from_shape::<f16>(&shape, &bytemuck::pod_collect_to_vec(d)),
        TensorType::Fp32 => Tensor::from_shape::<f32>(&shape, &bytemuck::pod_collect_to_vec(d)),
        TensorType::Fp64 => Tensor::from_shape::<f64>(&shape, &bytemuck::pod_collect_to_vec(d)),
        TensorType::U8 => Tensor::from_shape::<u8>(&shape, d),
        TensorType::I32 => Tensor::from_shape::<i32>(&shape, &bytemuck::pod_collect_to_vec(d)),
        TensorType::I64 => Tensor::from_shape::<i64>(&shape, &bytemuck::pod_collect_to_vec(d)),
        TensorType::Bf16 => anyhow::bail!("tract does not take BF16 inputs"),
    }
    .map_err(err)
}

fn from_tract(t: &Tensor) -> anyhow::Result<NnTensor> {
    let ty = match t.datum_type() {
        DatumType::F16 => TensorType::Fp16,
        DatumType::F32 => TensorType::Fp32,
        DatumType::F64 => TensorType::Fp64,
        DatumType::U8 => TensorType::U8,
        DatumType::I32 => TensorType::I32,
        DatumType::I64 => TensorType::I64,
        // Dimensions computed by the graph (a label a tree ensemble picks, a shape): whole
        // numbers once the run is done, handed out as INT64, which the graph declares.
        DatumType::TDim => {
            let whole = t.cast_to::<i64>().map_err(err)?;
            return from_tract(&whole);
        }
        other => anyhow::bail!("graph output of type {other:?} has no wasi-nn equivalent"),
    };
    let dimensions = t.shape().iter().map(|&d| u32::try_from(d)).collect::<Result<_, _>>()?;
    Ok(NnTensor::new(dimensions, ty, t.as_bytes().to_vec()))
}
