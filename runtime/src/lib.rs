//! wasmserve: a model server. Pre- and post-processing run in sandboxed WebAssembly plugins,
//! inference runs natively through wasi-nn backends (tract, ONNX Runtime), and clients speak
//! the Open Inference Protocol (KServe v2).
//!
//! The modules follow one request, each folder a step (`docs/layout.md` draws the tree):
//! [`net`] (the port: connections, their limits, TLS, the request memory budget) ->
//! [`front`] (the protocols: REST, gRPC, OpenAI, offline; each decodes its request and
//! encodes the answer) -> [`pipeline`] (the one entry: target, span, metrics, the protocol's
//! `decode`, shadow) -> [`repository`] (the models, loaded and on demand) -> [`schedule`]
//! (slots, threads, batching) -> [`plugin`] (preprocess, postprocess) and [`infer`] (the
//! graph) -> back to the front end's `encode`. [`observe`] (metrics, statistics, payload
//! logging, telemetry) is called from every step with labels and numbers; [`proto`] holds
//! the generated gRPC messages; [`fetch`] brings model files at start-up. [`commands`] are
//! the `wasmserve` subcommands' entry points; the binary only parses arguments and calls
//! them.
//!
//! The protocol ([`config`], [`decode`], [`encode`], [`tensor`], [`error`]) is a crate of its
//! own, `wasmserve-protocol` (`runtime/protocol`), re-exported here under the same names.
#![deny(missing_docs)]

pub use wasmserve_protocol::{config, decode, encode, error, tensor};

pub mod allocator;
pub mod commands;
pub mod fetch;
pub mod front;
pub mod infer;
pub mod net;
pub mod observe;
pub mod pipeline;
pub mod plugin;
pub mod proto;
pub mod repository;
pub mod scaffold;
pub mod schedule;
