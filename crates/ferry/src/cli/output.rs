//! Output: aligned tables for people, JSON for scripts, progress on stderr.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// A table printed with aligned columns.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Table {
        Table {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn print(&self) {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate() {
                if i < widths.len() {
                    widths[i] = widths[i].max(c.chars().count());
                }
            }
        }
        let line = |cells: &[String]| {
            let mut s = String::new();
            for (i, c) in cells.iter().enumerate() {
                if i + 1 == cells.len() {
                    s.push_str(c);
                } else {
                    let pad = widths
                        .get(i)
                        .copied()
                        .unwrap_or(0)
                        .saturating_sub(c.chars().count());
                    s.push_str(c);
                    s.push_str(&" ".repeat(pad + 2));
                }
            }
            s.trim_end().to_string()
        };
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{}", line(&self.header));
        for r in &self.rows {
            let _ = writeln!(out, "{}", line(r));
        }
    }
}

/// Prints one JSON document on stdout.
pub fn print_json(value: &serde_json::Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

/// Progress of a long operation on stderr, at most a few times a second, and
/// only when stderr is a terminal (scripts get clean output).
pub struct Progress {
    enabled: bool,
    what: String,
    last: Instant,
    shown: bool,
}

impl Progress {
    pub fn new(what: &str) -> Progress {
        Progress {
            enabled: std::io::stderr().is_terminal(),
            what: what.to_string(),
            last: Instant::now(),
            shown: false,
        }
    }

    /// `done` of `total` (total 0: unknown).
    pub fn update(&mut self, done: u64, total: u64, unit: &str) {
        if !self.enabled || self.last.elapsed() < Duration::from_millis(200) {
            return;
        }
        self.last = Instant::now();
        self.shown = true;
        if total > 0 {
            let pct = done.saturating_mul(100) / total.max(1);
            eprint!("\r{}: {done}/{total} {unit} ({pct}%)   ", self.what);
        } else {
            eprint!("\r{}: {done} {unit}   ", self.what);
        }
    }

    pub fn finish(&mut self) {
        if self.shown {
            eprintln!();
            self.shown = false;
        }
    }
}

/// Milliseconds since the Unix epoch from `ms` digits or an RFC 3339 time
/// (`2024-05-01T12:00:00Z`, `2024-05-01T12:00:00.5+02:00`, `2024-05-01`).
pub fn parse_time_ms(s: &str) -> anyhow::Result<i64> {
    let s = s.trim();
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    let bad = || {
        anyhow::anyhow!("{s:?} is neither milliseconds since the epoch nor an RFC 3339 time like 2024-05-01T12:00:00Z")
    };
    let (date, time) = match s.split_once(['T', ' ']) {
        Some((d, t)) => (d, Some(t)),
        None => (s, None),
    };
    let mut d = date.splitn(3, '-');
    let (y, m, day): (i64, i64, i64) = (
        d.next().and_then(|v| v.parse().ok()).ok_or_else(bad)?,
        d.next().and_then(|v| v.parse().ok()).ok_or_else(bad)?,
        d.next().and_then(|v| v.parse().ok()).ok_or_else(bad)?,
    );
    anyhow::ensure!((1..=12).contains(&m) && (1..=31).contains(&day), bad());
    let mut ms = days_from_civil(y, m, day) * 86_400_000;
    if let Some(t) = time {
        let (clock, offset_ms) = if let Some(c) = t.strip_suffix(['Z', 'z']) {
            (c, 0)
        } else if let Some(i) = t.rfind(['+', '-']) {
            let (c, off) = t.split_at(i);
            let sign = if off.starts_with('-') { -1 } else { 1 };
            let mut hm = off[1..].splitn(2, ':');
            let h: i64 = hm.next().and_then(|v| v.parse().ok()).ok_or_else(bad)?;
            let mi: i64 = hm.next().unwrap_or("0").parse().map_err(|_| bad())?;
            (c, sign * (h * 3_600_000 + mi * 60_000))
        } else {
            (t, 0)
        };
        let mut parts = clock.splitn(3, ':');
        let h: i64 = parts.next().and_then(|v| v.parse().ok()).ok_or_else(bad)?;
        let mi: i64 = parts.next().and_then(|v| v.parse().ok()).ok_or_else(bad)?;
        let sec: f64 = parts.next().unwrap_or("0").parse().map_err(|_| bad())?;
        ms += h * 3_600_000 + mi * 60_000 + (sec * 1000.0).round() as i64 - offset_ms;
    }
    Ok(ms)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_as_epoch_milliseconds() {
        assert_eq!(
            parse_time_ms("1700000000000").expect("ms"),
            1_700_000_000_000
        );
        assert_eq!(parse_time_ms("1970-01-01").expect("date"), 0);
        assert_eq!(
            parse_time_ms("2023-11-14T22:13:20Z").expect("utc"),
            1_700_000_000_000
        );
        assert_eq!(
            parse_time_ms("2023-11-14T23:13:20.5+01:00").expect("offset"),
            1_700_000_000_500
        );
        assert!(parse_time_ms("yesterday").is_err());
    }
}
