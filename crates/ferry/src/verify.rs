//! `ferry log verify DATA_DIR`: an offline check of every log directory (segments,
//! indexes, checkpoints; see `ferry_log::verify`) and of the metadata log. Prints each
//! problem and exits non-zero if there is any.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};

#[derive(Subcommand, Debug)]
pub enum LogCommand {
    /// Check segments, indexes and checkpoints of a (stopped) broker's data dir.
    Verify(VerifyArgs),
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// The broker's data directory (`--data-dir` of `ferry serve`).
    data_dir: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// The metadata log's place in the data dir.
const METADATA_LOG: &str = "__cluster_metadata-0/metadata.log";

pub fn run(command: LogCommand) -> anyhow::Result<()> {
    let LogCommand::Verify(args) = command;
    anyhow::ensure!(
        args.data_dir.is_dir(),
        "{} is not a directory",
        args.data_dir.display()
    );
    let mut report = ferry_log::verify::verify_tree(&args.data_dir)?;
    let metadata_records = check_metadata_log(&args.data_dir, &mut report);
    if args.json {
        let problems = |list: &[ferry_log::verify::Problem]| -> Vec<serde_json::Value> {
            list.iter()
                .map(|p| serde_json::json!({"path": p.path, "message": p.message}))
                .collect()
        };
        let out = serde_json::json!({
            "ok": report.ok(),
            "logs": report.logs,
            "segments": report.segments,
            "batches": report.batches,
            "records": report.records,
            "metadata_records": metadata_records,
            "problems": problems(&report.problems),
            "notes": problems(&report.notes),
        });
        println!("{out}");
    } else {
        for note in &report.notes {
            println!("note: {note}");
        }
        for problem in &report.problems {
            println!("PROBLEM: {problem}");
        }
        println!(
            "{} logs, {} segments, {} batches, {} records, {} metadata records: {} problems",
            report.logs,
            report.segments,
            report.batches,
            report.records,
            metadata_records,
            report.problems.len()
        );
    }
    anyhow::ensure!(
        report.ok(),
        "{} problems found in {}",
        report.problems.len(),
        args.data_dir.display()
    );
    Ok(())
}

fn check_metadata_log(data_dir: &Path, report: &mut ferry_log::verify::Report) -> usize {
    let path = data_dir.join(METADATA_LOG);
    if !path.exists() {
        return 0;
    }
    let mut problem = |message: String| {
        report.problems.push(ferry_log::verify::Problem {
            path: path.clone(),
            message,
        })
    };
    match ferry_core::metadata::check_log_file(&path) {
        Ok((records, None)) => records,
        Ok((records, Some(at))) => {
            problem(format!(
                "torn or corrupt record at byte {at} after {records} valid records"
            ));
            records
        }
        Err(e) => {
            problem(format!("unreadable: {e}"));
            0
        }
    }
}
