//! Kafka requests the commands share: offsets by time, fetching and decoding
//! records, committed offsets of a group.

use std::collections::{BTreeMap, HashMap};

use anyhow::Context;
use bytes::Bytes;
use ferry_client::kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use ferry_client::kafka_protocol::messages::list_offsets_request::{
    ListOffsetsPartition, ListOffsetsTopic,
};
use ferry_client::kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
use ferry_client::kafka_protocol::messages::{
    BrokerId, FetchRequest, GroupId, ListOffsetsRequest, OffsetFetchRequest, TopicName,
};
use ferry_client::kafka_protocol::protocol::StrBytes;
use ferry_client::{Client, ClientError};
use ferry_log::record::{self, Record};

/// A topic and partition, ordered for stable output.
pub type Tp = (String, i32);

pub const EARLIEST: i64 = -2;
pub const LATEST: i64 = -1;

pub fn name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

pub fn group_id(s: &str) -> GroupId {
    GroupId(StrBytes::from_string(s.to_string()))
}

pub fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

/// Every partition of `topics`, from fresh metadata.
pub async fn partitions_of(client: &Client, topics: &[String]) -> anyhow::Result<Vec<Tp>> {
    let mut out = Vec::new();
    for t in topics {
        let info = client.topic(t).await?;
        out.extend(info.partitions.iter().map(|p| (t.clone(), p.partition)));
    }
    Ok(out)
}

/// ListOffsets for each partition at `timestamp` (EARLIEST, LATEST or ms); -1
/// where no record is that late. Asks each partition's leader.
pub async fn list_offsets(
    client: &Client,
    tps: &[Tp],
    timestamp: i64,
    isolation_level: i8,
) -> anyhow::Result<BTreeMap<Tp, i64>> {
    let mut by_leader: BTreeMap<i32, Vec<&Tp>> = BTreeMap::new();
    for tp in tps {
        by_leader
            .entry(client.leader(&tp.0, tp.1).await?)
            .or_default()
            .push(tp);
    }
    let mut out = BTreeMap::new();
    for (leader, tps) in by_leader {
        let mut topics: Vec<ListOffsetsTopic> = Vec::new();
        for (topic, partition) in tps {
            let p = ListOffsetsPartition::default()
                .with_partition_index(*partition)
                .with_timestamp(timestamp);
            match topics.iter_mut().find(|t| t.name.0.as_str() == topic) {
                Some(t) => t.partitions.push(p),
                None => topics.push(
                    ListOffsetsTopic::default()
                        .with_name(name(topic))
                        .with_partitions(vec![p]),
                ),
            }
        }
        let req = ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_isolation_level(isolation_level)
            .with_topics(topics);
        let conn = client.connection(leader).await?;
        let (_, resp) = conn.send_capped(&req, 8).await?;
        for t in resp.topics {
            for p in t.partitions {
                let tp = (t.name.0.as_str().to_string(), p.partition_index);
                ClientError::check(p.error_code, || {
                    format!("listing offsets of {}/{}", tp.0, tp.1)
                })?;
                out.insert(tp, p.offset);
            }
        }
    }
    Ok(out)
}

/// What a fetch of one partition returned.
#[derive(Debug, Default)]
pub struct PartitionFetch {
    pub records: Vec<Record>,
    /// Where the next fetch starts.
    pub next_offset: i64,
    pub error_code: i16,
}

/// Fetches `positions` (all led by `leader`) and decodes what came back.
pub async fn fetch(
    client: &Client,
    leader: i32,
    positions: &[(Tp, i64)],
    isolation_level: i8,
    max_wait_ms: i32,
) -> anyhow::Result<BTreeMap<Tp, PartitionFetch>> {
    let mut topics: Vec<FetchTopic> = Vec::new();
    for ((topic, partition), offset) in positions {
        let p = FetchPartition::default()
            .with_partition(*partition)
            .with_fetch_offset(*offset)
            .with_partition_max_bytes(1024 * 1024);
        match topics.iter_mut().find(|t| t.topic.0.as_str() == topic) {
            Some(t) => t.partitions.push(p),
            None => topics.push(
                FetchTopic::default()
                    .with_topic(name(topic))
                    .with_partitions(vec![p]),
            ),
        }
    }
    let req = FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(max_wait_ms)
        .with_min_bytes(1)
        .with_max_bytes(16 * 1024 * 1024)
        .with_isolation_level(isolation_level)
        .with_session_id(0)
        .with_session_epoch(-1)
        .with_topics(topics);
    let conn = client.connection(leader).await?;
    // v12 is the last version that names topics instead of using topic ids.
    let (_, resp) = conn.send_capped(&req, 12).await?;
    ClientError::check(resp.error_code, || "fetching".to_string())?;
    let wanted: HashMap<&Tp, i64> = positions.iter().map(|(tp, o)| (tp, *o)).collect();
    let mut out = BTreeMap::new();
    for t in resp.responses {
        for p in t.partitions {
            let tp = (t.topic.0.as_str().to_string(), p.partition_index);
            let from = wanted.get(&tp).copied().unwrap_or(0);
            let mut result = PartitionFetch {
                next_offset: from,
                error_code: p.error_code,
                records: Vec::new(),
            };
            if let Some(bytes) = &p.records {
                let aborted = p
                    .aborted_transactions
                    .unwrap_or_default()
                    .into_iter()
                    .map(|a| (a.producer_id.0, a.first_offset))
                    .collect();
                decode(bytes, from, aborted, &mut result)
                    .with_context(|| format!("decoding records of {}/{}", tp.0, tp.1))?;
            }
            out.insert(tp, result);
        }
    }
    Ok(out)
}

/// Decodes whole batches (a fetch may end in a partial one), skipping control
/// batches, records before `from`, and batches of aborted transactions.
fn decode(
    bytes: &Bytes,
    from: i64,
    mut aborted: Vec<(i64, i64)>,
    out: &mut PartitionFetch,
) -> anyhow::Result<()> {
    aborted.sort_by_key(|(_, first)| *first);
    let mut aborting: Vec<i64> = Vec::new();
    for item in ferry_log::batch::batches(bytes) {
        let Ok((header, batch)) = item else { break };
        // Producers whose aborted transaction started at or before this batch.
        aborted.retain(|(pid, first)| {
            if *first <= header.last_offset() {
                aborting.push(*pid);
                false
            } else {
                true
            }
        });
        out.next_offset = out.next_offset.max(header.last_offset() + 1);
        if header.is_control() {
            // An abort or commit marker ends that producer's transaction.
            aborting.retain(|pid| *pid != header.producer_id);
            continue;
        }
        if header.is_transactional() && aborting.contains(&header.producer_id) {
            continue;
        }
        let (_, records) = record::decode_batch(batch)?;
        out.records
            .extend(records.into_iter().filter(|r| r.offset >= from));
    }
    Ok(())
}

/// The offsets `group` committed, for `topics` (`None`: every topic it has).
pub async fn committed_offsets(
    client: &Client,
    coordinator: i32,
    group: &str,
    topics: Option<&[Tp]>,
) -> anyhow::Result<BTreeMap<Tp, i64>> {
    let topics = topics.map(|tps| {
        let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
        for (t, p) in tps {
            by_topic.entry(t).or_default().push(*p);
        }
        by_topic
            .into_iter()
            .map(|(t, ps)| {
                OffsetFetchRequestTopic::default()
                    .with_name(name(t))
                    .with_partition_indexes(ps)
            })
            .collect()
    });
    let req = OffsetFetchRequest::default()
        .with_group_id(group_id(group))
        .with_topics(topics);
    let conn = client.connection(coordinator).await?;
    // v7 is the last version with one group per request.
    let (_, resp) = conn.send_capped(&req, 7).await?;
    ClientError::check(resp.error_code, || {
        format!("fetching the offsets of group {group}")
    })?;
    let mut out = BTreeMap::new();
    for t in resp.topics {
        for p in t.partitions {
            if p.error_code != 0 || p.committed_offset < 0 {
                continue;
            }
            out.insert(
                (t.name.0.as_str().to_string(), p.partition_index),
                p.committed_offset,
            );
        }
    }
    Ok(out)
}

/// Text of possibly binary bytes.
pub fn text(b: &Option<Bytes>) -> Option<String> {
    b.as_ref().map(|b| String::from_utf8_lossy(b).into_owned())
}

/// `Err` for a non-zero error code, with the broker's message when it sent one.
pub fn check(
    code: i16,
    message: Option<&StrBytes>,
    context: impl FnOnce() -> String,
) -> anyhow::Result<()> {
    let Some(e) = ClientError::from_code(code, context()) else {
        return Ok(());
    };
    match message.map(|m| m.as_str()).filter(|m| !m.is_empty()) {
        Some(m) => Err(anyhow::anyhow!("{e} ({m})")),
        None => Err(e.into()),
    }
}

/// `key=value` → (key, value).
pub fn key_value(s: &str) -> anyhow::Result<(String, String)> {
    let (k, v) = s
        .split_once('=')
        .with_context(|| format!("expected KEY=VALUE, got {s:?}"))?;
    Ok((k.trim().to_string(), v.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_log::record::BatchBuilder;
    use ferry_log::Compression;

    fn batch(base: i64, values: &[&str], producer: Option<i64>) -> Vec<u8> {
        let mut b = BatchBuilder::new(Compression::None).base_offset(base);
        if let Some(pid) = producer {
            b = b.producer(pid, 0, 0).transactional(true);
        }
        for v in values {
            b.append(0, None, Some(Bytes::from(v.to_string())));
        }
        b.build().expect("build")
    }

    #[test]
    fn decoding_skips_earlier_records_aborted_batches_and_a_partial_tail() {
        let mut bytes = batch(0, &["a", "b"], None);
        bytes.extend(batch(2, &["x"], Some(7)));
        bytes.extend(batch(3, &["c"], None));
        let tail = batch(4, &["d"], None);
        bytes.extend(&tail[..tail.len() - 2]);
        let mut out = PartitionFetch::default();
        decode(&Bytes::from(bytes), 1, vec![(7, 2)], &mut out).expect("decode");
        let values: Vec<_> = out
            .records
            .iter()
            .map(|r| text(&r.value).unwrap_or_default())
            .collect();
        assert_eq!(values, ["b", "c"]);
        assert_eq!(out.next_offset, 4);
    }
}
