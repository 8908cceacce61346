//! Broker and topic configuration under Kafka's names.
//!
//! Every setting a user can see is a row of one table ([`TOPIC_CONFIGS`],
//! [`BROKER_CONFIGS`]) so that DescribeConfigs, validation, `ferry serve --help`
//! and the defaults never disagree. A topic config falls back to the broker
//! setting it is named after in Kafka (`retention.ms` ← `log.retention.ms`), so
//! changing a broker default changes every topic that does not override it.

use std::collections::BTreeMap;

use ferry_log::LogConfig;

/// The type of a config value, as DescribeConfigs reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigType {
    Boolean,
    String,
    Int,
    Long,
    List,
}

impl ConfigType {
    /// Kafka's `ConfigType` id in DescribeConfigs v3+.
    pub fn kafka_id(self) -> i8 {
        match self {
            ConfigType::Boolean => 1,
            ConfigType::String => 2,
            ConfigType::Int => 3,
            ConfigType::Long => 5,
            ConfigType::List => 7,
        }
    }
}

/// One config a user can set.
#[derive(Debug, Clone, Copy)]
pub struct ConfigDef {
    pub name: &'static str,
    pub config_type: ConfigType,
    pub default: &'static str,
    /// Smallest allowed value for numeric types.
    pub min: i64,
    /// Allowed values for strings and list items (empty = any).
    pub allowed: &'static [&'static str],
    pub doc: &'static str,
}

const NO_MIN: i64 = i64::MIN;

const fn def(
    name: &'static str,
    config_type: ConfigType,
    default: &'static str,
    min: i64,
    allowed: &'static [&'static str],
    doc: &'static str,
) -> ConfigDef {
    ConfigDef {
        name,
        config_type,
        default,
        min,
        allowed,
        doc,
    }
}

const LONG_MAX: &str = "9223372036854775807";
const CLEANUP: &[&str] = &["delete", "compact"];
const CODECS: &[&str] = &["uncompressed", "zstd", "lz4", "snappy", "gzip", "producer"];
const TS_TYPES: &[&str] = &["CreateTime", "LogAppendTime"];

/// Broker settings (Kafka names) with their defaults.
pub const BROKER_CONFIGS: &[ConfigDef] = &[
    def(
        "auto.create.topics.enable",
        ConfigType::Boolean,
        "true",
        NO_MIN,
        &[],
        "Create a topic on first use in Metadata or Produce.",
    ),
    def(
        "num.partitions",
        ConfigType::Int,
        "1",
        1,
        &[],
        "Partitions of an auto-created topic.",
    ),
    def(
        "default.replication.factor",
        ConfigType::Int,
        "1",
        1,
        &[],
        "Replication factor of an auto-created topic.",
    ),
    def(
        "socket.request.max.bytes",
        ConfigType::Int,
        "104857600",
        1024,
        &[],
        "Largest request frame accepted; larger ones close the connection.",
    ),
    def(
        "message.max.bytes",
        ConfigType::Int,
        "1048588",
        0,
        &[],
        "Default max.message.bytes: largest record batch accepted.",
    ),
    def(
        "log.segment.bytes",
        ConfigType::Int,
        "1073741824",
        14,
        &[],
        "Default segment.bytes.",
    ),
    def(
        "log.roll.ms",
        ConfigType::Long,
        "604800000",
        1,
        &[],
        "Default segment.ms.",
    ),
    def(
        "log.retention.ms",
        ConfigType::Long,
        "604800000",
        -1,
        &[],
        "Default retention.ms (-1: keep forever).",
    ),
    def(
        "log.retention.bytes",
        ConfigType::Long,
        "-1",
        -1,
        &[],
        "Default retention.bytes (-1: no size limit).",
    ),
    def(
        "log.cleanup.policy",
        ConfigType::List,
        "delete",
        NO_MIN,
        CLEANUP,
        "Default cleanup.policy.",
    ),
    def(
        "log.cleaner.delete.retention.ms",
        ConfigType::Long,
        "86400000",
        0,
        &[],
        "Default delete.retention.ms.",
    ),
    def(
        "log.cleaner.min.compaction.lag.ms",
        ConfigType::Long,
        "0",
        0,
        &[],
        "Default min.compaction.lag.ms.",
    ),
    def(
        "log.cleaner.backoff.ms",
        ConfigType::Long,
        "15000",
        1,
        &[],
        "Pause between two compaction passes.",
    ),
    def(
        "log.retention.check.interval.ms",
        ConfigType::Long,
        "300000",
        1,
        &[],
        "Pause between two retention passes.",
    ),
    def(
        "log.flush.interval.messages",
        ConfigType::Long,
        LONG_MAX,
        1,
        &[],
        "Default flush.messages.",
    ),
    def(
        "log.flush.interval.ms",
        ConfigType::Long,
        LONG_MAX,
        0,
        &[],
        "Default flush.ms.",
    ),
    def(
        "log.flush.scheduler.interval.ms",
        ConfigType::Long,
        "1000",
        1,
        &[],
        "How often flush.ms is checked.",
    ),
    def(
        "log.index.interval.bytes",
        ConfigType::Int,
        "4096",
        0,
        &[],
        "Default index.interval.bytes.",
    ),
    def(
        "log.message.timestamp.type",
        ConfigType::String,
        "CreateTime",
        NO_MIN,
        TS_TYPES,
        "Default message.timestamp.type.",
    ),
    def(
        "compression.type",
        ConfigType::String,
        "producer",
        NO_MIN,
        CODECS,
        "Default compression.type.",
    ),
    def(
        "min.insync.replicas",
        ConfigType::Int,
        "1",
        1,
        &[],
        "Default min.insync.replicas.",
    ),
    def(
        "unclean.leader.election.enable",
        ConfigType::Boolean,
        "false",
        NO_MIN,
        &[],
        "Default unclean.leader.election.enable.",
    ),
    def(
        "fetch.max.bytes",
        ConfigType::Int,
        "57671680",
        1024,
        &[],
        "Cap on the bytes of one fetch response.",
    ),
    def(
        "queued.max.requests",
        ConfigType::Int,
        "500",
        1,
        &[],
        "Requests in flight per connection.",
    ),
    def(
        "max.connections",
        ConfigType::Int,
        "10000",
        1,
        &[],
        "Open client connections.",
    ),
    def(
        "max.connections.per.ip",
        ConfigType::Int,
        "2147483647",
        1,
        &[],
        "Open client connections from one client address.",
    ),
    def(
        "queued.max.request.bytes",
        ConfigType::Long,
        "104857600",
        1024,
        &[],
        "Request bytes held in memory over all connections; when full the broker stops reading requests (back-pressure). At least socket.request.max.bytes is used.",
    ),
    def(
        "broker.session.timeout.ms",
        ConfigType::Int,
        "9000",
        1,
        &[],
        "A cluster broker not heard from for this long is fenced: its leaderships move to in-sync replicas.",
    ),
    def(
        "auto.leader.rebalance.enable",
        ConfigType::Boolean,
        "true",
        NO_MIN,
        &[],
        "The active controller moves leaderships back to preferred replicas (the first assigned) once they are live and in sync.",
    ),
    def(
        "leader.imbalance.check.interval.seconds",
        ConfigType::Long,
        "300",
        1,
        &[],
        "How often the active controller checks for partitions not led by their preferred replica.",
    ),
    def(
        "leader.imbalance.per.broker.percentage",
        ConfigType::Int,
        "10",
        0,
        &[],
        "The share of a broker's preferred partitions (in percent) that other replicas may lead before the controller moves them back.",
    ),
    def(
        "broker.heartbeat.interval.ms",
        ConfigType::Int,
        "2000",
        1,
        &[],
        "How often a cluster broker heartbeats to the active controller.",
    ),
    def(
        "replica.high.watermark.checkpoint.interval.ms",
        ConfigType::Long,
        "5000",
        1,
        &[],
        "How often every replica's high watermark is written to the data directory's replication-offset-checkpoint.",
    ),
    def(
        "replica.lag.time.max.ms",
        ConfigType::Long,
        "30000",
        1,
        &[],
        "A follower that has not caught up with the leader for this long leaves the ISR.",
    ),
    def(
        "replica.fetch.max.bytes",
        ConfigType::Int,
        "1048576",
        1024,
        &[],
        "Bytes a follower asks for per partition in one fetch (a larger first batch still comes whole).",
    ),
    def(
        "replica.fetch.wait.max.ms",
        ConfigType::Int,
        "500",
        0,
        &[],
        "Longest a follower's fetch waits at the leader for new records.",
    ),
    def(
        "queued.max.response.bytes",
        ConfigType::Long,
        "104857600",
        1024,
        &[],
        "ferry: fetch response bytes held in memory over all connections, from the read until the client has taken them; a fetch waits for room. A connection runs one fetch at a time until its response is written.",
    ),
    def(
        "response.send.timeout.ms",
        ConfigType::Long,
        "30000",
        1,
        &[],
        "ferry: a connection whose client takes longer than this to read a response is closed, giving back the memory its responses held.",
    ),    def(
        "leader.replication.throttled.rate",
        ConfigType::Long,
        LONG_MAX,
        0,
        &[],
        "Bytes per second a leader sends to followers of the replicas in leader.replication.throttled.replicas while they are out of the ISR (the default: no cap).",
    ),
    def(
        "follower.replication.throttled.rate",
        ConfigType::Long,
        LONG_MAX,
        0,
        &[],
        "Bytes per second a follower fetches for its replicas in follower.replication.throttled.replicas while they are out of the ISR (the default: no cap).",
    ),
    def(
        "replication.quota.window.num",
        ConfigType::Int,
        "11",
        1,
        &[],
        "Samples the replication throttle's rate is measured over.",
    ),
    def(
        "replication.quota.window.size.seconds",
        ConfigType::Int,
        "1",
        1,
        &[],
        "Length of one sample of the replication throttle's rate.",
    ),
    def(
        "group.initial.rebalance.delay.ms",
        ConfigType::Int,
        "3000",
        0,
        &[],
        "How long the first rebalance of an empty group waits for more members.",
    ),
    def(
        "group.min.session.timeout.ms",
        ConfigType::Int,
        "6000",
        0,
        &[],
        "Smallest session.timeout.ms a group member may ask for.",
    ),
    def(
        "group.max.session.timeout.ms",
        ConfigType::Int,
        "1800000",
        0,
        &[],
        "Largest session.timeout.ms a group member may ask for.",
    ),
    def(
        "group.max.size",
        ConfigType::Int,
        "2147483647",
        1,
        &[],
        "Most members of one consumer group.",
    ),
    def(
        "group.consumer.session.timeout.ms",
        ConfigType::Int,
        "45000",
        1,
        &[],
        "Session timeout of consumer-protocol (KIP-848) group members.",
    ),
    def(
        "group.consumer.heartbeat.interval.ms",
        ConfigType::Int,
        "5000",
        1,
        &[],
        "Heartbeat interval given to consumer-protocol (KIP-848) group members.",
    ),
    def(
        "group.consumer.max.size",
        ConfigType::Int,
        "2147483647",
        1,
        &[],
        "Most members of one consumer-protocol (KIP-848) group.",
    ),
    def(
        "offsets.retention.minutes",
        ConfigType::Int,
        "10080",
        1,
        &[],
        "How long committed offsets of an empty group are kept.",
    ),
    def(
        "offsets.topic.replication.factor",
        ConfigType::Int,
        "3",
        1,
        &[],
        "Replicas of __consumer_offsets partitions (fewer when fewer brokers are live at its creation).",
    ),
    def(
        "transaction.state.log.replication.factor",
        ConfigType::Int,
        "3",
        1,
        &[],
        "Replicas of __transaction_state partitions (fewer when fewer brokers are live at its creation).",
    ),
    def(
        "offsets.topic.num.partitions",
        ConfigType::Int,
        "50",
        1,
        &[],
        "Partitions of __consumer_offsets (fixed once it exists).",
    ),
    def(
        "offset.metadata.max.bytes",
        ConfigType::Int,
        "4096",
        0,
        &[],
        "Largest metadata string of one committed offset.",
    ),
    def(
        "producer.id.expiration.ms",
        ConfigType::Int,
        "86400000",
        1,
        &[],
        "How long a producer id without writes is remembered by a partition.",
    ),
    def(
        "producer.id.expiration.check.interval.ms",
        ConfigType::Int,
        "600000",
        1,
        &[],
        "Pause between two passes of producer id expiry.",
    ),
    def(
        "transaction.max.timeout.ms",
        ConfigType::Int,
        "900000",
        1,
        &[],
        "Largest transaction.timeout.ms a transactional producer may ask for.",
    ),
    def(
        "transaction.state.log.num.partitions",
        ConfigType::Int,
        "50",
        1,
        &[],
        "Partitions of __transaction_state (fixed once it exists).",
    ),
    def(
        "transaction.abort.timed.out.transaction.cleanup.interval.ms",
        ConfigType::Int,
        "10000",
        1,
        &[],
        "Pause between two checks for transactions past their timeout.",
    ),
    def(
        "offsets.retention.check.interval.ms",
        ConfigType::Long,
        "600000",
        1,
        &[],
        "Pause between two passes of offset expiry.",
    ),
];

/// Topic settings: (topic name, broker setting it defaults to, definition).
pub const TOPIC_CONFIGS: &[(&str, &str, ConfigDef)] = &[
    (
        "cleanup.policy",
        "log.cleanup.policy",
        def(
            "cleanup.policy",
            ConfigType::List,
            "delete",
            NO_MIN,
            CLEANUP,
            "delete, compact, or both.",
        ),
    ),
    (
        "compression.type",
        "compression.type",
        def(
            "compression.type",
            ConfigType::String,
            "producer",
            NO_MIN,
            CODECS,
            "Codec of stored batches; producer keeps the producer's.",
        ),
    ),
    (
        "delete.retention.ms",
        "log.cleaner.delete.retention.ms",
        def(
            "delete.retention.ms",
            ConfigType::Long,
            "86400000",
            0,
            &[],
            "How long tombstones survive compaction.",
        ),
    ),
    (
        "flush.messages",
        "log.flush.interval.messages",
        def(
            "flush.messages",
            ConfigType::Long,
            LONG_MAX,
            1,
            &[],
            "fsync after this many records.",
        ),
    ),
    (
        "flush.ms",
        "log.flush.interval.ms",
        def(
            "flush.ms",
            ConfigType::Long,
            LONG_MAX,
            0,
            &[],
            "fsync at least this often.",
        ),
    ),
    (
        "index.interval.bytes",
        "log.index.interval.bytes",
        def(
            "index.interval.bytes",
            ConfigType::Int,
            "4096",
            0,
            &[],
            "Bytes between offset index entries.",
        ),
    ),
    (
        "max.message.bytes",
        "message.max.bytes",
        def(
            "max.message.bytes",
            ConfigType::Int,
            "1048588",
            0,
            &[],
            "Largest record batch accepted.",
        ),
    ),
    (
        "message.timestamp.type",
        "log.message.timestamp.type",
        def(
            "message.timestamp.type",
            ConfigType::String,
            "CreateTime",
            NO_MIN,
            TS_TYPES,
            "CreateTime or LogAppendTime.",
        ),
    ),
    (
        "min.compaction.lag.ms",
        "log.cleaner.min.compaction.lag.ms",
        def(
            "min.compaction.lag.ms",
            ConfigType::Long,
            "0",
            0,
            &[],
            "Records younger than this are not compacted.",
        ),
    ),
    (
        "min.insync.replicas",
        "min.insync.replicas",
        def(
            "min.insync.replicas",
            ConfigType::Int,
            "1",
            1,
            &[],
            "In-sync replicas needed for acks=all.",
        ),
    ),
    (
        "retention.bytes",
        "log.retention.bytes",
        def(
            "retention.bytes",
            ConfigType::Long,
            "-1",
            -1,
            &[],
            "Size limit of a partition (-1: none).",
        ),
    ),
    (
        "retention.ms",
        "log.retention.ms",
        def(
            "retention.ms",
            ConfigType::Long,
            "604800000",
            -1,
            &[],
            "Age limit of records (-1: none).",
        ),
    ),
    (
        "segment.bytes",
        "log.segment.bytes",
        def(
            "segment.bytes",
            ConfigType::Int,
            "1073741824",
            14,
            &[],
            "Segment file size.",
        ),
    ),
    (
        "segment.ms",
        "log.roll.ms",
        def(
            "segment.ms",
            ConfigType::Long,
            "604800000",
            1,
            &[],
            "Segment age before rolling.",
        ),
    ),
    (
        "leader.replication.throttled.replicas",
        "leader.replication.throttled.replicas",
        def(
            "leader.replication.throttled.replicas",
            ConfigType::List,
            "",
            NO_MIN,
            &[],
            "Replicas throttled on the leader side (leader.replication.throttled.rate): partitionId:brokerId pairs, or * for all.",
        ),
    ),
    (
        "follower.replication.throttled.replicas",
        "follower.replication.throttled.replicas",
        def(
            "follower.replication.throttled.replicas",
            ConfigType::List,
            "",
            NO_MIN,
            &[],
            "Replicas throttled on the follower side (follower.replication.throttled.rate): partitionId:brokerId pairs, or * for all.",
        ),
    ),
    (
        "unclean.leader.election.enable",
        "unclean.leader.election.enable",
        def(
            "unclean.leader.election.enable",
            ConfigType::Boolean,
            "false",
            NO_MIN,
            &[],
            "Let an out-of-sync replica become leader.",
        ),
    ),
];

/// Why a config was refused; frontends answer INVALID_CONFIG.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn check_value(def: &ConfigDef, value: &str) -> Result<(), ConfigError> {
    if def.name == crate::quota::LEADER_REPLICAS || def.name == crate::quota::FOLLOWER_REPLICAS {
        return crate::quota::parse_throttled_replicas(def.name, value)
            .map(|_| ())
            .map_err(ConfigError);
    }
    let bad = |why: &str| ConfigError(format!("invalid value {value:?} for {}: {why}", def.name));
    match def.config_type {
        ConfigType::Boolean => {
            if !value.eq_ignore_ascii_case("true") && !value.eq_ignore_ascii_case("false") {
                return Err(bad("expected true or false"));
            }
        }
        ConfigType::Int | ConfigType::Long => {
            let n: i64 = value.trim().parse().map_err(|_| bad("expected a number"))?;
            if def.config_type == ConfigType::Int && i32::try_from(n).is_err() {
                return Err(bad("out of the range of an int"));
            }
            if n < def.min {
                return Err(bad(&format!("must be at least {}", def.min)));
            }
        }
        ConfigType::String => {
            if !def.allowed.is_empty() && !def.allowed.contains(&value) {
                return Err(bad(&format!("expected one of {}", def.allowed.join(", "))));
            }
        }
        ConfigType::List => {
            let items: Vec<&str> = value.split(',').map(str::trim).collect();
            if items
                .iter()
                .any(|i| i.is_empty() || (!def.allowed.is_empty() && !def.allowed.contains(i)))
            {
                return Err(bad(&format!(
                    "expected a list of {}",
                    def.allowed.join(", ")
                )));
            }
        }
    }
    Ok(())
}

/// Looks up a topic config definition.
pub fn topic_config_def(name: &str) -> Option<(&'static str, &'static ConfigDef)> {
    TOPIC_CONFIGS
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, broker_name, def)| (*broker_name, def))
}

/// Looks up a broker config definition.
pub fn broker_config_def(name: &str) -> Option<&'static ConfigDef> {
    BROKER_CONFIGS.iter().find(|d| d.name == name)
}

/// Validates topic overrides: every name known, every value well-formed.
pub fn validate_topic_configs(configs: &BTreeMap<String, String>) -> Result<(), ConfigError> {
    for (name, value) in configs {
        let (_, def) = topic_config_def(name)
            .ok_or_else(|| ConfigError(format!("unknown topic config {name}")))?;
        check_value(def, value)?;
    }
    Ok(())
}

/// Validates broker settings.
pub fn validate_broker_configs(configs: &BTreeMap<String, String>) -> Result<(), ConfigError> {
    for (name, value) in configs {
        let def = broker_config_def(name)
            .ok_or_else(|| ConfigError(format!("unknown broker config {name}")))?;
        check_value(def, value)?;
    }
    Ok(())
}

/// Where a config value came from (Kafka's `DescribeConfigsResponse.ConfigSource` ids).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigSource {
    /// A topic's own override.
    TopicConfig = 1,
    /// Set dynamically for one broker (resource "N").
    DynamicBrokerConfig = 2,
    /// Set dynamically for every broker (the cluster-wide resource "").
    DynamicDefaultBrokerConfig = 3,
    /// The broker's own settings file, `--set` or environment.
    StaticBrokerConfig = 4,
    DefaultConfig = 5,
}

/// Broker settings, most specific first (Kafka's `DynamicBrokerConfig` order):
///
/// ```text
///  node_configs (this broker, dynamic) ─► dynamic_configs (cluster default,
///  dynamic) ─► static_configs (command line, file, environment) ─► default
/// ```
///
/// Both dynamic layers are kept in the metadata log.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BrokerConfig {
    pub static_configs: BTreeMap<String, String>,
    /// The cluster-wide dynamic settings (`image.broker_configs`).
    pub dynamic_configs: BTreeMap<String, String>,
    /// This broker's own dynamic settings (`image.node_broker_configs[node]`).
    pub node_configs: BTreeMap<String, String>,
}

impl BrokerConfig {
    pub fn new(static_configs: BTreeMap<String, String>) -> Result<BrokerConfig, ConfigError> {
        validate_broker_configs(&static_configs)?;
        Ok(BrokerConfig {
            static_configs,
            dynamic_configs: BTreeMap::new(),
            node_configs: BTreeMap::new(),
        })
    }

    /// The effective value and where it came from.
    pub fn get(&self, name: &str) -> Option<(String, ConfigSource)> {
        self.synonyms(name).into_iter().next()
    }

    /// Every layer that sets `name`, most specific first, ending with the
    /// default of a known setting: DescribeConfigs' synonyms of a broker config.
    pub fn synonyms(&self, name: &str) -> Vec<(String, ConfigSource)> {
        let layers = [
            (&self.node_configs, ConfigSource::DynamicBrokerConfig),
            (
                &self.dynamic_configs,
                ConfigSource::DynamicDefaultBrokerConfig,
            ),
            (&self.static_configs, ConfigSource::StaticBrokerConfig),
        ];
        let mut found: Vec<(String, ConfigSource)> = layers
            .into_iter()
            .filter_map(|(layer, source)| layer.get(name).map(|v| (v.clone(), source)))
            .collect();
        if let Some(def) = broker_config_def(name) {
            found.push((def.default.to_string(), ConfigSource::DefaultConfig));
        }
        found
    }

    fn value(&self, name: &str) -> String {
        self.get(name).map(|(v, _)| v).unwrap_or_default()
    }

    pub fn long(&self, name: &str) -> i64 {
        self.value(name).trim().parse().unwrap_or(0)
    }

    pub fn bool(&self, name: &str) -> bool {
        self.value(name).eq_ignore_ascii_case("true")
    }

    /// A topic config's effective value given the topic's overrides.
    pub fn topic_value(
        &self,
        overrides: &BTreeMap<String, String>,
        name: &str,
    ) -> Option<(String, ConfigSource)> {
        if let Some(v) = overrides.get(name) {
            return Some((v.clone(), ConfigSource::TopicConfig));
        }
        let (broker_name, def) = topic_config_def(name)?;
        match self.get(broker_name) {
            Some((_, ConfigSource::DefaultConfig)) | None => {
                Some((def.default.to_string(), ConfigSource::DefaultConfig))
            }
            Some(other) => Some(other),
        }
    }

    /// Resolves the effective settings of a topic.
    pub fn topic_config(&self, overrides: &BTreeMap<String, String>) -> TopicConfig {
        let get = |name: &str| {
            self.topic_value(overrides, name)
                .map(|(v, _)| v)
                .unwrap_or_default()
        };
        let long = |name: &str| get(name).trim().parse::<i64>().unwrap_or(0);
        let policy = get("cleanup.policy");
        TopicConfig {
            cleanup_delete: policy.split(',').any(|p| p.trim() == "delete"),
            cleanup_compact: policy.split(',').any(|p| p.trim() == "compact"),
            compression_type: get("compression.type"),
            delete_retention_ms: long("delete.retention.ms"),
            flush_messages: long("flush.messages"),
            flush_ms: long("flush.ms"),
            index_interval_bytes: long("index.interval.bytes"),
            max_message_bytes: long("max.message.bytes"),
            log_append_time: get("message.timestamp.type") == "LogAppendTime",
            min_compaction_lag_ms: long("min.compaction.lag.ms"),
            min_insync_replicas: long("min.insync.replicas"),
            retention_bytes: long("retention.bytes"),
            retention_ms: long("retention.ms"),
            segment_bytes: long("segment.bytes"),
            segment_ms: long("segment.ms"),
        }
    }
}

/// A topic's effective settings, typed.
#[derive(Debug, Clone, PartialEq)]
pub struct TopicConfig {
    pub cleanup_delete: bool,
    pub cleanup_compact: bool,
    pub compression_type: String,
    pub delete_retention_ms: i64,
    pub flush_messages: i64,
    pub flush_ms: i64,
    pub index_interval_bytes: i64,
    pub max_message_bytes: i64,
    pub log_append_time: bool,
    pub min_compaction_lag_ms: i64,
    pub min_insync_replicas: i64,
    pub retention_bytes: i64,
    pub retention_ms: i64,
    pub segment_bytes: i64,
    pub segment_ms: i64,
}

impl TopicConfig {
    /// The part of the settings the log engine applies.
    pub fn log_config(&self) -> LogConfig {
        LogConfig {
            segment_bytes: self.segment_bytes.max(14) as u64,
            segment_ms: self.segment_ms,
            index_interval_bytes: self.index_interval_bytes.clamp(0, i64::from(u32::MAX)) as u32,
            retention_ms: self.retention_ms,
            retention_bytes: self.retention_bytes,
            cleanup_delete: self.cleanup_delete,
            cleanup_compact: self.cleanup_compact,
            delete_retention_ms: self.delete_retention_ms,
            min_compaction_lag_ms: self.min_compaction_lag_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn topic_values_fall_back_to_broker_settings_then_defaults() {
        let mut broker = BrokerConfig::new(map(&[("log.retention.ms", "1000")])).expect("valid");
        let topic = map(&[("segment.bytes", "4096")]);
        assert_eq!(
            broker.topic_value(&topic, "segment.bytes"),
            Some(("4096".into(), ConfigSource::TopicConfig))
        );
        assert_eq!(
            broker.topic_value(&topic, "retention.ms"),
            Some(("1000".into(), ConfigSource::StaticBrokerConfig))
        );
        assert_eq!(
            broker.topic_value(&topic, "retention.bytes"),
            Some(("-1".into(), ConfigSource::DefaultConfig))
        );
        broker
            .dynamic_configs
            .insert("log.retention.ms".into(), "2000".into());
        assert_eq!(broker.topic_config(&topic).retention_ms, 2000);
    }

    #[test]
    fn a_brokers_own_setting_beats_the_cluster_default_which_beats_static() {
        let mut broker = BrokerConfig::new(map(&[("log.retention.ms", "1000")])).expect("valid");
        let get = |b: &BrokerConfig| b.get("log.retention.ms");
        assert_eq!(
            get(&broker),
            Some(("1000".into(), ConfigSource::StaticBrokerConfig))
        );
        broker.dynamic_configs = map(&[("log.retention.ms", "2000")]);
        assert_eq!(
            get(&broker),
            Some(("2000".into(), ConfigSource::DynamicDefaultBrokerConfig))
        );
        broker.node_configs = map(&[("log.retention.ms", "3000")]);
        assert_eq!(
            get(&broker),
            Some(("3000".into(), ConfigSource::DynamicBrokerConfig))
        );
        assert_eq!(broker.long("log.retention.ms"), 3000);
        assert_eq!(
            broker.synonyms("log.retention.ms"),
            vec![
                ("3000".into(), ConfigSource::DynamicBrokerConfig),
                ("2000".into(), ConfigSource::DynamicDefaultBrokerConfig),
                ("1000".into(), ConfigSource::StaticBrokerConfig),
                ("604800000".into(), ConfigSource::DefaultConfig),
            ]
        );
        // Topics follow the broker's effective value.
        assert_eq!(broker.topic_config(&BTreeMap::new()).retention_ms, 3000);
        // Without the node's value the cluster default shows again.
        broker.node_configs.clear();
        assert_eq!(broker.long("log.retention.ms"), 2000);
        // Kafka's ConfigSource ids.
        let ids = [
            ConfigSource::TopicConfig,
            ConfigSource::DynamicBrokerConfig,
            ConfigSource::DynamicDefaultBrokerConfig,
            ConfigSource::StaticBrokerConfig,
            ConfigSource::DefaultConfig,
        ]
        .map(|s| s as i8);
        assert_eq!(ids, [1, 2, 3, 4, 5]);
    }

    #[test]
    fn invalid_configs_are_refused() {
        assert!(validate_topic_configs(&map(&[("retention.ms", "abc")])).is_err());
        assert!(validate_topic_configs(&map(&[("no.such.config", "1")])).is_err());
        assert!(validate_topic_configs(&map(&[("cleanup.policy", "compact,delete")])).is_ok());
        assert!(validate_topic_configs(&map(&[("cleanup.policy", "shred")])).is_err());
        assert!(
            validate_topic_configs(&map(&[("message.timestamp.type", "LogAppendTime")])).is_ok()
        );
        assert!(validate_topic_configs(&map(&[("segment.bytes", "99999999999")])).is_err());
        assert!(validate_broker_configs(&map(&[("num.partitions", "0")])).is_err());
    }

    #[test]
    fn replication_throttles_are_validated() {
        for ok in ["", "*", "0:1,1:2"] {
            let configs = map(&[("follower.replication.throttled.replicas", ok)]);
            assert!(validate_topic_configs(&configs).is_ok(), "{ok}");
        }
        for bad in ["0", "*,0:1", "0:x"] {
            let configs = map(&[("leader.replication.throttled.replicas", bad)]);
            assert!(validate_topic_configs(&configs).is_err(), "{bad}");
        }
        let rate = |v| map(&[("leader.replication.throttled.rate", v)]);
        assert!(validate_broker_configs(&rate("1048576")).is_ok());
        assert!(validate_broker_configs(&rate("-1")).is_err());
        let defaults = BrokerConfig::default();
        assert_eq!(
            defaults.long("follower.replication.throttled.rate"),
            i64::MAX
        );
        assert_eq!(defaults.long("replication.quota.window.num"), 11);
    }
}
