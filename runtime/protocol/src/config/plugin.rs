//! `[plugin]`: the WebAssembly component and what it may see and use.

use super::*;

/// `[plugin]`: the WebAssembly component and what it may see.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// The `.wasm` component, relative to the model directory. Left out with `[text]`: the
    /// built-in text plugin serves the model.
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// A directory granted read-only at `/data` inside the plugin.
    #[serde(default)]
    pub data: Option<PathBuf>,
    /// Linear-memory cap per plugin instance, in MiB.
    #[serde(default = "default_memory_limit_mib")]
    pub memory_limit_mib: usize,
    /// Most table elements (function references) per plugin instance, all tables together:
    /// tables live in host memory outside the memory cap. Rust plugins use under a hundred;
    /// interpreters compiled to WebAssembly, tens of thousands.
    #[serde(default = "default_max_table_elements")]
    pub max_table_elements: usize,
    /// Wall-clock limit for one plugin call, in milliseconds.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Instructions (wasmtime fuel units, about one per wasm instruction) one call may run;
    /// 0 (default): not metered, the time limit alone applies. Metered plugins run a little
    /// slower; the limit is the same on every machine, unlike time.
    #[serde(default)]
    pub fuel: u64,
    /// Most tensor data one call (preprocess or postprocess) may return, in MiB.
    #[serde(default = "default_max_output_mib")]
    pub max_output_mib: usize,
    /// Other models whose graphs the plugin may run itself through `wasi:nn`
    /// (`load-by-name`), by model name; its own model's graph is always allowed.
    #[serde(default)]
    pub graphs: Vec<String>,
    /// Reuse an instance that finished a request cleanly for later requests of this model
    /// (default). `false`: a fresh instance per request, so nothing one request leaves in
    /// the plugin's memory reaches the next, at the cost of instantiating every time.
    #[serde(default = "yes")]
    pub reuse_instances: bool,
    /// Environment variables the plugin sees (`std::env::var` in Rust): its settings. It
    /// sees no other; the server sets `WASMSERVE_TEXT` for the built-in text plugin.
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
}

impl Default for PluginConfig {
    fn default() -> Self {
        Self {
            file: None,
            data: None,
            memory_limit_mib: default_memory_limit_mib(),
            max_table_elements: default_max_table_elements(),
            timeout_ms: default_timeout_ms(),
            fuel: 0,
            max_output_mib: default_max_output_mib(),
            graphs: Vec::new(),
            reuse_instances: true,
            env: Default::default(),
        }
    }
}

impl PluginConfig {
    /// The graphs the plugin may run through `wasi:nn`: its own model's, then those granted.
    pub fn allowed_graphs<'a>(&'a self, model: &'a str) -> Vec<&'a str> {
        std::iter::once(model).chain(self.graphs.iter().map(String::as_str)).collect()
    }
}

fn yes() -> bool {
    true
}

fn default_memory_limit_mib() -> usize {
    256
}

fn default_max_table_elements() -> usize {
    1_000_000
}

fn default_max_output_mib() -> usize {
    64
}

fn default_timeout_ms() -> u64 {
    10_000
}
