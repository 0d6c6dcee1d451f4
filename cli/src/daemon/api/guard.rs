//! What every API connection and request passes before a handler: the peer's credentials
//! (`SO_PEERCRED`: root or the daemon's own user, else 403) and a cap on the body (413), with
//! errors in the API's `{"error": …}` shape.
//!
//! The socket is also mode 0600; the credential check is what holds if the socket's mode or
//! its directory is opened up, or between bind and chmod.

use axum::Json;
use axum::extract::connect_info::Connected;
use axum::extract::rejection::{BytesRejection, FailedToBufferBody, JsonRejection};
use axum::extract::{ConnectInfo, FromRequest, Request};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::serve::IncomingStream;
use serde::de::DeserializeOwned;
use tokio::net::UnixListener;
use tracing::warn;

use crate::api::ErrorBody;

/// The largest request body the API reads.
pub const MAX_BODY: usize = 1 << 20;

/// Who is on the other end of a connection, as the kernel saw it at connect time.
#[derive(Clone, Copy, Debug)]
pub struct Peer {
    pub uid: Option<u32>,
    pub pid: Option<i32>,
}

impl Connected<IncomingStream<'_, UnixListener>> for Peer {
    fn connect_info(s: IncomingStream<'_, UnixListener>) -> Self {
        match s.io().peer_cred() {
            Ok(c) => Peer {
                uid: Some(c.uid()),
                pid: c.pid(),
            },
            Err(_) => Peer {
                uid: None,
                pid: None,
            },
        }
    }
}

/// Why `uid` may not use the API, if it may not: only root and the daemon's own user may.
pub fn refusal(uid: Option<u32>, own: u32) -> Option<String> {
    match uid {
        Some(0) => None,
        Some(u) if u == own => None,
        Some(u) => Some(format!(
            "permission denied: the sdnet API is for root (uid {u})"
        )),
        None => Some("permission denied: the peer's credentials are unknown".into()),
    }
}

fn error(status: StatusCode, msg: String) -> Response {
    (status, Json(ErrorBody { error: msg })).into_response()
}

/// Middleware: refuses a request from a peer that is neither root nor the daemon's user.
pub async fn check_peer(ConnectInfo(p): ConnectInfo<Peer>, req: Request, next: Next) -> Response {
    match refusal(p.uid, nix::unistd::geteuid().as_raw()) {
        None => next.run(req).await,
        Some(msg) => {
            warn!(uid = ?p.uid, pid = ?p.pid, path = %req.uri().path(), "API request refused: not root");
            error(StatusCode::FORBIDDEN, msg)
        }
    }
}

/// Middleware: refuses a body announced as larger than [`MAX_BODY`] before reading any of it
/// (a body without a length is cut at the cap by [`Body`]).
pub async fn check_length(req: Request, next: Next) -> Response {
    let announced = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match announced {
        Some(n) if n > MAX_BODY as u64 => too_large(),
        _ => next.run(req).await,
    }
}

fn too_large() -> Response {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "request body too large: the API takes at most {} KiB",
            MAX_BODY >> 10
        ),
    )
}

/// A JSON body of at most [`MAX_BODY`] bytes; what it cannot decode is a one-line error.
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Response> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Body(v)),
            Err(JsonRejection::BytesRejection(BytesRejection::FailedToBufferBody(
                FailedToBufferBody::LengthLimitError(_),
            ))) => Err(too_large()),
            Err(r) => Err(error(r.status(), r.body_text())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_and_own_user_only() {
        assert_eq!(refusal(Some(0), 0), None);
        assert_eq!(refusal(Some(1000), 1000), None);
        assert_eq!(
            refusal(Some(65534), 0).as_deref(),
            Some("permission denied: the sdnet API is for root (uid 65534)")
        );
        assert!(refusal(None, 0).is_some());
    }
}
