//! control: what the repository's control calls do, REST's load and unload and gRPC's
//! RepositoryModelLoad and RepositoryModelUnload alike: who may call them, which of
//! Triton's parameters they take, and the load and unload themselves.

use crate::error::{Error, Result};
use crate::pipeline::AppState;

/// Whether a control call (REST's load and unload, gRPC's RepositoryModelLoad and
/// RepositoryModelUnload) at `path` may run: `authorization` (the header, or gRPC's metadata)
/// must be `Bearer <the server's token>`, compared in constant time. Forbidden when the
/// server has no token, Unauthorized when it is missing or wrong.
pub(crate) fn allowed(state: &AppState, authorization: Option<&str>, path: &str) -> Result<()> {
    use subtle::ConstantTimeEq;
    let Some(token) = state.control_token() else {
        let off = "repository control is off: start the server with --control-token-file FILE or WASMSERVE_CONTROL_TOKEN";
        return Err(Error::Forbidden(off.into()));
    };
    match authorization.and_then(|v| v.strip_prefix("Bearer ")) {
        Some(given) if bool::from(given.as_bytes().ct_eq(token.as_bytes())) => Ok(()),
        _ => {
            tracing::warn!(%path, "control request refused: no valid bearer token");
            Err(Error::Unauthorized(
                "this call needs the header (gRPC: metadata) Authorization: Bearer <the server's control token>"
                    .into(),
            ))
        }
    }
}

/// A load's or unload's parameters (Triton's `config` and `file:` overrides on load,
/// `unload_dependents` on unload), each a name and its value if a bool: none is taken but
/// `allowed` ones that are false (REST and gRPC).
pub(crate) fn refuse_parameters<'a>(
    parameters: impl IntoIterator<Item = (&'a str, Option<bool>)>,
    allowed: &[&str],
) -> Result<()> {
    for (name, value) in parameters {
        let known = allowed.contains(&name);
        if known && value == Some(false) {
            continue;
        }
        let why = match known {
            true => {
                "only false: the models a model's plugin calls are models of their own, unload each by its name"
            }
            false => {
                "a model loads from its directory in the repository as it is there: change its files, then load it"
            }
        };
        return Err(Error::bad_request(format!("parameter '{name}' is not supported ({why})")));
    }
    Ok(())
}

/// Load `model` (again) from its directory, off the serving threads (REST and gRPC).
pub(crate) async fn load(state: &AppState, model: String) -> Result<()> {
    let repository = state.repository().clone();
    tokio::task::spawn_blocking(move || repository.reload(&model))
        .await
        .map_err(|e| Error::Internal(format!("loading panicked: {e}")))?
}

/// Stop serving `model` (REST and gRPC).
pub(crate) fn unload(state: &AppState, model: &str) -> Result<()> {
    state.repository().unload(model)
}
