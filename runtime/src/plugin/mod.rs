//! plugin: a model's pre- and post-processing, run in a sandboxed WebAssembly component.
//!
//! Instances come from a pre-linked `InstancePre`. By default an instance that finished a
//! request cleanly goes back to its plugin's pool and serves a later request of the same
//! model, so what a plugin builds once (a parsed vocabulary, a label table) is built once,
//! not per request. An instance that trapped, ran out of time or memory is dropped, never
//! reused, so a plugin that traps only fails its own request. `[plugin] reuse_instances =
//! false` gives every request a fresh instance instead: nothing a request leaves in the
//! plugin's memory can reach the next one, at the cost of instantiating (and rebuilding
//! such tables) every time. Models never share instances. An instance sees
//! only its model's data directory (read-only, at `/data`): no network, no environment but its `[plugin] env`,
//! no arguments. Memory is capped per instance and every call has a wall-clock deadline.
//! Its clocks tick in whole milliseconds. What it prints (stdout and stderr) goes to the
//! server's log, a line per event, in the request's span.

use crate::config::PluginConfig;
use crate::error::Error;
use crate::infer::Graphs;
use crate::tensor::Tensor;
use anyhow::Context;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;
use wasmtime::component::{Component, ComponentExportIndex, Linker, ResourceTable};
use wasmtime::{Engine, ResourceLimiter, Store};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_nn::wit::{WasiNnCtx, WasiNnView};

mod bindings {
    wasmtime::component::bindgen!({
        world: "model-plugin",
        path: "../wit",
    });
}

mod convert;
mod generator;
mod host;
mod instance;
mod limits;

use bindings::wasmserve::plugin::types as wit;
use convert::{from_wit, to_wit};
pub use generator::{FinishReason, GenerationEnd, GenerationRequest, Message, Prompt};
pub use host::PluginHost;
use host::{Compiled, TICK, WARM_UP};
pub use instance::{Instance, Prepared};
use limits::{
    CoarseMonotonicClock, CoarseWallClock, LimitExceeded, Limits, MAX_INSTANCES, MAX_MEMORIES, MAX_TABLES,
};

/// Where a plugin sees its data directory.
pub const DATA_DIR: &str = "/data";

/// The built-in text plugin (`plugins/text`, built by `build.rs`): it serves `[text]` models.
pub const BUILTIN_TEXT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/text_plugin.wasm"));

/// What one instance may print; a write past it fails (a Rust plugin's `println!` panics).
const OUTPUT_LIMIT: usize = 1 << 20;

/// A reused instance that has printed this much is retired, so it never hits the limit.
const OUTPUT_RETIRE: usize = OUTPUT_LIMIT / 2;

/// Most idle instances a plugin keeps for reuse.
const MAX_IDLE: usize = 64;

/// A compiled, linked plugin ready to instantiate.
pub struct Plugin {
    name: String,
    compiled: std::sync::Arc<Compiled>,
    data: Option<PathBuf>,
    memory_limit: usize,
    /// Most table elements, all tables together.
    table_limit: usize,
    /// Most tensor bytes one call may return.
    output_limit: usize,
    /// Instructions (fuel units) one call may run; 0: not metered.
    fuel: u64,
    timeout: Duration,
    graphs: Graphs,
    /// Instances that finished a request cleanly, when instances are reused.
    idle: Option<Mutex<Vec<Live>>>,
    /// The environment it sees (`[plugin] env`).
    env: Vec<(String, String)>,
}

impl Plugin {
    /// How many other loaded models run the same compiled plugin.
    pub fn shared_with(&self) -> usize {
        std::sync::Arc::strong_count(&self.compiled) - 1
    }

    /// What it holds outside malloc's heaps: its share of its compiled code (split evenly
    /// between the loaded models that run it, so the shares add up to the code once) and the
    /// linear memories of its idle instances (the memory model eviction charges it, beside
    /// its heap).
    pub fn resident_bytes(&self) -> u64 {
        let idle = self.idle.as_ref().map_or(0, |idle| {
            idle.lock()
                .expect("idle instances")
                .iter()
                .map(|live| live.store.data().limits.memory as u64)
                .sum()
        });
        self.compiled.code_bytes / std::sync::Arc::strong_count(&self.compiled) as u64 + idle
    }
}

/// What each instance's store holds.
pub struct State {
    wasi: WasiCtx,
    table: ResourceTable,
    nn: WasiNnCtx,
    limits: Limits,
    output: MemoryOutputPipe,
    /// How much of `output` is in the log already.
    logged: usize,
    /// During a generation: where its text goes (false back: the client has gone).
    emit: Option<Box<dyn FnMut(String) -> bool + Send>>,
}

/// An instantiated plugin: its store and exports.
struct Live {
    store: Store<State>,
    bindings: host::Exports,
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl Plugin {
    /// An instance for one request: an idle one when instances are reused and one is
    /// free, else a fresh one.
    pub fn instantiate(&self) -> Result<Instance<'_>, Error> {
        let reused = self.idle.as_ref().and_then(|idle| idle.lock().expect("idle instances").pop());
        let live = match reused {
            Some(live) => live,
            None => {
                let mut store = self.store()?;
                let bindings = self.compiled.pre.instantiate(&mut store).map_err(|e| self.trapped(e))?;
                Live { store, bindings }
            }
        };
        Ok(Instance { plugin: self, live: Some(live), reusable: true })
    }

    /// True when the plugin exports `warm` (the `model-plugin-with-warm-up` world).
    pub fn has_warm_up(&self) -> bool {
        self.compiled.warm_up.is_some()
    }

    /// Call the plugin's `warm-up`, if it exports one, in a fresh instance. When instances
    /// are reused, the warmed instance then serves the first request: what the warm-up built
    /// (a generator's tokenizer) is not built again for it.
    pub fn warm_up(&self) -> Result<(), Error> {
        let Some(export) = &self.compiled.warm_up else { return Ok(()) };
        let mut store = self.store()?;
        let instance =
            self.compiled.pre.instance_pre().instantiate(&mut store).map_err(|e| self.trapped(e))?;
        let warm_up = instance
            .get_typed_func::<(), (Result<(), wit::PluginError>,)>(&mut store, export)
            .map_err(|e| self.failed(format!("its `{WARM_UP}` export does not fit the world: {e}")))?;
        let result = warm_up.call(&mut store, ());
        self.log_output(store.data_mut());
        let (result,) = result.map_err(|e| self.trapped(e))?;
        result.map_err(|e| self.refused(e))?;
        if let Some(idle) = &self.idle {
            let bindings = self.compiled.pre.exports(&mut store, &instance).map_err(|e| self.trapped(e))?;
            idle.lock().expect("idle instances").push(Live { store, bindings });
        }
        Ok(())
    }

    /// Log what an instance printed since the last time, a line per event.
    fn log_output(&self, state: &mut State) {
        let output = state.output.contents();
        for line in String::from_utf8_lossy(&output[state.logged.min(output.len())..]).lines() {
            tracing::info!(plugin = %self.name, "{line}");
        }
        state.logged = output.len();
    }

    /// A store for one instance: its WASI context, limits and deadline.
    fn store(&self) -> Result<Store<State>, Error> {
        let mut wasi = WasiCtxBuilder::new();
        let output = MemoryOutputPipe::new(OUTPUT_LIMIT);
        wasi.stdout(output.clone()).stderr(output.clone());
        wasi.wall_clock(CoarseWallClock).monotonic_clock(CoarseMonotonicClock(std::time::Instant::now()));
        wasi.envs(&self.env);
        if let Some(data) = &self.data {
            wasi.preopened_dir(data, DATA_DIR, FsPerms::ReadOnly)
                .map_err(|e| self.failed(format!("cannot open its data directory: {e:#}")))?;
        }
        let state = State {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            // No backends: a plugin runs the server's loaded graphs, never loads its own.
            nn: WasiNnCtx::new([], self.graphs.clone().into()),
            limits: Limits {
                memory_limit: self.memory_limit,
                table_limit: self.table_limit,
                memory: 0,
                table_elements: 0,
            },
            output,
            logged: 0,
            emit: None,
        };
        let mut store = Store::new(self.compiled.pre.engine(), state);
        store.limiter(|s| &mut s.limits);
        // Instantiation (and the warm-up export) run under the same limits as a call.
        self.arm(&mut store)?;
        Ok(store)
    }

    /// A call's limits, before each call: its deadline and, if metered, its fuel.
    fn arm(&self, store: &mut Store<State>) -> Result<(), Error> {
        store.set_epoch_deadline(self.deadline_ticks());
        if self.fuel > 0 {
            store.set_fuel(self.fuel).map_err(|e| self.failed(format!("cannot set its fuel: {e}")))?;
        }
        Ok(())
    }

    fn deadline_ticks(&self) -> u64 {
        (self.timeout.as_millis() / TICK.as_millis()).max(1) as u64 + 1
    }

    fn failed(&self, message: String) -> Error {
        Error::PluginFailed { plugin: self.name.clone(), message }
    }

    /// A trap as the client sees it: the cause in one line. The wasm backtrace, and whatever
    /// the plugin printed (a Rust panic's message goes to stderr), are in the server's log.
    fn trapped(&self, e: wasmtime::Error) -> Error {
        tracing::warn!(plugin = %self.name, "plugin trapped: {e:?}");
        let root = e.root_cause().to_string();
        let message = match e.downcast_ref::<wasmtime::Trap>() {
            Some(wasmtime::Trap::Interrupt) => {
                format!("exceeded its time limit of {} ms", self.timeout.as_millis())
            }
            Some(wasmtime::Trap::OutOfFuel) => {
                format!("exceeded its fuel of {} instructions (plugin.fuel)", self.fuel)
            }
            _ if e.downcast_ref::<LimitExceeded>().is_some() => root,
            _ if root.contains("count too high") => format!(
                "{root} (a plugin may create {MAX_INSTANCES} core instances, {MAX_TABLES} tables, {MAX_MEMORIES} memories)"
            ),
            Some(trap) => format!("{trap} (details in the server log)"),
            None => format!("trapped: {root}"),
        };
        self.failed(message)
    }

    /// A trap in a call that was handed `input_bytes` of the client's data. Running out of
    /// memory on an input of at least an eighth of the memory limit is put down to the
    /// input's size (413: the client can send less); any other trap is the plugin's (500).
    fn trapped_on(&self, e: wasmtime::Error, input_bytes: usize) -> Error {
        let out_of_memory = e.downcast_ref::<LimitExceeded>().is_some_and(|l| l.memory);
        let error = self.trapped(e);
        if out_of_memory && input_bytes >= self.memory_limit / 8 {
            return Error::InputTooLarge(format!(
                "plugin '{}' ran out of its memory limit of {} MiB on {input_bytes} bytes of input: send less in \
                 one request ([plugin] memory_limit_mib raises the limit; [limits] refuses such inputs before \
                 the plugin runs)",
                self.name,
                self.memory_limit >> 20
            ));
        }
        error
    }

    fn refused(&self, e: wit::PluginError) -> Error {
        match e {
            wit::PluginError::InvalidInput(message) => {
                Error::PluginInput { plugin: self.name.clone(), message }
            }
            wit::PluginError::Internal(message) => self.failed(message),
        }
    }

    /// Tensors a plugin returns must be well-formed, like a client's, and within its
    /// output limit.
    fn checked(&self, call: &str, tensors: Vec<wit::Tensor>) -> Result<Vec<Tensor>, Error> {
        let bytes: usize = tensors.iter().map(|t| t.data.len()).sum();
        if bytes > self.output_limit {
            return Err(self.failed(format!(
                "{call} returned {} MiB of tensor data, over its limit of {} MiB (plugin.max_output_mib)",
                bytes.div_ceil(1 << 20),
                self.output_limit >> 20
            )));
        }
        tensors
            .into_iter()
            .map(|t| {
                let t = from_wit(t);
                t.validate().map_err(|e| self.failed(format!("{call} returned a malformed tensor: {e}")))?;
                Ok(t)
            })
            .collect()
    }
}
