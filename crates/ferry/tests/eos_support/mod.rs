//! Support for the exactly-once tests: a loopback TCP proxy with a fixed port in
//! front of a broker that comes back on a new port after each restart.
//!
//! ```text
//!  client ──► proxy 127.0.0.1:P (fixed) ──► broker 127.0.0.1:<port of this run>
//!  broker advertises 127.0.0.1:P (--advertised-kafka-addr), so clients only
//!  ever know the proxy and keep their producer state across broker restarts
//! ```
//!
//! When the broker dies its connections close, the proxy closes the client's side
//! too, and the client reconnects through the proxy to the next run.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub struct Proxy {
    port: u16,
    upstream: Arc<AtomicU16>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    /// Listens on an ephemeral loopback port; forwards nowhere until `point_to`.
    pub fn start() -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let upstream = Arc::new(AtomicU16::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (up, st) = (upstream.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(client) = conn else { continue };
                let port = up.load(Ordering::Relaxed);
                let Ok(server) = TcpStream::connect_timeout(
                    &format!("127.0.0.1:{port}").parse().expect("address"),
                    Duration::from_secs(2),
                ) else {
                    // Broker down: the client sees a closed connection and retries.
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                pipe(
                    client.try_clone().expect("clone"),
                    server.try_clone().expect("clone"),
                );
                pipe(server, client);
            }
        });
        Proxy {
            port,
            upstream,
            stop,
        }
    }

    /// `127.0.0.1:PORT` of the proxy, for bootstrap and advertised addresses.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Sends new connections to the broker listening on `broker_port`.
    pub fn point_to(&self, broker_port: u16) {
        self.upstream.store(broker_port, Ordering::Relaxed);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr());
    }
}

/// Copies `from` → `to` on a thread; when either side ends, both are closed.
fn pipe(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = from.shutdown(Shutdown::Both);
        let _ = to.shutdown(Shutdown::Both);
    });
}
