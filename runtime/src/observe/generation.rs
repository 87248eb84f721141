//! generation: what `/metrics` counts of generative models: per generation (time to first
//! token, time per output token, tokens, the plugin's own cost per token) and, read from the
//! engine at each scrape, its forward passes, sequences and key/value cache.
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | `wasmserve_generation_time_to_first_token_seconds` | histogram: request to the first text | model, version |
//! | `wasmserve_generation_time_per_output_token_seconds` | histogram: after the first token, per token | model, version |
//! | `wasmserve_generation_prompt_tokens_total` | counter | model, version |
//! | `wasmserve_generation_cached_prompt_tokens_total` | counter: prompt tokens a slot held already (`prefix_cache`), not computed again | model, version |
//! | `wasmserve_generation_tokens_total` | counter: tokens generated | model, version |
//! | `wasmserve_generation_plugin_seconds_per_token` | histogram: the plugin's own time (template, tokeniser, sampling, stops) per generated token | model, version |
//! | `wasmserve_generation_steps_total` | counter: forward passes | model, version |
//! | `wasmserve_generation_step_seconds_total` | counter: time in forward passes (over the wall time: how busy the engine is) | model, version |
//! | `wasmserve_generation_step_sequences_total` | counter: sequences in those passes (over steps: the mean batch) | model, version |
//! | `wasmserve_generation_steps_by_sequences_total` | counter: passes by how many sequences joined them | model, version, sequences (`1`, `2`, `4`, `8`, `16`, `more`: at most) |
//! | `wasmserve_generation_sequences` | gauge: sequences generating now | model, version |
//! | `wasmserve_generation_queued` | gauge: generations waiting for a slot | model, version |
//! | `wasmserve_generation_cache_tokens` | gauge: tokens held in the key/value cache | model, version |
//! | `wasmserve_generation_cache_capacity_tokens` | gauge: slots × context | model, version |

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Labels {
    model: String,
    version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepLabels {
    model: String,
    version: String,
    sequences: &'static str,
}

/// The bucket labels of `steps_by_sequences`, in [`EngineGauges::steps_by_sequences`]'s order.
const SEQUENCE_BUCKETS: [&str; 6] = ["1", "2", "4", "8", "16", "more"];

type Histograms = Family<Labels, Histogram, fn() -> Histogram>;

fn seconds() -> Histogram {
    // 100 µs to about 13 s.
    Histogram::new(exponential_buckets(1e-4, 2.0, 18))
}

fn per_token() -> Histogram {
    // 1 µs to about 0.5 s.
    Histogram::new(exponential_buckets(1e-6, 2.0, 20))
}

/// The generation metrics (registered in the server's registry).
pub struct GenerationMetrics {
    first_token: Histograms,
    per_token: Histograms,
    plugin_per_token: Histograms,
    prompt_tokens: Family<Labels, Counter>,
    tokens: Family<Labels, Counter>,
    steps: Family<Labels, Counter>,
    reused: Family<Labels, Counter>,
    step_seconds: Family<Labels, Counter<f64, std::sync::atomic::AtomicU64>>,
    step_sequences: Family<Labels, Counter>,
    steps_by_sequences: Family<StepLabels, Counter>,
    sequences: Family<Labels, Gauge>,
    queued: Family<Labels, Gauge>,
    cache_tokens: Family<Labels, Gauge>,
    cache_capacity: Family<Labels, Gauge>,
}

/// One finished generation, in numbers.
pub struct Finished {
    /// From the request to its first text; none if it produced none.
    pub first_token: Option<Duration>,
    /// From the request to its end.
    pub total: Duration,
    /// Tokens of its prompt.
    pub prompt_tokens: u64,
    /// Tokens it generated.
    pub tokens: u64,
    /// The plugin's own time in it.
    pub plugin: Duration,
}

/// A generative model's engine as read at a scrape: its counters' values now.
#[derive(Debug, Default, Clone)]
pub struct EngineGauges {
    /// Forward passes run.
    pub steps: u64,
    /// Prompt tokens the prefix cache held.
    pub reused: u64,
    /// Sequences in them, summed.
    pub step_sequences: u64,
    /// Time in them.
    pub step_time: Duration,
    /// Passes joined by 1, 2, 3-4, 5-8, 9-16 and more sequences.
    pub steps_by_sequences: [u64; 6],
    /// Sequences generating now.
    pub sequences: u64,
    /// Generations waiting for a slot.
    pub queued: u64,
    /// Tokens in the key/value cache.
    pub cache_tokens: u64,
    /// Tokens it holds at most.
    pub cache_capacity: u64,
}

impl GenerationMetrics {
    /// The families, registered in `registry`.
    pub(super) fn register(registry: &mut Registry) -> Self {
        let histograms = |f: fn() -> Histogram| Histograms::new_with_constructor(f);
        let m = Self {
            first_token: histograms(seconds),
            per_token: histograms(seconds),
            plugin_per_token: histograms(per_token),
            prompt_tokens: Family::default(),
            tokens: Family::default(),
            steps: Family::default(),
            reused: Family::default(),
            step_seconds: Family::default(),
            step_sequences: Family::default(),
            steps_by_sequences: Family::default(),
            sequences: Family::default(),
            queued: Family::default(),
            cache_tokens: Family::default(),
            cache_capacity: Family::default(),
        };
        let r = registry;
        r.register(
            "generation_time_to_first_token_seconds",
            "Request to its first text",
            m.first_token.clone(),
        );
        r.register(
            "generation_time_per_output_token_seconds",
            "After the first token, the time per generated token",
            m.per_token.clone(),
        );
        r.register(
            "generation_plugin_seconds_per_token",
            "The plugin's own time (template, tokeniser, sampling, stops) per generated token",
            m.plugin_per_token.clone(),
        );
        r.register(
            "generation_prompt_tokens",
            "Prompt tokens of finished generations",
            m.prompt_tokens.clone(),
        );
        r.register("generation_tokens", "Tokens generated", m.tokens.clone());
        r.register("generation_steps", "Forward passes", m.steps.clone());
        r.register(
            "generation_cached_prompt_tokens",
            "Prompt tokens a slot held already, not computed again",
            m.reused.clone(),
        );
        r.register("generation_step_seconds", "Time in forward passes", m.step_seconds.clone());
        r.register("generation_step_sequences", "Sequences in the forward passes", m.step_sequences.clone());
        r.register(
            "generation_steps_by_sequences",
            "Forward passes by how many sequences joined them (at most)",
            m.steps_by_sequences.clone(),
        );
        r.register("generation_sequences", "Sequences generating now", m.sequences.clone());
        r.register("generation_queued", "Generations waiting for a slot", m.queued.clone());
        r.register("generation_cache_tokens", "Tokens held in the key/value cache", m.cache_tokens.clone());
        r.register(
            "generation_cache_capacity_tokens",
            "Tokens the key/value cache holds at most (slots x context)",
            m.cache_capacity.clone(),
        );
        m
    }

    /// A generation of `model` `version` finished.
    pub fn finished(&self, model: &str, version: &str, done: &Finished) {
        let labels = Labels { model: model.to_string(), version: version.to_string() };
        self.prompt_tokens.get_or_create(&labels).inc_by(done.prompt_tokens);
        self.tokens.get_or_create(&labels).inc_by(done.tokens);
        if let Some(first) = done.first_token {
            self.first_token.get_or_create(&labels).observe(first.as_secs_f64());
            if done.tokens > 1 {
                let rest = done.total.saturating_sub(first).as_secs_f64() / (done.tokens - 1) as f64;
                self.per_token.get_or_create(&labels).observe(rest);
            }
        }
        if done.tokens > 0 {
            let plugin = done.plugin.as_secs_f64() / done.tokens as f64;
            self.plugin_per_token.get_or_create(&labels).observe(plugin);
        }
    }

    /// Set the engine's gauges and counters of `model` `version` to `now`.
    pub(super) fn engine(&self, model: &str, version: &str, now: &EngineGauges) {
        let labels = Labels { model: model.to_string(), version: version.to_string() };
        let set_counter = |c: &Counter, to: u64| {
            let by = to.saturating_sub(c.get());
            c.inc_by(by);
        };
        set_counter(&self.steps.get_or_create(&labels), now.steps);
        set_counter(&self.reused.get_or_create(&labels), now.reused);
        set_counter(&self.step_sequences.get_or_create(&labels), now.step_sequences);
        let seconds = self.step_seconds.get_or_create(&labels);
        seconds.inc_by((now.step_time.as_secs_f64() - seconds.get()).max(0.0));
        for (bucket, count) in SEQUENCE_BUCKETS.iter().zip(now.steps_by_sequences) {
            let labels =
                StepLabels { model: model.to_string(), version: version.to_string(), sequences: bucket };
            set_counter(&self.steps_by_sequences.get_or_create(&labels), count);
        }
        self.sequences.get_or_create(&labels).set(now.sequences as i64);
        self.queued.get_or_create(&labels).set(now.queued as i64);
        self.cache_tokens.get_or_create(&labels).set(now.cache_tokens as i64);
        self.cache_capacity.get_or_create(&labels).set(now.cache_capacity as i64);
    }
}
