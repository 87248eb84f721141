//! rerank: `POST /v1/rerank`, in the shape Cohere's and Jina's rerank APIs share (what
//! LangChain's and LlamaIndex's rerankers and the `cohere` package send), and `POST
//! /v2/rerank`, Cohere's v2 path (`cohere.ClientV2`): one OIP inference of a model with
//! `[rerank]`, the query and all the documents at once.
//!
//! Request: `model`, `query`, `documents` (strings, or objects whose `text` is ranked),
//! `top_n` (default: every document), `return_documents` (default false). Answer:
//! `results` of `index`, `relevance_score` and, when asked, `document` (`{"text": ...}`),
//! most relevant first; `usage` counts the tokens of every (query, document) row.
//! Cohere's `rank_fields` may name `text` alone; `max_chunks_per_doc` and `max_tokens_per_doc`
//! are refused (documents are cut to the model's token limit, not split or cut shorter);
//! `priority` is accepted and ignored.

use super::{OneInference, Usage, fp32s, oip_request, output, serve, texts_tensor, tokens};
use crate::config::{ModelConfig, Rerank};
use crate::decode::InferRequest;
use crate::error::{Error, Result};
use crate::pipeline::AppState;
use crate::tensor::Tensor;
use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use serde::{Deserialize, Serialize};

/// Most documents in one request (what Cohere recommends at most).
const MAX_DOCUMENTS: usize = 1000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RerankRequest {
    model: String,
    query: Option<String>,
    #[serde(default)]
    documents: Vec<Document>,
    top_n: Option<usize>,
    #[serde(default)]
    return_documents: Option<bool>,
    /// Cohere's: which fields of an object document are ranked (only `text` here).
    rank_fields: Option<Vec<String>>,
    /// Cohere's v1: refused unless null.
    max_chunks_per_doc: Option<usize>,
    /// Cohere's v2: refused unless null.
    max_tokens_per_doc: Option<usize>,
    /// Cohere's v2: accepted and ignored (requests run in the order they come).
    #[serde(rename = "priority")]
    _priority: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Document {
    Text(String),
    Object { text: String },
    Other(serde::de::IgnoredAny),
}

#[derive(Serialize)]
pub(super) struct RerankResponse {
    /// The request's id (its `x-request-id`, or one made for it).
    id: String,
    model: String,
    results: Vec<Ranked>,
    usage: Usage,
}

#[derive(Serialize)]
struct Ranked {
    index: usize,
    relevance_score: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    document: Option<DocumentText>,
}

#[derive(Serialize)]
struct DocumentText {
    text: String,
}

/// `POST /v1/rerank`.
pub(super) async fn rerank(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    serve::<RerankRequest>(state, headers, body, "rerank").await
}

/// The `[rerank]` of the model `name` with `config`, or why it does not answer `/v1/rerank`.
fn rerank_of<'c>(name: &str, config: &'c ModelConfig) -> Result<&'c Rerank> {
    config.rerank.as_ref().ok_or_else(|| {
        Error::bad_request(format!(
            "model '{name}' is not a reranker (its model.toml has no [rerank]; a cross-encoder served with \
             `[text] task = \"rerank\"` has it)"
        ))
    })
}

impl RerankRequest {
    /// The query and the documents' texts, checked.
    fn texts(&self) -> Result<(&str, Vec<&str>)> {
        let query = self.query.as_deref().ok_or_else(|| Error::bad_request("'query' is required"))?;
        if query.is_empty() {
            return Err(Error::bad_request("'query' is empty"));
        }
        if self.documents.is_empty() || self.documents.len() > MAX_DOCUMENTS {
            return Err(Error::bad_request(format!(
                "'documents' must hold 1 to {MAX_DOCUMENTS} documents, not {}",
                self.documents.len()
            )));
        }
        if let Some(fields) = self.rank_fields.as_ref().filter(|f| f.iter().any(|f| f != "text")) {
            return Err(Error::bad_request(format!(
                "'rank_fields': only \"text\" is ranked here, not {fields:?}"
            )));
        }
        for (field, given) in
            [("max_chunks_per_doc", self.max_chunks_per_doc), ("max_tokens_per_doc", self.max_tokens_per_doc)]
        {
            if given.is_some() {
                return Err(Error::bad_request(format!(
                    "'{field}' is not supported: each document is cut to the model's token limit, no shorter, \
                     and not split"
                )));
            }
        }
        let documents = self
            .documents
            .iter()
            .enumerate()
            .map(|(i, d)| match d {
                Document::Text(text) | Document::Object { text } => Ok(text.as_str()),
                Document::Other(_) => Err(Error::bad_request(format!(
                    "'documents[{i}]' must be a string or an object with a string 'text'"
                ))),
            })
            .collect::<Result<_>>()?;
        Ok((query, documents))
    }
}

impl OneInference for RerankRequest {
    type Answer = RerankResponse;

    fn model(&self) -> &str {
        &self.model
    }

    fn request(&self, name: &str, config: &ModelConfig) -> Result<InferRequest> {
        let spec = rerank_of(name, config)?;
        let (query, documents) = self.texts()?;
        let inputs = vec![texts_tensor(&spec.query, &[query]), texts_tensor(&spec.documents, &documents)];
        Ok(oip_request(inputs, std::iter::once(&spec.score).chain(&spec.tokens)))
    }

    fn answer(
        self,
        id: &str,
        name: &str,
        config: &ModelConfig,
        outputs: &[Tensor],
    ) -> Result<RerankResponse> {
        let spec = rerank_of(name, config)?;
        let scores = output(outputs, &spec.score)?;
        let scores = fp32s(&scores.data);
        if scores.len() != self.documents.len() {
            return Err(Error::Internal(format!(
                "output '{}' holds {} scores for {} documents",
                spec.score,
                scores.len(),
                self.documents.len()
            )));
        }
        let mut order: Vec<usize> = (0..scores.len()).collect();
        // Most relevant first; NaN last; equal scores keep the documents' order.
        let rank = |i: usize| if scores[i].is_nan() { f32::NEG_INFINITY } else { scores[i] };
        order.sort_by(|&a, &b| rank(b).total_cmp(&rank(a)));
        order.truncate(self.top_n.unwrap_or(usize::MAX));
        let return_documents = self.return_documents.unwrap_or(false);
        let mut documents: Vec<Option<String>> = self
            .documents
            .into_iter()
            .map(|d| match d {
                Document::Text(text) | Document::Object { text } => Some(text),
                Document::Other(_) => None,
            })
            .collect();
        let results = order
            .into_iter()
            .map(|index| Ranked {
                index,
                relevance_score: scores[index],
                document: return_documents
                    .then(|| DocumentText { text: documents[index].take().unwrap_or_default() }),
            })
            .collect();
        let tokens = tokens(outputs, spec.tokens.as_ref())?;
        Ok(RerankResponse { id: id.to_string(), model: self.model, results, usage: Usage::of(tokens) })
    }
}
