//! `vitalflow run`: a streaming job.

use super::*;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use vitalflow::dataflow::{self, RunOptions};
use vitalflow::metrics::Metrics;

/// Help shown after `vitalflow run --help`.
pub const RUN_HELP: &str =
    "Without --job, runs the embedded default: an in-process Kafka (librdkafka's mock \
cluster) fed by the simulator with 200 bedside monitors, the bedside-monitor mappings, \
NDJSON Observations under ./vitalflow-out/, and the ward board at http://127.0.0.1:8090/ \
(its URL is printed at start; docs/board.md). Stop it with Ctrl-C: it stops reading, flushes \
every sink, commits offsets and exits 0.

Examples:
  vitalflow run
  vitalflow run --job dataflows/icu.toml --workers 4
  vitalflow run --job dataflows/icu.toml --processes 3 --process 0 --hosts hosts.txt --workers 4
  vitalflow run --job replay.toml --until-end
  vitalflow run --duration 30s --log-format json

Environment: VITALFLOW_BOARD_ADDRESS, VITALFLOW_BOARD_TOKEN or VITALFLOW_BOARD_USERS (required
for a board beyond loopback), VITALFLOW_BOARD_TLS_CERT and _KEY, VITALFLOW_ACKS_TOPIC,
VITALFLOW_KAFKA_BROKERS, VITALFLOW_KAFKA_GROUP_ID, VITALFLOW_OUTPUT_DIR,
VITALFLOW_LAKE (lakehouse location: a directory or s3://bucket/prefix), AWS_* (S3
credentials), VITALFLOW_METRICS_ADDRESS, VITALFLOW_KAFKA__<PROPERTY> (any librdkafka property, e.g.
VITALFLOW_KAFKA__SASL_PASSWORD), VITALFLOW_LOG (log filter, e.g. debug or vitalflow=debug).

Exit codes: 0 clean stop, 1 the job failed (broker unreachable, sink failing, ...),
2 usage error or invalid job file / mapping.";

/// Arguments of `vitalflow run`.
#[derive(clap::Args)]
pub struct RunArgs {
    /// Job file (dataflows/*.toml); without it, the embedded default job.
    #[arg(long)]
    job: Option<PathBuf>,
    /// Worker threads in this process [default: the number of cores].
    #[arg(long)]
    workers: Option<usize>,
    /// Processes in the cluster (each runs this command with its own --process).
    #[arg(long, default_value_t = 1)]
    processes: usize,
    /// Index of this process, 0-based.
    #[arg(long, default_value_t = 0)]
    process: usize,
    /// File with one host:port per line, one line per process, for cluster traffic.
    #[arg(long)]
    hosts: Option<PathBuf>,
    /// Stop once the input has been read to its end (as of start), then exit 0.
    #[arg(long)]
    until_end: bool,
    /// Stop after this long (e.g. 30s, 5m), with the same clean shutdown as Ctrl-C.
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<std::time::Duration>,
    /// Output directory (overrides sinks.ndjson.dir).
    #[arg(long)]
    output: Option<PathBuf>,
    /// FHIR R4 server base URL (overrides sinks.fhir.url; a job without [sinks.fhir] then
    /// writes its Observations there instead of to NDJSON files).
    #[arg(long, env = "VITALFLOW_FHIR_URL")]
    fhir_url: Option<String>,
    /// Log format on standard error.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Live status line on standard error [default: when it is a terminal].
    #[arg(long, overrides_with = "no_status")]
    status: bool,
    /// No live status line.
    #[arg(long)]
    no_status: bool,
    /// Serve the ward board, job page and mapping debugger on this host:port, or `off`
    /// [default: 127.0.0.1:8090 for the embedded default (another free port when taken), off for
    /// a job file]. Every process
    /// of a cluster takes the same setting; process 0 serves the pages.
    #[arg(long, env = "VITALFLOW_BOARD_ADDRESS", value_name = "ADDRESS")]
    board: Option<String>,
    /// Topic the board writes acknowledgements to and the job reads them from (one
    /// partition) [default: vitals.acks for the embedded default, none for a job file].
    #[arg(long, env = "VITALFLOW_ACKS_TOPIC", value_name = "TOPIC")]
    acks_topic: Option<String>,
}

/// Runs `vitalflow run`.
pub fn run(args: RunArgs) -> ExitCode {
    init_logs(args.log_format);
    let mut overrides = config::Overrides::from_env();
    if let Some(o) = &args.output {
        overrides = overrides.option("--output", "VITALFLOW_OUTPUT_DIR", &o.to_string_lossy());
    }
    if let Some(url) = &args.fhir_url {
        overrides = overrides.option("--fhir-url", "VITALFLOW_FHIR_URL", url);
    }
    let job = match load_job_with(args.job.as_deref(), overrides) {
        Ok(j) => j,
        Err(code) => return code,
    };
    let hosts = match &args.hosts {
        Some(h) => match std::fs::read_to_string(h) {
            Ok(t) => t
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(String::from)
                .collect::<Vec<_>>(),
            Err(e) => {
                eprintln!("error: cannot read --hosts {}: {e}", h.display());
                return ExitCode::from(2);
            }
        },
        None => Vec::new(),
    };
    if args.processes > 1 && hosts.len() != args.processes {
        eprintln!(
            "error: --processes {} needs --hosts with one host:port per process ({} found)",
            args.processes,
            hosts.len()
        );
        return ExitCode::from(2);
    }
    if args.process >= args.processes {
        eprintln!(
            "error: --process {} must be below --processes {}",
            args.process, args.processes
        );
        return ExitCode::from(2);
    }
    let metrics = Metrics::new();
    let board_address = match args.board.as_deref() {
        Some("off") => None,
        Some(a) => Some(a.to_string()),
        None if args.job.is_none() => Some(super::board::DEFAULT_BOARD_ADDRESS.to_string()),
        None => None,
    };
    let mut board = None;
    if let Some(address) = &board_address {
        if args.process == 0 {
            let mut started = super::board::start(&job, address, metrics.clone());
            if started.is_err() && args.board.is_none() {
                // The default port is taken: any free one serves, and its URL is printed.
                started = super::board::start(&job, "127.0.0.1:0", metrics.clone());
            }
            match started {
                Ok((b, bound)) => {
                    tracing::info!(address = %bound, "serving the ward board, /job, /debugger, /metrics and /health");
                    eprintln!("ward board: http://{bound}/");
                    board = Some(b);
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    return ExitCode::from(2);
                }
            }
        } else {
            // The views gather to process 0, which serves them.
            board = Some(Arc::new(vitalflow::board::Board::new()));
        }
    }
    let opts = RunOptions {
        workers: args
            .workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        processes: args.processes,
        process: args.process,
        hosts,
        until_end: args.until_end,
        board,
        acks_topic: args
            .acks_topic
            .clone()
            .or_else(|| args.job.is_none().then(|| "vitals.acks".to_string())),
    };
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // A second signal while shutting down exits at once.
        let _ = signal_hook::flag::register_conditional_shutdown(sig, 1, stop.clone());
        let _ = signal_hook::flag::register(sig, stop.clone());
    }
    if let Some(d) = args.duration {
        dataflow::stop_after(stop.clone(), d);
    }
    let show_status = (args.status || std::io::stderr().is_terminal()) && !args.no_status;
    let done = Arc::new(AtomicBool::new(false));
    let status = show_status.then(|| status_line(metrics.clone(), done.clone()));
    tracing::info!(
        job = %job.name,
        file = %job.file,
        workers = opts.workers,
        processes = opts.processes,
        output = %job.output_dir.display(),
        "starting"
    );
    let started = std::time::Instant::now();
    let result = dataflow::run(&job, &opts, stop, metrics.clone());
    let elapsed = started.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    if let Some(s) = status {
        let _ = s.join();
    }
    let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    match result {
        Ok(()) => {
            let q = metrics.epoch_latency_quantiles(&[0.5, 0.99, 1.0]);
            tracing::info!(
                messages = get(&metrics.messages_in),
                elapsed_s = elapsed,
                messages_per_s = (get(&metrics.messages_in) as f64 / elapsed.max(1e-9)).round(),
                epoch_latency_p50_ms = q[0].as_secs_f64() * 1e3,
                epoch_latency_p99_ms = q[1].as_secs_f64() * 1e3,
                epoch_latency_max_ms = q[2].as_secs_f64() * 1e3,
                measurements = get(&metrics.measurements),
                observations = get(&metrics.observations_out),
                fhir_observations = get(&metrics.fhir_observations),
                fhir_requests = get(&metrics.fhir_requests),
                dead_letters = get(&metrics.dead_letters),
                lake_rows = get(&metrics.lake_rows),
                lake_commits = get(&metrics.lake_commits),
                lake_flush_s = get(&metrics.lake_commit_us_sum) as f64 / 1e6,
                "stopped cleanly: outputs flushed, offsets committed"
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("error: {e:#}");
            if e.downcast_ref::<dataflow::InvalidConfig>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// Prints msgs/s, lag and outputs once a second on one line of standard error.
pub fn status_line(metrics: Arc<Metrics>, done: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let started = std::time::Instant::now();
        let mut last = 0;
        let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        while !done.load(Ordering::Relaxed) {
            std::thread::sleep(std::time::Duration::from_secs(1));
            let n = get(&metrics.messages_in);
            eprint!(
                "\r\x1b[K{:>5}s  {:>7} msgs/s  {:>9} msgs  lag {:>6}  observations {:>8}  alerts {:>4}  dead letters {:>5}  open windows {:>6}",
                started.elapsed().as_secs(),
                n - last,
                n,
                metrics.total_lag(),
                get(&metrics.observations_out) + get(&metrics.fhir_observations),
                get(&metrics.alerts_out),
                get(&metrics.dead_letters),
                get(&metrics.windows_open),
            );
            last = n;
        }
        eprintln!();
    })
}
