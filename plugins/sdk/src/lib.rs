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
        path: "../../wit",
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
            path: "../../wit",
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

/// Shorthand for a client error (HTTP 400).
pub fn invalid(message: impl Into<String>) -> PluginError {
    PluginError::InvalidInput(message.into())
}

/// Shorthand for a plugin failure (HTTP 500).
pub fn internal(message: impl Into<String>) -> PluginError {
    PluginError::Internal(message.into())
}

/// The tensor called `name`, or an invalid-input error naming it.
pub fn find<'a>(tensors: &'a [Tensor], name: &str) -> Result<&'a Tensor, PluginError> {
    tensors.iter().find(|t| t.name == name).ok_or_else(|| invalid(format!("missing tensor '{name}'")))
}

/// The first dimension of a tensor (its batch size), 1 for a scalar.
pub fn batch_size(tensor: &Tensor) -> usize {
    tensor.shape.first().map_or(1, |&d| d.max(0) as usize)
}

/// Split BYTES data (4-byte little-endian length before each element) into its elements.
pub fn unpack_bytes(tensor: &Tensor) -> Result<Vec<&[u8]>, PluginError> {
    if tensor.datatype != Datatype::Bytes {
        return Err(invalid(format!("tensor '{}' must be BYTES, got {:?}", tensor.name, tensor.datatype)));
    }
    let mut rest = tensor.data.as_slice();
    let mut elements = Vec::new();
    while !rest.is_empty() {
        let malformed = || invalid(format!("tensor '{}': malformed BYTES data", tensor.name));
        let (len, tail) = rest.split_first_chunk::<4>().ok_or_else(malformed)?;
        let len = u32::from_le_bytes(*len) as usize;
        if tail.len() < len {
            return Err(malformed());
        }
        let (element, tail) = tail.split_at(len);
        elements.push(element);
        rest = tail;
    }
    Ok(elements)
}

/// Build a BYTES tensor from its elements.
pub fn bytes_tensor<'a>(name: &str, shape: Vec<i64>, elements: impl IntoIterator<Item = &'a [u8]>) -> Tensor {
    let mut data = Vec::new();
    for element in elements {
        data.extend_from_slice(&(element.len() as u32).to_le_bytes());
        data.extend_from_slice(element);
    }
    Tensor { name: name.into(), datatype: Datatype::Bytes, shape, data }
}

/// Plain numeric element types a tensor can be read as or built from.
pub trait Element: Copy {
    /// The datatype of a tensor holding this element type.
    const DATATYPE: Datatype;
    /// Size of one element in bytes.
    const SIZE: usize;
    /// Read one element from `SIZE` little-endian bytes.
    fn read(bytes: &[u8]) -> Self;
    /// Append this element's little-endian bytes.
    fn write(self, out: &mut Vec<u8>);
}

macro_rules! element {
    ($($t:ty => $d:ident),*) => {$(
        impl Element for $t {
            const DATATYPE: Datatype = Datatype::$d;
            const SIZE: usize = size_of::<$t>();
            fn read(bytes: &[u8]) -> Self {
                <$t>::from_le_bytes(bytes.try_into().expect("chunk of SIZE bytes"))
            }
            fn write(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
        }
    )*};
}
element!(u8 => Uint8, i32 => Int32, i64 => Int64, f32 => Fp32, f64 => Fp64);

/// Read a numeric tensor's elements; errors if the datatype is not `T`'s.
pub fn values<T: Element>(tensor: &Tensor) -> Result<Vec<T>, PluginError> {
    if tensor.datatype != T::DATATYPE {
        return Err(internal(format!(
            "tensor '{}' is {:?}, expected {:?}",
            tensor.name,
            tensor.datatype,
            T::DATATYPE
        )));
    }
    Ok(tensor.data.chunks_exact(T::SIZE).map(T::read).collect())
}

/// Build a numeric tensor.
pub fn tensor<T: Element>(name: &str, shape: Vec<i64>, values: &[T]) -> Tensor {
    let mut data = Vec::with_capacity(values.len() * T::SIZE);
    for &v in values {
        v.write(&mut data);
    }
    Tensor { name: name.into(), datatype: T::DATATYPE, shape, data }
}

/// The value of request parameter `key`, if the client sent it.
pub fn param<'a>(params: &'a Params, key: &str) -> Option<&'a str> {
    params.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}
