//! A model's configuration: `model.toml` in the model's directory.
//!
//! ```toml
//! version = "1"
//! description = "file-type detection"
//!
//! [graph]
//! file = "model.onnx"
//! backend = "tract"        # or "onnx" (ONNX Runtime)
//! target = "cpu"           # or "gpu" (ONNX Runtime's CUDA provider)
//!
//! [plugin]
//! file = "plugin.wasm"
//! data = "data"            # granted to the plugin, read-only, at /data
//!
//! [[inputs]]
//! name = "bytes"
//! datatype = "BYTES"
//! shape = [-1]
//!
//! [[outputs]]
//! name = "label"
//! datatype = "BYTES"
//! shape = [-1]
//! ```

use crate::tensor::Datatype;
use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

mod embeddings;
mod fetch;
mod generation;
mod graph;
mod limits;
mod load;
mod logger;
mod plugin;
mod route;
mod scheduling;
mod text;
mod versions;

pub use embeddings::Embeddings;
pub use fetch::{Fetch, Unpack};
pub use generation::Generation;
pub use graph::{Backend, GraphConfig, Target};
pub use limits::{DEFAULT_MAX_BYTES_ELEMENT_KIB, InputLimits, Limits};
pub use load::{Load, LoadPolicy};
pub use logger::{LogMode, Logger};
pub use plugin::PluginConfig;
pub use route::{ROUTE_FILE, RouteConfig, RouteTarget, Variant, target_label};
pub use scheduling::{Batching, Scheduling};
pub use text::{Aggregation, Pooling, Rerank, ScoreFunction, Text, TextTask};
pub use versions::{VERSIONS_FILE, VersionPolicy, Versions};

/// The file name of a model's config inside its directory.
pub const FILE_NAME: &str = "model.toml";

/// A model's `model.toml`.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// The version this directory serves (default "1"). In a versioned model's numbered
    /// directory, the directory's number (a different value here is an error).
    #[serde(default = "default_version")]
    pub version: String,
    /// One line for humans; shown in metadata.
    #[serde(default)]
    pub description: Option<String>,
    /// Files fetched at start-up, before anything loads (see [`Fetch`]).
    #[serde(default)]
    pub fetch: Vec<Fetch>,
    /// The graph the model runs.
    pub graph: GraphConfig,
    /// The plugin that pre- and post-processes (its file may be left out with `[text]`,
    /// which serves the model with the built-in text plugin).
    #[serde(default)]
    pub plugin: PluginConfig,
    /// The tensors a client sends (the plugin's view, not the graph's). A generative model
    /// (`graph.backend = "ggml"`) declares none: it takes text and answers in text.
    #[serde(default)]
    pub inputs: Vec<TensorSpec>,
    /// The tensors a client receives (none for a generative model).
    #[serde(default)]
    pub outputs: Vec<TensorSpec>,
    /// Requests run through the whole pipeline at start-up; the model is ready only once
    /// every one succeeded.
    #[serde(default)]
    pub warmup: Vec<Warmup>,
    /// How many requests run at once and how many may wait.
    #[serde(default)]
    pub scheduling: Scheduling,
    /// Dynamic batching: the graph runs several requests at once (off when absent).
    #[serde(default)]
    pub batching: Option<Batching>,
    /// How much input one request may bring.
    #[serde(default)]
    pub limits: Limits,
    /// When the model loads (at start-up or at its first request) and what it is charged
    /// against the model memory budget.
    #[serde(default)]
    pub load: Load,
    /// The model answers OpenAI's `/v1/embeddings` (see [`Embeddings`]).
    #[serde(default)]
    pub embeddings: Option<Embeddings>,
    /// Payload logging for this model (see [`Logger`]); default: the server's.
    #[serde(default)]
    pub logger: Logger,
    /// A generative model's sequences (see [`Generation`]); defaults when absent.
    #[serde(default)]
    pub generation: Option<Generation>,
    /// A Hugging Face text model served with no plugin of its own (see [`Text`]).
    #[serde(default)]
    pub text: Option<Text>,
    /// The model answers `POST /v1/rerank` (see [`Rerank`]).
    #[serde(default)]
    pub rerank: Option<Rerank>,
}

/// `[[warmup]]`: one warm-up request, as a file or as inline inputs.
///
/// ```toml
/// [[warmup]]
/// file = "samples/page.pdf"     # sent as the raw body of the model's one input
///
/// [[warmup]]
/// inputs = [{ name = "text", shape = [1], datatype = "BYTES", data = ["warm up"] }]
/// parameters = { normalize = false }
/// count = 3
/// ```
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Warmup {
    /// A file, relative to the model directory, sent as the raw body of the model's one input.
    pub file: Option<PathBuf>,
    /// Input tensors as in an OIP JSON request's `inputs`.
    pub inputs: Option<serde_json::Value>,
    /// Request parameters for the plugin.
    #[serde(default)]
    pub parameters: serde_json::Map<String, serde_json::Value>,
    /// How many times to send it.
    #[serde(default = "one")]
    pub count: usize,
}

fn one() -> usize {
    1
}

fn default_version() -> String {
    "1".into()
}

/// A tensor as the client sees it. `-1` in a shape means any size.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TensorSpec {
    /// Tensor name.
    pub name: String,
    /// Element type.
    pub datatype: Datatype,
    /// Dimensions; -1 for a variable one.
    pub shape: Vec<i64>,
}

impl ModelConfig {
    /// The model's platform in metadata: `onnx/` and its backend, e.g. `onnx/tract`; a GGUF
    /// model's is `gguf/ggml`.
    pub fn platform(&self) -> String {
        match self.graph.backend {
            Backend::Ggml => "gguf/ggml".to_string(),
            backend => format!("onnx/{}", backend.name()),
        }
    }

    /// Graph runs at once: `[scheduling] executions`, or its default for the backend.
    pub fn executions(&self) -> usize {
        match (self.scheduling.executions, self.graph.backend) {
            // On a GPU each session holds its own copy of the weights in GPU memory, and its
            // parallelism comes from batching: one unless configured (gpu_bench.py measures 2).
            (0, Backend::Onnx) if self.graph.target == Target::Gpu => 1,
            // Sessions with one intra-op thread each out-ran one session with all the cores
            // (magika, 2 cores: 241 against 220 rows/s); each session holds its weights.
            (0, Backend::Onnx) => cores().min(4),
            (0, Backend::Tract) => cores(),
            // Its sequences share one batched forward pass, run by the engine's own thread.
            (0, Backend::Ggml) => 1,
            (n, _) => n,
        }
    }

    /// Whether the model generates text (a GGUF graph, `graph.backend = "ggml"`): it answers
    /// chat and completion requests, through a plugin of the `generator-plugin` world.
    pub fn generates(&self) -> bool {
        self.graph.backend == Backend::Ggml
    }

    /// `[generation]`, or its defaults.
    pub fn generation(&self) -> Generation {
        self.generation.clone().unwrap_or_default()
    }

    /// What a generative model may not have: tensors, batching, embeddings, warm-up tensors.
    fn check_generation(&self) -> anyhow::Result<()> {
        let refused = [
            (!self.inputs.is_empty() || !self.outputs.is_empty(), "`inputs` and `outputs`"),
            (self.batching.is_some(), "`[batching]` (its sequences share each step: `[generation] slots`)"),
            (self.embeddings.is_some(), "`[embeddings]`"),
            (self.rerank.is_some(), "`[rerank]`"),
            (!self.warmup.is_empty(), "`[[warmup]]` requests (the plugin's `warm` export warms it)"),
        ];
        if let Some((_, what)) = refused.iter().find(|(present, _)| *present) {
            anyhow::bail!("a generative model (`graph.backend = \"ggml\"`) has no {what}");
        }
        self.generation().check()
    }

    /// Read and check `dir/model.toml`; errors name the file and the field.
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join(FILE_NAME);
        let text =
            std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("invalid {}", path.display()))
    }

    /// Parse and check the text of a `model.toml`.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let mut config: Self = toml::from_str(text)?;
        match config.text.clone() {
            Some(text) => text.expand(&mut config).context("`[text]`")?,
            None => anyhow::ensure!(
                config.plugin.file.is_some(),
                "`plugin.file`: a model needs a plugin (or `[text]`, for a Hugging Face text model served by the \
                 built-in one)"
            ),
        }
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> anyhow::Result<()> {
        if self.generates() {
            self.check_generation()?;
        } else {
            anyhow::ensure!(
                self.generation.is_none(),
                "`[generation]` is for generative models: set `graph.backend = \"ggml\"` with a GGUF file"
            );
        }
        for (kind, specs) in [("inputs", &self.inputs), ("outputs", &self.outputs)] {
            anyhow::ensure!(!specs.is_empty() || self.generates(), "`{kind}`: a model needs at least one");
            for (i, spec) in specs.iter().enumerate() {
                anyhow::ensure!(
                    spec.shape.iter().all(|&d| d >= -1),
                    "`{kind}[{i}].shape`: dimensions are >= 0, or -1 for any size"
                );
                anyhow::ensure!(
                    !specs[..i].iter().any(|s| s.name == spec.name),
                    "`{kind}[{i}].name`: '{}' appears twice",
                    spec.name
                );
            }
        }
        anyhow::ensure!(
            !(self.graph.target == Target::Gpu && self.graph.backend == Backend::Tract),
            "`graph.target = \"gpu\"` needs `graph.backend = \"onnx\"`: tract runs on the CPU only"
        );
        anyhow::ensure!(self.plugin.memory_limit_mib > 0, "`plugin.memory_limit_mib` must be > 0");
        anyhow::ensure!(self.plugin.max_output_mib > 0, "`plugin.max_output_mib` must be > 0");
        anyhow::ensure!(self.plugin.max_table_elements > 0, "`plugin.max_table_elements` must be > 0");
        for (i, w) in self.warmup.iter().enumerate() {
            anyhow::ensure!(
                w.file.is_some() != w.inputs.is_some(),
                "`warmup[{i}]`: give either `file` or `inputs`"
            );
            anyhow::ensure!(w.count > 0, "`warmup[{i}].count` must be > 0");
        }
        anyhow::ensure!(self.plugin.timeout_ms > 0, "`plugin.timeout_ms` must be > 0");
        for (key, value) in [
            ("max_bytes_element_kib", self.limits.max_bytes_element_kib),
            ("max_input_kib", self.limits.max_input_kib),
        ] {
            anyhow::ensure!(value != Some(0), "`limits.{key}` must be > 0");
        }
        if let Some(b) = &self.batching {
            anyhow::ensure!(b.max_batch_size > 0, "`batching.max_batch_size` must be > 0");
            if let Some(size) = b.preferred_batch_sizes.iter().find(|&&s| s == 0 || s > b.max_batch_size) {
                anyhow::bail!(
                    "`batching.preferred_batch_sizes`: {size} is not between 1 and max_batch_size ({})",
                    b.max_batch_size
                );
            }
            // A `[text]` model's `pad` defaults to its graph's token inputs, at load.
            anyhow::ensure!(
                !b.pad.is_empty() || self.text.is_some() || (b.cut.is_empty() && b.max_batch_tokens == 0),
                "`batching.cut` and `batching.max_batch_tokens` need `batching.pad`: the graph inputs whose dimension 1 is a length"
            );
        }
        for (i, fetch) in self.fetch.iter().enumerate() {
            fetch.check().with_context(|| format!("`fetch[{i}]`"))?;
        }
        if let Some(embeddings) = &self.embeddings {
            embeddings.check(&self.inputs, &self.outputs)?;
        }
        if let Some(rerank) = &self.rerank {
            rerank.check(&self.inputs, &self.outputs)?;
        }
        self.logger.check()?;
        Ok(())
    }
}

/// The tensor `name` among `specs` (the model's `kind`s: inputs or outputs), or an error
/// saying that `section` names one the model lacks.
fn named<'a>(
    section: &str,
    specs: &'a [TensorSpec],
    kind: &str,
    name: &str,
) -> anyhow::Result<&'a TensorSpec> {
    specs
        .iter()
        .find(|s| s.name == name)
        .with_context(|| format!("`{section}`: the model has no {kind} '{name}'"))
}

/// CPU cores this process may use: what the `0 = per core` defaults mean.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The JSON schema of `versions.toml` (committed as `schemas/versions.schema.json`).
pub fn versions_schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(Versions)).expect("a schema is JSON")
}

/// The JSON schema of `model.toml` (committed as `schemas/model.schema.json`).
pub fn schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(ModelConfig)).expect("a schema is JSON")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_policies_choose_versions_and_a_default() {
        let versions = |text: &str| toml::from_str::<Versions>(text).unwrap();
        let present = [3, 1, 10, 2];
        assert_eq!(versions("").select(&present).unwrap(), (vec![10], 10));
        assert_eq!(versions("latest = 2").select(&present).unwrap(), (vec![3, 10], 10));
        assert_eq!(
            versions("policy = \"all\"\ndefault = 2").select(&present).unwrap(),
            (vec![1, 2, 3, 10], 2)
        );
        let specific = versions("policy = \"specific\"\nversions = [3, 1]");
        assert_eq!(specific.select(&present).unwrap(), (vec![1, 3], 3));
        for (text, error) in [
            ("latest = 2\ndefault = 1", "`default` is 1, which is not served (served: [3, 10])"),
            ("policy = \"specific\"\nversions = [4]", "`versions` lists 4, which has no directory"),
            ("policy = \"specific\"", "policy = \"specific\" needs `versions`"),
            ("policy = \"all\"\nlatest = 1", "`latest` goes with policy = \"latest\""),
            ("latest = 0", "`latest` must be > 0"),
        ] {
            let err = versions(text).select(&present).unwrap_err().to_string();
            assert!(err.contains(error), "{text}: {err}");
        }
        assert!(versions("").select(&[]).unwrap_err().to_string().contains("no version directories"));
        assert!(toml::from_str::<Versions>("polcy = \"all\"").is_err(), "unknown keys are refused");
    }

    #[test]
    fn executions_default_by_backend_and_target() {
        let with = |graph: &str| {
            parse(&MINIMAL.replace("file = \"m.onnx\"", &format!("file = \"m.onnx\"\n{graph}"))).unwrap()
        };
        assert_eq!(with("backend = \"tract\"").executions(), cores());
        assert_eq!(with("backend = \"onnx\"").executions(), cores().min(4));
        assert_eq!(with("backend = \"onnx\"\ntarget = \"gpu\"").executions(), 1);
        let onnx = with("backend = \"onnx\"");
        assert_eq!(onnx.graph.graph_threads(onnx.executions()), (cores() / cores().min(4)).max(1));
    }

    fn parse(text: &str) -> anyhow::Result<ModelConfig> {
        let config: ModelConfig = toml::from_str(text)?;
        config.check()?;
        Ok(config)
    }

    const MINIMAL: &str = r#"
[graph]
file = "m.onnx"
[plugin]
file = "p.wasm"
[[inputs]]
name = "x"
datatype = "FP32"
shape = [-1, 3]
[[outputs]]
name = "y"
datatype = "BYTES"
shape = [-1]
"#;

    #[test]
    fn defaults() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.version, "1");
        assert_eq!(c.graph.backend, Backend::Tract);
        assert_eq!(c.graph.target, Target::Cpu);
        assert_eq!(c.plugin.memory_limit_mib, 256);
        assert_eq!((c.scheduling.max_in_flight, c.scheduling.max_queue), (0, 64));
        assert_eq!(c.inputs[0].datatype, Datatype::Fp32);
    }

    #[test]
    fn batching_is_checked() {
        let with = |b: &str| parse(&format!("{MINIMAL}\n[batching]\n{b}")).map_err(|e| format!("{e:#}"));
        let b = with("max_batch_size = 8").unwrap().batching.unwrap();
        assert_eq!((b.max_queue_delay_us, b.preferred_batch_sizes.len()), (1000, 0));
        assert!(with("max_batch_size = 0").unwrap_err().contains("must be > 0"));
        let err = with("max_batch_size = 8\npreferred_batch_sizes = [4, 16]").unwrap_err();
        assert!(err.contains("16 is not between 1 and max_batch_size (8)"), "{err}");
        assert!(parse(MINIMAL).unwrap().batching.is_none());
        let padded = with(
            "max_batch_size = 8\npad = { ids = 0, mask = 0 }\ncut = [\"hidden\"]\nmax_batch_tokens = 64",
        );
        let b = padded.unwrap().batching.unwrap();
        assert_eq!((b.pad.len(), b.cut.len(), b.max_batch_tokens), (2, 1, 64));
        let err = with("max_batch_size = 8\nmax_batch_tokens = 64").unwrap_err();
        assert!(err.contains("need `batching.pad`"), "{err}");
    }

    #[test]
    fn unknown_field_is_named() {
        let err = parse(&MINIMAL.replace("[plugin]", "[plugin]\ndatta = \"d\"")).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("unknown field `datta`"), "{msg}");
    }

    #[test]
    fn fetch_entries_are_checked() {
        let with = |fetch: &str| parse(&format!("{fetch}\n{MINIMAL}")).map_err(|e| format!("{e:#}"));
        let sha = "fe2d2eb49c5f88a9e0a6c048e15d6ffdf86235519c2afc535044de433169ec8c";
        assert!(with(&format!("[[fetch]]\nurl = \"https://h/m.onnx\"\nsha256 = \"{sha}\"")).is_ok());
        let err = with("[[fetch]]\nurl = \"https://h/m.onnx\"\nsha256 = \"abc\"").unwrap_err();
        assert!(err.contains("`fetch[0]`") && err.contains("64 hex digits"), "{err}");
        let err =
            with(&format!("[[fetch]]\nurl = \"https://h/m.onnx\"\nsha256 = \"{sha}\"\npath = \"../x\""))
                .unwrap_err();
        assert!(err.contains("without `..`"), "{err}");
        let err = with(&format!("[[fetch]]\nurl = \"https://h/m.onnx\"\nsha256 = \"{sha}\"\nmember = \"a\""))
            .unwrap_err();
        assert!(err.contains("`member` needs an archive"), "{err}");
        let err = with(&format!("[[fetch]]\nurl = \"https://h/\"\nsha256 = \"{sha}\"")).unwrap_err();
        assert!(err.contains("`path`"), "{err}");
    }

    #[test]
    fn bad_datatype_and_gpu_on_tract_are_rejected() {
        let err = parse(&MINIMAL.replace("\"FP32\"", "\"FLOAT\"")).unwrap_err();
        assert!(format!("{err:#}").contains("unknown variant `FLOAT`"), "{err:#}");
        let err =
            parse(&MINIMAL.replace("file = \"m.onnx\"", "file = \"m.onnx\"\ntarget = \"gpu\"")).unwrap_err();
        assert!(err.to_string().contains("tract runs on the CPU only"), "{err}");
    }
}
