//! text: a `[text]` model fitted to its graph before it loads. The built-in text plugin
//! feeds the graph's token inputs and reads one output; which ones, and that output's
//! rank, come from the graph's own signature and reach the plugin with `[text]` in its
//! `WASMSERVE_TEXT` environment variable. With `[batching]`, `pad` and `cut` default to
//! those inputs and (token vectors) that output.

use crate::config::{ModelConfig, TextTask};
use anyhow::Context;
use std::path::Path;
use std::sync::Arc;

/// The graph inputs the text plugin feeds, each padded with 0 in a batch.
const TOKEN_INPUTS: [&str; 3] = ["input_ids", "attention_mask", "token_type_ids"];

/// `config` as the built-in plugin and the batcher take it, for a `[text]` model whose
/// graph is at `graph`; other models' configs as they are.
pub(super) fn fit(config: Arc<ModelConfig>, graph: &Path) -> anyhow::Result<Arc<ModelConfig>> {
    let Some(text) = &config.text else { return Ok(config) };
    let bytes = std::fs::read(graph).with_context(|| format!("cannot read {}", graph.display()))?;
    let (inputs, outputs) =
        crate::infer::signature(&bytes).context("`[text]`: reading the graph's signature")?;
    if let Some(other) = inputs.iter().find(|i| !TOKEN_INPUTS.contains(&i.name.as_str())) {
        anyhow::bail!(
            "`[text]`: graph input '{}' is not one the text plugin feeds ({TOKEN_INPUTS:?}); serve this graph \
             with a plugin of your own",
            other.name
        );
    }
    anyhow::ensure!(
        inputs.iter().any(|i| i.name == "input_ids"),
        "`[text]`: the graph has no input 'input_ids'; its inputs are {:?}",
        inputs.iter().map(|i| &i.name).collect::<Vec<_>>()
    );
    let preferred: &[&str] = match text.task {
        TextTask::Embed => &["last_hidden_state", "sentence_embedding", "token_embeddings"],
        TextTask::Classify | TextTask::Rerank | TextTask::Entities => &["logits"],
    };
    let output = match &text.output {
        Some(name) => outputs.iter().find(|o| &o.name == name).with_context(|| {
            format!(
                "`text.output`: the graph has no output '{name}'; its outputs are {:?}",
                outputs.iter().map(|o| &o.name).collect::<Vec<_>>()
            )
        })?,
        None => preferred
            .iter()
            .find_map(|p| outputs.iter().find(|o| o.name == *p))
            .or(outputs.first())
            .context("`[text]`: the graph has no outputs")?,
    };
    let graph_inputs: Vec<&str> = inputs.iter().map(|i| i.name.as_str()).collect();
    let mut settings = serde_json::to_value(text)?;
    let object = settings.as_object_mut().expect("[text] is a table");
    object.insert("graph_inputs".into(), serde_json::json!(graph_inputs));
    object.insert("output".into(), serde_json::json!(output.name));
    object.insert("output_rank".into(), serde_json::json!(output.shape.len()));
    let mut fitted = ModelConfig::clone(&config);
    fitted.plugin.env.insert("WASMSERVE_TEXT".into(), settings.to_string());
    if let Some(batching) = fitted.batching.as_mut().filter(|b| b.pad.is_empty()) {
        batching.pad = graph_inputs.iter().map(|name| (name.to_string(), 0.0)).collect();
        // Token vectors [n, len, dim] are cut back to each request's length; one vector or
        // one row of logits per text has no length to cut.
        if output.shape.len() == 3 {
            batching.cut = vec![output.name.clone()];
        }
    }
    Ok(Arc::new(fitted))
}
