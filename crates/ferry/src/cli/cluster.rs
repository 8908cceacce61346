//! `ferry cluster info`, `ferry cluster config get|set`, and the replica moves
//! `ferry cluster decommission` and `ferry cluster rebalance` (dry runs unless
//! `--execute`, carried out with AlterPartitionReassignments).

use clap::{Args, Subcommand};
use ferry_client::kafka_protocol::messages::ApiKey;
use serde_json::{json, Value};

use super::kafka::{key_value, name};
use super::output::{print_json, Table};
use super::plan::{self, Assignment};
use super::topic::{alter_configs, describe_configs};
use super::CommonArgs;

/// Kafka's `ConfigResource.Type` of a broker.
const RESOURCE_BROKER: i8 = 4;

#[derive(Args, Debug)]
pub struct ClusterArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(subcommand)]
    pub command: ClusterCommand,
}

#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Cluster id, brokers, controller and the API versions the brokers speak.
    Info,
    /// Broker configs.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Move every replica off a broker so it can be removed (a dry run unless --execute).
    Decommission {
        node_id: i32,
        /// Start the moves instead of only printing them
        #[arg(long)]
        execute: bool,
    },
    /// Spread replicas and preferred leaders evenly over the live brokers (a dry run unless --execute).
    Rebalance {
        /// Start the moves instead of only printing them
        #[arg(long)]
        execute: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Show a broker's configs (all, or the KEYs given).
    Get {
        keys: Vec<String>,
        /// The broker to ask [default: the controller]
        #[arg(long)]
        broker_id: Option<i32>,
    },
    /// Set broker configs (KEY=VALUE …).
    Set {
        #[arg(required = true, value_name = "KEY=VALUE")]
        settings: Vec<String>,
        /// Only this broker [default: the cluster-wide default]
        #[arg(long)]
        broker_id: Option<i32>,
    },
}

pub async fn run(args: ClusterArgs) -> anyhow::Result<()> {
    let client = args.common.connect().await?;
    let json = args.common.json;
    match args.command {
        ClusterCommand::Decommission { node_id, execute } => {
            let (current, live) = assignment(&client).await?;
            let moves = plan::decommission(&current, &live, node_id).map_err(anyhow::Error::msg)?;
            apply_moves(&client, &current, moves, execute, json).await
        }
        ClusterCommand::Rebalance { execute } => {
            let (current, live) = assignment(&client).await?;
            let moves = plan::rebalance(&current, &live);
            apply_moves(&client, &current, moves, execute, json).await
        }
        ClusterCommand::Info => {
            let m = client.refresh_metadata(Some(&[])).await?;
            let conn = client.any_connection().await?;
            let mut versions: Vec<(i16, (i16, i16))> = conn.api_versions().into_iter().collect();
            versions.sort();
            let api_name = |k: i16| ApiKey::try_from(k).map_or(k.to_string(), |a| format!("{a:?}"));
            if json {
                let brokers: Vec<Value> = m
                    .brokers
                    .values()
                    .map(|b| json!({"node_id": b.node_id, "host": b.host, "port": b.port, "rack": b.rack, "controller": b.node_id == m.controller_id}))
                    .collect();
                let apis: serde_json::Map<String, Value> = versions
                    .iter()
                    .map(|(k, (min, max))| (api_name(*k), json!({"min": min, "max": max})))
                    .collect();
                print_json(&json!({
                    "cluster_id": m.cluster_id,
                    "controller_id": m.controller_id,
                    "brokers": brokers,
                    "client_version": env!("CARGO_PKG_VERSION"),
                    "api_versions": apis,
                }));
                return Ok(());
            }
            println!(
                "cluster {} (controller {}), ferry CLI {}",
                m.cluster_id.as_deref().unwrap_or("-"),
                m.controller_id,
                env!("CARGO_PKG_VERSION")
            );
            println!();
            let mut table = Table::new(&["ID", "HOST", "PORT", "RACK", "CONTROLLER"]);
            for b in m.brokers.values() {
                table.row(vec![
                    b.node_id.to_string(),
                    b.host.clone(),
                    b.port.to_string(),
                    b.rack.clone().unwrap_or_else(|| "-".into()),
                    if b.node_id == m.controller_id {
                        "yes".into()
                    } else {
                        String::new()
                    },
                ]);
            }
            table.print();
            println!();
            let mut table = Table::new(&["API", "VERSIONS"]);
            for (k, (min, max)) in versions {
                table.row(vec![api_name(k), format!("{min}-{max}")]);
            }
            table.print();
            Ok(())
        }
        ClusterCommand::Config(ConfigCommand::Get { keys, broker_id }) => {
            let node = broker_id.unwrap_or(client.metadata().controller_id);
            let keys = if keys.is_empty() { None } else { Some(keys) };
            let configs = describe_configs(
                &client,
                Some(node),
                RESOURCE_BROKER,
                &node.to_string(),
                keys,
            )
            .await?;
            if json {
                let map: serde_json::Map<String, Value> = configs
                    .iter()
                    .map(|(k, v, _, sensitive)| {
                        (
                            k.clone(),
                            if *sensitive {
                                Value::Null
                            } else {
                                v.clone().map_or(Value::Null, Value::String)
                            },
                        )
                    })
                    .collect();
                print_json(&json!({"broker_id": node, "configs": map}));
                return Ok(());
            }
            let mut table = Table::new(&["CONFIG", "VALUE", "SOURCE"]);
            for (k, v, source, sensitive) in configs {
                let v = if sensitive {
                    "(sensitive)".into()
                } else {
                    v.unwrap_or_else(|| "null".into())
                };
                table.row(vec![k, v, source_name(source).into()]);
            }
            table.print();
            Ok(())
        }
        ClusterCommand::Config(ConfigCommand::Set {
            settings,
            broker_id,
        }) => {
            let set = settings
                .iter()
                .map(|s| key_value(s))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let name = broker_id.map_or(String::new(), |b| b.to_string());
            alter_configs(&client, broker_id, RESOURCE_BROKER, &name, &set, &[]).await?;
            if json {
                let map: serde_json::Map<String, Value> = set
                    .iter()
                    .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                    .collect();
                print_json(&json!({"broker_id": broker_id, "set": map}));
            } else {
                println!("updated {} broker config(s)", set.len());
            }
            Ok(())
        }
    }
}

fn source_name(source: i8) -> &'static str {
    match source {
        1 => "topic",
        2 => "dynamic-broker",
        3 => "dynamic-default",
        4 => "static",
        5 => "default",
        6 => "logger",
        _ => "unknown",
    }
}

/// Every partition's replicas, and the live brokers.
async fn assignment(client: &ferry_client::Client) -> anyhow::Result<(Assignment, Vec<i32>)> {
    let m = client.refresh_metadata(None).await?;
    let live: Vec<i32> = m.brokers.keys().copied().collect();
    let current = m
        .topics
        .values()
        .flat_map(|t| {
            t.partitions
                .iter()
                .map(|p| ((t.name.clone(), p.partition), p.replicas.clone()))
        })
        .collect();
    Ok((current, live))
}

/// Prints the moves, and with `execute` asks the controller to make them.
async fn apply_moves(
    client: &ferry_client::Client,
    current: &Assignment,
    moves: Assignment,
    execute: bool,
    json: bool,
) -> anyhow::Result<()> {
    use ferry_client::kafka_protocol::messages::alter_partition_reassignments_request::{
        ReassignablePartition, ReassignableTopic,
    };
    use ferry_client::kafka_protocol::messages::{AlterPartitionReassignmentsRequest, BrokerId};
    let mut errors = Vec::new();
    if execute && !moves.is_empty() {
        let mut topics: Vec<ReassignableTopic> = Vec::new();
        for ((topic, partition), replicas) in &moves {
            let p = ReassignablePartition::default()
                .with_partition_index(*partition)
                .with_replicas(Some(replicas.iter().copied().map(BrokerId).collect()));
            match topics.last_mut() {
                Some(t) if t.name.0.as_str() == topic => t.partitions.push(p),
                _ => topics.push(
                    ReassignableTopic::default()
                        .with_name(name(topic))
                        .with_partitions(vec![p]),
                ),
            }
        }
        let request = AlterPartitionReassignmentsRequest::default()
            .with_timeout_ms(60_000)
            .with_topics(topics);
        let controller = client.metadata().controller_id;
        let response = client.send_to(controller, &request).await?;
        super::kafka::check(response.error_code, response.error_message.as_ref(), || {
            "reassignment".to_string()
        })?;
        for t in &response.responses {
            for p in &t.partitions {
                if p.error_code != 0 {
                    let message = p
                        .error_message
                        .as_ref()
                        .map_or(String::new(), |m| m.to_string());
                    errors.push(format!(
                        "{}-{}: error {} {message}",
                        t.name.0.as_str(),
                        p.partition_index,
                        p.error_code
                    ));
                }
            }
        }
    }
    if json {
        let list: Vec<Value> = moves
            .iter()
            .map(|((topic, partition), target)| {
                json!({"topic": topic, "partition": partition, "replicas": current.get(&(topic.clone(), *partition)), "target": target})
            })
            .collect();
        print_json(&json!({"moves": list, "executed": execute, "errors": errors}));
    } else {
        let mut table = Table::new(&["TOPIC", "PARTITION", "REPLICAS", "TARGET"]);
        let ids = |r: &[i32]| r.iter().map(i32::to_string).collect::<Vec<_>>().join(",");
        for ((topic, partition), target) in &moves {
            let before = current
                .get(&(topic.clone(), *partition))
                .map_or(String::new(), |r| ids(r));
            table.row(vec![
                topic.clone(),
                partition.to_string(),
                before,
                ids(target),
            ]);
        }
        table.print();
        match (moves.is_empty(), execute) {
            (true, _) => println!("nothing to move"),
            (false, false) => println!(
                "dry run: add --execute to start these {} moves",
                moves.len()
            ),
            (false, true) => println!(
                "started {} moves; `ferry topic describe` shows them finish",
                moves.len()
            ),
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("some moves were refused: {}", errors.join("; "))
    }
}
