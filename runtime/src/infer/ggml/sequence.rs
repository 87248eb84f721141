//! sequence: one generation's sequence, as a wasi-nn execution context: `compute` feeds it
//! tokens and returns the logits of the last one; dropped, it frees its slot.

use super::super::generation::Watch;
use super::engine::{Engine, Message, Step};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use wasmtime_wasi_nn::Tensor;
use wasmtime_wasi_nn::backend::{BackendError, BackendExecutionContext, Id, NamedTensor};
use wasmtime_wasi_nn::wit::TensorType;

/// The input a step takes and the output it gives.
const TOKENS: &str = "tokens";
const LOGITS: &str = "logits";

/// One sequence of a generative model: a slot of its cache, and where the next token goes.
pub(super) struct Sequence {
    engine: Arc<Engine>,
    /// Its handle: the engine maps it to a slot of the cache.
    id: u64,
    /// Tokens in the cache so far.
    position: u32,
    /// The generation's watch: its client gone, the next step fails; each step is counted.
    watch: Option<Arc<Watch>>,
    /// For the `set-input`/`get-output` style of calls.
    input: Option<Vec<i32>>,
    output: Option<Tensor>,
}

impl Sequence {
    /// A new, empty sequence; an error when every slot is taken.
    pub(super) fn open(engine: Arc<Engine>) -> anyhow::Result<Self> {
        let id = engine.open()?;
        let watch = super::super::generation::watched();
        Ok(Self { engine, id, position: 0, watch, input: None, output: None })
    }

    /// Feed `tokens`; the logits of the last one.
    fn step(&mut self, tokens: Vec<i32>) -> anyhow::Result<Tensor> {
        if let Some(watch) = &self.watch {
            anyhow::ensure!(!watch.is_gone(), "cancelled: the client has gone");
            watch.steps.fetch_add(1, Ordering::Relaxed);
        }
        anyhow::ensure!(!tokens.is_empty(), "a step feeds at least one token");
        let vocabulary = self.engine.vocabulary;
        if let Some(bad) = tokens.iter().find(|&&t| t < 0 || t as usize >= vocabulary) {
            anyhow::bail!("token {bad} is not in the vocabulary of {vocabulary} tokens");
        }
        let context = self.engine.context();
        let after = u64::from(self.position) + tokens.len() as u64;
        anyhow::ensure!(
            after <= u64::from(context),
            "the context is full: {} tokens held, {} more would pass its {context}",
            self.position,
            tokens.len()
        );
        let asked = std::time::Instant::now();
        let (reply, answer) = crossbeam_channel::bounded(1);
        let fed = tokens.len() as u32;
        self.engine.send(Message::Step(Step {
            sequence: self.id,
            position: self.position,
            tokens,
            reply,
        }))?;
        let logits =
            answer.recv().map_err(|_| anyhow::anyhow!("the model stopped"))?.map_err(anyhow::Error::msg)?;
        if let Some(watch) = &self.watch {
            watch.waited_nanos.fetch_add(asked.elapsed().as_nanos() as u64, Ordering::Relaxed);
        }
        self.position += fed;
        Ok(Tensor::new(vec![(logits.len() / 4) as u32], TensorType::Fp32, logits))
    }
}

/// The tokens of a `tokens` tensor: I32 (or I64), one dimension.
fn tokens(tensor: &Tensor) -> anyhow::Result<Vec<i32>> {
    match tensor.ty {
        TensorType::I32 => Ok(bytemuck::pod_collect_to_vec::<u8, i32>(&tensor.data)),
        TensorType::I64 => bytemuck::pod_collect_to_vec::<u8, i64>(&tensor.data)
            .into_iter()
            .map(|t| i32::try_from(t).map_err(|_| anyhow::anyhow!("token {t} is out of range")))
            .collect(),
        other => anyhow::bail!("`{TOKENS}` must be I32 (or I64), not {other:?}"),
    }
}

fn named(id: &Id, name: &str) -> Result<(), BackendError> {
    match id {
        Id::Name(n) if n == name => Ok(()),
        Id::Index(0) => Ok(()),
        other => {
            Err(super::super::nn_error(anyhow::anyhow!("a GGUF graph has only `{name}` here, not {other:?}")))
        }
    }
}

impl BackendExecutionContext for Sequence {
    fn set_input(&mut self, id: Id, tensor: &Tensor) -> Result<(), BackendError> {
        named(&id, TOKENS)?;
        self.input = Some(tokens(tensor).map_err(super::super::nn_error)?);
        Ok(())
    }

    fn get_output(&mut self, id: Id) -> Result<Tensor, BackendError> {
        named(&id, LOGITS)?;
        self.output
            .clone()
            .ok_or_else(|| super::super::nn_error(anyhow::anyhow!("no logits yet: call compute first")))
    }

    fn compute(
        &mut self,
        inputs: Option<Vec<NamedTensor>>,
    ) -> Result<Option<Vec<NamedTensor>>, BackendError> {
        let nn = super::super::nn_error;
        match inputs {
            Some(inputs) => {
                let [input] = <[NamedTensor; 1]>::try_from(inputs)
                    .map_err(|_| nn(anyhow::anyhow!("a step takes one input, `{TOKENS}`")))?;
                if input.name != TOKENS {
                    return Err(nn(anyhow::anyhow!("a step takes `{TOKENS}`, not `{}`", input.name)));
                }
                let logits = self.step(tokens(&input.tensor).map_err(nn)?).map_err(nn)?;
                Ok(Some(vec![NamedTensor { name: LOGITS.to_string(), tensor: logits }]))
            }
            None => {
                let input = self.input.take().ok_or_else(|| nn(anyhow::anyhow!("set `{TOKENS}` first")))?;
                self.output = Some(self.step(input).map_err(nn)?);
                Ok(None)
            }
        }
    }
}

impl Drop for Sequence {
    fn drop(&mut self) {
        self.engine.close(self.id);
    }
}
