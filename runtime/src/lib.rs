//! wasmserve: a model server. Pre- and post-processing run in sandboxed WebAssembly plugins,
//! inference runs natively through wasi-nn backends (tract, ONNX Runtime), and clients speak
//! the Open Inference Protocol (KServe v2).
//!
//! The modules follow one request: [`listen`] (connections and their limits, the memory
//! [`budget`]) ->
//! [`server`] (REST; [`grpc`] for gRPC; [`openai`] for OpenAI's embeddings; [`triton`] for
//! Triton's configuration and statistics extensions, both protocols) -> [`pipeline`] (target, span, metrics) -> [`decode`]
//! -> [`plugin`] (preprocess) -> [`schedule`] -> [`infer`] -> [`plugin`] (postprocess) -> [`encode`]. Models come from a [`repository`] of
//! directories, each described by a [`config`]; at start-up [`fetch`] brings the files a
//! config lists from their URLs. [`offline`] runs the same path offline over files.
//! [`commands`] are the `wasmserve` subcommands' entry points; the binary only parses
//! arguments and calls them.
//!
//! The protocol ([`config`], [`decode`], [`encode`], [`tensor`], [`error`]) is a crate of its
//! own, `wasmserve-protocol` (`runtime/protocol`), re-exported here under the same names.
#![deny(missing_docs)]

pub use wasmserve_protocol::{config, decode, encode, error, tensor};

pub mod allocator;
pub mod budget;
pub mod commands;
pub mod fetch;
pub mod grpc;
pub mod infer;
pub mod listen;
pub mod metrics;
pub mod offline;
pub mod openai;
pub mod payloads;
pub mod pipeline;
pub mod plugin;
pub mod repository;
pub mod scaffold;
pub mod schedule;
pub mod server;
pub mod telemetry;
pub mod tls;
pub mod triton;
