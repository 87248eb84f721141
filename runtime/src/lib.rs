//! wasmserve: a model server. Pre- and post-processing run in sandboxed WebAssembly plugins,
//! inference runs natively through wasi-nn backends (tract, ONNX Runtime), and clients speak
//! the Open Inference Protocol (KServe v2).
//!
//! The modules follow one request:
//! [`server`] (REST; [`grpc`] for gRPC) -> [`pipeline`] (target, span, metrics) -> [`decode`]
//! -> [`plugin`] (preprocess) -> [`schedule`] -> [`infer`] -> [`plugin`] (postprocess) -> [`encode`]. Models come from a [`repository`] of
//! directories, each described by a [`config`]; at start-up [`fetch`] brings the files a
//! config lists from their URLs. [`offline`] runs the same path offline over files.
//! [`commands`] are the `wasmserve` subcommands' entry points; the binary only parses
//! arguments and calls them.
//!
//! Without the `server` feature (on by default) only the protocol is built: [`config`],
//! [`decode`], [`encode`], [`tensor`] and [`error`].
#![deny(missing_docs)]

pub mod config;
pub mod decode;
pub mod encode;
pub mod error;
pub mod tensor;

#[cfg(feature = "server")]
pub mod commands;
#[cfg(feature = "server")]
pub mod fetch;
#[cfg(feature = "server")]
pub mod grpc;
#[cfg(feature = "server")]
pub mod infer;
#[cfg(feature = "server")]
pub mod metrics;
#[cfg(feature = "server")]
pub mod offline;
#[cfg(feature = "server")]
pub mod pipeline;
#[cfg(feature = "server")]
pub mod plugin;
#[cfg(feature = "server")]
pub mod repository;
#[cfg(feature = "server")]
pub mod scaffold;
#[cfg(feature = "server")]
pub mod schedule;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "server")]
pub mod telemetry;
#[cfg(feature = "server")]
pub mod tls;
