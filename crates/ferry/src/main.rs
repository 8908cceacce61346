//! The `ferry` binary: `ferry serve` runs a broker.
//!
//! Settings come, lowest precedence first, from the embedded defaults, the TOML
//! file given with `--config`, `FERRY_*` environment variables and the command
//! line. Broker settings use Kafka's names (`log.retention.ms`, …).

mod settings;

use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use ferry_core::{Broker, BrokerOptions, SystemClock};
use tokio::net::TcpListener;
use tokio::sync::watch;

use settings::{ServeArgs, Settings};

#[derive(Parser, Debug)]
#[command(
    name = "ferry",
    version,
    about = "ferry: a message broker that speaks the Kafka protocol"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a broker (a single node with data in ./ferry-data by default).
    Serve(Box<ServeArgs>),
}

fn main() {
    if let Err(e) = run() {
        eprintln!("ferry: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match cli.command {
        Command::Serve(args) => {
            let settings = Settings::resolve(&args)?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(serve(settings))
        }
    }
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let listener = TcpListener::bind(&settings.kafka_addr)
        .await
        .with_context(|| format!("binding the Kafka listener to {}", settings.kafka_addr))?;
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
    tracing::info!(data_dir = %settings.data_dir.display(), "opening the data directory");
    let broker = tokio::task::spawn_blocking(move || Broker::open(options, Arc::new(SystemClock)))
        .await?
        .context("opening the broker")?;

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let maintenance = tokio::spawn(broker.clone().run_maintenance(shutdown_rx.clone()));
    let listener_config = ferry_kafka::KafkaListenerConfig::from_broker(&broker);
    let server = tokio::spawn(ferry_kafka::serve(
        listener,
        broker.clone(),
        listener_config,
        shutdown_rx,
    ));
    println!("ferry: kafka listening on {bound}");
    tracing::info!(%bound, node_id = settings.node_id, "ferry is serving");

    wait_for_signal().await?;
    tracing::info!("shutting down");
    let _ = shutdown_tx.send(true);
    let _ = server.await;
    let _ = maintenance.await;
    tokio::task::spawn_blocking(move || broker.shutdown()).await?;
    tracing::info!("stopped cleanly");
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
