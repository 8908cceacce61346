//! A classic consumer group member (JoinGroup, SyncGroup, Heartbeat,
//! OffsetCommit, LeaveGroup) with the client-side range assignor, as the Java
//! consumer and librdkafka run it, so `ferry consume --group` shares partitions
//! with them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use ferry_client::kafka_protocol::messages::consumer_protocol_assignment::TopicPartition as AssignedTopic;
use ferry_client::kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use ferry_client::kafka_protocol::messages::leave_group_request::MemberIdentity;
use ferry_client::kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use ferry_client::kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use ferry_client::kafka_protocol::messages::{
    ConsumerProtocolAssignment, ConsumerProtocolSubscription, HeartbeatRequest, JoinGroupRequest,
    LeaveGroupRequest, OffsetCommitRequest, SyncGroupRequest,
};
use ferry_client::kafka_protocol::protocol::{Decodable, Encodable, Message, StrBytes};
use ferry_client::kafka_protocol::ResponseError;
use ferry_client::{Client, ClientError};

use super::kafka::{self, check, group_id, name, str_bytes, Tp};

pub const PROTOCOL_TYPE: &str = "consumer";
const ASSIGNOR: &str = "range";
const SESSION_TIMEOUT_MS: i32 = 30_000;
const REBALANCE_TIMEOUT_MS: i32 = 30_000;
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(3);
/// JoinGroup rounds before giving up.
const JOIN_ATTEMPTS_MAX: u32 = 50;

/// Encodes a consumer protocol subscription (version prefix, then the body).
pub fn encode_subscription(topics: &[String]) -> anyhow::Result<Bytes> {
    let sub = ConsumerProtocolSubscription::default()
        .with_topics(topics.iter().map(|t| str_bytes(t)).collect());
    let mut buf = BytesMut::new();
    buf.put_i16(0);
    sub.encode(&mut buf, 0)?;
    Ok(buf.freeze())
}

pub fn decode_subscription(mut b: Bytes) -> anyhow::Result<Vec<String>> {
    anyhow::ensure!(b.len() >= 2, "subscription too short");
    let version = b
        .get_i16()
        .clamp(0, ConsumerProtocolSubscription::VERSIONS.max);
    let sub = ConsumerProtocolSubscription::decode(&mut b, version)?;
    Ok(sub.topics.iter().map(|t| t.as_str().to_string()).collect())
}

pub fn encode_assignment(tps: &[Tp]) -> anyhow::Result<Bytes> {
    let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for (t, p) in tps {
        by_topic.entry(t).or_default().push(*p);
    }
    let a = ConsumerProtocolAssignment::default().with_assigned_partitions(
        by_topic
            .into_iter()
            .map(|(t, ps)| {
                AssignedTopic::default()
                    .with_topic(name(t))
                    .with_partitions(ps)
            })
            .collect(),
    );
    let mut buf = BytesMut::new();
    buf.put_i16(0);
    a.encode(&mut buf, 0)?;
    Ok(buf.freeze())
}

/// The partitions of a consumer protocol assignment (empty bytes: none).
pub fn decode_assignment(mut b: Bytes) -> anyhow::Result<Vec<Tp>> {
    if b.len() < 2 {
        return Ok(Vec::new());
    }
    let version = b
        .get_i16()
        .clamp(0, ConsumerProtocolAssignment::VERSIONS.max);
    let a = ConsumerProtocolAssignment::decode(&mut b, version)?;
    let mut out = Vec::new();
    for t in a.assigned_partitions {
        for p in t.partitions {
            out.push((t.topic.0.as_str().to_string(), p));
        }
    }
    out.sort();
    Ok(out)
}

/// Kafka's RangeAssignor: per topic, the subscribed members in member id order
/// each take a contiguous range; the first `partitions % members` take one more.
pub fn range_assign(
    members: &[(String, Vec<String>)],
    partitions: &BTreeMap<String, i32>,
) -> BTreeMap<String, Vec<Tp>> {
    let mut out: BTreeMap<String, Vec<Tp>> = members
        .iter()
        .map(|(m, _)| (m.clone(), Vec::new()))
        .collect();
    for (topic, count) in partitions {
        let mut subscribers: Vec<&String> = members
            .iter()
            .filter(|(_, ts)| ts.contains(topic))
            .map(|(m, _)| m)
            .collect();
        subscribers.sort();
        if subscribers.is_empty() {
            continue;
        }
        let n = subscribers.len() as i32;
        let (per, extra) = (count / n, count % n);
        for (i, m) in subscribers.into_iter().enumerate() {
            let i = i as i32;
            let start = per * i + i.min(extra);
            let len = per + i32::from(i < extra);
            out.entry(m.clone())
                .or_default()
                .extend((start..start + len).map(|p| (topic.clone(), p)));
        }
    }
    out
}

/// This process's membership in a group.
pub struct GroupMember {
    client: Arc<Client>,
    pub group: String,
    topics: Vec<String>,
    pub member_id: String,
    pub generation_id: i32,
    pub coordinator: i32,
    pub assignment: Vec<Tp>,
}

fn code_of(e: &anyhow::Error) -> Option<ResponseError> {
    e.downcast_ref::<ClientError>()
        .and_then(ClientError::kafka_error)
}

impl GroupMember {
    /// Joins `group` subscribed to `topics` and waits for an assignment.
    pub async fn join(
        client: Arc<Client>,
        group: &str,
        topics: Vec<String>,
    ) -> anyhow::Result<GroupMember> {
        let coordinator = client.find_coordinator(group, 0).await?;
        let mut member = GroupMember {
            client,
            group: group.to_string(),
            topics,
            member_id: String::new(),
            generation_id: -1,
            coordinator,
            assignment: Vec::new(),
        };
        member.rejoin().await?;
        Ok(member)
    }

    /// Runs JoinGroup and SyncGroup until the group is stable with this member in it.
    pub async fn rejoin(&mut self) -> anyhow::Result<()> {
        for _ in 0..JOIN_ATTEMPTS_MAX {
            match self.join_once().await {
                Ok(()) => return Ok(()),
                Err(e) => match code_of(&e) {
                    Some(ResponseError::MemberIdRequired)
                    | Some(ResponseError::RebalanceInProgress) => {}
                    Some(ResponseError::UnknownMemberId)
                    | Some(ResponseError::IllegalGeneration) => {
                        self.member_id.clear();
                        self.generation_id = -1;
                    }
                    Some(ResponseError::NotCoordinator)
                    | Some(ResponseError::CoordinatorNotAvailable)
                    | Some(ResponseError::CoordinatorLoadInProgress) => {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        self.coordinator = self.client.find_coordinator(&self.group, 0).await?;
                    }
                    _ => return Err(e),
                },
            }
        }
        anyhow::bail!(
            "could not join group {} after {JOIN_ATTEMPTS_MAX} attempts",
            self.group
        )
    }

    async fn join_once(&mut self) -> anyhow::Result<()> {
        let conn = self.client.connection(self.coordinator).await?;
        let req = JoinGroupRequest::default()
            .with_group_id(group_id(&self.group))
            .with_session_timeout_ms(SESSION_TIMEOUT_MS)
            .with_rebalance_timeout_ms(REBALANCE_TIMEOUT_MS)
            .with_member_id(str_bytes(&self.member_id))
            .with_protocol_type(StrBytes::from_static_str(PROTOCOL_TYPE))
            .with_protocols(vec![JoinGroupRequestProtocol::default()
                .with_name(StrBytes::from_static_str(ASSIGNOR))
                .with_metadata(encode_subscription(&self.topics)?)]);
        let resp = conn.send(&req).await?;
        if !resp.member_id.is_empty() {
            self.member_id = resp.member_id.as_str().to_string();
        }
        check(resp.error_code, None, || {
            format!("joining group {}", self.group)
        })?;
        self.generation_id = resp.generation_id;
        let protocol = resp.protocol_name.as_ref().map_or(ASSIGNOR, |p| p.as_str());
        anyhow::ensure!(
            protocol == ASSIGNOR,
            "group {} chose the {protocol:?} assignor; ferry consume speaks only range",
            self.group
        );
        let assignments = if resp.leader.as_str() == self.member_id {
            self.assign(
                &resp
                    .members
                    .iter()
                    .map(|m| (m.member_id.as_str().to_string(), m.metadata.clone()))
                    .collect::<Vec<_>>(),
            )
            .await?
        } else {
            Vec::new()
        };
        let sync = SyncGroupRequest::default()
            .with_group_id(group_id(&self.group))
            .with_generation_id(self.generation_id)
            .with_member_id(str_bytes(&self.member_id))
            .with_protocol_type(Some(StrBytes::from_static_str(PROTOCOL_TYPE)))
            .with_protocol_name(Some(StrBytes::from_static_str(ASSIGNOR)))
            .with_assignments(assignments);
        let resp = conn.send(&sync).await?;
        check(resp.error_code, None, || {
            format!("syncing group {}", self.group)
        })?;
        self.assignment =
            decode_assignment(resp.assignment).context("decoding this member's assignment")?;
        tracing::debug!(group = %self.group, generation = self.generation_id, assignment = ?self.assignment, "joined");
        Ok(())
    }

    /// The leader's part: the range assignment of every member's subscription.
    async fn assign(
        &self,
        members: &[(String, Bytes)],
    ) -> anyhow::Result<Vec<SyncGroupRequestAssignment>> {
        let mut subscriptions = Vec::new();
        let mut topics: Vec<String> = Vec::new();
        for (id, metadata) in members {
            let subscribed = decode_subscription(metadata.clone())
                .with_context(|| format!("decoding the subscription of member {id}"))?;
            topics.extend(subscribed.iter().cloned());
            subscriptions.push((id.clone(), subscribed));
        }
        topics.sort();
        topics.dedup();
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        let fresh = self.client.refresh_metadata(Some(&names)).await?;
        let counts: BTreeMap<String, i32> = fresh
            .topics
            .iter()
            .filter(|(_, t)| t.error_code == 0)
            .map(|(n, t)| (n.clone(), t.partitions.len() as i32))
            .collect();
        range_assign(&subscriptions, &counts)
            .into_iter()
            .map(|(member, tps)| {
                Ok(SyncGroupRequestAssignment::default()
                    .with_member_id(str_bytes(&member))
                    .with_assignment(encode_assignment(&tps)?))
            })
            .collect()
    }

    /// Heartbeat; `Ok(false)` when the group is rebalancing and this member must rejoin.
    pub async fn heartbeat(&self) -> anyhow::Result<bool> {
        let req = HeartbeatRequest::default()
            .with_group_id(group_id(&self.group))
            .with_generation_id(self.generation_id)
            .with_member_id(str_bytes(&self.member_id));
        let resp = self
            .client
            .connection(self.coordinator)
            .await?
            .send(&req)
            .await?;
        match ResponseError::try_from_code(resp.error_code) {
            None => Ok(true),
            Some(ResponseError::RebalanceInProgress)
            | Some(ResponseError::IllegalGeneration)
            | Some(ResponseError::UnknownMemberId)
            | Some(ResponseError::NotCoordinator) => Ok(false),
            Some(_) => check(resp.error_code, None, || {
                format!("heartbeat in group {}", self.group)
            })
            .map(|_| true),
        }
    }

    /// Commits `offsets` (the next offset to read per partition).
    pub async fn commit(&self, offsets: &BTreeMap<Tp, i64>) -> anyhow::Result<()> {
        commit_offsets(
            &self.client,
            self.coordinator,
            &self.group,
            self.generation_id,
            &self.member_id,
            offsets,
        )
        .await
    }

    pub async fn leave(&self) -> anyhow::Result<()> {
        let conn = self.client.connection(self.coordinator).await?;
        let version = conn.version_for::<LeaveGroupRequest>(None)?;
        let mut req = LeaveGroupRequest::default().with_group_id(group_id(&self.group));
        // v3 replaced the single member id with a list of members.
        req = if version >= 3 {
            req.with_members(vec![
                MemberIdentity::default().with_member_id(str_bytes(&self.member_id))
            ])
        } else {
            req.with_member_id(str_bytes(&self.member_id))
        };
        let resp = conn.send_version(&req, version).await?;
        check(resp.error_code, None, || {
            format!("leaving group {}", self.group)
        })
    }
}

/// OffsetCommit; generation -1 and an empty member id commit outside group
/// membership (allowed while the group has no members).
pub async fn commit_offsets(
    client: &Client,
    coordinator: i32,
    group: &str,
    generation_id: i32,
    member_id: &str,
    offsets: &BTreeMap<Tp, i64>,
) -> anyhow::Result<()> {
    if offsets.is_empty() {
        return Ok(());
    }
    let mut topics: Vec<OffsetCommitRequestTopic> = Vec::new();
    for ((topic, partition), offset) in offsets {
        let p = OffsetCommitRequestPartition::default()
            .with_partition_index(*partition)
            .with_committed_offset(*offset)
            .with_committed_leader_epoch(-1);
        match topics.iter_mut().find(|t| t.name.0.as_str() == topic) {
            Some(t) => t.partitions.push(p),
            None => topics.push(
                OffsetCommitRequestTopic::default()
                    .with_name(kafka::name(topic))
                    .with_partitions(vec![p]),
            ),
        }
    }
    let req = OffsetCommitRequest::default()
        .with_group_id(group_id(group))
        .with_generation_id_or_member_epoch(generation_id)
        .with_member_id(str_bytes(member_id))
        .with_topics(topics);
    let conn = client.connection(coordinator).await?;
    // v9 is the last version that names topics instead of using topic ids.
    let (_, resp) = conn.send_capped(&req, 9).await?;
    for t in resp.topics {
        for p in t.partitions {
            check(p.error_code, None, || {
                format!(
                    "committing the offset of {}/{} for group {group}",
                    t.name.0.as_str(),
                    p.partition_index
                )
            })?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_assignment_splits_each_topic_in_member_order() {
        let members = vec![
            ("b".to_string(), vec!["t".to_string(), "u".to_string()]),
            ("a".to_string(), vec!["t".to_string()]),
        ];
        let counts = BTreeMap::from([("t".to_string(), 3), ("u".to_string(), 2)]);
        let a = range_assign(&members, &counts);
        assert_eq!(a["a"], vec![("t".to_string(), 0), ("t".to_string(), 1)]);
        assert_eq!(
            a["b"],
            vec![
                ("t".to_string(), 2),
                ("u".to_string(), 0),
                ("u".to_string(), 1)
            ]
        );
    }

    #[test]
    fn subscriptions_and_assignments_round_trip() {
        let topics = vec!["x".to_string(), "y".to_string()];
        assert_eq!(
            decode_subscription(encode_subscription(&topics).expect("encode")).expect("decode"),
            topics
        );
        let tps = vec![
            ("x".to_string(), 0),
            ("x".to_string(), 2),
            ("y".to_string(), 1),
        ];
        assert_eq!(
            decode_assignment(encode_assignment(&tps).expect("encode")).expect("decode"),
            tps
        );
        assert!(decode_assignment(Bytes::new()).expect("empty").is_empty());
    }
}
