//! Running graphs from inside a plugin (ensembles, multi-model flows) through the imported
//! `wasi:nn` interfaces, with the plugin's own [`Tensor`]s in and out.
//!
//! `Graph::load("name")` finds the graph of model `name`: the plugin's own model always,
//! other models only when the model's config grants them in `[plugin] graphs`.

use crate::bindings::wasi::nn::{errors::Error, graph, tensor as nn};
use crate::{Datatype, PluginError, Tensor, internal};

/// A graph loaded by name.
pub struct Graph {
    name: String,
    graph: graph::Graph,
}

fn failed(what: &str, name: &str, e: Error) -> PluginError {
    internal(format!("graph '{name}' {what}: {:?}: {}", e.code(), e.data()))
}

fn nn_type(t: &Tensor) -> Result<nn::TensorType, PluginError> {
    Ok(match t.datatype {
        Datatype::Fp16 => nn::TensorType::Fp16,
        Datatype::Fp32 => nn::TensorType::Fp32,
        Datatype::Fp64 => nn::TensorType::Fp64,
        Datatype::Bf16 => nn::TensorType::Bf16,
        Datatype::Uint8 => nn::TensorType::U8,
        Datatype::Int32 => nn::TensorType::I32,
        Datatype::Int64 => nn::TensorType::I64,
        other => return Err(internal(format!("wasi-nn has no tensor type for '{}' ({other:?})", t.name))),
    })
}

fn datatype(t: nn::TensorType) -> Datatype {
    match t {
        nn::TensorType::Fp16 => Datatype::Fp16,
        nn::TensorType::Fp32 => Datatype::Fp32,
        nn::TensorType::Fp64 => Datatype::Fp64,
        nn::TensorType::Bf16 => Datatype::Bf16,
        nn::TensorType::U8 => Datatype::Uint8,
        nn::TensorType::I32 => Datatype::Int32,
        nn::TensorType::I64 => Datatype::Int64,
    }
}

impl Graph {
    /// The graph of model `name`; an internal error (with wasi-nn's code) when it is not
    /// there or not granted.
    pub fn load(name: &str) -> Result<Self, PluginError> {
        let graph = graph::load_by_name(name).map_err(|e| failed("load-by-name", name, e))?;
        Ok(Graph { name: name.into(), graph })
    }

    /// Run the graph on `inputs` (named as the graph names them); every output it returns,
    /// by name.
    pub fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, PluginError> {
        let context = self.graph.init_execution_context().map_err(|e| failed("init", &self.name, e))?;
        let mut named = Vec::with_capacity(inputs.len());
        for t in inputs {
            let dims = t
                .shape
                .iter()
                .map(|&d| u32::try_from(d).map_err(|_| internal(format!("'{}' has dimension {d}", t.name))))
                .collect::<Result<Vec<u32>, _>>()?;
            named.push((t.name.clone(), nn::Tensor::new(&dims, nn_type(t)?, &t.data)));
        }
        let outputs = context.compute(named).map_err(|e| failed("compute", &self.name, e))?;
        Ok(outputs
            .into_iter()
            .map(|(name, t)| Tensor {
                name,
                datatype: datatype(t.ty()),
                shape: t.dimensions().iter().map(|&d| i64::from(d)).collect(),
                data: t.data(),
            })
            .collect())
    }
}
