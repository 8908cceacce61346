//! EndTxn: commits or aborts the producer's transaction. Answered once the
//! markers are in every partition of the transaction and the completion is in
//! `__transaction_state`.

use kafka_protocol::messages::{EndTxnRequest, EndTxnResponse, ProducerId};

use crate::dispatch::RequestContext;
use crate::errors::txn_error;

pub async fn handle(ctx: &RequestContext, version: i16, req: EndTxnRequest) -> EndTxnResponse {
    let result = ctx
        .broker
        .txns()
        .end_txn(
            req.transactional_id.0.as_str(),
            req.producer_id.0,
            req.producer_epoch,
            req.committed,
        )
        .await;
    let response = EndTxnResponse::default()
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1);
    match result {
        Ok(()) => response,
        Err(e) => {
            tracing::debug!(peer = %ctx.peer, error = %e, commit = req.committed, "EndTxn refused");
            response.with_error_code(txn_error(&e, version >= 2).code())
        }
    }
}
