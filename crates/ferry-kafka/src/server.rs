//! The Kafka listener: accepts connections up to `max.connections` and hands each
//! to its own task.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ferry_core::Broker;
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::budget::ResponseBudget;
use crate::connection::Connection;

/// Limits of the listener, from the broker settings of the same Kafka names.
#[derive(Debug, Clone)]
pub struct KafkaListenerConfig {
    /// `socket.request.max.bytes`.
    pub frame_bytes_max: usize,
    /// `queued.max.requests`: requests of one connection in flight at once.
    pub inflight_requests_max: usize,
    /// `max.connections`.
    pub connections_max: usize,
    /// `max.connections.per.ip`: open connections from one client address.
    pub connections_per_ip_max: usize,
    /// `queued.max.request.bytes`: request bytes held at once over all connections.
    pub request_bytes_max: usize,
    /// `queued.max.response.bytes`: fetch response bytes held at once over all
    /// connections.
    pub response_bytes_max: usize,
    /// `response.send.timeout.ms`.
    pub response_send_timeout: std::time::Duration,
}

impl KafkaListenerConfig {
    pub fn from_broker(broker: &Broker) -> KafkaListenerConfig {
        let c = broker.config();
        KafkaListenerConfig {
            frame_bytes_max: c.long("socket.request.max.bytes").max(1024) as usize,
            inflight_requests_max: c.long("queued.max.requests").max(1) as usize,
            connections_max: c.long("max.connections").max(1) as usize,
            connections_per_ip_max: c.long("max.connections.per.ip").max(1) as usize,
            request_bytes_max: c.long("queued.max.request.bytes").max(1024) as usize,
            response_bytes_max: c.long("queued.max.response.bytes").max(1024) as usize,
            response_send_timeout: std::time::Duration::from_millis(
                c.long("response.send.timeout.ms").max(1) as u64,
            ),
        }
    }
}

/// Serves Kafka clients on `listener` until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    broker: Arc<Broker>,
    config: KafkaListenerConfig,
    mut shutdown: watch::Receiver<bool>,
) {
    let connections = Arc::new(Semaphore::new(config.connections_max));
    // A frame may not be larger than the pool, or it could never be admitted.
    let pool_bytes = config
        .request_bytes_max
        .max(config.frame_bytes_max)
        .min(Semaphore::MAX_PERMITS);
    let memory = Arc::new(Semaphore::new(pool_bytes));
    let responses = ResponseBudget::new(config.response_bytes_max);
    let per_ip = Arc::new(Mutex::new(HashMap::<IpAddr, usize>::new()));
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => return,
        };
        let (stream, peer): (_, SocketAddr) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            tracing::warn!(%peer, limit = config.connections_max, "refusing a connection over max.connections");
            ferry_core::metrics::metrics().connections_rejected.inc();
            drop(stream);
            continue;
        };
        let Some(ip_slot) = IpSlot::take(&per_ip, peer.ip(), config.connections_per_ip_max) else {
            tracing::warn!(%peer, limit = config.connections_per_ip_max, "refusing a connection over max.connections.per.ip");
            drop((stream, permit));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let conn = Connection::new(
            stream,
            peer,
            broker.clone(),
            config.clone(),
            memory.clone(),
            responses.clone(),
        );
        let shutdown = shutdown.clone();
        let metrics = ferry_core::metrics::metrics();
        metrics.connections_accepted.inc();
        metrics.connections_open.inc();
        tokio::spawn(async move {
            conn.run(shutdown).await;
            metrics.connections_open.dec();
            drop((permit, ip_slot));
        });
    }
}

/// One connection's share of its client address's `max.connections.per.ip`.
struct IpSlot {
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl IpSlot {
    fn take(counts: &Arc<Mutex<HashMap<IpAddr, usize>>>, ip: IpAddr, max: usize) -> Option<IpSlot> {
        let mut map = counts.lock();
        let n = map.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(IpSlot {
            counts: counts.clone(),
            ip,
        })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut map = self.counts.lock();
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                // Keeps the map as small as the set of connected addresses.
                map.remove(&self.ip);
            }
        }
    }
}
