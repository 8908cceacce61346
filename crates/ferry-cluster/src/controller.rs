//! The active controller: runs on whichever voter leads the metadata quorum.
//!
//! ```text
//!  broker ──Heartbeat──►┐                      ┌─► BrokerRegistered / BrokerUnfenced
//!  leader ──AlterPartition──► Controller ──────┼─► PartitionChanged (new ISR)
//!  tick (leader only) ──────► session expired ─┴─► BrokerFenced + PartitionChanged
//!                                                   (new leader from the ISR, epoch + 1)
//!  tick, every leader.imbalance.check.interval ──► PartitionChanged (preferred leads again)
//!  admin ──ElectLeaders──────────────────────────► PartitionChanged (preferred / unclean)
//!  admin ──AlterPartitionReassignments───────────► PartitionReassignment (target + removing)
//!  tick: every target replica in sync ───────────► PartitionReassigned (replicas = target)
//!  admin ──UnregisterBroker──────────────────────► PartitionChanged (out of every ISR)
//!                                                   + BrokerUnregistered; learner removed
//! ```
//!
//! A reassignment follows Kafka's: the partition is first assigned the union of
//! its replicas and the target (target first), so the added replicas open and
//! fetch from the leader; once every target replica is in the ISR the controller
//! drops the others, and elects a leader from the target if the old one left.
//! Replication throttles (`leader/follower.replication.throttled.*`) are not
//! implemented: added replicas catch up as fast as the fetchers go.
//!
//! Decisions read the committed image and are written back as metadata records,
//! so every node sees the same history. One decision at a time: each reads the
//! image the previous one committed, so a leader move cannot write back an ISR
//! that an AlterPartition changed meanwhile. Heartbeat times live only in the active
//! controller's memory: a newly elected controller gives every broker a full
//! session before fencing it, as KRaft does, counted from when it took over
//! (and it never fences its own node: it is running).
//!
//! A decision belongs to the quorum term it was made in
//! ([`MetadataQuorum::leadership`], read before the image it decides on) and
//! is appended with [`MetadataQuorum::propose_as`] in that term only: a
//! controller cut off from the others, which goes on deciding on its stale
//! image, gets its decisions dropped once it learns of the new leader, never
//! replayed by that leader.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use ferry_core::cluster::{
    ElectError, OngoingReassignment, ReassignError, UnregisterError, ELECTION_PREFERRED,
    ELECTION_UNCLEAN,
};
use ferry_core::metadata::{MetadataImage, MetadataRecord, PartitionMetadata};
use parking_lot::Mutex;

use crate::types::{
    ControllerHandler, ControllerRequest, ControllerResponse, HandlerFuture, Leadership,
};
use crate::MetadataQuorum;

/// How long a request waits for a just-elected controller to apply the first
/// entry of its term (its image is stale until then).
const TAKE_OVER_WAIT: Duration = Duration::from_secs(5);

/// What a broker tells the controller about itself with each heartbeat.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BrokerRegistration {
    pub node_id: i32,
    pub host: String,
    pub port: i32,
    pub rack: Option<String>,
}

/// Automatic leader rebalancing (`auto.leader.rebalance.enable`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LeaderRebalance {
    /// `leader.imbalance.check.interval.seconds`.
    pub check_interval: Duration,
    /// `leader.imbalance.per.broker.percentage`: the share of a broker's
    /// preferred partitions that others may lead before they move back.
    pub imbalance_percentage: i64,
}

pub struct Controller {
    quorum: Weak<MetadataQuorum>,
    /// This node's own cluster id, which it proposes for the whole cluster
    /// when it is the first active controller.
    cluster_id: String,
    session_timeout: Duration,
    /// The broker setting `unclean.leader.election.enable` (topics may override it).
    unclean_election: bool,
    /// `None` when `auto.leader.rebalance.enable` is false.
    rebalance: Option<LeaderRebalance>,
    state: Mutex<ControllerState>,
    /// Held from reading the image to committing the records decided from it.
    decisions: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct ControllerState {
    /// When each broker was last heard from.
    last_heartbeat: HashMap<i32, Instant>,
    /// The term this node is the active controller of, and since when (None:
    /// it is not); a new term starts every broker's session afresh.
    active_since: Option<(u64, Instant)>,
    /// When leader imbalance was last checked (the first check comes one
    /// interval after this node became the active controller).
    last_rebalance_check: Option<Instant>,
}

impl Controller {
    pub fn new(
        quorum: &Arc<MetadataQuorum>,
        cluster_id: String,
        session_timeout: Duration,
        unclean_election: bool,
        rebalance: Option<LeaderRebalance>,
    ) -> Arc<Controller> {
        Arc::new(Controller {
            quorum: Arc::downgrade(quorum),
            cluster_id,
            session_timeout,
            unclean_election,
            rebalance,
            state: Mutex::new(ControllerState::default()),
            decisions: tokio::sync::Mutex::new(()),
        })
    }

    fn quorum(&self) -> Option<Arc<MetadataQuorum>> {
        self.quorum.upgrade()
    }

    /// The quorum and the term this node leads with an image caught up to it
    /// (waiting a little for a just-elected leader), or why a request cannot
    /// be decided here.
    async fn active(&self) -> Result<(Arc<MetadataQuorum>, Leadership), ControllerResponse> {
        let Some(quorum) = self.quorum() else {
            return Err(rejected("the controller is stopping"));
        };
        match quorum.wait_leadership(TAKE_OVER_WAIT).await {
            Some(leadership) => Ok((quorum, leadership)),
            None => Err(rejected("this node is not the active controller")),
        }
    }

    /// Sets the cluster id once (this node's own, if none is set yet), fences
    /// brokers whose session expired, moving their leaderships, and
    /// every `leader.imbalance.check.interval.seconds` moves leaderships back to
    /// preferred replicas. Called periodically on every voter; does nothing
    /// unless this node leads.
    pub async fn tick(&self) {
        let Some(quorum) = self.quorum() else { return };
        let now = Instant::now();
        let Some(leadership) = quorum.leadership() else {
            let mut state = self.state.lock();
            state.active_since = None;
            state.last_rebalance_check = None;
            return;
        };
        let own_id = i32::try_from(quorum.node_id()).ok();
        let (expired, rebalance_due): (Vec<i32>, bool) = {
            let mut state = self.state.lock();
            let since = match state.active_since {
                Some((term, since)) if term == leadership.term => since,
                _ => {
                    // Taking over (or again, in a later term): every broker
                    // gets a full session from now, as do the rebalance checks.
                    state.active_since = Some((leadership.term, now));
                    state.last_rebalance_check = None;
                    now
                }
            };
            let rebalance_due = self.rebalance.is_some_and(|r| {
                let last = state.last_rebalance_check.get_or_insert(now);
                let due = now.duration_since(*last) >= r.check_interval;
                if due {
                    *last = now;
                }
                due
            });
            let image = quorum.image();
            let expired = image
                .live_brokers()
                .map(|b| b.node_id)
                // This node is running: the controller does not fence it.
                .filter(|id| Some(*id) != own_id)
                .filter(|id| {
                    let heard = state
                        .last_heartbeat
                        .get(id)
                        .copied()
                        .unwrap_or(since)
                        .max(since);
                    now.duration_since(heard) > self.session_timeout
                })
                .collect();
            (expired, rebalance_due)
        };
        if quorum.image().cluster_id.is_none() {
            let _decision = self.decisions.lock().await;
            if quorum.image().cluster_id.is_none() {
                let records = vec![MetadataRecord::ClusterIdSet {
                    cluster_id: self.cluster_id.clone(),
                }];
                match quorum.propose_as(leadership, records).await {
                    Ok(_) => tracing::info!(cluster_id = %self.cluster_id, "the cluster id is set"),
                    Err(e) => tracing::warn!(error = %e, "could not set the cluster id"),
                }
            }
        }
        for node_id in expired {
            let _decision = self.decisions.lock().await;
            if quorum.leadership() != Some(leadership) {
                return;
            }
            let image = quorum.image();
            // It may have heartbeated, or been fenced, while this waited.
            let heard = self.state.lock().last_heartbeat.get(&node_id).copied();
            if !image.live_brokers().any(|b| b.node_id == node_id)
                || heard.is_some_and(|h| h.elapsed() <= self.session_timeout)
            {
                continue;
            }
            let records = fence_broker(&image, node_id, self.unclean_election);
            tracing::warn!(
                node_id,
                term = leadership.term,
                changes = records.len() - 1,
                "fencing a broker that stopped heartbeating"
            );
            if let Err(e) = quorum.propose_as(leadership, records).await {
                tracing::warn!(node_id, error = %e, "could not fence a broker");
            }
        }
        if let (true, Some(rebalance)) = (rebalance_due, self.rebalance) {
            let _decision = self.decisions.lock().await;
            let records = preferred_leader_moves(&quorum.image(), rebalance.imbalance_percentage);
            if !records.is_empty() {
                tracing::info!(
                    moves = records.len(),
                    "moving leaderships back to preferred replicas"
                );
                if let Err(e) = quorum.propose_as(leadership, records).await {
                    tracing::warn!(error = %e, "could not rebalance leaders");
                }
            }
        }
        if quorum
            .image()
            .topics
            .values()
            .any(|t| t.partitions.iter().any(PartitionMetadata::is_reassigning))
        {
            let _decision = self.decisions.lock().await;
            let records = completed_reassignments(&quorum.image());
            if !records.is_empty() {
                tracing::info!(partitions = records.len(), "completing reassignments");
                if let Err(e) = quorum.propose_as(leadership, records).await {
                    tracing::warn!(error = %e, "could not complete reassignments");
                }
            }
        }
    }

    /// AlterPartitionReassignments: starts, replaces or cancels each
    /// reassignment, commits them together, and answers per partition. A
    /// reassignment whose target replicas are all in sync already completes in
    /// the same commit.
    async fn alter_partition_reassignments(
        &self,
        reassignments: Vec<(String, i32, Option<Vec<i32>>)>,
    ) -> ControllerResponse {
        let _decision = self.decisions.lock().await;
        let (quorum, leadership) = match self.active().await {
            Ok(active) => active,
            Err(refused) => return refused,
        };
        // Each partition is decided on the image the ones before it leave.
        let mut image = MetadataImage::clone(&quorum.image());
        let mut records = Vec::new();
        let mut results = Vec::with_capacity(reassignments.len());
        for (topic, partition, target) in reassignments {
            let result = reassign(&image, &topic, partition, target.as_deref()).map(|decided| {
                for r in &decided {
                    image.apply(r);
                }
                records.extend(decided);
            });
            results.push((topic, partition, result));
        }
        if !records.is_empty() {
            tracing::info!(records = records.len(), "reassigning partitions on request");
            if let Err(e) = quorum.propose_as(leadership, records).await {
                return rejected(&format!("could not commit the reassignments: {e}"));
            }
        }
        ControllerResponse::AlterPartitionReassignments { results }
    }

    /// UnregisterBroker, as Kafka's controller carries it out: the broker
    /// leaves every ISR (the partitions it leads elect another leader, as when
    /// it is fenced) and then the registered brokers, in one entry. Partitions
    /// keep it in their replicas (a reassignment moves them off it). Then, if
    /// it is a learner of the metadata quorum, it leaves the membership, so
    /// the leader stops replicating to it. A voter is refused; an id that is
    /// neither registered nor a learner is BROKER_ID_NOT_REGISTERED.
    ///
    /// A broker that is still running registers again with its next
    /// heartbeat, and joins the quorum again as a learner, as a Kafka broker
    /// re-registers: unregistering is for brokers that are gone.
    async fn unregister_broker(&self, node_id: i32) -> ControllerResponse {
        let _decision = self.decisions.lock().await;
        let (quorum, leadership) = match self.active().await {
            Ok(active) => active,
            Err(refused) => return refused,
        };
        let refused = |e: UnregisterError| ControllerResponse::UnregisterBroker { result: Err(e) };
        let raft_id = u64::try_from(node_id).ok();
        if raft_id.is_some_and(|id| quorum.voter_ids().contains(&id)) {
            return refused(UnregisterError::Invalid(format!(
                "node {node_id} is a voter of the metadata quorum: remove it as a voter first \
                 (ferry cluster remove-voter {node_id}), then unregister it"
            )));
        }
        let image = quorum.image();
        let registered = image.brokers.contains_key(&node_id);
        let learner = raft_id.is_some_and(|id| quorum.learner_ids().contains(&id));
        if !registered && !learner {
            return refused(UnregisterError::NotRegistered(format!(
                "broker {node_id} is not registered"
            )));
        }
        if registered {
            let records = unregister_broker(&image, node_id, self.unclean_election);
            tracing::info!(
                node_id,
                term = leadership.term,
                isr_changes = records.len() - 1,
                "unregistering a broker on request"
            );
            if let Err(e) = quorum.propose_as(leadership, records).await {
                return rejected(&format!("could not unregister broker {node_id}: {e}"));
            }
            self.state.lock().last_heartbeat.remove(&node_id);
        }
        if let Some(id) = raft_id.filter(|_| learner) {
            match quorum.remove_learner(id).await {
                Ok(removed) => {
                    if removed {
                        tracing::info!(node_id, "removed a learner from the metadata quorum");
                    }
                }
                Err(e) => {
                    return rejected(&format!(
                        "could not remove node {node_id} from the metadata quorum: {e}"
                    ))
                }
            }
        }
        ControllerResponse::UnregisterBroker { result: Ok(()) }
    }

    async fn list_partition_reassignments(
        &self,
        partitions: Option<Vec<(String, i32)>>,
    ) -> ControllerResponse {
        let Some(quorum) = self.quorum() else {
            return rejected("the controller is stopping");
        };
        ControllerResponse::ListPartitionReassignments {
            ongoing: ongoing_reassignments(&quorum.image(), partitions.as_deref()),
        }
    }

    /// ElectLeaders: elects, commits the new leaders, and answers per partition.
    async fn elect_leaders(
        &self,
        election_type: i8,
        partitions: Option<Vec<(String, i32)>>,
    ) -> ControllerResponse {
        let Some(quorum) = self.quorum() else {
            return rejected("the controller is stopping");
        };
        if election_type != ELECTION_PREFERRED && election_type != ELECTION_UNCLEAN {
            return rejected(&format!("unknown election type {election_type}"));
        }
        let _decision = self.decisions.lock().await;
        let leadership = match self.active().await {
            Ok((_, leadership)) => leadership,
            Err(refused) => return refused,
        };
        let elections = elect_leaders(&quorum.image(), election_type, partitions.as_deref());
        let records: Vec<MetadataRecord> = elections
            .iter()
            .filter_map(|(_, _, r)| r.as_ref().ok().cloned())
            .collect();
        if !records.is_empty() {
            tracing::info!(
                election_type,
                moves = records.len(),
                "electing leaders on request"
            );
            if let Err(e) = quorum.propose_as(leadership, records).await {
                return rejected(&format!("could not commit the new leaders: {e}"));
            }
        }
        ControllerResponse::ElectLeaders {
            results: elections
                .into_iter()
                .map(|(topic, partition, r)| (topic, partition, r.map(drop)))
                .collect(),
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
        let _decision = self.decisions.lock().await;
        let leadership = match self.active().await {
            Ok((_, leadership)) => leadership,
            Err(refused) => return refused,
        };
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
            if let Err(e) = quorum.propose_as(leadership, records).await {
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
        partition_epoch: Option<i32>,
        new_isr: Vec<i32>,
    ) -> ControllerResponse {
        let Some(quorum) = self.quorum() else {
            return rejected("the controller is stopping");
        };
        let _decision = self.decisions.lock().await;
        let leadership = match self.active().await {
            Ok((_, leadership)) => leadership,
            Err(refused) => return refused,
        };
        let image = quorum.image();
        let change = match alter_partition_change(
            &image,
            topic_id,
            partition,
            leader_epoch,
            partition_epoch,
            &new_isr,
        ) {
            Ok(change) => change,
            Err(reason) => return rejected(&reason),
        };
        let partition_epoch = match change {
            AlterPartitionChange::Unchanged { partition_epoch } => partition_epoch,
            AlterPartitionChange::Changed {
                record,
                partition_epoch,
            } => {
                if let Err(e) = quorum.propose_as(leadership, vec![record]).await {
                    return rejected(&format!("could not change the ISR: {e}"));
                }
                partition_epoch
            }
        };
        ControllerResponse::AlterPartition {
            leader_epoch,
            isr: new_isr,
            partition_epoch: Some(partition_epoch),
        }
    }
}

/// What an accepted AlterPartition does.
#[derive(Debug, Clone, PartialEq)]
enum AlterPartitionChange {
    /// The ISR asked for is the current one.
    Unchanged { partition_epoch: i32 },
    /// `record` makes it the ISR; the partition is at `partition_epoch` after it.
    Changed {
        record: MetadataRecord,
        partition_epoch: i32,
    },
}

/// Decides a leader's AlterPartition on `image`, or says why it is refused: a
/// stale leader epoch (Kafka's FENCED_LEADER_EPOCH), a stale partition epoch
/// (INVALID_UPDATE_VERSION: the ISR changed since the leader's proposal was
/// computed, e.g. the controller took a fenced broker out, and the leader must
/// see that state first), or an ISR that is not allowed. A request without a
/// partition epoch (from a broker older than them) is checked on its leader
/// epoch alone.
fn alter_partition_change(
    image: &MetadataImage,
    topic_id: uuid::Uuid,
    partition: i32,
    leader_epoch: i32,
    partition_epoch: Option<i32>,
    new_isr: &[i32],
) -> Result<AlterPartitionChange, String> {
    let Some(current) = image
        .topic_by_id(&topic_id)
        .and_then(|t| t.partitions.iter().find(|p| p.partition == partition))
    else {
        return Err("unknown partition".into());
    };
    if current.leader_epoch != leader_epoch {
        return Err(format!(
            "stale leader epoch {leader_epoch}, the partition is at {}",
            current.leader_epoch
        ));
    }
    if let Some(epoch) = partition_epoch.filter(|e| *e != current.partition_epoch) {
        return Err(format!(
            "stale partition epoch {epoch}, the partition is at {}",
            current.partition_epoch
        ));
    }
    if !new_isr.contains(&current.leader) || new_isr.iter().any(|r| !current.replicas.contains(r)) {
        return Err("the ISR must hold the leader and only assigned replicas".into());
    }
    // A fenced broker does not join the ISR (KIP-841), nor one that was
    // unregistered (it may still fetch until it registers again).
    if new_isr
        .iter()
        .any(|r| !current.isr.contains(r) && !is_live(image, *r))
    {
        return Err("a fenced or unregistered broker cannot join the ISR".into());
    }
    if new_isr == current.isr.as_slice() {
        return Ok(AlterPartitionChange::Unchanged {
            partition_epoch: current.partition_epoch,
        });
    }
    Ok(AlterPartitionChange::Changed {
        record: MetadataRecord::PartitionChanged {
            topic_id,
            partition,
            leader: current.leader,
            isr: new_isr.to_vec(),
            leader_epoch,
        },
        // The image counts the record as one more change.
        partition_epoch: current.partition_epoch.wrapping_add(1),
    })
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
                    partition_epoch,
                    new_isr,
                } => {
                    self.alter_partition(
                        topic_id,
                        partition,
                        leader_epoch,
                        partition_epoch,
                        new_isr,
                    )
                    .await
                }
                ControllerRequest::ElectLeaders {
                    election_type,
                    partitions,
                } => self.elect_leaders(election_type, partitions).await,
                ControllerRequest::AlterPartitionReassignments { reassignments } => {
                    self.alter_partition_reassignments(reassignments).await
                }
                ControllerRequest::ListPartitionReassignments { partitions } => {
                    self.list_partition_reassignments(partitions).await
                }
                ControllerRequest::UnregisterBroker { node_id } => {
                    self.unregister_broker(node_id).await
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

/// The records that unregister `node_id` (Kafka's
/// `handleBrokerUnregistered`): it leaves every ISR and every leadership as
/// when it is fenced ([`fence_broker`]; a partition it was the last in-sync
/// replica of keeps it on record, without a leader), then
/// `BrokerUnregistered`. Partition changes that would change nothing (it was
/// fenced already) are left out. Replicas are left as they are.
pub fn unregister_broker(
    image: &MetadataImage,
    node_id: i32,
    unclean: bool,
) -> Vec<MetadataRecord> {
    let unchanged = |record: &MetadataRecord| match record {
        MetadataRecord::PartitionChanged {
            topic_id,
            partition,
            leader,
            isr,
            leader_epoch,
        } => image
            .topic_by_id(topic_id)
            .and_then(|t| t.partitions.iter().find(|p| p.partition == *partition))
            .is_some_and(|p| (p.leader, &p.isr, p.leader_epoch) == (*leader, isr, *leader_epoch)),
        _ => true,
    };
    let mut records: Vec<MetadataRecord> = fence_broker(image, node_id, unclean)
        .into_iter()
        .filter(|r| !unchanged(r))
        .collect();
    records.push(MetadataRecord::BrokerUnregistered { node_id });
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

/// Whether broker `id` may lead: registered and not fenced.
fn is_live(image: &MetadataImage, id: i32) -> bool {
    image.brokers.contains_key(&id) && !image.fenced_brokers.contains(&id)
}

/// The record that gives `p` back to its preferred replica (the first
/// assigned) with a new epoch and the same ISR, or why it cannot.
fn elect_preferred(
    image: &MetadataImage,
    topic_id: uuid::Uuid,
    p: &PartitionMetadata,
) -> Result<MetadataRecord, ElectError> {
    let Some(&preferred) = p.replicas.first() else {
        return Err(ElectError::PreferredLeaderNotAvailable);
    };
    if p.leader == preferred {
        return Err(ElectError::ElectionNotNeeded);
    }
    if !is_live(image, preferred) || !p.isr.contains(&preferred) {
        return Err(ElectError::PreferredLeaderNotAvailable);
    }
    Ok(changed(
        topic_id,
        p,
        preferred,
        p.isr.clone(),
        p.leader_epoch + 1,
    ))
}

/// The record that gives leaderless `p` a leader: a live in-sync replica if
/// there is one, else (unclean: what it lacks is lost) the first live replica,
/// which becomes the whole ISR.
fn elect_unclean(
    image: &MetadataImage,
    topic_id: uuid::Uuid,
    p: &PartitionMetadata,
) -> Result<MetadataRecord, ElectError> {
    if p.leader >= 0 {
        return Err(ElectError::ElectionNotNeeded);
    }
    let live = |id: &i32| is_live(image, *id);
    if let Some(next) = p.isr.iter().copied().find(live) {
        return Ok(changed(
            topic_id,
            p,
            next,
            p.isr.clone(),
            p.leader_epoch + 1,
        ));
    }
    let next = p
        .replicas
        .iter()
        .copied()
        .find(live)
        .ok_or(ElectError::EligibleLeadersNotAvailable)?;
    Ok(changed(topic_id, p, next, vec![next], p.leader_epoch + 1))
}

/// ElectLeaders on `image`: per (topic, partition), the record that elects its
/// new leader, or why there is none. `None` elects for every partition;
/// a partition asked for twice is answered once.
pub fn elect_leaders(
    image: &MetadataImage,
    election_type: i8,
    partitions: Option<&[(String, i32)]>,
) -> Vec<(String, i32, Result<MetadataRecord, ElectError>)> {
    let elect = |topic: &ferry_core::metadata::TopicMetadata, p: &PartitionMetadata| {
        if election_type == ELECTION_UNCLEAN {
            elect_unclean(image, topic.topic_id, p)
        } else {
            elect_preferred(image, topic.topic_id, p)
        }
    };
    match partitions {
        None => image
            .topics
            .values()
            .flat_map(|t| {
                t.partitions
                    .iter()
                    .map(move |p| (t.name.clone(), p.partition, elect(t, p)))
            })
            .collect(),
        Some(asked) => {
            let asked: std::collections::BTreeSet<&(String, i32)> = asked.iter().collect();
            asked
                .into_iter()
                .map(|(topic, partition)| {
                    let found = image.topic(topic).and_then(|t| {
                        t.partitions
                            .iter()
                            .find(|p| p.partition == *partition)
                            .map(|p| (t, p))
                    });
                    let result = match found {
                        Some((t, p)) => elect(t, p),
                        None => Err(ElectError::UnknownTopicOrPartition),
                    };
                    (topic.clone(), *partition, result)
                })
                .collect()
        }
    }
}

/// Automatic leader rebalancing: for each broker that leads fewer of its
/// preferred partitions (those it is the first replica of) than it should, by
/// more than `imbalance_percentage` percent of them, the records that give
/// each such partition back to it where it is live and in sync.
pub fn preferred_leader_moves(
    image: &MetadataImage,
    imbalance_percentage: i64,
) -> Vec<MetadataRecord> {
    // preferred replica → (its partitions, those another replica leads)
    let mut by_preferred: HashMap<i32, (i64, Vec<MetadataRecord>)> = HashMap::new();
    let mut not_led: HashMap<i32, i64> = HashMap::new();
    for topic in image.topics.values() {
        for p in &topic.partitions {
            let Some(&preferred) = p.replicas.first() else {
                continue;
            };
            let entry = by_preferred.entry(preferred).or_default();
            entry.0 += 1;
            if p.leader != preferred {
                *not_led.entry(preferred).or_default() += 1;
                if let Ok(record) = elect_preferred(image, topic.topic_id, p) {
                    entry.1.push(record);
                }
            }
        }
    }
    let mut brokers: Vec<(i32, (i64, Vec<MetadataRecord>))> = by_preferred.into_iter().collect();
    brokers.sort_by_key(|(id, _)| *id);
    brokers
        .into_iter()
        .filter(|(id, (total, _))| {
            not_led.get(id).copied().unwrap_or(0) * 100 > imbalance_percentage * total
        })
        .flat_map(|(_, (_, moves))| moves)
        .collect()
}

/// The records that start, replace (`Some(target)`) or cancel (`None`) the
/// reassignment of `topic`'s `partition`, or why it is refused. A target equal
/// to the replicas of a partition not being reassigned needs no record.
pub fn reassign(
    image: &MetadataImage,
    topic: &str,
    partition: i32,
    target: Option<&[i32]>,
) -> Result<Vec<MetadataRecord>, ReassignError> {
    let (topic_id, p) = image
        .topic(topic)
        .and_then(|t| {
            t.partitions
                .iter()
                .find(|p| p.partition == partition)
                .map(|p| (t.topic_id, p))
        })
        .ok_or(ReassignError::UnknownTopicOrPartition)?;
    let Some(target) = target else {
        return cancel_reassignment(image, topic_id, p).map(|r| vec![r]);
    };
    let distinct: std::collections::BTreeSet<i32> = target.iter().copied().collect();
    if target.is_empty()
        || distinct.len() != target.len()
        || target.iter().any(|id| !is_live(image, *id))
    {
        return Err(ReassignError::InvalidReplicaAssignment);
    }
    if !p.is_reassigning() && p.replicas == target {
        return Ok(Vec::new());
    }
    // Replacing a reassignment in progress starts from all the replicas it
    // holds, as Kafka does: those the new target leaves out are removed.
    let removing: Vec<i32> = p
        .replicas
        .iter()
        .copied()
        .filter(|r| !target.contains(r))
        .collect();
    let adding: Vec<i32> = target
        .iter()
        .copied()
        .filter(|r| !p.replicas.contains(r))
        .collect();
    let mut replicas = target.to_vec();
    replicas.extend(&removing);
    let start = MetadataRecord::PartitionReassignment {
        topic_id,
        partition,
        replicas: replicas.clone(),
        adding: adding.clone(),
        removing: removing.clone(),
    };
    let started = PartitionMetadata {
        replicas,
        adding_replicas: adding,
        removing_replicas: removing,
        ..p.clone()
    };
    let mut records = vec![start];
    if started.is_reassigning() {
        records.extend(complete_reassignment(image, topic_id, &started));
    } else {
        // Same replicas in a new order: nothing to wait for.
        records.push(MetadataRecord::PartitionReassigned {
            topic_id,
            partition,
            replicas: started.replicas.clone(),
            isr: started.isr.clone(),
            leader: started.leader,
            leader_epoch: started.leader_epoch,
        });
    }
    Ok(records)
}

/// The record that reverts `p`'s reassignment in progress: the replicas it
/// added leave, and a leader among them gives way to an original in-sync
/// replica. Refused when no original replica is in sync (that would take an
/// unclean election).
fn cancel_reassignment(
    image: &MetadataImage,
    topic_id: uuid::Uuid,
    p: &PartitionMetadata,
) -> Result<MetadataRecord, ReassignError> {
    if !p.is_reassigning() {
        return Err(ReassignError::NoReassignmentInProgress);
    }
    let original: Vec<i32> = p
        .replicas
        .iter()
        .copied()
        .filter(|r| !p.adding_replicas.contains(r))
        .collect();
    let (replicas, isr, leader, leader_epoch) =
        shrink_to(image, p, original).ok_or(ReassignError::InvalidReplicaAssignment)?;
    Ok(MetadataRecord::PartitionReassigned {
        topic_id,
        partition: p.partition,
        replicas,
        isr,
        leader,
        leader_epoch,
    })
}

/// `p` assigned only `replicas`: (replicas, ISR, leader, leader epoch). The
/// leader stays if it is among them, else the first live one in the ISR leads
/// with a new epoch (none live: no leader until one returns). `None` when no
/// in-sync replica is among them.
fn shrink_to(
    image: &MetadataImage,
    p: &PartitionMetadata,
    replicas: Vec<i32>,
) -> Option<(Vec<i32>, Vec<i32>, i32, i32)> {
    let isr: Vec<i32> = p
        .isr
        .iter()
        .copied()
        .filter(|r| replicas.contains(r))
        .collect();
    if isr.is_empty() {
        return None;
    }
    let (leader, leader_epoch) = if p.leader >= 0 && replicas.contains(&p.leader) {
        (p.leader, p.leader_epoch)
    } else {
        let next = replicas
            .iter()
            .copied()
            .find(|r| isr.contains(r) && is_live(image, *r))
            .unwrap_or(-1);
        (next, p.leader_epoch + 1)
    };
    Some((replicas, isr, leader, leader_epoch))
}

/// The record that completes `p`'s reassignment: once every target replica
/// is in the ISR, the removed replicas go (from the ISR too), and if the
/// leader is one of them a live target replica leads with a new epoch.
fn complete_reassignment(
    image: &MetadataImage,
    topic_id: uuid::Uuid,
    p: &PartitionMetadata,
) -> Option<MetadataRecord> {
    let target = p.target_replicas();
    if !p.is_reassigning() || target.iter().any(|r| !p.isr.contains(r)) {
        return None;
    }
    let (replicas, isr, leader, leader_epoch) = shrink_to(image, p, target)?;
    if leader < 0 {
        // Wait for a target replica to be live rather than leave it leaderless.
        return None;
    }
    Some(MetadataRecord::PartitionReassigned {
        topic_id,
        partition: p.partition,
        replicas,
        isr,
        leader,
        leader_epoch,
    })
}

/// The records that complete every reassignment whose target replicas are
/// all in sync.
pub fn completed_reassignments(image: &MetadataImage) -> Vec<MetadataRecord> {
    image
        .topics
        .values()
        .flat_map(|t| {
            t.partitions
                .iter()
                .filter_map(|p| complete_reassignment(image, t.topic_id, p))
        })
        .collect()
}

/// The reassignments in progress of the asked (topic, partition)s, or of
/// every partition; unknown ones are left out, as Kafka does.
pub fn ongoing_reassignments(
    image: &MetadataImage,
    partitions: Option<&[(String, i32)]>,
) -> Vec<OngoingReassignment> {
    let asked = |topic: &str, partition: i32| {
        partitions.is_none_or(|ps| ps.iter().any(|(t, p)| t == topic && *p == partition))
    };
    image
        .topics
        .values()
        .flat_map(|t| {
            t.partitions
                .iter()
                .filter(|p| p.is_reassigning() && asked(&t.name, p.partition))
                .map(|p| OngoingReassignment {
                    topic: t.name.clone(),
                    partition: p.partition,
                    replicas: p.replicas.clone(),
                    adding: p.adding_replicas.clone(),
                    removing: p.removing_replicas.clone(),
                })
        })
        .collect()
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
    fn an_alter_partition_on_a_stale_partition_epoch_is_refused() {
        let (mut image, topic_id) = image();
        let decide = |image: &MetadataImage, partition_epoch: Option<i32>, isr: &[i32]| {
            alter_partition_change(image, topic_id, 0, 0, partition_epoch, isr)
        };
        // The leader computed a shrink to [1, 2] on epoch 0, then the controller
        // fenced 3 and took it out itself: same leader epoch, new partition epoch.
        image.apply(&MetadataRecord::BrokerFenced { node_id: 3 });
        image.apply(&changed(topic_id, &partition(&image), 1, vec![1, 2], 0));
        assert_eq!(partition(&image).partition_epoch, 1);
        // 3 is back and live; a stale expansion computed before it left is refused.
        image.apply(&MetadataRecord::BrokerUnfenced { node_id: 3 });
        let err = decide(&image, Some(0), &[1, 2, 3]).expect_err("stale");
        assert!(err.contains("stale partition epoch 0"), "{err}");
        // A stale leader epoch is refused as before.
        let err = alter_partition_change(&image, topic_id, 0, 1, Some(1), &[1, 2])
            .expect_err("stale leader epoch");
        assert!(err.contains("stale leader epoch"), "{err}");
        // On the current epoch: accepted, and the answer's epoch is the one the
        // image reaches when the record is applied.
        let Ok(AlterPartitionChange::Changed {
            record,
            partition_epoch,
        }) = decide(&image, Some(1), &[1, 2, 3])
        else {
            panic!("the current partition epoch is accepted");
        };
        image.apply(&record);
        let p = partition(&image);
        assert_eq!((p.isr, p.partition_epoch), (vec![1, 2, 3], partition_epoch));
        assert_eq!(partition_epoch, 2);
        // Asking for the ISR it has changes nothing; a request without a
        // partition epoch (an older broker) is checked on its leader epoch only.
        assert_eq!(
            decide(&image, Some(2), &[1, 2, 3]),
            Ok(AlterPartitionChange::Unchanged { partition_epoch: 2 })
        );
        assert!(matches!(
            decide(&image, None, &[1, 2]),
            Ok(AlterPartitionChange::Changed { .. })
        ));
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
    fn unregistering_takes_a_broker_out_of_every_isr_and_the_image_keeping_replicas() {
        let (mut image, _) = image();
        let records = unregister_broker(&image, 1, false);
        assert_eq!(
            records.last(),
            Some(&MetadataRecord::BrokerUnregistered { node_id: 1 })
        );
        for r in &records {
            image.apply(r);
        }
        let p = partition(&image);
        assert_eq!(
            (p.leader, p.leader_epoch, p.isr.clone(), p.replicas.clone()),
            (2, 1, vec![2, 3], vec![1, 2, 3]),
            "the next in-sync replica leads; the replicas stay as they were"
        );
        assert!(!image.brokers.contains_key(&1));
        assert!(!image.fenced_brokers.contains(&1));
        // Plans and elections treat it as gone.
        assert!(!is_live(&image, 1));
        assert_eq!(
            reassign(&image, "t", 0, Some(&[1, 2])),
            Err(ReassignError::InvalidReplicaAssignment)
        );
        assert_eq!(
            errors(&elect_leaders(&image, ELECTION_PREFERRED, None)),
            vec![(0, Some(ElectError::PreferredLeaderNotAvailable))]
        );
        // The session check never fences what is not registered.
        assert!(image.live_brokers().all(|b| b.node_id != 1));
        // It registers again (it was still running): it is live, and its
        // partition takes it back through the usual ISR expansion.
        image.apply(&MetadataRecord::BrokerRegistered {
            node_id: 1,
            host: "127.0.0.1".into(),
            port: 9001,
            rack: None,
        });
        assert!(is_live(&image, 1));
    }

    #[test]
    fn unregistering_a_fenced_broker_changes_no_partition_twice() {
        let (mut image, _) = image();
        for id in [2, 3, 1] {
            for r in fence_broker(&image, id, false) {
                image.apply(&r);
            }
        }
        // 1 was the last in sync: it stays on record, and the partition has no
        // leader until it returns (or an unclean election).
        assert_eq!(
            unregister_broker(&image, 1, false),
            vec![MetadataRecord::BrokerUnregistered { node_id: 1 }]
        );
        let records = unregister_broker(&image, 3, false);
        assert_eq!(
            records,
            vec![MetadataRecord::BrokerUnregistered { node_id: 3 }]
        );
        for r in &records {
            image.apply(r);
        }
        let p = partition(&image);
        assert_eq!((p.leader, p.isr.clone()), (-1, vec![1]));
        assert_eq!(
            image.brokers.keys().copied().collect::<Vec<_>>(),
            vec![1, 2]
        );
        assert_eq!(
            image.fenced_brokers.iter().copied().collect::<Vec<_>>(),
            vec![1, 2]
        );
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

    /// Topic "t" on brokers 1..=3 with partitions (replicas, leader, isr).
    fn image_with(partitions: &[(&[i32], i32, &[i32])]) -> MetadataImage {
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
        for (i, (replicas, leader, isr)) in partitions.iter().enumerate() {
            image.apply(&MetadataRecord::PartitionCreated {
                topic_id,
                partition: i as i32,
                replicas: replicas.to_vec(),
                isr: isr.to_vec(),
                leader: *leader,
                leader_epoch: 5,
            });
        }
        image
    }

    /// (partition, leader, isr, leader_epoch) of each PartitionChanged.
    fn moves(records: &[MetadataRecord]) -> Vec<(i32, i32, Vec<i32>, i32)> {
        records
            .iter()
            .map(|r| match r {
                MetadataRecord::PartitionChanged {
                    partition,
                    leader,
                    isr,
                    leader_epoch,
                    ..
                } => (*partition, *leader, isr.clone(), *leader_epoch),
                other => panic!("not a leader change: {other:?}"),
            })
            .collect()
    }

    #[test]
    fn rebalancing_gives_partitions_back_to_live_in_sync_preferred_replicas() {
        let image = image_with(&[
            (&[1, 2, 3], 2, &[1, 2, 3]),
            (&[2, 3, 1], 2, &[1, 2, 3]),
            (&[3, 1, 2], 1, &[1, 2, 3]),
        ]);
        assert_eq!(
            moves(&preferred_leader_moves(&image, 10)),
            vec![(0, 1, vec![1, 2, 3], 6), (2, 3, vec![1, 2, 3], 6)]
        );
    }

    #[test]
    fn rebalancing_waits_for_the_preferred_replica_to_be_live_and_in_sync() {
        let mut image = image_with(&[(&[1, 2, 3], 2, &[2, 3]), (&[2, 3, 1], 3, &[1, 2, 3])]);
        // 1 is out of the ISR of partition 0; 2 is fenced.
        image.apply(&MetadataRecord::BrokerFenced { node_id: 2 });
        assert!(preferred_leader_moves(&image, 0).is_empty());
        image.apply(&MetadataRecord::BrokerUnfenced { node_id: 2 });
        assert_eq!(
            moves(&preferred_leader_moves(&image, 0)),
            vec![(1, 2, vec![1, 2, 3], 6)]
        );
    }

    #[test]
    fn rebalancing_leaves_a_broker_whose_imbalance_is_within_the_percentage() {
        // Broker 1 is preferred for four partitions and leads three: 25 %.
        let image = image_with(&[
            (&[1, 2, 3], 1, &[1, 2, 3]),
            (&[1, 2, 3], 1, &[1, 2, 3]),
            (&[1, 2, 3], 1, &[1, 2, 3]),
            (&[1, 2, 3], 2, &[1, 2, 3]),
        ]);
        assert!(preferred_leader_moves(&image, 25).is_empty());
        assert_eq!(
            moves(&preferred_leader_moves(&image, 24)),
            vec![(3, 1, vec![1, 2, 3], 6)]
        );
    }

    fn errors(
        results: &[(String, i32, Result<MetadataRecord, ElectError>)],
    ) -> Vec<(i32, Option<ElectError>)> {
        results
            .iter()
            .map(|(_, p, r)| (*p, r.as_ref().err().copied()))
            .collect()
    }

    #[test]
    fn a_preferred_election_answers_per_partition() {
        let image = image_with(&[
            (&[1, 2, 3], 2, &[1, 2, 3]),
            (&[2, 3, 1], 2, &[1, 2, 3]),
            (&[3, 1, 2], 1, &[1, 2]),
        ]);
        let asked: Vec<(String, i32)> = [("t", 0), ("t", 1), ("t", 2), ("t", 9), ("u", 0)]
            .iter()
            .map(|(t, p)| (t.to_string(), *p))
            .collect();
        let results = elect_leaders(&image, ELECTION_PREFERRED, Some(&asked));
        assert_eq!(
            errors(&results),
            vec![
                (0, None),
                (1, Some(ElectError::ElectionNotNeeded)),
                (2, Some(ElectError::PreferredLeaderNotAvailable)),
                (9, Some(ElectError::UnknownTopicOrPartition)),
                (0, Some(ElectError::UnknownTopicOrPartition)),
            ]
        );
        let elected: Vec<MetadataRecord> =
            results.into_iter().filter_map(|(_, _, r)| r.ok()).collect();
        assert_eq!(moves(&elected), vec![(0, 1, vec![1, 2, 3], 6)]);
        // Every partition when none is named.
        assert_eq!(elect_leaders(&image, ELECTION_PREFERRED, None).len(), 3);
    }

    #[test]
    fn an_unclean_election_gives_a_leaderless_partition_a_live_replica() {
        let mut image = image_with(&[(&[1, 2, 3], -1, &[1]), (&[2, 3, 1], 2, &[2, 3])]);
        image.apply(&MetadataRecord::BrokerFenced { node_id: 1 });
        let results = elect_leaders(&image, ELECTION_UNCLEAN, None);
        assert_eq!(
            errors(&results),
            vec![(0, None), (1, Some(ElectError::ElectionNotNeeded))]
        );
        let elected: Vec<MetadataRecord> =
            results.into_iter().filter_map(|(_, _, r)| r.ok()).collect();
        assert_eq!(moves(&elected), vec![(0, 2, vec![2], 6)]);
        for id in [2, 3] {
            image.apply(&MetadataRecord::BrokerFenced { node_id: id });
        }
        assert_eq!(
            errors(&elect_leaders(&image, ELECTION_UNCLEAN, None))[0],
            (0, Some(ElectError::EligibleLeadersNotAvailable))
        );
    }
    fn reassigned(
        image: &mut MetadataImage,
        target: Option<&[i32]>,
    ) -> Result<usize, ReassignError> {
        let records = reassign(image, "t", 0, target)?;
        for r in &records {
            image.apply(r);
        }
        Ok(records.len())
    }

    #[test]
    fn a_reassignment_adds_first_and_removes_once_the_target_is_in_sync() {
        let mut image = image_with(&[(&[1, 2], 1, &[1, 2])]);
        assert_eq!(reassigned(&mut image, Some(&[2, 3])), Ok(1));
        let p = partition(&image);
        assert_eq!(
            (
                p.replicas.clone(),
                p.adding_replicas.clone(),
                p.removing_replicas.clone()
            ),
            (vec![2, 3, 1], vec![3], vec![1])
        );
        assert_eq!(ongoing_reassignments(&image, None).len(), 1);
        assert!(
            completed_reassignments(&image).is_empty(),
            "3 is not in sync yet"
        );
        image.apply(&changed(
            image.topic("t").expect("topic").topic_id,
            &p,
            1,
            vec![1, 2, 3],
            5,
        ));
        for r in completed_reassignments(&image) {
            image.apply(&r);
        }
        let p = partition(&image);
        assert_eq!(
            (p.replicas.clone(), p.isr.clone(), p.leader, p.leader_epoch),
            (vec![2, 3], vec![2, 3], 2, 6),
            "the removed leader gives way to the first target replica in sync"
        );
        assert!(!p.is_reassigning());
        assert!(ongoing_reassignments(&image, None).is_empty());
    }

    #[test]
    fn a_cancelled_reassignment_reverts_to_the_original_replicas() {
        let mut image = image_with(&[(&[1, 2], 1, &[1, 2])]);
        assert_eq!(
            reassigned(&mut image, None),
            Err(ReassignError::NoReassignmentInProgress)
        );
        reassigned(&mut image, Some(&[2, 3])).expect("start");
        reassigned(&mut image, None).expect("cancel");
        let p = partition(&image);
        assert_eq!(
            (p.replicas.clone(), p.isr.clone(), p.leader, p.leader_epoch),
            (vec![2, 1], vec![1, 2], 1, 5)
        );
        assert!(!p.is_reassigning());
    }

    #[test]
    fn a_reassignment_is_refused_for_bad_targets_and_unknown_partitions() {
        let mut image = image_with(&[(&[1, 2], 1, &[1, 2])]);
        image.apply(&MetadataRecord::BrokerFenced { node_id: 3 });
        for target in [&[][..], &[2, 2], &[2, 4], &[2, 3]] {
            assert_eq!(
                reassign(&image, "t", 0, Some(target)).map(|r| r.len()),
                Err(ReassignError::InvalidReplicaAssignment),
                "{target:?}"
            );
        }
        assert_eq!(
            reassign(&image, "t", 7, Some(&[1])).map(|r| r.len()),
            Err(ReassignError::UnknownTopicOrPartition)
        );
        assert_eq!(reassign(&image, "t", 0, Some(&[1, 2])), Ok(vec![]));
        // Dropping a replica that is in sync completes at once.
        assert_eq!(reassigned(&mut image, Some(&[2])), Ok(2));
        let p = partition(&image);
        assert_eq!(
            (p.replicas.clone(), p.isr.clone(), p.leader),
            (vec![2], vec![2], 2)
        );
    }
}
