//! `ferry serve`: opens the broker and runs the Kafka and HTTP listeners until
//! SIGTERM or SIGINT.

use std::sync::Arc;

use anyhow::Context;
use ferry_cluster::{ClusterNode, ClusterOptions};
use ferry_core::{Broker, BrokerOptions, SystemClock};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::http::HttpState;
use crate::settings::{self, ServeArgs, Settings};

/// openraft narrates every vote and replication step at info, and logs each
/// failed heartbeat to an unreachable member (every 500 ms) at warn and error;
/// ferry-cluster logs the first failure and the recovery instead.
pub const DEFAULT_LOG_FILTER: &str =
    "info,openraft=warn,openraft::replication=off,openraft::engine::handler::replication_handler=off";

pub fn run(args: &ServeArgs) -> anyhow::Result<()> {
    let settings = Settings::resolve(args)?;
    crate::init_logs(settings.log_level.as_deref().unwrap_or(DEFAULT_LOG_FILTER));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(serve(settings))
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    // Registered first: a SIGTERM that arrives while the data directory is
    // recovered, or just after the listening line is printed, must still
    // mean a clean shutdown rather than the default action (death by signal).
    let signals = Signals::register()?;
    let listener = TcpListener::bind(&settings.kafka_addr)
        .await
        .with_context(|| format!("binding the Kafka listener to {}", settings.kafka_addr))?;
    // Bound before recovery so /healthz answers (and /readyz says "not yet")
    // while a large data directory is recovered.
    // A busy HTTP port stops the broker like a busy Kafka port: a broker without
    // /readyz would look dead to whatever watches it.
    let http_listener = Some(
        TcpListener::bind(&settings.http_addr)
            .await
            .with_context(|| format!("binding the HTTP listener to {}", settings.http_addr))?,
    );
    let http_bound = http_listener.as_ref().and_then(|l| l.local_addr().ok());
    let bound = listener.local_addr()?;
    let (host, port) = match &settings.advertised_kafka_addr {
        Some(addr) => settings::split_host_port(addr)?,
        None if bound.ip().is_unspecified() => {
            tracing::warn!(
                "listening on every interface; advertising 127.0.0.1 (set --advertised-kafka-addr)"
            );
            ("127.0.0.1".to_string(), i32::from(bound.port()))
        }
        None => (bound.ip().to_string(), i32::from(bound.port())),
    };
    let options = BrokerOptions {
        node_id: settings.node_id,
        data_dir: settings.data_dir.clone(),
        advertised_host: host,
        advertised_port: port,
        rack: settings.rack.clone(),
        configs: settings.broker_configs.clone(),
    };
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let http_state = Arc::new(HttpState::default());
    let http = http_listener.map(|l| {
        tokio::spawn(crate::http::serve(
            l,
            http_state.clone(),
            shutdown_rx.clone(),
        ))
    });

    tracing::info!(data_dir = %settings.data_dir.display(), "opening the data directory");
    let (broker, cluster) = if settings.controller_voters.is_empty() {
        let broker =
            tokio::task::spawn_blocking(move || Broker::open(options, Arc::new(SystemClock)))
                .await?
                .context("opening the broker")?;
        (broker, None)
    } else {
        let own = settings.controller_voters.get(&(settings.node_id as u64));
        let controller_addr = settings
            .controller_addr
            .clone()
            .or_else(|| own.cloned())
            .context("no controller address")?;
        let cluster = ClusterOptions {
            voters: settings.controller_voters.clone(),
            controller_addr,
        };
        let node = ClusterNode::start(options, cluster, Arc::new(SystemClock))
            .await
            .context("joining the cluster")?;
        tracing::info!(controller = %node.quorum().local_addr(), "metadata quorum started");
        (node.broker().clone(), Some(node))
    };

    let maintenance = tokio::spawn(broker.clone().run_maintenance(shutdown_rx.clone()));
    let listener_config = ferry_kafka::KafkaListenerConfig::from_broker(&broker);
    let server = tokio::spawn(ferry_kafka::serve(
        listener,
        broker.clone(),
        listener_config,
        shutdown_rx,
    ));
    http_state.set_ready(broker.clone());
    println!("ferry: kafka listening on {bound}");
    if let Some(node) = &cluster {
        println!(
            "ferry: controller listening on {}",
            node.quorum().local_addr()
        );
    }
    if let Some(http_bound) = http_bound {
        println!("ferry: http listening on {http_bound}");
        tracing::info!(%http_bound, "HTTP endpoints: /metrics /healthz /readyz");
    }
    tracing::info!(%bound, node_id = settings.node_id, "ferry is serving");

    signals.wait().await;
    tracing::info!("shutting down");
    http_state.set_stopping();
    let _ = shutdown_tx.send(true);
    let _ = server.await;
    if let Some(http) = http {
        let _ = http.await;
    }
    let _ = maintenance.await;
    if let Some(node) = &cluster {
        node.shutdown().await;
    }
    tokio::task::spawn_blocking(move || broker.shutdown()).await?;
    tracing::info!("stopped cleanly");
    Ok(())
}

/// SIGTERM and SIGINT, caught from the moment they are registered; one that
/// arrives before [`Signals::wait`] is kept until then.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn register() -> anyhow::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            term: signal(SignalKind::terminate()).context("catching SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("catching SIGINT")?,
        })
    }

    async fn wait(mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}
