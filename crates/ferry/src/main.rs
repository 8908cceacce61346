//! The `ferry` binary: `ferry serve` runs a broker; `ferry topic|produce|consume|
//! group|cluster` are the command-line client (cli/), speaking only standard
//! Kafka APIs through ferry-client, so they work against Apache Kafka too.
//!
//! Settings of `serve` come, lowest precedence first, from the embedded
//! defaults, the TOML file given with `--config`, `FERRY_*` environment
//! variables and the command line. Broker settings use Kafka's names
//! (`log.retention.ms`, …).
//!
//! One `Command` variant per command group, each handled in its own module:
//! adding a command is a variant here and a module beside the others.

mod cli;
mod http;
mod serve;
mod settings;
mod verify;

use clap::{Parser, Subcommand};

use settings::ServeArgs;

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
    /// Create, list, describe, delete and configure topics.
    Topic(cli::topic::TopicArgs),
    /// Produce records: one per line of stdin (or of --file).
    Produce(cli::produce::ProduceArgs),
    /// Consume records and print them.
    Consume(cli::consume::ConsumeArgs),
    /// List, describe, reset and delete consumer groups.
    Group(cli::group::GroupArgs),
    /// Brokers, controller, versions and broker configs.
    Cluster(cli::cluster::ClusterArgs),
    /// Offline log tools: `ferry log verify DATA_DIR`.
    #[command(subcommand)]
    Log(verify::LogCommand),
}

fn main() {
    if let Err(e) = run() {
        eprintln!("ferry: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve::run(&args),
        Command::Log(command) => {
            init_logs("warn");
            verify::run(command)
        }
        client_command => {
            init_logs("warn");
            cli::run(async move {
                match client_command {
                    Command::Topic(a) => cli::topic::run(a).await,
                    Command::Produce(a) => cli::produce::run(a).await,
                    Command::Consume(a) => cli::consume::run(a).await,
                    Command::Group(a) => cli::group::run(a).await,
                    Command::Cluster(a) => cli::cluster::run(a).await,
                    Command::Serve(_) | Command::Log(_) => unreachable!("handled above"),
                }
            })
        }
    }
}

/// Logs go to stderr, filtered by `FERRY_LOG`, else `RUST_LOG`, else `default`.
pub fn init_logs(default: &str) {
    let filter = ["FERRY_LOG", "RUST_LOG"]
        .iter()
        .find_map(|var| tracing_subscriber::EnvFilter::try_from_env(var).ok())
        .or_else(|| tracing_subscriber::EnvFilter::try_new(default).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(filter)
        .init();
}
