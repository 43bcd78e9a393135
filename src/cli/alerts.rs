//! `vitalflow alerts`: the alerts a job delivers, as they come.

use super::*;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

pub const ALERTS_HELP: &str = "Lines show time (event time), severity, state (open, escalated, \
resolved), patient, what and the value, then rule, device, since when and the alert id. \
Colours on a terminal: red critical, yellow warning, green resolved.

Examples:
  vitalflow alerts                                           # the embedded default's, from ./vitalflow-out
  vitalflow alerts --job dataflows/icu.toml                  # new alerts, until Ctrl-C
  vitalflow alerts --job dataflows/icu.toml --from-beginning --no-follow
  vitalflow alerts --job dataflows/icu.toml --format json | jq .text";

#[derive(clap::Args)]
pub struct AlertsArgs {
    /// Job file whose alerts to show [default: the embedded default].
    #[arg(long)]
    job: Option<PathBuf>,
    /// Start from the first alert kept, not from now.
    #[arg(long)]
    from_beginning: bool,
    /// Exit at the end instead of waiting for more.
    #[arg(long)]
    no_follow: bool,
    /// Output format [default: lines on a terminal, json otherwise].
    #[arg(long, value_enum)]
    format: Option<Format>,
}

pub fn run(args: AlertsArgs) -> ExitCode {
    init_logs(LogFormat::Text);
    let job = match load_job(args.job.as_deref()) {
        Ok(j) => j,
        Err(code) => return code,
    };
    if job.anomaly.is_none() {
        eprintln!(
            "error: {}: the job has no [anomaly] rules, so it raises no alerts",
            job.file
        );
        return ExitCode::from(2);
    }
    let style = match resolve(args.format) {
        Format::Json => vitalflow::anomaly::tail::Style::Json,
        Format::Table => vitalflow::anomaly::tail::Style::Lines(std::io::stdout().is_terminal()),
    };
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let _ = signal_hook::flag::register(sig, stop.clone());
    }
    match vitalflow::anomaly::tail::tail(&job, args.from_beginning, !args.no_follow, style, stop) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
