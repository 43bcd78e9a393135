//! The pages: the ward board beside `vitalflow run`, `vitalflow debugger` on its own, and
//! `vitalflow board-password` for the board's users file.

use super::*;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use vitalflow::board::Board;
use vitalflow::metrics::Metrics;
use vitalflow::web::{self, Pages, WebConfig};

/// Where the embedded default serves its board unless told otherwise.
/// (Not 8080: FHIR servers, Helios among them, often take it.)
pub const DEFAULT_BOARD_ADDRESS: &str = "127.0.0.1:8090";

/// A sample message for the debugger: the bedside monitor's, matching the default templates.
const BEDSIDE_SAMPLE: &str = include_str!("../../datasets/bedside-monitor/reading.json");

/// The text of a mapping file, or the embedded copy the default job runs from (empty when
/// neither reads: the job itself reports why at start).
fn mapping_text(path: &Path) -> String {
    vitalflow::dataflow::mapping_text(path)
        .map(|(text, _)| text)
        .unwrap_or_default()
}

/// The first message of a sample file (a JSON array of messages, or one message).
fn first_message(text: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Array(a)) if !a.is_empty() => {
            serde_json::to_string_pretty(&a[0]).unwrap_or_default()
        }
        _ => text.to_string(),
    }
}

/// Starts the ward board of a job on `address`; returns the board the dataflow keeps and
/// where it is served. Errors are the user's (exit 2).
pub fn start(
    job: &JobConfig,
    address: &str,
    metrics: Arc<Metrics>,
) -> anyhow::Result<(Arc<Board>, SocketAddr)> {
    let cfg = WebConfig::from_env(address)?;
    let board = Arc::new(Board::new());
    let bedside = job
        .device_mapping
        .to_string_lossy()
        .contains("bedside-monitor");
    let pages = Pages {
        board: Some(board.clone()),
        metrics: Some(metrics),
        templates: (
            mapping_text(&job.device_mapping),
            mapping_text(&job.fhir_mapping),
            if bedside {
                first_message(BEDSIDE_SAMPLE)
            } else {
                String::new()
            },
        ),
        job: job.name.clone(),
    };
    let bound = web::serve(cfg, pages)?;
    Ok((board, bound))
}

/// Arguments of `vitalflow debugger`.
#[derive(clap::Args)]
pub struct DebuggerArgs {
    /// Device mapping (devicecontent.json) the page starts with.
    #[arg(long)]
    device: PathBuf,
    /// FHIR mapping (fhirmapping.json) the page starts with.
    #[arg(long)]
    fhir: Option<PathBuf>,
    /// A message the page starts with.
    #[arg(long)]
    message: Option<PathBuf>,
    /// Address to serve on (a non-loopback one needs VITALFLOW_BOARD_TOKEN or _USERS).
    #[arg(
        long,
        default_value = "127.0.0.1:8081",
        env = "VITALFLOW_DEBUGGER_ADDRESS"
    )]
    address: String,
}

/// Runs `vitalflow debugger` until interrupted.
pub fn debugger(args: DebuggerArgs) -> ExitCode {
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))
    };
    let texts = (|| -> Result<_, String> {
        Ok((
            read(&args.device)?,
            args.fhir
                .as_deref()
                .map(read)
                .transpose()?
                .unwrap_or_default(),
            args.message
                .as_deref()
                .map(read)
                .transpose()?
                .map(|t| first_message(&t))
                .unwrap_or_default(),
        ))
    })();
    let texts = match texts {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let served = WebConfig::from_env(&args.address).and_then(|cfg| {
        web::serve(
            cfg,
            Pages {
                templates: texts,
                job: "mapping debugger".into(),
                ..Pages::default()
            },
        )
    });
    match served {
        Ok(addr) => {
            eprintln!("mapping debugger: http://{addr}/debugger  (Ctrl-C stops it)");
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
                let _ = signal_hook::flag::register(sig, stop.clone());
            }
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Arguments of `vitalflow board-password`.
#[derive(clap::Args)]
pub struct PasswordArgs {
    /// The user name the line is for.
    user: String,
}

/// Reads a password on standard input and prints the users-file line for it.
pub fn password(args: PasswordArgs) -> ExitCode {
    let mut line = String::new();
    if std::io::stdin().read_line(&mut line).is_err() || line.trim().is_empty() {
        eprintln!("error: give the password on standard input");
        return ExitCode::from(2);
    }
    if args.user.contains(':') || args.user.trim().is_empty() {
        eprintln!("error: a user name cannot be empty or hold ':'");
        return ExitCode::from(2);
    }
    match web::auth::hash_password(line.trim_end_matches(['\r', '\n'])) {
        Ok(h) => {
            outln!("{}:{h}", args.user);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
