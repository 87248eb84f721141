//! wasmserve: a model server. Pre- and post-processing run in sandboxed WebAssembly plugins,
//! inference runs natively through wasi-nn backends (tract, ONNX Runtime), and clients speak
//! the Open Inference Protocol (KServe v2).
//!
//! The modules follow one request:
//! [`server`] (REST; [`grpc`] for gRPC) -> [`decode`] -> [`plugin`] (preprocess) -> [`schedule`] -> [`infer`]
//! -> [`plugin`] (postprocess) -> [`encode`]. Models come from a [`repository`] of
//! directories, each described by a [`config`]; at start-up [`fetch`] brings the files a
//! config lists from their URLs.
#![deny(missing_docs)]

pub mod config;
pub mod decode;
pub mod encode;
pub mod error;
pub mod fetch;
pub mod grpc;
pub mod infer;
pub mod metrics;
pub mod plugin;
pub mod repository;
pub mod schedule;
pub mod server;
pub mod telemetry;
pub mod tensor;
pub mod tls;
