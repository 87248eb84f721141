//! generation: what a generative model's engine tells the layers above it (its context,
//! its counters), and how a generation that lost its client stops. Independent of the
//! engine, so the server builds without one.

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// A generative model's engine as the server sees it.
#[derive(Debug, Clone)]
pub struct Generator {
    /// Tokens one sequence holds, prompt and answer together.
    pub context: u32,
    /// Sequences that run at once.
    pub slots: usize,
    /// An answer's most tokens when its request sets none (`[generation] max_tokens`; none:
    /// up to the end of the context).
    pub max_tokens: Option<u32>,
    /// The key/value cache's size, in bytes (all slots).
    pub cache_bytes: u64,
    /// What the engine counts.
    pub counters: Arc<Counters>,
}

/// What a generative model's engine counts, read by the metrics at each scrape.
#[derive(Debug, Default)]
pub struct Counters {
    /// Forward passes run.
    pub steps: AtomicU64,
    /// Sequences stepped, summed over the passes (over `steps`: the mean batch).
    pub sequences_stepped: AtomicU64,
    /// Passes by how many sequences they joined: 1, 2, 3-4, 5-8, 9-16, more.
    pub steps_by_sequences: [AtomicU64; 6],
    /// Prompt tokens not fed: a slot held them already (the prefix cache).
    pub reused: AtomicU64,
    /// Sequences open now (holding a slot of the cache).
    pub sequences: AtomicU64,
    /// Tokens held in the key/value cache now, all sequences together.
    pub cached_tokens: AtomicU64,
    /// Nanoseconds spent in forward passes.
    pub step_nanos: AtomicU64,
}

/// The upper bounds of [`Counters::steps_by_sequences`]'s buckets (the last one: more).
pub const STEP_SEQUENCE_BUCKETS: [u64; 5] = [1, 2, 4, 8, 16];

impl Counters {
    /// Count one pass of `sequences` sequences that took `nanos`.
    #[cfg_attr(not(feature = "ggml"), allow(dead_code))]
    pub(crate) fn step(&self, sequences: u64, nanos: u64) {
        self.steps.fetch_add(1, Ordering::Relaxed);
        self.sequences_stepped.fetch_add(sequences, Ordering::Relaxed);
        self.step_nanos.fetch_add(nanos, Ordering::Relaxed);
        let bucket = STEP_SEQUENCE_BUCKETS.iter().position(|&b| sequences <= b).unwrap_or(5);
        self.steps_by_sequences[bucket].fetch_add(1, Ordering::Relaxed);
    }
}

/// How a generation in flight is watched: whether its client has gone, and how many steps
/// its sequences have run (the plugin's deadline is per step: a plugin that steps is alive).
#[derive(Debug, Default)]
pub struct Watch {
    /// Set when the client has gone: the generation's next step fails.
    pub gone: AtomicBool,
    /// Steps run by the generation's sequences.
    pub steps: AtomicU64,
    /// Nanoseconds its sequences waited for their steps (the forward passes, and the wait
    /// for the others in them): the rest of the generation's time is the plugin's own.
    pub waited_nanos: AtomicU64,
}

impl Watch {
    /// Whether the client has gone.
    pub fn is_gone(&self) -> bool {
        self.gone.load(Ordering::Acquire)
    }
}

thread_local! {
    /// Set while a generation's plugin runs on this thread: the sequences it opens report to
    /// it and stop at their next step once its client has gone.
    static WATCH: RefCell<Option<Arc<Watch>>> = const { RefCell::new(None) };
}

/// Run `f` (a generation's plugin call) under `watch`: every sequence opened meanwhile on
/// this thread counts its steps there and fails its next step once `watch.gone` is set.
pub fn watching<T>(watch: Arc<Watch>, f: impl FnOnce() -> T) -> T {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            WATCH.with(|w| w.borrow_mut().take());
        }
    }
    WATCH.with(|w| *w.borrow_mut() = Some(watch));
    let _reset = Reset;
    f()
}

/// The watch of the generation running on this thread, if one is.
#[cfg_attr(not(feature = "ggml"), allow(dead_code))]
pub(crate) fn watched() -> Option<Arc<Watch>> {
    WATCH.with(|w| w.borrow().clone())
}
