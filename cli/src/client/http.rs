//! The client side of the API: HTTP/1.1 over the daemon's unix socket, JSON both ways.

use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;

use crate::api::{API_PREFIX, ErrorBody};

pub struct Client {
    socket: std::path::PathBuf,
}

impl Client {
    pub fn new(socket: &Path) -> Client {
        Client {
            socket: socket.to_path_buf(),
        }
    }

    /// Sends one request; a reply other than 200 becomes the daemon's error message.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
    ) -> Result<hyper::body::Incoming> {
        let stream = UnixStream::connect(&self.socket)
            .await
            .map_err(|e| connect_error(&self.socket, &e))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("talking to the daemon")?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = Request::builder()
            .method(method)
            .uri(format!("{API_PREFIX}{path}"))
            .header("host", "sdnet")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))?;
        let resp = sender
            .send_request(req)
            .await
            .context("talking to the daemon")?;
        let status = resp.status();
        let body = resp.into_body();
        if status != StatusCode::OK {
            let b = body
                .collect()
                .await
                .context("reading the daemon's reply")?
                .to_bytes();
            match serde_json::from_slice::<ErrorBody>(&b) {
                Ok(e) => bail!("{}", e.error),
                Err(_) => bail!("daemon answered {status}: {}", String::from_utf8_lossy(&b)),
            }
        }
        Ok(body)
    }

    /// One request; the daemon's error message becomes the error.
    pub async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T> {
        let bytes = match body {
            Some(b) => serde_json::to_vec(b)?,
            None => Vec::new(),
        };
        let body = self
            .send(method, path, bytes)
            .await?
            .collect()
            .await
            .context("reading the daemon's reply")?
            .to_bytes();
        serde_json::from_slice(&body).context("decoding the daemon's reply")
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.call::<(), T>(Method::GET, path, None).await
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        self.call(Method::POST, path, Some(body)).await
    }

    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.call::<(), T>(Method::DELETE, path, None).await
    }

    /// A streamed GET: `each` gets every line of the reply as it arrives, until the daemon
    /// ends the stream.
    pub async fn lines(&self, path: &str, mut each: impl FnMut(&str)) -> Result<()> {
        let mut body = self.send(Method::GET, path, Vec::new()).await?;
        let mut buf: Vec<u8> = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.context("reading the daemon's stream")?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            buf.extend_from_slice(&data);
            while let Some(i) = buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buf.drain(..=i).collect();
                each(String::from_utf8_lossy(&line[..i]).trim_end());
            }
        }
        Ok(())
    }
}

/// Why the socket could not be reached, and what to do about it.
fn connect_error(socket: &Path, e: &std::io::Error) -> anyhow::Error {
    if e.kind() == std::io::ErrorKind::PermissionDenied {
        // The same words the daemon uses when its credential check refuses a peer.
        return anyhow!(
            "permission denied: the sdnet API is for root (uid {})",
            nix::unistd::geteuid()
        );
    }
    anyhow!(
        "cannot reach the sdnet daemon at {} ({e}); start it with `sdctl daemon` (as root){}",
        socket.display(),
        if socket.as_os_str() == crate::cli::DEFAULT_SOCKET {
            ""
        } else {
            " and the same --socket"
        }
    )
}

/// Percent-encodes a name for use in a URL path segment.
pub fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_denied_says_root_is_needed() {
        let s = Path::new("/run/sdnet/sdnet.sock");
        for errno in [libc::EACCES, libc::EPERM] {
            let e = connect_error(s, &std::io::Error::from_raw_os_error(errno)).to_string();
            assert_eq!(
                e,
                format!(
                    "permission denied: the sdnet API is for root (uid {})",
                    nix::unistd::geteuid()
                )
            );
        }
        let e = connect_error(s, &std::io::Error::from_raw_os_error(libc::ENOENT)).to_string();
        assert!(e.contains("start it with `sdctl daemon`"), "{e}");
    }
}
