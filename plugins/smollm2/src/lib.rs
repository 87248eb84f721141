//! A generative model's decoding loop, in the sandbox: SmolLM2-135M-Instruct (or any chat
//! model in a GGUF file whose tokenizer is byte-level BPE).
//!
//! For each request: the chat template (the model's own, from its GGUF file) or the raw
//! prompt; the tokenizer (built once per instance from the GGUF's vocabulary and merges);
//! then step by step: the host runs the forward pass (batched with every other generation in
//! flight), this plugin samples, checks its stop rules and hands the text out as soon as it
//! is whole UTF-8. Everything here is policy a model's owner may change: the template, the
//! sampler, the stop rules, what the answer may contain.

use wasmserve_plugin::generate::{
    FinishReason, GenerationEnd, GenerationRequest, Guest, Output, Prompt, Sampler, Sequence, Vocabulary,
};
use wasmserve_plugin::{PluginError, invalid};

/// The model file, granted at `/data` (`[plugin] data`).
const MODEL: &str = "/data/model.gguf";

/// The vocabulary, built on an instance's first request and kept for its next ones.
static VOCABULARY: std::sync::OnceLock<Result<Vocabulary, PluginError>> = std::sync::OnceLock::new();

fn vocabulary() -> Result<&'static Vocabulary, PluginError> {
    VOCABULARY.get_or_init(|| Vocabulary::from_gguf(MODEL)).as_ref().map_err(Clone::clone)
}

struct SmolLm2;

impl Guest for SmolLm2 {
    fn generate(request: GenerationRequest) -> Result<GenerationEnd, PluginError> {
        let vocabulary = vocabulary()?;
        let text = match &request.prompt {
            Prompt::Chat(messages) => vocabulary.apply_chat_template(messages)?,
            Prompt::Text(text) => text.clone(),
        };
        let prompt = vocabulary.encode(&text, true)?;
        let context = request.context_length;
        if prompt.is_empty() {
            return Err(invalid("the prompt is empty"));
        }
        if prompt.len() as u64 >= u64::from(context) {
            return Err(invalid(format!(
                "the prompt is {} tokens: it does not fit this model's context of {context} tokens \
                 (with room for an answer)",
                prompt.len()
            )));
        }
        let room = context - prompt.len() as u32;
        let max_tokens = request.max_tokens.unwrap_or(room).min(room);

        let mut sequence = Sequence::open(&request.model)?;
        let mut sampler = Sampler::new(&request);
        let mut output = Output::new(request.stop.clone());
        let mut history = prompt.clone();
        let mut logits = sequence.step(&prompt)?;
        let mut generated = 0;
        let finish = loop {
            let token = sampler.sample(&mut logits, &history);
            if vocabulary.ends(token) {
                break FinishReason::Stop;
            }
            generated += 1;
            history.push(token);
            if output.push(vocabulary.bytes(token)) {
                break FinishReason::Stop;
            }
            if generated >= max_tokens {
                break FinishReason::Length;
            }
            if !output.listening() {
                // The client has gone: nobody reads the rest.
                break FinishReason::Stop;
            }
            logits = sequence.step(&[token])?;
        };
        output.finish();
        Ok(GenerationEnd {
            prompt_tokens: prompt.len() as u32,
            completion_tokens: generated,
            finish_reason: finish,
        })
    }
}

wasmserve_plugin::export_generator!(SmolLm2);
