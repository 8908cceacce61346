//! The leader's view of its followers: Kafka's `Partition`/`Replica` bookkeeping
//! for the in-sync replica set and the high watermark, as a pure state machine.
//!
//! ```text
//!  events in                                   decisions out
//!  on_leader_append(leo)                 ──►  new high watermark?
//!  on_follower_fetch(id, offset, leo, now) ──► new high watermark?, ISR expansion to propose?
//!  maybe_shrink_isr(now, lag)            ──►  ISR shrink to propose?
//!  set_isr(isr) / abort_isr_change()     ──►  new high watermark?
//! ```
//!
//! No I/O and no clock: the caller passes `now_ms` and the leader's log end
//! offset. [`crate::partition::Partition`] owns one tracker while it leads.
//!
//! Rules, as Kafka has them:
//!
//! - The high watermark is the minimum log end offset over the *maximal* ISR (the
//!   committed ISR plus the members of a change the controller has not confirmed
//!   yet), the leader's own log end offset included. A replica proposed for the
//!   ISR therefore holds the high watermark back from the moment it is proposed,
//!   so when the controller confirms it, it already has every record below the
//!   high watermark (the records an `acks=all` producer was told are safe).
//! - The high watermark never goes backwards while this replica leads.
//! - A follower is caught up when its fetch offset reached the leader's log end
//!   offset as it was at its *previous* fetch (Kafka's `lastCaughtUpTimeMs`), or
//!   the current one. An ISR member not caught up within `replica.lag.time.max.ms`
//!   is proposed for removal; the leader is never removed.
//! - A follower outside the ISR is proposed for it once its log end offset is at
//!   or past both the high watermark and the start offset of the leader's epoch.
//! - One ISR change at a time: while a proposal is pending, no other is made. Every
//!   proposal returned must be answered with [`ReplicaTracker::set_isr`] (the
//!   controller confirmed an ISR) or [`ReplicaTracker::abort_isr_change`] (it
//!   refused or the request failed).

/// A log end offset not known yet (the follower has not fetched since this
/// replica became leader).
pub const UNKNOWN_OFFSET: i64 = -1;

/// What the leader knows of one follower.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FollowerState {
    pub replica_id: i32,
    /// The offset of its last fetch: everything below it is in its log.
    pub log_end_offset: i64,
    /// The last time it was known to be caught up (Kafka's `lastCaughtUpTimeMs`).
    pub last_caught_up_time_ms: i64,
    /// The leader's log end offset when it last fetched.
    last_fetch_leader_log_end_offset: i64,
    last_fetch_time_ms: i64,
}

impl FollowerState {
    fn new(replica_id: i32, last_caught_up_time_ms: i64) -> FollowerState {
        FollowerState {
            replica_id,
            log_end_offset: UNKNOWN_OFFSET,
            last_caught_up_time_ms,
            last_fetch_leader_log_end_offset: UNKNOWN_OFFSET,
            last_fetch_time_ms: 0,
        }
    }

    /// Kafka's `Replica.isCaughtUp`.
    fn is_caught_up(&self, leader_log_end_offset: i64, now_ms: i64, lag_time_max_ms: i64) -> bool {
        self.log_end_offset == leader_log_end_offset
            || now_ms.saturating_sub(self.last_caught_up_time_ms) <= lag_time_max_ms
    }
}

/// What a follower's fetch changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FetchDecision {
    /// The new high watermark, if it moved.
    pub high_watermark: Option<i64>,
    /// An ISR with this follower added, to send to the controller.
    pub propose_isr: Option<Vec<i32>>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplicaError {
    #[error("replica {0} is not assigned to this partition")]
    UnknownReplica(i32),
}

/// The leader-side replication state of one partition.
#[derive(Debug, Clone)]
pub struct ReplicaTracker {
    local_id: i32,
    leader_epoch: i32,
    /// The partition epoch (KIP-497) of the state `isr` and `replicas` come
    /// from: what an ISR proposal says it was based on.
    partition_epoch: i32,
    /// The leader's log end offset when its epoch began: a follower below it may
    /// still hold a divergent tail, so it cannot join the ISR yet.
    leader_epoch_start_offset: i64,
    /// The assigned replicas, the leader included.
    replicas: Vec<i32>,
    /// The ISR the controller confirmed. Always holds the leader.
    isr: Vec<i32>,
    /// A change sent to the controller and not answered yet.
    pending_isr: Option<Vec<i32>>,
    leader_log_end_offset: i64,
    high_watermark: i64,
    /// Every replica but the leader, in `replicas` order.
    followers: Vec<FollowerState>,
}

impl ReplicaTracker {
    /// Starts tracking as a newly elected leader: followers' positions are
    /// unknown until they fetch; ISR members count as caught up now.
    ///
    /// The high watermark starts at `high_watermark` (the one this replica had as
    /// a follower) capped at `leader_log_end_offset`, then moves up as the ISR
    /// allows: at once when the leader is the only ISR member.
    pub fn new(
        local_id: i32,
        leader_epoch: i32,
        replicas: Vec<i32>,
        isr: Vec<i32>,
        leader_log_end_offset: i64,
        high_watermark: i64,
        now_ms: i64,
    ) -> ReplicaTracker {
        let (replicas, isr) = normalize(local_id, replicas, isr);
        let followers = replicas
            .iter()
            .filter(|id| **id != local_id)
            .map(|id| FollowerState::new(*id, if isr.contains(id) { now_ms } else { 0 }))
            .collect();
        let mut tracker = ReplicaTracker {
            local_id,
            leader_epoch,
            partition_epoch: 0,
            leader_epoch_start_offset: leader_log_end_offset,
            replicas,
            isr,
            pending_isr: None,
            leader_log_end_offset,
            high_watermark: high_watermark.min(leader_log_end_offset),
            followers,
        };
        tracker.maybe_advance_high_watermark();
        tracker
    }

    /// The same replica stays leader with a new epoch or assignment (Kafka's
    /// `makeLeader` with `isNewLeader = false`): followers keep their positions; ISR
    /// members count as caught up now, the others must fetch again to count.
    /// A pending ISR change is dropped (the controller's state replaces it).
    /// Returns the new high watermark if it moved.
    pub fn update_assignment(
        &mut self,
        leader_epoch: i32,
        replicas: Vec<i32>,
        isr: Vec<i32>,
        now_ms: i64,
    ) -> Option<i64> {
        let (replicas, isr) = normalize(self.local_id, replicas, isr);
        if leader_epoch != self.leader_epoch {
            self.leader_epoch = leader_epoch;
            self.leader_epoch_start_offset = self.leader_log_end_offset;
        }
        let mut old = std::mem::take(&mut self.followers);
        self.followers = replicas
            .iter()
            .filter(|id| **id != self.local_id)
            .map(|id| {
                let in_sync = isr.contains(id);
                match old.iter().position(|f| f.replica_id == *id) {
                    Some(i) => {
                        let mut f = old.swap_remove(i);
                        f.last_caught_up_time_ms = if in_sync { now_ms } else { 0 };
                        f.last_fetch_time_ms = if in_sync { now_ms } else { 0 };
                        f
                    }
                    None => FollowerState::new(*id, if in_sync { now_ms } else { 0 }),
                }
            })
            .collect();
        self.replicas = replicas;
        self.isr = isr;
        self.pending_isr = None;
        self.maybe_advance_high_watermark()
    }

    pub fn local_id(&self) -> i32 {
        self.local_id
    }

    pub fn leader_epoch(&self) -> i32 {
        self.leader_epoch
    }

    /// The partition epoch of the ISR and replicas this tracker holds.
    pub fn partition_epoch(&self) -> i32 {
        self.partition_epoch
    }

    /// The ISR and replicas now come from the state at `partition_epoch` (set
    /// with every assignment, and when the controller confirms a change).
    pub fn set_partition_epoch(&mut self, partition_epoch: i32) {
        self.partition_epoch = partition_epoch;
    }

    /// The leader's log end offset when its epoch began. While the high watermark
    /// is below it, this leader does not know yet how far the ISR got.
    pub fn leader_epoch_start_offset(&self) -> i64 {
        self.leader_epoch_start_offset
    }

    pub fn replicas(&self) -> &[i32] {
        &self.replicas
    }

    /// The ISR the controller confirmed.
    pub fn isr(&self) -> &[i32] {
        &self.isr
    }

    /// The ISR change awaiting the controller's answer.
    pub fn pending_isr(&self) -> Option<&[i32]> {
        self.pending_isr.as_deref()
    }

    /// The committed ISR plus the members of a pending change: the replicas the
    /// high watermark waits for.
    pub fn maximal_isr(&self) -> Vec<i32> {
        let mut out = self.isr.clone();
        for id in self.pending_isr.iter().flatten() {
            if !out.contains(id) {
                out.push(*id);
            }
        }
        out
    }

    pub fn high_watermark(&self) -> i64 {
        self.high_watermark
    }

    pub fn leader_log_end_offset(&self) -> i64 {
        self.leader_log_end_offset
    }

    pub fn follower(&self, replica_id: i32) -> Option<&FollowerState> {
        self.followers.iter().find(|f| f.replica_id == replica_id)
    }

    /// The leader appended: its log end offset is now `leader_log_end_offset`.
    /// Returns the new high watermark if it moved.
    pub fn on_leader_append(&mut self, leader_log_end_offset: i64) -> Option<i64> {
        self.leader_log_end_offset = self.leader_log_end_offset.max(leader_log_end_offset);
        self.maybe_advance_high_watermark()
    }

    /// A follower fetched from `fetch_offset` while the leader's log ended at
    /// `leader_log_end_offset` (read before this fetch's own reply, so appends that
    /// follow the fetch do not keep the follower from counting as caught up).
    /// Kafka's `Replica.updateFetchState` followed by `maybeExpandIsr` and
    /// `maybeIncrementLeaderHW`.
    pub fn on_follower_fetch(
        &mut self,
        replica_id: i32,
        fetch_offset: i64,
        leader_log_end_offset: i64,
        now_ms: i64,
    ) -> Result<FetchDecision, ReplicaError> {
        self.leader_log_end_offset = self.leader_log_end_offset.max(leader_log_end_offset);
        let follower = self
            .followers
            .iter_mut()
            .find(|f| f.replica_id == replica_id)
            .ok_or(ReplicaError::UnknownReplica(replica_id))?;
        if fetch_offset >= leader_log_end_offset {
            follower.last_caught_up_time_ms = follower.last_caught_up_time_ms.max(now_ms);
        } else if fetch_offset >= follower.last_fetch_leader_log_end_offset {
            follower.last_caught_up_time_ms = follower
                .last_caught_up_time_ms
                .max(follower.last_fetch_time_ms);
        }
        follower.last_fetch_leader_log_end_offset = leader_log_end_offset;
        follower.last_fetch_time_ms = now_ms;
        follower.log_end_offset = fetch_offset;
        let high_watermark = self.maybe_advance_high_watermark();
        let propose_isr = if self.pending_isr.is_none()
            && !self.isr.contains(&replica_id)
            && fetch_offset >= self.high_watermark
            && fetch_offset >= self.leader_epoch_start_offset
        {
            let mut proposed = self.isr.clone();
            proposed.push(replica_id);
            self.pending_isr = Some(proposed.clone());
            Some(proposed)
        } else {
            None
        };
        Ok(FetchDecision {
            high_watermark,
            propose_isr,
        })
    }

    /// The ISR without the members that were not caught up within
    /// `lag_time_max_ms`, if that removes anyone and no change is pending. The
    /// leader is never removed. The returned ISR becomes the pending change; the
    /// high watermark keeps waiting for the removed members until it is confirmed.
    pub fn maybe_shrink_isr(&mut self, now_ms: i64, lag_time_max_ms: i64) -> Option<Vec<i32>> {
        if self.pending_isr.is_some() {
            return None;
        }
        let leader_leo = self.leader_log_end_offset;
        let out_of_sync: Vec<i32> = self
            .isr
            .iter()
            .filter(|id| **id != self.local_id)
            .filter(|id| {
                self.follower(**id)
                    .is_none_or(|f| !f.is_caught_up(leader_leo, now_ms, lag_time_max_ms))
            })
            .copied()
            .collect();
        if out_of_sync.is_empty() {
            return None;
        }
        let proposed: Vec<i32> = self
            .isr
            .iter()
            .filter(|id| !out_of_sync.contains(id))
            .copied()
            .collect();
        self.pending_isr = Some(proposed.clone());
        Some(proposed)
    }

    /// The controller confirmed `isr`. Members that are not assigned replicas are
    /// ignored (they could never fetch, so they would hold the high watermark
    /// forever) and the leader is kept. Returns the new high watermark if it moved.
    pub fn set_isr(&mut self, isr: Vec<i32>) -> Option<i64> {
        let (_, isr) = normalize(self.local_id, self.replicas.clone(), isr);
        self.isr = isr;
        self.pending_isr = None;
        self.maybe_advance_high_watermark()
    }

    /// The pending ISR change was refused or failed: back to the committed ISR.
    /// Returns the new high watermark if it moved (a refused expansion stops
    /// holding it back).
    pub fn abort_isr_change(&mut self) -> Option<i64> {
        self.pending_isr = None;
        self.maybe_advance_high_watermark()
    }

    fn maybe_advance_high_watermark(&mut self) -> Option<i64> {
        let mut candidate = self.leader_log_end_offset;
        for id in self.maximal_isr() {
            if id == self.local_id {
                continue;
            }
            let leo = self
                .follower(id)
                .map_or(UNKNOWN_OFFSET, |f| f.log_end_offset);
            candidate = candidate.min(leo);
        }
        if candidate > self.high_watermark {
            self.high_watermark = candidate;
            Some(candidate)
        } else {
            None
        }
    }
}

/// Replicas with the leader in them, and an ISR of assigned replicas with the
/// leader in it, each without duplicates.
fn normalize(local_id: i32, replicas: Vec<i32>, isr: Vec<i32>) -> (Vec<i32>, Vec<i32>) {
    let mut r: Vec<i32> = Vec::with_capacity(replicas.len() + 1);
    for id in replicas {
        if !r.contains(&id) {
            r.push(id);
        }
    }
    if !r.contains(&local_id) {
        r.insert(0, local_id);
    }
    let mut i: Vec<i32> = Vec::with_capacity(isr.len() + 1);
    for id in isr {
        if r.contains(&id) && !i.contains(&id) {
            i.push(id);
        }
    }
    if !i.contains(&local_id) {
        i.insert(0, local_id);
    }
    (r, i)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LAG_MS: i64 = 30_000;

    /// Leader 1 with followers 2 and 3, all in sync, leader log ending at `leo`.
    fn three(leo: i64, hw: i64) -> ReplicaTracker {
        ReplicaTracker::new(1, 5, vec![1, 2, 3], vec![1, 2, 3], leo, hw, 1_000)
    }

    #[test]
    fn a_leader_alone_has_its_log_end_as_high_watermark() {
        let mut t = ReplicaTracker::new(1, 0, vec![1], vec![1], 10, 4, 0);
        assert_eq!(t.high_watermark(), 10);
        assert_eq!(t.on_leader_append(12), Some(12));
        assert_eq!(t.on_leader_append(12), None);
        assert_eq!(t.isr(), &[1]);
    }

    #[test]
    fn the_high_watermark_is_the_minimum_log_end_of_the_isr() {
        let mut t = three(10, 4);
        // Followers' positions are unknown at election: the HW stays where it was.
        assert_eq!(t.high_watermark(), 4);
        let d = t.on_follower_fetch(2, 8, 10, 1_100).expect("fetch");
        assert_eq!(d, FetchDecision::default());
        assert_eq!(t.high_watermark(), 4);
        let d = t.on_follower_fetch(3, 6, 10, 1_100).expect("fetch");
        assert_eq!(d.high_watermark, Some(6));
        let d = t.on_follower_fetch(3, 10, 10, 1_200).expect("fetch");
        assert_eq!(d.high_watermark, Some(8));
        let d = t.on_follower_fetch(2, 10, 10, 1_200).expect("fetch");
        assert_eq!(d.high_watermark, Some(10));
        // The leader's own log end counts too.
        assert_eq!(t.on_leader_append(15), None);
        assert_eq!(t.high_watermark(), 10);
    }

    #[test]
    fn the_high_watermark_never_goes_backwards() {
        let mut t = three(10, 10);
        assert_eq!(t.high_watermark(), 10);
        // A follower that truncated and fetches from below the HW does not pull it back.
        let d = t.on_follower_fetch(2, 3, 10, 1_100).expect("fetch");
        assert_eq!(d.high_watermark, None);
        assert_eq!(t.high_watermark(), 10);
        // Neither does a confirmed ISR whose member is behind.
        assert_eq!(t.set_isr(vec![1, 2]), None);
        assert_eq!(t.high_watermark(), 10);
    }

    #[test]
    fn an_unknown_replica_is_refused() {
        let mut t = three(10, 0);
        assert_eq!(
            t.on_follower_fetch(9, 0, 10, 1_000),
            Err(ReplicaError::UnknownReplica(9))
        );
        // The leader is not a follower of itself either.
        assert_eq!(
            t.on_follower_fetch(1, 0, 10, 1_000),
            Err(ReplicaError::UnknownReplica(1))
        );
    }

    #[test]
    fn a_follower_that_stops_fetching_is_dropped_after_the_lag_time() {
        let mut t = three(10, 0);
        t.on_follower_fetch(2, 10, 10, 2_000).expect("fetch");
        t.on_follower_fetch(3, 10, 10, 2_000).expect("fetch");
        t.on_leader_append(20);
        // Follower 2 keeps up; follower 3 goes silent.
        t.on_follower_fetch(2, 20, 20, 10_000).expect("fetch");
        assert_eq!(t.maybe_shrink_isr(2_000 + LAG_MS, LAG_MS), None);
        t.on_follower_fetch(2, 20, 20, 2_000 + LAG_MS)
            .expect("fetch");
        assert_eq!(t.maybe_shrink_isr(2_001 + LAG_MS, LAG_MS), Some(vec![1, 2]));
        // While the controller has not answered, the HW still waits for 3, and no
        // second proposal is made.
        assert_eq!(t.high_watermark(), 10);
        assert_eq!(t.maybe_shrink_isr(9_999_999, LAG_MS), None);
        assert_eq!(t.set_isr(vec![1, 2]), Some(20));
        assert_eq!(t.isr(), &[1, 2]);
    }

    #[test]
    fn a_follower_that_fetches_but_never_catches_up_is_dropped() {
        let mut t = three(100, 0);
        t.on_follower_fetch(2, 100, 100, 1_000).expect("fetch");
        // Follower 3 fetches often, but the leader always has more than it asked
        // for at its previous fetch.
        let mut leo = 100;
        let mut offset = 0;
        for now in (2_000..=40_000).step_by(1_000) {
            leo += 50;
            offset += 10;
            t.on_leader_append(leo);
            t.on_follower_fetch(2, leo, leo, now).expect("fetch");
            t.on_follower_fetch(3, offset, leo, now).expect("fetch");
        }
        assert_eq!(t.follower(3).map(|f| f.last_caught_up_time_ms), Some(1_000));
        assert_eq!(t.maybe_shrink_isr(40_000, LAG_MS), Some(vec![1, 2]));
    }

    #[test]
    fn reaching_the_leader_end_of_the_previous_fetch_counts_as_caught_up() {
        let mut t = three(10, 0);
        t.on_follower_fetch(3, 5, 10, 5_000).expect("fetch");
        // The leader moved on to 20, but 3 now has what the leader had at 5_000.
        t.on_follower_fetch(3, 10, 20, 6_000).expect("fetch");
        assert_eq!(t.follower(3).map(|f| f.last_caught_up_time_ms), Some(5_000));
        t.on_follower_fetch(3, 20, 20, 7_000).expect("fetch");
        assert_eq!(t.follower(3).map(|f| f.last_caught_up_time_ms), Some(7_000));
    }

    #[test]
    fn the_leader_is_never_removed_from_the_isr() {
        let mut t = three(10, 0);
        assert_eq!(t.maybe_shrink_isr(1_000_000, LAG_MS), Some(vec![1]));
        assert_eq!(t.set_isr(vec![2, 3]), None);
        assert_eq!(t.isr(), &[1, 2, 3]);
        let mut t = ReplicaTracker::new(1, 0, vec![2, 3], vec![], 10, 0, 0);
        assert_eq!(t.isr(), &[1]);
        assert_eq!(t.replicas(), &[1, 2, 3]);
        assert_eq!(t.high_watermark(), 10);
        assert_eq!(t.set_isr(vec![]), None);
        assert_eq!(t.isr(), &[1]);
    }

    #[test]
    fn a_follower_that_catches_up_is_proposed_once_and_holds_the_high_watermark() {
        let mut t = ReplicaTracker::new(1, 3, vec![1, 2, 3], vec![1, 2], 10, 10, 0);
        t.on_follower_fetch(2, 10, 10, 100).expect("fetch");
        t.on_leader_append(20);
        t.on_follower_fetch(2, 20, 20, 200).expect("fetch");
        assert_eq!(t.high_watermark(), 20);
        // Behind the HW: not yet.
        let d = t.on_follower_fetch(3, 15, 20, 300).expect("fetch");
        assert_eq!(d.propose_isr, None);
        let d = t.on_follower_fetch(3, 20, 20, 400).expect("fetch");
        assert_eq!(d.propose_isr, Some(vec![1, 2, 3]));
        assert_eq!(t.pending_isr(), Some(&[1, 2, 3][..]));
        assert_eq!(t.isr(), &[1, 2]);
        // One proposal at a time.
        let d = t.on_follower_fetch(3, 20, 20, 500).expect("fetch");
        assert_eq!(d.propose_isr, None);
        // From the proposal on the HW waits for 3 as well.
        t.on_leader_append(30);
        assert_eq!(
            t.on_follower_fetch(2, 30, 30, 600)
                .expect("fetch")
                .high_watermark,
            None
        );
        assert_eq!(t.high_watermark(), 20);
        assert_eq!(
            t.on_follower_fetch(3, 25, 30, 600)
                .expect("fetch")
                .high_watermark,
            Some(25)
        );
        assert_eq!(t.set_isr(vec![1, 2, 3]), None);
        assert_eq!(t.isr(), &[1, 2, 3]);
    }

    #[test]
    fn a_refused_expansion_is_proposed_again() {
        let mut t = ReplicaTracker::new(1, 3, vec![1, 2], vec![1], 10, 10, 0);
        let d = t.on_follower_fetch(2, 10, 10, 100).expect("fetch");
        assert_eq!(d.propose_isr, Some(vec![1, 2]));
        t.on_leader_append(12);
        // Pending: the HW waits for 2.
        assert_eq!(t.high_watermark(), 10);
        assert_eq!(t.abort_isr_change(), Some(12));
        let d = t.on_follower_fetch(2, 12, 12, 200).expect("fetch");
        assert_eq!(d.propose_isr, Some(vec![1, 2]));
    }

    #[test]
    fn a_follower_below_the_epoch_start_does_not_join() {
        // Elected with log end 50 but an old HW of 10: a follower at 30 may hold a
        // tail from an older epoch that it has not truncated yet.
        let mut t = ReplicaTracker::new(1, 7, vec![1, 2, 3], vec![1, 2], 50, 10, 0);
        let d = t.on_follower_fetch(3, 30, 50, 100).expect("fetch");
        assert_eq!(d.propose_isr, None);
        let d = t.on_follower_fetch(3, 50, 50, 200).expect("fetch");
        assert_eq!(d.propose_isr, Some(vec![1, 2, 3]));
    }

    #[test]
    fn reelection_keeps_positions_and_drops_the_pending_change() {
        let mut t = three(10, 0);
        t.on_follower_fetch(2, 10, 10, 100).expect("fetch");
        t.on_follower_fetch(3, 10, 10, 100).expect("fetch");
        assert_eq!(t.high_watermark(), 10);
        t.on_leader_append(11);
        assert_eq!(t.maybe_shrink_isr(1_000_000, LAG_MS), Some(vec![1]));
        assert_eq!(
            t.update_assignment(6, vec![1, 2, 3, 4], vec![1, 2], 2_000),
            None
        );
        assert_eq!(t.leader_epoch(), 6);
        assert_eq!(t.pending_isr(), None);
        assert_eq!(t.follower(2).map(|f| f.log_end_offset), Some(10));
        assert_eq!(
            t.follower(4).map(|f| f.log_end_offset),
            Some(UNKNOWN_OFFSET)
        );
        assert_eq!(
            t.on_follower_fetch(2, 11, 11, 2_100)
                .expect("fetch")
                .high_watermark,
            Some(11)
        );
    }
}
