//! The ONNX Runtime backend, on the CPU or an NVIDIA GPU (CUDA execution provider).
//!
//! ONNX Runtime is loaded from a shared library at start-up (the `onnxruntime` wheel's
//! `libonnxruntime.so`, or `onnxruntime-gpu`'s for CUDA), so the binary needs nothing
//! installed unless a model asks for this backend.

use super::{BackendOptions, NnTensor, Runner, graph};
use crate::config::{GraphConfig, Target};
use anyhow::{Context, anyhow, bail};
use ort::execution_providers::{CPUExecutionProvider, CUDAExecutionProvider, ExecutionProvider};
use ort::session::{Session, SessionInputValue, builder::GraphOptimizationLevel};
use ort::tensor::TensorElementType;
use ort::value::{DynValue, Tensor as OrtTensor, ValueType};
use std::path::Path;
use std::sync::{Mutex, OnceLock};
use wasmtime_wasi_nn::wit::TensorType;

/// One session per execution: `Session::run` takes `&mut self` in this ort release, so a
/// session runs one graph at a time.
struct Onnx {
    sessions: Vec<Mutex<Session>>,
}

/// Load ONNX Runtime's library once per process. A missing or broken library is an error
/// here, never a panic inside ort.
fn init(options: &BackendOptions) -> anyhow::Result<()> {
    static INIT: OnceLock<Result<(), String>> = OnceLock::new();
    INIT.get_or_init(|| {
        let path = options.onnxruntime_library.as_deref().ok_or(
            "backend = \"onnx\" needs ONNX Runtime's shared library: pass --onnxruntime-library PATH \
             or set ORT_DYLIB_PATH (e.g. the onnxruntime wheel's onnxruntime/capi/libonnxruntime.so.*)",
        )?;
        check_library(path).map_err(|e| format!("{e:#}"))?;
        // ort panics on a library it cannot use; turn that into an error.
        let lib = path.to_string_lossy().into_owned();
        std::panic::catch_unwind(move || ort::init_from(lib).commit())
            .map_err(|panic| {
                let msg = crate::error::panic_message(&*panic);
                format!("cannot load ONNX Runtime from {}: {msg}", path.display())
            })?
            .map_err(|e| format!("cannot initialise ONNX Runtime: {e}"))?;
        Ok(())
    })
    .clone()
    .map_err(|e| anyhow!(e))
}

fn check_library(path: &Path) -> anyhow::Result<()> {
    let meta = std::fs::metadata(path).with_context(|| {
        format!("ONNX Runtime library {} does not exist or cannot be read", path.display())
    })?;
    anyhow::ensure!(meta.is_file(), "ONNX Runtime library {} is not a file", path.display());
    Ok(())
}

/// Create `executions` sessions for `model` with the execution provider the config asks for.
pub fn load(
    model: &[u8],
    config: &GraphConfig,
    executions: usize,
    options: &BackendOptions,
) -> anyhow::Result<wasmtime_wasi_nn::Graph> {
    init(options)?;
    let (first, gpu) = match config.target {
        Target::Cpu => (session(model, config, false)?, false),
        Target::Gpu => match session(model, config, true) {
            Ok(session) => (session, true),
            Err(e) if config.gpu_fallback => {
                tracing::warn!("no usable GPU ({e:#}); running on the CPU as gpu_fallback allows");
                (session(model, config, false)?, false)
            }
            Err(e) => {
                return Err(e.context(
                    "target = \"gpu\" needs ONNX Runtime with CUDA (the onnxruntime-gpu wheel's library) \
                 and an NVIDIA GPU; set gpu_fallback = true to run on the CPU instead",
                ));
            }
        },
    };
    let inputs = first.inputs.iter().map(|i| i.name.clone()).collect();
    let outputs = first.outputs.iter().map(|o| o.name.clone()).collect();
    let mut sessions = vec![first];
    for _ in 1..executions {
        sessions.push(session(model, config, gpu)?);
    }
    Ok(graph(inputs, outputs, Onnx { sessions: sessions.into_iter().map(Mutex::new).collect() }))
}

fn session(model: &[u8], config: &GraphConfig, gpu: bool) -> anyhow::Result<Session> {
    let mut builder = Session::builder()?.with_optimization_level(GraphOptimizationLevel::Level3)?;
    if config.threads > 0 {
        builder = builder.with_intra_threads(config.threads)?;
    }
    if gpu {
        let cuda = CUDAExecutionProvider::default();
        if !cuda.is_available()? {
            bail!("this ONNX Runtime library has no CUDA execution provider");
        }
        builder = builder.with_execution_providers([cuda.build().error_on_failure()])?;
    } else {
        builder = builder.with_execution_providers([CPUExecutionProvider::default().build()])?;
    }
    Ok(builder.commit_from_memory(model)?)
}

impl Runner for Onnx {
    fn run(&self, inputs: Vec<NnTensor>) -> anyhow::Result<Vec<NnTensor>> {
        let inputs = inputs
            .into_iter()
            .map(|t| to_ort(t).map(SessionInputValue::from))
            .collect::<anyhow::Result<Vec<_>>>()?;
        // A free session if there is one, else wait for the first.
        let free = self.sessions.iter().find_map(|s| s.try_lock().ok());
        let mut session = match free {
            Some(session) => session,
            None => self.sessions[0].lock().map_err(|_| anyhow!("session poisoned"))?,
        };
        let outputs = session.run(inputs.as_slice())?;
        outputs.iter().map(|(_, value)| from_ort(&value)).collect()
    }
}

fn to_ort(t: NnTensor) -> anyhow::Result<DynValue> {
    let shape: Vec<i64> = t.dimensions.iter().map(|&d| i64::from(d)).collect();
    let d = &t.data;
    Ok(match t.ty {
        TensorType::Fp16 => {
            OrtTensor::from_array((shape, bytemuck::pod_collect_to_vec::<u8, half::f16>(d)))?.into_dyn()
        }
        TensorType::Bf16 => {
            OrtTensor::from_array((shape, bytemuck::pod_collect_to_vec::<u8, half::bf16>(d)))?.into_dyn()
        }
        TensorType::Fp32 => {
            OrtTensor::from_array((shape, bytemuck::pod_collect_to_vec::<u8, f32>(d)))?.into_dyn()
        }
        TensorType::Fp64 => {
            OrtTensor::from_array((shape, bytemuck::pod_collect_to_vec::<u8, f64>(d)))?.into_dyn()
        }
        TensorType::U8 => OrtTensor::from_array((shape, t.data))?.into_dyn(),
        TensorType::I32 => {
            OrtTensor::from_array((shape, bytemuck::pod_collect_to_vec::<u8, i32>(d)))?.into_dyn()
        }
        TensorType::I64 => {
            OrtTensor::from_array((shape, bytemuck::pod_collect_to_vec::<u8, i64>(d)))?.into_dyn()
        }
    })
}

fn from_ort(value: &ort::value::ValueRef<'_>) -> anyhow::Result<NnTensor> {
    fn extract<T: ort::tensor::PrimitiveTensorElementType + bytemuck::Pod>(
        value: &ort::value::ValueRef<'_>,
        ty: TensorType,
    ) -> anyhow::Result<NnTensor> {
        let (shape, data) = value.try_extract_tensor::<T>()?;
        let dimensions = shape.iter().map(|&d| u32::try_from(d)).collect::<Result<_, _>>()?;
        Ok(NnTensor::new(dimensions, ty, bytemuck::cast_slice(data).to_vec()))
    }
    match value.dtype() {
        ValueType::Tensor { ty, .. } => match ty {
            TensorElementType::Float16 => extract::<half::f16>(value, TensorType::Fp16),
            TensorElementType::Bfloat16 => extract::<half::bf16>(value, TensorType::Bf16),
            TensorElementType::Float32 => extract::<f32>(value, TensorType::Fp32),
            TensorElementType::Float64 => extract::<f64>(value, TensorType::Fp64),
            TensorElementType::Uint8 => extract::<u8>(value, TensorType::U8),
            TensorElementType::Int32 => extract::<i32>(value, TensorType::I32),
            TensorElementType::Int64 => extract::<i64>(value, TensorType::I64),
            other => bail!("graph output of type {other:?} has no wasi-nn equivalent"),
        },
        other => bail!("graph output {other:?} is not a tensor"),
    }
}
