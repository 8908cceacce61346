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
    // Preferred leaders spread likewise.
    let mut leads: BTreeMap<i32, usize> = live.iter().map(|b| (*b, 0)).collect();
    for replicas in target.values_mut() {
        if let Some(i) =
            (0..replicas.len()).min_by_key(|i| (leads.get(&replicas[*i]).copied().unwrap_or(0), *i))
        {
            replicas.swap(0, i);
            *leads.entry(replicas[0]).or_default() += 1;
        }
    }
    target
        .into_iter()
        .filter(|(tp, r)| assignment.get(tp) != Some(r))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

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
        // Balanced already: nothing to do.
        let even = assignment(&[&[1, 2], &[2, 1]]);
        assert!(rebalance(&even, &[1, 2]).is_empty());
    }
}
