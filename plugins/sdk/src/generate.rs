//! Generation (Cargo feature `generate`): what a plugin of the `generator-plugin` world
//! needs to run a generative model's decoding loop itself.
//!
//! - [`Vocabulary`]: the model's tokenizer built from its GGUF metadata (byte-level BPE,
//!   Hugging Face's `tokenizers`), its special tokens, the tokens that end a turn, and its
//!   chat template ([`Vocabulary::apply_chat_template`], a Jinja template run by `minijinja`);
//! - [`Sequence`]: one sequence of the model, stepped through `wasi:nn` (`tokens` in,
//!   `logits` out), its key/value cache kept by the host, which joins the steps of every
//!   generation in flight into one forward pass;
//! - [`Sampler`]: greedy at temperature 0, else temperature, top-k, top-p and a repetition
//!   penalty, from a seed;
//! - [`Output`]: bytes of tokens in, text out through `emit` as soon as it is valid UTF-8 and
//!   cannot be the start of a stop string.
//!
//! ```ignore
//! struct MyGenerator;
//! impl wasmserve_plugin::generate::Guest for MyGenerator {
//!     fn generate(request: GenerationRequest) -> Result<GenerationEnd, PluginError> { todo!() }
//! }
//! wasmserve_plugin::export_generator!(MyGenerator);
//! ```

#[allow(missing_docs)]
#[doc(hidden)]
pub mod generated {
    wit_bindgen::generate!({
        world: "generator-plugin",
        path: "wit",
        pub_export_macro: true,
        export_macro_name: "export_generator",
        default_bindings_module: "wasmserve_plugin::generate::generated",
        with: {
            "wasmserve:plugin/types@0.1.0": crate::bindings::wasmserve::plugin::types,
            "wasi:nn/graph@0.2.0-rc-2024-10-28": crate::bindings::wasi::nn::graph,
            "wasi:nn/inference@0.2.0-rc-2024-10-28": crate::bindings::wasi::nn::inference,
            "wasi:nn/tensor@0.2.0-rc-2024-10-28": crate::bindings::wasi::nn::tensor,
            "wasi:nn/errors@0.2.0-rc-2024-10-28": crate::bindings::wasi::nn::errors,
        },
    });
}

use crate::bindings::wasi::nn::{graph, inference, tensor as nn};
use crate::gguf::Metadata;
use crate::{OrError, PluginError, internal, invalid};
pub use generated::Guest;
pub use generated::wasmserve::plugin::generation::{
    FinishReason, GenerationEnd, GenerationRequest, Message, Prompt, emit,
};
use std::collections::{HashMap, HashSet};
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::{AddedToken, Tokenizer};

/// A model's tokenizer and template, from its GGUF metadata.
pub struct Vocabulary {
    tokenizer: Tokenizer,
    /// Each token's bytes (byte-level pieces decoded; control tokens empty).
    bytes: Vec<Vec<u8>>,
    /// Tokens that end a turn or the text (end of sequence, end of turn).
    ends: HashSet<u32>,
    bos: Option<u32>,
    add_bos: bool,
    template: Option<String>,
    /// The texts of the beginning and end tokens, for the template.
    bos_text: String,
    eos_text: String,
}

/// Token types in `tokenizer.ggml.token_type`: control tokens (`<|im_start|>`) and those a
/// user defined are matched whole in text, never split.
const CONTROL: i64 = 3;
const USER_DEFINED: i64 = 4;

/// Texts that end a turn in the chat templates of common models, as llama.cpp reads them.
const END_OF_TURN: [&str; 6] =
    ["<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "</s>"];

impl Vocabulary {
    /// The vocabulary of the GGUF file at `path` (for a plugin: under `/data`). Byte-level
    /// BPE models (`tokenizer.ggml.model = "gpt2"`) are supported, with the pre-tokenizers of
    /// GPT-2 and of SmolLM and StarCoder (digits split one by one).
    pub fn from_gguf(path: &str) -> Result<Self, PluginError> {
        let mut meta = Metadata::read(path)?;
        let model = meta.string("tokenizer.ggml.model").unwrap_or_default().to_string();
        if model != "gpt2" {
            return Err(internal(format!(
                "tokenizer.ggml.model is '{model}': only byte-level BPE ('gpt2') is supported here"
            )));
        }
        let pre = meta.string("tokenizer.ggml.pre").unwrap_or("default").to_string();
        let digits = match pre.as_str() {
            "default" | "gpt-2" | "gpt2" => false,
            "smollm" | "starcoder" | "refact" | "codeshell" => true,
            other => return Err(internal(format!("tokenizer.ggml.pre '{other}' is not supported yet"))),
        };
        let tokens = meta.take_strings("tokenizer.ggml.tokens").or_internal("tokenizer.ggml.tokens")?;
        let merges = meta.take_strings("tokenizer.ggml.merges").or_internal("tokenizer.ggml.merges")?;
        let types = meta.ints("tokenizer.ggml.token_type").unwrap_or_default();
        let id = |key: &str| meta.int(key).and_then(|i| u32::try_from(i).ok());
        let bos = id("tokenizer.ggml.bos_token_id");
        let eos = id("tokenizer.ggml.eos_token_id");
        let eot = id("tokenizer.ggml.eot_token_id");
        let add_bos = meta.bool("tokenizer.ggml.add_bos_token").unwrap_or(false);
        let template = meta.string("tokenizer.chat_template").map(str::to_string);

        let special: Vec<usize> = (0..tokens.len())
            .filter(|&i| matches!(types.get(i), Some(&CONTROL) | Some(&USER_DEFINED)))
            .collect();
        let vocab: tokenizers::models::bpe::Vocab =
            tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
        let merges: Vec<(String, String)> = merges
            .iter()
            .map(|m| m.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())))
            .collect::<Option<_>>()
            .or_internal("tokenizer.ggml.merges: a merge is two pieces")?;
        let bpe =
            BPE::builder().vocab_and_merges(vocab, merges).build().or_internal("building the BPE model")?;
        let mut tokenizer = Tokenizer::new(bpe);
        let byte_level = ByteLevel::new(false, true, true);
        if digits {
            tokenizer.with_pre_tokenizer(Some(PreSequence::new(vec![
                Digits::new(true).into(),
                byte_level.into(),
            ])));
        } else {
            tokenizer.with_pre_tokenizer(Some(byte_level));
        }
        let added: Vec<AddedToken> =
            special.iter().map(|&i| AddedToken::from(tokens[i].clone(), true).normalized(false)).collect();
        tokenizer.add_special_tokens(&added);

        let unicode_bytes = unicode_to_byte();
        let bytes = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| match types.get(i) {
                Some(&CONTROL) => Vec::new(),
                _ => t.chars().map(|c| unicode_bytes.get(&c).copied().unwrap_or(b'?')).collect(),
            })
            .collect();
        let mut ends: HashSet<u32> = [eos, eot].into_iter().flatten().collect();
        for &i in &special {
            if END_OF_TURN.contains(&tokens[i].as_str()) {
                ends.insert(i as u32);
            }
        }
        let text = |id: Option<u32>| id.and_then(|i| tokens.get(i as usize)).cloned().unwrap_or_default();
        Ok(Self { tokenizer, bytes, ends, bos, add_bos, template, bos_text: text(bos), eos_text: text(eos) })
    }

    /// The tokens of `text`; special tokens written in it (`<|im_start|>`) are matched as
    /// such. With `bos`, the beginning-of-sequence token first when the model wants one.
    pub fn encode(&self, text: &str, bos: bool) -> Result<Vec<u32>, PluginError> {
        let encoding = self.tokenizer.encode_fast(text, false).or_internal("tokenizing")?;
        let mut ids = Vec::with_capacity(encoding.len() + 1);
        if bos && self.add_bos {
            ids.extend(self.bos);
        }
        ids.extend_from_slice(encoding.get_ids());
        Ok(ids)
    }

    /// The bytes a token stands for (none for control tokens).
    pub fn bytes(&self, token: u32) -> &[u8] {
        self.bytes.get(token as usize).map_or(&[], Vec::as_slice)
    }

    /// Whether `token` ends the text or the turn.
    pub fn ends(&self, token: u32) -> bool {
        self.ends.contains(&token)
    }

    /// `messages` through the model's chat template (from `tokenizer.chat_template`), with
    /// the assistant's turn opened: the prompt's text.
    pub fn apply_chat_template(&self, messages: &[Message]) -> Result<String, PluginError> {
        let template = self.template.as_deref().or_internal("the model has no chat template")?;
        let mut env = minijinja::Environment::new();
        env.add_function("raise_exception", |message: String| -> Result<String, minijinja::Error> {
            Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, message))
        });
        env.add_template("chat", template).or_internal("the chat template")?;
        let messages: Vec<_> = messages
            .iter()
            .map(|m| minijinja::context! { role => m.role.clone(), content => m.content.clone() })
            .collect();
        let context = minijinja::context! {
            messages => messages,
            add_generation_prompt => true,
            bos_token => self.bos_text.clone(),
            eos_token => self.eos_text.clone(),
        };
        let chat = env.get_template("chat").or_internal("the chat template")?;
        chat.render(context).map_err(|e| invalid(format!("the chat template refused the messages: {e}")))
    }
}

/// GPT-2's byte-level alphabet: the character each byte is written as in the vocabulary.
fn unicode_to_byte() -> HashMap<char, u8> {
    let printable =
        |b: u8| (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
    let mut next = 256u32;
    (0..=255u8)
        .map(|b| {
            let c = if printable(b) {
                char::from(b)
            } else {
                let c = char::from_u32(next).expect("a code point below 512");
                next += 1;
                c
            };
            (c, b)
        })
        .collect()
}

/// One sequence of the model the request names: its key/value cache is the host's.
pub struct Sequence {
    context: inference::GraphExecutionContext,
    /// Tokens fed so far.
    pub position: u32,
}

impl Sequence {
    /// A new sequence of model `model` (the request's `model`).
    pub fn open(model: &str) -> Result<Self, PluginError> {
        let graph = graph::load_by_name(model).map_err(|e| nn_failed("load-by-name", e))?;
        let context = graph.init_execution_context().map_err(|e| nn_failed("opening a sequence", e))?;
        Ok(Self { context, position: 0 })
    }

    /// Feed `tokens` (the prompt, or the token just chosen); the logits of the last one.
    /// Fails once the client has gone.
    pub fn step(&mut self, tokens: &[u32]) -> Result<Vec<f32>, PluginError> {
        let data: Vec<u8> = tokens.iter().flat_map(|t| (*t as i32).to_le_bytes()).collect();
        let input = nn::Tensor::new(&[tokens.len() as u32], nn::TensorType::I32, &data);
        let outputs =
            self.context.compute(vec![("tokens".to_string(), input)]).map_err(|e| nn_failed("a step", e))?;
        let (_, logits) = outputs.into_iter().next().or_internal("a step returned no logits")?;
        self.position += tokens.len() as u32;
        Ok(logits.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
    }
}

fn nn_failed(what: &str, e: crate::bindings::wasi::nn::errors::Error) -> PluginError {
    internal(format!("{what}: {}", e.data()))
}

/// Chooses the next token from the logits.
pub struct Sampler {
    temperature: f32,
    top_k: usize,
    top_p: f32,
    repetition_penalty: f32,
    /// How many recent tokens the repetition penalty looks at (llama.cpp's default).
    window: usize,
    state: u64,
}

impl Sampler {
    /// A sampler for `request`: greedy at temperature 0; otherwise temperature (default 1,
    /// as OpenAI's), top-k (0: all), top-p (default 1), the repetition penalty (default 1:
    /// none), from `seed` (default: a random one).
    pub fn new(request: &GenerationRequest) -> Self {
        let seed = request.seed.unwrap_or_else(|| {
            use std::hash::BuildHasher;
            std::collections::hash_map::RandomState::new().hash_one(0u64)
        });
        Self {
            temperature: request.temperature.unwrap_or(1.0),
            top_k: request.top_k.unwrap_or(0) as usize,
            top_p: request.top_p.unwrap_or(1.0),
            repetition_penalty: request.repetition_penalty.unwrap_or(1.0),
            window: 64,
            // splitmix64's start: a seed of 0 works too.
            state: seed ^ 0x9E37_79B9_7F4A_7C15,
        }
    }

    /// The next token after `history` (the tokens so far), from `logits`.
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        if self.repetition_penalty != 1.0 {
            let seen: HashSet<u32> = history.iter().rev().take(self.window).copied().collect();
            for t in seen {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l = if *l > 0.0 { *l / self.repetition_penalty } else { *l * self.repetition_penalty };
                }
            }
        }
        if self.temperature <= 0.0 {
            return argmax(logits);
        }
        let mut candidates: Vec<(u32, f32)> =
            logits.iter().enumerate().map(|(i, &l)| (i as u32, l)).collect();
        candidates.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if self.top_k > 0 {
            candidates.truncate(self.top_k);
        }
        let max = candidates[0].1;
        let mut probabilities: Vec<f32> =
            candidates.iter().map(|&(_, l)| ((l - max) / self.temperature).exp()).collect();
        let sum: f32 = probabilities.iter().sum();
        probabilities.iter_mut().for_each(|p| *p /= sum);
        if self.top_p < 1.0 {
            let mut kept = 0.0;
            let cut = probabilities
                .iter()
                .position(|&p| {
                    kept += p;
                    kept >= self.top_p
                })
                .map_or(probabilities.len(), |i| i + 1);
            probabilities.truncate(cut);
            let sum: f32 = probabilities.iter().sum();
            probabilities.iter_mut().for_each(|p| *p /= sum);
        }
        let mut r = self.uniform();
        for (i, p) in probabilities.iter().enumerate() {
            if r < *p {
                return candidates[i].0;
            }
            r -= p;
        }
        candidates[probabilities.len() - 1].0
    }

    /// A uniform number in [0, 1) (splitmix64).
    fn uniform(&mut self) -> f32 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// The index of the largest logit (the first, on a tie).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// The answer's text on its way out: token bytes in; text handed to `emit` once it is
/// valid UTF-8 and cannot be the start of a stop string; a stop string ends it (and is not
/// part of it).
pub struct Output {
    stops: Vec<String>,
    /// Where text goes: `emit`, unless made [`Output::with_sink`].
    sink: Box<dyn FnMut(&str) -> bool>,
    /// Bytes of a character not complete yet.
    partial: Vec<u8>,
    /// Text held back: it may be the start of a stop string.
    held: String,
    stopped: bool,
    /// False once `emit` said the client has gone.
    listening: bool,
}

impl Output {
    /// An output to the client (through `emit`) that ends at any of `stops`.
    pub fn new(stops: Vec<String>) -> Self {
        Self::with_sink(stops, emit)
    }

    /// An output to `sink` (false back: nobody listens any more) that ends at any of `stops`.
    pub fn with_sink(stops: Vec<String>, sink: impl FnMut(&str) -> bool + 'static) -> Self {
        let sink = Box::new(sink);
        Self { stops, sink, partial: Vec::new(), held: String::new(), stopped: false, listening: true }
    }

    /// Add a token's bytes; true when a stop string was reached (the text ends before it).
    pub fn push(&mut self, bytes: &[u8]) -> bool {
        if self.stopped {
            return true;
        }
        self.partial.extend_from_slice(bytes);
        let complete = match std::str::from_utf8(&self.partial) {
            Ok(_) => self.partial.len(),
            Err(e) if e.error_len().is_some() => self.partial.len(),
            Err(e) => e.valid_up_to(),
        };
        let text = String::from_utf8_lossy(&self.partial[..complete]).into_owned();
        self.partial.drain(..complete);
        self.held.push_str(&text);
        if let Some(at) = self.stops.iter().filter_map(|s| self.held.find(s.as_str())).min() {
            self.held.truncate(at);
            self.stopped = true;
            self.send_all();
            return true;
        }
        // Hold back the longest tail that a stop string starts with.
        let keep = self
            .stops
            .iter()
            .flat_map(|s| (1..s.len()).filter(|&n| s.is_char_boundary(n)).map(move |n| &s[..n]))
            .filter(|prefix| self.held.ends_with(prefix))
            .map(str::len)
            .max()
            .unwrap_or(0);
        let ready = self.held.len() - keep;
        if ready > 0 {
            let rest = self.held.split_off(ready);
            let text = std::mem::replace(&mut self.held, rest);
            self.send(text);
        }
        false
    }

    /// The generation ended: what is held goes out.
    pub fn finish(&mut self) {
        if !self.partial.is_empty() {
            let rest = String::from_utf8_lossy(&std::mem::take(&mut self.partial)).into_owned();
            self.held.push_str(&rest);
        }
        self.send_all();
    }

    /// Whether the client is still there (`emit` said so last time).
    pub fn listening(&self) -> bool {
        self.listening
    }

    fn send_all(&mut self) {
        let text = std::mem::take(&mut self.held);
        self.send(text);
    }

    fn send(&mut self, text: String) {
        if !text.is_empty() && self.listening {
            self.listening = (self.sink)(&text);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::rc::Rc;

    fn output(stops: &[&str]) -> (Output, Rc<RefCell<Vec<String>>>) {
        let sent = Rc::new(RefCell::new(Vec::new()));
        let into = sent.clone();
        let stops = stops.iter().map(|s| s.to_string()).collect();
        let sink = move |t: &str| {
            into.borrow_mut().push(t.to_string());
            true
        };
        (Output::with_sink(stops, sink), sent)
    }

    #[test]
    fn text_goes_out_whole_characters_only_and_stops_before_a_stop_string() {
        let (mut out, sent) = output(&["\nUser:"]);
        // "é" split over two tokens comes out once whole.
        assert!(!out.push(b"caf\xc3"));
        assert_eq!(sent.borrow().concat(), "caf");
        assert!(!out.push(b"\xa9 ok"));
        assert_eq!(sent.borrow().concat(), "café ok");
        // The start of a stop string is held back, then let go when it is not one.
        assert!(!out.push(b"\nUs"));
        assert_eq!(sent.borrow().concat(), "café ok");
        assert!(!out.push(b"ually"));
        assert_eq!(sent.borrow().concat(), "café ok\nUsually");
        // A stop string ends it, and is not part of it.
        assert!(out.push(b" yes\nUser: more"));
        assert_eq!(sent.borrow().concat(), "café ok\nUsually yes");
        out.finish();
        assert_eq!(sent.borrow().concat(), "café ok\nUsually yes");
    }

    #[test]
    fn finish_lets_out_what_was_held() {
        let (mut out, sent) = output(&["STOP"]);
        assert!(!out.push(b"the end ST"));
        assert_eq!(sent.borrow().concat(), "the end ");
        out.finish();
        assert_eq!(sent.borrow().concat(), "the end ST");
    }

    fn request(temperature: Option<f32>, seed: u64) -> GenerationRequest {
        GenerationRequest {
            model: String::new(),
            prompt: Prompt::Text(String::new()),
            context_length: 64,
            max_tokens: None,
            temperature,
            top_p: Some(0.9),
            top_k: Some(3),
            seed: Some(seed),
            repetition_penalty: None,
            stop: Vec::new(),
            params: Vec::new(),
        }
    }

    #[test]
    fn greedy_takes_the_largest_and_sampling_follows_its_seed_and_top_k() {
        let logits = [0.1, 2.0, 1.9, -1.0, 1.8, 0.0];
        assert_eq!(Sampler::new(&request(Some(0.0), 1)).sample(&mut logits.clone(), &[]), 1);
        let draw = |seed| {
            let mut sampler = Sampler::new(&request(Some(1.0), seed));
            (0..50).map(|_| sampler.sample(&mut logits.clone(), &[])).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
        // top_k 3: only the three largest are ever drawn.
        assert!(draw(7).iter().all(|t| [1, 2, 4].contains(t)));
        // A repetition penalty pushes a token seen down.
        let mut penalised =
            Sampler::new(&GenerationRequest { repetition_penalty: Some(2.0), ..request(Some(0.0), 1) });
        assert_eq!(penalised.sample(&mut logits.clone(), &[1]), 2);
    }
}
