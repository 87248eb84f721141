//! Dynamic batching, for models with `[batching]`: graph inputs of several requests joined
//! along dimension 0, one graph run on the model's own execution threads, the outputs split
//! back. (Without it a model's requests run whole on its threads: see [`super::Executions`].)
//!
//! Graph runs stay on a model's few long-lived threads rather than on whichever request
//! thread arrives: ONNX Runtime runs a graph measurably faster from the same thread every
//! time (its intra-op pool stays warm: 2.2 ms against 2.9 ms for magika on 2 cores).
//!
//! A request's plugin preprocesses it on its own thread, then [`Batcher::infer`] queues its
//! graph inputs and waits. One thread per model forms batches: it takes the oldest waiting
//! request, adds later ones whose inputs agree in everything but dimension 0 while the batch
//! has room, and sends it when it is full, when it reaches the largest preferred size it can,
//! or when the oldest request has waited `max_queue_delay_us`. It forms a batch only when an
//! execution is free, so under load the queue grows and batches grow with it. Each of the
//! `executions` threads runs a batch on the graph and answers every request in it.
//!
//! With `[batching] pad` (text models), inputs whose dimension 1 is a length need not agree
//! in it: each request's rows are padded to the batch's longest ([`super::pad`]), a batch is
//! held to `max_batch_tokens` (rows times its longest length) as well as to its rows, and the
//! outputs in `cut` are cut back to each request's own length.

use super::pad::Padding;
use crate::config::Batching;
use crate::error::Error;
use crate::infer;
use crate::tensor::{Datatype, Tensor};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use std::collections::VecDeque;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// What a batched graph run gives each of its requests.
pub struct Answer {
    /// The request's rows of every graph output.
    pub outputs: Vec<Tensor>,
    /// How long the whole batch took on the graph.
    pub compute: Duration,
    /// Rows in the batch.
    pub batch_rows: usize,
    /// Tokens in the batch with `[batching] pad`: its rows times its longest length (0
    /// without padding).
    pub batch_tokens: usize,
    /// True for one request of each batch (the oldest), so graph runs can be counted.
    pub first: bool,
}

/// A model's batch queue and the threads that serve it.
pub struct Batcher {
    queue: Sender<Job>,
    padding: Padding,
}

/// One request's graph inputs, waiting for a batch.
struct Job {
    /// Sorted by name, so requests line up input for input.
    inputs: Vec<Tensor>,
    rows: usize,
    /// Dimension 1 of the padded inputs (0 without padding).
    length: usize,
    enqueued: Instant,
    /// Whether the request is still wanted: an abandoned or late one is answered with why
    /// and left out of the batch.
    ticket: super::Ticket,
    reply: oneshot::Sender<Result<Answer, Error>>,
}

impl Job {
    /// The job, if its request is still wanted; otherwise it is answered with why not.
    fn wanted(self, model: &str) -> Option<Self> {
        match self.ticket.check(model) {
            Ok(()) => Some(self),
            Err(e) => {
                let _ = self.reply.send(Err(e));
                None
            }
        }
    }
}

impl Job {
    /// Two jobs share a batch when their inputs agree in name, type and all but dimension 0
    /// (and dimension 1, for padded inputs).
    fn fits_with(&self, other: &Job, padding: &Padding) -> bool {
        self.inputs.len() == other.inputs.len()
            && self.inputs.iter().zip(&other.inputs).all(|(a, b)| {
                let from = if padding.pads(&a.name) { 2 } else { 1 };
                a.name == b.name
                    && a.datatype == b.datatype
                    && a.shape.len() == b.shape.len()
                    && a.shape.get(from..) == b.shape.get(from..)
            })
    }
}

impl Batcher {
    /// Start the threads of model `model`: `executions` that run its graph, and one that
    /// forms batches as `batching` says. They end when the batcher is dropped.
    pub fn start(
        model: &str,
        graph: wasmtime_wasi_nn::Graph,
        batching: &Batching,
        executions: usize,
    ) -> anyhow::Result<Self> {
        let (queue, jobs) = crossbeam_channel::unbounded();
        let (batches_tx, batches) = crossbeam_channel::unbounded::<Vec<Job>>();
        let (free_tx, free) = crossbeam_channel::unbounded();
        let padding = Padding::new(batching);
        for i in 0..executions.max(1) {
            free_tx.send(()).expect("receiver held");
            let (graph, batches, free_tx, name, padding) =
                (graph.clone(), batches.clone(), free_tx.clone(), model.to_string(), padding.clone());
            std::thread::Builder::new().name(format!("batch-{model}-{i}")).spawn(move || {
                let _state = infer::thread_state();
                for batch in batches {
                    // A backend that panics fails this batch's requests (their replies are
                    // dropped unanswered), never the thread: later batches still run.
                    let run = std::panic::AssertUnwindSafe(|| execute(&name, &graph, batch, &padding));
                    if let Err(panic) = std::panic::catch_unwind(run) {
                        let message = crate::error::panic_message(&*panic);
                        tracing::error!(model = %name, "the graph run panicked: {message}");
                    }
                    if free_tx.send(()).is_err() {
                        break;
                    }
                }
            })?;
        }
        let former = Former {
            model: model.to_string(),
            jobs,
            free,
            batches: batches_tx,
            pending: VecDeque::new(),
            max_rows: batching.max_batch_size,
            delay: Duration::from_micros(batching.max_queue_delay_us),
            preferred: batching.preferred_batch_sizes.clone(),
            padding: padding.clone(),
            max_tokens: batching.max_batch_tokens,
        };
        std::thread::Builder::new().name(format!("batcher-{model}")).spawn(move || former.run())?;
        Ok(Self { queue, padding })
    }

    /// Queue one request's graph inputs and wait (on this blocking thread) for its rows of
    /// the batch's outputs. Every input must have the same dimension 0: the request's rows.
    pub fn infer(&self, model: &str, inputs: Vec<Tensor>, ticket: super::Ticket) -> Result<Answer, Error> {
        let rows = batch_rows(model, &inputs)?;
        let length = self.padding.length(&inputs).map_err(|message| unbatchable(model, message))?;
        let mut inputs = inputs;
        inputs.sort_by(|a, b| a.name.cmp(&b.name));
        let (reply, answer) = oneshot::channel();
        let job = Job { inputs, rows, length, enqueued: Instant::now(), ticket, reply };
        self.queue.send(job).map_err(|_| Error::Internal("the batcher has stopped".into()))?;
        answer.blocking_recv().map_err(|_| Error::Inference {
            model: model.to_string(),
            message: "the graph run panicked (see the server log)".into(),
        })?
    }
}

/// The rows of a graph run that is not batched, only counted (wasmserve_batch_rows):
/// dimension 0 of the first input, if any.
pub(crate) fn counted_rows(inputs: &[Tensor]) -> usize {
    inputs.first().and_then(|t| t.shape.first()).map_or(1, |&d| d.max(0) as usize)
}

/// A plugin's graph inputs that cannot be batched, and why.
fn unbatchable(model: &str, message: String) -> Error {
    Error::PluginFailed {
        plugin: model.to_string(),
        message: format!("{message}; with [batching] every graph input is batched along dimension 0"),
    }
}

/// A request's rows: dimension 0 of its graph inputs, which must agree.
fn batch_rows(model: &str, inputs: &[Tensor]) -> Result<usize, Error> {
    {
        let unbatchable = |message: String| unbatchable(model, message);
        let rows = match inputs.first().map(|t| t.shape.first()) {
            None => return Err(unbatchable("preprocess returned no graph inputs".into())),
            Some(None) => return Err(unbatchable(format!("graph input '{}' is a scalar", inputs[0].name))),
            Some(Some(&rows)) => rows,
        };
        if let Some(t) = inputs.iter().find(|t| t.shape.first() != Some(&rows)) {
            return Err(unbatchable(format!(
                "graph inputs '{}' and '{}' differ in dimension 0 ({:?} vs {:?})",
                inputs[0].name, t.name, inputs[0].shape, t.shape
            )));
        }
        if let Some(t) = inputs.iter().find(|t| t.datatype == Datatype::Bytes) {
            return Err(unbatchable(format!("graph input '{}' is BYTES", t.name)));
        }
        Ok(rows.max(0) as usize)
    }
}

/// With padding, a request joins a batch only while at least this share of the batch's
/// tokens stay real ones (9/10): a padded token costs the graph as much as a real one
/// (bench/text.py, real sentences at 16 clients: 3/4 gave 1.12x the unbatched throughput,
/// 9/10 1.27x).
const FILL: (usize, usize) = (9, 10);

/// The thread that forms batches.
struct Former {
    model: String,
    jobs: Receiver<Job>,
    /// A token per free execution.
    free: Receiver<()>,
    batches: Sender<Vec<Job>>,
    /// Jobs that arrived but did not fit the batch being formed, oldest first.
    pending: VecDeque<Job>,
    max_rows: usize,
    delay: Duration,
    preferred: Vec<usize>,
    padding: Padding,
    /// Most rows times longest length per batch (0: no limit).
    max_tokens: usize,
}

impl Former {
    fn run(mut self) {
        // Wait for a free execution first: while all are busy the queue fills, and the next
        // batch takes what queued.
        while self.free.recv().is_ok() {
            let first = loop {
                let Some(job) = self.pending.pop_front().or_else(|| self.jobs.recv().ok()) else { return };
                if let Some(job) = job.wanted(&self.model) {
                    break job;
                }
            };
            let batch = self.form(first);
            if self.batches.send(batch).is_err() {
                return;
            }
        }
    }

    fn form(&mut self, first: Job) -> Vec<Job> {
        let deadline = first.enqueued + self.delay;
        let (mut rows, mut longest) = (first.rows, first.length);
        // The batch's real tokens (padding left out).
        let mut real = first.rows * first.length;
        let mut batch = vec![first];
        loop {
            self.pending.extend(self.jobs.try_iter());
            self.drop_unwanted();
            // Lengths nearest the oldest request's first (without padding every length is 0:
            // arrival order), so that padding fills little of the batch.
            let anchor = batch[0].length;
            let mut order: Vec<usize> = (0..self.pending.len()).collect();
            order.sort_by_key(|&i| self.pending[i].length.abs_diff(anchor));
            let mut taken = Vec::new();
            for i in order {
                let job = &self.pending[i];
                let (with_rows, with_longest) = (rows + job.rows, longest.max(job.length));
                let with_real = real + job.rows * job.length;
                let fits = job.fits_with(&batch[0], &self.padding)
                    && with_rows <= self.max_rows
                    && (self.max_tokens == 0 || with_rows * with_longest <= self.max_tokens)
                    && with_real * FILL.1 >= with_rows * with_longest * FILL.0;
                if fits {
                    (rows, longest, real) = (with_rows, with_longest, with_real);
                    taken.push(i);
                }
            }
            taken.sort_unstable();
            let joined: Vec<Job> =
                taken.into_iter().rev().map(|i| self.pending.remove(i).expect("index checked")).collect();
            batch.extend(joined.into_iter().rev());
            if rows >= self.max_rows {
                return batch;
            }
            if let Some(keep) = self.largest_preferred(&batch) {
                // Later jobs go back to the front of the queue, in order.
                for job in batch.drain(keep..).rev() {
                    self.pending.push_front(job);
                }
                return batch;
            }
            let now = Instant::now();
            if now >= deadline {
                return batch;
            }
            match self.jobs.recv_timeout(deadline - now) {
                Ok(job) => self.pending.push_back(job),
                Err(RecvTimeoutError::Timeout) => return batch,
                Err(RecvTimeoutError::Disconnected) => return batch,
            }
        }
    }

    /// Requests abandoned or late while they waited leave the queue unrun.
    fn drop_unwanted(&mut self) {
        if self.pending.iter().all(|job| job.ticket.check(&self.model).is_ok()) {
            return;
        }
        let model = &self.model;
        self.pending =
            std::mem::take(&mut self.pending).into_iter().filter_map(|j| j.wanted(model)).collect();
    }

    /// How many of the batch's first jobs make the largest preferred size, if any does.
    fn largest_preferred(&self, batch: &[Job]) -> Option<usize> {
        let mut rows = 0;
        let mut best = None;
        for (i, job) in batch.iter().enumerate() {
            rows += job.rows;
            if self.preferred.contains(&rows) {
                best = Some(i + 1);
            }
        }
        best
    }
}

/// Run a batch on the graph and answer each of its requests with its own rows (and, with
/// padding, its own length).
fn execute(model: &str, graph: &wasmtime_wasi_nn::Graph, batch: Vec<Job>, padding: &Padding) {
    let started = Instant::now();
    let rows: Vec<usize> = batch.iter().map(|j| j.rows).collect();
    let lengths: Vec<usize> = batch.iter().map(|j| j.length).collect();
    let total: usize = rows.iter().sum();
    let longest = lengths.iter().copied().max().unwrap_or(0);
    let (inputs, replies): (Vec<_>, Vec<_>) = batch.into_iter().map(|j| (j.inputs, j.reply)).unzip();
    let result = concat(inputs, total, padding, longest)
        .and_then(|inputs| infer::run(graph, inputs).map_err(|e| format!("{e:#}")))
        .and_then(|outputs| split(outputs, &rows))
        .and_then(|mut parts| {
            for (outputs, &length) in parts.iter_mut().zip(&lengths) {
                padding.cut(outputs, length, longest)?;
            }
            Ok(parts)
        });
    let compute = started.elapsed();
    let batch_tokens = total * longest;
    tracing::debug!(
        model,
        requests = rows.len(),
        rows = total,
        tokens = batch_tokens,
        compute_us = compute.as_micros() as u64,
        "batch done"
    );
    match result {
        Ok(parts) => {
            for (i, (outputs, reply)) in parts.into_iter().zip(replies).enumerate() {
                let first = i == 0;
                let _ = reply.send(Ok(Answer { outputs, compute, batch_rows: total, batch_tokens, first }));
            }
        }
        Err(message) => {
            for reply in replies {
                let _ =
                    reply.send(Err(Error::Inference { model: model.to_string(), message: message.clone() }));
            }
        }
    }
}

/// Join the requests' inputs (each list sorted by name, all alike) along dimension 0; the
/// padded ones padded to `longest` along dimension 1.
fn concat(
    mut requests: Vec<Vec<Tensor>>,
    total: usize,
    padding: &Padding,
    longest: usize,
) -> Result<Vec<Tensor>, String> {
    if requests.len() == 1 {
        return Ok(requests.pop().expect("one request"));
    }
    let mut joined: Vec<Tensor> = requests[0]
        .iter()
        .map(|t| {
            let mut shape = t.shape.clone();
            shape[0] = total as i64;
            let mut bytes = t.data.len() / t.shape[0].max(1) as usize * total;
            if padding.pads(&t.name) {
                bytes = bytes / t.shape[1].max(1) as usize * longest;
                shape[1] = longest as i64;
            }
            Tensor { name: t.name.clone(), datatype: t.datatype, shape, data: Vec::with_capacity(bytes) }
        })
        .collect();
    for request in requests {
        for (into, t) in joined.iter_mut().zip(request) {
            match padding.pads(&t.name) {
                true => padding.pad(&t, longest, &mut into.data)?,
                false => into.data.extend_from_slice(&t.data),
            }
        }
    }
    Ok(joined)
}

/// Cut every output along dimension 0 into the requests' rows.
fn split(outputs: Vec<Tensor>, rows: &[usize]) -> Result<Vec<Vec<Tensor>>, String> {
    let total: usize = rows.iter().sum();
    if rows.len() == 1 {
        return Ok(vec![outputs]);
    }
    let mut parts: Vec<Vec<Tensor>> = rows.iter().map(|_| Vec::with_capacity(outputs.len())).collect();
    for output in outputs {
        if output.shape.first().map(|&d| d as usize) != Some(total) {
            return Err(format!(
                "graph output '{}' has shape {:?} for a batch of {total} rows: with [batching], every \
                 output must have the batch's rows in dimension 0",
                output.name, output.shape
            ));
        }
        let row_bytes = output.data.len() / total.max(1);
        let mut offset = 0;
        for (part, &n) in parts.iter_mut().zip(rows) {
            let mut shape = output.shape.clone();
            shape[0] = n as i64;
            let data = output.data[offset..offset + n * row_bytes].to_vec();
            offset += n * row_bytes;
            part.push(Tensor { name: output.name.clone(), datatype: output.datatype, shape, data });
        }
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(name: &str, shape: Vec<i64>, values: &[f32]) -> Tensor {
        Tensor {
            name: name.into(),
            datatype: Datatype::Fp32,
            shape,
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    #[test]
    fn concat_then_split_gives_each_request_its_rows() {
        let a = vec![tensor("x", vec![1, 2], &[1.0, 2.0])];
        let b = vec![tensor("x", vec![2, 2], &[3.0, 4.0, 5.0, 6.0])];
        let joined = concat(vec![a.clone(), b.clone()], 3, &Padding::default(), 0).unwrap();
        assert_eq!(joined[0].shape, vec![3, 2]);
        let parts = split(joined, &[1, 2]).unwrap();
        assert_eq!((parts[0][0].shape.clone(), &parts[0][0].data), (a[0].shape.clone(), &a[0].data));
        assert_eq!((parts[1][0].shape.clone(), &parts[1][0].data), (b[0].shape.clone(), &b[0].data));
    }

    #[test]
    fn a_panicking_graph_fails_its_batch_and_the_next_batch_still_runs() {
        let graph = crate::infer::test_graph(|inputs| {
            if inputs[0].data == 0f32.to_le_bytes() {
                panic!("backend bug");
            }
            Ok(inputs)
        });
        let batching = Batching {
            max_batch_size: 1,
            max_queue_delay_us: 0,
            preferred_batch_sizes: vec![],
            pad: Default::default(),
            cut: vec![],
            max_batch_tokens: 0,
        };
        let batcher = Batcher::start("m", graph, &batching, 1).unwrap();
        let x = |v: f32| vec![tensor("x", vec![1], &[v])];
        let err = batcher.infer("m", x(0.0), Default::default()).err().unwrap();
        assert_eq!(
            err.to_string(),
            "inference failed for model 'm': the graph run panicked (see the server log)"
        );
        let answer = batcher.infer("m", x(2.0), Default::default()).unwrap();
        assert_eq!(answer.outputs[0].data, 2.0f32.to_le_bytes());
    }

    #[test]
    fn an_output_without_the_batch_rows_is_an_error() {
        let err = split(vec![tensor("y", vec![1], &[0.0])], &[1, 2]).unwrap_err();
        assert!(err.contains("graph output 'y' has shape [1] for a batch of 3 rows"), "{err}");
    }

    fn job(rows: usize) -> Job {
        let (reply, _) = oneshot::channel();
        Job {
            inputs: vec![tensor("x", vec![rows as i64, 1], &vec![0.0; rows])],
            rows,
            length: 0,
            enqueued: Instant::now(),
            ticket: Default::default(),
            reply,
        }
    }

    /// A former of batches of up to 8 rows over a new queue, and the queue.
    fn former(delay_ms: u64, preferred: Vec<usize>) -> (Sender<Job>, Former) {
        let (queue, jobs) = crossbeam_channel::unbounded();
        let (_, free) = crossbeam_channel::unbounded();
        let (batches, _) = crossbeam_channel::unbounded();
        let former = Former {
            model: "m".into(),
            jobs,
            free,
            batches,
            pending: VecDeque::new(),
            max_rows: 8,
            delay: Duration::from_millis(delay_ms),
            preferred,
            padding: Padding::default(),
            max_tokens: 0,
        };
        (queue, former)
    }

    #[test]
    fn batches_fill_to_the_largest_preferred_size_then_the_maximum() {
        let (queue, mut former) = former(50, vec![2, 4]);
        for rows in [1, 1, 1, 1, 1] {
            queue.send(job(rows)).unwrap();
        }
        let first = former.jobs.recv().unwrap();
        // 5 rows are there; 4 is the largest preferred size: sent at once, one left waiting.
        assert_eq!(former.form(first).len(), 4);
        assert_eq!(former.pending.len(), 1);
        // No preferred size reachable with what is there: the batch waits out the delay.
        former.preferred.clear();
        let started = Instant::now();
        let first = former.pending.pop_front().unwrap();
        assert_eq!(former.form(first).len(), 1);
        assert!(started.elapsed() >= Duration::from_millis(40));
        // A job that does not fit the first waits for the next batch; a full batch goes at once.
        queue.send(job(3)).unwrap();
        queue.send(Job { inputs: vec![tensor("x", vec![1, 2], &[0.0; 2])], ..job(1) }).unwrap();
        queue.send(job(5)).unwrap();
        let first = former.jobs.recv().unwrap();
        let started = Instant::now();
        let batch = former.form(first);
        assert_eq!(batch.iter().map(|j| j.rows).collect::<Vec<_>>(), vec![3, 5]);
        assert!(started.elapsed() < Duration::from_millis(40));
        assert_eq!(former.pending.len(), 1);
    }

    #[test]
    fn padded_requests_of_different_lengths_share_a_batch_within_its_tokens() {
        let (queue, mut former) = former(0, vec![]);
        let batching = Batching {
            max_batch_size: 8,
            max_queue_delay_us: 0,
            preferred_batch_sizes: vec![],
            pad: [("x".to_string(), 0.0)].into(),
            cut: vec![],
            max_batch_tokens: 40,
        };
        (former.padding, former.max_tokens) = (Padding::new(&batching), batching.max_batch_tokens);
        let padded = |length: usize| Job {
            inputs: vec![tensor("x", vec![1, length as i64], &vec![0.0; length])],
            length,
            ..job(1)
        };
        for length in [9, 20, 10, 5] {
            queue.send(padded(length)).unwrap();
        }
        // Nearest the oldest's 10 first: 10 and 9 join (29 of 30 tokens real); 5 would leave
        // 34 of 40 real (under 9/10), 20 would make 80 tokens (over 40).
        let batch = former.form(padded(10));
        assert_eq!(batch.iter().map(|j| j.length).collect::<Vec<_>>(), vec![10, 9, 10]);
        assert_eq!(former.pending.iter().map(|j| j.length).collect::<Vec<_>>(), vec![20, 5]);
        // Unpadded, the same lengths would not have joined at all.
        assert!(!padded(2).fits_with(&padded(3), &Padding::default()));
    }

    #[test]
    fn abandoned_requests_are_left_out_of_the_batch_and_told_why() {
        let (queue, mut former) = former(20, vec![]);
        let mut answers = Vec::new();
        for i in 0..4 {
            let (reply, answer) = oneshot::channel();
            let ticket = super::super::Ticket::default();
            if i % 2 == 1 {
                ticket.abandoned.store(true, std::sync::atomic::Ordering::Release);
            }
            queue.send(Job { ticket, reply, ..job(1) }).unwrap();
            answers.push(answer);
        }
        let first = former.jobs.recv().unwrap();
        let batch = former.form(first);
        assert_eq!(batch.len(), 2, "only the two still wanted");
        for (i, mut answer) in answers.into_iter().enumerate() {
            match answer.try_recv() {
                Ok(Err(e)) => {
                    assert_eq!(i % 2, 1);
                    assert_eq!(e.status().as_u16(), 499, "{e}");
                }
                Err(oneshot::error::TryRecvError::Empty) => {
                    assert_eq!(i % 2, 0, "a wanted job is in the batch")
                }
                other => panic!("job {i}: {:?}", other.map(|r| r.map(|_| ()))),
            }
        }
    }
}
