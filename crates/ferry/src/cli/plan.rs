//! Replica plans for `ferry cluster decommission` and `ferry cluster rebalance`:
//! pure functions from the current assignment and the live brokers to a target
//! assignment, carried out with AlterPartitionReassignments.

use std::collections::BTreeMap;

/// Partition (topic, index) → replicas, the first being the preferred leader.
pub type Assignment = BTreeMap<(String, i32), Vec<i32>>;

/// Replicas held per live broker.
fn load(assignment: &Assignment, live: &[i32]) -> BTreeMap<i32, usize> {
    let mut counts: BTreeMap<i32, usize> = live.iter().map(|b| (*b, 0)).collect();
    for replicas in assignment.values() {
        for r in replicas {
            if let Some(c) = counts.get_mut(r) {
                *c += 1;
            }
        }
    }
    counts
}

/// The least loaded live broker not already among `replicas`.
fn least_loaded(counts: &BTreeMap<i32, usize>, replicas: &[i32]) -> Option<i32> {
    counts
        .iter()
        .filter(|(b, _)| !replicas.contains(b))
        .min_by_key(|(b, c)| (**c, **b))
        .map(|(b, _)| *b)
}

/// Every replica on `node` moves to the least loaded other live broker that
/// does not hold the partition yet; the partitions that change, with their
/// new replicas.
pub fn decommission(
    assignment: &Assignment,
    live: &[i32],
    node: i32,
) -> Result<Assignment, String> {
    let others: Vec<i32> = live.iter().copied().filter(|b| *b != node).collect();
    let mut counts = load(assignment, &others);
    let mut moves = Assignment::new();
    for (tp, replicas) in assignment {
        let Some(i) = replicas.iter().position(|r| *r == node) else {
            continue;
        };
        let to = least_loaded(&counts, replicas).ok_or_else(|| {
            format!(
                "{}-{}: no live broker left to take its replica from {node}",
                tp.0, tp.1
            )
        })?;
        let mut target = replicas.clone();
        target[i] = to;
        *counts.entry(to).or_default() += 1;
        moves.insert(tp.clone(), target);
    }
    Ok(moves)
}

/// Replicas move from the most loaded live brokers (and from brokers that are
/// gone) to the least loaded ones until the counts differ by at most one, then
/// each partition's preferred leader is the replica that leads fewest so far.
/// The partitions that change, with their new replicas.
pub fn rebalance(assignment: &Assignment, live: &[i32]) -> Assignment {
    let mut target = assignment.clone();
    let mut counts = load(&target, live);
    // Replicas on brokers that are not live go first.
    for replicas in target.values_mut() {
        for i in 0..replicas.len() {
            if !live.contains(&replicas[i]) {
                if let Some(to) = least_loaded(&counts, replicas) {
                    replicas[i] = to;
                    *counts.entry(to).or_default() += 1;
                }
            }
        }
    }
    // Then one replica at a time from the fullest broker to the emptiest.
    while let Some((&max_b, &max_c)) = counts
        .iter()
        .max_by_key(|(b, c)| (**c, std::cmp::Reverse(**b)))
    {
        let Some((&min_b, &min_c)) = counts.iter().min_by_key(|(b, c)| (**c, **b)) else {
            break;
        };
        if max_c <= min_c + 1 {
            break;
        }
        let movable = target
            .values_mut()
            .find(|r| r.contains(&max_b) && !r.contains(&min_b));
        let Some(replicas) = movable else { break };
        if let Some(slot) = replicas.iter_mut().find(|r| **r == max_b) {
            *slot = min_b;
        }
        *counts.entry(max_b).or_default() -= 1;
        *counts.entry(min_b).or_default() += 1;
    }
    spread_preferred_leaders(&mut target, live);
    target
        .into_iter()
        .filter(|(tp, r)| assignment.get(tp) != Some(r))
        .collect()
}

/// Makes the first replica of each partition (its preferred leader) the one
/// that leads fewest so far, then, while some broker leads at least two more
/// partitions than another it can hand leadership to through a chain of
/// partitions (A leads one that B holds, B leads one that C holds, ...), shifts
/// one leadership along that chain: the counts end within one wherever the
/// replica placement allows it.
fn spread_preferred_leaders(target: &mut Assignment, live: &[i32]) {
    let mut leads: BTreeMap<i32, usize> = live.iter().map(|b| (*b, 0)).collect();
    for replicas in target.values_mut() {
        if let Some(i) =
            (0..replicas.len()).min_by_key(|i| (leads.get(&replicas[*i]).copied().unwrap_or(0), *i))
        {
            replicas.swap(0, i);
            *leads.entry(replicas[0]).or_default() += 1;
        }
    }
    // Each shift lowers the sum of squared counts, so this ends.
    while let Some(path) = leadership_chain(target, &leads) {
        for (tp, to) in path {
            if let Some(replicas) = target.get_mut(&tp) {
                let from = replicas[0];
                if let Some(i) = replicas.iter().position(|r| *r == to) {
                    replicas.swap(0, i);
                    *leads.entry(from).or_default() -= 1;
                    *leads.entry(to).or_default() += 1;
                }
            }
        }
    }
}

/// Broker → (the partition handed to it, the broker that handed it).
type CameFrom = BTreeMap<i32, Option<((String, i32), i32)>>;

/// A chain of leadership hand-overs, (partition, new leader) from a broker
/// leading the most to one leading at least two fewer; `None` when there is
/// none (a breadth-first search over "leads a partition the other holds").
fn leadership_chain(
    target: &Assignment,
    leads: &BTreeMap<i32, usize>,
) -> Option<Vec<((String, i32), i32)>> {
    let max = *leads.values().max()?;
    for (&start, _) in leads.iter().filter(|(_, c)| **c == max) {
        // broker → (partition handed to it, broker that handed it)
        let mut came_from: CameFrom = BTreeMap::new();
        came_from.insert(start, None);
        let mut queue = std::collections::VecDeque::from([start]);
        while let Some(b) = queue.pop_front() {
            if leads.get(&b).is_some_and(|c| c + 2 <= max) {
                let mut path = Vec::new();
                let mut at = b;
                while let Some(Some((tp, prev))) = came_from.get(&at) {
                    path.push((tp.clone(), at));
                    at = *prev;
                }
                path.reverse();
                return Some(path);
            }
            for (tp, replicas) in target.iter().filter(|(_, r)| r.first() == Some(&b)) {
                for r in &replicas[1..] {
                    if leads.contains_key(r) && !came_from.contains_key(r) {
                        came_from.insert(*r, Some((tp.clone(), b)));
                        queue.push_back(*r);
                    }
                }
            }
        }
    }
    None
}

/// Parses one move of `ferry cluster reassign`: `TOPIC:PARTITION=REPLICAS`,
/// the replicas comma-separated broker ids.
pub fn parse_move(s: &str) -> Result<((String, i32), Vec<i32>), String> {
    let bad = || format!("{s:?}: expected TOPIC:PARTITION=BROKER[,BROKER...]");
    let (tp, replicas) = s.split_once('=').ok_or_else(bad)?;
    let (topic, partition) = tp.rsplit_once(':').ok_or_else(bad)?;
    let partition: i32 = partition.trim().parse().map_err(|_| bad())?;
    let replicas = replicas
        .split(',')
        .map(|r| r.trim().parse::<i32>().map_err(|_| bad()))
        .collect::<Result<Vec<_>, _>>()?;
    if topic.is_empty() || partition < 0 {
        return Err(bad());
    }
    Ok(((topic.to_string(), partition), replicas))
}

/// The replication throttle of a move, per topic, as
/// `kafka-reassign-partitions --throttle` sets it: the
/// `leader.replication.throttled.replicas` list names every current replica of
/// each moving partition (any of them may lead while the new ones copy), the
/// `follower.replication.throttled.replicas` list the replicas being added.
pub fn throttled_replicas(
    current: &Assignment,
    moves: &Assignment,
) -> BTreeMap<String, (String, String)> {
    let mut lists: BTreeMap<String, (Vec<String>, Vec<String>)> = BTreeMap::new();
    for ((topic, partition), target) in moves {
        let before = current
            .get(&(topic.clone(), *partition))
            .map_or(&[][..], |r| r.as_slice());
        let (leader, follower) = lists.entry(topic.clone()).or_default();
        leader.extend(before.iter().map(|b| format!("{partition}:{b}")));
        follower.extend(
            target
                .iter()
                .filter(|b| !before.contains(b))
                .map(|b| format!("{partition}:{b}")),
        );
    }
    lists
        .into_iter()
        .map(|(topic, (leader, follower))| (topic, (leader.join(","), follower.join(","))))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moves_parse_from_topic_partition_and_replicas() {
        assert_eq!(
            parse_move("orders.v1:3=2, 3"),
            Ok((("orders.v1".to_string(), 3), vec![2, 3]))
        );
        for bad in [
            "orders:3",
            "orders=1",
            ":0=1",
            "orders:x=1",
            "orders:0=",
            "orders:-1=1",
        ] {
            assert!(parse_move(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_throttle_names_the_current_replicas_as_leaders_and_the_new_as_followers() {
        let current: Assignment = [
            (("a".to_string(), 0), vec![1, 2]),
            (("a".to_string(), 1), vec![2, 3]),
            (("b".to_string(), 0), vec![3]),
        ]
        .into();
        let moves: Assignment = [
            (("a".to_string(), 0), vec![2, 4]),
            (("a".to_string(), 1), vec![3, 2]),
            (("b".to_string(), 0), vec![1]),
        ]
        .into();
        let lists = throttled_replicas(&current, &moves);
        assert_eq!(
            lists["a"],
            ("0:1,0:2,1:2,1:3".to_string(), "0:4".to_string())
        );
        assert_eq!(lists["b"], ("0:3".to_string(), "0:1".to_string()));
    }

    fn assignment(parts: &[&[i32]]) -> Assignment {
        parts
            .iter()
            .enumerate()
            .map(|(i, r)| (("t".to_string(), i as i32), r.to_vec()))
            .collect()
    }

    #[test]
    fn decommission_moves_every_replica_off_the_node_to_the_least_loaded() {
        let current = assignment(&[&[1, 3], &[2, 3], &[3, 1], &[1, 2]]);
        let moves = decommission(&current, &[1, 2, 3, 4], 3).expect("plan");
        assert_eq!(moves.len(), 3);
        for (tp, replicas) in &moves {
            assert!(!replicas.contains(&3), "{tp:?} {replicas:?}");
            let mut sorted = replicas.clone();
            sorted.dedup();
            assert_eq!(sorted.len(), 2, "no broker twice");
        }
        // Broker 4 held nothing: it takes the first replicas.
        assert_eq!(moves[&("t".to_string(), 0)], vec![1, 4]);
        assert!(
            decommission(&assignment(&[&[1, 2]]), &[1, 2], 2).is_err(),
            "nowhere to go"
        );
    }

    #[test]
    fn rebalance_evens_out_a_new_broker_and_spreads_preferred_leaders() {
        let current = assignment(&[&[1, 2], &[2, 3], &[3, 1], &[1, 2], &[2, 3], &[3, 1]]);
        let moves = rebalance(&current, &[1, 2, 3, 4]);
        let mut after = current.clone();
        after.extend(moves);
        let counts = load(&after, &[1, 2, 3, 4]);
        let (min, max) = (counts.values().min(), counts.values().max());
        assert!(max.zip(min).is_some_and(|(a, b)| a - b <= 1), "{counts:?}");
        let mut leaders: BTreeMap<i32, usize> = BTreeMap::new();
        for r in after.values() {
            *leaders.entry(r[0]).or_default() += 1;
        }
        assert!(leaders.values().all(|n| *n <= 2), "{leaders:?}");
        // Greedy in partition order would give 1 two leaderships and 3 none.
        let chain = assignment(&[&[1, 2], &[1, 2], &[1, 3]]);
        let mut after = chain.clone();
        after.extend(rebalance(&chain, &[1, 2, 3]));
        let mut leaders: BTreeMap<i32, usize> = BTreeMap::new();
        for r in after.values() {
            *leaders.entry(r[0]).or_default() += 1;
        }
        assert!(leaders.values().all(|n| *n <= 1), "{after:?}");
        // Balanced already: nothing to do.
        let even = assignment(&[&[1, 2], &[2, 1]]);
        assert!(rebalance(&even, &[1, 2]).is_empty());
    }
}
