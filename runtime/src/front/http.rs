//! http: what every HTTP front end reads first: the request's id, its body (within the
//! size limit and the body deadline), and a panic turned into a 500 for that request alone.

use crate::error::{Error, Result};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};

/// The header that carries a request's id; a client's own is kept, else one is made.
pub const REQUEST_ID: &str = "x-request-id";

/// A request's id: the client's own (the request's `id` field, else the `x-request-id`
/// header) when it is sensible, else a new random UUID. Its bits come from a per-thread
/// generator seeded once, not from the kernel per request (a system call on every request,
/// for an id that needs to be unique, not secret).
pub(crate) fn request_id(id: Option<&str>, headers: &HeaderMap) -> String {
    id.filter(|v| !v.is_empty())
        .or_else(|| headers.get(REQUEST_ID).and_then(|v| v.to_str().ok()))
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map_or_else(
            || uuid::Builder::from_random_bytes(fastrand::u128(..).to_le_bytes()).into_uuid().to_string(),
            str::to_string,
        )
}

/// A REST body (the OIP's and OpenAI's), up to `--max-body-mib`: refused on its declared length before anything is
/// read, and chunked bodies stop at the limit.
pub(crate) async fn read_body(
    limit: usize,
    headers: &HeaderMap,
    body: axum::body::Body,
) -> Result<bytes::Bytes> {
    let too_large =
        || Error::TooLarge(format!("request body is larger than {limit} bytes (see --max-body-mib)"));
    let declared =
        headers.get(axum::http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        // `listen` puts a deadline between the body's parts.
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(error) = source {
            if error.is::<tower_http::timeout::TimeoutError>() {
                return Error::Timeout("the request body stopped arriving (see --body-timeout-secs)".into());
            }
            // `budget` refuses a chunked body past --request-memory-mib.
            if let Some(status) = error.downcast_ref::<tonic::Status>() {
                let message = status.message().to_string();
                return match status.code() {
                    tonic::Code::ResourceExhausted => Error::TooLarge(message),
                    _ => Error::OverBudget(message),
                };
            }
            source = error.source();
        }
        too_large()
    })
}

/// A panic while handling a request becomes a 500 for that request (logged with its
/// message); the connection, the other requests and the server carry on.
pub(crate) fn catch_panics()
-> tower_http::catch_panic::CatchPanicLayer<fn(Box<dyn std::any::Any + Send>) -> Response> {
    fn answer(panic: Box<dyn std::any::Any + Send>) -> Response {
        let message = crate::error::panic_message(&*panic);
        let error = Error::Internal(format!("request handling panicked: {message}"));
        error.log();
        error.into_response()
    }
    tower_http::catch_panic::CatchPanicLayer::custom(answer as fn(_) -> _)
}

/// A response of server-sent events: each piece `events` yields (whole events, `data: ...`
/// and a blank line) is sent as it comes. Dropped by the server when the client goes, and
/// with it what produces the events.
pub(crate) fn event_stream(events: impl futures::Stream<Item = String> + Send + 'static) -> Response {
    use axum::http::{HeaderValue, header};
    use futures::StreamExt;
    let body = axum::body::Body::from_stream(events.map(Ok::<_, std::convert::Infallible>));
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::body::Body;
    use axum::http::StatusCode;
    use axum::routing::get;
    use tower::ServiceExt;

    #[tokio::test]
    async fn a_panicking_handler_answers_500_and_the_router_keeps_serving() {
        let app = Router::new()
            .route(
                "/boom",
                get(|| async {
                    if std::hint::black_box(true) {
                        panic!("the handler broke");
                    }
                    "unreachable"
                }),
            )
            .route("/fine", get(|| async { "ok" }))
            .layer(catch_panics());
        let request = |path: &str| axum::http::Request::get(path).body(Body::empty()).unwrap();
        let response = app.clone().oneshot(request("/boom")).await.unwrap();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"], "internal error: request handling panicked: the handler broke");
        assert_eq!(app.oneshot(request("/fine")).await.unwrap().status(), StatusCode::OK);
    }
}
