//! generate: one generation through the pipeline: the target resolved as for any request
//! (a route's variant, a model loaded on demand), its span and metrics opened, its request
//! logged, then scheduled; the front end reads the answer's text part by part from the
//! [`Stream`] and its end closes the observation (whatever the front end makes of the parts:
//! server-sent events, or one response at the end).

use super::request::Observation;
use super::{AppState, ModelPath};
use crate::error::{Error, Result};
use crate::observe::generation::Finished;
use crate::observe::payloads::{Call, Logged};
use crate::plugin::{GenerationEnd, GenerationRequest};
use crate::repository::Model;
use crate::schedule;
use axum::http::HeaderMap;
use bytes::Bytes;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tracing::Instrument;

/// How many parts may wait for a slow client before the plugin waits for it.
const PARTS_BUFFERED: usize = 64;

/// One generation as a front end hands it over.
pub(crate) struct Generation<'a> {
    /// The model (or route) and version it names.
    pub(crate) path: ModelPath,
    /// Its id (see `front::http::request_id`).
    pub(crate) id: &'a str,
    /// Its headers: a route's sticky header, the caller's trace.
    pub(crate) headers: &'a HeaderMap,
    /// What to generate, or why the request could not be read.
    pub(crate) request: Result<GenerationRequest>,
    /// The body as the client sent it, for payload logging; none: not logged.
    pub(crate) logged_body: Option<Bytes>,
}

/// A generation under way: its text part by part, then how it ended.
pub(crate) struct Stream {
    /// The model that generates.
    pub(crate) model: Arc<Model>,
    /// The request's payload log, if logged: the front end logs the whole answer there.
    pub(crate) logged: Option<Logged>,
    parts: mpsc::Receiver<String>,
    end: Option<tokio::task::JoinHandle<Result<schedule::Generated>>>,
    observation: Option<Observation>,
    started: Instant,
    first: Option<Duration>,
    /// The part read before the stream was handed over.
    pending: Option<Part>,
}

/// What a [`Stream`] gives next.
pub(crate) enum Part {
    /// More of the answer's text.
    Text(String),
    /// The end: token counts and why, or why it failed.
    End(Result<GenerationEnd>),
}

impl AppState {
    /// One generation, whatever its protocol: the target resolved (loaded on demand if it
    /// must be), in its span, counted, its request logged if its model says so, and started.
    /// An error before any text (no such model, not a generative one, a bad request, a
    /// plugin that failed at once) is returned as such, with the payload log to hand its
    /// response to; errors after the first text come as the stream's end (the stream holds
    /// the payload log then). So a front end may answer the first with an HTTP status.
    pub(crate) async fn generate(&self, generation: Generation<'_>) -> (Result<Stream>, Option<Logged>) {
        let Generation { path, id, headers, request, logged_body } = generation;
        let requested = path.model.clone();
        let mut observation = Observation::open(self, "generate", &requested, id, headers);
        let span = observation.span();
        let mut logged = None;
        let started = Instant::now();
        let opened = async {
            let target = self.target(&path, headers).await?;
            let model = target.model.clone();
            observation.count(&model, target.routed.as_ref());
            if let Some(body) = logged_body {
                let call = Call { requested: &requested, variant: target.variant(), id };
                let names = (model.name.as_str(), model.config.version.as_str());
                logged = self.0.payloads.request(&model.config.logger, names, call, headers, body);
            }
            let request = request?;
            let (sender, parts) = mpsc::channel(PARTS_BUFFERED);
            let run = schedule::generate(model.runner.clone(), request, sender);
            let end = tokio::spawn(run.instrument(tracing::Span::current()));
            Ok::<_, Error>((model, parts, end))
        }
        .instrument(span)
        .await;
        match opened {
            Ok((model, parts, end)) => {
                let mut stream = Stream {
                    model,
                    logged,
                    parts,
                    end: Some(end),
                    observation: Some(observation),
                    started,
                    first: None,
                    pending: None,
                };
                match stream.next().await {
                    Some(Part::End(Err(e))) => (Err(e), stream.logged.take()),
                    first => {
                        stream.pending = first;
                        (Ok(stream), None)
                    }
                }
            }
            Err(e) => {
                observation.close(Err(&e));
                (Err(e), logged)
            }
        }
    }
}

impl Stream {
    /// The next part: text while the plugin emits it, then its end once; none after. The
    /// end closes the request's observation (metrics, span), and counts the generation.
    pub(crate) async fn next(&mut self) -> Option<Part> {
        if let Some(part) = self.pending.take() {
            return Some(part);
        }
        if let Some(text) = self.parts.recv().await {
            self.first.get_or_insert_with(|| self.started.elapsed());
            return Some(Part::Text(text));
        }
        let end = self.end.take()?.await;
        let end = end.map_err(|e| Error::Internal(format!("generation failed: {e}"))).and_then(|end| end);
        let mut observation = self.observation.take().expect("open until the end");
        if let Ok(generated) = &end {
            let done = Finished {
                first_token: self.first,
                total: self.started.elapsed(),
                prompt_tokens: u64::from(generated.end.prompt_tokens),
                tokens: u64::from(generated.end.completion_tokens),
                plugin: generated.plugin,
            };
            let config = &self.model.config;
            observation.metrics.generation().finished(&self.model.name, &config.version, &done);
            let timings = crate::observe::Timings {
                queue: generated.queue,
                preprocess: generated.plugin,
                compute: generated.total.saturating_sub(generated.plugin),
                ..Default::default()
            };
            observation.done = Some((timings, 1));
        }
        observation.close(end.as_ref().map(|_| ()));
        Some(Part::End(end.map(|generated| generated.end)))
    }

    /// All of it: the whole text, and how it ended.
    pub(crate) async fn whole(&mut self) -> (String, Result<GenerationEnd>) {
        let mut text = String::new();
        loop {
            match self.next().await {
                Some(Part::Text(part)) => text.push_str(&part),
                Some(Part::End(end)) => return (text, end),
                None => return (text, Err(Error::Internal("the generation had ended already".into()))),
            }
        }
    }
}
