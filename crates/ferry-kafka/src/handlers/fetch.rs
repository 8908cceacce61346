//! Fetch: stored batches, as stored, up to the high watermark (read_committed:
//! up to the last stable offset, with the aborted transactions in that range).
//!
//! A fetch that finds fewer than `min_bytes` waits, up to `max_wait_ms`, for the
//! high watermark of any of its partitions to move (a notification, not a sleep),
//! then reads again. Byte limits are per partition and per response, and the
//! first batch is always returned whole so a consumer can make progress past a
//! batch larger than its limits. The bytes read are reserved from the response
//! memory budget (budget.rs) until the response is written.

use std::time::Duration;

use bytes::Bytes;
use ferry_core::{CoreError, Isolation, TopicPartition};
use futures_util::future::select_all;
use kafka_protocol::messages::fetch_response::{
    AbortedTransaction, FetchableTopicResponse, PartitionData,
};
use kafka_protocol::messages::{BrokerId, FetchRequest, FetchResponse, ProducerId, TopicName};
use kafka_protocol::ResponseError;

use crate::dispatch::RequestContext;
use crate::errors::error_code;

/// Longest long poll honoured; clients ask for 500 ms typically.
const MAX_WAIT_MS_MAX: i32 = 60_000;

struct Wanted {
    tp: TopicPartition,
    offset: i64,
    partition_max_bytes: usize,
    current_leader_epoch: i32,
}

pub async fn handle(ctx: &RequestContext, version: i16, req: FetchRequest) -> FetchResponse {
    let broker = &ctx.broker;
    if req.session_id != 0 {
        // ferry hands out no fetch sessions (KIP-227), so clients never hold one.
        return FetchResponse::default()
            .with_error_code(ResponseError::FetchSessionIdNotFound.code());
    }
    let isolation = if req.isolation_level == 1 {
        Isolation::ReadCommitted
    } else {
        Isolation::ReadUncommitted
    };
    let response_max = if version >= 3 {
        req.max_bytes.max(0) as usize
    } else {
        usize::MAX
    };
    let response_max = response_max.min(broker.config().long("fetch.max.bytes").max(1024) as usize);
    let mut wanted = Vec::new();
    for t in &req.topics {
        let name = if version >= 13 {
            broker
                .image()
                .topic_by_id(&t.topic_id)
                .map(|t| t.name.clone())
                .unwrap_or_default()
        } else {
            t.topic.0.as_str().to_string()
        };
        for p in &t.partitions {
            wanted.push(Wanted {
                tp: TopicPartition::new(name.clone(), p.partition),
                offset: p.fetch_offset,
                partition_max_bytes: p.partition_max_bytes.max(0) as usize,
                current_leader_epoch: if version >= 9 {
                    p.current_leader_epoch
                } else {
                    -1
                },
            });
        }
    }
    let deadline = tokio::time::Instant::now()
        + Duration::from_millis(req.max_wait_ms.clamp(0, MAX_WAIT_MS_MAX) as u64);
    let min_bytes = req.min_bytes.max(0) as usize;
    loop {
        // Subscribe before reading so an append between the read and the wait is not missed.
        let partitions: Vec<_> = wanted
            .iter()
            .filter_map(|w| broker.partition(&w.tp))
            .collect();
        let mut waits: Vec<_> = partitions
            .iter()
            .map(|p| Box::pin(p.hw_changed()))
            .collect();
        for w in waits.iter_mut() {
            w.as_mut().enable();
        }
        // The response's bytes come out of the response memory budget; a fetch
        // that waits for data gives its reservation back meanwhile.
        let mut reservation = ctx.responses.reserve(response_max).await;
        let (results, bytes, errors) = read_all(ctx, &wanted, isolation, reservation.bytes());
        if bytes >= min_bytes
            || errors
            || waits.is_empty()
            || tokio::time::Instant::now() >= deadline
        {
            reservation.shrink_to(bytes);
            ctx.hold(reservation);
            return build_response(version, results);
        }
        drop((results, reservation));
        tokio::select! {
            _ = select_all(waits) => {}
            _ = tokio::time::sleep_until(deadline) => {
                let mut reservation = ctx.responses.reserve(response_max).await;
                let (results, bytes, _) = read_all(ctx, &wanted, isolation, reservation.bytes());
                reservation.shrink_to(bytes);
                ctx.hold(reservation);
                return build_response(version, results);
            }
        }
    }
}

fn read_all(
    ctx: &RequestContext,
    wanted: &[Wanted],
    isolation: Isolation,
    response_max: usize,
) -> (Vec<(TopicPartition, PartitionData)>, usize, bool) {
    let mut total = 0usize;
    let mut errors = false;
    let mut out = Vec::with_capacity(wanted.len());
    for w in wanted {
        let data = match read_one(
            ctx,
            w,
            isolation,
            response_max.saturating_sub(total),
            total == 0,
        ) {
            Ok(d) => d,
            Err(e) => {
                errors = true;
                let p = ctx.broker.partition(&w.tp);
                PartitionData::default()
                    .with_partition_index(w.tp.partition)
                    .with_error_code(error_code(&e))
                    .with_high_watermark(p.as_ref().map(|p| p.high_watermark()).unwrap_or(-1))
                    .with_last_stable_offset(
                        p.as_ref().map(|p| p.last_stable_offset()).unwrap_or(-1),
                    )
                    .with_log_start_offset(p.as_ref().map(|p| p.log_start_offset()).unwrap_or(-1))
                    .with_preferred_read_replica(BrokerId(-1))
                    .with_records(Some(Bytes::new()))
            }
        };
        total += data.records.as_ref().map(|r| r.len()).unwrap_or(0);
        out.push((w.tp.clone(), data));
    }
    (out, total, errors)
}

fn read_one(
    ctx: &RequestContext,
    w: &Wanted,
    isolation: Isolation,
    remaining: usize,
    first: bool,
) -> Result<PartitionData, CoreError> {
    if w.tp.topic.is_empty() {
        return Err(CoreError::UnknownTopicId);
    }
    let p = ctx
        .broker
        .partition(&w.tp)
        .ok_or(CoreError::UnknownTopicOrPartition)?;
    let epoch = p.leader_epoch();
    if w.current_leader_epoch >= 0 && w.current_leader_epoch != epoch {
        return Err(if w.current_leader_epoch < epoch {
            CoreError::FencedLeaderEpoch
        } else {
            CoreError::UnknownLeaderEpoch
        });
    }
    // The response limit may cut a partition to nothing, except the first data of
    // the response, which is returned whole.
    let limit = w.partition_max_bytes.min(remaining);
    let (records, next_offset) = if limit == 0 && !first {
        (Bytes::new(), w.offset)
    } else {
        let read = p.read(w.offset, limit.max(1), isolation)?;
        (read.bytes, read.next_offset)
    };
    // read_committed clients drop the records of aborted transactions that
    // overlap what they got (the data ends below the last stable offset).
    let aborted = if isolation == Isolation::ReadCommitted {
        let list = if records.is_empty() {
            Vec::new()
        } else {
            p.aborted_transactions(w.offset, next_offset)
        };
        Some(
            list.into_iter()
                .map(|a| {
                    AbortedTransaction::default()
                        .with_producer_id(ProducerId(a.producer_id))
                        .with_first_offset(a.first_offset)
                })
                .collect(),
        )
    } else {
        None
    };
    Ok(PartitionData::default()
        .with_partition_index(w.tp.partition)
        .with_high_watermark(p.high_watermark())
        .with_last_stable_offset(p.last_stable_offset())
        .with_log_start_offset(p.log_start_offset())
        .with_aborted_transactions(aborted)
        .with_preferred_read_replica(BrokerId(-1))
        .with_records(Some(records)))
}

fn build_response(version: i16, results: Vec<(TopicPartition, PartitionData)>) -> FetchResponse {
    for (tp, records) in results
        .iter()
        .filter_map(|(tp, d)| Some((tp, d.records.as_ref()?)))
    {
        ferry_core::metrics::metrics().fetched(
            &tp.topic,
            records.len() as u64,
            ferry_core::metrics::count_records(records),
        );
    }
    let mut topics: Vec<FetchableTopicResponse> = Vec::new();
    for (tp, data) in results {
        match topics.last_mut() {
            Some(t) if t.topic.0.as_str() == tp.topic => t.partitions.push(data),
            _ => topics.push(
                FetchableTopicResponse::default()
                    .with_topic(TopicName(kafka_protocol::protocol::StrBytes::from_string(
                        tp.topic.clone(),
                    )))
                    .with_partitions(vec![data]),
            ),
        }
    }
    let _ = version;
    FetchResponse::default().with_responses(topics)
}
