//! Server-side assignors of consumer (KIP-848) groups: `uniform` and `range`,
//! the two Kafka ships (`group.consumer.assignors`, uniform first).
//!
//! An assignor maps every member to the partitions it should own (the target
//! assignment). It sees the members' subscriptions and their previous target
//! assignment, and only topics that exist; it never sees who owns what right now
//! (reconciliation in `consumer.rs` handles the hand-over).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use uuid::Uuid;

/// Partitions by topic id.
pub type Assignment = BTreeMap<Uuid, BTreeSet<i32>>;

/// The assignor used when no member asks for one (Kafka's default order).
pub const DEFAULT_ASSIGNOR: &str = "uniform";
/// Every assignor ferry offers.
pub const ASSIGNORS: &[&str] = &["uniform", "range"];

/// One member as an assignor sees it.
#[derive(Debug, Clone, Default)]
pub struct MemberSpec {
    /// Topic ids the member subscribes to that exist.
    pub subscribed: BTreeSet<Uuid>,
    /// The member's previous target assignment, for stickiness.
    pub previous: Assignment,
}

/// Whether `name` is an assignor ferry offers.
pub fn is_supported(name: &str) -> bool {
    ASSIGNORS.contains(&name)
}

/// Runs assignor `name` (uniform if unknown) over `members` and `topics`
/// (topic id → partition count).
pub fn assign(
    name: &str,
    members: &BTreeMap<String, MemberSpec>,
    topics: &BTreeMap<Uuid, i32>,
) -> BTreeMap<String, Assignment> {
    match name {
        "range" => range(members, topics),
        _ => uniform(members, topics),
    }
}

/// Kafka's range assignor: per topic, its subscribers in member id order each get
/// a contiguous range; the first `partitions % subscribers` get one more.
pub fn range(
    members: &BTreeMap<String, MemberSpec>,
    topics: &BTreeMap<Uuid, i32>,
) -> BTreeMap<String, Assignment> {
    let mut out: BTreeMap<String, Assignment> = members
        .keys()
        .map(|m| (m.clone(), Assignment::new()))
        .collect();
    for (&topic, &count) in topics {
        let subscribers: Vec<&String> = members
            .iter()
            .filter(|(_, s)| s.subscribed.contains(&topic))
            .map(|(id, _)| id)
            .collect();
        if subscribers.is_empty() || count <= 0 {
            continue;
        }
        let n = subscribers.len() as i32;
        let (quota, extra) = (count / n, count % n);
        let mut next = 0;
        for (i, member) in subscribers.into_iter().enumerate() {
            let take = quota + i32::from((i as i32) < extra);
            if take == 0 {
                continue;
            }
            let partitions: BTreeSet<i32> = (next..next + take).collect();
            next += take;
            if let Some(a) = out.get_mut(member) {
                a.insert(topic, partitions);
            }
        }
    }
    out
}

/// Kafka's uniform assignor: every member gets as many partitions as the others
/// (within one, where subscriptions allow it), and partitions stay with their
/// previous owner where balance allows.
pub fn uniform(
    members: &BTreeMap<String, MemberSpec>,
    topics: &BTreeMap<Uuid, i32>,
) -> BTreeMap<String, Assignment> {
    let ids: Vec<&String> = members.keys().collect();
    let mut owner: HashMap<(Uuid, i32), usize> = HashMap::new();
    let mut counts = vec![0usize; ids.len()];
    let total: usize = topics
        .iter()
        .filter(|(t, _)| members.values().any(|m| m.subscribed.contains(t)))
        .map(|(_, &c)| c.max(0) as usize)
        .sum();
    // Upper bound of a balanced share; the rebalance pass below evens out the rest.
    let ceiling = if ids.is_empty() {
        0
    } else {
        total.div_ceil(ids.len())
    };
    // 1. Stickiness: keep previous partitions that still exist and are subscribed,
    //    up to the balanced share.
    for (i, id) in ids.iter().enumerate() {
        let spec = &members[*id];
        for (topic, partitions) in &spec.previous {
            let Some(&count) = topics.get(topic) else {
                continue;
            };
            if !spec.subscribed.contains(topic) {
                continue;
            }
            for &p in partitions {
                if p < count && counts[i] < ceiling && !owner.contains_key(&(*topic, p)) {
                    owner.insert((*topic, p), i);
                    counts[i] += 1;
                }
            }
        }
    }
    // 2. Every partition left goes to the least loaded subscriber.
    for (&topic, &count) in topics {
        let eligible: Vec<usize> = (0..ids.len())
            .filter(|&i| members[ids[i]].subscribed.contains(&topic))
            .collect();
        if eligible.is_empty() {
            continue;
        }
        for p in 0..count.max(0) {
            if owner.contains_key(&(topic, p)) {
                continue;
            }
            let Some(&best) = eligible.iter().min_by_key(|&&i| (counts[i], i)) else {
                continue;
            };
            owner.insert((topic, p), best);
            counts[best] += 1;
        }
    }
    // 3. Balance: move a partition from a member with more than one above a
    //    subscriber of it with fewer. Each move lowers the sum of squares, so this
    //    ends; the bound only guards against a bug.
    let mut keys: Vec<(Uuid, i32)> = owner.keys().copied().collect();
    keys.sort();
    for _ in 0..total.saturating_mul(2).max(1) {
        let mut moved = false;
        for key in &keys {
            let from = owner[key];
            let to = (0..ids.len())
                .filter(|&i| members[ids[i]].subscribed.contains(&key.0))
                .min_by_key(|&i| (counts[i], i));
            if let Some(to) = to {
                if counts[to] + 1 < counts[from] {
                    owner.insert(*key, to);
                    counts[from] -= 1;
                    counts[to] += 1;
                    moved = true;
                }
            }
        }
        if !moved {
            break;
        }
    }
    let mut out: BTreeMap<String, Assignment> = ids
        .iter()
        .map(|m| ((*m).clone(), Assignment::new()))
        .collect();
    for ((topic, p), i) in owner {
        if let Some(a) = out.get_mut(ids[i]) {
            a.entry(topic).or_default().insert(p);
        }
    }
    out
}

/// Number of partitions in an assignment.
pub fn partition_count(a: &Assignment) -> usize {
    a.values().map(BTreeSet::len).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(topics: &[Uuid]) -> MemberSpec {
        MemberSpec {
            subscribed: topics.iter().copied().collect(),
            previous: Assignment::new(),
        }
    }

    fn all(result: &BTreeMap<String, Assignment>) -> Vec<(Uuid, i32)> {
        let mut v: Vec<(Uuid, i32)> = result
            .values()
            .flat_map(|a| {
                a.iter()
                    .flat_map(|(t, ps)| ps.iter().map(move |p| (*t, *p)))
            })
            .collect();
        v.sort();
        v
    }

    #[test]
    fn uniform_is_complete_disjoint_and_balanced() {
        let (t1, t2) = (Uuid::new_v4(), Uuid::new_v4());
        let topics = BTreeMap::from([(t1, 6), (t2, 1)]);
        let members: BTreeMap<String, MemberSpec> = ["a", "b", "c"]
            .iter()
            .map(|m| (m.to_string(), spec(&[t1, t2])))
            .collect();
        let out = uniform(&members, &topics);
        let got = all(&out);
        assert_eq!(got.len(), 7, "every partition once");
        let mut dedup = got.clone();
        dedup.dedup();
        assert_eq!(dedup, got, "no partition twice");
        let sizes: Vec<usize> = out.values().map(partition_count).collect();
        assert!(sizes.iter().max().expect("present") - sizes.iter().min().expect("present") <= 1);
    }

    #[test]
    fn uniform_is_sticky_when_a_member_joins() {
        let t = Uuid::new_v4();
        let topics = BTreeMap::from([(t, 6)]);
        let mut members: BTreeMap<String, MemberSpec> = ["a", "b"]
            .iter()
            .map(|m| (m.to_string(), spec(&[t])))
            .collect();
        let first = uniform(&members, &topics);
        for (id, a) in &first {
            members.get_mut(id).expect("present").previous = a.clone();
        }
        members.insert("c".into(), spec(&[t]));
        let second = uniform(&members, &topics);
        assert_eq!(all(&second).len(), 6);
        for id in ["a", "b"] {
            let kept = second[id][&t].intersection(&first[id][&t]).count();
            assert_eq!(kept, 2, "{id} keeps two of its three partitions");
        }
        assert_eq!(partition_count(&second["c"]), 2);
    }

    #[test]
    fn uniform_respects_heterogeneous_subscriptions() {
        let (t1, t2) = (Uuid::new_v4(), Uuid::new_v4());
        let topics = BTreeMap::from([(t1, 4), (t2, 2)]);
        let members = BTreeMap::from([
            ("a".to_string(), spec(&[t1])),
            ("b".to_string(), spec(&[t1, t2])),
        ]);
        let out = uniform(&members, &topics);
        assert!(!out["a"].contains_key(&t2));
        assert_eq!(all(&out).len(), 6);
        assert_eq!(partition_count(&out["a"]), 3);
        assert_eq!(partition_count(&out["b"]), 3);
    }

    #[test]
    fn range_gives_contiguous_ranges_in_member_order() {
        let t = Uuid::new_v4();
        let topics = BTreeMap::from([(t, 7)]);
        let members: BTreeMap<String, MemberSpec> = ["a", "b", "c"]
            .iter()
            .map(|m| (m.to_string(), spec(&[t])))
            .collect();
        let out = range(&members, &topics);
        assert_eq!(out["a"][&t], BTreeSet::from([0, 1, 2]));
        assert_eq!(out["b"][&t], BTreeSet::from([3, 4]));
        assert_eq!(out["c"][&t], BTreeSet::from([5, 6]));
    }

    #[test]
    fn no_members_or_no_topics_assign_nothing() {
        let t = Uuid::new_v4();
        assert!(uniform(&BTreeMap::new(), &BTreeMap::from([(t, 3)])).is_empty());
        let members = BTreeMap::from([("a".to_string(), spec(&[t]))]);
        assert!(all(&uniform(&members, &BTreeMap::new())).is_empty());
        assert!(all(&range(&members, &BTreeMap::new())).is_empty());
    }
}
