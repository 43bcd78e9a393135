//! `vitalflow lake`: compaction and vacuum of the lakehouse tables.

use super::*;
use std::path::PathBuf;

/// Help shown after the `vitalflow lake` commands.
pub const LAKE_HELP: &str = "A running job commits small files every flush (fresh data is visible in seconds); compaction rewrites the small files of each partition older than --older-than into files of about the target size, in one Delta commit per group that keeps the rows the same, so it runs safely beside the job. Vacuum then deletes the files no version within --retention references (compacted files, and files of flushes that never committed). Readers of an older version (time travel) need its files: keep --retention at least as long as they look back.

Examples:
  vitalflow lake compact                                   # the embedded default's ./vitalflow-out/lake
  vitalflow lake compact --job dataflows/icu.toml --table measurements --older-than 2h
  vitalflow lake vacuum --job dataflows/icu.toml --retention 7d --dry-run";

/// The lakehouse maintenance commands.
#[derive(clap::Subcommand)]
pub enum LakeWhat {
    /// Rewrite each partition's small files into files of about the target size.
    #[command(after_help = LAKE_HELP)]
    Compact {
        #[command(flatten)]
        lake: LakeArgs,
        /// Only files written at least this long ago (the job is still appending newer ones).
        #[arg(long, value_parser = humantime::parse_duration, default_value = "1h")]
        older_than: std::time::Duration,
        /// Target file size, MiB [default: the job's sinks.lake.target_file_size_mib, 128].
        #[arg(long)]
        target_size_mib: Option<u64>,
    },
    /// Delete files the table no longer references.
    #[command(after_help = LAKE_HELP)]
    Vacuum {
        #[command(flatten)]
        lake: LakeArgs,
        /// Keep files removed less than this long ago.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "7d")]
        retention: std::time::Duration,
        /// List what would be deleted, delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

/// Arguments of `vitalflow lake compact` and `vacuum`.
#[derive(clap::Args)]
pub struct LakeArgs {
    /// Job file whose lakehouse to maintain [default: the embedded default].
    #[arg(long)]
    job: Option<PathBuf>,
    /// Only this table (repeatable) [default: the tables the job writes].
    #[arg(long = "table")]
    tables: Vec<String>,
    /// Output format [default: table on a terminal, json otherwise].
    #[arg(long, value_enum)]
    format: Option<Format>,
}

/// Runs a `vitalflow lake` command.
pub fn run(what: LakeWhat) -> ExitCode {
    init_logs(LogFormat::Text);
    let args = match &what {
        LakeWhat::Compact { lake, .. } | LakeWhat::Vacuum { lake, .. } => lake,
    };
    let job = match load_job(args.job.as_deref()) {
        Ok(j) => j,
        Err(code) => return code,
    };
    let Some(cfg) = &job.lake else {
        eprintln!(
            "error: {}: the job has no [sinks.lake] (a lakehouse location)",
            job.file
        );
        return ExitCode::from(2);
    };
    let specs = match vitalflow::lake::maintain::specs(&args.tables) {
        // By default, the tables the job writes.
        Ok(_) if args.tables.is_empty() => vitalflow::lake::specs(cfg),
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let json = resolve(args.format) == Format::Json;
    let mut report = Vec::new();
    for spec in specs {
        let result = match &what {
            LakeWhat::Compact {
                older_than,
                target_size_mib,
                ..
            } => {
                let target = target_size_mib.map_or(cfg.target_file_size, |m| m << 20);
                vitalflow::lake::maintain::compact(cfg, spec, *older_than, target).map(|c| {
                    serde_json::json!({
                        "table": c.table, "partitions": c.partitions, "files_in": c.files_in,
                        "files_out": c.files_out, "bytes_in": c.bytes_in, "rows": c.rows,
                    })
                })
            }
            LakeWhat::Vacuum {
                retention, dry_run, ..
            } => vitalflow::lake::maintain::vacuum(cfg, spec, *retention, *dry_run).map(|files| {
                serde_json::json!({
                    "table": spec.name, "dry_run": dry_run, "files_deleted": files.len(), "files": files,
                })
            }),
        };
        match result {
            Ok(r) => report.push(r),
            Err(e) => {
                eprintln!("error: {e:#}");
                return ExitCode::FAILURE;
            }
        }
    }
    if json {
        println!("{}", serde_json::Value::Array(report));
    } else {
        for r in report {
            match &what {
                LakeWhat::Compact { .. } => println!(
                    "{}: {} partition groups, {} small files ({} bytes) -> {} files, {} rows",
                    r["table"].as_str().unwrap_or_default(),
                    r["partitions"],
                    r["files_in"],
                    r["bytes_in"],
                    r["files_out"],
                    r["rows"]
                ),
                LakeWhat::Vacuum { dry_run, .. } => println!(
                    "{}: {} {} files",
                    r["table"].as_str().unwrap_or_default(),
                    if *dry_run { "would delete" } else { "deleted" },
                    r["files_deleted"]
                ),
            }
        }
    }
    ExitCode::SUCCESS
}
