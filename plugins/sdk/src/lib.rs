//! Write a wasmserve plugin in Rust.
//!
//! ```ignore
//! use wasmserve_plugin::{Guest, Params, PluginError, Prepared, Tensor};
//! struct MyPlugin;
//! impl Guest for MyPlugin {
//!     fn preprocess(inputs: Vec<Tensor>, params: Params) -> Result<Prepared, PluginError> { todo!() }
//!     fn postprocess(outputs: Vec<Tensor>, context: Vec<Tensor>, params: Params) -> Result<Vec<Tensor>, PluginError> { todo!() }
//! }
//! wasmserve_plugin::export_plugin!(MyPlugin);
//! ```
//!
//! The world is `wit/plugin.wit` at the root of the repository; this crate adds helpers to
//! read and build its tensors.
#![deny(missing_docs)]

/// Bindings generated from `wit/plugin.wit`.
#[allow(missing_docs)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "model-plugin",
        path: "wit",
        pub_export_macro: true,
        export_macro_name: "export_plugin",
        generate_all,
        default_bindings_module: "wasmserve_plugin::bindings",
    });
}

pub use bindings::wasmserve::plugin::types::{Datatype, Params, PluginError, Prepared, Tensor};
pub use bindings::{Guest, export_plugin};

/// For a plugin that also warms itself up (the `model-plugin-with-warm-up` world): implement
/// [`warm::Guest`] (preprocess, postprocess) and [`warm::WarmUp`], then
/// `wasmserve_plugin::export_plugin_with_warm_up!(MyPlugin)`.
///
/// ```ignore
/// impl wasmserve_plugin::warm::WarmUp for MyPlugin {
///     fn warm_up() -> Result<(), PluginError> {
///         std::fs::read("/data/vocab.txt").map(drop).map_err(|e| internal(format!("vocab: {e}")))
///     }
/// }
/// ```
pub mod warm {
    #[allow(missing_docs)]
    #[doc(hidden)]
    pub mod generated {
        wit_bindgen::generate!({
            world: "model-plugin-with-warm-up",
            path: "wit",
            pub_export_macro: true,
            export_macro_name: "export_plugin_with_warm_up",
            default_bindings_module: "wasmserve_plugin::warm::generated",
            with: {
                "wasmserve:plugin/types@0.1.0": crate::bindings::wasmserve::plugin::types,
                "wasi:nn/graph@0.2.0-rc-2024-10-28": crate::bindings::wasi::nn::graph,
                "wasi:nn/inference@0.2.0-rc-2024-10-28": crate::bindings::wasi::nn::inference,
                "wasi:nn/tensor@0.2.0-rc-2024-10-28": crate::bindings::wasi::nn::tensor,
                "wasi:nn/errors@0.2.0-rc-2024-10-28": crate::bindings::wasi::nn::errors,
            },
        });
    }
    /// Preprocess and postprocess, as in [`crate::Guest`].
    pub use generated::Guest;
    /// The warm-up.
    pub use generated::exports::wasmserve::plugin::warm::Guest as WarmUp;
}
#[doc(inline)]
pub use warm::generated::export_plugin_with_warm_up;

pub mod classify;
#[cfg(feature = "generate")]
pub mod generate;
#[cfg(feature = "generate")]
#[doc(inline)]
pub use generate::generated::export_generator;
#[cfg(feature = "generate")]
pub mod gguf;
#[cfg(feature = "image")]
pub mod image;
pub mod nn;
mod tensor;
#[cfg(feature = "text")]
pub mod text;
mod wire;
pub use tensor::{Element, View};

/// Shorthand for a client error (HTTP 400).
pub fn invalid(message: impl Into<String>) -> PluginError {
    PluginError::InvalidInput(message.into())
}

/// Shorthand for a plugin failure (HTTP 500).
pub fn internal(message: impl Into<String>) -> PluginError {
    PluginError::Internal(message.into())
}

impl PluginError {
    /// The same kind of error, its message prefixed with `what`: `image[2]: not a PNG`.
    pub fn context(self, what: &str) -> Self {
        match self {
            PluginError::InvalidInput(m) => PluginError::InvalidInput(format!("{what}: {m}")),
            PluginError::Internal(m) => PluginError::Internal(format!("{what}: {m}")),
        }
    }
}

/// Turn any failure into the plugin error it is, with what was being done:
/// `std::fs::read(path).or_internal("reading the labels")?`, `text.parse().or_invalid("top_k")?`.
pub trait OrError<T> {
    /// A client error (HTTP 400): "`what`: the error".
    fn or_invalid(self, what: &str) -> Result<T, PluginError>;
    /// A plugin failure (HTTP 500): "`what`: the error".
    fn or_internal(self, what: &str) -> Result<T, PluginError>;
}

impl<T, E: std::fmt::Display> OrError<T> for Result<T, E> {
    fn or_invalid(self, what: &str) -> Result<T, PluginError> {
        self.map_err(|e| invalid(format!("{what}: {e}")))
    }
    fn or_internal(self, what: &str) -> Result<T, PluginError> {
        self.map_err(|e| internal(format!("{what}: {e}")))
    }
}

impl<T> OrError<T> for Option<T> {
    fn or_invalid(self, what: &str) -> Result<T, PluginError> {
        self.ok_or_else(|| invalid(what))
    }
    fn or_internal(self, what: &str) -> Result<T, PluginError> {
        self.ok_or_else(|| internal(what))
    }
}

/// The tensor called `name`, or an invalid-input error naming it.
pub fn find<'a>(tensors: &'a [Tensor], name: &str) -> Result<&'a Tensor, PluginError> {
    tensors.iter().find(|t| t.name == name).or_invalid(&format!("missing tensor '{name}'"))
}

/// The value of request parameter `key`, if the client sent it.
pub fn param<'a>(params: &'a Params, key: &str) -> Option<&'a str> {
    params.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// A data file granted to the plugin (`[plugin] data`, read-only at `/data`), parsed once
/// per instance and kept: `static LABELS: DataFile<Vec<String>> = DataFile::new("labels.json", parse)`
/// with `fn parse(bytes: Vec<u8>) -> Result<Vec<String>, PluginError>`. A file that is missing
/// or does not parse is an internal error, every time it is asked for.
pub struct DataFile<T: 'static> {
    path: &'static str,
    parse: fn(Vec<u8>) -> Result<T, PluginError>,
    value: std::sync::OnceLock<Result<T, PluginError>>,
}

impl<T> DataFile<T> {
    /// `path` is relative to `/data`.
    pub const fn new(path: &'static str, parse: fn(Vec<u8>) -> Result<T, PluginError>) -> Self {
        DataFile { path, parse, value: std::sync::OnceLock::new() }
    }

    /// The parsed file, read on the first call.
    pub fn get(&'static self) -> Result<&'static T, PluginError> {
        let load = || {
            let path = format!("/data/{}", self.path);
            let bytes = std::fs::read(&path).or_internal(&format!("reading {path}"))?;
            (self.parse)(bytes).map_err(|e| e.context(&format!("parsing {path}")))
        };
        self.value.get_or_init(load).as_ref().map_err(Clone::clone)
    }
}
