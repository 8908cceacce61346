//! Fetch: stored batches, as stored, up to the high watermark (read_committed:
//! up to the last stable offset, with the aborted transactions in that range).
//!
//! A fetch that finds fewer than `min_bytes` waits, up to `max_wait_ms`, for the
//! high watermark of any of its partitions to move (a notification, not a sleep),
//! then reads again. Byte limits are per partition and per response, and the
//! first batch is always returned whole so a consumer can make progress past a
//! batch larger than its limits. The bytes read are reserved from the response
//! memory budget (budget.rs) until the response is written.
//!
//! A fetch with a replica id (`replica_id`, v15+ `replica_state.replica_id`) of 0
//! or more comes from a follower replicating the partition:
//!
//! ```text
//!  follower fetch ──► epoch and leader checks ──► diverging epoch? ──► answer: truncate to it
//!                                                      │ no
//!                     record_follower_fetch(offset) ◄──┘   (the HW may move; ISR proposal)
//!                     read up to the log end, not the HW; wait on log-end changes, and
//!                     answer early when the HW moved, so followers learn it soon
//! ```
//!
//! Replication throttling (ferry-core's quota.rs): a follower fetch of a
//! partition listed in `leader.replication.throttled.replicas` for this broker
//! gets no records while that follower is out of the ISR and the leader's
//! measured rate is over `leader.replication.throttled.rate`; what such
//! partitions send counts toward the rate.
//!
//! Consumers and followers alike get NOT_LEADER_OR_FOLLOWER from a replica that
//! does not lead the partition (ferry does not serve consumers from followers).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ferry_core::quota::{self, Throttle};
use ferry_core::{CoreError, Isolation, Partition, TopicPartition};
use futures_util::future::select_all;
use kafka_protocol::messages::fetch_response::{
    AbortedTransaction, EpochEndOffset, FetchableTopicResponse, PartitionData,
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
    /// v12+: the epoch of the last batch the fetcher holds (-1: not given).
    last_fetched_epoch: i32,
    /// Follower fetches: what the leader made of the fetch when it arrived.
    follower: Option<FollowerStart>,
    /// Follower fetches of a partition throttled on this leader: the
    /// follower's id and the cap.
    throttle: Option<(i32, Throttle)>,
}

/// The leader's first look at one partition of a follower fetch.
enum FollowerStart {
    /// The follower's position was recorded: read up to the log end.
    Read,
    /// The follower's log diverges from the leader's: it truncates to this end
    /// offset of this epoch before fetching again.
    Diverging {
        epoch: i32,
        end_offset: i64,
    },
    Failed(CoreError),
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
    let replica_id = if version >= 15 {
        req.replica_state.replica_id.0
    } else {
        req.replica_id.0
    };
    // -1 is a consumer; other negative ids (Kafka's debugging consumer) read as one.
    let follower_id = (replica_id >= 0).then_some(replica_id);
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
                last_fetched_epoch: if version >= 12 {
                    p.last_fetched_epoch
                } else {
                    -1
                },
                follower: None,
                throttle: None,
            });
        }
    }
    // A follower's position is recorded once per request, as the fetch arrives
    // (Kafka's `updateFollowerFetchState`), not at every read of the long poll.
    let mut hw_at_start = Vec::new();
    if let Some(id) = follower_id {
        let now_ms = broker.now_ms();
        let image = broker.image();
        // The broker config is assembled only when a partition is throttled.
        let mut throttle = None;
        for w in wanted.iter_mut() {
            w.follower = Some(start_follower_fetch(ctx, w, id, now_ms));
            let listed = image.topic(&w.tp.topic).is_some_and(|t| {
                quota::is_throttled(
                    &t.configs,
                    quota::LEADER_REPLICAS,
                    w.tp.partition,
                    broker.node_id(),
                )
            });
            if listed {
                let cap = *throttle.get_or_insert_with(|| Throttle::leader(&broker.config()));
                w.throttle = Some((id, cap));
            }
        }
        hw_at_start = wanted
            .iter()
            .map(|w| broker.partition(&w.tp).map(|p| p.high_watermark()))
            .collect();
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
        // Consumers wait for the high watermark; followers read past it, so they
        // wait for appends, and for the HW too (they answer early when it moves).
        let mut waits: Vec<_> = partitions
            .iter()
            .flat_map(|p| {
                let log_end = follower_id.map(|_| Box::pin(p.log_end_changed()));
                std::iter::once(Box::pin(p.hw_changed())).chain(log_end)
            })
            .collect();
        for w in waits.iter_mut() {
            w.as_mut().enable();
        }
        // The response's bytes come out of the response memory budget; a fetch
        // that waits for data gives its reservation back meanwhile.
        let mut reservation = ctx.responses.reserve(response_max).await;
        let (results, bytes, respond_now) = read_all(ctx, &wanted, isolation, reservation.bytes());
        let hw_moved = follower_id.is_some()
            && wanted
                .iter()
                .zip(&hw_at_start)
                .any(|(w, hw)| broker.partition(&w.tp).map(|p| p.high_watermark()) != *hw);
        if bytes >= min_bytes
            || respond_now
            || hw_moved
            || waits.is_empty()
            || tokio::time::Instant::now() >= deadline
        {
            reservation.shrink_to(bytes);
            ctx.hold(reservation);
            record_throttled(&wanted, &results);
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
                record_throttled(&wanted, &results);
                return build_response(version, results);
            }
        }
    }
}

/// Counts what throttled partitions send toward the leader's replication rate
/// (in sync or not, as Kafka counts them).
fn record_throttled(wanted: &[Wanted], results: &[(TopicPartition, PartitionData)]) {
    for (w, (_, data)) in wanted.iter().zip(results) {
        if let Some((_, throttle)) = &w.throttle {
            let bytes = data.records.as_ref().map_or(0, |r| r.len());
            quota::leader().record(throttle, bytes as u64);
        }
    }
}

/// Kafka's `shouldLeaderThrottle`: a throttled partition whose follower is out
/// of the ISR while the leader's rate is over the cap.
fn leader_throttled(p: &Partition, w: &Wanted) -> bool {
    let Some((follower_id, throttle)) = &w.throttle else {
        return false;
    };
    if throttle.is_unlimited() || p.isr().contains(follower_id) {
        return false;
    }
    if quota::leader().is_exceeded(throttle) {
        quota::leader().count_throttled();
        return true;
    }
    false
}

/// Checks a follower's fetch of one partition and records its position.
fn start_follower_fetch(
    ctx: &RequestContext,
    w: &Wanted,
    replica_id: i32,
    now_ms: i64,
) -> FollowerStart {
    if w.tp.topic.is_empty() {
        return FollowerStart::Failed(CoreError::UnknownTopicId);
    }
    let Some(p) = ctx.broker.partition(&w.tp) else {
        return FollowerStart::Failed(CoreError::UnknownTopicOrPartition);
    };
    if let Err(e) = check_leader(&p, w) {
        return FollowerStart::Failed(e);
    }
    // Kafka's `validateFetchOffsetAndMaybeGetDivergingEpoch`: a follower whose last
    // epoch ended earlier here (or that this leader never had) truncates first,
    // and its position is not recorded.
    if w.last_fetched_epoch >= 0 {
        if let Some((epoch, end_offset)) = p.diverging_epoch(w.last_fetched_epoch, w.offset) {
            return FollowerStart::Diverging { epoch, end_offset };
        }
    }
    match p.record_follower_fetch(replica_id, w.offset, now_ms) {
        Ok(outcome) => {
            if let Some(isr) = outcome.propose_isr {
                isr_expansion_proposed(ctx, &p, replica_id, isr);
            }
            FollowerStart::Read
        }
        // The leader does not know this replica. With an epoch in the request the
        // follower may be ahead of this leader's assignment (a reassignment in
        // progress): it retries on UNKNOWN_LEADER_EPOCH, as Kafka answers.
        Err(CoreError::NotLeaderOrFollower) if p.is_leader() && w.current_leader_epoch >= 0 => {
            FollowerStart::Failed(CoreError::UnknownLeaderEpoch)
        }
        Err(e) => FollowerStart::Failed(e),
    }
}

/// A follower caught up: the controller is asked to add it to the ISR
/// (AlterPartition); the change comes back with the metadata.
fn isr_expansion_proposed(
    ctx: &RequestContext,
    p: &Arc<Partition>,
    replica_id: i32,
    isr: Vec<i32>,
) {
    tracing::debug!(partition = %p.tp, replica_id, ?isr, leader_epoch = p.leader_epoch(), "follower caught up: ISR expansion proposed");
    ctx.broker.propose_isr(p, isr);
}

/// Kafka's order: the caller's leader epoch first (FENCED_LEADER_EPOCH /
/// UNKNOWN_LEADER_EPOCH), then whether this replica leads.
fn check_leader(p: &Partition, w: &Wanted) -> Result<(), CoreError> {
    let epoch = p.leader_epoch();
    if w.current_leader_epoch >= 0 && w.current_leader_epoch != epoch {
        return Err(if w.current_leader_epoch < epoch {
            CoreError::FencedLeaderEpoch
        } else {
            CoreError::UnknownLeaderEpoch
        });
    }
    if !p.is_leader() {
        return Err(CoreError::NotLeaderOrFollower);
    }
    Ok(())
}

/// Reads every wanted partition. Also returns the bytes read and whether the
/// fetch must be answered now (an error, or a follower that must truncate).
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
        errors |= matches!(w.follower, Some(FollowerStart::Diverging { .. }));
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
    match &w.follower {
        Some(FollowerStart::Failed(e)) => return Err(e.clone()),
        Some(FollowerStart::Diverging { epoch, end_offset }) => {
            return Ok(
                partition_data(w, &p, Bytes::new(), None).with_diverging_epoch(
                    EpochEndOffset::default()
                        .with_epoch(*epoch)
                        .with_end_offset(*end_offset),
                ),
            );
        }
        Some(FollowerStart::Read) | None => {}
    }
    // At every read: leadership may move during a long poll.
    check_leader(&p, w)?;
    // The response limit may cut a partition to nothing, except the first data of
    // the response, which is returned whole.
    let limit = w.partition_max_bytes.min(remaining);
    let throttled = leader_throttled(&p, w);
    let (records, next_offset) = if (limit == 0 && !first) || throttled {
        (Bytes::new(), w.offset)
    } else if w.follower.is_some() {
        let read = p.read_for_follower(w.offset, limit.max(1))?;
        (read.bytes, read.next_offset)
    } else {
        let read = p.read(w.offset, limit.max(1), isolation)?;
        (read.bytes, read.next_offset)
    };
    if w.follower.is_some() {
        // Followers copy every batch, transactional or not, as it is stored.
        return Ok(partition_data(w, &p, records, None));
    }
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
    Ok(partition_data(w, &p, records, aborted))
}

fn partition_data(
    w: &Wanted,
    p: &Partition,
    records: Bytes,
    aborted: Option<Vec<AbortedTransaction>>,
) -> PartitionData {
    PartitionData::default()
        .with_partition_index(w.tp.partition)
        .with_high_watermark(p.high_watermark())
        .with_last_stable_offset(p.last_stable_offset())
        .with_log_start_offset(p.log_start_offset())
        .with_aborted_transactions(aborted)
        .with_preferred_read_replica(BrokerId(-1))
        .with_records(Some(records))
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};

    use super::*;
    use crate::handlers::create_topics::test_support::*;

    const V: i16 = 12;

    struct Fetch {
        replica_id: i32,
        offset: i64,
        current_leader_epoch: i32,
        last_fetched_epoch: i32,
        min_bytes: i32,
        max_wait_ms: i32,
    }

    impl Default for Fetch {
        fn default() -> Self {
            Fetch {
                replica_id: -1,
                offset: 0,
                current_leader_epoch: -1,
                last_fetched_epoch: -1,
                min_bytes: 0,
                max_wait_ms: 0,
            }
        }
    }

    fn request(topic: &str, f: &Fetch) -> FetchRequest {
        FetchRequest::default()
            .with_replica_id(BrokerId(f.replica_id))
            .with_max_wait_ms(f.max_wait_ms)
            .with_min_bytes(f.min_bytes)
            .with_max_bytes(1 << 20)
            .with_topics(vec![FetchTopic::default()
                .with_topic(topic_name(topic))
                .with_partitions(vec![FetchPartition::default()
                    .with_partition(0)
                    .with_fetch_offset(f.offset)
                    .with_current_leader_epoch(f.current_leader_epoch)
                    .with_last_fetched_epoch(f.last_fetched_epoch)
                    .with_partition_max_bytes(1 << 20)])])
    }

    async fn fetch(ctx: &RequestContext, topic: &str, f: Fetch) -> PartitionData {
        let resp = handle(ctx, V, request(topic, &f)).await;
        assert_encodes(&resp, V);
        resp.responses
            .into_iter()
            .flat_map(|t| t.partitions)
            .next()
            .expect("one partition")
    }

    fn record_count(data: &PartitionData) -> i64 {
        ferry_core::metrics::count_records(data.records.as_ref().expect("records")) as i64
    }

    /// A topic whose partition 0 this broker (node 1) leads at `epoch` with a
    /// follower, node 2, in the ISR.
    async fn replicated(ctx: &RequestContext, topic: &str, epoch: i32) -> Arc<Partition> {
        create_topics_ok(ctx, vec![creatable(topic, 1, &[])]).await;
        let p = ctx
            .broker
            .partition(&TopicPartition::new(topic, 0))
            .expect("partition");
        p.become_leader(1, epoch, vec![1, 2], vec![1, 2], ctx.broker.now_ms())
            .expect("become leader");
        p
    }

    #[tokio::test]
    async fn a_follower_reads_past_the_high_watermark_and_moves_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ctx = context(dir.path());
        let p = replicated(&ctx, "repl", 0).await;
        p.append(batch(3), ctx.broker.now_ms()).expect("append");

        // Consumers see nothing until the follower has the records.
        let consumer = fetch(&ctx, "repl", Fetch::default()).await;
        assert_eq!((consumer.error_code, consumer.high_watermark), (0, 0));
        assert_eq!(record_count(&consumer), 0);

        let follower = Fetch {
            replica_id: 2,
            current_leader_epoch: 0,
            ..Fetch::default()
        };
        let got = fetch(&ctx, "repl", follower).await;
        assert_eq!((got.error_code, got.high_watermark), (0, 0));
        assert_eq!(record_count(&got), 3);
        assert_eq!(got.log_start_offset, 0);

        // Its next fetch says it has them: the HW moves, consumers get them.
        let next = Fetch {
            replica_id: 2,
            offset: 3,
            ..Fetch::default()
        };
        let got = fetch(&ctx, "repl", next).await;
        assert_eq!((got.error_code, got.high_watermark), (0, 3));
        assert_eq!(record_count(&got), 0);
        let consumer = fetch(&ctx, "repl", Fetch::default()).await;
        assert_eq!(record_count(&consumer), 3);
    }

    #[tokio::test]
    async fn a_follower_long_poll_wakes_on_an_append() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ctx = context(dir.path());
        let p = replicated(&ctx, "poll", 0).await;
        let waiting = {
            let ctx = ctx.clone();
            tokio::spawn(async move {
                let f = Fetch {
                    replica_id: 2,
                    min_bytes: 1,
                    max_wait_ms: 60_000,
                    ..Fetch::default()
                };
                fetch(&ctx, "poll", f).await
            })
        };
        // Appends until the waiting fetch has subscribed and seen one.
        let got = loop {
            p.append(batch(1), ctx.broker.now_ms()).expect("append");
            if waiting.is_finished() {
                break waiting.await.expect("join");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(got.error_code, 0);
        assert!(record_count(&got) >= 1);
        // The HW did not move: the follower had not confirmed anything yet.
        assert_eq!(got.high_watermark, 0);
    }

    #[tokio::test]
    async fn epochs_leadership_and_unknown_replicas_get_kafkas_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ctx = context(dir.path());
        let p = replicated(&ctx, "errs", 3).await;
        let code = |e: ResponseError| e.code();
        for (current_leader_epoch, expected) in [
            (2, ResponseError::FencedLeaderEpoch),
            (4, ResponseError::UnknownLeaderEpoch),
        ] {
            for replica_id in [-1, 2] {
                let f = Fetch {
                    replica_id,
                    current_leader_epoch,
                    ..Fetch::default()
                };
                assert_eq!(fetch(&ctx, "errs", f).await.error_code, code(expected));
            }
        }
        // A replica this leader does not know: with an epoch, it retries later.
        let stranger = Fetch {
            replica_id: 9,
            current_leader_epoch: 3,
            ..Fetch::default()
        };
        assert_eq!(
            fetch(&ctx, "errs", stranger).await.error_code,
            code(ResponseError::UnknownLeaderEpoch)
        );
        let stranger = Fetch {
            replica_id: 9,
            ..Fetch::default()
        };
        assert_eq!(
            fetch(&ctx, "errs", stranger).await.error_code,
            code(ResponseError::NotLeaderOrFollower)
        );
        // A follower position this leader does not have.
        let ahead = Fetch {
            replica_id: 2,
            offset: 10,
            ..Fetch::default()
        };
        assert_eq!(
            fetch(&ctx, "errs", ahead).await.error_code,
            code(ResponseError::OffsetOutOfRange)
        );

        // Once this broker follows, nobody fetches from it.
        p.become_follower(4, 2).expect("become follower");
        for replica_id in [-1, 3] {
            let f = Fetch {
                replica_id,
                ..Fetch::default()
            };
            assert_eq!(
                fetch(&ctx, "errs", f).await.error_code,
                code(ResponseError::NotLeaderOrFollower)
            );
        }
    }

    #[tokio::test]
    async fn a_throttled_follower_out_of_the_isr_is_held_back_once_over_the_rate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let configs = [
            ("leader.replication.throttled.rate", "10"),
            ("replication.quota.window.num", "2"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let ctx = context_with(dir.path(), configs);
        let topic = "throttled";
        create_topics_ok(
            &ctx,
            vec![creatable(
                topic,
                1,
                &[("leader.replication.throttled.replicas", "0:1")],
            )],
        )
        .await;
        let p = ctx
            .broker
            .partition(&TopicPartition::new(topic, 0))
            .expect("partition");
        // Node 2 is being added: assigned, not in the ISR.
        p.become_leader(1, 0, vec![1, 2], vec![1], ctx.broker.now_ms())
            .expect("become leader");
        p.append(batch(3), ctx.broker.now_ms()).expect("append");
        let recorded = quota::leader().recorded_bytes();
        let follower = |offset| Fetch {
            replica_id: 2,
            offset,
            current_leader_epoch: 0,
            ..Fetch::default()
        };

        // Under the rate: the first fetch gets the records, and counts them.
        let got = fetch(&ctx, topic, follower(0)).await;
        assert_eq!(record_count(&got), 3);
        let sent = got.records.as_ref().map_or(0, |r| r.len()) as u64;
        assert!(quota::leader().recorded_bytes() >= recorded + sent);

        // Now over 10 bytes/s: nothing more for the out-of-sync follower, no error.
        p.append(batch(2), ctx.broker.now_ms()).expect("append");
        let held = quota::leader().throttled_count();
        let got = fetch(&ctx, topic, follower(3)).await;
        assert_eq!((got.error_code, record_count(&got)), (0, 0));
        assert!(quota::leader().throttled_count() > held);
        // Consumers are not replicas: never throttled (the ISR is the leader
        // alone, so all five are committed).
        let consumer = fetch(&ctx, topic, Fetch::default()).await;
        assert_eq!(record_count(&consumer), 5);

        // In the ISR, a follower is never held back.
        p.become_leader(1, 0, vec![1, 2], vec![1, 2], ctx.broker.now_ms())
            .expect("become leader");
        let got = fetch(&ctx, topic, follower(3)).await;
        assert_eq!(record_count(&got), 2);
    }

    #[tokio::test]
    async fn a_follower_with_a_divergent_epoch_is_told_where_to_truncate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ctx = context(dir.path());
        let p = replicated(&ctx, "div", 0).await;
        p.append(batch(2), ctx.broker.now_ms()).expect("append");
        p.become_leader(1, 2, vec![1, 2], vec![1, 2], ctx.broker.now_ms())
            .expect("become leader");
        p.append(batch(3), ctx.broker.now_ms()).expect("append");

        // The follower's last batch is of epoch 1, which this leader never had:
        // epoch 0, which ended at 2, is where their logs agree.
        let f = Fetch {
            replica_id: 2,
            offset: 4,
            last_fetched_epoch: 1,
            ..Fetch::default()
        };
        let got = fetch(&ctx, "div", f).await;
        assert_eq!(got.error_code, 0);
        assert_eq!(
            (got.diverging_epoch.epoch, got.diverging_epoch.end_offset),
            (0, 2)
        );
        assert_eq!(record_count(&got), 0);
        // Not recorded: the HW waits for the follower's real position.
        assert_eq!(p.high_watermark(), 0);

        // After truncating to 2 it fetches from there with epoch 0: no divergence.
        let f = Fetch {
            replica_id: 2,
            offset: 2,
            last_fetched_epoch: 0,
            ..Fetch::default()
        };
        let got = fetch(&ctx, "div", f).await;
        assert_eq!(got.diverging_epoch.epoch, -1);
        assert_eq!(record_count(&got), 3);
        assert_eq!(got.high_watermark, 2);
    }
}
