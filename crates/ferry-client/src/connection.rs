//! One connection to one broker.
//!
//! ```text
//!  send(req) ─► encode frame, register correlation id ─► writer task ─► socket
//!      ▲                                                                   │
//!      └──── oneshot ◄── pending[correlation id] ◄── reader task ◄─────────┘
//! ```
//!
//! Requests are pipelined: any number of callers may send at once (up to
//! `inflight_requests_max`), and each response is handed to the caller whose
//! correlation id it carries, so nothing depends on the broker answering in
//! order. Right after connecting, ApiVersions tells which versions the broker
//! speaks; every typed request then goes at the highest version both sides know.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, ApiVersionsRequest, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::error::{ClientError, Result};

/// Limits and identity of a connection.
#[derive(Debug, Clone)]
pub struct ConnectionConfig {
    /// Sent in every request header.
    pub client_id: String,
    pub connect_timeout: Duration,
    /// How long a request may wait for its response.
    pub request_timeout: Duration,
    /// Largest response frame accepted.
    pub frame_bytes_max: usize,
    /// Requests sent and not yet answered, at most.
    pub inflight_requests_max: usize,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        ConnectionConfig {
            client_id: "ferry-client".to_string(),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            frame_bytes_max: 256 * 1024 * 1024,
            inflight_requests_max: 64,
        }
    }
}

/// The version ranges a broker advertised: API key → (min, max).
pub type ApiVersions = HashMap<i16, (i16, i16)>;

/// The highest version both the client (`client`) and the broker (`broker`) know,
/// not above `cap`.
pub fn pick_version(client: (i16, i16), broker: (i16, i16), cap: Option<i16>) -> Option<i16> {
    let mut max = client.1.min(broker.1);
    if let Some(cap) = cap {
        max = max.min(cap);
    }
    let min = client.0.max(broker.0);
    (max >= min).then_some(max)
}

type Waiter = oneshot::Sender<Result<Bytes>>;

#[derive(Default)]
struct Pending {
    /// Why the connection closed; set once.
    closed: Option<String>,
    waiting: HashMap<i32, Waiter>,
}

impl Pending {
    fn close(&mut self, addr: &str, why: String) {
        if self.closed.is_none() {
            tracing::debug!(%addr, reason = %why, "connection closed");
            self.closed = Some(why);
        }
        for (_, w) in self.waiting.drain() {
            let _ = w.send(Err(ClientError::Closed(addr.to_string())));
        }
    }
}

/// A connection to one broker; cheap to share (`Arc`), safe to use from many tasks.
pub struct Connection {
    addr: String,
    client_id: StrBytes,
    config: ConnectionConfig,
    frames: mpsc::UnboundedSender<Bytes>,
    pending: Arc<Mutex<Pending>>,
    closed: Arc<AtomicBool>,
    next_correlation_id: AtomicI32,
    inflight: Semaphore,
    versions: OnceLock<ApiVersions>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Connection {
    /// Connects to `addr` (HOST:PORT) and negotiates API versions.
    pub async fn connect(addr: &str, config: ConnectionConfig) -> Result<Connection> {
        let connect = TcpStream::connect(addr);
        let stream = match tokio::time::timeout(config.connect_timeout, connect).await {
            Ok(Ok(s)) => s,
            Ok(Err(source)) => {
                return Err(ClientError::Connect {
                    addr: addr.to_string(),
                    source,
                })
            }
            Err(_) => {
                return Err(ClientError::Timeout {
                    what: format!("connecting to {addr}"),
                    ms: config.connect_timeout.as_millis() as u64,
                })
            }
        };
        let _ = stream.set_nodelay(true);
        let conn = Connection::over(stream, addr, config);
        conn.negotiate().await?;
        Ok(conn)
    }

    /// Wraps an open stream without negotiating versions (see [`Connection::negotiate`]).
    pub fn over(stream: TcpStream, addr: &str, config: ConnectionConfig) -> Connection {
        let (reader, writer) = stream.into_split();
        let pending = Arc::new(Mutex::new(Pending::default()));
        let closed = Arc::new(AtomicBool::new(false));
        let (frames, frames_rx) = mpsc::unbounded_channel();
        let reader_task = tokio::spawn(read_loop(
            reader,
            addr.to_string(),
            config.frame_bytes_max,
            pending.clone(),
            closed.clone(),
        ));
        let writer_task = tokio::spawn(write_loop(
            writer,
            frames_rx,
            addr.to_string(),
            pending.clone(),
            closed.clone(),
        ));
        Connection {
            addr: addr.to_string(),
            client_id: StrBytes::from_string(config.client_id.clone()),
            inflight: Semaphore::new(config.inflight_requests_max.max(1)),
            config,
            frames,
            pending,
            closed,
            next_correlation_id: AtomicI32::new(0),
            versions: OnceLock::new(),
            tasks: vec![reader_task, writer_task],
        }
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// The versions the broker advertised (empty before negotiation).
    pub fn api_versions(&self) -> ApiVersions {
        self.versions.get().cloned().unwrap_or_default()
    }

    /// ApiVersions: v3 first; a broker that does not know v3 answers in v0 with
    /// UNSUPPORTED_VERSION and its ranges, and the client asks again at v0.
    pub async fn negotiate(&self) -> Result<()> {
        let req = ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str("ferry"))
            .with_client_software_version(StrBytes::from_static_str(env!("CARGO_PKG_VERSION")));
        let resp = match self.send_version(&req, 3).await {
            Ok(r) if r.error_code == 0 => r,
            Ok(_) | Err(ClientError::Decode { .. }) => self.send_version(&req, 0).await?,
            Err(e) => return Err(e),
        };
        ClientError::check(resp.error_code, || format!("ApiVersions to {}", self.addr))?;
        let versions = resp
            .api_keys
            .iter()
            .map(|k| (k.api_key, (k.min_version, k.max_version)))
            .collect();
        let _ = self.versions.set(versions);
        Ok(())
    }

    /// The version `R` goes at: the highest both sides know, at most `cap`.
    pub fn version_for<R: Request>(&self, cap: Option<i16>) -> Result<i16> {
        let api = api_key::<R>();
        let client = (R::VERSIONS.min, R::VERSIONS.max);
        let broker = self.versions.get().and_then(|v| v.get(&R::KEY).copied());
        broker
            .and_then(|b| pick_version(client, b, cap))
            .ok_or_else(|| ClientError::UnsupportedApi {
                api,
                client_min: client.0,
                client_max: cap.map_or(client.1, |c| c.min(client.1)),
                broker: match broker {
                    Some((min, max)) => format!("{min}..={max}"),
                    None => "none".to_string(),
                },
            })
    }

    /// Sends `req` at the negotiated version and waits for its response.
    pub async fn send<R: Request>(&self, req: &R) -> Result<R::Response> {
        let version = self.version_for::<R>(None)?;
        self.send_version(req, version).await
    }

    /// Like [`Connection::send`], at a version no higher than `cap` (for callers
    /// that fill fields of a known version range only).
    pub async fn send_capped<R: Request>(&self, req: &R, cap: i16) -> Result<(i16, R::Response)> {
        let version = self.version_for::<R>(Some(cap))?;
        Ok((version, self.send_version(req, version).await?))
    }

    /// Sends `req` at exactly `version` and waits for its response.
    pub async fn send_version<R: Request>(&self, req: &R, version: i16) -> Result<R::Response> {
        let api = api_key::<R>();
        let _permit = self
            .inflight
            .acquire()
            .await
            .map_err(|_| self.closed_error())?;
        let correlation_id = self.next_correlation_id.fetch_add(1, Ordering::Relaxed);
        let frame = self.encode(req, version, correlation_id)?;
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = self.pending.lock().map_err(|_| self.closed_error())?;
            if pending.closed.is_some() {
                return Err(self.closed_error());
            }
            pending.waiting.insert(correlation_id, tx);
        }
        if self.frames.send(frame).is_err() {
            self.forget(correlation_id);
            return Err(self.closed_error());
        }
        let mut body = match tokio::time::timeout(self.config.request_timeout, rx).await {
            Ok(Ok(result)) => result?,
            Ok(Err(_)) => return Err(self.closed_error()),
            Err(_) => {
                self.forget(correlation_id);
                return Err(ClientError::Timeout {
                    what: format!("{api:?} to {}", self.addr),
                    ms: self.config.request_timeout.as_millis() as u64,
                });
            }
        };
        let decode_error = |e: anyhow::Error| ClientError::Decode {
            api,
            version,
            message: e.to_string(),
        };
        ResponseHeader::decode(&mut body, R::Response::header_version(version))
            .map_err(decode_error)?;
        let resp = R::Response::decode(&mut body, version).map_err(decode_error)?;
        Ok(resp)
    }

    /// Sends a request that gets no response (Produce with acks=0).
    pub async fn send_no_response<R: Request>(&self, req: &R, version: i16) -> Result<()> {
        let correlation_id = self.next_correlation_id.fetch_add(1, Ordering::Relaxed);
        let frame = self.encode(req, version, correlation_id)?;
        self.frames.send(frame).map_err(|_| self.closed_error())
    }

    fn encode<R: Request>(&self, req: &R, version: i16, correlation_id: i32) -> Result<Bytes> {
        let api = api_key::<R>();
        let encode_error = |e: anyhow::Error| ClientError::Encode {
            api,
            version,
            message: e.to_string(),
        };
        let header = RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(correlation_id)
            .with_client_id(Some(self.client_id.clone()));
        let mut buf = BytesMut::with_capacity(128);
        buf.put_i32(0);
        header
            .encode(&mut buf, R::header_version(version))
            .map_err(encode_error)?;
        req.encode(&mut buf, version).map_err(encode_error)?;
        let len = i32::try_from(buf.len() - 4).map_err(|_| ClientError::Encode {
            api,
            version,
            message: "request larger than 2 GiB".into(),
        })?;
        buf[..4].copy_from_slice(&len.to_be_bytes());
        Ok(buf.freeze())
    }

    fn forget(&self, correlation_id: i32) {
        if let Ok(mut p) = self.pending.lock() {
            p.waiting.remove(&correlation_id);
        }
    }

    fn closed_error(&self) -> ClientError {
        ClientError::Closed(self.addr.clone())
    }
}

fn api_key<R: Request>() -> ApiKey {
    ApiKey::try_from(R::KEY).unwrap_or(ApiKey::ApiVersions)
}

async fn write_loop(
    writer: OwnedWriteHalf,
    mut frames: mpsc::UnboundedReceiver<Bytes>,
    addr: String,
    pending: Arc<Mutex<Pending>>,
    closed: Arc<AtomicBool>,
) {
    let mut writer = BufWriter::with_capacity(64 * 1024, writer);
    let why = loop {
        let Some(frame) = frames.recv().await else {
            break "connection dropped".to_string();
        };
        if let Err(e) = writer.write_all(&frame).await {
            break format!("write failed: {e}");
        }
        if frames.is_empty() {
            if let Err(e) = writer.flush().await {
                break format!("write failed: {e}");
            }
        }
    };
    closed.store(true, Ordering::Release);
    if let Ok(mut p) = pending.lock() {
        p.close(&addr, why);
    }
}

async fn read_loop(
    mut reader: OwnedReadHalf,
    addr: String,
    frame_bytes_max: usize,
    pending: Arc<Mutex<Pending>>,
    closed: Arc<AtomicBool>,
) {
    let why = loop {
        let frame = match read_frame(&mut reader, frame_bytes_max, &addr).await {
            Ok(f) => f,
            Err(e) => break e.to_string(),
        };
        let Some(correlation_id) = peek_correlation_id(&frame) else {
            break "response frame shorter than its header".to_string();
        };
        let waiter = match pending.lock() {
            Ok(mut p) => p.waiting.remove(&correlation_id),
            Err(_) => break "poisoned".to_string(),
        };
        match waiter {
            Some(w) => {
                let _ = w.send(Ok(frame));
            }
            // The caller gave up (timeout); its late answer is dropped.
            None => tracing::debug!(%addr, correlation_id, "response nobody waits for"),
        }
    };
    closed.store(true, Ordering::Release);
    if let Ok(mut p) = pending.lock() {
        p.close(&addr, why);
    }
}

/// Reads one length-prefixed frame (without the prefix).
pub async fn read_frame<R: tokio::io::AsyncRead + Unpin>(
    reader: &mut R,
    frame_bytes_max: usize,
    addr: &str,
) -> Result<Bytes> {
    let io = |source| ClientError::Io {
        addr: addr.to_string(),
        source,
    };
    let mut len = [0u8; 4];
    reader.read_exact(&mut len).await.map_err(io)?;
    let size = i32::from_be_bytes(len);
    let size = usize::try_from(size)
        .map_err(|_| ClientError::Protocol(format!("negative frame size {size} from {addr}")))?;
    if size > frame_bytes_max {
        return Err(ClientError::FrameTooLarge {
            addr: addr.to_string(),
            size,
            max: frame_bytes_max,
        });
    }
    let mut buf = BytesMut::zeroed(size);
    reader.read_exact(&mut buf).await.map_err(io)?;
    Ok(buf.freeze())
}

/// Every response header version starts with the correlation id.
pub fn peek_correlation_id(frame: &[u8]) -> Option<i32> {
    let mut head = frame.get(..4)?;
    Some(head.get_i32())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::api_versions_response::ApiVersion;
    use kafka_protocol::messages::ApiVersionsResponse;
    use kafka_protocol::messages::{MetadataRequest, MetadataResponse};
    use tokio::net::TcpListener;

    #[test]
    fn the_highest_common_version_is_picked() {
        assert_eq!(pick_version((0, 12), (0, 9), None), Some(9));
        assert_eq!(pick_version((0, 9), (3, 12), None), Some(9));
        assert_eq!(pick_version((0, 12), (0, 12), Some(7)), Some(7));
        assert_eq!(pick_version((4, 12), (0, 3), None), None);
        assert_eq!(pick_version((4, 12), (0, 12), Some(2)), None);
    }

    #[test]
    fn the_correlation_id_is_read_from_the_response_header() {
        let frame = [0u8, 0, 1, 2, 9, 9];
        assert_eq!(peek_correlation_id(&frame), Some(258));
        assert_eq!(peek_correlation_id(&frame[..3]), None);
    }

    #[tokio::test]
    async fn frames_larger_than_the_limit_are_refused() {
        let mut data: &[u8] = &[0, 0, 0, 100, 1, 2];
        let e = read_frame(&mut data, 10, "x").await.expect_err("too large");
        assert!(matches!(e, ClientError::FrameTooLarge { size: 100, .. }));
        let mut data: &[u8] = &[0, 0, 0, 2, 7, 8];
        assert_eq!(
            &read_frame(&mut data, 10, "x").await.expect("frame")[..],
            &[7, 8]
        );
    }

    /// A fake broker: answers ApiVersions, then collects two Metadata requests and
    /// answers them in reverse order, each with its correlation id.
    async fn fake_broker(listener: TcpListener) {
        let (mut stream, _) = listener.accept().await.expect("accept");
        let mut requests = Vec::new();
        loop {
            let mut frame = read_frame(&mut stream, 1 << 20, "client")
                .await
                .expect("frame");
            let key = i16::from_be_bytes([frame[0], frame[1]]);
            let version = i16::from_be_bytes([frame[2], frame[3]]);
            let api = ApiKey::try_from(key).expect("key");
            let header = RequestHeader::decode(&mut frame, api.request_header_version(version))
                .expect("header");
            if api == ApiKey::ApiVersions {
                let resp = ApiVersionsResponse::default().with_api_keys(vec![
                    ApiVersion::default()
                        .with_api_key(18)
                        .with_min_version(0)
                        .with_max_version(4),
                    ApiVersion::default()
                        .with_api_key(3)
                        .with_min_version(0)
                        .with_max_version(9),
                ]);
                write_response(&mut stream, api, version, header.correlation_id, &resp).await;
                continue;
            }
            requests.push((version, header.correlation_id));
            if requests.len() == 2 {
                break;
            }
        }
        for (version, corr) in requests.into_iter().rev() {
            let resp = MetadataResponse::default()
                .with_controller_id(kafka_protocol::messages::BrokerId(corr));
            write_response(&mut stream, ApiKey::Metadata, version, corr, &resp).await;
        }
        // Keep the socket open until the client is done.
        let mut rest = [0u8; 1];
        let _ = stream.read(&mut rest).await;
    }

    async fn write_response<M: Encodable>(
        stream: &mut TcpStream,
        api: ApiKey,
        version: i16,
        corr: i32,
        body: &M,
    ) {
        let mut buf = BytesMut::new();
        buf.put_i32(0);
        ResponseHeader::default()
            .with_correlation_id(corr)
            .encode(&mut buf, api.response_header_version(version))
            .expect("header");
        body.encode(&mut buf, version).expect("body");
        let len = (buf.len() - 4) as i32;
        buf[..4].copy_from_slice(&len.to_be_bytes());
        stream.write_all(&buf).await.expect("write");
    }

    #[tokio::test]
    async fn pipelined_requests_get_their_own_responses_in_any_order() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let server = tokio::spawn(fake_broker(listener));
        let conn = Connection::connect(&addr, ConnectionConfig::default())
            .await
            .expect("connect");
        assert_eq!(conn.api_versions().get(&3), Some(&(0, 9)));
        assert_eq!(
            conn.version_for::<MetadataRequest>(None).expect("version"),
            9
        );
        assert!(conn
            .version_for::<kafka_protocol::messages::FetchRequest>(None)
            .is_err());
        let req = MetadataRequest::default();
        let (a, b) = tokio::join!(conn.send(&req), conn.send(&req));
        let (a, b) = (a.expect("first"), b.expect("second"));
        // The controller id field echoes each request's correlation id.
        assert_eq!((a.controller_id.0, b.controller_id.0), (1, 2));
        drop(conn);
        server.abort();
    }

    #[tokio::test]
    async fn a_closed_connection_fails_waiting_requests() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.expect("accept");
            drop(stream);
        });
        let stream = TcpStream::connect(&addr).await.expect("connect");
        let conn = Connection::over(stream, &addr, ConnectionConfig::default());
        let e = conn
            .send_version(&MetadataRequest::default(), 9)
            .await
            .expect_err("closed");
        assert!(
            matches!(e, ClientError::Closed(_) | ClientError::Io { .. }),
            "{e}"
        );
        assert!(conn.is_closed());
        server.await.expect("server");
    }
}
