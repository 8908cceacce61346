//! A client of a whole cluster: bootstrap, a metadata cache, one connection per
//! broker, and routing of requests to partition leaders and group coordinators.
//!
//! ```text
//!  Client ── bootstrap addresses ─► first reachable broker ─► Metadata
//!    ├── metadata: brokers, controller, topics → partitions → leader
//!    ├── connections: node id → Connection (opened on first use, reopened if closed)
//!    └── send_to(node) / send_to_leader(topic, partition) / coordinator(group)
//! ```

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    FindCoordinatorRequest, FindCoordinatorResponse, MetadataRequest, MetadataResponse, TopicName,
};
use kafka_protocol::protocol::{Request, StrBytes};
use kafka_protocol::ResponseError;

use crate::connection::{Connection, ConnectionConfig};
use crate::error::{ClientError, Result};

/// How to reach a cluster.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// HOST:PORT of one or more brokers.
    pub bootstrap: Vec<String>,
    pub connection: ConnectionConfig,
    /// Retries of a retriable error (leader moved, coordinator loading).
    pub retries_max: u32,
    pub retry_backoff: Duration,
}

impl ClientConfig {
    pub fn new(bootstrap: impl IntoIterator<Item = impl Into<String>>) -> ClientConfig {
        ClientConfig {
            bootstrap: bootstrap.into_iter().map(Into::into).collect(),
            connection: ConnectionConfig::default(),
            retries_max: 10,
            retry_backoff: Duration::from_millis(200),
        }
    }
}

/// A broker as Metadata describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerInfo {
    pub node_id: i32,
    pub host: String,
    pub port: i32,
    pub rack: Option<String>,
}

impl BrokerInfo {
    pub fn addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionInfo {
    pub partition: i32,
    /// -1: no leader.
    pub leader: i32,
    pub leader_epoch: i32,
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
    pub offline_replicas: Vec<i32>,
    pub error_code: i16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    pub name: String,
    /// The topic id as text (all zeros when the broker has none).
    pub topic_id: String,
    pub is_internal: bool,
    pub error_code: i16,
    /// Sorted by partition index.
    pub partitions: Vec<PartitionInfo>,
}

/// What the client knows of the cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterMetadata {
    pub cluster_id: Option<String>,
    pub controller_id: i32,
    pub brokers: BTreeMap<i32, BrokerInfo>,
    pub topics: BTreeMap<String, TopicInfo>,
}

impl ClusterMetadata {
    /// Reads a Metadata response.
    pub fn from_response(resp: &MetadataResponse) -> ClusterMetadata {
        let brokers = resp
            .brokers
            .iter()
            .map(|b| {
                let info = BrokerInfo {
                    node_id: b.node_id.0,
                    host: b.host.as_str().to_string(),
                    port: b.port,
                    rack: b.rack.as_ref().map(|r| r.as_str().to_string()),
                };
                (info.node_id, info)
            })
            .collect();
        let mut topics = BTreeMap::new();
        for t in &resp.topics {
            let Some(name) = t.name.as_ref().map(|n| n.0.as_str().to_string()) else {
                continue;
            };
            let mut partitions: Vec<PartitionInfo> = t
                .partitions
                .iter()
                .map(|p| PartitionInfo {
                    partition: p.partition_index,
                    leader: p.leader_id.0,
                    leader_epoch: p.leader_epoch,
                    replicas: p.replica_nodes.iter().map(|b| b.0).collect(),
                    isr: p.isr_nodes.iter().map(|b| b.0).collect(),
                    offline_replicas: p.offline_replicas.iter().map(|b| b.0).collect(),
                    error_code: p.error_code,
                })
                .collect();
            partitions.sort_by_key(|p| p.partition);
            topics.insert(
                name.clone(),
                TopicInfo {
                    name,
                    topic_id: t.topic_id.to_string(),
                    is_internal: t.is_internal,
                    error_code: t.error_code,
                    partitions,
                },
            );
        }
        ClusterMetadata {
            cluster_id: resp.cluster_id.as_ref().map(|c| c.as_str().to_string()),
            controller_id: resp.controller_id.0,
            brokers,
            topics,
        }
    }

    /// The leader of a partition, if the metadata names one.
    pub fn leader(&self, topic: &str, partition: i32) -> Result<i32> {
        let t = self
            .topics
            .get(topic)
            .ok_or_else(|| ClientError::UnknownTopic(topic.to_string()))?;
        let p = t
            .partitions
            .iter()
            .find(|p| p.partition == partition)
            .ok_or_else(|| ClientError::UnknownPartition {
                topic: topic.to_string(),
                partition,
            })?;
        if p.leader < 0 {
            return Err(ClientError::NoLeader {
                topic: topic.to_string(),
                partition,
            });
        }
        Ok(p.leader)
    }
}

/// A Kafka client for a cluster. Share it behind an `Arc`.
pub struct Client {
    config: ClientConfig,
    metadata: RwLock<Arc<ClusterMetadata>>,
    connections: tokio::sync::Mutex<HashMap<i32, Arc<Connection>>>,
    /// The connection made to a bootstrap address, used until brokers are known.
    bootstrap: tokio::sync::Mutex<Option<Arc<Connection>>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("bootstrap", &self.config.bootstrap)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects to the first reachable bootstrap broker and loads the broker list.
    pub async fn connect(config: ClientConfig) -> Result<Client> {
        let client = Client {
            config,
            metadata: RwLock::new(Arc::new(ClusterMetadata::default())),
            connections: tokio::sync::Mutex::new(HashMap::new()),
            bootstrap: tokio::sync::Mutex::new(None),
        };
        client.refresh_metadata(Some(&[])).await?;
        Ok(client)
    }

    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// The cached metadata.
    pub fn metadata(&self) -> Arc<ClusterMetadata> {
        self.metadata.read().map(|m| m.clone()).unwrap_or_default()
    }

    /// Asks for the metadata of `topics` (`None`: every topic; `Some(&[])`: brokers
    /// only) and merges it into the cache. Returns the fresh response's view.
    pub async fn refresh_metadata(&self, topics: Option<&[&str]>) -> Result<ClusterMetadata> {
        let req = MetadataRequest::default()
            .with_topics(topics.map(|ts| {
                ts.iter()
                    .map(|t| {
                        MetadataRequestTopic::default()
                            .with_name(Some(TopicName(StrBytes::from_string(t.to_string()))))
                    })
                    .collect()
            }))
            .with_allow_auto_topic_creation(false);
        let conn = self.any_connection().await?;
        let resp = conn.send(&req).await?;
        let fresh = ClusterMetadata::from_response(&resp);
        if let Ok(mut cached) = self.metadata.write() {
            let mut merged = (**cached).clone();
            merged.cluster_id = fresh.cluster_id.clone();
            merged.controller_id = fresh.controller_id;
            merged.brokers = fresh.brokers.clone();
            match topics {
                None => merged.topics = fresh.topics.clone(),
                Some(names) => {
                    for name in names {
                        merged.topics.remove(*name);
                    }
                    for (name, t) in &fresh.topics {
                        if t.error_code == 0 {
                            merged.topics.insert(name.clone(), t.clone());
                        }
                    }
                }
            }
            *cached = Arc::new(merged);
        }
        Ok(fresh)
    }

    /// A live connection to any broker: a known broker, else a bootstrap address.
    pub async fn any_connection(&self) -> Result<Arc<Connection>> {
        if let Some(c) = self.bootstrap.lock().await.as_ref() {
            if !c.is_closed() {
                return Ok(c.clone());
            }
        }
        let metadata = self.metadata();
        for node in metadata.brokers.keys() {
            if let Ok(c) = self.connection(*node).await {
                return Ok(c);
            }
        }
        let mut failures = Vec::new();
        for addr in &self.config.bootstrap {
            match Connection::connect(addr, self.config.connection.clone()).await {
                Ok(c) => {
                    let c = Arc::new(c);
                    *self.bootstrap.lock().await = Some(c.clone());
                    return Ok(c);
                }
                Err(e) => {
                    tracing::debug!(%addr, error = %e, "bootstrap broker unreachable");
                    failures.push(format!("{addr}: {e}"));
                }
            }
        }
        Err(ClientError::NoBrokerReachable(if failures.is_empty() {
            "no bootstrap address".to_string()
        } else {
            failures.join("; ")
        }))
    }

    /// The connection to broker `node_id`, opened on first use.
    pub async fn connection(&self, node_id: i32) -> Result<Arc<Connection>> {
        let mut conns = self.connections.lock().await;
        if let Some(c) = conns.get(&node_id) {
            if !c.is_closed() {
                return Ok(c.clone());
            }
        }
        let broker = self
            .metadata()
            .brokers
            .get(&node_id)
            .cloned()
            .ok_or(ClientError::UnknownBroker(node_id))?;
        let conn =
            Arc::new(Connection::connect(&broker.addr(), self.config.connection.clone()).await?);
        conns.insert(node_id, conn.clone());
        Ok(conn)
    }

    /// Sends `req` to broker `node_id`.
    pub async fn send_to<R: Request>(&self, node_id: i32, req: &R) -> Result<R::Response> {
        self.connection(node_id).await?.send(req).await
    }

    /// The leader of a partition, refreshing the topic's metadata when the cache
    /// does not know it.
    pub async fn leader(&self, topic: &str, partition: i32) -> Result<i32> {
        match self.metadata().leader(topic, partition) {
            Ok(l) => Ok(l),
            Err(_) => {
                self.refresh_metadata(Some(&[topic])).await?;
                self.metadata().leader(topic, partition)
            }
        }
    }

    /// The metadata of one topic, from the cache or the cluster.
    pub async fn topic(&self, topic: &str) -> Result<TopicInfo> {
        if let Some(t) = self.metadata().topics.get(topic) {
            return Ok(t.clone());
        }
        let fresh = self.refresh_metadata(Some(&[topic])).await?;
        let t = fresh
            .topics
            .get(topic)
            .cloned()
            .ok_or_else(|| ClientError::UnknownTopic(topic.to_string()))?;
        if t.error_code == ResponseError::UnknownTopicOrPartition.code() {
            return Err(ClientError::UnknownTopic(topic.to_string()));
        }
        ClientError::check(t.error_code, || format!("metadata of topic {topic}"))?;
        Ok(t)
    }

    /// The coordinator of a consumer group (key type 0) or a transactional id
    /// (key type 1), retrying while the coordinator is not yet available.
    pub async fn find_coordinator(&self, key: &str, key_type: i8) -> Result<i32> {
        let mut attempt = 0;
        loop {
            match self.find_coordinator_once(key, key_type).await {
                Err(e) if e.is_retriable() && attempt < self.config.retries_max => {
                    attempt += 1;
                    tokio::time::sleep(self.config.retry_backoff).await;
                }
                other => return other,
            }
        }
    }

    async fn find_coordinator_once(&self, key: &str, key_type: i8) -> Result<i32> {
        let conn = self.any_connection().await?;
        let version = conn.version_for::<FindCoordinatorRequest>(None)?;
        let key_bytes = StrBytes::from_string(key.to_string());
        let mut req = FindCoordinatorRequest::default();
        if version >= 1 {
            req = req.with_key_type(key_type);
        }
        req = if version >= 4 {
            req.with_coordinator_keys(vec![key_bytes])
        } else {
            req.with_key(key_bytes)
        };
        let resp: FindCoordinatorResponse = conn.send_version(&req, version).await?;
        let (code, node, host, port) = if version >= 4 {
            let c = resp.coordinators.first().ok_or_else(|| {
                ClientError::Protocol("FindCoordinator answered no coordinator".into())
            })?;
            (
                c.error_code,
                c.node_id.0,
                c.host.as_str().to_string(),
                c.port,
            )
        } else {
            (
                resp.error_code,
                resp.node_id.0,
                resp.host.as_str().to_string(),
                resp.port,
            )
        };
        ClientError::check(code, || format!("finding the coordinator of {key}"))?;
        // The coordinator may be a broker the cached metadata does not list yet.
        if !self.metadata().brokers.contains_key(&node) {
            if let Ok(mut cached) = self.metadata.write() {
                let mut m = (**cached).clone();
                m.brokers.insert(
                    node,
                    BrokerInfo {
                        node_id: node,
                        host,
                        port,
                        rack: None,
                    },
                );
                *cached = Arc::new(m);
            }
        }
        Ok(node)
    }

    /// Every known broker's id (after the last metadata refresh).
    pub fn broker_ids(&self) -> Vec<i32> {
        self.metadata().brokers.keys().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::metadata_response::{
        MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
    };
    use kafka_protocol::messages::BrokerId;

    #[test]
    fn metadata_maps_partitions_to_leaders() {
        let resp = MetadataResponse::default()
            .with_controller_id(BrokerId(1))
            .with_brokers(vec![MetadataResponseBroker::default()
                .with_node_id(BrokerId(1))
                .with_host(StrBytes::from_static_str("127.0.0.1"))
                .with_port(9092)])
            .with_topics(vec![MetadataResponseTopic::default()
                .with_name(Some(TopicName(StrBytes::from_static_str("t"))))
                .with_partitions(vec![
                    MetadataResponsePartition::default()
                        .with_partition_index(1)
                        .with_leader_id(BrokerId(-1)),
                    MetadataResponsePartition::default()
                        .with_partition_index(0)
                        .with_leader_id(BrokerId(1)),
                ])]);
        let m = ClusterMetadata::from_response(&resp);
        assert_eq!(m.brokers[&1].addr(), "127.0.0.1:9092");
        assert_eq!(m.topics["t"].partitions[0].partition, 0);
        assert_eq!(m.leader("t", 0).expect("leader"), 1);
        assert!(matches!(
            m.leader("t", 1),
            Err(ClientError::NoLeader { .. })
        ));
        assert!(matches!(
            m.leader("t", 7),
            Err(ClientError::UnknownPartition { .. })
        ));
        assert!(matches!(
            m.leader("u", 0),
            Err(ClientError::UnknownTopic(_))
        ));
    }

    #[test]
    fn ipv6_hosts_are_bracketed() {
        let b = BrokerInfo {
            node_id: 1,
            host: "::1".into(),
            port: 9092,
            rack: None,
        };
        assert_eq!(b.addr(), "[::1]:9092");
    }
}
