//! engine: the thread that owns a GGUF model's llama.cpp context and runs its forward
//! passes, each joining the pending steps of every sequence in flight.

use super::super::generation::{Counters, Generator};
use crate::config::Generation;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::token::LlamaToken;
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a pass waits for the sequences of the last pass to bring their next token: a
/// plugin samples in well under this, and a pass that waits for them all is one pass, not
/// several small ones. A sequence later than this joins the pass after.
const GATHER: Duration = Duration::from_millis(3);

/// A generative model loaded: its engine thread's inbox and its free slots.
pub struct Engine {
    name: String,
    inbox: Sender<Message>,
    /// Sequence ids free to open; an id comes back once the engine cleared its cache.
    free: Arc<Mutex<Vec<i32>>>,
    generator: Generator,
    /// The vocabulary's size: the length of each logits vector.
    pub(super) vocabulary: usize,
}

/// What a sequence asks of the engine thread.
pub(super) enum Message {
    /// Feed tokens to a sequence and answer with the logits of the last one.
    Step(Step),
    /// The sequence is done, holding `held` tokens: clear its cache and free its id.
    Release { sequence: i32, held: u32 },
}

/// Tokens for one sequence, from `position` on.
pub(super) struct Step {
    pub(super) sequence: i32,
    pub(super) position: u32,
    pub(super) tokens: Vec<i32>,
    pub(super) reply: Sender<Result<Vec<f32>, String>>,
}

impl Engine {
    /// Load the GGUF file and start the engine thread (named `ggml-NAME`).
    pub fn start(
        name: &str,
        path: &Path,
        settings: &Generation,
        threads: usize,
    ) -> anyhow::Result<Arc<Self>> {
        let backend = super::backend()?;
        let model = LlamaModel::load_from_file(backend, path, &LlamaModelParams::default())?;
        let slots = settings.slots();
        let context = settings.context(model.n_ctx_train());
        let batch_tokens = settings.batch_tokens;
        let vocabulary = usize::try_from(model.n_vocab())?;
        let threads = i32::try_from(threads.max(1))?;
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(context * slots as u32))
            .with_n_batch(batch_tokens)
            .with_n_ubatch(batch_tokens)
            .with_n_seq_max(slots as u32)
            // One cache for every sequence (each held to `context` tokens by its sequence):
            // a pass then joins any mix of sequences in one batch. Split caches made llama.cpp
            // split a pass of sequences out of id order into one pass per sequence.
            .with_kv_unified(true)
            .with_n_threads(threads)
            .with_n_threads_batch(threads);
        // The cache: keys and values (f16) of each layer, for every token of every slot.
        let cache_bytes =
            2 * 2 * u64::from(model.n_layer()) * kv_width(&model) * u64::from(context) * slots as u64;
        let counters = Arc::new(Counters::default());
        let max_tokens = Some(settings.max_tokens).filter(|&n| n > 0);
        let generator = Generator { context, slots, max_tokens, cache_bytes, counters: counters.clone() };
        let (inbox, messages) = crossbeam_channel::unbounded();
        let free = Arc::new(Mutex::new((0..slots as i32).rev().collect::<Vec<_>>()));
        let (started, start) = crossbeam_channel::bounded(1);
        let thread_free = free.clone();
        std::thread::Builder::new().name(format!("ggml-{name}")).spawn(move || {
            let context = match model.new_context(backend, params) {
                Ok(context) => context,
                Err(e) => {
                    let _ = started.send(Err(anyhow::anyhow!("cannot make its context: {e}")));
                    return;
                }
            };
            let _ = started.send(Ok(()));
            let batch = LlamaBatch::new(batch_tokens as usize, 1);
            Passes { context, batch, batch_tokens: batch_tokens as usize, counters, free: thread_free }
                .run(messages);
        })?;
        start.recv()??;
        tracing::info!(model = %name, slots, context, threads, vocabulary,
            cache_mib = cache_bytes >> 20, "ggml engine started");
        Ok(Arc::new(Self { name: name.to_string(), inbox, free, generator, vocabulary }))
    }

    /// What the server shows of the engine.
    pub fn generator(&self) -> Generator {
        self.generator.clone()
    }

    /// Tokens one sequence holds.
    pub(super) fn context(&self) -> u32 {
        self.generator.context
    }

    /// A free sequence id, if one is.
    pub(super) fn open(&self) -> anyhow::Result<i32> {
        let id = self.free.lock().expect("free sequences").pop();
        let id = id.ok_or_else(|| {
            anyhow::anyhow!(
                "model '{}' has no free sequence: all {} are generating ([generation] slots)",
                self.name,
                self.generator.slots
            )
        })?;
        self.generator.counters.sequences.fetch_add(1, Ordering::Relaxed);
        Ok(id)
    }

    /// Hand `message` to the engine thread.
    pub(super) fn send(&self, message: Message) -> anyhow::Result<()> {
        self.inbox.send(message).map_err(|_| anyhow::anyhow!("model '{}' has stopped", self.name))
    }
}

/// The width of one token's key (or value) in one layer: heads × head size of the keys.
fn kv_width(model: &LlamaModel) -> u64 {
    let meta = |key: &str| model.meta_val_str(key).ok().and_then(|v| v.parse::<u64>().ok());
    let architecture = model.meta_val_str("general.architecture").unwrap_or_default();
    let key = |suffix: &str| meta(&format!("{architecture}.{suffix}"));
    let embedding = u64::try_from(model.n_embd()).unwrap_or(0);
    let heads = key("attention.head_count").unwrap_or(1).max(1);
    let kv_heads = key("attention.head_count_kv").unwrap_or(heads);
    let head = key("attention.key_length").unwrap_or(embedding / heads);
    kv_heads * head
}

/// The engine thread's state.
struct Passes<'m> {
    context: llama_cpp_2::context::LlamaContext<'m>,
    batch: LlamaBatch<'static>,
    batch_tokens: usize,
    counters: Arc<Counters>,
    free: Arc<Mutex<Vec<i32>>>,
}

/// A step being fed: how many of its tokens are in the cache already.
struct Feeding {
    step: Step,
    fed: usize,
}

impl Passes<'_> {
    /// Run passes until every sender is gone (the model was unloaded).
    fn run(mut self, inbox: Receiver<Message>) {
        let mut pending: Vec<Feeding> = Vec::new();
        // The sequences the last pass answered: the next pass waits a little for them.
        let mut expected: Vec<i32> = Vec::new();
        loop {
            if pending.is_empty() {
                match inbox.recv() {
                    Ok(message) => self.take(message, &mut pending, &mut expected),
                    Err(_) => return,
                }
            }
            let deadline = Instant::now() + GATHER;
            while expected.iter().any(|s| !pending.iter().any(|p| p.step.sequence == *s)) {
                match inbox.recv_deadline(deadline) {
                    Ok(message) => self.take(message, &mut pending, &mut expected),
                    Err(RecvTimeoutError::Timeout) => break,
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
            while let Ok(message) = inbox.try_recv() {
                self.take(message, &mut pending, &mut expected);
            }
            if pending.is_empty() {
                continue;
            }
            expected = self.pass(&mut pending);
        }
    }

    fn take(&mut self, message: Message, pending: &mut Vec<Feeding>, expected: &mut Vec<i32>) {
        match message {
            Message::Step(step) => pending.push(Feeding { step, fed: 0 }),
            Message::Release { sequence, held } => {
                pending.retain(|p| p.step.sequence != sequence);
                expected.retain(|&s| s != sequence);
                let _ = self.context.clear_kv_cache_seq(Some(sequence as u32), None, None);
                self.counters.cached_tokens.fetch_sub(u64::from(held), Ordering::Relaxed);
                self.counters.sequences.fetch_sub(1, Ordering::Relaxed);
                self.free.lock().expect("free sequences").push(sequence);
            }
        }
    }

    /// One forward pass: each pending step's next tokens (the single tokens of sequences
    /// that generate first, then prompts, as much as the batch takes); answers the steps fed
    /// whole. Returns the sequences answered.
    fn pass(&mut self, pending: &mut Vec<Feeding>) -> Vec<i32> {
        pending.sort_by_key(|p| p.step.tokens.len() - p.fed);
        self.batch.clear();
        let mut room = self.batch_tokens;
        // (index in `pending`, the batch row of its last token if the step is fed whole)
        let mut fed: Vec<(usize, Option<i32>)> = Vec::new();
        let mut tokens = 0;
        for (i, p) in pending.iter_mut().enumerate() {
            let left = p.step.tokens.len() - p.fed;
            let take = left.min(room);
            if take == 0 {
                break;
            }
            let mut last = None;
            for k in 0..take {
                let at = p.fed + k;
                let whole = at + 1 == p.step.tokens.len();
                let position = (p.step.position as usize + at) as i32;
                if whole {
                    last = Some(self.batch.n_tokens());
                }
                let token = LlamaToken(p.step.tokens[at]);
                if self.batch.add(token, position, &[p.step.sequence], whole).is_err() {
                    unreachable!("a pass takes at most batch_tokens tokens");
                }
            }
            p.fed += take;
            room -= take;
            tokens += take;
            fed.push((i, last));
        }
        let started = Instant::now();
        let result = self.context.decode(&mut self.batch);
        self.counters.step(fed.len() as u64, tokens as u64, started.elapsed().as_nanos() as u64);
        self.counters.cached_tokens.fetch_add(tokens as u64, Ordering::Relaxed);
        let mut answered = Vec::new();
        let mut done = Vec::new();
        for (i, last) in fed {
            let p = &pending[i];
            match (&result, last) {
                (Err(e), _) => {
                    let _ = p.step.reply.send(Err(format!("the forward pass failed: {e}")));
                    done.push(i);
                }
                (Ok(()), Some(row)) => {
                    let logits = self.context.get_logits_ith(row).to_vec();
                    let _ = p.step.reply.send(Ok(logits));
                    answered.push(p.step.sequence);
                    done.push(i);
                }
                (Ok(()), None) => {}
            }
        }
        done.sort_unstable();
        for i in done.into_iter().rev() {
            pending.swap_remove(i);
        }
        answered
    }
}
