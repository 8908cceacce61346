//! InitProducerId. Idempotent producers get a producer id that was never handed
//! out before (durable across restarts) with epoch 0, or, when they send the id
//! and epoch they hold (v3+, KIP-360), an epoch bump. Transactional producers go
//! through the transaction coordinator: the epoch of the transactional id is
//! bumped, fencing older producers, and a transaction they left open is aborted.

use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};

use crate::dispatch::RequestContext;
use crate::errors::txn_error;

pub async fn handle(
    ctx: &RequestContext,
    version: i16,
    req: InitProducerIdRequest,
) -> InitProducerIdResponse {
    let refused = |code: i16| {
        InitProducerIdResponse::default()
            .with_error_code(code)
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1)
    };
    let transactional_id = req
        .transactional_id
        .as_ref()
        .map(|t| t.0.as_str().to_string());
    let expected =
        (version >= 3 && req.producer_id.0 >= 0).then_some((req.producer_id.0, req.producer_epoch));
    let producer_ids_end = ctx.broker.image().producer_ids_end;
    let result = ctx
        .broker
        .txns()
        .init_producer_id(
            transactional_id.as_deref().filter(|t| !t.is_empty()),
            req.transaction_timeout_ms,
            expected,
            producer_ids_end,
        )
        .await;
    match result {
        Ok((id, epoch)) => InitProducerIdResponse::default()
            .with_producer_id(ProducerId(id))
            .with_producer_epoch(epoch),
        Err(e) => {
            tracing::debug!(peer = %ctx.peer, client_id = %ctx.client_id, transactional_id = ?transactional_id, error = %e, "InitProducerId refused");
            refused(txn_error(&e, version >= 4).code())
        }
    }
}
