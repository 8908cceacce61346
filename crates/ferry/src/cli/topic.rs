//! `ferry topic create|list|describe|delete|alter-config|add-partitions`.

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use ferry_client::kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
use ferry_client::kafka_protocol::messages::create_topics_request::{
    CreatableTopic, CreatableTopicConfig,
};
use ferry_client::kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use ferry_client::kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use ferry_client::kafka_protocol::messages::incremental_alter_configs_request::{
    AlterConfigsResource, AlterableConfig,
};
use ferry_client::kafka_protocol::messages::{
    CreatePartitionsRequest, CreateTopicsRequest, DeleteTopicsRequest, DescribeConfigsRequest,
    IncrementalAlterConfigsRequest,
};
use ferry_client::Client;

use super::kafka::{self, check, key_value, name, str_bytes};
use super::output::{print_json, Table};
use super::CommonArgs;

/// Kafka's `ConfigResource.Type` of a topic.
pub const RESOURCE_TOPIC: i8 = 2;
/// `DescribeConfigs` source of a per-topic override.
const SOURCE_DYNAMIC_TOPIC: i8 = 1;
const TIMEOUT_MS: i32 = 30_000;

#[derive(Args, Debug)]
pub struct TopicArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(subcommand)]
    pub command: TopicCommand,
}

#[derive(Subcommand, Debug)]
pub enum TopicCommand {
    /// Create a topic.
    Create {
        topic: String,
        /// Number of partitions [default: the broker's num.partitions]
        #[arg(short, long)]
        partitions: Option<i32>,
        /// Replicas per partition [default: the broker's default.replication.factor]
        #[arg(short, long)]
        replication_factor: Option<i16>,
        /// A topic config, e.g. -c retention.ms=3600000 (repeatable)
        #[arg(short, long = "config", value_name = "KEY=VALUE")]
        configs: Vec<String>,
    },
    /// List topics.
    List,
    /// Partitions (leader, replicas, ISR, log start, high watermark) and configs that differ from defaults.
    Describe { topic: String },
    /// Delete topics.
    Delete {
        #[arg(required = true)]
        topics: Vec<String>,
    },
    /// Set or remove topic configs.
    AlterConfig {
        topic: String,
        /// Set a config (repeatable)
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Remove a config override, back to the default (repeatable)
        #[arg(long = "delete", value_name = "KEY")]
        delete: Vec<String>,
    },
    /// Add partitions to a topic.
    AddPartitions {
        topic: String,
        /// How many partitions to add
        #[arg(short, long)]
        num: i32,
    },
}

pub async fn run(args: TopicArgs) -> anyhow::Result<()> {
    let client = args.common.connect().await?;
    let json = args.common.json;
    match args.command {
        TopicCommand::Create {
            topic,
            partitions,
            replication_factor,
            configs,
        } => {
            create(
                &client,
                json,
                topic,
                partitions,
                replication_factor,
                configs,
            )
            .await
        }
        TopicCommand::List => list(&client, json).await,
        TopicCommand::Describe { topic } => describe(&client, json, &topic).await,
        TopicCommand::Delete { topics } => delete(&client, json, topics).await,
        TopicCommand::AlterConfig { topic, set, delete } => {
            alter_config(&client, json, &topic, set, delete).await
        }
        TopicCommand::AddPartitions { topic, num } => {
            add_partitions(&client, json, &topic, num).await
        }
    }
}

async fn create(
    client: &Client,
    json: bool,
    topic: String,
    partitions: Option<i32>,
    replication_factor: Option<i16>,
    configs: Vec<String>,
) -> anyhow::Result<()> {
    let configs = configs
        .iter()
        .map(|c| {
            key_value(c).map(|(k, v)| {
                CreatableTopicConfig::default()
                    .with_name(str_bytes(&k))
                    .with_value(Some(str_bytes(&v)))
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let req = CreateTopicsRequest::default()
        .with_topics(vec![CreatableTopic::default()
            .with_name(name(&topic))
            .with_num_partitions(partitions.unwrap_or(-1))
            .with_replication_factor(replication_factor.unwrap_or(-1))
            .with_configs(configs)])
        .with_timeout_ms(TIMEOUT_MS);
    let controller = client.metadata().controller_id;
    let conn = match client.connection(controller).await {
        Ok(c) => c,
        Err(_) => client.any_connection().await?,
    };
    let resp = conn.send(&req).await?;
    let r = resp
        .topics
        .first()
        .context("CreateTopics answered no topic")?;
    check(r.error_code, r.error_message.as_ref(), || {
        format!("creating topic {topic}")
    })?;
    // Before v5 the response does not carry the partition count.
    let info = client.topic(&topic).await.ok();
    let partitions = info
        .as_ref()
        .map_or(r.num_partitions, |i| i.partitions.len() as i32);
    let rf = info
        .as_ref()
        .and_then(|i| i.partitions.first())
        .map_or(i32::from(r.replication_factor), |p| p.replicas.len() as i32);
    if json {
        print_json(
            &json!({"topic": topic, "topic_id": r.topic_id.to_string(), "partitions": partitions, "replication_factor": rf}),
        );
    } else {
        println!("created topic {topic} ({partitions} partitions, replication factor {rf})");
    }
    Ok(())
}

async fn list(client: &Client, json: bool) -> anyhow::Result<()> {
    let metadata = client.refresh_metadata(None).await?;
    let topics: Vec<_> = metadata.topics.values().collect();
    if json {
        let v: Vec<Value> = topics
            .iter()
            .map(|t| {
                json!({
                    "topic": t.name,
                    "topic_id": t.topic_id,
                    "partitions": t.partitions.len(),
                    "replication_factor": t.partitions.first().map_or(0, |p| p.replicas.len()),
                    "internal": t.is_internal,
                })
            })
            .collect();
        print_json(&Value::Array(v));
        return Ok(());
    }
    let mut table = Table::new(&["TOPIC", "PARTITIONS", "REPLICAS", "INTERNAL"]);
    for t in topics {
        table.row(vec![
            t.name.clone(),
            t.partitions.len().to_string(),
            t.partitions
                .first()
                .map_or(0, |p| p.replicas.len())
                .to_string(),
            if t.is_internal {
                "yes".into()
            } else {
                String::new()
            },
        ]);
    }
    table.print();
    Ok(())
}

/// Configs of a resource whose source is an override (topic: a per-topic config).
pub async fn describe_configs(
    client: &Client,
    node: Option<i32>,
    resource_type: i8,
    resource_name: &str,
    keys: Option<Vec<String>>,
) -> anyhow::Result<Vec<(String, Option<String>, i8, bool)>> {
    let req =
        DescribeConfigsRequest::default().with_resources(vec![DescribeConfigsResource::default()
            .with_resource_type(resource_type)
            .with_resource_name(str_bytes(resource_name))
            .with_configuration_keys(keys.map(|ks| ks.iter().map(|k| str_bytes(k)).collect()))]);
    let conn = match node {
        Some(n) => client.connection(n).await?,
        None => client.any_connection().await?,
    };
    let resp = conn.send(&req).await?;
    let r = resp
        .results
        .first()
        .context("DescribeConfigs answered no resource")?;
    check(r.error_code, r.error_message.as_ref(), || {
        format!("describing the configs of {resource_name}")
    })?;
    Ok(r.configs
        .iter()
        .map(|c| {
            (
                c.name.as_str().to_string(),
                c.value.as_ref().map(|v| v.as_str().to_string()),
                c.config_source,
                c.is_sensitive,
            )
        })
        .collect())
}

async fn describe(client: &Client, json: bool, topic: &str) -> anyhow::Result<()> {
    client.refresh_metadata(Some(&[topic])).await?;
    let info = client.topic(topic).await?;
    let tps: Vec<_> = info
        .partitions
        .iter()
        .map(|p| (topic.to_string(), p.partition))
        .collect();
    let starts = kafka::list_offsets(client, &tps, kafka::EARLIEST, 0).await?;
    let ends = kafka::list_offsets(client, &tps, kafka::LATEST, 0).await?;
    let configs: Vec<_> = describe_configs(client, None, RESOURCE_TOPIC, topic, None)
        .await?
        .into_iter()
        .filter(|(_, _, source, _)| *source == SOURCE_DYNAMIC_TOPIC)
        .collect();
    let offset = |m: &std::collections::BTreeMap<kafka::Tp, i64>, p: i32| {
        m.get(&(topic.to_string(), p)).copied().unwrap_or(-1)
    };
    if json {
        let partitions: Vec<Value> = info
            .partitions
            .iter()
            .map(|p| {
                json!({
                    "partition": p.partition,
                    "leader": p.leader,
                    "leader_epoch": p.leader_epoch,
                    "replicas": p.replicas,
                    "isr": p.isr,
                    "log_start_offset": offset(&starts, p.partition),
                    "high_watermark": offset(&ends, p.partition),
                })
            })
            .collect();
        let configs: serde_json::Map<String, Value> = configs
            .iter()
            .map(|(k, v, _, _)| (k.clone(), v.clone().map_or(Value::Null, Value::String)))
            .collect();
        print_json(&json!({
            "topic": topic,
            "topic_id": info.topic_id,
            "internal": info.is_internal,
            "partitions": partitions,
            "configs": configs,
        }));
        return Ok(());
    }
    println!(
        "topic {topic} (id {}, {} partitions)",
        info.topic_id,
        info.partitions.len()
    );
    let mut table = Table::new(&[
        "PARTITION",
        "LEADER",
        "EPOCH",
        "REPLICAS",
        "ISR",
        "LOG-START",
        "HIGH-WATERMARK",
    ]);
    let ids = |v: &[i32]| {
        v.iter()
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    for p in &info.partitions {
        table.row(vec![
            p.partition.to_string(),
            p.leader.to_string(),
            p.leader_epoch.to_string(),
            ids(&p.replicas),
            ids(&p.isr),
            offset(&starts, p.partition).to_string(),
            offset(&ends, p.partition).to_string(),
        ]);
    }
    table.print();
    if !configs.is_empty() {
        println!();
        let mut table = Table::new(&["CONFIG", "VALUE"]);
        for (k, v, _, sensitive) in configs {
            let v = if sensitive {
                "(sensitive)".into()
            } else {
                v.unwrap_or_else(|| "null".into())
            };
            table.row(vec![k, v]);
        }
        table.print();
    }
    Ok(())
}

async fn delete(client: &Client, json: bool, topics: Vec<String>) -> anyhow::Result<()> {
    let req = DeleteTopicsRequest::default()
        .with_topic_names(topics.iter().map(|t| name(t)).collect())
        .with_topics(
            topics
                .iter()
                .map(|t| DeleteTopicState::default().with_name(Some(name(t))))
                .collect(),
        )
        .with_timeout_ms(TIMEOUT_MS);
    let resp = client.any_connection().await?.send(&req).await?;
    let mut results = Vec::new();
    let mut failed = None;
    for r in &resp.responses {
        let topic = r
            .name
            .as_ref()
            .map(|n| n.0.as_str().to_string())
            .unwrap_or_default();
        if let Err(e) = check(r.error_code, r.error_message.as_ref(), || {
            format!("deleting topic {topic}")
        }) {
            results.push(json!({"topic": topic, "deleted": false, "error": e.to_string()}));
            failed.get_or_insert(e);
        } else {
            results.push(json!({"topic": topic, "deleted": true}));
        }
    }
    if json {
        print_json(&Value::Array(results));
    } else {
        for r in &results {
            if r["deleted"] == true {
                println!("deleted topic {}", r["topic"].as_str().unwrap_or_default());
            }
        }
    }
    failed.map_or(Ok(()), Err)
}

/// IncrementalAlterConfigs of one resource: `set` (operation 0) and `delete` (1).
pub async fn alter_configs(
    client: &Client,
    node: Option<i32>,
    resource_type: i8,
    resource_name: &str,
    set: &[(String, String)],
    delete: &[String],
) -> anyhow::Result<()> {
    let mut configs: Vec<AlterableConfig> = set
        .iter()
        .map(|(k, v)| {
            AlterableConfig::default()
                .with_name(str_bytes(k))
                .with_config_operation(0)
                .with_value(Some(str_bytes(v)))
        })
        .collect();
    configs.extend(delete.iter().map(|k| {
        AlterableConfig::default()
            .with_name(str_bytes(k))
            .with_config_operation(1)
    }));
    let req = IncrementalAlterConfigsRequest::default().with_resources(vec![
        AlterConfigsResource::default()
            .with_resource_type(resource_type)
            .with_resource_name(str_bytes(resource_name))
            .with_configs(configs),
    ]);
    let conn = match node {
        Some(n) => client.connection(n).await?,
        None => client.any_connection().await?,
    };
    let resp = conn.send(&req).await?;
    let r = resp
        .responses
        .first()
        .context("IncrementalAlterConfigs answered no resource")?;
    check(r.error_code, r.error_message.as_ref(), || {
        format!("altering the configs of {resource_name}")
    })
}

async fn alter_config(
    client: &Client,
    json: bool,
    topic: &str,
    set: Vec<String>,
    delete: Vec<String>,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        !set.is_empty() || !delete.is_empty(),
        "nothing to change: give --set KEY=VALUE or --delete KEY"
    );
    let set = set
        .iter()
        .map(|s| key_value(s))
        .collect::<anyhow::Result<Vec<_>>>()?;
    alter_configs(client, None, RESOURCE_TOPIC, topic, &set, &delete).await?;
    if json {
        let set: serde_json::Map<String, Value> = set
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        print_json(&json!({"topic": topic, "set": set, "deleted": delete}));
    } else {
        println!("altered the configs of topic {topic}");
    }
    Ok(())
}

async fn add_partitions(client: &Client, json: bool, topic: &str, num: i32) -> anyhow::Result<()> {
    anyhow::ensure!(num > 0, "--num must be at least 1");
    client.refresh_metadata(Some(&[topic])).await?;
    let before = client.topic(topic).await?.partitions.len() as i32;
    let total = before + num;
    let req = CreatePartitionsRequest::default()
        .with_topics(vec![CreatePartitionsTopic::default()
            .with_name(name(topic))
            .with_count(total)
            .with_assignments(None)])
        .with_timeout_ms(TIMEOUT_MS);
    let controller = client.metadata().controller_id;
    let conn = match client.connection(controller).await {
        Ok(c) => c,
        Err(_) => client.any_connection().await?,
    };
    let resp = conn.send(&req).await?;
    let r = resp
        .results
        .first()
        .context("CreatePartitions answered no topic")?;
    check(r.error_code, r.error_message.as_ref(), || {
        format!("adding partitions to {topic}")
    })?;
    if json {
        print_json(&json!({"topic": topic, "partitions_before": before, "partitions": total}));
    } else {
        println!("topic {topic} now has {total} partitions (was {before})");
    }
    Ok(())
}
