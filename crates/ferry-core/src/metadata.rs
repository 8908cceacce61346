//! Cluster metadata as a log of records applied to an immutable image.
//!
//! ```text
//!  admin call ──► MetadataRecord ──► MetadataLog (append + fsync) ──► MetadataImage::apply
//!                                                                        │
//!                              readers share an Arc<MetadataImage> ◄─────┘
//! ```
//!
//! On a single node the log is a local file (`__cluster_metadata-0/metadata.log`,
//! one JSON record per line behind its CRC-32C); a cluster replaces the file with a
//! replicated log and keeps the records and the image as they are.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// One change to the cluster's metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum MetadataRecord {
    /// A broker joined (on one node: itself, at every start).
    BrokerRegistered {
        node_id: i32,
        host: String,
        port: i32,
        rack: Option<String>,
    },
    TopicCreated {
        name: String,
        topic_id: Uuid,
        configs: BTreeMap<String, String>,
    },
    PartitionCreated {
        topic_id: Uuid,
        partition: i32,
        replicas: Vec<i32>,
        isr: Vec<i32>,
        leader: i32,
        leader_epoch: i32,
    },
    /// `value: None` removes the override.
    TopicConfigChanged {
        topic_id: Uuid,
        name: String,
        value: Option<String>,
    },
    /// A dynamic broker setting: for one broker (`node_id`, Kafka's resource
    /// named "N") or, with no `node_id`, the cluster-wide default (resource "").
    /// `value: None` removes it. Records written before per-broker settings
    /// existed have no `node_id` and keep meaning the cluster default.
    BrokerConfigChanged {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        node_id: Option<i32>,
        name: String,
        value: Option<String>,
    },
    TopicDeleted {
        topic_id: Uuid,
    },
    /// Producer ids below `end` are handed out (or reserved) and never given again.
    ProducerIdsAllocated {
        end: i64,
    },
    /// The controller stopped hearing from a broker: it leads nothing and is left
    /// out of new placements until it is unfenced.
    BrokerFenced {
        node_id: i32,
    },
    /// A fenced broker is heard from again.
    BrokerUnfenced {
        node_id: i32,
    },
    /// A new leader or in-sync replica set (a new leader comes with a new epoch).
    PartitionChanged {
        topic_id: Uuid,
        partition: i32,
        leader: i32,
        isr: Vec<i32>,
        leader_epoch: i32,
    },
    /// A reassignment starts or is replaced (Kafka's AlterPartitionReassignments):
    /// `replicas` is the target followed by the replicas it drops, so the added
    /// ones open and catch up while the removed ones still serve.
    PartitionReassignment {
        topic_id: Uuid,
        partition: i32,
        replicas: Vec<i32>,
        adding: Vec<i32>,
        removing: Vec<i32>,
    },
    /// A reassignment ends, completed or cancelled: the final replicas, and the
    /// ISR and leader that go with them (a new leader comes with a new epoch).
    PartitionReassigned {
        topic_id: Uuid,
        partition: i32,
        replicas: Vec<i32>,
        isr: Vec<i32>,
        leader: i32,
        leader_epoch: i32,
    },
    /// An admin removed a broker (Kafka's UnregisterBroker): it leaves the
    /// registered brokers, fenced or not. Partitions that still list it as a
    /// replica keep it there, as in Kafka; the controller took it out of every
    /// ISR it could in the same entry. A broker still running registers again
    /// with its next heartbeat.
    BrokerUnregistered {
        node_id: i32,
    },
    /// The cluster's id, which every node reports to clients and keeps in its
    /// `meta.properties`: proposed once by the first active controller (its
    /// own id); the first one committed wins.
    ClusterIdSet {
        cluster_id: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct PartitionMetadata {
    pub partition: i32,
    /// During a reassignment: the target replicas, then those being removed.
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
    pub leader: i32,
    pub leader_epoch: i32,
    /// Kafka's partition epoch (KIP-497): one more with every record that changed
    /// this partition's leader, ISR or replicas, counted by the image itself, so
    /// every node derives the same number from the same log. A leader's ISR change
    /// names the epoch it was based on and the controller refuses a stale one.
    pub partition_epoch: i32,
    /// Replicas a reassignment in progress adds (empty when none is).
    pub adding_replicas: Vec<i32>,
    /// Replicas a reassignment in progress removes (empty when none is).
    pub removing_replicas: Vec<i32>,
}

impl PartitionMetadata {
    pub fn is_reassigning(&self) -> bool {
        !self.adding_replicas.is_empty() || !self.removing_replicas.is_empty()
    }

    /// The replicas a reassignment in progress ends with (all of them when
    /// none is in progress), in assignment order.
    pub fn target_replicas(&self) -> Vec<i32> {
        self.replicas
            .iter()
            .copied()
            .filter(|r| !self.removing_replicas.contains(r))
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TopicMetadata {
    pub name: String,
    pub topic_id: Uuid,
    pub configs: BTreeMap<String, String>,
    pub partitions: Vec<PartitionMetadata>,
}

impl TopicMetadata {
    pub fn is_internal(&self) -> bool {
        self.name.starts_with("__")
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct BrokerMetadata {
    pub node_id: i32,
    pub host: String,
    pub port: i32,
    pub rack: Option<String>,
}

/// The metadata at one point of the log. Cheap to share, never mutated in place.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetadataImage {
    pub brokers: BTreeMap<i32, BrokerMetadata>,
    pub topics: BTreeMap<String, TopicMetadata>,
    pub topic_names: BTreeMap<Uuid, String>,
    /// Dynamic broker settings for every broker (the cluster-wide default).
    pub broker_configs: BTreeMap<String, String>,
    /// Dynamic broker settings for one broker each, over the cluster default.
    pub node_broker_configs: BTreeMap<i32, BTreeMap<String, String>>,
    /// Registered brokers the controller has fenced.
    pub fenced_brokers: std::collections::BTreeSet<i32>,
    /// End of the last reserved block of producer ids.
    pub producer_ids_end: i64,
    /// The cluster id the quorum agreed on (never set on a single node, whose
    /// id is its data directory's).
    pub cluster_id: Option<String>,
    /// Records applied so far.
    pub offset: u64,
}

impl MetadataImage {
    pub fn topic(&self, name: &str) -> Option<&TopicMetadata> {
        self.topics.get(name)
    }

    pub fn topic_by_id(&self, id: &Uuid) -> Option<&TopicMetadata> {
        self.topic_names.get(id).and_then(|n| self.topics.get(n))
    }

    /// The dynamic settings set for `node_id` alone (empty when none).
    pub fn node_configs(&self, node_id: i32) -> &BTreeMap<String, String> {
        static EMPTY: BTreeMap<String, String> = BTreeMap::new();
        self.node_broker_configs.get(&node_id).unwrap_or(&EMPTY)
    }

    /// Registered brokers that are not fenced, in node id order.
    pub fn live_brokers(&self) -> impl Iterator<Item = &BrokerMetadata> {
        self.brokers
            .values()
            .filter(|b| !self.fenced_brokers.contains(&b.node_id))
    }

    fn partition_mut(&mut self, topic_id: &Uuid, partition: i32) -> Option<&mut PartitionMetadata> {
        let name = self.topic_names.get(topic_id)?;
        self.topics
            .get_mut(name)?
            .partitions
            .iter_mut()
            .find(|p| p.partition == partition)
    }

    /// Applies one record. Records that name an unknown topic are ignored: they can
    /// only come from a log whose earlier records were lost, and the image must
    /// still load.
    pub fn apply(&mut self, record: &MetadataRecord) {
        self.offset += 1;
        match record {
            MetadataRecord::BrokerRegistered {
                node_id,
                host,
                port,
                rack,
            } => {
                self.fenced_brokers.remove(node_id);
                self.brokers.insert(
                    *node_id,
                    BrokerMetadata {
                        node_id: *node_id,
                        host: host.clone(),
                        port: *port,
                        rack: rack.clone(),
                    },
                );
            }
            MetadataRecord::TopicCreated {
                name,
                topic_id,
                configs,
            } => {
                // Two nodes may create the same name at once (an auto-creation
                // racing an explicit one): the first committed wins everywhere.
                if self.topics.contains_key(name) || self.topic_names.contains_key(topic_id) {
                    return;
                }
                self.topic_names.insert(*topic_id, name.clone());
                self.topics.insert(
                    name.clone(),
                    TopicMetadata {
                        name: name.clone(),
                        topic_id: *topic_id,
                        configs: configs.clone(),
                        partitions: Vec::new(),
                    },
                );
            }
            MetadataRecord::PartitionCreated {
                topic_id,
                partition,
                replicas,
                isr,
                leader,
                leader_epoch,
            } => {
                if let Some(topic) = self
                    .topic_names
                    .get(topic_id)
                    .and_then(|n| self.topics.get_mut(n))
                {
                    let p = PartitionMetadata {
                        partition: *partition,
                        replicas: replicas.clone(),
                        isr: isr.clone(),
                        leader: *leader,
                        leader_epoch: *leader_epoch,
                        partition_epoch: 0,
                        adding_replicas: Vec::new(),
                        removing_replicas: Vec::new(),
                    };
                    match topic
                        .partitions
                        .iter_mut()
                        .find(|x| x.partition == *partition)
                    {
                        // A partition is created once; later changes are PartitionChanged.
                        Some(_) => {}
                        None => {
                            topic.partitions.push(p);
                            topic.partitions.sort_by_key(|x| x.partition);
                        }
                    }
                }
            }
            MetadataRecord::TopicConfigChanged {
                topic_id,
                name,
                value,
            } => {
                if let Some(topic) = self
                    .topic_names
                    .get(topic_id)
                    .and_then(|n| self.topics.get_mut(n))
                {
                    match value {
                        Some(v) => topic.configs.insert(name.clone(), v.clone()),
                        None => topic.configs.remove(name),
                    };
                }
            }
            MetadataRecord::BrokerConfigChanged {
                node_id: None,
                name,
                value,
            } => {
                match value {
                    Some(v) => self.broker_configs.insert(name.clone(), v.clone()),
                    None => self.broker_configs.remove(name),
                };
            }
            MetadataRecord::BrokerConfigChanged {
                node_id: Some(node),
                name,
                value,
            } => match value {
                Some(v) => {
                    self.node_broker_configs
                        .entry(*node)
                        .or_default()
                        .insert(name.clone(), v.clone());
                }
                None => {
                    if let Some(configs) = self.node_broker_configs.get_mut(node) {
                        configs.remove(name);
                        if configs.is_empty() {
                            self.node_broker_configs.remove(node);
                        }
                    }
                }
            },
            MetadataRecord::ProducerIdsAllocated { end } => {
                self.producer_ids_end = self.producer_ids_end.max(*end);
            }
            MetadataRecord::TopicDeleted { topic_id } => {
                if let Some(name) = self.topic_names.remove(topic_id) {
                    self.topics.remove(&name);
                }
            }
            MetadataRecord::BrokerFenced { node_id } => {
                self.fenced_brokers.insert(*node_id);
            }
            MetadataRecord::BrokerUnfenced { node_id } => {
                self.fenced_brokers.remove(node_id);
            }
            MetadataRecord::BrokerUnregistered { node_id } => {
                self.brokers.remove(node_id);
                self.fenced_brokers.remove(node_id);
            }
            MetadataRecord::ClusterIdSet { cluster_id } => {
                // Two controllers in a row may both propose one: the first stays.
                if self.cluster_id.is_none() {
                    self.cluster_id = Some(cluster_id.clone());
                }
            }
            MetadataRecord::PartitionChanged {
                topic_id,
                partition,
                leader,
                isr,
                leader_epoch,
            } => {
                // Leader epochs only go forward: a change decided on an older
                // image (by a controller since deposed) is ignored, the same
                // way on every node.
                if let Some(p) = self
                    .partition_mut(topic_id, *partition)
                    .filter(|p| *leader_epoch >= p.leader_epoch)
                {
                    p.leader = *leader;
                    p.isr = isr.clone();
                    p.leader_epoch = *leader_epoch;
                    p.partition_epoch = p.partition_epoch.wrapping_add(1);
                }
            }
            MetadataRecord::PartitionReassignment {
                topic_id,
                partition,
                replicas,
                adding,
                removing,
            } => {
                if let Some(p) = self.partition_mut(topic_id, *partition) {
                    p.replicas = replicas.clone();
                    p.adding_replicas = adding.clone();
                    p.removing_replicas = removing.clone();
                    p.partition_epoch = p.partition_epoch.wrapping_add(1);
                }
            }
            MetadataRecord::PartitionReassigned {
                topic_id,
                partition,
                replicas,
                isr,
                leader,
                leader_epoch,
            } => {
                if let Some(p) = self
                    .partition_mut(topic_id, *partition)
                    .filter(|p| *leader_epoch >= p.leader_epoch)
                {
                    p.replicas = replicas.clone();
                    p.isr = isr.clone();
                    p.leader = *leader;
                    p.leader_epoch = *leader_epoch;
                    p.adding_replicas.clear();
                    p.removing_replicas.clear();
                    p.partition_epoch = p.partition_epoch.wrapping_add(1);
                }
            }
        }
    }
}

/// Errors of the metadata log.
#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    #[error("metadata log I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("metadata record encoding: {0}")]
    Encode(#[from] serde_json::Error),
}

/// The local metadata log: an append-only file of `crc32c-hex json\n` lines.
///
/// To ensure correctness an implementation must: make a record durable before
/// `append` returns (the caller reports success to a client next), and on `open`
/// return exactly the records that were durably appended, in order, dropping a torn
/// or corrupt tail.
pub struct MetadataLog {
    path: PathBuf,
    file: File,
}

impl MetadataLog {
    /// Opens the log in `dir`, returning it and the records it holds.
    pub fn open(dir: &Path) -> Result<(MetadataLog, Vec<MetadataRecord>), MetadataError> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("metadata.log");
        let mut records = Vec::new();
        let mut valid_len: u64 = 0;
        if path.exists() {
            let reader = BufReader::new(File::open(&path)?);
            for line in reader.split(b'\n') {
                let line = line?;
                match decode_line(&line) {
                    Some(record) => {
                        valid_len += line.len() as u64 + 1;
                        records.push(record);
                    }
                    None => {
                        tracing::warn!(path = %path.display(), offset = valid_len, "dropping a torn or corrupt metadata log tail");
                        break;
                    }
                }
            }
        }
        let file = OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(false)
            .open(&path)?;
        if file.metadata()?.len() != valid_len {
            file.set_len(valid_len)?;
            file.sync_all()?;
        }
        let mut file = file;
        use std::io::Seek;
        file.seek(std::io::SeekFrom::End(0))?;
        Ok((MetadataLog { path, file }, records))
    }

    /// Appends records durably (one write, one fsync).
    pub fn append(&mut self, records: &[MetadataRecord]) -> Result<(), MetadataError> {
        let mut buf = Vec::new();
        for record in records {
            let json = serde_json::to_vec(record)?;
            buf.extend_from_slice(format!("{:08x} ", crc32c::crc32c(&json)).as_bytes());
            buf.extend_from_slice(&json);
            buf.push(b'\n');
        }
        let len = self.file.metadata()?.len();
        if let Err(e) = self
            .file
            .write_all(&buf)
            .and_then(|_| self.file.sync_data())
        {
            // A full disk leaves part of a line: cut it off, or every record appended
            // after it would sit behind a torn line and be dropped at the next open.
            use std::io::Seek;
            let _ = self.file.set_len(len);
            let _ = self.file.seek(std::io::SeekFrom::Start(len));
            return Err(e.into());
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Reads a metadata log without changing it (for `ferry log verify`): the number of
/// valid records and, if the file does not end after them, the byte position of the
/// first line that is torn or fails its CRC.
pub fn check_log_file(path: &Path) -> std::io::Result<(usize, Option<u64>)> {
    let reader = BufReader::new(File::open(path)?);
    let (mut records, mut valid_len) = (0usize, 0u64);
    for line in reader.split(b'\n') {
        let line = line?;
        if decode_line(&line).is_none() {
            return Ok((records, Some(valid_len)));
        }
        records += 1;
        valid_len += line.len() as u64 + 1;
    }
    let len = std::fs::metadata(path)?.len();
    Ok((records, (len != valid_len).then_some(valid_len)))
}

fn decode_line(line: &[u8]) -> Option<MetadataRecord> {
    let (crc_hex, json) = (line.get(..8)?, line.get(9..)?);
    let crc = u32::from_str_radix(std::str::from_utf8(crc_hex).ok()?, 16).ok()?;
    if crc32c::crc32c(json) != crc {
        return None;
    }
    serde_json::from_slice(json).ok()
}

/// Shared handle to the current image.
pub type SharedImage = Arc<MetadataImage>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_creation_of_a_name_wins_when_two_race() {
        let mut image = MetadataImage::default();
        let (first, second) = (Uuid::new_v4(), Uuid::new_v4());
        for (id, partitions) in [(first, 3), (second, 1)] {
            image.apply(&MetadataRecord::TopicCreated {
                name: "race".into(),
                topic_id: id,
                configs: BTreeMap::new(),
            });
            for p in 0..partitions {
                image.apply(&MetadataRecord::PartitionCreated {
                    topic_id: id,
                    partition: p,
                    replicas: vec![1],
                    isr: vec![1],
                    leader: 1,
                    leader_epoch: 0,
                });
            }
        }
        let topic = image.topic("race").expect("topic");
        assert_eq!((topic.topic_id, topic.partitions.len()), (first, 3));
        assert!(image.topic_by_id(&second).is_none());
        assert_eq!(image.offset, 6, "every record counts, applied or not");
    }

    #[test]
    fn a_partition_change_from_an_older_leader_epoch_is_ignored() {
        let mut image = MetadataImage::default();
        let id = Uuid::new_v4();
        image.apply(&MetadataRecord::TopicCreated {
            name: "t".into(),
            topic_id: id,
            configs: BTreeMap::new(),
        });
        image.apply(&MetadataRecord::PartitionCreated {
            topic_id: id,
            partition: 0,
            replicas: vec![1, 2, 3],
            isr: vec![1, 2, 3],
            leader: 1,
            leader_epoch: 0,
        });
        let change =
            |leader: i32, isr: Vec<i32>, leader_epoch: i32| MetadataRecord::PartitionChanged {
                topic_id: id,
                partition: 0,
                leader,
                isr,
                leader_epoch,
            };
        let state = |image: &MetadataImage| {
            let p = &image.topic("t").expect("topic").partitions[0];
            (p.leader, p.isr.clone(), p.leader_epoch)
        };
        image.apply(&change(2, vec![2, 3], 4));
        // An ISR change at the same epoch applies; one from an older epoch (a
        // deposed controller's stale decision) does not, nor a reassignment's.
        image.apply(&change(2, vec![2, 3, 1], 4));
        image.apply(&change(1, vec![1], 1));
        image.apply(&MetadataRecord::PartitionReassigned {
            topic_id: id,
            partition: 0,
            replicas: vec![1],
            isr: vec![1],
            leader: 1,
            leader_epoch: 3,
        });
        assert_eq!(state(&image), (2, vec![2, 3, 1], 4));
        image.apply(&change(3, vec![3, 1], 5));
        assert_eq!(state(&image), (3, vec![3, 1], 5));
    }

    #[test]
    fn the_partition_epoch_counts_every_applied_change_of_the_partition() {
        let mut image = MetadataImage::default();
        let id = Uuid::new_v4();
        image.apply(&MetadataRecord::TopicCreated {
            name: "t".into(),
            topic_id: id,
            configs: BTreeMap::new(),
        });
        image.apply(&MetadataRecord::PartitionCreated {
            topic_id: id,
            partition: 0,
            replicas: vec![1, 2, 3],
            isr: vec![1, 2, 3],
            leader: 1,
            leader_epoch: 0,
        });
        let epoch =
            |image: &MetadataImage| image.topic("t").expect("topic").partitions[0].partition_epoch;
        assert_eq!(epoch(&image), 0);
        let change = |isr: Vec<i32>, leader_epoch: i32| MetadataRecord::PartitionChanged {
            topic_id: id,
            partition: 0,
            leader: 1,
            isr,
            leader_epoch,
        };
        // An ISR change without a new leader epoch still moves the partition epoch.
        image.apply(&change(vec![1, 2], 0));
        assert_eq!(epoch(&image), 1);
        image.apply(&change(vec![1, 2, 3], 0));
        assert_eq!(epoch(&image), 2);
        image.apply(&MetadataRecord::PartitionReassignment {
            topic_id: id,
            partition: 0,
            replicas: vec![1, 2, 4, 3],
            adding: vec![4],
            removing: vec![3],
        });
        assert_eq!(epoch(&image), 3);
        image.apply(&MetadataRecord::PartitionReassigned {
            topic_id: id,
            partition: 0,
            replicas: vec![1, 2, 4],
            isr: vec![1, 2, 4],
            leader: 1,
            leader_epoch: 1,
        });
        assert_eq!(epoch(&image), 4);
        // A change that is ignored (an older leader epoch), or that names
        // another partition or a broker, leaves it as it is.
        image.apply(&change(vec![1], 0));
        image.apply(&MetadataRecord::BrokerFenced { node_id: 2 });
        image.apply(&MetadataRecord::TopicConfigChanged {
            topic_id: id,
            name: "retention.ms".into(),
            value: Some("5".into()),
        });
        assert_eq!(epoch(&image), 4);
        assert_eq!(
            image.topic("t").expect("topic").partitions[0].isr,
            vec![1, 2, 4]
        );
    }

    #[test]
    fn an_unregistered_broker_leaves_the_image_and_may_register_again() {
        let mut image = MetadataImage::default();
        let registered = |node_id: i32| MetadataRecord::BrokerRegistered {
            node_id,
            host: "127.0.0.1".into(),
            port: 9000 + node_id,
            rack: None,
        };
        for id in 1..=2 {
            image.apply(&registered(id));
        }
        let id = Uuid::new_v4();
        image.apply(&MetadataRecord::TopicCreated {
            name: "t".into(),
            topic_id: id,
            configs: BTreeMap::new(),
        });
        image.apply(&MetadataRecord::PartitionCreated {
            topic_id: id,
            partition: 0,
            replicas: vec![1, 2],
            isr: vec![1],
            leader: 1,
            leader_epoch: 0,
        });
        image.apply(&MetadataRecord::BrokerFenced { node_id: 2 });
        image.apply(&MetadataRecord::BrokerUnregistered { node_id: 2 });
        assert_eq!(image.brokers.keys().copied().collect::<Vec<_>>(), vec![1]);
        assert!(image.fenced_brokers.is_empty());
        assert_eq!(
            image.live_brokers().map(|b| b.node_id).collect::<Vec<_>>(),
            vec![1]
        );
        // The partition keeps listing it, as Kafka's does.
        assert_eq!(
            image.topic("t").expect("topic").partitions[0].replicas,
            vec![1, 2]
        );
        // Unknown (or already unregistered) ids change nothing but the offset.
        let before = image.clone();
        image.apply(&MetadataRecord::BrokerUnregistered { node_id: 7 });
        assert_eq!(image.brokers, before.brokers);
        assert_eq!(image.offset, before.offset + 1);
        // A broker still running registers again, live.
        image.apply(&registered(2));
        assert_eq!(image.live_brokers().count(), 2);

        // The record goes through the log like the others, tagged by its name
        // (a new variant: logs and snapshots written before it read as before).
        let dir = tempfile::tempdir().expect("tempdir");
        let records = vec![
            registered(3),
            MetadataRecord::BrokerUnregistered { node_id: 3 },
        ];
        let (mut log, _) = MetadataLog::open(dir.path()).expect("open");
        log.append(&records).expect("append");
        drop(log);
        let (_, replayed) = MetadataLog::open(dir.path()).expect("reopen");
        assert_eq!(replayed, records);
        let json = serde_json::to_string(&records[1]).expect("encode");
        assert_eq!(json, r#"{"type":"BrokerUnregistered","node_id":3}"#);
    }

    #[test]
    fn broker_configs_are_kept_per_node_and_old_records_mean_the_cluster_default() {
        // A record written before per-broker settings existed has no node_id.
        let old: MetadataRecord = serde_json::from_str(
            r#"{"type":"BrokerConfigChanged","name":"log.retention.ms","value":"5"}"#,
        )
        .expect("decode old record");
        assert_eq!(
            old,
            MetadataRecord::BrokerConfigChanged {
                node_id: None,
                name: "log.retention.ms".into(),
                value: Some("5".into()),
            }
        );
        // ... and the cluster default is still written that way.
        assert_eq!(
            serde_json::to_string(&old).expect("encode"),
            r#"{"type":"BrokerConfigChanged","name":"log.retention.ms","value":"5"}"#
        );
        let mut image = MetadataImage::default();
        image.apply(&old);
        let node = |node_id, value: Option<&str>| MetadataRecord::BrokerConfigChanged {
            node_id: Some(node_id),
            name: "log.retention.ms".into(),
            value: value.map(String::from),
        };
        image.apply(&node(2, Some("7")));
        assert_eq!(
            image
                .broker_configs
                .get("log.retention.ms")
                .map(String::as_str),
            Some("5")
        );
        assert_eq!(
            image
                .node_configs(2)
                .get("log.retention.ms")
                .map(String::as_str),
            Some("7")
        );
        assert!(image.node_configs(1).is_empty());
        let json = serde_json::to_string(&node(2, Some("7"))).expect("encode");
        assert_eq!(
            serde_json::from_str::<MetadataRecord>(&json).expect("decode"),
            node(2, Some("7"))
        );
        // Removing the node's value leaves no empty layer behind.
        image.apply(&node(2, None));
        assert!(image.node_broker_configs.is_empty());
        assert_eq!(image.broker_configs.len(), 1);
    }

    #[test]
    fn records_survive_reopen_and_a_torn_tail_is_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let id = Uuid::new_v4();
        let records = vec![
            MetadataRecord::TopicCreated {
                name: "t".into(),
                topic_id: id,
                configs: BTreeMap::new(),
            },
            MetadataRecord::PartitionCreated {
                topic_id: id,
                partition: 0,
                replicas: vec![1],
                isr: vec![1],
                leader: 1,
                leader_epoch: 0,
            },
        ];
        {
            let (mut log, existing) = MetadataLog::open(dir.path()).expect("open");
            assert!(existing.is_empty());
            log.append(&records).expect("append");
        }
        // A crash in the middle of a write leaves half a line.
        let path = dir.path().join("metadata.log");
        let mut f = OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("open file");
        f.write_all(b"0badc0de {\"type\":\"TopicDel")
            .expect("write");
        drop(f);
        let (mut log, replayed) = MetadataLog::open(dir.path()).expect("reopen");
        assert_eq!(replayed, records);
        log.append(&[MetadataRecord::TopicDeleted { topic_id: id }])
            .expect("append after recovery");
        let (_, replayed) = MetadataLog::open(dir.path()).expect("reopen");
        assert_eq!(replayed.len(), 3);
        let mut image = MetadataImage::default();
        for r in &replayed {
            image.apply(r);
        }
        assert!(image.topics.is_empty());
    }

    #[test]
    fn image_applies_partitions_and_configs() {
        let id = Uuid::new_v4();
        let mut image = MetadataImage::default();
        image.apply(&MetadataRecord::TopicCreated {
            name: "t".into(),
            topic_id: id,
            configs: BTreeMap::new(),
        });
        for p in [1, 0] {
            image.apply(&MetadataRecord::PartitionCreated {
                topic_id: id,
                partition: p,
                replicas: vec![1],
                isr: vec![1],
                leader: 1,
                leader_epoch: 0,
            });
        }
        image.apply(&MetadataRecord::TopicConfigChanged {
            topic_id: id,
            name: "retention.ms".into(),
            value: Some("5".into()),
        });
        let t = image.topic("t").expect("topic");
        assert_eq!(
            t.partitions.iter().map(|p| p.partition).collect::<Vec<_>>(),
            vec![0, 1]
        );
        assert_eq!(t.configs.get("retention.ms").map(String::as_str), Some("5"));
        assert_eq!(image.topic_by_id(&id).map(|t| t.name.as_str()), Some("t"));
    }
}

#[cfg(test)]
mod round_trips {
    use super::*;
    use proptest::prelude::*;

    fn name() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9._-]{1,30}"
    }

    fn record() -> impl Strategy<Value = MetadataRecord> {
        let id = any::<u128>().prop_map(Uuid::from_u128);
        let configs = proptest::collection::btree_map(name(), name(), 0..4);
        let ids = proptest::collection::vec(any::<i32>(), 0..4);
        prop_oneof![
            (
                any::<i32>(),
                name(),
                any::<i32>(),
                proptest::option::of(name())
            )
                .prop_map(|(node_id, host, port, rack)| {
                    MetadataRecord::BrokerRegistered {
                        node_id,
                        host,
                        port,
                        rack,
                    }
                }),
            (name(), id.clone(), configs).prop_map(|(name, topic_id, configs)| {
                MetadataRecord::TopicCreated {
                    name,
                    topic_id,
                    configs,
                }
            }),
            (
                id.clone(),
                any::<i32>(),
                ids.clone(),
                ids.clone(),
                any::<i32>(),
                any::<i32>()
            )
                .prop_map(
                    |(topic_id, partition, replicas, isr, leader, leader_epoch)| {
                        MetadataRecord::PartitionCreated {
                            topic_id,
                            partition,
                            replicas,
                            isr,
                            leader,
                            leader_epoch,
                        }
                    }
                ),
            (id.clone(), name(), proptest::option::of(name())).prop_map(
                |(topic_id, name, value)| MetadataRecord::TopicConfigChanged {
                    topic_id,
                    name,
                    value
                }
            ),
            (
                proptest::option::of(any::<i32>()),
                name(),
                proptest::option::of(name())
            )
                .prop_map(|(node_id, name, value)| {
                    MetadataRecord::BrokerConfigChanged {
                        node_id,
                        name,
                        value,
                    }
                }),
            id.prop_map(|topic_id| MetadataRecord::TopicDeleted { topic_id }),
            any::<i64>().prop_map(|end| MetadataRecord::ProducerIdsAllocated { end }),
            any::<i32>().prop_map(|node_id| MetadataRecord::BrokerUnregistered { node_id }),
            name().prop_map(|cluster_id| MetadataRecord::ClusterIdSet { cluster_id }),
            (any::<i32>(), ids.clone(), ids.clone(), ids).prop_map(
                |(partition, replicas, adding, removing)| {
                    MetadataRecord::PartitionReassignment {
                        topic_id: Uuid::nil(),
                        partition,
                        replicas,
                        adding,
                        removing,
                    }
                }
            ),
        ]
    }

    #[test]
    fn the_first_cluster_id_committed_stays() {
        let mut image = MetadataImage::default();
        assert_eq!(image.cluster_id, None);
        image.apply(&MetadataRecord::ClusterIdSet {
            cluster_id: "first".into(),
        });
        image.apply(&MetadataRecord::ClusterIdSet {
            cluster_id: "second".into(),
        });
        assert_eq!(image.cluster_id.as_deref(), Some("first"));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn records_round_trip_through_the_log(records in proptest::collection::vec(record(), 0..20)) {
            let dir = tempfile::tempdir().expect("tempdir");
            let (mut log, existing) = MetadataLog::open(dir.path()).expect("open");
            prop_assert!(existing.is_empty());
            log.append(&records).expect("append");
            drop(log);
            let (_, replayed) = MetadataLog::open(dir.path()).expect("reopen");
            prop_assert_eq!(replayed, records);
        }
    }
}
