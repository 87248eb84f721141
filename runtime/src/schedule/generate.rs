//! generate: one generation through a generative model: a slot (or a place in its queue,
//! then 503), then the plugin's decoding loop on tokio's blocking pool, its text sent on as
//! it comes. The engine joins the steps of every generation in flight (`infer::ggml`).

use super::Runner;
use crate::error::Error;
use crate::infer::Watch;
use crate::plugin::{GenerationEnd, GenerationRequest};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// How a generation went.
#[derive(Debug)]
pub struct Generated {
    /// Its token counts and why it ended.
    pub end: GenerationEnd,
    /// How long it waited for a slot.
    pub queue: Duration,
    /// From its start in the plugin to its end.
    pub total: Duration,
    /// The plugin's own time in it: `total` less the waits for forward passes.
    pub plugin: Duration,
}

/// Run `request` through `model`, sending its text on `text` as the plugin emits it. A
/// client that goes away (`text`'s receiver dropped) stops the generation at its next step
/// and frees its slot.
pub async fn generate(
    model: Arc<Runner>,
    mut request: GenerationRequest,
    text: mpsc::Sender<String>,
) -> Result<Generated, Error> {
    let Some(generator) = model.generator() else {
        return Err(Error::bad_request(format!(
            "model '{}' does not generate text: send it tensors (POST /v2/models/{}/infer)",
            model.name, model.name
        )));
    };
    request.model = model.name.clone();
    request.context_length = generator.context;
    if let Some(asked) = request.max_tokens.filter(|&n| n > generator.context) {
        return Err(Error::bad_request(format!(
            "'max_tokens' is {asked}: more than model '{}' holds, {} tokens of context for prompt and answer together",
            model.name, generator.context
        )));
    }
    request.max_tokens = request.max_tokens.or(generator.max_tokens);
    let queued = Instant::now();
    let timeout = model.slots.timeout(&request.params);
    let slot = model.slots.acquire(&model.name, timeout).await?;
    let queue = queued.elapsed();
    let watch = Arc::new(Watch::default());
    // The client gone (the stream's receiver dropped): the next step fails.
    let watcher = {
        let (watch, text) = (watch.clone(), text.clone());
        tokio::spawn(async move {
            text.closed().await;
            watch.gone.store(true, Ordering::Release);
        })
    };
    let span = tracing::Span::current();
    let run = {
        let (model, watch) = (model.clone(), watch.clone());
        move || {
            let _slot = slot;
            let _generation = span.enter();
            let started = Instant::now();
            let mut instance = model.plugin.instantiate()?;
            let emit = Box::new(move |part: String| text.blocking_send(part).is_ok());
            let end = instance.generate(&request, emit, watch.clone());
            let total = started.elapsed();
            let waited = Duration::from_nanos(watch.waited_nanos.load(Ordering::Relaxed));
            end.map(|end| Generated { end, queue, total, plugin: total.saturating_sub(waited) })
        }
    };
    let answer = tokio::task::spawn_blocking(run)
        .await
        .map_err(|e| Error::Internal(format!("generation panicked: {e}")));
    watcher.abort();
    let answer = answer?;
    match answer {
        // Whatever the plugin made of its failed step, the cause is the client's leaving.
        Err(_) if watch.is_gone() => {
            Err(Error::Cancelled(format!("the client of this generation by '{}' went away", model.name)))
        }
        answer => answer,
    }
}

/// A generative model's warm-up, on the calling thread: one token after a short prompt,
/// through the plugin (its tokenizer built, in the instance that then serves the first
/// request) and the engine. A model whose warm-up fails is not ready.
pub fn warm_up_generation(model: &Runner) -> Result<(), Error> {
    let generator = model.generator().ok_or_else(|| Error::Internal("not a generative model".into()))?;
    let request = GenerationRequest {
        model: model.name.clone(),
        prompt: crate::plugin::Prompt::Text("Hello".into()),
        context_length: generator.context,
        max_tokens: Some(1),
        temperature: Some(0.0),
        top_p: None,
        top_k: None,
        seed: None,
        repetition_penalty: None,
        stop: Vec::new(),
        params: Vec::new(),
    };
    let mut instance = model.plugin.instantiate()?;
    instance.generate(&request, Box::new(|_| true), Arc::new(Watch::default())).map(drop)
}
