//! schedule: where a request's model work runs, and the order of its steps.
//!
//! Plugin calls and inference are CPU-bound and synchronous, so they run on tokio's
//! blocking pool, never on the threads that accept connections and answer health checks.
//! `RUST_LOG=wasmserve::schedule=debug` logs each request's time in every stage.

use crate::error::Error;
use crate::infer;
use crate::repository::Model;
use crate::tensor::Tensor;
use std::sync::Arc;
use std::time::Instant;

/// Run one request through `model`: preprocess (plugin) -> infer (graph) -> postprocess (plugin).
pub async fn run(
    model: Arc<Model>,
    inputs: Vec<Tensor>,
    params: Vec<(String, String)>,
) -> Result<Vec<Tensor>, Error> {
    tokio::task::spawn_blocking(move || run_blocking(&model, inputs, &params))
        .await
        .map_err(|e| Error::Internal(format!("request handling panicked: {e}")))?
}

/// The steps of one request, on the calling thread (start-up warm-up uses it directly).
pub fn run_blocking(
    model: &Model,
    inputs: Vec<Tensor>,
    params: &Vec<(String, String)>,
) -> Result<Vec<Tensor>, Error> {
    let started = Instant::now();
    let mut instance = model.plugin.instantiate()?;
    let prepared = instance.preprocess(inputs, params)?;
    let preprocessed = Instant::now();
    let outputs = infer::run(&model.graph, prepared.graph_inputs)
        .map_err(|e| Error::Inference { model: model.name.clone(), message: format!("{e:#}") })?;
    let inferred = Instant::now();
    let outputs = instance.postprocess(outputs, prepared.context, params)?;
    check_outputs(model, &outputs)?;
    tracing::debug!(
        model = %model.name,
        preprocess_us = (preprocessed - started).as_micros() as u64,
        infer_us = (inferred - preprocessed).as_micros() as u64,
        postprocess_us = inferred.elapsed().as_micros() as u64,
        "request done"
    );
    Ok(outputs)
}

/// The plugin must return what the model's config promises clients.
fn check_outputs(model: &Model, outputs: &[Tensor]) -> Result<(), Error> {
    let failed = |message: String| Error::PluginFailed { plugin: model.name.clone(), message };
    for spec in &model.config.outputs {
        let output = outputs
            .iter()
            .find(|o| o.name == spec.name)
            .ok_or_else(|| failed(format!("postprocess returned no '{}' output", spec.name)))?;
        if output.datatype != spec.datatype {
            return Err(failed(format!(
                "postprocess returned '{}' as {}, the config declares {}",
                spec.name, output.datatype, spec.datatype
            )));
        }
    }
    Ok(())
}
