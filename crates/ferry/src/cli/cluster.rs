//! `ferry cluster info`, `ferry cluster config get|set|delete`, the replica moves
//! `ferry cluster decommission` and `ferry cluster rebalance` (dry runs unless
//! `--execute`, carried out with AlterPartitionReassignments), and the metadata
//! quorum's voters: `ferry cluster quorum`, `ferry cluster add-voter` and
//! `ferry cluster remove-voter` (DescribeQuorum, AddRaftVoter, RemoveRaftVoter),
//! and `ferry cluster unregister`, which removes a broker that is gone for good
//! (UnregisterBroker).
//!
//! `--execute --throttle BYTES_PER_SEC` caps the copy as
//! `kafka-reassign-partitions --throttle` does: it sets
//! `leader.replication.throttled.rate` and `follower.replication.throttled.rate`
//! (cluster-wide) and the moving partitions' throttled-replica lists, starts the
//! moves, waits until they are done, then removes what it set (Kafka's
//! `--verify` step). `ferry cluster unthrottle` removes them by hand.

use std::collections::BTreeSet;

use clap::{Args, Subcommand};
use ferry_client::kafka_protocol::messages::ApiKey;
use serde_json::{json, Value};

use super::kafka::{key_value, name};
use super::output::{print_json, Table};
use super::plan::{self, Assignment};
use super::topic::{alter_configs, describe_configs};
use super::CommonArgs;

/// Kafka's `ConfigResource.Type` of a topic.
const RESOURCE_TOPIC: i8 = 2;
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
        /// Cap the replica copy at this many bytes per second (both the leaders'
        /// sending and the new replicas' fetching); waits for the moves, then
        /// removes the throttle
        #[arg(long, value_name = "BYTES_PER_SEC", requires = "execute")]
        throttle: Option<u64>,
    },
    /// Spread replicas and preferred leaders evenly over the live brokers (a dry run unless --execute).
    Rebalance {
        /// Start the moves instead of only printing them
        #[arg(long)]
        execute: bool,
        /// Cap the replica copy at this many bytes per second (both the leaders'
        /// sending and the new replicas' fetching); waits for the moves, then
        /// removes the throttle
        #[arg(long, value_name = "BYTES_PER_SEC", requires = "execute")]
        throttle: Option<u64>,
    },
    /// Move partitions to the replicas given (a dry run unless --execute), e.g.
    /// `ferry cluster reassign orders:0=2,3`; the first replica is the preferred leader.
    Reassign {
        #[arg(required = true, value_name = "TOPIC:PARTITION=REPLICAS")]
        moves: Vec<String>,
        /// Start the moves instead of only printing them
        #[arg(long)]
        execute: bool,
        /// Cap the replica copy at this many bytes per second (both the leaders'
        /// sending and the new replicas' fetching); waits for the moves, then
        /// removes the throttle
        #[arg(long, value_name = "BYTES_PER_SEC", requires = "execute")]
        throttle: Option<u64>,
    },
    /// Remove the replication throttle that `--throttle` sets (the rates, and
    /// every topic's throttled-replica lists), e.g. after an interrupted move.
    Unthrottle,
    /// The metadata quorum: its leader, voters and learners, and each one's log end.
    Quorum,
    /// Make a learner of the metadata quorum (a broker started with --controller-voters
    /// that does not name it) a voter, once it has caught up.
    AddVoter {
        node_id: i32,
        /// How long the quorum's leader waits for the node to catch up
        #[arg(long, default_value_t = 10_000)]
        timeout_ms: i32,
    },
    /// Make a voter of the metadata quorum a learner (it keeps the metadata log,
    /// without a vote). Removing the leader has the other voters elect another.
    RemoveVoter { node_id: i32 },
    /// Remove a broker that is gone for good from the cluster's metadata and the
    /// metadata quorum's learners (Kafka's UnregisterBroker). Move its replicas
    /// off first (`decommission --execute`) and stop it: a broker still running
    /// registers again. A voter must be removed with `remove-voter` first.
    Unregister { node_id: i32 },
}

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Show a broker's configs (all, or the KEYs given).
    Get {
        keys: Vec<String>,
        /// The broker to ask [default: the controller]
        #[arg(long, visible_alias = "broker")]
        broker_id: Option<i32>,
    },
    /// Set broker configs (KEY=VALUE …) dynamically. A broker's own value
    /// overrides the cluster-wide default, which overrides its static settings.
    Set {
        #[arg(required = true, value_name = "KEY=VALUE")]
        settings: Vec<String>,
        /// Only this broker [default: the cluster-wide default]
        #[arg(long, visible_alias = "broker")]
        broker_id: Option<i32>,
    },
    /// Remove dynamic broker configs (KEY …): the next layer down applies again.
    Delete {
        #[arg(required = true, value_name = "KEY")]
        keys: Vec<String>,
        /// Only this broker's values [default: the cluster-wide default's]
        #[arg(long, visible_alias = "broker")]
        broker_id: Option<i32>,
    },
}

pub async fn run(args: ClusterArgs) -> anyhow::Result<()> {
    let client = args.common.connect().await?;
    let json = args.common.json;
    match args.command {
        ClusterCommand::Quorum => quorum::describe(&client, json).await,
        ClusterCommand::AddVoter {
            node_id,
            timeout_ms,
        } => quorum::add_voter(&client, node_id, timeout_ms, json).await,
        ClusterCommand::RemoveVoter { node_id } => {
            quorum::remove_voter(&client, node_id, json).await
        }
        ClusterCommand::Unregister { node_id } => unregister(&client, node_id, json).await,
        ClusterCommand::Decommission {
            node_id,
            execute,
            throttle,
        } => {
            let (current, live) = assignment(&client).await?;
            let moves = plan::decommission(&current, &live, node_id).map_err(anyhow::Error::msg)?;
            apply_moves(&client, &current, moves, execute, throttle, json).await
        }
        ClusterCommand::Rebalance { execute, throttle } => {
            let (current, live) = assignment(&client).await?;
            let moves = plan::rebalance(&current, &live);
            apply_moves(&client, &current, moves, execute, throttle, json).await
        }
        ClusterCommand::Reassign {
            moves,
            execute,
            throttle,
        } => {
            let (current, _) = assignment(&client).await?;
            let mut planned = Assignment::new();
            for m in &moves {
                let (tp, replicas) = plan::parse_move(m).map_err(anyhow::Error::msg)?;
                anyhow::ensure!(
                    current.contains_key(&tp),
                    "{}:{}: no such partition",
                    tp.0,
                    tp.1
                );
                planned.insert(tp, replicas);
            }
            apply_moves(&client, &current, planned, execute, throttle, json).await
        }
        ClusterCommand::Unthrottle => {
            let (current, _) = assignment(&client).await?;
            let topics: BTreeSet<String> = current.keys().map(|(t, _)| t.clone()).collect();
            remove_throttle(&client, topics.iter()).await?;
            if json {
                print_json(&json!({"unthrottled": topics.len()}));
            } else {
                println!("removed the replication throttle ({} topics)", topics.len());
            }
            Ok(())
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
        ClusterCommand::Config(ConfigCommand::Delete { keys, broker_id }) => {
            let name = broker_id.map_or(String::new(), |b| b.to_string());
            alter_configs(&client, broker_id, RESOURCE_BROKER, &name, &[], &keys).await?;
            if json {
                print_json(&json!({"broker_id": broker_id, "deleted": keys}));
            } else {
                println!("removed {} broker config(s)", keys.len());
            }
            Ok(())
        }
    }
}

/// UnregisterBroker: any broker passes it to the active controller.
async fn unregister(client: &ferry_client::Client, node_id: i32, json: bool) -> anyhow::Result<()> {
    use ferry_client::kafka_protocol::messages::{BrokerId, UnregisterBrokerRequest};
    let request = UnregisterBrokerRequest::default().with_broker_id(BrokerId(node_id));
    let response = client.any_connection().await?.send(&request).await?;
    super::kafka::check(response.error_code, response.error_message.as_ref(), || {
        format!("unregistering broker {node_id}")
    })?;
    if json {
        print_json(&json!({"broker": node_id, "result": "unregistered"}));
    } else {
        println!("unregistered broker {node_id}");
    }
    Ok(())
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

/// The broker configs of the replication throttle.
const THROTTLE_RATES: [&str; 2] = [
    "leader.replication.throttled.rate",
    "follower.replication.throttled.rate",
];
/// The topic configs of the replication throttle.
const THROTTLED_REPLICAS: [&str; 2] = [
    "leader.replication.throttled.replicas",
    "follower.replication.throttled.replicas",
];

/// Sets the throttle of `moves` before they start: the rates cluster-wide, the
/// throttled-replica lists on each moving topic.
async fn set_throttle(
    client: &ferry_client::Client,
    current: &Assignment,
    moves: &Assignment,
    bytes_per_sec: u64,
) -> anyhow::Result<()> {
    let rate = bytes_per_sec.min(i64::MAX as u64).to_string();
    let rates: Vec<(String, String)> = THROTTLE_RATES
        .iter()
        .map(|k| (k.to_string(), rate.clone()))
        .collect();
    alter_configs(client, None, RESOURCE_BROKER, "", &rates, &[]).await?;
    for (topic, (leader, follower)) in plan::throttled_replicas(current, moves) {
        let lists = vec![
            (THROTTLED_REPLICAS[0].to_string(), leader),
            (THROTTLED_REPLICAS[1].to_string(), follower),
        ];
        alter_configs(client, None, RESOURCE_TOPIC, &topic, &lists, &[]).await?;
    }
    Ok(())
}

/// Removes the throttle: the rates, and the lists of `topics`.
async fn remove_throttle(
    client: &ferry_client::Client,
    topics: impl Iterator<Item = &String>,
) -> anyhow::Result<()> {
    let delete = |names: [&str; 2]| names.map(str::to_string);
    for topic in topics {
        alter_configs(
            client,
            None,
            RESOURCE_TOPIC,
            topic,
            &[],
            &delete(THROTTLED_REPLICAS),
        )
        .await?;
    }
    alter_configs(
        client,
        None,
        RESOURCE_BROKER,
        "",
        &[],
        &delete(THROTTLE_RATES),
    )
    .await
}

/// Waits until none of `moves` is still in progress (ListPartitionReassignments),
/// telling how many remain now and then.
async fn wait_for_moves(client: &ferry_client::Client, moves: &Assignment) -> anyhow::Result<()> {
    use ferry_client::kafka_protocol::messages::ListPartitionReassignmentsRequest;
    let started = std::time::Instant::now();
    let mut told = started;
    loop {
        let controller = client.refresh_metadata(Some(&[])).await?.controller_id;
        let request = ListPartitionReassignmentsRequest::default().with_timeout_ms(30_000);
        let response = client.send_to(controller, &request).await?;
        super::kafka::check(response.error_code, response.error_message.as_ref(), || {
            "listing reassignments".to_string()
        })?;
        let remaining = response
            .topics
            .iter()
            .flat_map(|t| {
                t.partitions
                    .iter()
                    .map(move |p| (t.name.0.to_string(), p.partition_index))
            })
            .filter(|tp| moves.contains_key(tp))
            .count();
        if remaining == 0 {
            return Ok(());
        }
        if told.elapsed() >= std::time::Duration::from_secs(10) {
            told = std::time::Instant::now();
            eprintln!(
                "{remaining} of {} moves still copying after {}s",
                moves.len(),
                started.elapsed().as_secs()
            );
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// Prints the moves, and with `execute` asks the controller to make them;
/// with a `throttle`, under that replication throttle, removed once they are done.
async fn apply_moves(
    client: &ferry_client::Client,
    current: &Assignment,
    moves: Assignment,
    execute: bool,
    throttle: Option<u64>,
    json: bool,
) -> anyhow::Result<()> {
    let throttle = throttle.filter(|_| execute && !moves.is_empty());
    if let Some(rate) = throttle {
        set_throttle(client, current, &moves, rate).await?;
    }
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
        print_json(
            &json!({"moves": list, "executed": execute, "throttle": throttle, "errors": errors}),
        );
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
    if let Some(rate) = throttle {
        if !json {
            println!("throttled at {rate} bytes/s; waiting for the moves to finish");
        }
        let waited = if errors.len() < moves.len() {
            wait_for_moves(client, &moves).await
        } else {
            Ok(())
        };
        let topics: BTreeSet<String> = moves.keys().map(|(t, _)| t.clone()).collect();
        remove_throttle(client, topics.iter()).await?;
        waited?;
        if !json {
            println!("moves done; throttle removed");
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("some moves were refused: {}", errors.join("; "))
    }
}

/// The metadata quorum's voters (DescribeQuorum, AddRaftVoter, RemoveRaftVoter).
/// Any broker takes these requests and passes them to the quorum's leader.
mod quorum {
    use ferry_client::kafka_protocol::messages::describe_quorum_request::{
        PartitionData, TopicData,
    };
    use ferry_client::kafka_protocol::messages::describe_quorum_response::ReplicaState;
    use ferry_client::kafka_protocol::messages::{
        AddRaftVoterRequest, DescribeQuorumRequest, RemoveRaftVoterRequest,
    };
    use serde_json::{json, Value};

    use super::super::kafka::{check, name};
    use super::super::output::{print_json, Table};

    /// The metadata log's topic, as KRaft names it.
    const METADATA_TOPIC: &str = "__cluster_metadata";

    pub async fn describe(client: &ferry_client::Client, json: bool) -> anyhow::Result<()> {
        let request = DescribeQuorumRequest::default().with_topics(vec![TopicData::default()
            .with_topic_name(name(METADATA_TOPIC))
            .with_partitions(vec![PartitionData::default().with_partition_index(0)])]);
        let response = client.any_connection().await?.send(&request).await?;
        check(response.error_code, response.error_message.as_ref(), || {
            "describing the metadata quorum".to_string()
        })?;
        let partition = response
            .topics
            .iter()
            .flat_map(|t| t.partitions.iter())
            .next()
            .ok_or_else(|| anyhow::anyhow!("the answer describes no partition"))?;
        check(
            partition.error_code,
            partition.error_message.as_ref(),
            || "describing the metadata quorum".to_string(),
        )?;
        let addr = |id: i32| {
            response
                .nodes
                .iter()
                .find(|n| n.node_id.0 == id)
                .and_then(|n| n.listeners.first())
                .map(|l| format!("{}:{}", l.host.as_str(), l.port))
        };
        if json {
            let replica = |r: &ReplicaState| json!({"node_id": r.replica_id.0, "log_end_offset": r.log_end_offset, "addr": addr(r.replica_id.0)});
            print_json(&json!({
                "leader_id": partition.leader_id.0,
                "leader_epoch": partition.leader_epoch,
                "high_watermark": partition.high_watermark,
                "voters": partition.current_voters.iter().map(replica).collect::<Vec<Value>>(),
                "learners": partition.observers.iter().map(replica).collect::<Vec<Value>>(),
            }));
            return Ok(());
        }
        println!(
            "leader {} (epoch {}), high watermark {}",
            partition.leader_id.0, partition.leader_epoch, partition.high_watermark
        );
        println!();
        let mut table = Table::new(&["NODE", "ROLE", "LOG END", "LAG", "ADDRESS"]);
        let voters = partition.current_voters.iter().map(|r| (r, "voter"));
        let learners = partition.observers.iter().map(|r| (r, "learner"));
        for (r, role) in voters.chain(learners) {
            let role = if r.replica_id == partition.leader_id {
                "leader"
            } else {
                role
            };
            let lag = if r.log_end_offset < 0 {
                "-".to_string()
            } else {
                (partition.high_watermark - r.log_end_offset)
                    .max(0)
                    .to_string()
            };
            table.row(vec![
                r.replica_id.0.to_string(),
                role.to_string(),
                r.log_end_offset.to_string(),
                lag,
                addr(r.replica_id.0).unwrap_or_default(),
            ]);
        }
        table.print();
        Ok(())
    }

    pub async fn add_voter(
        client: &ferry_client::Client,
        node_id: i32,
        timeout_ms: i32,
        json: bool,
    ) -> anyhow::Result<()> {
        let request = AddRaftVoterRequest::default()
            .with_voter_id(node_id)
            .with_timeout_ms(timeout_ms);
        let response = client.any_connection().await?.send(&request).await?;
        check(response.error_code, response.error_message.as_ref(), || {
            format!("adding voter {node_id}")
        })?;
        done(json, "added", node_id);
        Ok(())
    }

    pub async fn remove_voter(
        client: &ferry_client::Client,
        node_id: i32,
        json: bool,
    ) -> anyhow::Result<()> {
        let request = RemoveRaftVoterRequest::default().with_voter_id(node_id);
        let response = client.any_connection().await?.send(&request).await?;
        check(response.error_code, response.error_message.as_ref(), || {
            format!("removing voter {node_id}")
        })?;
        done(json, "removed", node_id);
        Ok(())
    }

    fn done(json: bool, what: &str, node_id: i32) {
        if json {
            print_json(&json!({"voter": node_id, "result": what}));
        } else {
            println!("{what} voter {node_id}");
        }
    }
}
