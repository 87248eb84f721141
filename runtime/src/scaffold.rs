//! scaffold: `wasmserve new plugin NAME`, a plugin project that builds and serves as it is.
//!
//! It writes `NAME/`: a Rust plugin crate (`src/lib.rs`, a pass-through to fill in), the plugin
//! SDK and the plugin world it is built against (`wasmserve-plugin/`, copied from this binary,
//! so nothing but crates.io is needed), the dependency versions this release was tested with
//! (`Cargo.lock`), and a model repository (`models/NAME/`) whose `model.toml` points at the
//! built plugin and at the graph: the one given, or a tiny example graph. Inputs and outputs
//! are read from the graph.

use crate::config::TensorSpec;
use anyhow::{Context, bail};
use std::path::{Path, PathBuf};

/// The plugin SDK and the world, as files under `wasmserve-plugin/`.
const SDK: [(&str, &str); 12] = [
    ("Cargo.toml", include_str!("../../plugins/sdk/Cargo.toml")),
    ("src/lib.rs", include_str!("../../plugins/sdk/src/lib.rs")),
    ("src/tensor.rs", include_str!("../../plugins/sdk/src/tensor.rs")),
    ("src/wire.rs", include_str!("../../plugins/sdk/src/wire.rs")),
    ("src/classify.rs", include_str!("../../plugins/sdk/src/classify.rs")),
    ("src/image.rs", include_str!("../../plugins/sdk/src/image.rs")),
    ("src/nn.rs", include_str!("../../plugins/sdk/src/nn.rs")),
    ("src/text.rs", include_str!("../../plugins/sdk/src/text.rs")),
    ("src/generate.rs", include_str!("../../plugins/sdk/src/generate.rs")),
    ("src/gguf.rs", include_str!("../../plugins/sdk/src/gguf.rs")),
    ("wit/plugin.wit", include_str!("../../wit/plugin.wit")),
    ("wit/deps/wasi-nn/wasi-nn.wit", include_str!("../../wit/deps/wasi-nn/wasi-nn.wit")),
];

/// The versions the example plugins build with; cargo drops what a new plugin does not use.
const LOCK: &str = include_str!("../../plugins/Cargo.lock");

/// The example graph when none is given: ONNX Runtime's `mul_1.onnx` (MIT; from the
/// onnxruntime 1.32.0 wheel, see tests/models/faulty/SOURCE): `Y = X * [[1, 2], [3, 4], [5, 6]]`,
/// X and Y FP32 [3, 2].
const EXAMPLE_GRAPH: &[u8] = include_bytes!("../../tests/models/faulty/model.onnx");

const CARGO_TOML: &str = r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"

[lib]
crate-type = ["cdylib"]

[dependencies]
# The plugin SDK. features = ["image"] adds decode/resize/normalise for image models,
# features = ["text"] Hugging Face tokenizers for text models.
wasmserve-plugin = { path = "wasmserve-plugin" }

# Small, fast plugins: a panic traps the call (the server answers 500 and carries on).
[profile.release]
opt-level = "s"
lto = true
strip = true
panic = "abort"
codegen-units = 1

# A project of its own, even inside another workspace.
[workspace]
"#;

const CARGO_CONFIG: &str = r#"# Plugins are WebAssembly components: `cargo build --release` here builds one.
[build]
target = "wasm32-wasip2"
"#;

const LIB_RS: &str = r#"//! {name}: a wasmserve plugin.
//!
//! A request flows: client tensors -> `preprocess` -> the graph (run by the server) ->
//! `postprocess` -> the response. Both steps run sandboxed in WebAssembly; the graph runs
//! natively. This one passes the client's tensors to the graph and the graph's back, by
//! name: put your pre- and post-processing where the comments say.
//!
//! Helpers (see `wasmserve-plugin/src`): `find(&inputs, "name")?` a tensor by name;
//! `.view::<f32>()?` its elements typed; `.texts()?` / `.elements()?` BYTES elements;
//! `Tensor::new("name", shape, &values)` / `Tensor::bytes(...)` to answer;
//! `classify::{softmax, argmax, top_k}`; `image::{decode, resize, to_chw}` (feature "image");
//! `text::{bert_wordpiece, encode}` and Hugging Face `tokenizers` (feature "text");
//! `nn::Graph::load("model")?.run(&tensors)?` another model's graph (ensembles);
//! `invalid("...")` answers 400, `internal("...")` 500, `.or_invalid("what")?` converts.

use wasmserve_plugin::{Guest, Params, PluginError, Prepared, Tensor};

struct Plugin;

impl Guest for Plugin {
    fn preprocess(inputs: Vec<Tensor>, _params: Params) -> Result<Prepared, PluginError> {
        // Pre-processing: turn `inputs` (named as in model.toml's [[inputs]]) into the graph's
        // inputs (named as the graph names them). `context` reaches postprocess unchanged.
        Ok(Prepared { graph_inputs: inputs, context: Vec::new() })
    }

    fn postprocess(
        outputs: Vec<Tensor>,
        _context: Vec<Tensor>,
        _params: Params,
    ) -> Result<Vec<Tensor>, PluginError> {
        // Post-processing: turn the graph's outputs into the tensors model.toml's [[outputs]]
        // declare (the server checks them).
        Ok(outputs)
    }
}

wasmserve_plugin::export_plugin!(Plugin);
"#;

/// What `new plugin` wrote, for the message after it.
pub struct Created {
    /// The project directory.
    pub dir: PathBuf,
    /// The model repository inside it.
    pub repository: PathBuf,
}

/// Write plugin project `name` into `dir` (which must not exist or be empty), with `graph`
/// (an ONNX file) or the example graph.
pub fn plugin(
    name: &str,
    dir: &Path,
    graph: Option<&Path>,
    onnxruntime_library: Option<&Path>,
) -> anyhow::Result<Created> {
    let valid = name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !valid {
        bail!(
            "'{name}' cannot name a plugin: use lowercase letters, digits, '-' and '_', starting with a letter (at most 64)"
        );
    }
    if dir.read_dir().is_ok_and(|mut entries| entries.next().is_some()) {
        bail!("{} exists and is not empty: choose another NAME or --dir", dir.display());
    }
    let onnx = match graph {
        Some(path) => std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?,
        None => EXAMPLE_GRAPH.to_vec(),
    };
    // tract's notes on the ONNX file (an old opset, say) are not this command's business.
    let signature = tracing::subscriber::with_default(tracing::subscriber::NoSubscriber::default(), || {
        crate::infer::signature(&onnx)
    });
    let (inputs, outputs) = signature.with_context(|| match graph {
        Some(path) => format!("cannot read the inputs and outputs of {}", path.display()),
        None => "the example graph".into(),
    })?;
    // tract where it can run the graph (nothing to install), else ONNX Runtime, which runs
    // every operator (scikit-learn's Scaler, say, that tract lacks); a graph neither runs is
    // refused here, not written as a model that fails its warm-up at start-up.
    let tried = tracing::subscriber::with_default(tracing::subscriber::NoSubscriber::default(), || {
        probe(&onnx, graph, &inputs, onnxruntime_library)
    })?;
    let on_tract = tried.on_tract;
    let batched = inputs.iter().any(|spec| spec.shape.first().is_some_and(|&d| d < 0));
    let outputs = if batched { per_row(outputs, &tried.shapes) } else { outputs };
    let fill = |template: &str| template.replace("{name}", name);
    let model_dir = PathBuf::from("models").join(name);
    let mut files: Vec<(PathBuf, Vec<u8>)> = vec![
        ("Cargo.toml".into(), fill(CARGO_TOML).into_bytes()),
        ("Cargo.lock".into(), LOCK.into()),
        (".cargo/config.toml".into(), CARGO_CONFIG.into()),
        (".gitignore".into(), "/target/\n".into()),
        ("src/lib.rs".into(), fill(LIB_RS).into_bytes()),
        (model_dir.join("model.onnx"), onnx),
        (model_dir.join("model.toml"), model_toml(name, graph, &inputs, &outputs, on_tract).into_bytes()),
    ];
    files.extend(
        SDK.iter().map(|(path, text)| (Path::new("wasmserve-plugin").join(path), text.as_bytes().to_vec())),
    );
    for (path, bytes) in files {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().expect("a file in a directory"))
            .and_then(|()| std::fs::write(&path, bytes))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(Created { dir: dir.to_path_buf(), repository: dir.join("models") })
}

/// Rows of the probe request: two, so that outputs with one row per input row show it.
const PROBE_ROWS: i64 = 2;

/// Most elements a probe request holds; a graph with larger inputs is not run.
const MAX_PROBE_ELEMENTS: usize = 1 << 20;

/// What running the graph once showed.
struct Tried {
    /// Whether tract ran it (`Err`: why not).
    on_tract: anyhow::Result<()>,
    /// Each output's shape in the run, when a backend ran it.
    shapes: Vec<(String, Vec<i64>)>,
}

/// Run the graph on zeros of its inputs' shapes (open dimensions [`PROBE_ROWS`]): on tract,
/// else on ONNX Runtime when its library is at hand. Refused when neither runs it; when
/// tract cannot and no ONNX Runtime library was given, unchecked (ONNX Runtime runs every
/// operator; `wasmserve check` runs it once the plugin is built).
fn probe(
    onnx: &[u8],
    graph: Option<&Path>,
    inputs: &[TensorSpec],
    onnxruntime_library: Option<&Path>,
) -> anyhow::Result<Tried> {
    use crate::config::Backend;
    let zeros = || -> Option<Vec<crate::tensor::Tensor>> {
        inputs
            .iter()
            .map(|spec| {
                let shape: Vec<i64> =
                    spec.shape.iter().map(|&d| if d < 0 { PROBE_ROWS } else { d }).collect();
                let count = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d as usize))?;
                let size = spec.datatype.size().unwrap_or(4); // BYTES: each element's length, 0
                let data = vec![0; count.checked_mul(size).filter(|_| count <= MAX_PROBE_ELEMENTS)?];
                Some(crate::tensor::Tensor { name: spec.name.clone(), datatype: spec.datatype, shape, data })
            })
            .collect()
    };
    let Some(probe) = zeros() else {
        // Too large to run here: whether tract loads it decides.
        return Ok(Tried { on_tract: crate::infer::runs_on_tract(onnx), shapes: Vec::new() });
    };
    let shapes =
        |outputs: Vec<crate::tensor::Tensor>| outputs.into_iter().map(|t| (t.name, t.shape)).collect();
    let tract = crate::infer::run_once(onnx, graph, Backend::Tract, &Default::default(), probe.clone());
    let tract_error = match tract {
        Ok(outputs) => return Ok(Tried { on_tract: Ok(()), shapes: shapes(outputs) }),
        Err(e) => e,
    };
    let (Some(library), Some(path)) = (onnxruntime_library, graph) else {
        return Ok(Tried { on_tract: Err(tract_error), shapes: Vec::new() });
    };
    let options = crate::infer::BackendOptions {
        onnxruntime_library: Some(library.to_path_buf()),
        ..Default::default()
    };
    match crate::infer::run_once(onnx, Some(path), Backend::Onnx, &options, probe) {
        Ok(outputs) => Ok(Tried { on_tract: Err(tract_error), shapes: shapes(outputs) }),
        Err(e) => bail!(
            "{} runs on neither backend, so it would fail its warm-up: tract: {:#}; ONNX Runtime: {e:#}",
            path.display(),
            tract_error
        ),
    }
}

/// The outputs of a graph whose inputs are batched (an open first dimension) as declared,
/// except that one whose first dimension the file fixes but the probe showed one row per
/// input row (onnxmltools declares a classifier's `label` `[1]`)
/// is declared per row (`-1`).
fn per_row(mut outputs: Vec<TensorSpec>, shapes: &[(String, Vec<i64>)]) -> Vec<TensorSpec> {
    for spec in &mut outputs {
        let ran = shapes.iter().find(|(name, _)| *name == spec.name).map(|(_, shape)| shape);
        if let (Some(first), Some(&[rows, ..])) = (spec.shape.first_mut(), ran.map(Vec::as_slice))
            && *first >= 0
            && *first != rows
            && rows == PROBE_ROWS
        {
            *first = -1;
        }
    }
    outputs
}

/// Where cargo puts the built plugin: under `CARGO_TARGET_DIR` when it is set (it overrides
/// the project's own `target/`), else the project's `target/`, relative to the model directory.
fn built_plugin(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .and_then(|dir| std::path::absolute(dir).ok())
        .unwrap_or_else(|| PathBuf::from("../../target"));
    target.join("wasm32-wasip2/release").join(format!("{}.wasm", name.replace('-', "_")))
}

/// Make sure rustup (when it manages the toolchain) has the plugin target: `rustup target add
/// wasm32-wasip2` when it is missing. Returns what to tell the user, if anything.
pub fn ensure_target() -> Option<String> {
    let installed = std::process::Command::new("rustup").args(["target", "list", "--installed"]).output();
    match installed {
        Err(_) => Some("rustup was not found: the build needs Rust's wasm32-wasip2 target installed".into()),
        Ok(out) if String::from_utf8_lossy(&out.stdout).lines().any(|l| l.trim() == "wasm32-wasip2") => None,
        Ok(_) => {
            let added =
                std::process::Command::new("rustup").args(["target", "add", "wasm32-wasip2"]).status();
            Some(match added {
                Ok(status) if status.success() => {
                    "added Rust's wasm32-wasip2 target (rustup target add wasm32-wasip2)".into()
                }
                _ => "`rustup target add wasm32-wasip2` failed: the build needs that target".into(),
            })
        }
    }
}

/// The model's config: the built plugin, the graph, its inputs and outputs, and for the
/// example graph a warm-up request.
fn model_toml(
    name: &str,
    graph: Option<&Path>,
    inputs: &[TensorSpec],
    outputs: &[TensorSpec],
    on_tract: anyhow::Result<()>,
) -> String {
    let source = graph
        .map_or("the example graph (ONNX Runtime's mul_1.onnx, MIT)".into(), |g| g.display().to_string());
    let backend = match on_tract {
        Ok(()) => r#"backend = "tract"         # or "onnx" (ONNX Runtime; `serve --onnxruntime-library`)"#
            .to_string(),
        Err(e) => {
            let why = e.root_cause().to_string().replace('\n', " ");
            format!("backend = \"onnx\"          # ONNX Runtime: tract cannot run this graph ({why})")
        }
    };
    let mut toml = format!(
        r#"description = "{name}: describe what it does here (shown in the model's metadata)."

[graph]
file = "model.onnx"       # {source}
{backend}

[plugin]
# What `cargo build --release` in the project directory builds.
file = "{plugin}"
# data = "data"           # a directory granted to the plugin read-only at /data
# graphs = ["other"]      # other models' graphs the plugin may run through wasi:nn

# What clients send and receive: the graph's, as long as the plugin passes them through.
"#,
        plugin = built_plugin(name).display(),
    );
    let quote = |s: &str| serde_json::to_string(s).expect("a string");
    for (table, specs) in [("inputs", inputs), ("outputs", outputs)] {
        for spec in specs {
            toml += &format!(
                "\n[[{table}]]\nname = {}\ndatatype = {}\nshape = {:?}\n",
                quote(&spec.name),
                serde_json::to_string(&spec.datatype).expect("a datatype"),
                spec.shape
            );
        }
    }
    toml += &warmup(inputs);
    toml
}

/// Most elements a generated warm-up request holds; beyond, the user writes one.
const MAX_WARMUP_ELEMENTS: usize = 1024;

/// A `[[warmup]]` request of the inputs' declared shapes (each open dimension 1), zeros.
fn warmup(inputs: &[TensorSpec]) -> String {
    let mut tensors = Vec::new();
    for spec in inputs {
        let shape: Vec<i64> = spec.shape.iter().map(|&d| if d < 0 { 1 } else { d }).collect();
        let count: usize = shape.iter().map(|&d| d as usize).product();
        if count > MAX_WARMUP_ELEMENTS {
            return "\n# Add a [[warmup]] request (`inputs` as in a JSON request, or `file`): the server runs it\n\
                    # through the plugin and the graph before it reports ready, and `wasmserve check` does too.\n"
                .into();
        }
        let zero = match spec.datatype {
            crate::tensor::Datatype::Bool => "false",
            crate::tensor::Datatype::Bytes => "\"\"",
            _ => "0",
        };
        tensors.push(format!(
            "{{ name = {}, datatype = {}, shape = {shape:?}, data = [{}] }}",
            serde_json::to_string(&spec.name).expect("a string"),
            serde_json::to_string(&spec.datatype).expect("a datatype"),
            vec![zero; count].join(", ")
        ));
    }
    format!(
        "\n# Sent through the plugin and the graph before the model reports ready (zeros of the\n\
         # declared shapes: put a real example here).\n[[warmup]]\ninputs = [{}]\n",
        tensors.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_project_is_written_with_the_graphs_signature_and_bad_names_or_busy_dirs_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let project = dir.path().join("p");
        let created = plugin("my-model", &project, None, None).unwrap();
        assert_eq!(created.repository, project.join("models"));
        let config = crate::config::ModelConfig::load(&project.join("models/my-model")).unwrap();
        assert_eq!(config.inputs[0].name, "X");
        assert_eq!((config.outputs[0].name.as_str(), &config.outputs[0].shape), ("Y", &vec![3, 2]));
        assert!(
            config.plugin.file.as_ref().is_some_and(|f| f.ends_with("wasm32-wasip2/release/my_model.wasm")),
            "{:?}",
            config.plugin.file
        );
        assert_eq!(config.warmup.len(), 1);
        let sdk = std::fs::read_to_string(project.join("wasmserve-plugin/src/lib.rs")).unwrap();
        assert!(sdk.contains(r#"path: "wit""#), "the SDK finds the world beside it");
        assert!(project.join("wasmserve-plugin/wit/deps/wasi-nn/wasi-nn.wit").is_file());

        let busy = plugin("other", &project, None, None).err().unwrap().to_string();
        assert!(busy.contains("exists and is not empty"), "{busy}");
        for bad in ["My", "1st", "a b", "../x", ""] {
            let e = plugin(bad, &dir.path().join("q"), None, None).err().unwrap().to_string();
            assert!(e.contains("cannot name a plugin"), "{bad}: {e}");
        }
        let e = plugin("g", &dir.path().join("r"), Some(&project.join("src/lib.rs")), None).err().unwrap();
        assert!(format!("{e:#}").contains("cannot read the inputs and outputs of"), "{e:#}");
    }
}
