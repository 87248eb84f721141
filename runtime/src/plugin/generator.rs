//! generator: a generative model's plugin (the `generator-plugin` world): one call runs a
//! whole generation, its text handed out through the `emit` import as it is produced.

use super::*;
use crate::infer::Watch;
use std::sync::Arc;
use std::sync::atomic::Ordering;

// The generation types are the world's (documented in wit/plugin.wit).
#[allow(missing_docs)]
mod bindings {
    wasmtime::component::bindgen!({
        world: "generator-plugin",
        path: "../wit",
        with: {
            "wasmserve:plugin/types": super::super::bindings::wasmserve::plugin::types,
            "wasi:nn": super::super::bindings::wasi::nn,
        },
    });
}

pub use bindings::wasmserve::plugin::generation::{
    FinishReason, GenerationEnd, GenerationRequest, Message, Prompt,
};
pub(super) use bindings::{GeneratorPlugin, GeneratorPluginPre};

/// Link the `generation` interface (its `emit`) for the plugins that import it.
pub(super) fn add_to_linker(linker: &mut Linker<State>) -> anyhow::Result<()> {
    bindings::wasmserve::plugin::generation::add_to_linker::<State, wasmtime::component::HasSelf<State>>(
        linker,
        |state| state,
    )?;
    Ok(())
}

impl bindings::wasmserve::plugin::generation::Host for State {
    fn emit(&mut self, text: String) -> bool {
        match &mut self.emit {
            Some(emit) => emit(text),
            None => false,
        }
    }
}

impl Instance<'_> {
    /// Run one generation: `emit` gets its text as the plugin produces it (false back: the
    /// client has gone); `watch` counts its steps and tells its sequences when to stop.
    /// The plugin's deadline holds for each step, not for the whole generation: past its
    /// timeout the plugin traps only if it ran no step meanwhile.
    pub fn generate(
        &mut self,
        request: &GenerationRequest,
        emit: Box<dyn FnMut(String) -> bool + Send>,
        watch: Arc<Watch>,
    ) -> Result<GenerationEnd, Error> {
        let plugin = self.plugin;
        let live = self.live.as_mut().expect("an instance is live until dropped");
        let host::Exports::Generator(bindings) = &live.bindings else {
            return Err(plugin.failed(
                "it is a model plugin (preprocess, postprocess): it answers tensors, not chat or completions"
                    .into(),
            ));
        };
        plugin.arm(&mut live.store)?;
        live.store.data_mut().emit = Some(emit);
        let ticks = plugin.deadline_ticks();
        let mut seen = watch.steps.load(Ordering::Relaxed);
        let stepping = watch.clone();
        live.store.epoch_deadline_callback(move |_| {
            let steps = stepping.steps.load(Ordering::Relaxed);
            if steps == seen {
                return Err(wasmtime::Trap::Interrupt.into());
            }
            seen = steps;
            Ok(wasmtime::UpdateDeadline::Continue(ticks))
        });
        let result = crate::infer::watching(watch, || bindings.call_generate(&mut live.store, request));
        live.store.epoch_deadline_trap();
        live.store.data_mut().emit = None;
        match result {
            Ok(answer) => answer.map_err(|e| plugin.refused(e)),
            Err(trap) => {
                self.reusable = false;
                Err(plugin.trapped(trap))
            }
        }
    }
}
