//! triton: what Triton's tools ask of a server beside the Open Inference Protocol, built
//! once for both front ends: the model configuration extension (`GET
//! /v2/models/{m}[/versions/{v}]/config`, gRPC `ModelConfig`), which `perf_analyzer` reads
//! before it sends anything, and the statistics extension (`GET
//! /v2/models[/{m}[/versions/{v}]]/stats`, gRPC `ModelStatistics`), its server-side
//! breakdown. Messages and field names are Triton's (`runtime/proto`); REST sends the same
//! messages as JSON.
//!
//! What the statistics count, per model version, from the end of each inference request
//! (`metrics::RequestTimer::finish`; warm-up and requests for unknown models are not
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
use crate::grpc::proto::{
    DataType, InferBatchStatistics, InferStatistics, ModelConfig, ModelDynamicBatching, ModelInput,
    ModelOutput, ModelStatistics, StatisticDuration,
};
use crate::pipeline::{AppState, ModelPath};
use crate::schedule::Timings;
use crate::tensor::Datatype;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// The protocol extensions the server metadata names: binary tensors, these two, and the
/// model repository's index, load and unload (REST and gRPC).
pub(crate) const EXTENSIONS: [&str; 4] =
    ["binary_tensor_data", "model_configuration", "model_repository", "statistics"];

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

/// A data type field in JSON: by name (`TYPE_FP32`), as Triton writes it.
pub(crate) fn data_type<S: serde::Serializer>(value: &i32, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(DataType::try_from(*value).unwrap_or(DataType::TypeInvalid).as_str_name())
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

/// Every model version's statistics since the server started.
#[derive(Default)]
pub(crate) struct Statistics(Mutex<BTreeMap<(String, String), ModelStatistics>>);

/// `duration` added to a cumulative count and time.
fn add(tally: &mut Option<StatisticDuration>, duration: Duration) {
    let tally = tally.get_or_insert_default();
    tally.count += 1;
    tally.ns += duration.as_nanos() as u64;
}

impl Statistics {
    /// A request to `model` at `version` ended after `elapsed`: answered, with its stage
    /// timings and rows, or failed.
    pub(crate) fn record(
        &self,
        model: &str,
        version: &str,
        elapsed: Duration,
        done: Option<(&Timings, u64)>,
    ) {
        let mut all = self.0.lock().expect("statistics lock");
        let key = (model.to_string(), version.to_string());
        let s = all.entry(key).or_insert_with(|| empty(model, version));
        s.last_inference =
            SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
        let stats = s.inference_stats.get_or_insert_default();
        let Some((t, rows)) = done else {
            add(&mut stats.fail, elapsed);
            return;
        };
        add(&mut stats.success, elapsed);
        add(&mut stats.queue, t.queue);
        add(&mut stats.compute_input, t.preprocess);
        add(&mut stats.compute_infer, t.compute);
        add(&mut stats.compute_output, t.postprocess);
        s.inference_count += rows;
        if t.graph_runs == 0 {
            return;
        }
        s.execution_count += t.graph_runs;
        let batch_size = t.batch_rows as u64;
        let at = match s.batch_stats.binary_search_by_key(&batch_size, |b| b.batch_size) {
            Ok(at) => at,
            Err(at) => {
                s.batch_stats.insert(at, InferBatchStatistics { batch_size, ..Default::default() });
                at
            }
        };
        let batch = &mut s.batch_stats[at];
        add(&mut batch.compute_input, t.preprocess);
        add(&mut batch.compute_infer, t.compute);
        add(&mut batch.compute_output, t.postprocess);
    }

    /// The statistics of these model versions (zero for those with no request yet), in order.
    pub(crate) fn of(&self, versions: impl IntoIterator<Item = (String, String)>) -> Vec<ModelStatistics> {
        let all = self.0.lock().expect("statistics lock");
        versions
            .into_iter()
            .map(|(model, version)| {
                let mut s = all
                    .get(&(model.clone(), version.clone()))
                    .cloned()
                    .unwrap_or_else(|| empty(&model, &version));
                // Every duration present, zero or not, as Triton sends them.
                let stats = s.inference_stats.get_or_insert_default();
                for tally in [
                    &mut stats.success,
                    &mut stats.fail,
                    &mut stats.queue,
                    &mut stats.compute_input,
                    &mut stats.compute_infer,
                    &mut stats.compute_output,
                    &mut stats.cache_hit,
                    &mut stats.cache_miss,
                ] {
                    tally.get_or_insert_default();
                }
                for batch in &mut s.batch_stats {
                    for tally in
                        [&mut batch.compute_input, &mut batch.compute_infer, &mut batch.compute_output]
                    {
                        tally.get_or_insert_default();
                    }
                }
                s
            })
            .collect()
    }
}

fn empty(model: &str, version: &str) -> ModelStatistics {
    ModelStatistics {
        name: model.to_string(),
        version: version.to_string(),
        inference_stats: Some(InferStatistics::default()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timings(rows: usize, graph_runs: u64) -> Timings {
        Timings {
            queue: Duration::from_micros(10),
            preprocess: Duration::from_micros(20),
            compute: Duration::from_micros(30),
            postprocess: Duration::from_micros(40),
            batch_rows: rows,
            graph_runs,
        }
    }

    #[test]
    fn requests_add_up_by_stage_and_batch_size() {
        let stats = Statistics::default();
        stats.record("m", "1", Duration::from_micros(100), Some((&timings(1, 1), 1)));
        stats.record("m", "1", Duration::from_micros(100), Some((&timings(4, 1), 2)));
        // A request that a batch served without running it: no execution of its own.
        stats.record("m", "1", Duration::from_micros(100), Some((&timings(4, 0), 2)));
        stats.record("m", "1", Duration::from_micros(7), None);
        let [s] = stats.of([("m".into(), "1".into())]).try_into().expect("one");
        let i = s.inference_stats.expect("inference stats");
        assert_eq!(i.success, Some(StatisticDuration { count: 3, ns: 300_000 }));
        assert_eq!(i.fail, Some(StatisticDuration { count: 1, ns: 7_000 }));
        assert_eq!(i.compute_infer, Some(StatisticDuration { count: 3, ns: 90_000 }));
        assert_eq!(i.cache_hit, Some(StatisticDuration::default()));
        assert_eq!((s.inference_count, s.execution_count), (5, 2));
        let sizes: Vec<_> =
            s.batch_stats.iter().map(|b| (b.batch_size, b.compute_infer.unwrap().count)).collect();
        assert_eq!(sizes, [(1, 1), (4, 1)]);
        assert!(s.last_inference > 0);
    }

    #[test]
    fn a_version_never_asked_has_zeros() {
        let [s] = Statistics::default().of([("m".into(), "2".into())]).try_into().expect("one");
        assert_eq!((s.name.as_str(), s.version.as_str(), s.inference_count), ("m", "2", 0));
        assert_eq!(s.inference_stats.unwrap().success, Some(StatisticDuration::default()));
    }
}
