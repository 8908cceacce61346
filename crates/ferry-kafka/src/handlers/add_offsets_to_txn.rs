//! AddOffsetsToTxn: adds the group's `__consumer_offsets` partition to the
//! transaction, so its offsets are committed or dropped with it.

use kafka_protocol::messages::{AddOffsetsToTxnRequest, AddOffsetsToTxnResponse};

use crate::dispatch::RequestContext;
use crate::errors::txn_error;

pub async fn handle(
    ctx: &RequestContext,
    version: i16,
    req: AddOffsetsToTxnRequest,
) -> AddOffsetsToTxnResponse {
    let result = ctx
        .broker
        .txns()
        .add_offsets(
            req.transactional_id.0.as_str(),
            req.producer_id.0,
            req.producer_epoch,
            req.group_id.0.as_str(),
        )
        .await;
    match result {
        Ok(()) => AddOffsetsToTxnResponse::default(),
        Err(e) => {
            tracing::debug!(peer = %ctx.peer, error = %e, "AddOffsetsToTxn refused");
            AddOffsetsToTxnResponse::default().with_error_code(txn_error(&e, version >= 2).code())
        }
    }
}
