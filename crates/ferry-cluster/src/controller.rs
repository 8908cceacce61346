//! The active controller: runs on whichever voter leads the metadata quorum.
//!
//! ```text
//!  broker ──Heartbeat──►┐                      ┌─► BrokerRegistered / BrokerUnfenced
//!  leader ──AlterPartition──► Controller ──────┼─► PartitionChanged (new ISR)
//!  tick (leader only) ──────► session expired ─┴─► BrokerFenced + PartitionChanged
//!                                                   (new leader from the ISR, epoch + 1)
//! ```
//!
//! Decisions read the committed image and are written back as metadata records,
//! so every node sees the same history. Heartbeat times live only in the active
//! controller's memory: a newly elected controller gives every broker a full
//! session before fencing it, as KRaft does.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use ferry_core::metadata::{MetadataImage, MetadataRecord, PartitionMetadata};
use parking_lot::Mutex;

use crate::types::{ControllerHandler, ControllerRequest, ControllerResponse, HandlerFuture};
use crate::MetadataQuorum;

/// What a broker tells the controller about itself with each heartbeat.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BrokerRegistration {
    pub node_id: i32,
    pub host: String,
    pub port: i32,
    pub rack: Option<String>,
}

pub struct Controller {
    quorum: Weak<MetadataQuorum>,
    session_timeout: Duration,
    /// The broker setting `unclean.leader.election.enable` (topics may override it).
    unclean_election: bool,
    state: Mutex<ControllerState>,
}

#[derive(Default)]
struct ControllerState {
    /// When each broker was last heard from.
    last_heartbeat: HashMap<i32, Instant>,
    /// When this node last became the active controller (None: it is not).
    active_since: Option<Instant>,
}

impl Controller {
    pub fn new(
        quorum: &Arc<MetadataQuorum>,
        session_timeout: Duration,
        unclean_election: bool,
    ) -> Arc<Controller> {
        Arc::new(Controller {
            quorum: Arc::downgrade(quorum),
            session_timeout,
            unclean_election,
            state: Mutex::new(ControllerState::default()),
        })
    }

    fn quorum(&self) -> Option<Arc<MetadataQuorum>> {
        self.quorum.upgrade()
    }

    /// Fences brokers whose session expired, moving their leaderships. Called
    /// periodically on every voter; does nothing unless this node leads.
    pub async fn tick(&self) {
        let Some(quorum) = self.quorum() else { return };
        let now = Instant::now();
        let expired: Vec<i32> = {
            let mut state = self.state.lock();
            if !quorum.is_leader() {
                state.active_since = None;
                return;
            }
            let since = *state.active_since.get_or_insert(now);
            let image = quorum.image();
            image
                .live_brokers()
                .map(|b| b.node_id)
                .filter(|id| {
                    let heard = state
                        .last_heartbeat
                        .get(id)
                        .copied()
                        .unwrap_or(since)
                        .max(since);
                    now.duration_since(heard) > self.session_timeout
                })
                .collect()
        };
        for node_id in expired {
            let records = fence_broker(&quorum.image(), node_id, self.unclean_election);
            tracing::warn!(
                node_id,
                changes = records.len() - 1,
                "fencing a broker that stopped heartbeating"
            );
            if let Err(e) = quorum.propose(records).await {
                tracing::warn!(node_id, error = %e, "could not fence a broker");
            }
        }
    }

    async fn heartbeat(
        &self,
        node_id: i32,
        registration: Option<BrokerRegistration>,
    ) -> ControllerResponse {
        let Some(quorum) = self.quorum() else {
            return rejected("the controller is stopping");
        };
        self.state
            .lock()
            .last_heartbeat
            .insert(node_id, Instant::now());
        let image = quorum.image();
        let mut records = Vec::new();
        if let Some(r) = registration {
            let known = image
                .brokers
                .get(&node_id)
                .is_some_and(|b| (&b.host, b.port, &b.rack) == (&r.host, r.port, &r.rack));
            if !known {
                records.push(MetadataRecord::BrokerRegistered {
                    node_id,
                    host: r.host,
                    port: r.port,
                    rack: r.rack,
                });
            }
        }
        if !image.brokers.contains_key(&node_id) && records.is_empty() {
            return rejected("unknown broker: heartbeat with its registration");
        }
        if image.fenced_brokers.contains(&node_id) || !records.is_empty() {
            if image.fenced_brokers.contains(&node_id) {
                records.push(MetadataRecord::BrokerUnfenced { node_id });
            }
            records.extend(elect_for_returning_broker(&image, node_id));
            if let Err(e) = quorum.propose(records).await {
                return rejected(&format!("could not register or unfence: {e}"));
            }
        }
        ControllerResponse::Heartbeat { is_fenced: false }
    }

    async fn alter_partition(
        &self,
        topic_id: uuid::Uuid,
        partition: i32,
        leader_epoch: i32,
        new_isr: Vec<i32>,
    ) -> ControllerResponse {
        let Some(quorum) = self.quorum() else {
            return rejected("the controller is stopping");
        };
        let image = quorum.image();
        let Some(current) = image
            .topic_by_id(&topic_id)
            .and_then(|t| t.partitions.iter().find(|p| p.partition == partition))
        else {
            return rejected("unknown partition");
        };
        if current.leader_epoch != leader_epoch {
            return rejected(&format!(
                "stale leader epoch {leader_epoch}, the partition is at {}",
                current.leader_epoch
            ));
        }
        if !new_isr.contains(&current.leader)
            || new_isr.iter().any(|r| !current.replicas.contains(r))
        {
            return rejected("the ISR must hold the leader and only assigned replicas");
        }
        // A fenced broker does not join the ISR (KIP-841).
        if new_isr
            .iter()
            .any(|r| !current.isr.contains(r) && image.fenced_brokers.contains(r))
        {
            return rejected("a fenced broker cannot join the ISR");
        }
        if new_isr != current.isr {
            let record = MetadataRecord::PartitionChanged {
                topic_id,
                partition,
                leader: current.leader,
                isr: new_isr.clone(),
                leader_epoch,
            };
            if let Err(e) = quorum.propose(vec![record]).await {
                return rejected(&format!("could not change the ISR: {e}"));
            }
        }
        ControllerResponse::AlterPartition {
            leader_epoch,
            isr: new_isr,
        }
    }
}

impl ControllerHandler for Controller {
    fn handle(&self, request: ControllerRequest) -> HandlerFuture<'_> {
        Box::pin(async move {
            match request {
                ControllerRequest::Heartbeat {
                    node_id,
                    registration,
                    ..
                } => self.heartbeat(node_id, registration).await,
                ControllerRequest::AlterPartition {
                    topic_id,
                    partition,
                    leader_epoch,
                    new_isr,
                } => {
                    self.alter_partition(topic_id, partition, leader_epoch, new_isr)
                        .await
                }
            }
        })
    }
}

fn rejected(reason: &str) -> ControllerResponse {
    ControllerResponse::Rejected {
        reason: reason.to_string(),
    }
}

/// The records that fence `node_id`: it leaves every ISR, and the partitions it
/// led get the first other live in-sync replica as leader with a new epoch. When
/// none is left the partition has no leader (-1), unless the topic (or the
/// broker default `unclean`) enables `unclean.leader.election.enable`: then a
/// live out-of-sync replica leads, and what it lacks is lost.
pub fn fence_broker(image: &MetadataImage, node_id: i32, unclean: bool) -> Vec<MetadataRecord> {
    let mut records = vec![MetadataRecord::BrokerFenced { node_id }];
    let live = |id: &i32| {
        *id != node_id && image.brokers.contains_key(id) && !image.fenced_brokers.contains(id)
    };
    for topic in image.topics.values() {
        for p in &topic.partitions {
            if !p.isr.contains(&node_id) && p.leader != node_id {
                continue;
            }
            let mut isr: Vec<i32> = p.isr.iter().copied().filter(|r| *r != node_id).collect();
            let unclean_allowed = topic
                .configs
                .get("unclean.leader.election.enable")
                .or_else(|| image.broker_configs.get("unclean.leader.election.enable"))
                .map_or(unclean, |v| v == "true");
            let (leader, leader_epoch) = if p.leader == node_id {
                let out_of_sync = p
                    .replicas
                    .iter()
                    .copied()
                    .find(live)
                    .filter(|_| unclean_allowed);
                match (isr.iter().copied().find(live), out_of_sync) {
                    (Some(next), _) => (next, p.leader_epoch + 1),
                    (None, Some(next)) => {
                        tracing::warn!(topic = %topic.name, partition = p.partition, leader = next, "unclean leader election: an out-of-sync replica leads");
                        isr = vec![next];
                        (next, p.leader_epoch + 1)
                    }
                    (None, None) => {
                        // Keep the last in-sync replica on record so it can lead
                        // again when it returns.
                        isr = vec![node_id];
                        (-1, p.leader_epoch + 1)
                    }
                }
            } else {
                (p.leader, p.leader_epoch)
            };
            if isr.is_empty() {
                isr = vec![node_id];
            }
            records.push(changed(topic.topic_id, p, leader, isr, leader_epoch));
        }
    }
    records
}

/// Partitions without a leader whose last in-sync replica is `node_id`: it leads
/// them again as it comes back.
fn elect_for_returning_broker(image: &MetadataImage, node_id: i32) -> Vec<MetadataRecord> {
    let mut records = Vec::new();
    for topic in image.topics.values() {
        for p in &topic.partitions {
            if p.leader == -1 && p.isr.contains(&node_id) {
                records.push(changed(
                    topic.topic_id,
                    p,
                    node_id,
                    p.isr.clone(),
                    p.leader_epoch + 1,
                ));
            }
        }
    }
    records
}

fn changed(
    topic_id: uuid::Uuid,
    p: &PartitionMetadata,
    leader: i32,
    isr: Vec<i32>,
    leader_epoch: i32,
) -> MetadataRecord {
    MetadataRecord::PartitionChanged {
        topic_id,
        partition: p.partition,
        leader,
        isr,
        leader_epoch,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn image() -> (MetadataImage, uuid::Uuid) {
        let mut image = MetadataImage::default();
        for id in 1..=3 {
            image.apply(&MetadataRecord::BrokerRegistered {
                node_id: id,
                host: "127.0.0.1".into(),
                port: 9000 + id,
                rack: None,
            });
        }
        let topic_id = uuid::Uuid::new_v4();
        image.apply(&MetadataRecord::TopicCreated {
            name: "t".into(),
            topic_id,
            configs: BTreeMap::new(),
        });
        image.apply(&MetadataRecord::PartitionCreated {
            topic_id,
            partition: 0,
            replicas: vec![1, 2, 3],
            isr: vec![1, 2, 3],
            leader: 1,
            leader_epoch: 0,
        });
        (image, topic_id)
    }

    fn partition(image: &MetadataImage) -> PartitionMetadata {
        image.topic("t").expect("topic").partitions[0].clone()
    }

    #[test]
    fn fencing_the_leader_elects_the_next_in_sync_replica_with_a_new_epoch() {
        let (mut image, _) = image();
        for r in fence_broker(&image, 1, false) {
            image.apply(&r);
        }
        let p = partition(&image);
        assert_eq!(
            (p.leader, p.leader_epoch, p.isr.clone()),
            (2, 1, vec![2, 3])
        );
        assert!(image.fenced_brokers.contains(&1));
        // A follower fenced next only leaves the ISR.
        for r in fence_broker(&image, 3, false) {
            image.apply(&r);
        }
        let p = partition(&image);
        assert_eq!((p.leader, p.leader_epoch, p.isr.clone()), (2, 1, vec![2]));
    }

    #[test]
    fn the_last_in_sync_replica_fenced_leaves_the_partition_leaderless_until_it_returns() {
        let (mut image, _) = image();
        for id in [2, 3, 1] {
            for r in fence_broker(&image, id, false) {
                image.apply(&r);
            }
        }
        let p = partition(&image);
        assert_eq!((p.leader, p.isr.clone()), (-1, vec![1]));
        // Broker 2 coming back does not lead: it is not in the ISR.
        assert!(elect_for_returning_broker(&image, 2).is_empty());
        for r in elect_for_returning_broker(&image, 1) {
            image.apply(&r);
        }
        let p = partition(&image);
        assert_eq!((p.leader, p.isr.clone()), (1, vec![1]));
        assert!(p.leader_epoch > 1);
    }

    #[test]
    fn unclean_election_lets_a_live_out_of_sync_replica_lead() {
        let (mut image, _) = image();
        // 2 and 3 drop out of the ISR, then come back without catching up.
        for id in [2, 3] {
            for r in fence_broker(&image, id, true) {
                image.apply(&r);
            }
            image.apply(&MetadataRecord::BrokerUnfenced { node_id: id });
        }
        assert_eq!(partition(&image).isr, vec![1]);
        let (mut clean, mut unclean) = (image.clone(), image);
        for r in fence_broker(&clean, 1, false) {
            clean.apply(&r);
        }
        assert_eq!(
            partition(&clean).leader,
            -1,
            "only an in-sync replica may lead"
        );
        for r in fence_broker(&unclean, 1, true) {
            unclean.apply(&r);
        }
        let p = partition(&unclean);
        assert_eq!((p.leader, p.isr.clone()), (2, vec![2]));
    }
}
