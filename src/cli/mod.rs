//! The `vitalflow` subcommands, one file each: their arguments, help and printing. The work
//! itself is the library's; `main.rs` only parses and dispatches.

/// `println!` that ignores a closed pipe (`vitalflow normalize ... | head` must not panic).
macro_rules! outln {
    ($($t:tt)*) => {{
        use std::io::Write;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}

pub mod alerts;
pub mod bench;
pub mod board;
pub mod gateway;
pub mod lake;
pub mod normalize;
pub mod run;
pub mod simulate;
pub mod validate;

use clap::ValueEnum;
use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use vitalflow::config::{self, JobConfig, Overrides};

/// How a command prints its result.
#[derive(Clone, Copy, PartialEq, ValueEnum)]
pub enum Format {
    /// Human-readable tables (default on a terminal).
    Table,
    /// One JSON object on stdout, for scripts.
    Json,
}

/// How logs are printed.
#[derive(Clone, Copy, PartialEq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The format asked for, else a table on a terminal and JSON otherwise.
pub fn resolve(format: Option<Format>) -> Format {
    format.unwrap_or(if std::io::stdout().is_terminal() {
        Format::Table
    } else {
        Format::Json
    })
}

/// "s" unless `n` is one.
pub fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// Logs to standard error, filtered by `VITALFLOW_LOG`.
pub fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("VITALFLOW_LOG")
        // The Delta kernel narrates every snapshot at info, and logs a table not created yet as an
        // error; deltalake returns the errors that matter, and vitalflow reports them.
        .unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new(
                "info,buoyant_kernel=warn,buoyant_kernel::snapshot::builder=off,buoyant_kernel_engine=warn,deltalake_core=error",
            )
        });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
    };
}

/// The job file, or the embedded default, with the environment's overrides; an invalid file
/// is reported with every problem and exit code 2.
pub fn load_job(path: Option<&Path>) -> Result<JobConfig, ExitCode> {
    load_job_with(path, Overrides::from_env())
}

/// [`load_job`] with `overrides` (the environment's, and command-line options after them).
pub fn load_job_with(path: Option<&Path>, overrides: Overrides) -> Result<JobConfig, ExitCode> {
    config::load_or_default(path, &overrides).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    })
}
