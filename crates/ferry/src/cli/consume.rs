//! `ferry consume TOPIC`: fetches from each partition's leader and prints
//! records, alone or as a member of a consumer group (`--group`).
//!
//! `--format` placeholders (kcat's style): `%k` key, `%v` value, `%h` headers
//! (`k=v,k=v`), `%p` partition, `%o` offset, `%t` timestamp (ms), `%T` topic,
//! `%%` a percent sign; `\n` and `\t` are newline and tab. `--json` prints one
//! JSON object per record per line (JSON Lines).

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Instant;

use clap::Args;
use ferry_client::kafka_protocol::ResponseError;
use ferry_log::record::Record;
use serde_json::json;

use super::kafka::{self, text, Tp};
use super::member::{GroupMember, HEARTBEAT_INTERVAL};
use super::output::parse_time_ms;
use super::CommonArgs;

const FETCH_MAX_WAIT_MS: i32 = 500;
const COMMIT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

#[derive(Args, Debug)]
pub struct ConsumeArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    pub topic: String,
    /// Start at the earliest offset (when the group has no committed offset)
    #[arg(long)]
    pub from_beginning: bool,
    /// Start at this offset in every partition read
    #[arg(long, conflicts_with_all = ["from_beginning", "timestamp"])]
    pub offset: Option<i64>,
    /// Start at the first record at or after this time (ms since the epoch or RFC 3339)
    #[arg(long, conflicts_with = "from_beginning")]
    pub timestamp: Option<String>,
    /// Read only this partition [default: all]
    #[arg(short, long, conflicts_with = "group")]
    pub partition: Option<i32>,
    /// Consume as a member of this consumer group, committing offsets
    #[arg(short, long)]
    pub group: Option<String>,
    /// Exit after this many records
    #[arg(short = 'n', long = "count")]
    pub count: Option<u64>,
    /// read_uncommitted or read_committed
    #[arg(long, default_value = "read_uncommitted")]
    pub isolation: String,
    /// Output format with %k %v %h %p %o %t %T placeholders
    #[arg(short, long, default_value = "%v\\n", conflicts_with = "json")]
    pub format: String,
}

/// Renders a record with a `--format` string.
pub fn format_record(format: &str, topic: &str, partition: i32, r: &Record) -> Vec<u8> {
    let mut out = Vec::new();
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, chars.peek().copied()) {
            ('%', Some(p)) => {
                chars.next();
                match p {
                    'k' => out.extend_from_slice(r.key.as_deref().unwrap_or_default()),
                    'v' => out.extend_from_slice(r.value.as_deref().unwrap_or_default()),
                    'h' => {
                        let hs: Vec<String> = r
                            .headers
                            .iter()
                            .map(|(k, v)| {
                                format!(
                                    "{k}={}",
                                    v.as_ref()
                                        .map(|v| String::from_utf8_lossy(v).into_owned())
                                        .unwrap_or_default()
                                )
                            })
                            .collect();
                        out.extend_from_slice(hs.join(",").as_bytes());
                    }
                    'p' => out.extend_from_slice(partition.to_string().as_bytes()),
                    'o' => out.extend_from_slice(r.offset.to_string().as_bytes()),
                    't' => out.extend_from_slice(r.timestamp.to_string().as_bytes()),
                    'T' => out.extend_from_slice(topic.as_bytes()),
                    '%' => out.push(b'%'),
                    other => {
                        out.push(b'%');
                        out.extend_from_slice(other.to_string().as_bytes());
                    }
                }
            }
            ('\\', Some('n')) => {
                chars.next();
                out.push(b'\n');
            }
            ('\\', Some('t')) => {
                chars.next();
                out.push(b'\t');
            }
            (c, _) => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out
}

/// A record as one line of JSON.
pub fn record_json(topic: &str, partition: i32, r: &Record) -> serde_json::Value {
    let headers: serde_json::Map<String, serde_json::Value> = r
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                text(v).map_or(serde_json::Value::Null, serde_json::Value::String),
            )
        })
        .collect();
    json!({
        "topic": topic,
        "partition": partition,
        "offset": r.offset,
        "timestamp": r.timestamp,
        "key": text(&r.key),
        "value": text(&r.value),
        "headers": headers,
    })
}

pub async fn run(args: ConsumeArgs) -> anyhow::Result<()> {
    let isolation: i8 = match args.isolation.as_str() {
        "read_uncommitted" => 0,
        "read_committed" => 1,
        other => {
            anyhow::bail!("--isolation must be read_uncommitted or read_committed, not {other:?}")
        }
    };
    let timestamp = args.timestamp.as_deref().map(parse_time_ms).transpose()?;
    let client = args.common.connect().await?;
    let info = client.topic(&args.topic).await?;
    let mut member = match &args.group {
        Some(g) => Some(GroupMember::join(client.clone(), g, vec![args.topic.clone()]).await?),
        None => None,
    };
    let assigned = |member: &Option<GroupMember>| -> Vec<Tp> {
        match member {
            Some(m) => m.assignment.clone(),
            None => info
                .partitions
                .iter()
                .filter(|p| args.partition.is_none_or(|want| want == p.partition))
                .map(|p| (args.topic.clone(), p.partition))
                .collect(),
        }
    };
    let mut tps = assigned(&member);
    if let Some(p) = args.partition {
        anyhow::ensure!(!tps.is_empty(), "topic {} has no partition {p}", args.topic);
    }
    let mut positions =
        start_positions(&client, &args, member.as_ref(), &tps, timestamp, isolation).await?;
    let mut printed = 0u64;
    let mut last_heartbeat = Instant::now();
    let mut last_commit = Instant::now();
    let mut committed: BTreeMap<Tp, i64> = BTreeMap::new();
    let stdout = std::io::stdout();
    let done = |printed: u64| args.count.is_some_and(|n| printed >= n);
    let mut interrupted = false;
    while !done(printed) {
        if let Some(m) = member.as_mut() {
            if last_heartbeat.elapsed() >= HEARTBEAT_INTERVAL {
                last_heartbeat = Instant::now();
                if !m.heartbeat().await? {
                    m.commit(&positions).await.ok();
                    m.rejoin().await?;
                    tps = assigned(&member);
                    positions = start_positions(
                        &client,
                        &args,
                        member.as_ref(),
                        &tps,
                        timestamp,
                        isolation,
                    )
                    .await?;
                    continue;
                }
            }
            if last_commit.elapsed() >= COMMIT_INTERVAL && committed != positions {
                m.commit(&positions).await?;
                committed = positions.clone();
                last_commit = Instant::now();
            }
        }
        let mut by_leader: BTreeMap<i32, Vec<(Tp, i64)>> = BTreeMap::new();
        for (tp, offset) in &positions {
            by_leader
                .entry(client.leader(&tp.0, tp.1).await?)
                .or_default()
                .push((tp.clone(), *offset));
        }
        if by_leader.is_empty() {
            // A member with no partitions waits for the next rebalance.
            tokio::select! {
                _ = tokio::time::sleep(HEARTBEAT_INTERVAL) => continue,
                _ = tokio::signal::ctrl_c() => break,
            }
        }
        for (leader, wanted) in by_leader {
            let fetched = tokio::select! {
                f = kafka::fetch(&client, leader, &wanted, isolation, FETCH_MAX_WAIT_MS) => f?,
                _ = tokio::signal::ctrl_c() => { interrupted = true; break; }
            };
            for (tp, result) in fetched {
                match ResponseError::try_from_code(result.error_code) {
                    None => {}
                    Some(ResponseError::OffsetOutOfRange) => {
                        let reset = if args.from_beginning {
                            kafka::EARLIEST
                        } else {
                            kafka::LATEST
                        };
                        let o = kafka::list_offsets(
                            &client,
                            std::slice::from_ref(&tp),
                            reset,
                            isolation,
                        )
                        .await?;
                        positions.insert(tp.clone(), o.get(&tp).copied().unwrap_or(0));
                        continue;
                    }
                    Some(e) if e.is_retriable() => {
                        client.refresh_metadata(Some(&[tp.0.as_str()])).await?;
                        continue;
                    }
                    Some(_) => kafka::check(result.error_code, None, || {
                        format!("fetching {}/{}", tp.0, tp.1)
                    })?,
                }
                let mut out = stdout.lock();
                let mut next = result.next_offset;
                for r in &result.records {
                    if done(printed) {
                        next = r.offset;
                        break;
                    }
                    if args.common.json {
                        writeln!(out, "{}", record_json(&tp.0, tp.1, r))?;
                    } else {
                        out.write_all(&format_record(&args.format, &tp.0, tp.1, r))?;
                    }
                    printed += 1;
                }
                out.flush()?;
                positions.insert(tp, next);
            }
            if interrupted || done(printed) {
                break;
            }
        }
        if interrupted {
            break;
        }
    }
    if let Some(m) = &member {
        m.commit(&positions).await?;
        m.leave().await?;
    }
    Ok(())
}

/// Where reading starts in each partition: --offset, --timestamp, the group's
/// committed offset, else the earliest (--from-beginning) or latest offset.
async fn start_positions(
    client: &ferry_client::Client,
    args: &ConsumeArgs,
    member: Option<&GroupMember>,
    tps: &[Tp],
    timestamp: Option<i64>,
    isolation: i8,
) -> anyhow::Result<BTreeMap<Tp, i64>> {
    if tps.is_empty() {
        return Ok(BTreeMap::new());
    }
    if let Some(o) = args.offset {
        return Ok(tps.iter().map(|tp| (tp.clone(), o)).collect());
    }
    let latest = kafka::list_offsets(client, tps, kafka::LATEST, isolation).await?;
    if let Some(ts) = timestamp {
        let at = kafka::list_offsets(client, tps, ts, isolation).await?;
        return Ok(tps
            .iter()
            .map(|tp| {
                let o = at.get(tp).copied().filter(|o| *o >= 0);
                (
                    tp.clone(),
                    o.unwrap_or_else(|| latest.get(tp).copied().unwrap_or(0)),
                )
            })
            .collect());
    }
    let committed = match member {
        Some(m) => kafka::committed_offsets(client, m.coordinator, &m.group, Some(tps)).await?,
        None => BTreeMap::new(),
    };
    let fallback = if args.from_beginning {
        kafka::list_offsets(client, tps, kafka::EARLIEST, isolation).await?
    } else {
        latest
    };
    Ok(tps
        .iter()
        .map(|tp| {
            let o = committed
                .get(tp)
                .or_else(|| fallback.get(tp))
                .copied()
                .unwrap_or(0);
            (tp.clone(), o)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn formats_fill_placeholders() {
        let r = Record {
            offset: 7,
            timestamp: 1000,
            key: Some(Bytes::from("k")),
            value: Some(Bytes::from("v")),
            headers: vec![("a".into(), Some(Bytes::from("1")))],
        };
        let s = format_record("%T/%p@%o %t %k=%v [%h] 100%%\\n", "t", 2, &r);
        assert_eq!(
            String::from_utf8(s).expect("utf8"),
            "t/2@7 1000 k=v [a=1] 100%\n"
        );
    }
}
