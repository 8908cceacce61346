//! The `ferry` command-line client: one module per command group, all speaking
//! standard Kafka APIs through `ferry-client`, so they work against any Kafka
//! broker.
//!
//! ```text
//!  main.rs ─► cli::<group>::run(args) ─► kafka.rs helpers ─► ferry_client::Client
//!                        └─► output.rs: tables for people, --json for scripts
//! ```

pub mod cluster;
pub mod consume;
pub mod group;
pub mod kafka;
pub mod member;
pub mod output;
pub mod plan;
pub mod produce;
pub mod topic;

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use ferry_client::{Client, ClientConfig};

/// Options every client command takes.
#[derive(Args, Debug, Clone)]
pub struct CommonArgs {
    /// Brokers to bootstrap from, HOST:PORT[,HOST:PORT…]
    #[arg(
        long,
        global = true,
        env = "FERRY_BROKERS",
        default_value = "localhost:9092"
    )]
    pub brokers: String,
    /// Print JSON for scripts instead of tables
    #[arg(long, global = true)]
    pub json: bool,
}

impl CommonArgs {
    pub async fn connect(&self) -> anyhow::Result<Arc<Client>> {
        let bootstrap: Vec<String> = self
            .brokers
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        anyhow::ensure!(!bootstrap.is_empty(), "--brokers is empty");
        let mut config = ClientConfig::new(bootstrap);
        config.connection.client_id = "ferry-cli".to_string();
        let client = Client::connect(config)
            .await
            .with_context(|| format!("connecting to {}", self.brokers))?;
        Ok(Arc::new(client))
    }
}

/// Runs a client command on a small runtime of its own.
pub fn run(command: impl Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(command)
}
