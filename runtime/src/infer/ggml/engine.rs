//! engine: the thread that owns a GGUF model's llama.cpp context and runs its forward
//! passes, each joining the pending steps of every sequence in flight.
//!
//! Each slot of the cache keeps the tokens it holds after its sequence ends. A new
//! sequence takes the free slot whose tokens share the longest start with its prompt, and
//! only the rest of its prompt is fed: a system prompt, a chat's earlier turns, a document
//! asked about again are computed once. (The sequence's logits are the same: the cache
//! holds what feeding those tokens again would compute.)

use super::super::generation::{Counters, Generator};
use crate::config::Generation;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::token::LlamaToken;
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How long a pass waits for the sequences of the last pass to bring their next token: a
/// plugin samples in well under this, and a pass that waits for them all is one pass, not
/// several small ones. A sequence later than this joins the pass after.
const GATHER: Duration = Duration::from_millis(3);

/// A generative model loaded: its engine thread's inbox and its free slots.
pub struct Engine {
    name: String,
    inbox: Sender<Message>,
    /// Sequences open now (at most the slots).
    open: AtomicUsize,
    /// The next sequence's handle.
    next: AtomicU64,
    generator: Generator,
    /// The vocabulary's size: the length of each logits vector.
    pub(super) vocabulary: usize,
}

/// What a sequence asks of the engine thread.
pub(super) enum Message {
    /// Feed tokens to a sequence and answer with the logits of the last one.
    Step(Step),
    /// The sequence is done: its slot is free (its tokens stay, for a later prompt).
    Release(u64),
}

/// Tokens for one sequence, from `position` on.
pub(super) struct Step {
    /// The sequence's handle ([`Engine::open`]).
    pub(super) sequence: u64,
    pub(super) position: u32,
    pub(super) tokens: Vec<i32>,
    /// The last token's logits, as wasi-nn's FP32 tensor data (little-endian bytes).
    pub(super) reply: Sender<Result<Vec<u8>, String>>,
}

impl Engine {
    /// Load the GGUF file and start the engine thread (named `ggml-NAME`).
    pub fn start(
        name: &str,
        path: &Path,
        settings: &Generation,
        threads: usize,
        gpu: bool,
    ) -> anyhow::Result<Arc<Self>> {
        let backend = super::backend()?;
        // On a GPU every layer (and the cache) goes there; else none, whatever the build.
        let layers = if gpu { u32::MAX } else { 0 };
        let model = LlamaModel::load_from_file(
            backend,
            path,
            &LlamaModelParams::default().with_n_gpu_layers(layers),
        )?;
        let context = settings.context(model.n_ctx_train());
        // The cache: keys and values (f16) of each layer, per token.
        let token_bytes = 2 * 2 * u64::from(model.n_layer()) * kv_width(&model);
        let slots = match settings.slots {
            0 => super::sizing::default_slots(threads, token_bytes, context, super::sizing::memory()),
            n => n,
        };
        let batch_tokens = settings.batch_tokens;
        let prefix_cache = settings.prefix_cache;
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
        let cache_bytes = token_bytes * u64::from(context) * slots as u64;
        let counters = Arc::new(Counters::default());
        let max_tokens = Some(settings.max_tokens).filter(|&n| n > 0);
        let generator = Generator { context, slots, max_tokens, cache_bytes, counters: counters.clone() };
        let (inbox, messages) = crossbeam_channel::unbounded();
        let (started, start) = crossbeam_channel::bounded(1);
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
            let slots = vec![Slot::default(); slots];
            let batch_tokens = batch_tokens as usize;
            Passes { context, batch, batch_tokens, counters, slots, of: HashMap::new(), reuse: prefix_cache }
                .run(messages);
        })?;
        start.recv()??;
        tracing::info!(model = %name, slots, context, threads, vocabulary,
            cache_mib = cache_bytes >> 20, "ggml engine started");
        let (open, next) = (AtomicUsize::new(0), AtomicU64::new(0));
        Ok(Arc::new(Self { name: name.to_string(), inbox, open, next, generator, vocabulary }))
    }

    /// What the server shows of the engine.
    pub fn generator(&self) -> Generator {
        self.generator.clone()
    }

    /// Tokens one sequence holds.
    pub(super) fn context(&self) -> u32 {
        self.generator.context
    }

    /// A new sequence's handle, if a slot is free (its slot is chosen at its first step).
    pub(super) fn open(&self) -> anyhow::Result<u64> {
        let slots = self.generator.slots;
        if self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < slots).then_some(n + 1))
            .is_err()
        {
            anyhow::bail!(
                "model '{}' has no free sequence: all {slots} are generating ([generation] slots)",
                self.name
            );
        }
        self.generator.counters.sequences.fetch_add(1, Ordering::Relaxed);
        Ok(self.next.fetch_add(1, Ordering::Relaxed))
    }

    /// The sequence `handle` is done: its slot is free once the engine has read this.
    pub(super) fn close(&self, handle: u64) {
        // Sent before the count goes down: a sequence opened after finds its slot free.
        let _ = self.send(Message::Release(handle));
        self.generator.counters.sequences.fetch_sub(1, Ordering::Relaxed);
        self.open.fetch_sub(1, Ordering::AcqRel);
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
    /// The cache's slots, by llama.cpp's sequence id.
    slots: Vec<Slot>,
    /// The slot of each open sequence, by its handle.
    of: HashMap<u64, usize>,
    /// Whether a new prompt reuses what a slot holds (`[generation] prefix_cache`).
    reuse: bool,
}

/// One slot of the cache: the tokens it holds, and whether a sequence uses it.
#[derive(Clone, Default)]
struct Slot {
    tokens: Vec<i32>,
    busy: bool,
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
        let mut expected: Vec<u64> = Vec::new();
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

    fn take(&mut self, message: Message, pending: &mut Vec<Feeding>, expected: &mut Vec<u64>) {
        match message {
            Message::Step(step) => {
                let fed = match self.of.contains_key(&step.sequence) {
                    true => 0,
                    false => self.place(&step),
                };
                pending.push(Feeding { step, fed });
            }
            Message::Release(sequence) => {
                pending.retain(|p| p.step.sequence != sequence);
                expected.retain(|&s| s != sequence);
                if let Some(slot) = self.of.remove(&sequence) {
                    self.slots[slot].busy = false;
                    // Without the prefix cache nothing stays: the next sequence meets the
                    // cache as a fresh context has it (where a sequence's keys sit in the
                    // one cache changes the order of the attention's sums).
                    if !self.reuse {
                        let _ = self.context.clear_kv_cache_seq(Some(slot as u32), None, None);
                        self.slots[slot].tokens.clear();
                        self.count_cached();
                    }
                }
            }
        }
    }

    /// A new sequence's first step: the free slot whose tokens share the longest start
    /// with its prompt; the cache past that start is cleared. When another slot (in use or
    /// not) holds a longer start of the prompt, its keys and values for it are shared into
    /// the slot instead (one cache: the cells are shared, not copied). Returns how many of
    /// the prompt's tokens the slot holds already (all but the last, at most: its logits
    /// are the step's answer).
    fn place(&mut self, step: &Step) -> usize {
        let reuse = self.reuse && step.position == 0;
        let shared = |slot: &Slot| match reuse {
            true => slot
                .tokens
                .iter()
                .zip(&step.tokens)
                .take_while(|(a, b)| a == b)
                .count()
                .min(step.tokens.len() - 1),
            false => 0,
        };
        let by_most = |&(i, kept): &(usize, usize)| (kept, std::cmp::Reverse(i));
        let slots = self.slots.iter().enumerate();
        let (slot, mut kept) = slots
            .clone()
            .filter(|(_, s)| !s.busy)
            .map(|(i, s)| (i, shared(s)))
            .max_by_key(by_most)
            .expect("a sequence opens only when a slot is free");
        let (source, most) = slots.map(|(i, s)| (i, shared(s))).max_by_key(by_most).unwrap_or((slot, 0));
        if most > kept {
            let _ = self.context.clear_kv_cache_seq(Some(slot as u32), None, None);
            let _ = self.context.copy_kv_cache_seq(source as i32, slot as i32, Some(0), Some(most as u32));
            self.slots[slot].tokens = self.slots[source].tokens[..most].to_vec();
            kept = most;
        } else {
            let _ = self.context.clear_kv_cache_seq(Some(slot as u32), Some(kept as u32), None);
            self.slots[slot].tokens.truncate(kept);
        }
        self.slots[slot].busy = true;
        if reuse {
            // In the one cache every pass's attention runs over every cell in use, idle
            // slots' too: they keep only the start they share with this prompt (a later
            // prompt like it takes it again), the rest is freed.
            for (i, idle) in self.slots.iter_mut().enumerate().filter(|(_, s)| !s.busy) {
                let keep = shared(idle);
                if keep < idle.tokens.len() {
                    let _ = self.context.clear_kv_cache_seq(Some(i as u32), Some(keep as u32), None);
                    idle.tokens.truncate(keep);
                }
            }
        }
        self.of.insert(step.sequence, slot);
        self.count_cached();
        self.counters.reused.fetch_add(kept as u64, Ordering::Relaxed);
        kept
    }

    /// The tokens the cache holds, all slots.
    fn count_cached(&self) {
        let held: usize = self.slots.iter().map(|s| s.tokens.len()).sum();
        self.counters.cached_tokens.store(held as u64, Ordering::Relaxed);
    }

    /// One forward pass: each pending step's next tokens (the single tokens of sequences
    /// that generate first, then prompts, as much as the batch takes); answers the steps fed
    /// whole. Returns the sequences answered.
    fn pass(&mut self, pending: &mut Vec<Feeding>) -> Vec<u64> {
        pending.sort_by_key(|p| p.step.tokens.len() - p.fed);
        self.batch.clear();
        let mut room = self.batch_tokens;
        // (index in `pending`, the batch row of its last token if the step is fed whole)
        let mut fed: Vec<(usize, Option<i32>)> = Vec::new();
        for (i, p) in pending.iter_mut().enumerate() {
            let left = p.step.tokens.len() - p.fed;
            let take = left.min(room);
            if take == 0 {
                break;
            }
            let mut last = None;
            let slot = self.of[&p.step.sequence];
            for k in 0..take {
                let at = p.fed + k;
                let whole = at + 1 == p.step.tokens.len();
                let position = (p.step.position as usize + at) as i32;
                if whole {
                    last = Some(self.batch.n_tokens());
                }
                let token = LlamaToken(p.step.tokens[at]);
                if self.batch.add(token, position, &[slot as i32], whole).is_err() {
                    unreachable!("a pass takes at most batch_tokens tokens");
                }
                self.slots[slot].tokens.push(p.step.tokens[at]);
            }
            p.fed += take;
            room -= take;
            fed.push((i, last));
        }
        let started = Instant::now();
        let result = self.context.decode(&mut self.batch);
        self.counters.step(fed.len() as u64, started.elapsed().as_nanos() as u64);
        let mut answered = Vec::new();
        let mut done = Vec::new();
        for (i, last) in fed {
            let p = &pending[i];
            match (&result, last) {
                (Err(e), _) => {
                    let _ = p.step.reply.send(Err(format!("the forward pass failed: {e}")));
                    // What the slot holds is no longer known: none of it is reused.
                    let slot = self.of[&p.step.sequence];
                    let _ = self.context.clear_kv_cache_seq(Some(slot as u32), None, None);
                    self.slots[slot].tokens.clear();
                    done.push(i);
                }
                (Ok(()), Some(row)) => {
                    // Copied once, straight into the bytes the plugin's tensor carries.
                    let logits = bytemuck::cast_slice(self.context.get_logits_ith(row)).to_vec();
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
        self.count_cached();
        answered
    }
}
