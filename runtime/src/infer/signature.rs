//! signature: the inputs and outputs an ONNX file declares, as `model.toml` states them
//! (`wasmserve new plugin --graph`). What the file declares is taken as it is, unknown
//! dimensions as -1; tract's type inference is asked only for what the file leaves out.
//! Exports that no backend would type on their own, such as skl2onnx's (`X` FP32 `[None, 4]`
//! with an unnamed first dimension), are read so.

use crate::config::TensorSpec;
use crate::tensor::Datatype;
use anyhow::{Context, bail};
use prost::Message;
use tract_onnx::pb::tensor_proto::DataType;
use tract_onnx::pb::tensor_shape_proto::dimension::Value as Dim;
use tract_onnx::pb::{GraphProto, ModelProto, ValueInfoProto, type_proto};

/// The graph's inputs (its initializers left out: old exports list them as inputs too) and
/// outputs.
pub fn signature(onnx: &[u8]) -> anyhow::Result<(Vec<TensorSpec>, Vec<TensorSpec>)> {
    let model = ModelProto::decode(onnx).context("not an ONNX model")?;
    let graph = model.graph.as_ref().context("the ONNX model has no graph")?;
    let constant = |v: &&ValueInfoProto| graph.initializer.iter().any(|t| t.name == v.name);
    let inputs: Vec<_> =
        graph.input.iter().filter(|v| !constant(v)).map(|v| declared(graph, v)).collect::<Result<_, _>>()?;
    let outputs: Vec<_> = graph.output.iter().map(|v| declared(graph, v)).collect::<Result<_, _>>()?;
    if inputs.iter().chain(&outputs).all(|(_, spec)| spec.is_some()) {
        let known =
            |specs: Vec<(String, Option<TensorSpec>)>| specs.into_iter().filter_map(|(_, s)| s).collect();
        return Ok((known(inputs), known(outputs)));
    }
    let missing: Vec<&str> =
        inputs.iter().chain(&outputs).filter(|(_, s)| s.is_none()).map(|(n, _)| n.as_str()).collect();
    let (typed_inputs, typed_outputs) = super::tract::signature(onnx).with_context(|| {
        format!("the file does not declare the type and shape of {missing:?}, and tract cannot infer them")
    })?;
    let fill = |specs: Vec<(String, Option<TensorSpec>)>, typed: &[TensorSpec]| {
        specs
            .into_iter()
            .map(|(name, spec)| match spec {
                Some(spec) => Ok(spec),
                None => typed
                    .iter()
                    .find(|t| t.name == name)
                    .cloned()
                    .with_context(|| format!("'{name}' has no type")),
            })
            .collect::<anyhow::Result<Vec<_>>>()
    };
    Ok((fill(inputs, &typed_inputs)?, fill(outputs, &typed_outputs)?))
}

/// What the file declares of `value`: its name, and its spec when the type and shape are
/// there; an error when it is not a tensor at all.
fn declared(graph: &GraphProto, value: &ValueInfoProto) -> anyhow::Result<(String, Option<TensorSpec>)> {
    let name = value.name.clone();
    let Some(ty) = &value.r#type else { return Ok((name, None)) };
    let Some(type_proto::Value::TensorType(tensor)) = &ty.value else {
        // A sequence, map or optional value: the protobuf keeps only tensor types.
        let zipmap = graph.node.iter().any(|n| n.op_type == "ZipMap" && n.output.contains(&name));
        if zipmap {
            bail!(
                "output '{name}' is a list of maps (skl2onnx's ZipMap), which no tensor can carry: export with \
                 `options={{'zipmap': False}}` (skl2onnx's to_onnx or convert_sklearn) to get the \
                 probabilities as a tensor"
            );
        }
        bail!(
            "'{name}' is not a tensor (a sequence, a map or an optional), which the Open Inference Protocol cannot carry"
        );
    };
    let datatype = match DataType::try_from(tensor.elem_type).unwrap_or(DataType::Undefined) {
        DataType::Undefined => return Ok((name, None)),
        DataType::Bool => Datatype::Bool,
        DataType::Uint8 => Datatype::Uint8,
        DataType::Uint16 => Datatype::Uint16,
        DataType::Uint32 => Datatype::Uint32,
        DataType::Uint64 => Datatype::Uint64,
        DataType::Int8 => Datatype::Int8,
        DataType::Int16 => Datatype::Int16,
        DataType::Int32 => Datatype::Int32,
        DataType::Int64 => Datatype::Int64,
        DataType::Float16 => Datatype::Fp16,
        DataType::Bfloat16 => Datatype::Bf16,
        DataType::Float => Datatype::Fp32,
        DataType::Double => Datatype::Fp64,
        DataType::String => Datatype::Bytes,
        other => bail!("'{name}' has type {other:?}, which the Open Inference Protocol lacks"),
    };
    // No shape at all: the rank is unknown.
    let Some(shape) = &tensor.shape else { return Ok((name, None)) };
    let shape = shape
        .dim
        .iter()
        .map(|d| match d.value {
            Some(Dim::DimValue(v)) if v >= 0 => v,
            _ => -1,
        })
        .collect();
    Ok((name.clone(), Some(TensorSpec { name, datatype, shape })))
}
