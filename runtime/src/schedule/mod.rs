//! schedule: where a request's model work runs, and the order of its steps.
//!
//! Plugin calls and inference are CPU-bound and synchronous, so they never run on the threads
//! that accept connections and answer health checks. Each model has `executions` threads of
//! its own ([`Executions`]): without `[batching]` each runs whole requests (preprocess, graph,
//! postprocess), so a request crosses threads twice, from its connection's thread to one of
//! these and back; the graph always runs from the same few threads, which ONNX Runtime likes.
//! With `[batching]`, pre- and postprocess run on tokio's blocking pool and graph runs are
//! joined on the batcher's execution threads (see [`batch`]): more hand-offs, bought for
//! bigger graph runs.
//! Each model runs at most `max_in_flight` requests at once; up to `max_queue` more wait for
//! a slot (for at most their timeout), and beyond that a request is refused at once, so a
//! burst never queues without bound.
//!
//! A request whose client went away (its future dropped: the connection closed, an HTTP/2
//! stream or gRPC call reset) or whose timeout passed while it waited is dropped wherever it
//! waits, in the slot queue, a model thread's queue or a forming batch ([`Ticket`]), and
//! neither its plugin nor its graph runs.
//! `RUST_LOG=wasmserve::schedule=debug` logs each request's time in every stage.

pub mod batch;
mod generate;
mod pad;

pub use generate::{Generated, generate, warm_up_generation};

use crate::config::{Batching, ModelConfig, Scheduling, TensorSpec};
use crate::error::Error;
use crate::infer;
use crate::observe::Timings;
use crate::plugin::Plugin;
use crate::tensor::Tensor;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// A model's slots: how many of its requests run, and how many wait.
pub struct Slots {
    running: Arc<Semaphore>,
    max_in_flight: usize,
    waiting: AtomicUsize,
    max_queue: usize,
    timeout: Option<Duration>,
}

impl Slots {
    /// Slots as `[scheduling]` says (0 in-flight: one per CPU core or execution, and with
    /// `batching` enough requests to fill every execution's batch and the next one).
    pub fn new(config: &Scheduling, batching: Option<&Batching>, executions: usize) -> Self {
        let cores = crate::config::cores();
        let max_in_flight = match (config.max_in_flight, batching) {
            (0, Some(b)) => cores.max(b.max_batch_size * (executions + 1)),
            (0, None) => cores.max(executions),
            (n, _) => n,
        };
        Self {
            running: Arc::new(Semaphore::new(max_in_flight)),
            max_in_flight,
            waiting: AtomicUsize::new(0),
            max_queue: config.max_queue,
            timeout: (config.queue_timeout_ms > 0).then(|| Duration::from_millis(config.queue_timeout_ms)),
        }
    }

    /// Requests waiting for a slot now.
    pub fn queued(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// How many of the model's requests run at once.
    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight
    }

    /// How long a request may wait before it runs: its `timeout` parameter (µs), else the
    /// model's queue timeout.
    fn timeout(&self, params: &[(String, String)]) -> Option<Duration> {
        params
            .iter()
            .find(|(k, _)| k == "timeout")
            .and_then(|(_, v)| v.parse::<u64>().ok())
            .filter(|&us| us > 0)
            .map(Duration::from_micros)
            .or(self.timeout)
    }

    /// A slot, once one is free: refused at once when the queue is full, or after waiting
    /// longer than the request's `timeout` parameter (µs) or the model's queue timeout.
    async fn acquire(
        &self,
        model: &str,
        timeout: Option<Duration>,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, Error> {
        if let Ok(permit) = self.running.clone().try_acquire_owned() {
            return Ok(permit);
        }
        if self.waiting.fetch_add(1, Ordering::SeqCst) >= self.max_queue {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(Error::Overloaded(format!(
                "model '{model}' is busy: {} running (max_in_flight) and {} waiting (max_queue); try again later",
                self.max_in_flight, self.max_queue
            )));
        }
        // Leaves the queue however the wait ends, the client going away included.
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        let _waiting = Waiting(&self.waiting);
        let permit = self.running.clone().acquire_owned();
        match timeout {
            Some(limit) => tokio::time::timeout(limit, permit).await.map_err(|_| {
                Error::Overloaded(format!(
                    "model '{model}' is busy: no slot free within the timeout of {} ms; try again later",
                    limit.as_millis()
                ))
            })?,
            None => permit.await,
        }
        .map_err(|_| Error::Internal("the model's slots are closed".into()))
    }
}

/// A request's standing while its work waits: abandoned once its client has gone (the
/// request's future was dropped), late once its deadline (the `timeout` parameter, else the
/// model's `queue_timeout_ms`) has passed. Checked before each step that costs: the plugin's
/// preprocess, the graph, a place in a batch.
#[derive(Clone, Default)]
pub struct Ticket {
    abandoned: Arc<std::sync::atomic::AtomicBool>,
    deadline: Option<Instant>,
}

impl Ticket {
    /// Whether the request should still be worked on: an error saying why not otherwise.
    pub(crate) fn check(&self, model: &str) -> Result<(), Error> {
        if self.abandoned.load(Ordering::Acquire) {
            return Err(Error::Cancelled(format!("the client of this request to '{model}' went away")));
        }
        match self.deadline {
            Some(deadline) if Instant::now() > deadline => Err(Error::Overloaded(format!(
                "model '{model}' is busy: the request waited past its timeout before it could run; try again later"
            ))),
            _ => Ok(()),
        }
    }
}

/// Marks its ticket abandoned when dropped before [`Abandon::finished`]: the request's
/// future was dropped while its work waited or ran.
struct Abandon(Option<Ticket>);

impl Abandon {
    fn finished(mut self) {
        self.0 = None;
    }
}

impl Drop for Abandon {
    fn drop(&mut self) {
        if let Some(ticket) = &self.0 {
            ticket.abandoned.store(true, Ordering::Release);
        }
    }
}

/// A loaded model as schedule runs its requests: its plugin and graph, its slots, and the
/// threads its work runs on. The repository's model holds one; schedule knows nothing else
/// of it.
pub struct Runner {
    name: String,
    /// What the plugin must return: the config's `[[outputs]]`.
    outputs: Vec<TensorSpec>,
    graph: wasmtime_wasi_nn::Graph,
    /// The compiled plugin.
    pub plugin: Plugin,
    /// How many of its requests run and wait.
    pub slots: Slots,
    executions: Executions,
}

impl Runner {
    /// A generative model's engine: its context, slots and counters; none for other models.
    pub fn generator(&self) -> Option<&infer::Generator> {
        match &self.executions {
            Executions::Generate(generator) => Some(generator),
            _ => None,
        }
    }
}

impl Runner {
    /// Slots and execution threads for the model `name` with `config`, over its loaded
    /// `graph` and compiled `plugin`.
    /// A generative model's `generator`: its slots are the engine's sequences, and its
    /// plugin runs each generation on tokio's blocking pool.
    pub fn start(
        name: &str,
        config: &ModelConfig,
        graph: wasmtime_wasi_nn::Graph,
        generator: Option<infer::Generator>,
        plugin: Plugin,
    ) -> anyhow::Result<Self> {
        let executions = config.executions();
        let (slots, executions) = match generator {
            Some(generator) => {
                let scheduling = Scheduling { max_in_flight: generator.slots, ..config.scheduling.clone() };
                (Slots::new(&scheduling, None, 1), Executions::Generate(generator))
            }
            None => (
                Slots::new(&config.scheduling, config.batching.as_ref(), executions),
                Executions::start(name, &graph, config.batching.as_ref(), executions)?,
            ),
        };
        Ok(Self { name: name.to_string(), outputs: config.outputs.clone(), slots, executions, graph, plugin })
    }
}

/// Where a model's requests run.
enum Executions {
    /// Without `[batching]`: threads that each run whole requests.
    Whole(Workers),
    /// With `[batching]`: requests on tokio's blocking pool, graph runs joined by the batcher.
    Batched(batch::Batcher),
    /// A generative model: generations on tokio's blocking pool, their steps joined by the
    /// engine (see [`generate`]).
    Generate(infer::Generator),
}

impl Executions {
    /// Start `executions` threads for `model`'s requests (with `batching`: for its batches).
    fn start(
        model: &str,
        graph: &wasmtime_wasi_nn::Graph,
        batching: Option<&Batching>,
        executions: usize,
    ) -> anyhow::Result<Self> {
        Ok(match batching {
            Some(batching) => {
                Self::Batched(batch::Batcher::start(model, graph.clone(), batching, executions)?)
            }
            None => Self::Whole(Workers::start(model, executions)?),
        })
    }

    /// Run the graph on one request's inputs: on this thread, or with batching in a batch
    /// (left out of it if `ticket` is abandoned or late by the time the batch forms).
    fn infer(&self, model: &Runner, inputs: Vec<Tensor>, ticket: &Ticket) -> Result<batch::Answer, Error> {
        match self {
            Self::Batched(batcher) => batcher.infer(&model.name, inputs, ticket.clone()),
            Self::Generate(_) => Err(not_tensors(&model.name)),
            Self::Whole(_) => {
                let started = Instant::now();
                let batch_rows = batch::counted_rows(&inputs);
                let outputs = infer::run(&model.graph, inputs)
                    .map_err(|e| Error::Inference { model: model.name.clone(), message: format!("{e:#}") })?;
                Ok(batch::Answer {
                    outputs,
                    compute: started.elapsed(),
                    batch_rows,
                    batch_tokens: 0,
                    first: true,
                })
            }
        }
    }
}

/// A model's request threads: each takes the next queued request and runs it whole. They end
/// when the last handle is dropped.
#[derive(Clone)]
struct Workers {
    queue: crossbeam_channel::Sender<Work>,
}

type Work = Box<dyn FnOnce() + Send>;

impl Workers {
    fn start(model: &str, threads: usize) -> anyhow::Result<Self> {
        let (queue, work) = crossbeam_channel::unbounded::<Work>();
        for i in 0..threads.max(1) {
            let (work, name) = (work.clone(), model.to_string());
            std::thread::Builder::new().name(format!("exec-{model}-{i}")).spawn(move || {
                let _state = infer::thread_state();
                for job in work {
                    // A panic fails its own request (its reply is dropped), never the thread.
                    if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)) {
                        let message = crate::error::panic_message(&*panic);
                        tracing::error!(model = %name, "request handling panicked: {message}");
                    }
                }
            })?;
        }
        Ok(Self { queue })
    }

    /// Run `work` on one of the threads; its answer comes back through the future.
    async fn run<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> Result<T, Error> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job: Work = Box::new(move || drop(reply.send(work())));
        self.queue.send(job).map_err(|_| Error::Internal("the model's threads have stopped".into()))?;
        answer.await.map_err(|_| Error::Internal("request handling panicked (see the server log)".into()))
    }
}

/// Run one request through `model`'s runner: preprocess (plugin) -> infer (graph) -> postprocess (plugin).
pub async fn run(
    model: Arc<Runner>,
    inputs: Vec<Tensor>,
    params: Vec<(String, String)>,
) -> Result<(Vec<Tensor>, Timings), Error> {
    let queued = Instant::now();
    let timeout = model.slots.timeout(&params);
    let ticket = Ticket { abandoned: Default::default(), deadline: timeout.map(|t| queued + t) };
    let abandon = Abandon(Some(ticket.clone()));
    let slot = model.slots.acquire(&model.name, timeout).await?;
    let span = tracing::Span::current();
    let workers = match &model.executions {
        Executions::Whole(workers) => Some(workers.clone()),
        Executions::Batched(_) => None,
        Executions::Generate(_) => return Err(not_tensors(&model.name)),
    };
    let work = move || {
        let _slot = slot;
        let _request = span.enter();
        let queue = queued.elapsed();
        run_blocking(&model, inputs, &params, &ticket)
            .map(|(outputs, timings)| (outputs, Timings { queue: queue + timings.queue, ..timings }))
    };
    let answer = match workers {
        Some(workers) => workers.run(work).await?,
        None => tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| Error::Internal(format!("request handling panicked: {e}")))?,
    };
    abandon.finished();
    answer
}

/// The steps of one request, on the calling thread (start-up warm-up uses it directly, with
/// a default `ticket`), each started only while `ticket` says the request is still wanted.
pub fn run_blocking(
    model: &Runner,
    inputs: Vec<Tensor>,
    params: &Vec<(String, String)>,
    ticket: &Ticket,
) -> Result<(Vec<Tensor>, Timings), Error> {
    ticket.check(&model.name)?;
    let started = Instant::now();
    let mut instance = model.plugin.instantiate()?;
    let prepared = tracing::debug_span!("preprocess").in_scope(|| instance.preprocess(inputs, params))?;
    let preprocessed = Instant::now();
    ticket.check(&model.name)?;
    let answer = tracing::debug_span!("infer")
        .in_scope(|| model.executions.infer(model, prepared.graph_inputs, ticket))?;
    let batch_wait = preprocessed.elapsed().saturating_sub(answer.compute);
    let inferred = Instant::now();
    let outputs = tracing::debug_span!("postprocess")
        .in_scope(|| instance.postprocess(answer.outputs, prepared.context, params))?;
    check_outputs(model, &outputs)?;
    let timings = Timings {
        queue: batch_wait,
        preprocess: preprocessed - started,
        compute: answer.compute,
        postprocess: inferred.elapsed(),
        batch_rows: answer.batch_rows,
        batch_tokens: answer.batch_tokens,
        graph_runs: u64::from(answer.first),
    };
    tracing::debug!(
        model = %model.name,
        batch_wait_us = timings.queue.as_micros() as u64,
        preprocess_us = timings.preprocess.as_micros() as u64,
        infer_us = timings.compute.as_micros() as u64,
        postprocess_us = timings.postprocess.as_micros() as u64,
        "request done"
    );
    Ok((outputs, timings))
}

/// A tensor request to a generative model: refused, with where to go instead.
pub(crate) fn not_tensors(model: &str) -> Error {
    Error::bad_request(format!(
        "model '{model}' generates text: send chat or completion requests (POST /v1/chat/completions, \
         /v1/completions), not tensors"
    ))
}

/// The plugin must return what the model's config promises clients.
fn check_outputs(model: &Runner, outputs: &[Tensor]) -> Result<(), Error> {
    let failed = |message: String| Error::PluginFailed { plugin: model.name.clone(), message };
    for spec in &model.outputs {
        let output = outputs
            .iter()
            .find(|o| o.name == spec.name)
            .ok_or_else(|| failed(format!("postprocess returned no '{}' output", spec.name)))?;
        if output.datatype != spec.datatype {
            return Err(failed(format!(
                "postprocess returned '{}' as {}, the config declares {}",
                spec.name, output.datatype, spec.datatype
            )));
        }
    }
    Ok(())
}
