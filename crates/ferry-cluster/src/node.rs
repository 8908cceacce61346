//! One node of a cluster: the metadata quorum (when a voter), the broker on top
//! of it, and the tasks that keep them in step.
//!
//! ```text
//!  MetadataQuorum ──subscribe──► watcher ──► Broker::apply_image (roles, replicas)
//!        ▲                           └─────► ReplicaFetchers::update (whom to fetch from)
//!        │ propose / call_leader
//!  Broker (QuorumStore, QuorumLink) ── heartbeat task ── ISR shrink task
//!  Controller (answers on the leader) ── tick task (fences silent brokers)
//! ```

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use ferry_core::cluster::{
    ClusterLink, DescribeQuorumFuture, ElectFuture, ListReassignmentsFuture, MarkersFuture,
    MetadataStore, ReassignFuture, UnregisterFuture, VoterChangeFuture,
};
use ferry_core::metadata::{MetadataImage, MetadataRecord};
use ferry_core::{Broker, BrokerOptions, Clock, CoreError, Partition, TopicPartition};
use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::controller::{BrokerRegistration, Controller, LeaderRebalance};
use crate::fetcher::ReplicaFetchers;
use crate::types::{ControllerRequest, ControllerResponse};
use crate::{MetadataQuorum, QuorumConfig, QuorumError};

/// The least time one heartbeat attempt is given, however short the interval.
const MIN_HEARTBEAT_ATTEMPT: Duration = Duration::from_millis(100);

/// How a node joins its cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Voter id → `host:port` of its controller listener: the voters a new
    /// cluster is initialized with, and where a node looks for the quorum (the
    /// membership in the metadata log decides once the cluster exists).
    pub voters: BTreeMap<u64, String>,
    /// Where this node's controller listener binds.
    pub controller_addr: String,
}

pub struct ClusterNode {
    quorum: Arc<MetadataQuorum>,
    broker: Arc<Broker>,
    fetchers: Arc<ReplicaFetchers>,
    tasks: Vec<JoinHandle<()>>,
}

impl ClusterNode {
    /// Starts the quorum, opens the broker on the image it has applied, and
    /// starts heartbeats, replica fetchers and (on voters) the controller.
    pub async fn start(
        options: BrokerOptions,
        cluster: ClusterOptions,
        clock: Arc<dyn Clock>,
    ) -> Result<ClusterNode, QuorumError> {
        let node_id = options.node_id;
        let raft_dir = options
            .data_dir
            .join(ferry_core::broker::METADATA_DIR)
            .join("raft");
        let mut quorum_config = QuorumConfig::new(
            node_id as u64,
            cluster.voters.clone(),
            cluster.controller_addr.clone(),
            raft_dir,
        );
        // The membership records where a joining node is reached: a wildcard
        // listener is reached at the host the broker advertises to clients.
        if let Ok(bind) = cluster.controller_addr.parse::<std::net::SocketAddr>() {
            if bind.ip().is_unspecified() && bind.port() != 0 {
                let host = &options.advertised_host;
                quorum_config.advertised_addr = Some(if host.contains(':') {
                    format!("[{host}]:{}", bind.port())
                } else {
                    format!("{host}:{}", bind.port())
                });
            }
        }
        let quorum = MetadataQuorum::start(quorum_config).await?;
        let static_config = ferry_core::config::BrokerConfig::new(options.configs.clone())
            .map_err(|e| QuorumError::Config(e.to_string()))?;
        let session_timeout =
            Duration::from_millis(static_config.long("broker.session.timeout.ms").max(1) as u64);
        let heartbeat_interval =
            Duration::from_millis(static_config.long("broker.heartbeat.interval.ms").max(1) as u64);
        let rebalance =
            static_config
                .bool("auto.leader.rebalance.enable")
                .then(|| LeaderRebalance {
                    check_interval: Duration::from_secs(
                        static_config
                            .long("leader.imbalance.check.interval.seconds")
                            .max(1) as u64,
                    ),
                    imbalance_percentage: static_config
                        .long("leader.imbalance.per.broker.percentage"),
                });
        let own_cluster_id =
            ferry_core::broker::ClusterId::load_or_create(&options.data_dir, node_id)
                .map_err(|e| QuorumError::Config(e.to_string()))?
                .id;
        let controller = Controller::new(
            &quorum,
            own_cluster_id,
            session_timeout,
            static_config.bool("unclean.leader.election.enable"),
            rebalance,
        );
        quorum.set_handler(controller.clone());
        // Ticking before the broker opens: a first controller sets the cluster
        // id, which the broker should report from its first answer on.
        let ticks = tokio::spawn(controller_ticks(controller));

        let store = Arc::new(QuorumStore {
            quorum: Arc::downgrade(&quorum),
            handle: Handle::current(),
        });
        let image = caught_up_image(&quorum).await;
        let registration = BrokerRegistration {
            node_id,
            host: options.advertised_host.clone(),
            port: options.advertised_port,
            rack: options.rack.clone(),
        };
        let broker = tokio::task::spawn_blocking(move || {
            Broker::open_clustered(options, clock, store, image)
        })
        .await
        .map_err(|e| QuorumError::Raft(e.to_string()))?
        .map_err(|e| QuorumError::Config(format!("opening the broker: {e}")))?;
        broker.set_cluster_link(Arc::new(QuorumLink {
            quorum: Arc::downgrade(&quorum),
        }));
        let fetchers = ReplicaFetchers::new(broker.clone());
        // The image the broker took its roles from; newer ones come through the watcher.
        fetchers.update(&broker.image());

        let tasks = vec![
            tokio::spawn(watch_images(
                quorum.subscribe(),
                broker.clone(),
                fetchers.clone(),
            )),
            tokio::spawn(heartbeats(
                Arc::downgrade(&quorum),
                registration,
                heartbeat_interval,
                session_timeout,
            )),
            ticks,
            tokio::spawn(shrink_isr(broker.clone())),
        ];
        Ok(ClusterNode {
            quorum,
            broker,
            fetchers,
            tasks,
        })
    }

    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }

    pub fn quorum(&self) -> &Arc<MetadataQuorum> {
        &self.quorum
    }

    pub async fn shutdown(&self) {
        for t in &self.tasks {
            t.abort();
        }
        self.fetchers.shutdown();
        self.quorum.clear_handler();
        self.quorum.shutdown().await;
    }
}

/// The metadata image with everything the quorum committed before this call,
/// as a KRaft broker catches up with the metadata log before it serves: a
/// restarted node's own log may stop short of what happened while it was down,
/// and an image from it would make the broker lead partitions that have moved
/// on (answering produce and fetch for them at an old epoch until the newer
/// image arrives). An empty proposal is the read barrier: once this node has
/// applied it, it has applied everything before it. Without a quorum to commit
/// it (this node cannot reach a majority), the local image after the request
/// timeout.
/// A cluster's first start also waits (a few seconds at most) for the first
/// controller to set the cluster id.
async fn caught_up_image(quorum: &Arc<MetadataQuorum>) -> Arc<MetadataImage> {
    let image = match quorum.propose(Vec::new()).await {
        Ok(image) => image,
        Err(e) => {
            tracing::warn!(error = %e, "could not catch up with the metadata quorum; starting from the local metadata log");
            return quorum.image();
        }
    };
    if image.cluster_id.is_some() {
        return image;
    }
    let mut images = quorum.subscribe();
    let with_id =
        tokio::time::timeout(CLUSTER_ID_WAIT, images.wait_for(|i| i.cluster_id.is_some())).await;
    match with_id {
        Ok(Ok(image)) => image.clone(),
        _ => quorum.image(),
    }
}

/// How long a node starting a new cluster waits for its cluster id.
const CLUSTER_ID_WAIT: Duration = Duration::from_secs(5);

/// Applies every image the quorum commits to the broker and its fetchers.
async fn watch_images(
    mut images: watch::Receiver<Arc<MetadataImage>>,
    broker: Arc<Broker>,
    fetchers: Arc<ReplicaFetchers>,
) {
    loop {
        let image = images.borrow_and_update().clone();
        let b = broker.clone();
        let applied = {
            let image = image.clone();
            tokio::task::spawn_blocking(move || b.apply_image(image)).await
        };
        match applied {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "could not apply a metadata image"),
            Err(e) => tracing::error!(error = %e, "applying a metadata image failed"),
        }
        fetchers.update(&image);
        if images.changed().await.is_err() {
            return;
        }
    }
}

/// Tells the active controller this broker is alive (and where it listens).
///
/// Each attempt lasts at most one heartbeat interval and goes to whichever node
/// is the leader by then, and a heartbeat is given up after one session: after
/// a leader change, heartbeats must reach the new controller within the
/// session it gives every broker, not wait on an old leader that is gone.
async fn heartbeats(
    quorum: Weak<MetadataQuorum>,
    registration: BrokerRegistration,
    interval: Duration,
    session: Duration,
) {
    let attempt = interval.max(MIN_HEARTBEAT_ATTEMPT);
    loop {
        let Some(q) = quorum.upgrade() else { return };
        let request = ControllerRequest::Heartbeat {
            node_id: registration.node_id,
            broker_epoch: 0,
            registration: Some(registration.clone()),
        };
        match q.call_leader_within(request, session, attempt).await {
            Ok(ControllerResponse::Rejected { reason }) => {
                tracing::warn!(%reason, "the controller refused a heartbeat")
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "heartbeat not delivered"),
        }
        drop(q);
        tokio::time::sleep(interval).await;
    }
}

async fn controller_ticks(controller: Arc<Controller>) {
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        controller.tick().await;
    }
}

/// Leaders drop followers that stopped keeping up (`replica.lag.time.max.ms`).
async fn shrink_isr(broker: Arc<Broker>) {
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let lag_ms = broker.config().long("replica.lag.time.max.ms");
        let now = broker.now_ms();
        for p in broker.partitions() {
            if let Some(isr) = p.maybe_shrink_isr(now, lag_ms) {
                tracing::info!(partition = %p.tp, ?isr, "shrinking the ISR");
                broker.propose_isr(&p, isr);
            }
        }
    }
}

/// The quorum as the broker's metadata store.
struct QuorumStore {
    quorum: Weak<MetadataQuorum>,
    handle: Handle,
}

impl MetadataStore for QuorumStore {
    fn commit(
        &self,
        records: Vec<MetadataRecord>,
        _current: &MetadataImage,
    ) -> Result<Arc<MetadataImage>, CoreError> {
        let quorum = self.quorum.upgrade().ok_or(CoreError::ShuttingDown)?;
        // Metadata changes are rare (admin requests, producer id blocks): the
        // caller's thread waits for the quorum, the runtime runs on meanwhile.
        let proposed =
            tokio::task::block_in_place(|| self.handle.block_on(quorum.propose(records)));
        proposed.map_err(|e| match e {
            QuorumError::Timeout(_) => CoreError::RequestTimedOut,
            QuorumError::Shutdown => CoreError::ShuttingDown,
            other => CoreError::Storage(format!("metadata quorum: {other}")),
        })
    }
}

/// A quorum error as the broker reports it to a client.
fn quorum_error(e: QuorumError) -> CoreError {
    match e {
        QuorumError::Timeout(_) => CoreError::RequestTimedOut,
        QuorumError::Shutdown => CoreError::ShuttingDown,
        other => CoreError::Storage(format!("metadata quorum: {other}")),
    }
}

/// A voter change's outcome as the broker reports it.
fn voter_change(
    result: Result<(), QuorumError>,
) -> Result<Result<(), ferry_core::cluster::VoterChangeError>, CoreError> {
    match result {
        Ok(()) => Ok(Ok(())),
        Err(QuorumError::Voter(e)) => Ok(Err(e)),
        Err(e) => Err(quorum_error(e)),
    }
}

/// ISR changes, leader elections, reassignments and voter changes go to the
/// active controller (the quorum's leader).
struct QuorumLink {
    quorum: Weak<MetadataQuorum>,
}

impl ClusterLink for QuorumLink {
    fn controller_id(&self) -> Option<i32> {
        let leader = self.quorum.upgrade()?.leader_id()?;
        i32::try_from(leader).ok()
    }

    fn write_txn_markers(
        &self,
        leader: i32,
        producer_id: i64,
        producer_epoch: i16,
        commit: bool,
        partitions: Vec<TopicPartition>,
    ) -> MarkersFuture {
        let addr = self.quorum.upgrade().and_then(|q| {
            q.image()
                .brokers
                .get(&leader)
                .map(|b| format!("{}:{}", b.host, b.port))
        });
        Box::pin(async move {
            let addr = addr.ok_or(CoreError::NotLeaderOrFollower)?;
            crate::markers::write(&addr, producer_id, producer_epoch, commit, partitions).await
        })
    }

    fn elect_leaders(
        &self,
        election_type: i8,
        partitions: Option<Vec<TopicPartition>>,
    ) -> ElectFuture {
        use ferry_core::cluster::{ELECTION_PREFERRED, ELECTION_UNCLEAN};
        let quorum = self.quorum.clone();
        Box::pin(async move {
            if election_type != ELECTION_PREFERRED && election_type != ELECTION_UNCLEAN {
                return Err(CoreError::InvalidRequest(format!(
                    "unknown election type {election_type}"
                )));
            }
            let quorum = quorum.upgrade().ok_or(CoreError::ShuttingDown)?;
            let request = ControllerRequest::ElectLeaders {
                election_type,
                partitions: partitions
                    .map(|ps| ps.into_iter().map(|tp| (tp.topic, tp.partition)).collect()),
            };
            match quorum.call_leader(request).await {
                Ok(ControllerResponse::ElectLeaders { results }) => Ok(results
                    .into_iter()
                    .map(|(topic, partition, r)| (TopicPartition::new(topic, partition), r))
                    .collect()),
                // The election type is checked above: the controller is
                // stopping or could not commit the new leaders.
                Ok(ControllerResponse::Rejected { reason }) => {
                    tracing::warn!(%reason, "the controller did not elect leaders");
                    Err(CoreError::RequestTimedOut)
                }
                Ok(other) => Err(CoreError::Storage(format!(
                    "unexpected answer to a leader election: {other:?}"
                ))),
                Err(QuorumError::Timeout(_)) => Err(CoreError::RequestTimedOut),
                Err(QuorumError::Shutdown) => Err(CoreError::ShuttingDown),
                Err(e) => Err(CoreError::Storage(format!("metadata quorum: {e}"))),
            }
        })
    }

    fn alter_partition_reassignments(
        &self,
        reassignments: Vec<(TopicPartition, Option<Vec<i32>>)>,
    ) -> ReassignFuture {
        let quorum = self.quorum.clone();
        Box::pin(async move {
            let quorum = quorum.upgrade().ok_or(CoreError::ShuttingDown)?;
            let request = ControllerRequest::AlterPartitionReassignments {
                reassignments: reassignments
                    .into_iter()
                    .map(|(tp, target)| (tp.topic, tp.partition, target))
                    .collect(),
            };
            match quorum.call_leader(request).await {
                Ok(ControllerResponse::AlterPartitionReassignments { results }) => Ok(results
                    .into_iter()
                    .map(|(topic, partition, r)| (TopicPartition::new(topic, partition), r))
                    .collect()),
                // The controller is stopping or could not commit.
                Ok(ControllerResponse::Rejected { reason }) => {
                    tracing::warn!(%reason, "the controller did not reassign partitions");
                    Err(CoreError::RequestTimedOut)
                }
                Ok(other) => Err(CoreError::Storage(format!(
                    "unexpected answer to a partition reassignment: {other:?}"
                ))),
                Err(e) => Err(quorum_error(e)),
            }
        })
    }

    fn list_partition_reassignments(
        &self,
        partitions: Option<Vec<TopicPartition>>,
    ) -> ListReassignmentsFuture {
        let quorum = self.quorum.clone();
        Box::pin(async move {
            let quorum = quorum.upgrade().ok_or(CoreError::ShuttingDown)?;
            let request = ControllerRequest::ListPartitionReassignments {
                partitions: partitions
                    .map(|ps| ps.into_iter().map(|tp| (tp.topic, tp.partition)).collect()),
            };
            match quorum.call_leader(request).await {
                Ok(ControllerResponse::ListPartitionReassignments { ongoing }) => Ok(ongoing),
                Ok(ControllerResponse::Rejected { reason }) => {
                    tracing::warn!(%reason, "the controller did not list reassignments");
                    Err(CoreError::RequestTimedOut)
                }
                Ok(other) => Err(CoreError::Storage(format!(
                    "unexpected answer to a reassignment listing: {other:?}"
                ))),
                Err(e) => Err(quorum_error(e)),
            }
        })
    }

    fn describe_quorum(&self) -> DescribeQuorumFuture {
        let quorum = self.quorum.clone();
        Box::pin(async move {
            let quorum = quorum.upgrade().ok_or(CoreError::ShuttingDown)?;
            quorum.describe().await.map_err(quorum_error)
        })
    }

    fn add_voter(&self, node_id: i32, timeout: Duration) -> VoterChangeFuture {
        let quorum = self.quorum.clone();
        Box::pin(async move {
            let quorum = quorum.upgrade().ok_or(CoreError::ShuttingDown)?;
            let Ok(id) = u64::try_from(node_id) else {
                return Ok(Err(ferry_core::cluster::VoterChangeError::TimedOut(
                    format!("node {node_id} is not a learner of the metadata quorum"),
                )));
            };
            voter_change(quorum.add_voter(id, timeout).await)
        })
    }

    fn remove_voter(&self, node_id: i32) -> VoterChangeFuture {
        let quorum = self.quorum.clone();
        Box::pin(async move {
            let quorum = quorum.upgrade().ok_or(CoreError::ShuttingDown)?;
            let Ok(id) = u64::try_from(node_id) else {
                return Ok(Err(ferry_core::cluster::VoterChangeError::VoterNotFound(
                    format!("node {node_id} is not a voter"),
                )));
            };
            voter_change(quorum.remove_voter(id).await)
        })
    }

    fn unregister_broker(&self, node_id: i32) -> UnregisterFuture {
        let quorum = self.quorum.clone();
        Box::pin(async move {
            let quorum = quorum.upgrade().ok_or(CoreError::ShuttingDown)?;
            let request = ControllerRequest::UnregisterBroker { node_id };
            match quorum.call_leader(request).await {
                Ok(ControllerResponse::UnregisterBroker { result }) => Ok(result),
                // The controller is stopping or could not commit.
                Ok(ControllerResponse::Rejected { reason }) => {
                    tracing::warn!(%reason, node_id, "the controller did not unregister a broker");
                    Err(CoreError::RequestTimedOut)
                }
                Ok(other) => Err(CoreError::Storage(format!(
                    "unexpected answer to a broker unregistration: {other:?}"
                ))),
                Err(e) => Err(quorum_error(e)),
            }
        })
    }

    fn alter_isr(
        &self,
        partition: Arc<Partition>,
        leader_epoch: i32,
        partition_epoch: i32,
        isr: Vec<i32>,
    ) {
        let based_on = partition_epoch;
        let Some(quorum) = self.quorum.upgrade() else {
            partition.abort_isr_change_based_on(based_on);
            return;
        };
        tokio::spawn(async move {
            let request = ControllerRequest::AlterPartition {
                topic_id: partition.topic_id,
                partition: partition.tp.partition,
                leader_epoch,
                partition_epoch: Some(based_on),
                new_isr: isr,
            };
            // A confirmed change arrives with the metadata image too. A refused
            // one is dropped: the next fetch or shrink check proposes again from
            // the state this leader has then (after a stale partition epoch, the
            // image that moved it on is committed and on its way).
            match quorum.call_leader(request).await {
                // The confirmation; the image that carries it (if the ISR changed)
                // says the same.
                Ok(ControllerResponse::AlterPartition {
                    leader_epoch,
                    isr,
                    partition_epoch,
                }) => {
                    if let Err(e) =
                        partition.confirm_isr_change(based_on, leader_epoch, partition_epoch, isr)
                    {
                        tracing::debug!(error = %e, partition = %partition.tp, "an ISR confirmation for an epoch that moved on");
                        partition.abort_isr_change_based_on(based_on);
                    }
                }
                Ok(ControllerResponse::Rejected { reason }) => {
                    tracing::info!(%reason, partition = %partition.tp, "the controller refused an ISR change");
                    partition.abort_isr_change_based_on(based_on);
                }
                Ok(other) => {
                    tracing::warn!(?other, partition = %partition.tp, "unexpected answer to an ISR change");
                    partition.abort_isr_change_based_on(based_on);
                }
                Err(e) => {
                    tracing::warn!(error = %e, partition = %partition.tp, "could not send an ISR change");
                    partition.abort_isr_change_based_on(based_on);
                }
            }
        });
    }
}
