//! The errors a request can end in, and the one place they become HTTP status codes.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// Why a request failed. Every variant's message is written for the client.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed or does not fit the model (400).
    #[error("{0}")]
    BadRequest(String),
    /// No such model or version (404).
    #[error("{0}")]
    NotFound(String),
    /// A control endpoint without the right bearer token (401, with `WWW-Authenticate`).
    #[error("{0}")]
    Unauthorized(String),
    /// A control endpoint on a server started without a token: control is off (403).
    #[error("{0}")]
    Forbidden(String),
    /// The body is larger than the server accepts (413).
    #[error("{0}")]
    TooLarge(String),
    /// The request's input data is over one of the model's limits (413): a BYTES element,
    /// all inputs together, or what the plugin's memory could hold.
    #[error("{0}")]
    InputTooLarge(String),
    /// The client stopped sending its request body for longer than the server waits (408).
    #[error("{0}")]
    Timeout(String),
    /// The client went away before its request ran (499, as nginx logs it; gRPC CANCELLED):
    /// nobody reads this answer, the metrics and the log do.
    #[error("{0}")]
    Cancelled(String),
    /// The requests in flight hold as much memory as the server allows (503, with
    /// `Retry-After`; the body is not read, so the connection closes).
    #[error("{0}")]
    OverBudget(String),
    /// The server cannot serve this yet (503): models still loading.
    #[error("{0}")]
    Unavailable(String),
    /// The model is not in memory and did not get there in time: its load is still running,
    /// failed recently (retried after a back-off), or the model memory budget is held by
    /// models in use (503, with `Retry-After`).
    #[error("{message}")]
    NotLoaded {
        /// What the client reads.
        message: String,
        /// When to try again, in seconds.
        retry_after_secs: u64,
    },
    /// The model's queue is full, or the request waited past its timeout (503, with
    /// `Retry-After`).
    #[error("{0}")]
    Overloaded(String),
    /// A plugin refused the client's input (400).
    #[error("plugin '{plugin}' rejected the input: {message}")]
    PluginInput {
        /// The model whose plugin answered.
        plugin: String,
        /// The plugin's message.
        message: String,
    },
    /// A plugin failed, trapped or ran past its limits (500).
    #[error("plugin '{plugin}' failed: {message}")]
    PluginFailed {
        /// The model whose plugin failed.
        plugin: String,
        /// What went wrong.
        message: String,
    },
    /// The inference backend failed (500).
    #[error("inference failed for model '{model}': {message}")]
    Inference {
        /// The model whose graph failed.
        model: String,
        /// The backend's message.
        message: String,
    },
    /// A bug or an unexpected state in the server (500).
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// A 400 with this message.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::BadRequest(message.into())
    }

    /// The status code this error is answered with (gRPC: see `From<Error> for Status`).
    pub fn status(&self) -> StatusCode {
        match self {
            Error::BadRequest(_) | Error::PluginInput { .. } => StatusCode::BAD_REQUEST,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Error::Forbidden(_) => StatusCode::FORBIDDEN,
            Error::TooLarge(_) | Error::InputTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Error::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            Error::Cancelled(_) => StatusCode::from_u16(499).expect("a valid status code"),
            Error::Unavailable(_) | Error::NotLoaded { .. } | Error::Overloaded(_) | Error::OverBudget(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Error::PluginFailed { .. } | Error::Inference { .. } | Error::Internal(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }
}

impl Error {
    /// The gRPC status code for the same error (the numbers of gRPC's `Code`): the code
    /// that matches its HTTP status. The message is the error's text.
    pub fn grpc_code(&self) -> i32 {
        match self {
            Error::BadRequest(_) | Error::PluginInput { .. } => 3, // INVALID_ARGUMENT
            Error::NotFound(_) => 5,                               // NOT_FOUND
            Error::Unauthorized(_) => 16,                          // UNAUTHENTICATED
            Error::Forbidden(_) => 7,                              // PERMISSION_DENIED
            Error::TooLarge(_) | Error::InputTooLarge(_) => 8,     // RESOURCE_EXHAUSTED
            Error::Timeout(_) => 4,                                // DEADLINE_EXCEEDED
            Error::Cancelled(_) => 1,                              // CANCELLED
            // gRPC clients retry UNAVAILABLE with backoff: the Retry-After of REST.
            Error::Unavailable(_) | Error::NotLoaded { .. } | Error::Overloaded(_) | Error::OverBudget(_) => {
                14
            } // UNAVAILABLE
            Error::PluginFailed { .. } | Error::Inference { .. } | Error::Internal(_) => 13, // INTERNAL
        }
    }
}

/// OIP error body: `{"error": "..."}`.
impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let mut response =
            (self.status(), axum::Json(serde_json::json!({ "error": self.to_string() }))).into_response();
        use axum::http::{HeaderValue, header};
        match self {
            // A load balancer or client may try again (elsewhere) after a second.
            Error::Overloaded(_) => {
                response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            Error::NotLoaded { retry_after_secs, .. } => {
                let after = HeaderValue::from(retry_after_secs.max(1));
                response.headers_mut().insert(header::RETRY_AFTER, after);
            }
            Error::OverBudget(_) => {
                response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            // The rest of the body is not read: the connection cannot carry another request.
            Error::TooLarge(_) | Error::Timeout(_) => {
                response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            Error::Unauthorized(_) => {
                let challenge = HeaderValue::from_static("Bearer realm=\"wasmserve\"");
                response.headers_mut().insert(header::WWW_AUTHENTICATE, challenge);
            }
            _ => {}
        }
        response
    }
}

impl Error {
    /// Log the failure: server-side faults as errors, client mistakes at debug.
    pub fn log(&self) {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(%status, error = %self, "request failed");
        } else {
            tracing::debug!(%status, error = %self, "request rejected");
        }
    }
}

/// Result of request handling.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The message a caught panic carried (`panic!` with a literal or a format), or "no message".
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("no message")
}
