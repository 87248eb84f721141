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

/// How long one request spent in each step.
#[derive(Debug, Default, Clone, Copy)]
pub struct Timings {
    /// Waiting for a worker thread.
    pub queue: std::time::Duration,
    /// Plugin instance and preprocess.
    pub preprocess: std::time::Duration,
    /// The graph.
    pub compute: std::time::Duration,
    /// Plugin postprocess and the output check.
    pub postprocess: std::time::Duration,
}

/// Run one request through `model`: preprocess (plugin) -> infer (graph) -> postprocess (plugin).
pub async fn run(
    model: Arc<Model>,
    inputs: Vec<Tensor>,
    params: Vec<(String, String)>,
) -> Result<(Vec<Tensor>, Timings), Error> {
    let queued = Instant::now();
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || {
        let _request = span.enter();
        let queue = queued.elapsed();
        run_blocking(&model, inputs, &params)
            .map(|(outputs, timings)| (outputs, Timings { queue, ..timings }))
    })
    .await
    .map_err(|e| Error::Internal(format!("request handling panicked: {e}")))?
}

/// The steps of one request, on the calling thread (start-up warm-up uses it directly).
pub fn run_blocking(
    model: &Model,
    inputs: Vec<Tensor>,
    params: &Vec<(String, String)>,
) -> Result<(Vec<Tensor>, Timings), Error> {
    let started = Instant::now();
    let mut instance = model.plugin.instantiate()?;
    let prepared = tracing::debug_span!("preprocess").in_scope(|| instance.preprocess(inputs, params))?;
    let preprocessed = Instant::now();
    let outputs = tracing::debug_span!("infer")
        .in_scope(|| infer::run(&model.graph, prepared.graph_inputs))
        .map_err(|e| Error::Inference { model: model.name.clone(), message: format!("{e:#}") })?;
    let inferred = Instant::now();
    let outputs = tracing::debug_span!("postprocess")
        .in_scope(|| instance.postprocess(outputs, prepared.context, params))?;
    check_outputs(model, &outputs)?;
    let timings = Timings {
        queue: Default::default(),
        preprocess: preprocessed - started,
        compute: inferred - preprocessed,
        postprocess: inferred.elapsed(),
    };
    tracing::debug!(
        model = %model.name,
        preprocess_us = timings.preprocess.as_micros() as u64,
        infer_us = timings.compute.as_micros() as u64,
        postprocess_us = timings.postprocess.as_micros() as u64,
        "request done"
    );
    Ok((outputs, timings))
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
