//! One client connection: a reader that parses frames and starts their handlers,
//! and a writer that sends the responses in request order.
//!
//! Requests of one connection run in the order they came, as Kafka runs them,
//! except fetches, which only read and may long-poll, and the wait of a
//! produce for its acks level (fsync, replication) once its records are
//! appended: they run beside the requests that follow them. Kafka clients
//! match responses by order, so the writer awaits them in the order the
//! requests came; at most `queued.max.requests` are pending.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use ferry_core::Broker;
use kafka_protocol::messages::ApiKey;
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};

use crate::budget::{Reservation, ResponseBudget};
use crate::dispatch::{self, RequestContext};
use crate::frame::{self, FrameError};
use crate::server::KafkaListenerConfig;

pub struct Connection {
    stream: TcpStream,
    peer: SocketAddr,
    broker: Arc<Broker>,
    config: KafkaListenerConfig,
    /// Broker-wide budget of request bytes in memory; a frame's bytes are taken
    /// before it is read and given back when its handler has finished.
    memory: Arc<Semaphore>,
    /// The broker-wide fetch response budget.
    responses: ResponseBudget,
}

/// A response slot: `None` when the request gets no response (produce with acks=0)
/// or when the connection must close after the responses before it.
/// What rides along with a response until it is written, and is given back then.
type Slot = oneshot::Receiver<(dispatch::Outcome, Held)>;

#[derive(Default)]
struct Held {
    /// The response's share of the response memory budget.
    _reservation: Option<Reservation>,
    /// A fetch's turn: the connection's next fetch waits for it.
    _fetch_turn: Option<OwnedSemaphorePermit>,
}

impl Connection {
    pub fn new(
        stream: TcpStream,
        peer: SocketAddr,
        broker: Arc<Broker>,
        config: KafkaListenerConfig,
        memory: Arc<Semaphore>,
        responses: ResponseBudget,
    ) -> Connection {
        Connection {
            stream,
            peer,
            broker,
            config,
            memory,
            responses,
        }
    }

    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let Connection {
            stream,
            peer,
            broker,
            config,
            memory,
            responses,
        } = self;
        let send_timeout = config.response_send_timeout;
        // One fetch at a time until its response is written: a client that
        // never reads pins at most one response.
        let fetch_turns = Arc::new(Semaphore::new(1));
        let (mut reader, writer) = stream.into_split();
        let (slots_tx, mut slots_rx) = mpsc::channel::<Slot>(config.inflight_requests_max);
        let mut writer_task = tokio::spawn(async move {
            let mut writer = BufWriter::with_capacity(64 * 1024, writer);
            while let Some(slot) = slots_rx.recv().await {
                match slot.await {
                    Ok((dispatch::Outcome::Respond(bytes), held)) => {
                        // A client that does not take its responses is closed
                        // rather than let it pin their memory.
                        let sent = tokio::time::timeout(send_timeout, async {
                            write(&mut writer, &bytes).await?;
                            if slots_rx.is_empty() {
                                writer.flush().await?;
                            }
                            Ok::<_, std::io::Error>(())
                        })
                        .await;
                        drop(held);
                        match sent {
                            Ok(Ok(())) => {}
                            Ok(Err(_)) => return,
                            Err(_) => {
                                tracing::warn!(%peer, timeout_ms = send_timeout.as_millis() as u64, "closing connection: the client does not read its responses");
                                return;
                            }
                        }
                    }
                    Ok((dispatch::Outcome::NoResponse, _)) => {
                        if slots_rx.is_empty() && writer.flush().await.is_err() {
                            return;
                        }
                    }
                    Ok((dispatch::Outcome::Close, _)) | Err(_) => break,
                }
            }
            let _ = writer.flush().await;
            let _ = writer.shutdown().await;
        });
        let mut client_id = String::new();
        let mut writer_done = false;
        loop {
            let frame = tokio::select! {
                f = frame::read_frame(&mut reader, config.frame_bytes_max, &memory) => f,
                _ = shutdown.changed() => break,
                // The writer stops on a request that must close the connection.
                _ = &mut writer_task => {
                    writer_done = true;
                    break;
                }
            };
            let (frame, permit) = match frame {
                Ok(Some((f, permit))) => (f.freeze(), permit),
                Ok(None) | Err(FrameError::Closed) => break,
                Err(FrameError::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(e) => {
                    tracing::warn!(%peer, client_id = %client_id, error = %e, "closing connection: bad frame");
                    break;
                }
            };
            let (tx, rx) = oneshot::channel();
            if slots_tx.send(rx).await.is_err() {
                break;
            }
            let mut body: Bytes = frame;
            let parsed = match frame::parse_header(&mut body) {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(%peer, client_id = %client_id, error = %e, "closing connection: bad request header");
                    let _ = tx.send((dispatch::Outcome::Close, Held::default()));
                    break;
                }
            };
            let api_key = parsed.api_key;
            if let Some(id) = &parsed.header.client_id {
                if id.as_str() != client_id {
                    client_id = id.as_str().to_string();
                }
            }
            let ctx =
                RequestContext::new(broker.clone(), peer, client_id.clone(), responses.clone());
            let reservation = ctx.reservation.clone();
            let fetch_turn = if api_key == ApiKey::Fetch {
                // The previous fetch's response is written (or the writer gave up
                // and the connection is closing).
                tokio::select! {
                    turn = fetch_turns.clone().acquire_owned() => turn.ok(),
                    _ = shutdown.changed() => break,
                }
            } else {
                None
            };
            // A request that cannot be answered yields Outcome::Close: the writer
            // sends the responses before it, then the connection closes.
            let (api, started) = (parsed.api_key, std::time::Instant::now());
            // A produce appends here, in request order; the rest of it, and any
            // other request, runs in the future.
            let finishing = dispatch::start(ctx, parsed, body);
            // A produce's frame is gone once its records are appended: its bytes
            // go back to the budget now, not when the acks level is met (else
            // waiting produces could hold the whole budget while the follower
            // fetches that would move them on wait for it).
            let permit = (api_key != ApiKey::Produce).then_some(permit);
            let handle = async move {
                let outcome = finishing.await;
                crate::errors::observe_request(api, started.elapsed(), &outcome);
                drop(permit);
                let held = Held {
                    _reservation: reservation.lock().take(),
                    _fetch_turn: fetch_turn,
                };
                let _ = tx.send((outcome, held));
            };
            if api_key == ApiKey::Fetch || api_key == ApiKey::Produce {
                // A fetch only reads and may wait for data, and a produce has
                // appended already and only waits for its acks level: let the
                // next requests start meanwhile (their responses still leave
                // after it). Pipelined produces then share one fsync.
                tokio::spawn(handle);
            } else {
                // Everything else runs in request order, as Kafka runs a
                // connection's requests: commits land in the order made.
                handle.await;
            }
        }
        drop(slots_tx);
        if !writer_done {
            let _ = writer_task.await;
        }
    }
}

async fn write<W: tokio::io::AsyncWrite + Unpin>(
    writer: &mut W,
    bytes: &Bytes,
) -> std::io::Result<()> {
    writer.write_all(bytes).await
}
