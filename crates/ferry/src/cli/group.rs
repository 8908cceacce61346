//! `ferry group list|describe|reset-offsets|delete`.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Context;
use clap::{ArgGroup, Args, Subcommand};
use ferry_client::kafka_protocol::messages::{
    DeleteGroupsRequest, DescribeGroupsRequest, ListGroupsRequest,
};
use ferry_client::Client;
use serde_json::{json, Value};

use super::kafka::{self, check, group_id, Tp};
use super::member::{commit_offsets, decode_assignment, PROTOCOL_TYPE};
use super::output::{parse_time_ms, print_json, Progress, Table};
use super::CommonArgs;

#[derive(Args, Debug)]
pub struct GroupArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(subcommand)]
    pub command: GroupCommand,
}

#[derive(Subcommand, Debug)]
pub enum GroupCommand {
    /// List consumer groups.
    List,
    /// Members and their assignments; per partition the committed offset, log end offset and lag.
    Describe { group: String },
    /// Move a group's committed offsets (a dry run unless --execute).
    #[command(group(ArgGroup::new("to").required(true).args(["to_earliest", "to_latest", "to_offset", "to_datetime", "shift_by"])))]
    ResetOffsets {
        group: String,
        /// Only these topics [default: every topic the group committed offsets for]
        #[arg(short, long = "topic")]
        topics: Vec<String>,
        #[arg(long)]
        to_earliest: bool,
        #[arg(long)]
        to_latest: bool,
        #[arg(long, value_name = "OFFSET")]
        to_offset: Option<i64>,
        /// ms since the epoch or RFC 3339, e.g. 2024-05-01T12:00:00Z
        #[arg(long, value_name = "TIME")]
        to_datetime: Option<String>,
        /// Move each committed offset by N (negative: back)
        #[arg(long, value_name = "N", allow_hyphen_values = true)]
        shift_by: Option<i64>,
        /// Show what would change without changing it (the default)
        #[arg(long, conflicts_with = "execute")]
        dry_run: bool,
        /// Commit the new offsets (the group must have no active members)
        #[arg(long)]
        execute: bool,
    },
    /// Delete consumer groups (they must have no active members).
    Delete {
        #[arg(required = true)]
        groups: Vec<String>,
    },
}

pub async fn run(args: GroupArgs) -> anyhow::Result<()> {
    let client = args.common.connect().await?;
    let json = args.common.json;
    match args.command {
        GroupCommand::List => list(&client, json).await,
        GroupCommand::Describe { group } => describe(&client, json, &group).await,
        GroupCommand::ResetOffsets {
            group,
            topics,
            to_earliest,
            to_latest,
            to_offset,
            to_datetime,
            shift_by,
            dry_run: _,
            execute,
        } => {
            let to = if to_earliest {
                Reset::Earliest
            } else if to_latest {
                Reset::Latest
            } else if let Some(o) = to_offset {
                Reset::Offset(o)
            } else if let Some(t) = to_datetime {
                Reset::Time(parse_time_ms(&t)?)
            } else {
                Reset::Shift(shift_by.context("no reset target")?)
            };
            reset_offsets(&client, json, &group, topics, to, execute).await
        }
        GroupCommand::Delete { groups } => delete(&client, json, groups).await,
    }
}

async fn list(client: &Client, json: bool) -> anyhow::Result<()> {
    let mut groups: BTreeMap<String, (String, String)> = BTreeMap::new();
    for node in client.broker_ids() {
        let resp = client.send_to(node, &ListGroupsRequest::default()).await?;
        check(resp.error_code, None, || {
            format!("listing groups on broker {node}")
        })?;
        for g in resp.groups {
            groups.insert(
                g.group_id.0.as_str().to_string(),
                (
                    g.protocol_type.as_str().to_string(),
                    g.group_state.as_str().to_string(),
                ),
            );
        }
    }
    if json {
        let v: Vec<Value> = groups
            .iter()
            .map(|(g, (pt, state))| json!({"group": g, "protocol_type": pt, "state": if state.is_empty() { Value::Null } else { Value::String(state.clone()) }}))
            .collect();
        print_json(&Value::Array(v));
        return Ok(());
    }
    let mut table = Table::new(&["GROUP", "STATE", "PROTOCOL-TYPE"]);
    for (g, (pt, state)) in groups {
        table.row(vec![g, state, pt]);
    }
    table.print();
    Ok(())
}

async fn describe(client: &Client, json: bool, group: &str) -> anyhow::Result<()> {
    let coordinator = client.find_coordinator(group, 0).await?;
    let resp = client
        .send_to(
            coordinator,
            &DescribeGroupsRequest::default().with_groups(vec![group_id(group)]),
        )
        .await?;
    let g = resp
        .groups
        .first()
        .context("DescribeGroups answered no group")?;
    check(g.error_code, g.error_message.as_ref(), || {
        format!("describing group {group}")
    })?;
    let consumer = g.protocol_type.as_str() == PROTOCOL_TYPE;
    let mut owner: BTreeMap<Tp, String> = BTreeMap::new();
    let mut members = Vec::new();
    for m in &g.members {
        let assigned = if consumer {
            decode_assignment(m.member_assignment.clone()).unwrap_or_default()
        } else {
            Vec::new()
        };
        for tp in &assigned {
            owner.insert(tp.clone(), m.member_id.as_str().to_string());
        }
        members.push((
            m.member_id.as_str().to_string(),
            m.client_id.as_str().to_string(),
            m.client_host.as_str().to_string(),
            assigned,
        ));
    }
    let committed = kafka::committed_offsets(client, coordinator, group, None).await?;
    let tps: BTreeSet<Tp> = committed.keys().chain(owner.keys()).cloned().collect();
    let tps: Vec<Tp> = tps.into_iter().collect();
    let ends = if tps.is_empty() {
        BTreeMap::new()
    } else {
        kafka::list_offsets(client, &tps, kafka::LATEST, 0).await?
    };
    // (partition, committed, log end, lag, owning member)
    type Row<'a> = (
        Tp,
        Option<i64>,
        Option<i64>,
        Option<i64>,
        Option<&'a String>,
    );
    let rows: Vec<Row> = tps
        .iter()
        .map(|tp| {
            let c = committed.get(tp).copied();
            let e = ends.get(tp).copied();
            let lag = match (c, e) {
                (Some(c), Some(e)) => Some((e - c).max(0)),
                (None, Some(e)) => Some(e),
                _ => None,
            };
            (tp.clone(), c, e, lag, owner.get(tp))
        })
        .collect();
    if json {
        let members: Vec<Value> = members
            .iter()
            .map(|(id, client_id, host, assigned)| {
                let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
                for (t, p) in assigned {
                    by_topic.entry(t).or_default().push(*p);
                }
                let assignments: Vec<Value> = by_topic.into_iter().map(|(t, ps)| json!({"topic": t, "partitions": ps})).collect();
                json!({"member_id": id, "client_id": client_id, "client_host": host, "assignments": assignments})
            })
            .collect();
        let offsets: Vec<Value> = rows
            .iter()
            .map(|((t, p), c, e, lag, m)| json!({"topic": t, "partition": p, "committed_offset": c, "log_end_offset": e, "lag": lag, "member_id": m}))
            .collect();
        print_json(&json!({
            "group": group,
            "state": g.group_state.as_str(),
            "protocol_type": g.protocol_type.as_str(),
            "protocol": g.protocol_data.as_str(),
            "members": members,
            "offsets": offsets,
        }));
        return Ok(());
    }
    println!(
        "group {group}: state {}, protocol {} {}, {} members",
        g.group_state.as_str(),
        g.protocol_type.as_str(),
        g.protocol_data.as_str(),
        members.len()
    );
    if !members.is_empty() {
        println!();
        let mut table = Table::new(&["MEMBER", "CLIENT-ID", "HOST", "ASSIGNMENT"]);
        for (id, client_id, host, assigned) in &members {
            let a: Vec<String> = assigned.iter().map(|(t, p)| format!("{t}/{p}")).collect();
            table.row(vec![
                id.clone(),
                client_id.clone(),
                host.clone(),
                a.join(","),
            ]);
        }
        table.print();
    }
    println!();
    let mut table = Table::new(&[
        "TOPIC",
        "PARTITION",
        "COMMITTED",
        "LOG-END",
        "LAG",
        "MEMBER",
    ]);
    let opt = |v: &Option<i64>| v.map_or("-".to_string(), |v| v.to_string());
    for ((t, p), c, e, lag, m) in &rows {
        table.row(vec![
            t.clone(),
            p.to_string(),
            opt(c),
            opt(e),
            opt(lag),
            m.cloned().unwrap_or_else(|| "-".into()),
        ]);
    }
    table.print();
    Ok(())
}

#[derive(Debug, Clone, Copy)]
enum Reset {
    Earliest,
    Latest,
    Offset(i64),
    Time(i64),
    Shift(i64),
}

async fn reset_offsets(
    client: &Client,
    json: bool,
    group: &str,
    topics: Vec<String>,
    to: Reset,
    execute: bool,
) -> anyhow::Result<()> {
    let coordinator = client.find_coordinator(group, 0).await?;
    let committed = kafka::committed_offsets(client, coordinator, group, None).await?;
    let tps: Vec<Tp> = if topics.is_empty() {
        committed.keys().cloned().collect()
    } else {
        kafka::partitions_of(client, &topics).await?
    };
    anyhow::ensure!(
        !tps.is_empty(),
        "group {group} has no committed offsets; name the topics with --topic"
    );
    let earliest = kafka::list_offsets(client, &tps, kafka::EARLIEST, 0).await?;
    let latest = kafka::list_offsets(client, &tps, kafka::LATEST, 0).await?;
    let at_time = match to {
        Reset::Time(ts) => kafka::list_offsets(client, &tps, ts, 0).await?,
        _ => BTreeMap::new(),
    };
    let mut plan: BTreeMap<Tp, (Option<i64>, i64)> = BTreeMap::new();
    for tp in &tps {
        let (lo, hi) = (
            earliest.get(tp).copied().unwrap_or(0),
            latest.get(tp).copied().unwrap_or(0),
        );
        let current = committed.get(tp).copied();
        let target = match to {
            Reset::Earliest => lo,
            Reset::Latest => hi,
            Reset::Offset(o) => o,
            Reset::Time(_) => at_time.get(tp).copied().filter(|o| *o >= 0).unwrap_or(hi),
            Reset::Shift(n) => current.unwrap_or(lo).saturating_add(n),
        };
        plan.insert(tp.clone(), (current, target.clamp(lo, hi.max(lo))));
    }
    if execute {
        let mut progress = Progress::new(&format!("resetting offsets of {group}"));
        let total = plan.len() as u64;
        // Commit in chunks so a large reset shows progress.
        let targets: Vec<(Tp, i64)> = plan.iter().map(|(tp, (_, t))| (tp.clone(), *t)).collect();
        for (i, chunk) in targets.chunks(500).enumerate() {
            let offsets: BTreeMap<Tp, i64> = chunk.iter().cloned().collect();
            commit_offsets(client, coordinator, group, -1, "", &offsets)
                .await
                .with_context(|| {
                    format!(
                        "committing new offsets for group {group} (it must have no active members)"
                    )
                })?;
            progress.update(
                ((i * 500 + chunk.len()) as u64).min(total),
                total,
                "partitions",
            );
        }
        progress.finish();
    }
    if json {
        let partitions: Vec<Value> = plan
            .iter()
            .map(|((t, p), (c, n))| json!({"topic": t, "partition": p, "current_offset": c, "new_offset": n}))
            .collect();
        print_json(&json!({"group": group, "executed": execute, "partitions": partitions}));
        return Ok(());
    }
    let mut table = Table::new(&["TOPIC", "PARTITION", "CURRENT", "NEW"]);
    for ((t, p), (c, n)) in &plan {
        table.row(vec![
            t.clone(),
            p.to_string(),
            c.map_or("-".into(), |c| c.to_string()),
            n.to_string(),
        ]);
    }
    table.print();
    if !execute {
        eprintln!("dry run: nothing changed; add --execute to commit these offsets");
    }
    Ok(())
}

async fn delete(client: &Client, json: bool, groups: Vec<String>) -> anyhow::Result<()> {
    let mut by_coordinator: BTreeMap<i32, Vec<String>> = BTreeMap::new();
    for g in &groups {
        by_coordinator
            .entry(client.find_coordinator(g, 0).await?)
            .or_default()
            .push(g.clone());
    }
    let mut results = Vec::new();
    let mut failed = None;
    for (node, gs) in by_coordinator {
        let resp = client
            .send_to(
                node,
                &DeleteGroupsRequest::default()
                    .with_groups_names(gs.iter().map(|g| group_id(g)).collect()),
            )
            .await?;
        for r in resp.results {
            let g = r.group_id.0.as_str().to_string();
            match check(r.error_code, None, || format!("deleting group {g}")) {
                Ok(()) => results.push(json!({"group": g, "deleted": true})),
                Err(e) => {
                    results.push(json!({"group": g, "deleted": false, "error": e.to_string()}));
                    failed.get_or_insert(e);
                }
            }
        }
    }
    if json {
        print_json(&Value::Array(results));
    } else {
        for r in &results {
            if r["deleted"] == true {
                println!("deleted group {}", r["group"].as_str().unwrap_or_default());
            }
        }
    }
    failed.map_or(Ok(()), Err)
}
