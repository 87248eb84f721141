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

/// The file name of a model's config inside its directory.
pub const FILE_NAME: &str = "model.toml";

/// The file of a versioned model's version policy, beside its numbered version directories.
pub const VERSIONS_FILE: &str = "versions.toml";

/// A versioned model's `versions.toml`: which of its numbered version directories are
/// served, and which one its unversioned paths answer with. Without the file: the highest
/// version alone.
///
/// ```toml
/// policy = "latest"   # "latest" (default), "all" or "specific"
/// latest = 2          # with "latest": how many of the highest versions
/// versions = [1, 3]   # with "specific": exactly these
/// default = 2         # what /v2/models/{m}/infer serves (default: the highest served)
/// ```
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Versions {
    /// Which versions are served.
    #[serde(default)]
    pub policy: VersionPolicy,
    /// With `policy = "latest"`: how many of the highest versions (default 1).
    #[serde(default)]
    pub latest: Option<usize>,
    /// With `policy = "specific"`: the versions.
    #[serde(default)]
    pub versions: Vec<u64>,
    /// The version requests without one go to; default: the highest served.
    #[serde(default)]
    pub default: Option<u64>,
}

/// Which of a model's versions are served (as Triton and TF Serving have it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum VersionPolicy {
    /// The highest `latest` versions.
    #[default]
    Latest,
    /// Every version present.
    All,
    /// The versions listed.
    Specific,
}

impl Versions {
    /// Read `dir/versions.toml`, or the default policy if there is none.
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join(VERSIONS_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text).with_context(|| format!("invalid {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// Of the versions `present` (any order), those served, ascending, and the default.
    pub fn select(&self, present: &[u64]) -> anyhow::Result<(Vec<u64>, u64)> {
        let mut present = present.to_vec();
        present.sort_unstable();
        anyhow::ensure!(!present.is_empty(), "no version directories (1/, 2/, ...) with a {FILE_NAME}");
        anyhow::ensure!(
            self.latest.is_none() || self.policy == VersionPolicy::Latest,
            "`latest` goes with policy = \"latest\""
        );
        anyhow::ensure!(
            self.versions.is_empty() || self.policy == VersionPolicy::Specific,
            "`versions` goes with policy = \"specific\""
        );
        let served = match self.policy {
            VersionPolicy::Latest => {
                let n = self.latest.unwrap_or(1);
                anyhow::ensure!(n > 0, "`latest` must be > 0");
                present[present.len().saturating_sub(n)..].to_vec()
            }
            VersionPolicy::All => present,
            VersionPolicy::Specific => {
                anyhow::ensure!(!self.versions.is_empty(), "policy = \"specific\" needs `versions`");
                if let Some(missing) = self.versions.iter().find(|v| !present.contains(v)) {
                    anyhow::bail!(
                        "`versions` lists {missing}, which has no directory (present: {present:?})"
                    );
                }
                let mut served = self.versions.clone();
                served.sort_unstable();
                served.dedup();
                served
            }
        };
        let default = self.default.unwrap_or(*served.last().expect("at least one version"));
        anyhow::ensure!(
            served.contains(&default),
            "`default` is {default}, which is not served (served: {served:?})"
        );
        Ok((served, default))
    }
}

/// The file that makes a directory of the repository a route instead of a model.
pub const ROUTE_FILE: &str = "route.toml";

/// A route's `route.toml`: a public model name whose requests go to other models (or
/// versions) by weight, optionally sticky by a request header, optionally copied to a shadow.
///
/// ```toml
/// sticky_header = "x-user-id"   # same value, same variant (default: random by weight)
/// [[variants]]
/// model = "magika"
/// weight = 90
/// [[variants]]
/// model = "magika-next"
/// version = "2"                 # default: the model's default version
/// weight = 10
/// [shadow]                      # gets a copy of every request; its answers are logged, never returned
/// model = "magika-canary"
/// ```
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// A request header whose value picks the variant (the same value, the same variant,
    /// on every replica); requests without it are split at random by weight.
    #[serde(default)]
    pub sticky_header: Option<String>,
    /// Where requests go, each with its share.
    pub variants: Vec<Variant>,
    /// A model that gets a copy of every request; its answers are measured and logged.
    #[serde(default)]
    pub shadow: Option<RouteTarget>,
}

/// One of a route's variants: a model (at a version) and its weight.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Variant {
    /// The model requests go to.
    pub model: String,
    /// Its version; default: the model's default version.
    #[serde(default)]
    pub version: Option<String>,
    /// Its share of the requests, relative to the other variants' weights.
    pub weight: u32,
}

/// The model a route copies requests to.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteTarget {
    /// The model's name.
    pub model: String,
    /// Its version; default: the model's default version.
    #[serde(default)]
    pub version: Option<String>,
}

/// `model` or `model/version`: how responses and metrics name a route's target.
pub fn target_label(model: &str, version: Option<&str>) -> String {
    match version {
        Some(v) => format!("{model}/{v}"),
        None => model.to_string(),
    }
}

impl RouteConfig {
    /// Read and check `dir/route.toml`.
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join(ROUTE_FILE);
        let text =
            std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let route: Self = toml::from_str(&text).with_context(|| format!("invalid {}", path.display()))?;
        anyhow::ensure!(
            !route.variants.is_empty(),
            "invalid {}: `variants`: a route needs one",
            path.display()
        );
        anyhow::ensure!(
            route.variants.iter().all(|v| v.weight > 0),
            "invalid {}: every variant's `weight` must be > 0",
            path.display()
        );
        Ok(route)
    }

    /// Which variant a request goes to, from a number spread evenly over `u64`.
    pub fn pick(&self, draw: u64) -> &Variant {
        let total: u64 = self.variants.iter().map(|v| u64::from(v.weight)).sum();
        let mut point = draw % total;
        for variant in &self.variants {
            if point < u64::from(variant.weight) {
                return variant;
            }
            point -= u64::from(variant.weight);
        }
        unreachable!("the point falls within the total weight")
    }
}

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
    /// The plugin that pre- and post-processes.
    pub plugin: PluginConfig,
    /// The tensors a client sends (the plugin's view, not the graph's).
    pub inputs: Vec<TensorSpec>,
    /// The tensors a client receives.
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
}

/// `[batching]`: requests' graph inputs joined along dimension 0 into one graph run.
///
/// ```toml
/// [batching]
/// max_batch_size = 32              # rows (dimension 0) per graph run
/// max_queue_delay_us = 1000        # longest a request waits for others to join its batch
/// preferred_batch_sizes = [16, 32] # sizes sent at once, without waiting out the delay
/// ```
///
/// Pre- and post-processing stay per request, in the plugin; only the graph is batched.
/// Requests join a batch when their graph inputs agree in everything but dimension 0.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Batching {
    /// Most rows (dimension 0 of the graph inputs) in one graph run. A single request with
    /// more rows runs alone.
    pub max_batch_size: usize,
    /// Longest a request waits for others to join its batch, in microseconds, counted from
    /// the oldest request in the batch.
    #[serde(default = "default_max_queue_delay_us")]
    pub max_queue_delay_us: u64,
    /// Batch sizes worth sending as soon as they can be formed; the largest that can is
    /// sent. Empty: wait for `max_batch_size` rows or the delay.
    #[serde(default)]
    pub preferred_batch_sizes: Vec<usize>,
}

fn default_max_queue_delay_us() -> u64 {
    1000
}

/// `[scheduling]`: the model's share of the machine, and how much waiting it accepts.
///
/// ```toml
/// [scheduling]
/// max_in_flight = 2       # requests running at once (plugin + graph); 0: one per core or execution,
///                         # or with [batching] enough to fill every execution's batch and the next
/// executions = 0          # requests (with [batching]: batches) run at once, each on a thread
///                         # of the model's own; 0: one per CPU core (ONNX Runtime: at most 4, 1 on a GPU)
/// max_queue = 64          # requests waiting for a slot; the next gets 503 + Retry-After
/// queue_timeout_ms = 0    # longest wait for a slot; 0: none (a request's `timeout` parameter, in µs, overrides)
/// ```
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Scheduling {
    /// Requests running at once; 0 means one per CPU core or execution (with `[batching]`, at least
    /// `max_batch_size × (executions + 1)`, so batches can fill while others run).
    #[serde(default)]
    pub max_in_flight: usize,
    /// Requests (with `[batching]`: batches) run at once, each on a thread of the model's
    /// own; on ONNX Runtime each has a session of its own. 0 means one per CPU core, on ONNX
    /// Runtime at most 4 (a session holds its own copy of the weights), the cores then shared
    /// out between them as intra-op threads (`graph.threads`), and 1 with `target = "gpu"`.
    #[serde(default)]
    pub executions: usize,
    /// Requests waiting for a slot; beyond it a request is refused at once (503, Retry-After).
    #[serde(default = "default_max_queue")]
    pub max_queue: usize,
    /// Longest wait for a slot, in milliseconds; 0 means no limit. A request's `timeout`
    /// parameter (microseconds, as Triton's) takes precedence.
    #[serde(default)]
    pub queue_timeout_ms: u64,
}

impl Default for Scheduling {
    fn default() -> Self {
        Self { max_in_flight: 0, executions: 0, max_queue: default_max_queue(), queue_timeout_ms: 0 }
    }
}

fn default_max_queue() -> usize {
    64
}

fn default_true() -> bool {
    true
}

/// `[[fetch]]`: a file fetched at start-up, pinned by its digest, and where the model sees it.
///
/// ```toml
/// [[fetch]]
/// url = "s3://models/magika/model.onnx"      # or https://, gs://, az://, file:///, a path
/// sha256 = "fe2d2eb49c5f88a9e0a6c048e15d6ffdf86235519c2afc535044de433169ec8c"
/// path = "model.onnx"                         # default: the URL's file name
///
/// [[fetch]]
/// url = "https://example.com/magika-data.tar.gz"
/// sha256 = "..."                              # of the archive
/// path = "data"                               # unpacked here (default: the model directory)
/// member = "magika/config"                    # only this directory (or file) of the archive
/// ```
///
/// A path a fetch provides is read from the cache instead of the model directory; other
/// paths still come from the model directory.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Fetch {
    /// Where from: `https://` or `http://`, `s3://bucket/key` (AWS_* variables configure the
    /// endpoint and credentials), `gs://`, `az://` / `abfs://`, `file:///abs/path`, or a path
    /// relative to the model directory.
    pub url: String,
    /// SHA-256 of the bytes the URL serves (of the archive itself, for an archive), in hex.
    pub sha256: String,
    /// Where the model sees it, relative to its directory. Default: the URL's file name, or
    /// for an archive the model directory itself.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Unpack an archive: `tar.gz` or `zip` (a Python wheel is a zip), or `none` to keep it
    /// whole. Default: from the URL's ending (`.tar.gz`, `.tgz`, `.zip`, `.whl`), else `none`.
    #[serde(default)]
    pub unpack: Option<Unpack>,
    /// With an archive: take only this file or directory of it.
    #[serde(default)]
    pub member: Option<PathBuf>,
}

/// How a fetched file is unpacked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
pub enum Unpack {
    /// Kept as it is.
    #[serde(rename = "none")]
    None,
    /// A gzip-compressed tar archive.
    #[serde(rename = "tar.gz")]
    TarGz,
    /// A zip archive (also a Python wheel).
    #[serde(rename = "zip")]
    Zip,
}

impl Fetch {
    /// How to unpack what the URL serves: as configured, else from the URL's ending.
    pub fn unpack(&self) -> Unpack {
        let url = self.url_path().to_ascii_lowercase();
        self.unpack.unwrap_or(if url.ends_with(".tar.gz") || url.ends_with(".tgz") {
            Unpack::TarGz
        } else if url.ends_with(".zip") || url.ends_with(".whl") {
            Unpack::Zip
        } else {
            Unpack::None
        })
    }

    /// Where the model sees it, relative to its directory (empty: the directory itself).
    pub fn path(&self) -> PathBuf {
        match (&self.path, self.unpack()) {
            (Some(path), _) => path.clone(),
            (None, Unpack::None) => PathBuf::from(self.url_path().rsplit('/').next().unwrap_or_default()),
            (None, _) => PathBuf::new(),
        }
    }

    /// The URL without its query and fragment (a signed URL's `?X-Amz-...`).
    fn url_path(&self) -> &str {
        self.url.split(['?', '#']).next().unwrap_or_default()
    }

    fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.sha256.len() == 64 && self.sha256.bytes().all(|b| b.is_ascii_hexdigit()),
            "`sha256` must be 64 hex digits (`sha256sum FILE` prints it), not '{}'",
            self.sha256
        );
        let unpacked = self.unpack() != Unpack::None;
        anyhow::ensure!(
            unpacked || self.member.is_none(),
            "`member` needs an archive: the URL ends in none of .tar.gz, .tgz, .zip, .whl; set `unpack`"
        );
        let path = self.path();
        anyhow::ensure!(
            unpacked || !path.as_os_str().is_empty(),
            "`path`: give the file name the model sees (the URL has none)"
        );
        for (field, p) in [("path", Some(&path)), ("member", self.member.as_ref())] {
            let Some(p) = p else { continue };
            anyhow::ensure!(
                p.components()
                    .all(|c| matches!(c, std::path::Component::Normal(_) | std::path::Component::CurDir)),
                "`{field}` must be a relative path inside the model directory, without `..`: '{}'",
                p.display()
            );
        }
        Ok(())
    }
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

/// Which inference engine runs a graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// tract: pure Rust, built in, CPU.
    #[default]
    Tract,
    /// ONNX Runtime, loaded from a shared library at start-up; CPU or CUDA.
    Onnx,
}

impl Backend {
    /// The name used in configs and metadata.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Tract => "tract",
            Backend::Onnx => "onnx",
        }
    }
}

/// Where a graph runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// The host's CPU.
    #[default]
    Cpu,
    /// An NVIDIA GPU through ONNX Runtime's CUDA execution provider.
    Gpu,
}

/// `[graph]`: the model file and how to run it.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GraphConfig {
    /// The ONNX file, relative to the model directory.
    pub file: PathBuf,
    /// Inference engine (default tract).
    #[serde(default)]
    pub backend: Backend,
    /// Device (default cpu).
    #[serde(default)]
    pub target: Target,
    /// With `target = "gpu"`: run on the CPU when no GPU is usable instead of failing.
    #[serde(default)]
    pub gpu_fallback: bool,
    /// Threads a graph run may use. ONNX Runtime: intra-op threads of each execution's
    /// session; 0 means the CPU cores shared out between the executions, at least 1. tract:
    /// the model's pool for matrix products, which its executions share; 0 means one per core,
    /// 1 runs each graph on its execution's thread alone.
    #[serde(default)]
    pub threads: usize,
    /// ONNX Runtime: intra-op threads spin while waiting for work (faster under load, busy
    /// cores when idle); false puts them to sleep at once.
    #[serde(default = "default_true")]
    pub spin: bool,
}

impl GraphConfig {
    /// `threads`, or its default for the backend and `executions` (see the field).
    pub fn graph_threads(&self, executions: usize) -> usize {
        match (self.threads, self.backend) {
            (0, Backend::Onnx) => (cores() / executions.max(1)).max(1),
            (0, Backend::Tract) => cores(),
            (n, _) => n,
        }
    }
}

/// `[plugin]`: the WebAssembly component and what it may see.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// The `.wasm` component, relative to the model directory.
    pub file: PathBuf,
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
            (n, _) => n,
        }
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
        let config: Self = toml::from_str(text)?;
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> anyhow::Result<()> {
        for (kind, specs) in [("inputs", &self.inputs), ("outputs", &self.outputs)] {
            anyhow::ensure!(!specs.is_empty(), "`{kind}`: a model needs at least one");
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
        if let Some(b) = &self.batching {
            anyhow::ensure!(b.max_batch_size > 0, "`batching.max_batch_size` must be > 0");
            if let Some(size) = b.preferred_batch_sizes.iter().find(|&&s| s == 0 || s > b.max_batch_size) {
                anyhow::bail!(
                    "`batching.preferred_batch_sizes`: {size} is not between 1 and max_batch_size ({})",
                    b.max_batch_size
                );
            }
        }
        for (i, fetch) in self.fetch.iter().enumerate() {
            fetch.check().with_context(|| format!("`fetch[{i}]`"))?;
        }
        Ok(())
    }
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
