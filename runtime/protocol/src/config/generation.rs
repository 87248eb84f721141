//! `[generation]`: a generative model's sequences (`graph.backend = "ggml"`).

use super::*;

/// `[generation]`: how many sequences a generative model (a GGUF graph) runs at once and how
/// long each may grow. Every sequence in flight joins one batched forward pass per step
/// (continuous batching); each holds its own key/value cache, `context` tokens long.
///
/// ```toml
/// [generation]
/// slots = 8          # sequences generated at once; more requests wait ([scheduling] max_queue)
/// context = 2048     # tokens one sequence holds, prompt and answer together
/// max_tokens = 512   # an answer's length when the request sets none
/// prefix_cache = true # a prompt's start that a slot holds already is not computed again
/// ```
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Generation {
    /// Sequences generated at once, each with a key/value cache of its own; 0 means two per
    /// thread of the model (4 to 16), fewer where their caches would take more than a
    /// quarter of the memory (the machine's, or its container's limit).
    /// Requests beyond them wait for a free one (`[scheduling] max_queue`, `queue_timeout_ms`).
    #[serde(default)]
    pub slots: usize,
    /// Tokens one sequence holds, prompt and answer together; 0 means 2,048 or the context
    /// the model was trained with, whichever is smaller. The key/value cache takes
    /// `slots × context` tokens' worth of memory, counted in the model's resident memory.
    #[serde(default)]
    pub context: u32,
    /// The most tokens an answer has when its request sets no `max_tokens`; 0 means up to
    /// the end of the context.
    #[serde(default = "default_max_tokens")]
    pub max_tokens: u32,
    /// Most prompt tokens one forward pass takes (longer prompts are fed over several steps,
    /// beside the other sequences' next tokens).
    #[serde(default = "default_batch_tokens")]
    pub batch_tokens: u32,
    /// A slot keeps its tokens' keys and values after its sequence ends, and a new prompt
    /// that starts the same way (a system prompt, a chat's earlier turns) skips computing
    /// them again, as llama.cpp's server does. The answer then depends in its last bits on
    /// what ran before (a pass over fewer tokens, keys kept elsewhere in the cache sum in
    /// another order), and a greedy answer may part from a fresh context's: for answers
    /// independent of what ran before (tests against references), turn it off.
    #[serde(default = "default_true")]
    pub prefix_cache: bool,
}

impl Default for Generation {
    fn default() -> Self {
        Self {
            slots: 0,
            context: 0,
            max_tokens: default_max_tokens(),
            batch_tokens: default_batch_tokens(),
            prefix_cache: true,
        }
    }
}

impl Generation {
    /// `context`, or its default for a model trained with `trained` tokens of context.
    pub fn context(&self, trained: u32) -> u32 {
        match self.context {
            0 => trained.clamp(1, 2048),
            n => n,
        }
    }

    pub(super) fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.batch_tokens > 0, "`generation.batch_tokens` must be > 0");
        anyhow::ensure!(self.slots <= 256, "`generation.slots`: at most 256 sequences");
        Ok(())
    }
}

fn default_max_tokens() -> u32 {
    512
}

fn default_batch_tokens() -> u32 {
    512
}

fn default_true() -> bool {
    true
}
