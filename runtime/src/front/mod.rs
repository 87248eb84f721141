//! front: the protocols clients speak, each decoding its requests into the pipeline's
//! [`Inference`](crate::pipeline) and encoding its answers: [`rest`] (the Open Inference
//! Protocol over HTTP), [`grpc`] (the same over gRPC, with the standard health service),
//! [`openai`] (OpenAI's embeddings, chat and completions), [`generate`] (Triton's generate
//! extension, for generative models), [`offline`] (batch inference over files). What
//! several share: [`http`] (what an HTTP front end reads first), [`control`] (the
//! repository's load and unload), [`triton`] (Triton's configuration and statistics
//! extensions). No front end imports another; they are joined into one router here.

pub mod control;
pub mod generate;
pub mod grpc;
pub mod http;
pub mod offline;
pub mod openai;
pub mod rest;
pub mod triton;

use crate::error::Error;
use crate::pipeline::AppState;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use grpc::Control;

/// Every endpoint of the serving port: REST, OpenAI's and gRPC's (inference and health),
/// but the control endpoints ([`control_router`]).
pub fn router(state: AppState) -> Router {
    // gRPC's control calls reach this service only when --control-port serves them elsewhere
    // (else control_router's routes for them, merged in, come first).
    let inference = grpc::service(state.clone(), state.max_body_bytes(), Control::Elsewhere);
    rest::routes()
        .merge(generate::routes())
        .merge(openai::routes())
        .route_service(grpc::PATH, inference)
        .route_service(grpc::HEALTH_PATH, grpc::health(state.clone()))
        .fallback(|| async { Error::NotFound("no such endpoint; see /v2".into()) })
        // The infer handlers apply their own limit, answering 413 in the OIP error format.
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
        .layer(http::catch_panics())
}

/// The repository extension's endpoints that change what is served (REST's load and unload,
/// gRPC's RepositoryModelLoad and RepositoryModelUnload), each behind the control token
/// (`Authorization: Bearer ...`; 401 / UNAUTHENTICATED without it, 403 / PERMISSION_DENIED
/// when the server has none). Merge into [`router`], or serve on a port of their own.
pub fn control_router(state: AppState) -> Router {
    // gRPC's control calls check the token themselves, to answer in gRPC's terms.
    let grpc = grpc::service(state.clone(), state.max_body_bytes(), Control::Here);
    let router = rest::control_routes(&state).with_state(state);
    grpc::CONTROL_PATHS
        .iter()
        .fold(router, |router, path| router.route_service(path, grpc.clone()))
        .layer(http::catch_panics())
}
