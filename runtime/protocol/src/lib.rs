//! wasmserve's protocol: what a client or a model directory hands the server, and what the
//! server answers, without the server itself. The Open Inference Protocol's request bodies
//! ([`decode`]: JSON, the binary tensor extension, a raw body) and responses ([`encode`]),
//! the [`tensor`] every step of a request sees, the [`error`]s a request can end in with
//! their HTTP and gRPC status codes, and a model's [`config`] (`model.toml`, `route.toml`,
//! `versions.toml`).
//!
//! The server (`wasmserve`) re-exports these modules under the same names; the fuzz targets
//! (`runtime/fuzz`) build against this crate alone, so their instrumented build skips
//! wasmtime and the backends.
#![deny(missing_docs)]

pub mod config;
pub mod decode;
pub mod encode;
pub mod error;
pub mod tensor;
