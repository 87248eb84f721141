//! host: the plugin engine: compiling components (a cache on disk, and one compiled copy
//! shared by models whose plugins hold the same bytes), the linker, the deadline clock.

use super::*;

/// How often the deadline clock ticks.
pub(super) const TICK: Duration = Duration::from_millis(10);

/// The optional export of the `model-plugin-with-warm-up` world, and its function.
pub(super) const WARM: &str = "wasmserve:plugin/warm@0.1.0";
pub(super) const WARM_UP: &str = "warm-up";

/// Compiles plugins and holds what every instance shares: the engine and the linker.
pub struct PluginHost {
    pub(super) engine: Engine,
    pub(super) linker: Linker<State>,
    /// For plugins with `fuel`: an engine that meters instructions. Made on first use, as
    /// metering slows every plugin compiled for it.
    pub(super) fueled: std::sync::OnceLock<anyhow::Result<(Engine, Linker<State>)>>,
    pub(super) cache: Option<PathBuf>,
    /// The plugins compiled and still held by a loaded model, by the sha256 of their bytes
    /// and whether they meter fuel: models whose plugin files hold the same bytes share one.
    pub(super) compiled: Mutex<Held>,
}

/// Compiled plugins by whether they meter fuel and the sha256 of their bytes.
type Held = std::collections::HashMap<(bool, [u8; 32]), std::sync::Weak<Compiled>>;

/// A compiled plugin's world: what it exports.
pub(super) enum Pre {
    /// `model-plugin`: preprocess and postprocess around the host's graph run.
    Model(bindings::ModelPluginPre<State>),
    /// `generator-plugin`: a generation's whole loop.
    Generator(generator::GeneratorPluginPre<State>),
}

impl Pre {
    pub(super) fn instance_pre(&self) -> &wasmtime::component::InstancePre<State> {
        match self {
            Pre::Model(pre) => pre.instance_pre(),
            Pre::Generator(pre) => pre.instance_pre(),
        }
    }

    pub(super) fn engine(&self) -> &Engine {
        self.instance_pre().engine()
    }

    /// Instantiate in `store`: the exports of its world.
    pub(super) fn instantiate(&self, store: &mut Store<State>) -> wasmtime::Result<Exports> {
        Ok(match self {
            Pre::Model(pre) => Exports::Model(pre.instantiate(store)?),
            Pre::Generator(pre) => Exports::Generator(pre.instantiate(store)?),
        })
    }

    /// The exports of its world in `instance`, made in `store` already.
    pub(super) fn exports(
        &self,
        store: &mut Store<State>,
        instance: &wasmtime::component::Instance,
    ) -> wasmtime::Result<Exports> {
        Ok(match self {
            Pre::Model(_) => Exports::Model(bindings::ModelPlugin::new(store, instance)?),
            Pre::Generator(_) => Exports::Generator(generator::GeneratorPlugin::new(store, instance)?),
        })
    }
}

/// An instance's exports, by its world.
pub(super) enum Exports {
    Model(bindings::ModelPlugin),
    Generator(generator::GeneratorPlugin),
}

/// A plugin compiled and linked: its code is in memory once, however many loaded models run
/// it, and a model whose plugin another loaded model already runs compiles nothing.
pub(super) struct Compiled {
    pub(super) pre: Pre,
    pub(super) warm_up: Option<ComponentExportIndex>,
    /// The size of its code in memory.
    pub(super) code_bytes: u64,
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
    pub(super) fn engine(cache: Option<&Path>, fuel: bool) -> anyhow::Result<(Engine, Linker<State>)> {
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
        generator::add_to_linker(&mut linker)?;
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
        let (file, bytes) = match &config.file {
            Some(file) => {
                let file = dir.join(file);
                let bytes =
                    std::fs::read(&file).with_context(|| format!("cannot read plugin {}", file.display()))?;
                (file, std::borrow::Cow::Owned(bytes))
            }
            None => {
                (PathBuf::from("(built-in text plugin)"), std::borrow::Cow::Borrowed(super::BUILTIN_TEXT))
            }
        };
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
            env: config.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        })
    }

    /// Compile `bytes`, the plugin at `file`, for the engine that meters `fuel` or not, and
    /// link it to the host's imports.
    pub(super) fn compile(&self, file: &Path, bytes: &[u8], fuel: u64) -> anyhow::Result<Compiled> {
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
        // A model plugin (pre- and postprocess), else a generator (generate).
        let pre = match bindings::ModelPluginPre::new(instance_pre.clone()) {
            Ok(pre) => Pre::Model(pre),
            Err(model) => match generator::GeneratorPluginPre::new(instance_pre) {
                Ok(pre) => Pre::Generator(pre),
                Err(_) => {
                    return Err(anyhow::Error::from(model)).with_context(|| {
                        format!(
                            "plugin {} does not export the wasmserve:plugin world: neither model-plugin's \
                             preprocess and postprocess, nor generator-plugin's generate",
                            file.display()
                        )
                    });
                }
            },
        };
        let image = component.image_range();
        let code_bytes = (image.end as usize).saturating_sub(image.start as usize) as u64;
        let warm_up = component
            .get_export_index(None, WARM)
            .and_then(|warm| component.get_export_index(Some(&warm), WARM_UP));
        Ok(Compiled { pre, warm_up, code_bytes })
    }
}
