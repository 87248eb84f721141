//! triton: what Triton's tools ask of a server, built once for both front ends: the server
//! metadata and the model repository's index, and the model configuration extension (`GET
//! /v2/models/{m}[/versions/{v}]/config`, gRPC `ModelConfig`), which `perf_analyzer` reads
//! before it sends anything, and the statistics extension (`GET
//! /v2/models[/{m}[/versions/{v}]]/stats`, gRPC `ModelStatistics`), its server-side
//! breakdown. Messages and field names are Triton's (`runtime/proto`); REST sends the same
//! messages as JSON.
//!
//! What the statistics count, per model version, from the end of each inference request
//! (`observe::statistics`, fed by `observe::metrics::RequestTimer::finish`; warm-up and requests for unknown models are not
//! counted):
//!
//! | field | wasmserve's stage |
//! |---|---|
//! | `success` / `fail` | whole requests that answered 200 / anything else, from the model's resolution to the answer |
//! | `queue` | waiting for a slot, a worker thread and a free execution (with `[batching]`, for the batch to form) |
//! | `compute_input` | the plugin's preprocess (its instance included): inputs become the graph's tensors |
//! | `compute_infer` | the graph run (with `[batching]`, the batch's whole run, in each request it served) |
//! | `compute_output` | the plugin's postprocess and the output check |
//! | `inference_count` | rows (dimension 0 of the first input) of successful requests |
//! | `execution_count`, `batch_stats` | graph runs, by rows in the run; a batch's run counts once, with the stage times of the request that ran it |
//!
//! `max_batch_size` is 0: shapes are the ones a client sends (a model's dimension 0 is the
//! client's to fill; `[batching]` joins requests behind it, shown as `dynamic_batching`).

use crate::config::TensorSpec;
use crate::error::Result;
use crate::pipeline::{AppState, ModelPath};
use crate::proto::repository_index_response::ModelIndex;
use crate::proto::{
    DataType, ModelConfig, ModelDynamicBatching, ModelInput, ModelOutput, ModelStatistics,
    ServerMetadataResponse,
};
use crate::repository::{State, Status};
use crate::tensor::Datatype;

/// The protocol extensions the server metadata names: binary tensors, these two, and the
/// model repository's index, load and unload (REST and gRPC).
pub(crate) const EXTENSIONS: [&str; 4] =
    ["binary_tensor_data", "model_configuration", "model_repository", "statistics"];

/// The server metadata, for both protocols (REST sends the message as JSON).
pub(crate) fn server_metadata() -> ServerMetadataResponse {
    ServerMetadataResponse {
        name: "wasmserve".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        extensions: EXTENSIONS.iter().map(|e| e.to_string()).collect(),
    }
}

/// The repository index, for both protocols: each model version (a directory that cannot
/// be served at all: the model alone) with its state and, unavailable, why; beside each,
/// its whole status, for what REST adds that the protocol's message has no field for.
pub(crate) fn index(state: &AppState) -> Vec<(ModelIndex, Status)> {
    let entry = |status: &Status| ModelIndex {
        name: status.name.clone(),
        version: status.version.clone().unwrap_or_default(),
        state: status.state.name().into(),
        reason: match &status.state {
            State::Unavailable(reason) => reason.clone(),
            _ => String::new(),
        },
    };
    state.repository().statuses().into_iter().map(|status| (entry(&status), status)).collect()
}

/// Triton's configuration of the model version `name` with `config` (its `model.toml`).
pub(crate) fn config(name: &str, config: &crate::config::ModelConfig) -> ModelConfig {
    ModelConfig {
        name: name.to_string(),
        platform: config.platform(),
        backend: config.graph.backend.name().to_string(),
        max_batch_size: 0,
        input: config
            .inputs
            .iter()
            .map(|t| ModelInput {
                name: t.name.clone(),
                data_type: data_type_of(t) as i32,
                dims: t.shape.clone(),
            })
            .collect(),
        output: config
            .outputs
            .iter()
            .map(|t| ModelOutput {
                name: t.name.clone(),
                data_type: data_type_of(t) as i32,
                dims: t.shape.clone(),
            })
            .collect(),
        dynamic_batching: config.batching.as_ref().map(|b| ModelDynamicBatching {
            preferred_batch_size: b.preferred_batch_sizes.iter().map(|&n| n as i32).collect(),
            max_queue_delay_microseconds: b.max_queue_delay_us,
        }),
    }
}

fn data_type_of(tensor: &TensorSpec) -> DataType {
    use Datatype::*;
    match tensor.datatype {
        Bool => DataType::TypeBool,
        Uint8 => DataType::TypeUint8,
        Uint16 => DataType::TypeUint16,
        Uint32 => DataType::TypeUint32,
        Uint64 => DataType::TypeUint64,
        Int8 => DataType::TypeInt8,
        Int16 => DataType::TypeInt16,
        Int32 => DataType::TypeInt32,
        Int64 => DataType::TypeInt64,
        Fp16 => DataType::TypeFp16,
        Bf16 => DataType::TypeBf16,
        Fp32 => DataType::TypeFp32,
        Fp64 => DataType::TypeFp64,
        Bytes => DataType::TypeString,
    }
}

/// The statistics `path` asks for (none: every model version in the repository): one
/// version, every version of a model, or a route's variants'.
pub(crate) fn statistics(state: &AppState, path: Option<&ModelPath>) -> Result<Vec<ModelStatistics>> {
    let repository = state.repository();
    let Some(path) = path else {
        let all = repository.statuses().into_iter().filter_map(|s| Some((s.name, s.version?)));
        return Ok(state.metrics().statistics().of(all));
    };
    let targets = match state.route(path)? {
        Some(route) => route.variants.iter().map(|v| (v.model.clone(), v.version.clone())).collect(),
        None => vec![(path.model.clone(), path.version.clone())],
    };
    let mut versions = Vec::new();
    for (model, version) in targets {
        let named = repository.versions_named(&model, version.as_deref())?;
        versions.extend(named.into_iter().map(|v| (model.clone(), v)));
    }
    Ok(state.metrics().statistics().of(versions))
}
