//! The group state machine driven with explicit time: joins, rebalances,
//! timeouts, static membership, commits, and the records it emits.

use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex as PlMutex;

use super::coordinator::*;
use super::offsets::{encode_subscription, CommitRequest, OffsetCommit, PartitionResults};
use super::records::{GroupMetadataValue, OffsetCommitValue, RecordKey};
use super::{Durability, GroupCoordinator, GroupStorage};
use crate::clock::ManualClock;
use crate::error::CoreError;
use crate::partition::TopicPartition;

const SESSION: i32 = 10_000;
const REBALANCE: i32 = 30_000;

fn config() -> GroupConfig {
    GroupConfig {
        initial_rebalance_delay_ms: 0,
        ..GroupConfig::default()
    }
}

fn join_req(group: &str, member: &str) -> JoinRequest {
    JoinRequest {
        group_id: group.into(),
        member_id: member.into(),
        group_instance_id: None,
        require_known_member_id: true,
        supports_skip_assignment: false,
        client_id: "client".into(),
        client_host: "/127.0.0.1".into(),
        rebalance_timeout_ms: REBALANCE,
        session_timeout_ms: SESSION,
        protocol_type: "consumer".into(),
        protocols: vec![("range".into(), encode_subscription(&["t"]))],
    }
}

fn now<T: std::fmt::Debug>(reply: Reply<T>) -> T {
    match reply {
        Reply::Now(r) => r,
        Reply::Later(rx) => panic!("expected an immediate answer, got a pending one: {rx:?}"),
    }
}

fn later<T>(reply: Reply<T>) -> tokio::sync::oneshot::Receiver<T> {
    match reply {
        Reply::Later(rx) => rx,
        Reply::Now(_) => panic!("expected a pending answer"),
    }
}

fn ready<T>(rx: &mut tokio::sync::oneshot::Receiver<T>) -> T {
    rx.try_recv().expect("the answer is ready")
}

/// A dynamic member's two-step join: MEMBER_ID_REQUIRED, then the real join.
fn join_new(
    m: &mut GroupManager,
    group: &str,
    t: i64,
) -> (String, tokio::sync::oneshot::Receiver<JoinResponse>) {
    let first = now(m.join(join_req(group, ""), t));
    assert_eq!(first.error, Some(GroupError::MemberIdRequired));
    assert!(!first.member_id.is_empty());
    let rx = later(m.join(join_req(group, &first.member_id), t));
    (first.member_id, rx)
}

fn sync(
    m: &mut GroupManager,
    group: &str,
    gen: i32,
    member: &str,
    assignments: Vec<(String, Bytes)>,
    t: i64,
) -> Reply<SyncResponse> {
    m.sync(
        SyncRequest {
            group_id: group.into(),
            generation_id: gen,
            member_id: member.into(),
            group_instance_id: None,
            protocol_type: Some("consumer".into()),
            protocol_name: Some("range".into()),
            assignments,
        },
        t,
    )
}

/// Three members join one generation; returns (ids, leader, generation).
fn stable_group_of_three(m: &mut GroupManager, group: &str) -> (Vec<String>, String, i32) {
    let (a, mut ra) = join_new(m, group, 0);
    // With no initial delay the first member's rebalance completes on the next tick,
    // so let the other two join first.
    let (b, mut rb) = join_new(m, group, 0);
    let (c, mut rc) = join_new(m, group, 0);
    m.tick(0);
    let (ja, jb, jc) = (ready(&mut ra), ready(&mut rb), ready(&mut rc));
    for j in [&ja, &jb, &jc] {
        assert_eq!(j.error, None);
        assert_eq!(j.generation_id, 1);
        assert_eq!(j.protocol_name.as_deref(), Some("range"));
        assert_eq!(j.leader, ja.leader);
    }
    let leader = ja.leader.clone();
    let joined = [&ja, &jb, &jc];
    let leader_resp = joined
        .iter()
        .find(|j| j.member_id == leader)
        .expect("leader answered");
    assert_eq!(leader_resp.members.len(), 3);
    for j in joined.iter().filter(|j| j.member_id != leader) {
        assert!(j.members.is_empty(), "only the leader gets the members");
    }
    let ids = vec![a, b, c];
    let mut followers = Vec::new();
    for id in ids.iter().filter(|i| **i != leader) {
        followers.push((id.clone(), later(sync(m, group, 1, id, vec![], 0))));
    }
    let assignments: Vec<(String, Bytes)> = ids
        .iter()
        .map(|i| (i.clone(), Bytes::from(format!("asg-{i}"))))
        .collect();
    let mut rl = later(sync(m, group, 1, &leader, assignments, 0));
    assert_eq!(
        ready(&mut rl).assignment,
        Bytes::from(format!("asg-{leader}"))
    );
    for (id, mut rx) in followers {
        let s = ready(&mut rx);
        assert_eq!(s.error, None);
        assert_eq!(s.assignment, Bytes::from(format!("asg-{id}")));
    }
    assert_eq!(m.group(group).map(|g| g.state()), Some(GroupState::Stable));
    (ids, leader, 1)
}

#[test]
fn three_members_join_one_generation_and_sync_distributes_the_assignment() {
    let mut m = GroupManager::new(config());
    stable_group_of_three(&mut m, "g");
    // The stored group record has every member and its assignment.
    let records = m.take_records();
    let last = records.last().expect("group record");
    assert_eq!(
        RecordKey::decode(&last.key),
        Ok(RecordKey::GroupMetadata { group: "g".into() })
    );
    let value = GroupMetadataValue::decode(last.value.as_ref().expect("value")).expect("decodes");
    assert_eq!(value.generation, 1);
    assert_eq!(value.members.len(), 3);
    assert!(value
        .members
        .iter()
        .all(|mm| mm.assignment.starts_with(b"asg-")));
}

#[test]
fn member_id_is_required_and_pending_ids_expire() {
    let mut m = GroupManager::new(config());
    let first = now(m.join(join_req("g", ""), 0));
    assert_eq!(first.error, Some(GroupError::MemberIdRequired));
    // Unused, the id lapses after the session timeout …
    m.tick(i64::from(SESSION) + 1);
    let r = now(m.join(join_req("g", &first.member_id), i64::from(SESSION) + 2));
    assert_eq!(r.error, Some(GroupError::UnknownMemberId));
    // … and a made-up id was never valid.
    let r = now(m.join(join_req("g", "made-up"), 0));
    assert_eq!(r.error, Some(GroupError::UnknownMemberId));
}

#[test]
fn old_join_versions_need_no_member_id_round_trip() {
    let mut m = GroupManager::new(config());
    let mut req = join_req("g", "");
    req.require_known_member_id = false;
    let mut rx = later(m.join(req, 0));
    m.tick(0);
    let r = ready(&mut rx);
    assert_eq!(r.error, None);
    assert_eq!(r.leader, r.member_id);
    assert_eq!(r.generation_id, 1);
}

#[test]
fn bad_join_requests_get_kafkas_errors() {
    let mut m = GroupManager::new(config());
    assert_eq!(
        now(m.join(join_req("", ""), 0)).error,
        Some(GroupError::InvalidGroupId)
    );
    let mut short = join_req("g", "");
    short.session_timeout_ms = 1;
    assert_eq!(
        now(m.join(short, 0)).error,
        Some(GroupError::InvalidSessionTimeout)
    );
    let mut no_type = join_req("g", "");
    no_type.protocol_type = String::new();
    assert_eq!(
        now(m.join(no_type, 0)).error,
        Some(GroupError::InconsistentGroupProtocol)
    );
    let mut huge = join_req("g", "");
    huge.protocols = vec![(
        "range".into(),
        Bytes::from(vec![0u8; MEMBER_METADATA_BYTES_MAX + 1]),
    )];
    assert!(matches!(
        now(m.join(huge, 0)).error,
        Some(GroupError::InvalidRequest(_))
    ));
    // None of these left a group behind.
    assert!(m.list().is_empty());

    // A member with another protocol type, or no common protocol, is refused.
    stable_group_of_three(&mut m, "g");
    let mut other = join_req("g", "");
    other.protocol_type = "connect".into();
    assert_eq!(
        now(m.join(other, 1)).error,
        Some(GroupError::InconsistentGroupProtocol)
    );
    let mut disjoint = join_req("g", "");
    disjoint.protocols = vec![("roundrobin".into(), Bytes::new())];
    assert_eq!(
        now(m.join(disjoint, 1)).error,
        Some(GroupError::InconsistentGroupProtocol)
    );
}

#[test]
fn protocol_is_chosen_by_vote_among_common_protocols() {
    let mut m = GroupManager::new(config());
    let mut ids = Vec::new();
    let mut rxs = Vec::new();
    for prefs in [
        vec!["sticky", "range"],
        vec!["range", "sticky"],
        vec!["range", "sticky", "rr"],
    ] {
        let mut req = join_req("g", "");
        req.require_known_member_id = false;
        req.protocols = prefs
            .iter()
            .map(|p| (p.to_string(), Bytes::from_static(b"m")))
            .collect();
        let rx = later(m.join(req, 0));
        rxs.push(rx);
        ids.push(());
    }
    m.tick(0);
    for rx in &mut rxs {
        assert_eq!(ready(rx).protocol_name.as_deref(), Some("range"));
    }
}

#[test]
fn initial_rebalance_delay_waits_for_more_members() {
    let mut m = GroupManager::new(GroupConfig {
        initial_rebalance_delay_ms: 3000,
        ..GroupConfig::default()
    });
    let (_, mut ra) = join_new(&mut m, "g", 0);
    m.tick(1000);
    assert!(
        ra.try_recv().is_err(),
        "still waiting for the initial delay"
    );
    let (_, mut rb) = join_new(&mut m, "g", 2000);
    // The delay ends at 3000, but a member arrived: it is extended once more.
    m.tick(3000);
    assert!(ra.try_recv().is_err());
    m.tick(6000);
    let (ja, jb) = (ready(&mut ra), ready(&mut rb));
    assert_eq!(ja.generation_id, 1);
    assert_eq!(jb.generation_id, 1);
}

#[test]
fn session_expiry_removes_the_member_and_rebalances() {
    let mut m = GroupManager::new(config());
    let (ids, leader, gen) = stable_group_of_three(&mut m, "g");
    let dead = ids
        .iter()
        .find(|i| **i != leader)
        .cloned()
        .expect("a follower");
    let alive: Vec<String> = ids.iter().filter(|i| **i != dead).cloned().collect();
    let mut t = 0;
    while m
        .group("g")
        .is_some_and(|g| g.state() == GroupState::Stable)
    {
        t += 1000;
        assert!(
            t <= i64::from(SESSION) + 1000,
            "the dead member is noticed after the session timeout"
        );
        for a in &alive {
            assert_eq!(m.heartbeat("g", a, None, gen, t), Ok(()));
        }
        m.tick(t);
    }
    assert!(t >= i64::from(SESSION), "not before the session timeout");
    let g = m.group("g").expect("group");
    assert_eq!(g.state(), GroupState::PreparingRebalance);
    assert!(!g.member_ids().contains(&dead));
    // The survivors learn of the rebalance through their heartbeat and rejoin.
    for a in &alive {
        assert_eq!(
            m.heartbeat("g", a, None, gen, t),
            Err(GroupError::RebalanceInProgress)
        );
    }
    let mut rxs: Vec<_> = alive
        .iter()
        .map(|a| later(m.join(join_req("g", a), t)))
        .collect();
    let responses: Vec<JoinResponse> = rxs.iter_mut().map(ready).collect();
    assert!(responses
        .iter()
        .all(|r| r.generation_id == gen + 1 && r.error.is_none()));
    assert_eq!(
        m.heartbeat("g", &dead, None, gen + 1, t),
        Err(GroupError::UnknownMemberId)
    );
}

#[test]
fn rebalance_timeout_drops_members_that_do_not_rejoin() {
    let mut m = GroupManager::new(config());
    let (ids, leader, gen) = stable_group_of_three(&mut m, "g");
    // The leader forces a rebalance by rejoining; nobody else rejoins.
    let mut rl = later(m.join(join_req("g", &leader), 10));
    assert_eq!(
        m.group("g").map(|g| g.state()),
        Some(GroupState::PreparingRebalance)
    );
    // The others stay alive (heartbeats answer REBALANCE_IN_PROGRESS) but never rejoin.
    let mut t = 10;
    while t < 10 + i64::from(REBALANCE) - 1000 {
        t += 1000;
        for id in ids.iter().filter(|i| **i != leader) {
            assert_eq!(
                m.heartbeat("g", id, None, gen, t),
                Err(GroupError::RebalanceInProgress)
            );
        }
        m.tick(t);
    }
    m.tick(10 + i64::from(REBALANCE) - 1);
    assert!(rl.try_recv().is_err());
    m.tick(10 + i64::from(REBALANCE));
    let r = ready(&mut rl);
    assert_eq!(r.generation_id, gen + 1);
    assert_eq!(r.members.len(), 1);
    let g = m.group("g").expect("group");
    assert_eq!(g.member_ids(), vec![leader.clone()]);
    for id in ids.iter().filter(|i| **i != leader) {
        assert_eq!(
            m.heartbeat("g", id, None, gen, 20),
            Err(GroupError::UnknownMemberId)
        );
    }
}

#[test]
fn members_that_never_sync_are_removed() {
    let mut m = GroupManager::new(config());
    let (a, mut ra) = join_new(&mut m, "g", 0);
    let (b, mut rb) = join_new(&mut m, "g", 0);
    m.tick(0);
    let (ja, _) = (ready(&mut ra), ready(&mut rb));
    let leader = ja.leader.clone();
    let follower = if leader == a { b } else { a };
    let _rl = later(sync(&mut m, "g", 1, &leader, vec![], 1));
    // The follower never sends SyncGroup; the leader keeps heartbeating.
    let mut t = 0;
    while t <= i64::from(REBALANCE) {
        t += 2000;
        let _ = m.heartbeat("g", &leader, None, 1, t);
        m.tick(t);
    }
    let g = m.group("g").expect("group");
    assert!(!g.member_ids().contains(&follower));
    assert_eq!(g.state(), GroupState::PreparingRebalance);
}

#[test]
fn sync_and_heartbeat_check_member_and_generation() {
    let mut m = GroupManager::new(config());
    let (ids, _, gen) = stable_group_of_three(&mut m, "g");
    assert_eq!(
        now(sync(&mut m, "g", gen, "nobody", vec![], 1)).error,
        Some(GroupError::UnknownMemberId)
    );
    assert_eq!(
        now(sync(&mut m, "g", gen + 5, &ids[0], vec![], 1)).error,
        Some(GroupError::IllegalGeneration)
    );
    assert_eq!(
        now(sync(&mut m, "nope", gen, &ids[0], vec![], 1)).error,
        Some(GroupError::UnknownMemberId)
    );
    assert_eq!(
        m.heartbeat("g", &ids[0], None, gen - 1, 1),
        Err(GroupError::IllegalGeneration)
    );
    assert_eq!(
        m.heartbeat("g", "nobody", None, gen, 1),
        Err(GroupError::UnknownMemberId)
    );
    assert_eq!(
        m.heartbeat("", &ids[0], None, gen, 1),
        Err(GroupError::InvalidGroupId)
    );
    // A Stable group answers a late SyncGroup with the stored assignment.
    let s = now(sync(&mut m, "g", gen, &ids[1], vec![], 1));
    assert_eq!(s.assignment, Bytes::from(format!("asg-{}", ids[1])));
    let mut wrong = SyncRequest {
        group_id: "g".into(),
        generation_id: gen,
        member_id: ids[1].clone(),
        group_instance_id: None,
        protocol_type: Some("consumer".into()),
        protocol_name: Some("roundrobin".into()),
        assignments: vec![],
    };
    assert_eq!(
        now(m.sync(wrong.clone(), 1)).error,
        Some(GroupError::InconsistentGroupProtocol)
    );
    wrong.protocol_name = None;
    assert_eq!(now(m.sync(wrong, 1)).error, None);
}

#[test]
fn leave_group_rebalances_and_reports_per_member() {
    let mut m = GroupManager::new(config());
    let (ids, _, _) = stable_group_of_three(&mut m, "g");
    let results = m
        .leave("g", &[(ids[0].clone(), None), ("ghost".into(), None)], 5)
        .expect("request-level success");
    assert_eq!(results, vec![Ok(()), Err(GroupError::UnknownMemberId)]);
    let g = m.group("g").expect("group");
    assert_eq!(g.state(), GroupState::PreparingRebalance);
    assert_eq!(g.member_ids().len(), 2);
    // Everybody leaves: the group completes its rebalance as Empty.
    m.leave("g", &[(ids[1].clone(), None), (ids[2].clone(), None)], 6)
        .expect("leave");
    assert_eq!(m.group("g").map(|g| g.state()), Some(GroupState::Empty));
    assert_eq!(m.leave("", &[], 6), Err(GroupError::InvalidGroupId));
}

fn static_join(group: &str, member: &str, instance: &str) -> JoinRequest {
    let mut r = join_req(group, member);
    r.group_instance_id = Some(instance.into());
    r.require_known_member_id = false;
    r
}

#[test]
fn static_member_rejoins_without_rebalance_and_the_old_id_is_fenced() {
    let mut m = GroupManager::new(config());
    let mut ra = later(m.join(static_join("g", "", "inst-a"), 0));
    let mut rb = later(m.join(static_join("g", "", "inst-b"), 0));
    m.tick(0);
    let (ja, jb) = (ready(&mut ra), ready(&mut rb));
    let leader = ja.leader.clone();
    let (a, b) = (ja.member_id.clone(), jb.member_id.clone());
    let follower = if leader == a { b.clone() } else { a.clone() };
    let follower_instance = if follower == a { "inst-a" } else { "inst-b" };
    let mut rf = later(m.sync(
        SyncRequest {
            group_id: "g".into(),
            generation_id: 1,
            member_id: follower.clone(),
            group_instance_id: Some(follower_instance.into()),
            protocol_type: None,
            protocol_name: None,
            assignments: vec![],
        },
        0,
    ));
    let _leader_sync = later(m.sync(
        SyncRequest {
            group_id: "g".into(),
            generation_id: 1,
            member_id: leader.clone(),
            group_instance_id: Some(if leader == a { "inst-a" } else { "inst-b" }.into()),
            protocol_type: None,
            protocol_name: None,
            assignments: vec![(follower.clone(), Bytes::from_static(b"mine"))],
        },
        0,
    ));
    assert_eq!(ready(&mut rf).assignment, Bytes::from_static(b"mine"));

    // The follower restarts: same instance id, no member id, same metadata.
    let r = now(m.join(static_join("g", "", follower_instance), 100));
    assert_eq!(r.error, None);
    assert_ne!(r.member_id, follower);
    assert_eq!(r.generation_id, 1, "no new generation");
    assert_eq!(m.group("g").map(|g| g.state()), Some(GroupState::Stable));
    // It syncs under its new id and gets its old assignment back.
    let s = now(m.sync(
        SyncRequest {
            group_id: "g".into(),
            generation_id: 1,
            member_id: r.member_id.clone(),
            group_instance_id: Some(follower_instance.into()),
            protocol_type: None,
            protocol_name: None,
            assignments: vec![],
        },
        100,
    ));
    assert_eq!(s.assignment, Bytes::from_static(b"mine"));
    // The old incarnation is fenced everywhere.
    assert_eq!(
        m.heartbeat("g", &follower, Some(follower_instance), 1, 101),
        Err(GroupError::FencedInstanceId)
    );
    assert_eq!(
        now(m.join(static_join("g", &follower, follower_instance), 101)).error,
        Some(GroupError::FencedInstanceId)
    );
    let commit = m.commit_offsets(
        CommitRequest {
            group_id: "g".into(),
            generation_id: 1,
            member_id: follower.clone(),
            group_instance_id: Some(follower_instance.into()),
            offsets: vec![(
                TopicPartition::new("t", 0),
                OffsetCommit {
                    offset: 1,
                    leader_epoch: -1,
                    metadata: None,
                },
            )],
            missing_group_error: GroupError::IllegalGeneration,
        },
        101,
    );
    assert_eq!(commit, Err(GroupError::FencedInstanceId));
    assert_eq!(
        m.heartbeat("g", &r.member_id, Some(follower_instance), 1, 101),
        Ok(())
    );
}

#[test]
fn static_members_survive_a_rebalance_they_miss() {
    let mut m = GroupManager::new(config());
    let mut ra = later(m.join(static_join("g", "", "inst-a"), 0));
    m.tick(0);
    let ja = ready(&mut ra);
    let _leader_sync = later(m.sync(
        SyncRequest {
            group_id: "g".into(),
            generation_id: 1,
            member_id: ja.member_id.clone(),
            group_instance_id: Some("inst-a".into()),
            protocol_type: None,
            protocol_name: None,
            assignments: vec![],
        },
        0,
    ));
    let (_, mut rb) = join_new(&mut m, "g", 10);
    // The static member keeps heartbeating but does not rejoin.
    let mut t = 10;
    while t < 10 + i64::from(REBALANCE) {
        t += 2000;
        let _ = m.heartbeat("g", &ja.member_id, Some("inst-a"), 1, t);
        m.tick(t);
    }
    let jb = ready(&mut rb);
    assert_eq!(jb.error, None);
    // The static member did not rejoin but was kept.
    assert!(m
        .group("g")
        .expect("group")
        .member_ids()
        .contains(&ja.member_id));
}

#[test]
fn group_max_size_is_enforced() {
    let mut m = GroupManager::new(GroupConfig {
        max_size: 2,
        ..config()
    });
    stable_group_of_three_sized(&mut m);
}

fn stable_group_of_three_sized(m: &mut GroupManager) {
    let (_, _ra) = join_new(m, "g", 0);
    let (_, _rb) = join_new(m, "g", 0);
    // Two members are waiting in the join phase: a third is refused at once.
    let r = now(m.join(join_req("g", ""), 0));
    assert_eq!(r.error, Some(GroupError::GroupMaxSizeReached));
    assert_eq!(r.member_id, "");
    m.tick(0);
    assert_eq!(m.group("g").map(|g| g.member_ids().len()), Some(2));
}

fn commit(
    m: &mut GroupManager,
    group: &str,
    gen: i32,
    member: &str,
    offset: i64,
    t: i64,
) -> Result<PartitionResults, GroupError> {
    m.commit_offsets(
        CommitRequest {
            group_id: group.into(),
            generation_id: gen,
            member_id: member.into(),
            group_instance_id: None,
            offsets: vec![(
                TopicPartition::new("t", 0),
                OffsetCommit {
                    offset,
                    leader_epoch: 4,
                    metadata: Some("md".into()),
                },
            )],
            missing_group_error: GroupError::IllegalGeneration,
        },
        t,
    )
}

#[test]
fn commits_are_validated_like_kafka() {
    let mut m = GroupManager::new(config());
    // Simple commits create a group without members.
    assert!(commit(&mut m, "simple", -1, "", 5, 1).is_ok());
    let fetched = m.fetch_offsets(
        "simple",
        Some(&[TopicPartition::new("t", 0), TopicPartition::new("t", 1)]),
    );
    assert_eq!(
        fetched[0]
            .1
            .as_ref()
            .map(|c| (c.offset, c.leader_epoch, c.metadata.as_str())),
        Some((5, 4, "md"))
    );
    assert_eq!(fetched[1].1, None);
    // A generation for a group that does not exist.
    assert_eq!(
        commit(&mut m, "nope", 3, "m", 1, 1),
        Err(GroupError::IllegalGeneration)
    );

    let (ids, leader, gen) = stable_group_of_three(&mut m, "g");
    assert!(commit(&mut m, "g", gen, &ids[0], 10, 2).is_ok());
    assert_eq!(
        commit(&mut m, "g", gen - 1, &ids[0], 11, 2),
        Err(GroupError::IllegalGeneration)
    );
    assert_eq!(
        commit(&mut m, "g", gen, "stranger", 11, 2),
        Err(GroupError::UnknownMemberId)
    );
    assert_eq!(
        commit(&mut m, "g", -1, "", 11, 2),
        Err(GroupError::UnknownMemberId)
    );
    // PreparingRebalance still takes commits from the current generation …
    let _rl = later(m.join(join_req("g", &leader), 3));
    assert!(commit(&mut m, "g", gen, &ids[0], 12, 3).is_ok());
    // … CompletingRebalance does not.
    for id in ids.iter().filter(|i| **i != leader) {
        let _rejoin = later(m.join(join_req("g", id), 3));
    }
    assert_eq!(
        m.group("g").map(|g| g.state()),
        Some(GroupState::CompletingRebalance)
    );
    assert_eq!(
        commit(&mut m, "g", gen + 1, &ids[0], 13, 3),
        Err(GroupError::RebalanceInProgress)
    );

    // Oversized metadata fails only that partition.
    let r = m
        .commit_offsets(
            CommitRequest {
                group_id: "simple".into(),
                generation_id: -1,
                member_id: String::new(),
                group_instance_id: None,
                offsets: vec![
                    (
                        TopicPartition::new("t", 0),
                        OffsetCommit {
                            offset: 6,
                            leader_epoch: -1,
                            metadata: Some("x".repeat(5000)),
                        },
                    ),
                    (
                        TopicPartition::new("t", 1),
                        OffsetCommit {
                            offset: 7,
                            leader_epoch: -1,
                            metadata: None,
                        },
                    ),
                ],
                missing_group_error: GroupError::IllegalGeneration,
            },
            4,
        )
        .expect("request accepted");
    assert_eq!(r[0].1, Err(GroupError::OffsetMetadataTooLarge));
    assert_eq!(r[1].1, Ok(()));
}

#[test]
fn commit_records_use_kafkas_schemas() {
    let mut m = GroupManager::new(config());
    commit(&mut m, "g", -1, "", 42, 1000).expect("commit");
    let records = m.take_records();
    assert_eq!(records.len(), 1);
    assert_eq!(
        RecordKey::decode(&records[0].key),
        Ok(RecordKey::Offset {
            group: "g".into(),
            topic: "t".into(),
            partition: 0
        })
    );
    let v = OffsetCommitValue::decode(records[0].value.as_ref().expect("value")).expect("decodes");
    assert_eq!(
        (
            v.offset,
            v.leader_epoch,
            v.metadata.as_str(),
            v.commit_timestamp_ms
        ),
        (42, 4, "md", 1000)
    );
}

#[test]
fn delete_groups_and_offsets() {
    let mut m = GroupManager::new(config());
    commit(&mut m, "simple", -1, "", 1, 1).expect("commit");
    stable_group_of_three(&mut m, "busy");
    let _ = m.take_records();
    let results = m.delete_groups(&["simple".into(), "busy".into(), "missing".into()]);
    assert_eq!(
        results,
        vec![
            Ok(()),
            Err(GroupError::NonEmptyGroup),
            Err(GroupError::GroupIdNotFound)
        ]
    );
    let tombstones = m.take_records();
    assert_eq!(tombstones.len(), 2, "one offset and the group");
    assert!(tombstones.iter().all(|r| r.value.is_none()));
    assert!(m.group("simple").is_none());

    // OffsetDelete: subscribed topics are protected while the group has members.
    let member = m.group("busy").expect("g").member_ids()[0].clone();
    commit(&mut m, "busy", 1, &member, 9, 2).expect("commit");
    let r = m
        .delete_offsets(
            "busy",
            &[TopicPartition::new("t", 0), TopicPartition::new("other", 0)],
        )
        .expect("delete");
    assert_eq!(r[0].1, Err(GroupError::GroupSubscribedToTopic));
    assert_eq!(r[1].1, Ok(()));
    assert_eq!(
        m.delete_offsets("missing", &[]),
        Err(GroupError::GroupIdNotFound)
    );
}

#[test]
fn offsets_of_empty_groups_expire_after_retention() {
    let retention = 60_000;
    let mut m = GroupManager::new(GroupConfig {
        offsets_retention_ms: retention,
        ..config()
    });
    let (ids, _, gen) = stable_group_of_three(&mut m, "g");
    commit(&mut m, "g", gen, &ids[0], 3, 0).expect("commit");
    // While members are subscribed, nothing expires.
    assert_eq!(m.expire_offsets(retention * 10), 0);
    m.leave(
        "g",
        &ids.iter().map(|i| (i.clone(), None)).collect::<Vec<_>>(),
        retention * 10,
    )
    .expect("leave");
    assert_eq!(m.group("g").map(|g| g.state()), Some(GroupState::Empty));
    assert_eq!(
        m.expire_offsets(retention * 11 - 1),
        0,
        "retention counts from the group becoming empty"
    );
    let _ = m.take_records();
    assert_eq!(m.expire_offsets(retention * 11), 1);
    assert!(
        m.group("g").is_none(),
        "an empty group without offsets is removed"
    );
    let records = m.take_records();
    assert_eq!(records.len(), 2);
    assert!(records.iter().all(|r| r.value.is_none()));
}

#[test]
fn replay_rebuilds_groups_and_offsets() {
    let mut m = GroupManager::new(config());
    let (ids, leader, gen) = stable_group_of_three(&mut m, "g");
    commit(&mut m, "g", gen, &ids[0], 77, 5).expect("commit");
    commit(&mut m, "simple", -1, "", 3, 5).expect("commit");
    m.delete_groups(&["simple".into()]);
    let records = m.take_records();

    let mut r = GroupManager::new(config());
    for rec in &records {
        r.replay(&rec.key, rec.value.as_deref(), 1000)
            .expect("replay");
    }
    let g = r.group("g").expect("group restored");
    assert_eq!(g.state(), GroupState::Stable);
    assert_eq!(g.generation_id(), gen);
    assert_eq!(g.leader_id(), Some(leader.as_str()));
    assert_eq!(g.member_ids().len(), 3);
    assert!(r.group("simple").is_none());
    let fetched = r.fetch_offsets("g", None);
    assert_eq!(fetched.len(), 1);
    assert_eq!(fetched[0].1.as_ref().map(|c| c.offset), Some(77));
    // Members keep their generation after a restart: heartbeats and commits go on.
    assert_eq!(r.heartbeat("g", &ids[1], None, gen, 1001), Ok(()));
    let s = now(sync(&mut r, "g", gen, &ids[1], vec![], 1001));
    assert_eq!(s.assignment, Bytes::from(format!("asg-{}", ids[1])));
}

#[test]
fn describe_and_list() {
    let mut m = GroupManager::new(config());
    stable_group_of_three(&mut m, "g");
    commit(&mut m, "simple", -1, "", 1, 1).expect("commit");
    let d = m.describe("g").expect("described");
    assert_eq!(d.state, GroupState::Stable);
    assert_eq!(d.protocol_type, "consumer");
    assert_eq!(d.protocol, "range");
    assert_eq!(d.members.len(), 3);
    assert!(d.members.iter().all(|mm| !mm.assignment.is_empty()));
    assert!(m.describe("missing").is_none());
    let list = m.list();
    assert_eq!(
        list.iter().map(|g| g.group_id.as_str()).collect::<Vec<_>>(),
        vec!["g", "simple"]
    );
    assert_eq!(list[1].state, GroupState::Empty);
}

type StoredRecord = (Bytes, Option<Bytes>);

/// Storage in memory, for the coordinator service.
#[derive(Default)]
struct MemoryStorage {
    partitions: PlMutex<Vec<Vec<StoredRecord>>>,
}

impl GroupStorage for MemoryStorage {
    fn partition_count(&self) -> i32 {
        3
    }
    fn append(
        &self,
        partition: i32,
        records: Vec<(Bytes, Option<Bytes>)>,
        _now_ms: i64,
    ) -> Result<Durability, CoreError> {
        let mut ps = self.partitions.lock();
        if ps.is_empty() {
            ps.resize(3, Vec::new());
        }
        ps[partition as usize].extend(records);
        Ok(Box::pin(async { Ok(()) }))
    }
    fn read_all(&self, partition: i32) -> Result<Vec<(Bytes, Option<Bytes>)>, CoreError> {
        Ok(self
            .partitions
            .lock()
            .get(partition as usize)
            .cloned()
            .unwrap_or_default())
    }
}

#[tokio::test]
async fn coordinator_service_stores_and_reloads_commits() {
    let storage = Arc::new(MemoryStorage::default());
    let clock = Arc::new(ManualClock::new(1_000));
    let c = GroupCoordinator::new(storage.clone(), clock.clone(), config());
    let r = c
        .commit_offsets(CommitRequest {
            group_id: "g".into(),
            generation_id: -1,
            member_id: String::new(),
            group_instance_id: None,
            offsets: vec![(
                TopicPartition::new("t", 2),
                OffsetCommit {
                    offset: 9,
                    leader_epoch: -1,
                    metadata: None,
                },
            )],
            missing_group_error: GroupError::IllegalGeneration,
        })
        .await
        .expect("commit");
    assert_eq!(r[0].1, Ok(()));
    let p = c.partition_for("g");
    assert_eq!(storage.read_all(p).expect("read").len(), 1);

    let reopened = GroupCoordinator::new(storage, clock, config());
    reopened.load().expect("load");
    let f = reopened.fetch_offsets("g", Some(&[TopicPartition::new("t", 2)]));
    assert_eq!(f[0].1.as_ref().map(|c| c.offset), Some(9));
}
