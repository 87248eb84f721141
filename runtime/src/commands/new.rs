//! new: `wasmserve new plugin NAME`, a plugin project made by [`crate::scaffold`], and what
//! to run next.

use std::path::{Path, PathBuf};

/// Create plugin `name`'s project in `dir` (default `./NAME`), on `graph` if given (tried on
/// ONNX Runtime's `onnxruntime_library` when tract cannot run it), and say how to build and
/// serve it.
pub fn plugin(
    name: &str,
    dir: Option<PathBuf>,
    graph: Option<&Path>,
    onnxruntime_library: Option<&Path>,
) -> anyhow::Result<()> {
    let dir = dir.unwrap_or_else(|| PathBuf::from(name));
    let created = crate::scaffold::plugin(name, &dir, graph, onnxruntime_library)?;
    let (dir, repository) = (created.dir.display(), created.repository.display());
    println!("created plugin '{name}' in {dir}: its code is {dir}/src/lib.rs");
    if let Some(note) = crate::scaffold::ensure_target() {
        println!("{note}");
    }
    println!("build it:   (cd {dir} && cargo build --release)");
    println!("serve it:   wasmserve serve --repository {repository}");
    Ok(())
}
