//! InitProducerId for idempotent producers: a producer id that was never handed
//! out before (durable across restarts) with epoch 0. Transactional ids need the
//! transaction coordinator, which ferry does not have yet.

use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};
use kafka_protocol::ResponseError;

use crate::dispatch::RequestContext;
use crate::errors::error_code;

pub async fn handle(ctx: &RequestContext, _version: i16, req: InitProducerIdRequest) -> InitProducerIdResponse {
    let refused = |code: i16| InitProducerIdResponse::default().with_error_code(code).with_producer_id(ProducerId(-1)).with_producer_epoch(-1);
    if req.transactional_id.is_some() {
        tracing::warn!(peer = %ctx.peer, client_id = %ctx.client_id, "transactional producers are not supported yet");
        return refused(ResponseError::InvalidRequest.code());
    }
    let broker = ctx.broker.clone();
    match tokio::task::spawn_blocking(move || broker.allocate_producer_id()).await {
        Ok(Ok(id)) => InitProducerIdResponse::default().with_producer_id(ProducerId(id)).with_producer_epoch(0),
        Ok(Err(e)) => refused(error_code(&e)),
        Err(_) => refused(ResponseError::UnknownServerError.code()),
    }
}
