//! The HTTP listener of `ferry serve`: `/metrics` (Prometheus text format),
//! `/healthz` (the process is alive) and `/readyz` (recovery finished and the
//! Kafka listener is serving).
//!
//! A deliberately tiny HTTP/1.1 server: GET and HEAD only, one request per
//! connection, a bounded request head and a bounded number of connections.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use ferry_core::Broker;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

/// Bytes of a request line plus headers, at most.
const REQUEST_HEAD_BYTES_MAX: usize = 8 * 1024;
/// HTTP connections served at once, at most.
const CONNECTIONS_MAX: usize = 64;
/// How long a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What the endpoints report on.
#[derive(Default)]
pub struct HttpState {
    broker: OnceLock<Arc<Broker>>,
    stopping: AtomicBool,
}

impl HttpState {
    /// Recovery finished and the Kafka listener serves.
    pub fn set_ready(&self, broker: Arc<Broker>) {
        let _ = self.broker.set(broker);
    }

    pub fn set_stopping(&self) {
        self.stopping.store(true, Ordering::Release);
    }

    fn ready(&self) -> bool {
        self.broker.get().is_some() && !self.stopping.load(Ordering::Acquire)
    }
}

pub async fn serve(
    listener: TcpListener,
    state: Arc<HttpState>,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(CONNECTIONS_MAX));
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "HTTP accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, limit = CONNECTIONS_MAX, "refusing an HTTP connection over the limit");
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, &state).await {
                tracing::debug!(%peer, error = %e, "HTTP request failed");
            }
            drop(permit);
        });
    }
}

async fn handle(mut stream: TcpStream, state: &HttpState) -> std::io::Result<()> {
    let head = match tokio::time::timeout(REQUEST_TIMEOUT, read_head(&mut stream)).await {
        Ok(Ok(Some(head))) => head,
        Ok(Ok(None)) => {
            return respond(&mut stream, false, 400, "text/plain", "bad request\n").await
        }
        Ok(Err(e)) => return Err(e),
        Err(_) => return Ok(()),
    };
    let mut parts = head.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let head_only = method == "HEAD";
    if method != "GET" && !head_only {
        return respond(&mut stream, false, 405, "text/plain", "only GET and HEAD\n").await;
    }
    let path = target.split('?').next().unwrap_or("");
    match path {
        "/metrics" => {
            let body = match state.broker.get() {
                Some(broker) => ferry_core::metrics::render(broker),
                None => {
                    let mut out = String::new();
                    ferry_core::metrics::metrics().render(&mut out);
                    out
                }
            };
            respond(
                &mut stream,
                head_only,
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                &body,
            )
            .await
        }
        "/healthz" => respond(&mut stream, head_only, 200, "text/plain", "ok\n").await,
        "/readyz" if state.ready() => {
            respond(&mut stream, head_only, 200, "text/plain", "ready\n").await
        }
        "/readyz" => respond(&mut stream, head_only, 503, "text/plain", "not ready\n").await,
        _ => respond(&mut stream, head_only, 404, "text/plain", "not found\n").await,
    }
}

/// The request line, once the whole head arrived; `None` if it is too large or
/// the client went away first.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<String>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]);
            return Ok(head.lines().next().map(str::to_string));
        }
        if buf.len() > REQUEST_HEAD_BYTES_MAX {
            return Ok(None);
        }
    }
}

async fn respond(
    stream: &mut TcpStream,
    head_only: bool,
    status: u16,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if !head_only {
        out.push_str(body);
    }
    stream.write_all(out.as_bytes()).await?;
    stream.shutdown().await
}
