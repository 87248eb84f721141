//! instance: one plugin instance serving one request: its preprocess and postprocess
//! calls, and its way back to the pool.

use super::*;

/// One instance, serving one request's pre- and post-processing; back to the pool when
/// dropped, unless it failed.
pub struct Instance<'p> {
    pub(super) plugin: &'p Plugin,
    pub(super) live: Option<Live>,
    /// Cleared when a call traps: the instance's state is no longer trusted.
    pub(super) reusable: bool,
}

/// What preprocess produced.
pub struct Prepared {
    /// The graph's inputs.
    pub graph_inputs: Vec<Tensor>,
    /// Handed back to postprocess.
    pub context: Vec<Tensor>,
}

impl Instance<'_> {
    /// Run `call` on the instance within the plugin's deadline; a trap makes the instance
    /// unfit for reuse.
    /// Run `call` on the live instance; `input_bytes`: the client's data it is handed.
    pub(super) fn call<T>(
        &mut self,
        input_bytes: usize,
        call: impl FnOnce(
            &bindings::ModelPlugin,
            &mut Store<State>,
        ) -> wasmtime::Result<Result<T, wit::PluginError>>,
    ) -> Result<T, Error> {
        let live = self.live.as_mut().expect("an instance is live until dropped");
        let host::Exports::Model(bindings) = &live.bindings else {
            return Err(self.plugin.failed(
                "it is a generator (the generator-plugin world): it answers chat and completion requests, not tensors"
                    .into(),
            ));
        };
        self.plugin.arm(&mut live.store)?;
        match call(bindings, &mut live.store) {
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
