//! DescribeTransactions: state, producer, timeout and partitions of transactional ids.

use kafka_protocol::messages::describe_transactions_response::{TopicData, TransactionState};
use kafka_protocol::messages::{
    DescribeTransactionsRequest, DescribeTransactionsResponse, ProducerId, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use crate::dispatch::RequestContext;

pub async fn handle(
    ctx: &RequestContext,
    _version: i16,
    req: DescribeTransactionsRequest,
) -> DescribeTransactionsResponse {
    let states = req
        .transactional_ids
        .into_iter()
        .map(|id| match ctx.broker.txns().describe(id.0.as_str()) {
            None => TransactionState::default()
                .with_transactional_id(id)
                .with_error_code(ResponseError::TransactionalIdNotFound.code())
                .with_transaction_state(StrBytes::from_static_str(""))
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1)
                .with_transaction_start_time_ms(-1),
            Some(m) => {
                let mut topics: Vec<TopicData> = Vec::new();
                for tp in &m.partitions {
                    match topics.last_mut() {
                        Some(t) if t.topic.0.as_str() == tp.topic => {
                            t.partitions.push(tp.partition)
                        }
                        _ => topics.push(
                            TopicData::default()
                                .with_topic(TopicName(StrBytes::from_string(tp.topic.clone())))
                                .with_partitions(vec![tp.partition]),
                        ),
                    }
                }
                TransactionState::default()
                    .with_transactional_id(id)
                    .with_transaction_state(StrBytes::from_static_str(m.state.name()))
                    .with_transaction_timeout_ms(m.timeout_ms)
                    .with_transaction_start_time_ms(m.start_ms)
                    .with_producer_id(ProducerId(m.producer_id))
                    .with_producer_epoch(m.producer_epoch)
                    .with_topics(topics)
            }
        })
        .collect();
    DescribeTransactionsResponse::default().with_transaction_states(states)
}
