//! ListTransactions: transactional ids, filtered by state, producer id and (v1+)
//! how long the transaction has been open. v2's id pattern is not offered.

use kafka_protocol::messages::list_transactions_response::TransactionState;
use kafka_protocol::messages::{
    ListTransactionsRequest, ListTransactionsResponse, ProducerId, TransactionalId,
};
use kafka_protocol::protocol::StrBytes;

use crate::dispatch::RequestContext;

const STATES: [&str; 8] = [
    "Empty",
    "Ongoing",
    "PrepareCommit",
    "PrepareAbort",
    "CompleteCommit",
    "CompleteAbort",
    "Dead",
    "PrepareEpochFence",
];

pub async fn handle(
    ctx: &RequestContext,
    version: i16,
    req: ListTransactionsRequest,
) -> ListTransactionsResponse {
    let states: Vec<String> = req
        .state_filters
        .iter()
        .map(|s| s.as_str().to_string())
        .collect();
    let unknown: Vec<StrBytes> = req
        .state_filters
        .iter()
        .filter(|s| !STATES.contains(&s.as_str()))
        .cloned()
        .collect();
    let producer_ids: Vec<i64> = req.producer_id_filters.iter().map(|p| p.0).collect();
    let min_duration = if version >= 1 {
        req.duration_filter
    } else {
        -1
    };
    let txns = ctx
        .broker
        .txns()
        .list(&states, &producer_ids, min_duration)
        .into_iter()
        .map(|m| {
            TransactionState::default()
                .with_transactional_id(TransactionalId(StrBytes::from_string(m.transactional_id)))
                .with_producer_id(ProducerId(m.producer_id))
                .with_transaction_state(StrBytes::from_static_str(m.state.name()))
        })
        .collect();
    ListTransactionsResponse::default()
        .with_unknown_state_filters(unknown)
        .with_transaction_states(txns)
}
