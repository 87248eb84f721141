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
//! only its model's data directory (read-only, at `/data`): no network, no environment,
//! no arguments. Memory is capped per instance and every call has a wall-clock deadline.
//! Its clocks tick in whole milliseconds. What it prints (stdout and stderr) goes to the
//! server's log, a line per event, in the request's span.

use crate::config::PluginConfig;
use crate::error::Error;
use crate::infer::Graphs;
use crate::tensor::{Datatype, Tensor};
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
use bindings::wasmserve::plugin::types as wit;

/// How often the deadline clock ticks.
const TICK: Duration = Duration::from_millis(10);

/// Where a plugin sees its data directory.
pub const DATA_DIR: &str = "/data";

/// What one instance may print; a write past it fails (a Rust plugin's `println!` panics).
const OUTPUT_LIMIT: usize = 1 << 20;

/// A reused instance that has printed this much is retired, so it never hits the limit.
const OUTPUT_RETIRE: usize = OUTPUT_LIMIT / 2;

/// Most idle instances a plugin keeps for reuse.
const MAX_IDLE: usize = 64;

/// Most core instances, tables and linear memories one plugin instance may create. A Rust
/// component has 3 instances, 2 tables and 1 memory; other toolchains add adapters. Memory
/// and table elements are capped in total, whatever the count.
const MAX_INSTANCES: usize = 64;
const MAX_TABLES: usize = 64;
const MAX_MEMORIES: usize = 16;

/// The resolution of the clocks a plugin reads. Pre- and post-processing have no use for
/// finer time, and fine clocks are what timing side channels are measured with.
const CLOCK_RESOLUTION: Duration = Duration::from_millis(1);

/// Wall-clock time in whole milliseconds.
struct CoarseWallClock;

impl wasmtime_wasi::HostWallClock for CoarseWallClock {
    fn resolution(&self) -> Duration {
        CLOCK_RESOLUTION
    }

    fn now(&self) -> Duration {
        let since_epoch =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        Duration::from_millis(since_epoch.as_millis() as u64)
    }
}

/// Monotonic time since the instance was made, in whole milliseconds.
struct CoarseMonotonicClock(std::time::Instant);

impl wasmtime_wasi::HostMonotonicClock for CoarseMonotonicClock {
    fn resolution(&self) -> u64 {
        CLOCK_RESOLUTION.as_nanos() as u64
    }

    fn now(&self) -> u64 {
        let step = CLOCK_RESOLUTION.as_nanos() as u64;
        self.0.elapsed().as_nanos() as u64 / step * step
    }
}

/// The optional export of the `model-plugin-with-warm-up` world, and its function.
const WARM: &str = "wasmserve:plugin/warm@0.1.0";
const WARM_UP: &str = "warm-up";

/// Compiles plugins and holds what every instance shares: the engine and the linker.
pub struct PluginHost {
    engine: Engine,
    linker: Linker<State>,
    /// For plugins with `fuel`: an engine that meters instructions. Made on first use, as
    /// metering slows every plugin compiled for it.
    fueled: std::sync::OnceLock<anyhow::Result<(Engine, Linker<State>)>>,
    cache: Option<PathBuf>,
    /// The plugins compiled and still held by a loaded model, by the sha256 of their bytes
    /// and whether they meter fuel: models whose plugin files hold the same bytes share one.
    compiled: Mutex<Held>,
}

/// Compiled plugins by whether they meter fuel and the sha256 of their bytes.
type Held = std::collections::HashMap<(bool, [u8; 32]), std::sync::Weak<Compiled>>;

/// A plugin compiled and linked: its code is in memory once, however many loaded models run
/// it, and a model whose plugin another loaded model already runs compiles nothing.
struct Compiled {
    pre: bindings::ModelPluginPre<State>,
    warm_up: Option<ComponentExportIndex>,
    /// The size of its code in memory.
    code_bytes: u64,
}

impl PluginHost {
    /// An engine with deadlines (epoch interruption) and the WASI + wasi-nn imports.
    /// With `cache`, compiled plugins are kept in that directory, keyed by their bytes and
    /// the engine's settings, so a restart does not compile them again.
    pub fn new(cache: Option<&Path>) -> anyhow::Result<Self> {
        let (engine, linker) = Self::engine(cache, false)?;
        Ok(Self {
            engine,
            linker,
            fueled: std::sync::OnceLock::new(),
            cache: cache.map(Path::to_path_buf),
            compiled: Default::default(),
        })
    }

    /// An engine (metering fuel or not), its deadline clock and its linker.
    fn engine(cache: Option<&Path>, fuel: bool) -> anyhow::Result<(Engine, Linker<State>)> {
        let mut config = wasmtime::Config::new();
        config.wasm_component_model(true).epoch_interruption(true).consume_fuel(fuel);
        if let Some(dir) = cache {
            let mut settings = wasmtime::CacheConfig::new();
            settings.with_directory(dir);
            match wasmtime::Cache::new(settings) {
                Ok(cache) => {
                    config.cache(Some(cache));
                }
                // A read-only or missing directory costs compile time, not the start-up.
                Err(e) => tracing::warn!(dir = %dir.display(), "plugin cache disabled: {e:#}"),
            }
        }
        let engine = Engine::new(&config)?;
        let ticker = engine.weak();
        std::thread::Builder::new().name("plugin-deadline-clock".into()).spawn(move || {
            while let Some(engine) = ticker.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(TICK);
            }
        })?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
        wasmtime_wasi_nn::wit::add_to_linker(&mut linker, |s: &mut State| {
            WasiNnView::new(&mut s.table, &mut s.nn)
        })?;
        Ok((engine, linker))
    }

    /// Compile and link the plugin of model `name`, or share the one a loaded model
    /// compiled from the same bytes; `dir` is the model directory.
    pub fn load(
        &self,
        name: &str,
        dir: &Path,
        config: &PluginConfig,
        graphs: Graphs,
    ) -> anyhow::Result<Plugin> {
        let file = dir.join(&config.file);
        let bytes = std::fs::read(&file).with_context(|| format!("cannot read plugin {}", file.display()))?;
        use sha2::Digest;
        let key = (config.fuel != 0, sha2::Sha256::digest(&bytes).into());
        let all = || self.compiled.lock().expect("compiled plugins lock");
        let held = |all: &Held| all.get(&key)?.upgrade();
        // (Bound first: a guard made in the match's head would be held through its arms.)
        let found = held(&all());
        let compiled = match found {
            Some(compiled) => compiled,
            None => {
                let compiled = std::sync::Arc::new(self.compile(&file, &bytes, config.fuel)?);
                let mut all = all();
                all.retain(|_, held| held.strong_count() > 0);
                // Another load of the same bytes may have finished first: one copy is kept.
                match held(&all) {
                    Some(first) => first,
                    None => {
                        all.insert(key, std::sync::Arc::downgrade(&compiled));
                        compiled
                    }
                }
            }
        };
        let data = match &config.data {
            Some(data) => {
                let data = dir.join(data);
                anyhow::ensure!(data.is_dir(), "plugin data directory {} does not exist", data.display());
                Some(data)
            }
            None => None,
        };
        Ok(Plugin {
            name: name.to_string(),
            compiled,
            data,
            memory_limit: config.memory_limit_mib << 20,
            table_limit: config.max_table_elements,
            output_limit: config.max_output_mib << 20,
            fuel: config.fuel,
            timeout: Duration::from_millis(config.timeout_ms),
            graphs,
            idle: config.reuse_instances.then(|| Mutex::new(Vec::new())),
        })
    }

    /// Compile `bytes`, the plugin at `file`, for the engine that meters `fuel` or not, and
    /// link it to the host's imports.
    fn compile(&self, file: &Path, bytes: &[u8], fuel: u64) -> anyhow::Result<Compiled> {
        let (engine, linker) = match fuel {
            0 => (&self.engine, &self.linker),
            _ => {
                let fueled = self.fueled.get_or_init(|| Self::engine(self.cache.as_deref(), true));
                let (engine, linker) = fueled.as_ref().map_err(|e| anyhow::anyhow!("{e:#}"))?;
                (engine, linker)
            }
        };
        let component = Component::new(engine, bytes)
            .map_err(anyhow::Error::from)
            .with_context(|| format!("cannot compile plugin {}", file.display()))?;
        let instance_pre = linker
            .instantiate_pre(&component)
            .map_err(anyhow::Error::from)
            .with_context(|| format!("plugin {} does not fit the wasmserve:plugin world", file.display()))?;
        let pre =
            bindings::ModelPluginPre::new(instance_pre).map_err(anyhow::Error::from).with_context(|| {
                format!("plugin {} does not export the wasmserve:plugin world", file.display())
            })?;
        let image = component.image_range();
        let code_bytes = (image.end as usize).saturating_sub(image.start as usize) as u64;
        let warm_up = component
            .get_export_index(None, WARM)
            .and_then(|warm| component.get_export_index(Some(&warm), WARM_UP));
        Ok(Compiled { pre, warm_up, code_bytes })
    }
}

/// What one instance holds against its limits: linear memory and table elements, each
/// counted across all its memories or tables, so a second memory is no way around the cap.
struct Limits {
    memory_limit: usize,
    table_limit: usize,
    memory: usize,
    table_elements: usize,
}

/// A limit a plugin ran into, in the words of its config; growing past one traps.
#[derive(Debug, thiserror::Error)]
#[error("exceeded its {limit}")]
struct LimitExceeded {
    limit: String,
    /// The limit was the memory limit.
    memory: bool,
}

impl ResourceLimiter for Limits {
    fn memory_growing(&mut self, current: usize, desired: usize, _: Option<usize>) -> wasmtime::Result<bool> {
        let total = self.memory - current + desired;
        if total > self.memory_limit {
            let limit = format!("memory limit of {} MiB (plugin.memory_limit_mib)", self.memory_limit >> 20);
            return Err(LimitExceeded { limit, memory: true }.into());
        }
        self.memory = total;
        Ok(true)
    }

    fn table_growing(&mut self, current: usize, desired: usize, _: Option<usize>) -> wasmtime::Result<bool> {
        let total = self.table_elements - current + desired;
        if total > self.table_limit {
            let limit = format!("table limit of {} elements (plugin.max_table_elements)", self.table_limit);
            return Err(LimitExceeded { limit, memory: false }.into());
        }
        self.table_elements = total;
        Ok(true)
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }
}

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
}

/// An instantiated plugin: its store and exports.
struct Live {
    store: Store<State>,
    bindings: bindings::ModelPlugin,
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// One instance, serving one request's pre- and post-processing; back to the pool when
/// dropped, unless it failed.
pub struct Instance<'p> {
    plugin: &'p Plugin,
    live: Option<Live>,
    /// Cleared when a call traps: the instance's state is no longer trusted.
    reusable: bool,
}

/// What preprocess produced.
pub struct Prepared {
    /// The graph's inputs.
    pub graph_inputs: Vec<Tensor>,
    /// Handed back to postprocess.
    pub context: Vec<Tensor>,
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

    /// Call the plugin's `warm-up`, if it exports one, in a fresh instance.
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
        result.map_err(|e| self.refused(e))
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

impl Instance<'_> {
    /// Run `call` on the instance within the plugin's deadline; a trap makes the instance
    /// unfit for reuse.
    /// Run `call` on the live instance; `input_bytes`: the client's data it is handed.
    fn call<T>(
        &mut self,
        input_bytes: usize,
        call: impl FnOnce(
            &bindings::ModelPlugin,
            &mut Store<State>,
        ) -> wasmtime::Result<Result<T, wit::PluginError>>,
    ) -> Result<T, Error> {
        let live = self.live.as_mut().expect("an instance is live until dropped");
        self.plugin.arm(&mut live.store)?;
        match call(&live.bindings, &mut live.store) {
            Ok(answer) => answer.map_err(|e| self.plugin.refused(e)),
            Err(trap) => {
                self.reusable = false;
                Err(self.plugin.trapped_on(trap, input_bytes))
            }
        }
    }

    /// Client tensors in, graph inputs and context out.
    pub fn preprocess(
        &mut self,
        inputs: Vec<Tensor>,
        params: &Vec<(String, String)>,
    ) -> Result<Prepared, Error> {
        let input_bytes = inputs.iter().map(|t| t.data.len()).sum();
        let inputs: Vec<wit::Tensor> = inputs.into_iter().map(to_wit).collect();
        let prepared = self.call(input_bytes, |b, store| b.call_preprocess(store, &inputs, params))?;
        Ok(Prepared {
            graph_inputs: self.plugin.checked("preprocess", prepared.graph_inputs)?,
            context: self.plugin.checked("preprocess", prepared.context)?,
        })
    }

    /// Graph outputs and context in, client tensors out.
    pub fn postprocess(
        &mut self,
        outputs: Vec<Tensor>,
        context: Vec<Tensor>,
        params: &Vec<(String, String)>,
    ) -> Result<Vec<Tensor>, Error> {
        let outputs: Vec<wit::Tensor> = outputs.into_iter().map(to_wit).collect();
        let context: Vec<wit::Tensor> = context.into_iter().map(to_wit).collect();
        let result = self.call(0, |b, store| b.call_postprocess(store, &outputs, &context, params))?;
        self.plugin.checked("postprocess", result)
    }
}

impl Drop for Instance<'_> {
    fn drop(&mut self) {
        let Some(mut live) = self.live.take() else { return };
        let state = live.store.data_mut();
        self.plugin.log_output(state);
        if self.reusable
            && state.logged < OUTPUT_RETIRE
            && let Some(idle) = &self.plugin.idle
        {
            let mut idle = idle.lock().expect("idle instances");
            if idle.len() < MAX_IDLE {
                idle.push(live);
            }
        }
    }
}

/// One list, both directions: OIP datatype <-> WIT datatype.
macro_rules! datatypes {
    ($($v:ident),*) => {
        fn to_wit_datatype(d: Datatype) -> wit::Datatype {
            match d { $(Datatype::$v => wit::Datatype::$v),* }
        }
        fn from_wit_datatype(d: wit::Datatype) -> Datatype {
            match d { $(wit::Datatype::$v => Datatype::$v),* }
        }
    };
}
datatypes!(Bool, Uint8, Uint16, Uint32, Uint64, Int8, Int16, Int32, Int64, Fp16, Bf16, Fp32, Fp64, Bytes);

fn to_wit(t: Tensor) -> wit::Tensor {
    wit::Tensor { name: t.name, datatype: to_wit_datatype(t.datatype), shape: t.shape, data: t.data }
}

fn from_wit(t: wit::Tensor) -> Tensor {
    Tensor { name: t.name, datatype: from_wit_datatype(t.datatype), shape: t.shape, data: t.data }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_count_every_memory_and_every_table_together() {
        let mut limits = Limits { memory_limit: 100 << 20, table_limit: 10, memory: 0, table_elements: 0 };
        assert!(limits.memory_growing(0, 60 << 20, None).unwrap());
        // A second memory is no way around the cap, nor is growing the first past it.
        let second = limits.memory_growing(0, 60 << 20, None).unwrap_err();
        assert_eq!(second.to_string(), "exceeded its memory limit of 100 MiB (plugin.memory_limit_mib)");
        assert!(limits.memory_growing(60 << 20, 100 << 20, None).unwrap());
        assert!(limits.memory_growing(100 << 20, (100 << 20) + 1, None).is_err());
        assert!(limits.table_growing(0, 6, None).unwrap());
        assert!(limits.table_growing(0, 4, None).unwrap());
        let table = limits.table_growing(4, 5, None).unwrap_err();
        assert_eq!(table.to_string(), "exceeded its table limit of 10 elements (plugin.max_table_elements)");
    }
}
