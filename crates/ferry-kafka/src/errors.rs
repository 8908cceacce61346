//! Domain errors → Kafka error codes. The one place the frontend decides which
//! code a client sees for a broker-side failure.

use ferry_core::CoreError;
use kafka_protocol::ResponseError;

/// The Kafka error code for a domain error.
pub fn error_code(e: &CoreError) -> i16 {
    counted(kafka_error(e)).code()
}

/// Counts an error sent to a client in the `ferry_kafka_errors_total` metric.
fn counted(e: ResponseError) -> ResponseError {
    ferry_core::metrics::metrics().count_error(&e.to_string(), &e.code().to_string());
    e
}

/// Records a handled request in the request metrics.
pub fn observe_request(
    api: kafka_protocol::messages::ApiKey,
    elapsed: std::time::Duration,
    outcome: &crate::dispatch::Outcome,
) {
    let m = ferry_core::metrics::metrics();
    m.observe_request(&format!("{api:?}"), elapsed);
    if matches!(outcome, crate::dispatch::Outcome::Close) {
        m.count_error("ConnectionClosed", "none");
    }
}

/// The Kafka error for a domain error.
pub fn kafka_error(e: &CoreError) -> ResponseError {
    match e {
        CoreError::UnknownTopicOrPartition => ResponseError::UnknownTopicOrPartition,
        CoreError::UnknownTopicId => ResponseError::UnknownTopicId,
        CoreError::TopicAlreadyExists(_) => ResponseError::TopicAlreadyExists,
        CoreError::InvalidTopic(_) => ResponseError::InvalidTopicException,
        CoreError::InvalidPartitions(_) => ResponseError::InvalidPartitions,
        CoreError::InvalidReplicationFactor(_) => ResponseError::InvalidReplicationFactor,
        CoreError::InvalidConfig(_) => ResponseError::InvalidConfig,
        CoreError::InvalidRequest(_) => ResponseError::InvalidRequest,
        CoreError::MessageTooLarge { .. } => ResponseError::MessageTooLarge,
        CoreError::CorruptMessage(_) => ResponseError::CorruptMessage,
        CoreError::InvalidRecord(_) => ResponseError::InvalidRecord,
        CoreError::OffsetOutOfRange | CoreError::OffsetAboveHighWatermark(_) => {
            ResponseError::OffsetOutOfRange
        }
        CoreError::Storage(_) => ResponseError::KafkaStorageError,
        CoreError::NotEnoughReplicas => ResponseError::NotEnoughReplicas,
        CoreError::NotEnoughReplicasAfterAppend => ResponseError::NotEnoughReplicasAfterAppend,
        CoreError::NotLeaderOrFollower => ResponseError::NotLeaderOrFollower,
        CoreError::RequestTimedOut => ResponseError::RequestTimedOut,
        CoreError::FencedLeaderEpoch => ResponseError::FencedLeaderEpoch,
        CoreError::UnknownLeaderEpoch => ResponseError::UnknownLeaderEpoch,
        CoreError::ShuttingDown => ResponseError::NotLeaderOrFollower,
        CoreError::OutOfOrderSequence(_) => ResponseError::OutOfOrderSequenceNumber,
        CoreError::InvalidProducerEpoch(_) => ResponseError::InvalidProducerEpoch,
        CoreError::InvalidTxnState(_) => ResponseError::InvalidTxnState,
        CoreError::ProducerFenced(_) => ResponseError::ProducerFenced,
    }
}

/// The message to put beside the code where the response has room for one.
pub fn error_message(e: &CoreError) -> Option<kafka_protocol::protocol::StrBytes> {
    Some(kafka_protocol::protocol::StrBytes::from_string(
        e.to_string(),
    ))
}

/// The Kafka error code for a group coordinator error.
pub fn group_error_code(e: &ferry_core::group::GroupError) -> i16 {
    counted(group_error(e)).code()
}

/// The Kafka error for a group coordinator error.
pub fn group_error(e: &ferry_core::group::GroupError) -> ResponseError {
    use ferry_core::group::GroupError;
    match e {
        GroupError::CoordinatorNotAvailable => ResponseError::CoordinatorNotAvailable,
        GroupError::NotCoordinator => ResponseError::NotCoordinator,
        GroupError::InvalidGroupId => ResponseError::InvalidGroupId,
        GroupError::InvalidSessionTimeout => ResponseError::InvalidSessionTimeout,
        GroupError::InconsistentGroupProtocol => ResponseError::InconsistentGroupProtocol,
        GroupError::MemberIdRequired => ResponseError::MemberIdRequired,
        GroupError::UnknownMemberId => ResponseError::UnknownMemberId,
        GroupError::IllegalGeneration => ResponseError::IllegalGeneration,
        GroupError::RebalanceInProgress => ResponseError::RebalanceInProgress,
        GroupError::FencedInstanceId => ResponseError::FencedInstanceId,
        GroupError::GroupMaxSizeReached => ResponseError::GroupMaxSizeReached,
        GroupError::NonEmptyGroup => ResponseError::NonEmptyGroup,
        GroupError::GroupIdNotFound => ResponseError::GroupIdNotFound,
        GroupError::GroupSubscribedToTopic => ResponseError::GroupSubscribedToTopic,
        GroupError::OffsetMetadataTooLarge => ResponseError::OffsetMetadataTooLarge,
        GroupError::UnknownTopicOrPartition => ResponseError::UnknownTopicOrPartition,
        GroupError::InvalidRequest(_) => ResponseError::InvalidRequest,
        // A commit that could not be made durable: the client retries after finding
        // the coordinator again, as it does after a Kafka coordinator failover.
        GroupError::Storage(_) => ResponseError::CoordinatorNotAvailable,
        GroupError::FencedMemberEpoch(_) => ResponseError::FencedMemberEpoch,
        GroupError::StaleMemberEpoch => ResponseError::StaleMemberEpoch,
        GroupError::UnsupportedAssignor(_) => ResponseError::UnsupportedAssignor,
        GroupError::UnreleasedInstanceId(_) => ResponseError::UnreleasedInstanceId,
    }
}

/// The Kafka error for a transaction coordinator error. `fenced_supported`: the
/// request version knows PRODUCER_FENCED (KIP-588); older ones get
/// INVALID_PRODUCER_EPOCH, as Kafka answers them.
pub fn txn_error(e: &ferry_core::txn::TxnError, fenced_supported: bool) -> ResponseError {
    use ferry_core::txn::TxnError;
    match e {
        TxnError::InvalidProducerIdMapping => ResponseError::InvalidProducerIdMapping,
        TxnError::ProducerFenced if fenced_supported => ResponseError::ProducerFenced,
        TxnError::ProducerFenced => ResponseError::InvalidProducerEpoch,
        TxnError::ConcurrentTransactions => ResponseError::ConcurrentTransactions,
        TxnError::InvalidTxnState(_) => ResponseError::InvalidTxnState,
        TxnError::InvalidTransactionTimeout => ResponseError::InvalidTransactionTimeout,
        TxnError::UnknownTopicOrPartition => ResponseError::UnknownTopicOrPartition,
        TxnError::OperationNotAttempted => ResponseError::OperationNotAttempted,
        TxnError::InvalidRequest(_) => ResponseError::InvalidRequest,
        TxnError::NotCoordinator => ResponseError::NotCoordinator,
        // The client finds the coordinator again and retries.
        TxnError::CoordinatorNotAvailable | TxnError::Storage(_) => {
            ResponseError::CoordinatorNotAvailable
        }
    }
}
