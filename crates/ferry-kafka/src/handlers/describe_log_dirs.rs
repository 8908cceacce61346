//! DescribeLogDirs: this broker's log directory (ferry has one, the data
//! directory) with its replicas' sizes, what `kafka-log-dirs.sh` and admin
//! consoles show as a topic's size per broker. A null topic list asks for every
//! replica; a listed partition this broker holds no replica of is left out, as
//! in Kafka.

use std::collections::{BTreeMap, HashSet};

use kafka_protocol::messages::describe_log_dirs_response::{
    DescribeLogDirsPartition, DescribeLogDirsResult, DescribeLogDirsTopic,
};
use kafka_protocol::messages::{DescribeLogDirsRequest, DescribeLogDirsResponse, TopicName};
use kafka_protocol::protocol::StrBytes;

use crate::dispatch::RequestContext;

pub async fn handle(
    ctx: &RequestContext,
    _version: i16,
    req: DescribeLogDirsRequest,
) -> DescribeLogDirsResponse {
    let broker = ctx.broker.clone();
    let report = match tokio::task::spawn_blocking(move || broker.describe_log_dir()).await {
        Ok(report) => report,
        Err(e) => {
            tracing::warn!(error = %e, "describing the log directory failed");
            return DescribeLogDirsResponse::default()
                .with_error_code(kafka_protocol::ResponseError::UnknownServerError.code());
        }
    };
    let wanted: Option<HashSet<(String, i32)>> = req.topics.map(|topics| {
        topics
            .into_iter()
            .flat_map(|t| {
                let name = t.topic.0.to_string();
                t.partitions.into_iter().map(move |p| (name.clone(), p))
            })
            .collect()
    });
    let mut topics: BTreeMap<String, Vec<DescribeLogDirsPartition>> = BTreeMap::new();
    for r in report.replicas {
        if wanted
            .as_ref()
            .is_some_and(|w| !w.contains(&(r.tp.topic.clone(), r.tp.partition)))
        {
            continue;
        }
        topics.entry(r.tp.topic).or_default().push(
            DescribeLogDirsPartition::default()
                .with_partition_index(r.tp.partition)
                .with_partition_size(i64::try_from(r.size_bytes).unwrap_or(i64::MAX))
                .with_offset_lag(r.offset_lag)
                .with_is_future_key(false),
        );
    }
    let bytes = |b: Option<u64>| b.map_or(-1, |b| i64::try_from(b).unwrap_or(i64::MAX));
    let result = DescribeLogDirsResult::default()
        .with_log_dir(StrBytes::from_string(report.path.display().to_string()))
        .with_topics(
            topics
                .into_iter()
                .map(|(name, partitions)| {
                    DescribeLogDirsTopic::default()
                        .with_name(TopicName(StrBytes::from_string(name)))
                        .with_partitions(partitions)
                })
                .collect(),
        )
        .with_total_bytes(bytes(report.total_bytes))
        .with_usable_bytes(bytes(report.usable_bytes));
    DescribeLogDirsResponse::default().with_results(vec![result])
}
