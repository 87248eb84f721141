//! A generator that misbehaves on request, for the tests: the prompt (a completion's, or
//! a chat's last message) says what to do.
//!
//! - `trap after N`: emit N tokens, then trap (a Rust panic aborts the instance);
//! - `loop after N`: emit N tokens, then spin without stepping (past its per-step deadline);
//! - anything else: greedy tokens, each emitted as its id and a space, up to `max_tokens`.
//!
//! It feeds the model a fixed prompt (tokens 1, 2, 3) and needs no tokenizer.

use wasmserve_plugin::PluginError;
use wasmserve_plugin::generate::{
    FinishReason, GenerationEnd, GenerationRequest, Guest, Prompt, Sequence, argmax, emit,
};

struct Faulty;

/// What the prompt asks for.
enum Mode {
    Trap(u32),
    Loop(u32),
    Generate,
}

fn mode(request: &GenerationRequest) -> Mode {
    let text = match &request.prompt {
        Prompt::Text(text) => text.clone(),
        Prompt::Chat(messages) => messages.last().map(|m| m.content.clone()).unwrap_or_default(),
    };
    let after = |prefix: &str| text.strip_prefix(prefix).and_then(|n| n.trim().parse().ok());
    match (after("trap after "), after("loop after ")) {
        (Some(n), _) => Mode::Trap(n),
        (_, Some(n)) => Mode::Loop(n),
        _ => Mode::Generate,
    }
}

impl Guest for Faulty {
    fn generate(request: GenerationRequest) -> Result<GenerationEnd, PluginError> {
        let mode = mode(&request);
        let prompt = [1u32, 2, 3];
        let max_tokens = request.max_tokens.unwrap_or(16);
        let mut sequence = Sequence::open(&request.model)?;
        let mut logits = sequence.step(&prompt)?;
        let mut generated = 0;
        while generated < max_tokens {
            match mode {
                Mode::Trap(n) if generated == n => panic!("asked to trap after {n} tokens"),
                Mode::Loop(n) if generated == n => spin(),
                _ => {}
            }
            let token = argmax(&logits);
            generated += 1;
            if !emit(&format!("{token} ")) {
                break;
            }
            if generated < max_tokens {
                logits = sequence.step(&[token])?;
            }
        }
        Ok(GenerationEnd {
            prompt_tokens: prompt.len() as u32,
            completion_tokens: generated,
            finish_reason: FinishReason::Length,
        })
    }
}

/// Run forever without calling the host.
#[allow(clippy::empty_loop)]
fn spin() -> ! {
    loop {}
}

wasmserve_plugin::export_generator!(Faulty);
