//! convert: tensors between wasi-nn's form and ONNX Runtime's.

use super::*;

pub(super) fn to_ort(t: NnTensor) -> anyhow::Result<DynValue> {
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

pub(super) fn from_ort(value: &ort::value::ValueRef<'_>) -> anyhow::Result<NnTensor> {
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
