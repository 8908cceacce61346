//! The broker's domain errors. Frontends map each to their protocol's code.

/// Why a domain call failed, in the broker's own words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoreError {
    #[error("unknown topic or partition")]
    UnknownTopicOrPartition,
    #[error("unknown topic id")]
    UnknownTopicId,
    #[error("topic {0} already exists")]
    TopicAlreadyExists(String),
    #[error("invalid topic: {0}")]
    InvalidTopic(String),
    #[error("invalid partitions: {0}")]
    InvalidPartitions(String),
    #[error("invalid replication factor: {0}")]
    InvalidReplicationFactor(String),
    #[error("invalid config: {0}")]
    InvalidConfig(String),
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("record batch of {size} bytes exceeds max.message.bytes {max}")]
    MessageTooLarge { size: usize, max: i64 },
    #[error("corrupt record batch: {0}")]
    CorruptMessage(String),
    #[error("invalid record: {0}")]
    InvalidRecord(String),
    #[error("offset out of range")]
    OffsetOutOfRange,
    #[error("offset {0} is above the high watermark")]
    OffsetAboveHighWatermark(i64),
    #[error("storage error: {0}")]
    Storage(String),
    #[error("not enough in-sync replicas")]
    NotEnoughReplicas,
    /// The records were written and replicated, but the ISR shrank below
    /// `min.insync.replicas` meanwhile (Kafka's NOT_ENOUGH_REPLICAS_AFTER_APPEND).
    #[error("the records were written but the in-sync replicas fell below min.insync.replicas")]
    NotEnoughReplicasAfterAppend,
    /// This replica does not lead the partition (it follows, or leads no more).
    #[error("this broker is not the leader of the partition")]
    NotLeaderOrFollower,
    /// The in-sync replicas did not all get the records before the deadline.
    #[error("the records were not replicated before the deadline")]
    RequestTimedOut,
    #[error("the leader epoch in the request is older than the partition's")]
    FencedLeaderEpoch,
    #[error("the leader epoch in the request is newer than the partition's")]
    UnknownLeaderEpoch,
    #[error("the broker is shutting down")]
    ShuttingDown,
    #[error("out of order sequence: {0}")]
    OutOfOrderSequence(String),
    #[error("invalid producer epoch: {0}")]
    InvalidProducerEpoch(String),
    #[error("invalid transaction state: {0}")]
    InvalidTxnState(String),
    #[error("producer fenced: {0}")]
    ProducerFenced(String),
}

impl From<ferry_log::LogError> for CoreError {
    fn from(e: ferry_log::LogError) -> Self {
        use ferry_log::LogError;
        match e {
            LogError::OffsetOutOfRange { .. } => CoreError::OffsetOutOfRange,
            LogError::InvalidBatch(b) => CoreError::CorruptMessage(b.to_string()),
            LogError::Io(io) => CoreError::Storage(io.to_string()),
            LogError::Closed => CoreError::ShuttingDown,
        }
    }
}

impl From<crate::config::ConfigError> for CoreError {
    fn from(e: crate::config::ConfigError) -> Self {
        CoreError::InvalidConfig(e.0)
    }
}

impl From<crate::metadata::MetadataError> for CoreError {
    fn from(e: crate::metadata::MetadataError) -> Self {
        CoreError::Storage(e.to_string())
    }
}
