//! The `vitalflow` command line.

use clap::{Parser, Subcommand, ValueEnum};
use comfy_table::{presets::UTF8_FULL_CONDENSED, ContentArrangement, Table};
use serde_json::{json, Value};
use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use vitalflow::dataflow::{self, RunOptions};
use vitalflow::debugger::{self, DebugError, Normalized};
use vitalflow::event;
use vitalflow::job::{self, SimulatorConfig};
use vitalflow::mapping::{DeviceMapping, FhirMapping, TemplateErrors};
use vitalflow::metrics::Metrics;
use vitalflow::sources::simulator::Simulator;

// Message parsing allocates and frees many small strings and maps; mimalloc measurably
// speeds normalization up over glibc malloc (benches/normalize.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `println!` that ignores a closed pipe (`vitalflow normalize ... | head` must not panic).
macro_rules! outln {
    ($($t:tt)*) => {{
        use std::io::Write;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}

#[derive(Parser)]
#[command(
    name = "vitalflow",
    version,
    about = "Stream medical-device vitals into FHIR R4, alerts and a lakehouse",
    long_about = "vitalflow reads device messages, normalizes them with IoMT FHIR Connector / Azure MedTech \
device mappings (devicecontent.json) and maps them to FHIR R4 Observations with FHIR mappings \
(fhirmapping.json).",
    after_help = "Examples:\n  \
vitalflow validate --device templates/bedside-monitor/devicecontent.json --fhir templates/bedside-monitor/fhirmapping.json\n  \
vitalflow normalize --device templates/bedside-monitor/devicecontent.json --fhir templates/bedside-monitor/fhirmapping.json datasets/bedside-monitor/reading.json\n  \
echo '{\"heartRate\": 72}' | vitalflow normalize --device devicecontent.json --format json -\n\n\
Exit codes: 0 success, 1 invalid mapping or message, 2 usage error."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum Format {
    /// Human-readable tables (default on a terminal).
    Table,
    /// One JSON object on stdout, for scripts.
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Check device and FHIR mappings; report every problem with file, line and template.
    #[command(
        after_help = "Example:\n  vitalflow validate --device templates/iot-hub/devicecontent.json --fhir templates/iot-hub/fhirmapping.json"
    )]
    Validate {
        /// Device mapping (devicecontent.json).
        #[arg(long)]
        device: Option<PathBuf>,
        /// FHIR mapping (fhirmapping.json).
        #[arg(long)]
        fhir: Option<PathBuf>,
        /// Output format [default: table on a terminal, json otherwise].
        #[arg(long, value_enum)]
        format: Option<Format>,
    },
    /// Mapping debugger: show what one device message becomes, or exactly why it fails.
    #[command(
        after_help = "The message is a device payload, wrapped as the job wraps a Kafka message: \
{\"Body\": <payload>, \"Properties\": <headers>, \"SystemProperties\": <Kafka metadata>}. \
With --event it is the whole event object, used verbatim.\n\nExamples:\n  \
vitalflow normalize --device templates/basic/devicecontent.json --fhir templates/basic/fhirmapping.json datasets/basic/heartrate.json\n  \
vitalflow normalize --device templates/iot-hub/devicecontent.json --event datasets/iot-hub/bloodpressure-event.json\n  \
vitalflow normalize --device d.json --system-property iothub-connection-device-id=dev-1 --property iothub-creation-time-utc=2026-11-21T10:00:00Z msg.json"
    )]
    Normalize {
        /// Device mapping (devicecontent.json).
        #[arg(long)]
        device: PathBuf,
        /// FHIR mapping (fhirmapping.json): also print the Observations.
        #[arg(long)]
        fhir: Option<PathBuf>,
        /// The input is the whole event object (as in the conformance cases), not a payload.
        #[arg(long)]
        event: bool,
        /// Message property (header) key=value, repeatable.
        #[arg(long = "property", value_name = "KEY=VALUE")]
        properties: Vec<String>,
        /// System property (broker metadata) key=value, repeatable.
        #[arg(long = "system-property", value_name = "KEY=VALUE")]
        system_properties: Vec<String>,
        /// Output format [default: table on a terminal, json otherwise].
        #[arg(long, value_enum)]
        format: Option<Format>,
        /// Message file, or - for standard input.
        message: String,
    },
    /// Run a streaming job: Kafka (or a file, or the simulator) in, FHIR Observations out.
    #[command(after_help = RUN_HELP)]
    Run(RunArgs),
    /// Generate realistic, reproducible device messages into Kafka or an NDJSON file.
    #[command(after_help = SIMULATE_HELP)]
    Simulate(SimulateArgs),
    /// Measure the job under an open-loop load against benches/targets.toml.
    #[command(after_help = BENCH_HELP)]
    Bench(BenchArgs),
    /// Show the alerts a job delivers, as they come (its alerts topic, or its alert files).
    #[command(after_help = ALERTS_HELP)]
    Alerts(AlertsArgs),
    /// Maintain the lakehouse tables: compact small files, vacuum unreferenced ones.
    #[command(subcommand)]
    Lake(LakeWhat),
    /// The plain-loop baseline `vitalflow bench peer` measures the job against.
    #[command(hide = true)]
    BenchLoop(BenchLoopArgs),
}

const LAKE_HELP: &str = "A running job commits small files every flush (fresh data is visible in seconds); compaction rewrites the small files of each partition older than --older-than into files of about the target size, in one Delta commit per group that keeps the rows the same, so it runs safely beside the job. Vacuum then deletes the files no version within --retention references (compacted files, and files of flushes that never committed). Readers of an older version (time travel) need its files: keep --retention at least as long as they look back.

Examples:
  vitalflow lake compact                                   # the embedded default's ./vitalflow-out/lake
  vitalflow lake compact --job dataflows/icu.toml --table measurements --older-than 2h
  vitalflow lake vacuum --job dataflows/icu.toml --retention 7d --dry-run";

#[derive(clap::Subcommand)]
enum LakeWhat {
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

#[derive(clap::Args)]
struct LakeArgs {
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

const ALERTS_HELP: &str = "Lines show time (event time), severity, state (open, escalated, \
resolved), patient, what and the value, then rule, device, since when and the alert id. \
Colours on a terminal: red critical, yellow warning, green resolved.

Examples:
  vitalflow alerts                                           # the embedded default's, from ./vitalflow-out
  vitalflow alerts --job dataflows/icu.toml                  # new alerts, until Ctrl-C
  vitalflow alerts --job dataflows/icu.toml --from-beginning --no-follow
  vitalflow alerts --job dataflows/icu.toml --format json | jq .text";

#[derive(clap::Args)]
struct AlertsArgs {
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

const BENCH_HELP: &str =
    "The simulator produces 1 Hz bedside-monitor messages into Kafka at a steady rate \
(open loop: latencies include queueing) while the job runs; per-message latencies from the \
Kafka append to each stage go into HdrHistograms. Without --job it benches the embedded \
default (Kafka in process), so it runs anywhere.

Writes <out>/summary.json, <out>/<path>.hlog (HdrHistogram interval logs) and
<out>/latency.svg. Exit codes: 0 every target met, 1 a target missed, 2 usage error.

Examples:
  vitalflow bench --rate 20000 --duration 20s
  vitalflow bench --rate 5000 --find-max --duration 10s --format json
  vitalflow bench --job dataflows/icu.toml --workers 4 --rate 50000";

#[derive(clap::Subcommand)]
enum BenchWhat {
    /// Replay labelled scenarios and score the alerts against their ground truth, next to a
    /// naive fixed-threshold detector.
    #[command(after_help = BENCH_ALERTS_HELP)]
    Alerts(BenchAlertsArgs),
    /// Drain one seeded Kafka input with the job and with plain-loop baselines, each timed
    /// as a whole process: msgs/s, CPU seconds, peak RSS, bytes written.
    #[command(after_help = BENCH_PEER_HELP)]
    Peer(BenchPeerArgs),
}

const BENCH_PEER_HELP: &str = "Contenders: loop-alerts (rdkafka + serde_json, hourly \
count/min/max/mean per device and vital in a HashMap, threshold alerts to a topic), \
loop-aggregates (the same, writing every aggregate update), vitalflow (hourly SampledData \
Observations to NDJSON flushed every second, threshold alerts to a topic) and \
vitalflow-alerts (no NDJSON). Build with --release before measuring.

Examples:
  vitalflow bench peer --messages 60000 --devices 200
  tansu broker --listener-url tcp://127.0.0.1:9092 --storage-engine memory://tansu/ &
  vitalflow bench peer --brokers 127.0.0.1:9092 --messages 1000000 --devices 2000";

#[derive(clap::Args)]
struct BenchPeerArgs {
    /// Messages in the input.
    #[arg(long, default_value_t = 1_000_000)]
    messages: u64,
    /// Simulated monitors (one message per monitor per second of event time).
    #[arg(long, default_value_t = 2_000)]
    devices: u32,
    /// Partitions of the input topic.
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    /// Threads (workers) of every contender.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Run only these contenders (repeatable).
    #[arg(long)]
    only: Vec<String>,
    /// Brokers to use instead of librdkafka's mock cluster, which keeps only about 5 MB per
    /// partition (e.g. `tansu broker --storage-engine memory://tansu/`).
    #[arg(long)]
    brokers: Option<String>,
    /// Output directory.
    #[arg(long, default_value = "bench-out/peer")]
    out: PathBuf,
    /// Output format [default: table on a terminal, json otherwise].
    #[arg(long, value_enum)]
    format: Option<Format>,
}

/// The plain-loop baseline of `vitalflow bench peer` (run by it as a child process).
#[derive(clap::Args)]
struct BenchLoopArgs {
    #[arg(long)]
    brokers: String,
    #[arg(long)]
    topic: String,
    #[arg(long)]
    alerts_topic: String,
    /// `alerts` or `aggregates` (also writes every aggregate update).
    #[arg(long)]
    mode: String,
    #[arg(long, default_value_t = 2)]
    threads: usize,
    #[arg(long)]
    out: PathBuf,
}

const BENCH_ALERTS_HELP: &str = "Each scenario (datasets/scenarios/*.toml, format in \
datasets/scenarios/README.md) is generated, replayed through the job from a file, and its \
alerts scored: recall (events detected), episode precision (alerts that belong to an event), \
false alerts per patient-hour, median and p95 time from onset to detection. The naive \
detector raises an alert for every reading beyond a rule's warning threshold.

Examples:
  vitalflow bench alerts --scenarios datasets/scenarios
  vitalflow bench alerts --scenarios datasets/scenarios --format json | jq .total";

#[derive(clap::Args)]
struct BenchAlertsArgs {
    /// Directory of scenario specs.
    #[arg(long, default_value = "datasets/scenarios")]
    scenarios: PathBuf,
    /// Alert rules.
    #[arg(long, default_value = "templates/alerts/adult-vitals.toml")]
    rules: PathBuf,
    /// Worker threads [default: the number of cores].
    #[arg(long)]
    workers: Option<usize>,
    /// Output format [default: table on a terminal, json otherwise].
    #[arg(long, value_enum)]
    format: Option<Format>,
}

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
struct BenchArgs {
    #[command(subcommand)]
    what: Option<BenchWhat>,
    /// Job file [default: the embedded default].
    #[arg(long)]
    job: Option<PathBuf>,
    /// Write Observations to this FHIR server (identity Create unless the job file sets
    /// [sinks.fhir]): the durable path is then Kafka append to Observation acknowledged.
    #[arg(long)]
    fhir_url: Option<String>,
    /// Offered rate, messages per second [default: the targets file's throughput.rate].
    #[arg(long)]
    rate: Option<f64>,
    /// Measured window.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    duration: std::time::Duration,
    /// Warm-up before measuring.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    warmup: std::time::Duration,
    /// Worker threads [default: the number of cores].
    #[arg(long)]
    workers: Option<usize>,
    /// Targets file [default: benches/targets.toml, built in].
    #[arg(long)]
    targets: Option<PathBuf>,
    /// Output directory.
    #[arg(long, default_value = "bench-out")]
    out: PathBuf,
    /// Search the highest rate that meets the p99 and throughput targets, from --rate up.
    #[arg(long)]
    find_max: bool,
    /// Output format [default: table on a terminal, json otherwise].
    #[arg(long, value_enum)]
    format: Option<Format>,
}

const RUN_HELP: &str =
    "Without --job, runs the embedded default: an in-process Kafka (librdkafka's mock \
cluster) fed by the simulator with 200 bedside monitors, the bedside-monitor mappings, and \
NDJSON Observations under ./vitalflow-out/. Stop it with Ctrl-C: it stops reading, flushes \
every sink, commits offsets and exits 0.

Examples:
  vitalflow run
  vitalflow run --job dataflows/icu.toml --workers 4
  vitalflow run --job dataflows/icu.toml --processes 3 --process 0 --hosts hosts.txt --workers 4
  vitalflow run --job replay.toml --until-end
  vitalflow run --duration 30s --log-format json

Environment: VITALFLOW_KAFKA_BROKERS, VITALFLOW_KAFKA_GROUP_ID, VITALFLOW_OUTPUT_DIR,
VITALFLOW_LAKE (lakehouse location: a directory or s3://bucket/prefix), AWS_* (S3
credentials), VITALFLOW_METRICS_ADDRESS, VITALFLOW_KAFKA__<PROPERTY> (any librdkafka property, e.g.
VITALFLOW_KAFKA__SASL_PASSWORD), VITALFLOW_LOG (log filter, e.g. debug or vitalflow=debug).

Exit codes: 0 clean stop, 1 the job failed (broker unreachable, sink failing, ...),
2 usage error or invalid job file / mapping.";

const SIMULATE_HELP: &str = "Examples:
  vitalflow simulate --devices 50 --count 3000 --output vitals.ndjson
  vitalflow simulate --brokers 127.0.0.1:9092 --topic icu-vitals --devices 200 --rate 200
  vitalflow simulate --profile wearable --devices 10 --count 100 --seed 7 --start 2026-11-21T08:00:00Z

The same seed, devices, count and start give the same messages.";

#[derive(clap::Args)]
struct RunArgs {
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
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(clap::Args)]
struct SimulateArgs {
    /// Device profile: bedside-monitor (templates/bedside-monitor) or wearable (templates/basic).
    #[arg(long, default_value = "bedside-monitor")]
    profile: String,
    /// Number of devices (one patient each).
    #[arg(long, default_value_t = 20)]
    devices: u32,
    /// Messages per second in all (0: as fast as possible) [default: one per device per
    /// second; with --count, as fast as possible].
    #[arg(long)]
    rate: Option<f64>,
    /// Random seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Stop after this many messages [default: run until stopped].
    #[arg(long)]
    count: Option<u64>,
    /// Event time of the first reading (RFC 3339) [default: so that the run ends now].
    #[arg(long)]
    start: Option<String>,
    /// Fraction of readings delivered out of order (0..1).
    #[arg(long, default_value_t = 0.0)]
    out_of_order: f64,
    /// Every this often (simulated time) one device goes offline, then syncs its backlog.
    #[arg(long, value_parser = humantime::parse_duration)]
    late_burst: Option<std::time::Duration>,
    /// Probability per device-second of a dropout (10-60 s of silence).
    #[arg(long, default_value_t = 0.0)]
    dropout: f64,
    /// Fraction of readings with sensor artifacts.
    #[arg(long, default_value_t = 0.0)]
    artifacts: f64,
    /// The first N devices' patients desaturate acutely 30 s in (an alert to see).
    #[arg(long, default_value_t = 0)]
    acute: u32,
    /// Kafka brokers to produce to (with --topic).
    #[arg(long, requires = "topic")]
    brokers: Option<String>,
    /// Kafka topic.
    #[arg(long, requires = "brokers")]
    topic: Option<String>,
    /// NDJSON file to write, or - for standard output [default: -].
    #[arg(long, conflicts_with = "brokers")]
    output: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => run_job(args),
        Command::Simulate(args) => simulate(args),
        Command::Bench(args) => bench(args),
        Command::BenchLoop(args) => bench_loop(args),
        Command::Alerts(args) => alerts(args),
        Command::Lake(what) => lake(what),
        Command::Validate {
            device,
            fhir,
            format,
        } => validate(device.as_deref(), fhir.as_deref(), resolve(format)),
        Command::Normalize {
            device,
            fhir,
            event,
            properties,
            system_properties,
            format,
            message,
        } => {
            let format = resolve(format);
            let outcome = (|| {
                let event = read_event(&message, event, &properties, &system_properties)?;
                let device = DeviceMapping::from_file(&device).map_err(DebugError::Template)?;
                let fhir = fhir
                    .map(|p| FhirMapping::from_file(&p))
                    .transpose()
                    .map_err(DebugError::Template)?;
                debugger::normalize(&device, fhir.as_ref(), &event)
            })();
            match outcome {
                Ok(n) => {
                    print_normalized(&n, format);
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    print_error(&e, format);
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn resolve(format: Option<Format>) -> Format {
    format.unwrap_or(if std::io::stdout().is_terminal() {
        Format::Table
    } else {
        Format::Json
    })
}

fn read_event(
    source: &str,
    verbatim: bool,
    props: &[String],
    sys: &[String],
) -> Result<Value, DebugError> {
    let message_error = |reason: String| DebugError::Message {
        reason,
        template: None,
    };
    let text = if source == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| message_error(format!("cannot read standard input: {e}")))?;
        s
    } else {
        std::fs::read_to_string(source)
            .map_err(|e| message_error(format!("cannot read {source}: {e}")))?
    };
    let body: Value = serde_json::from_str(&text).map_err(|e| {
        message_error(format!(
            "{source}: invalid JSON at line {}, column {}: {e}",
            e.line(),
            e.column()
        ))
    })?;
    if verbatim {
        return Ok(body);
    }
    let properties =
        event::parse_pairs(props).map_err(|e| message_error(format!("--property: {e}")))?;
    let system =
        event::parse_pairs(sys).map_err(|e| message_error(format!("--system-property: {e}")))?;
    Ok(event::wrap(body, properties, system))
}

fn print_error(e: &DebugError, format: Format) {
    match format {
        Format::Json => outln!("{}", e.to_json()),
        Format::Table => match e {
            DebugError::Template(errors) => {
                eprintln!(
                    "error: invalid mapping ({} problem{})",
                    errors.0.len(),
                    plural(errors.0.len())
                );
                for err in &errors.0 {
                    eprintln!("  {err}");
                }
            }
            DebugError::Message { reason, .. } => {
                eprintln!("error: message cannot be normalized: {reason}")
            }
        },
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

fn print_normalized(n: &Normalized, format: Format) {
    if format == Format::Json {
        let mut out = json!({ "measurements": n.measurements.iter().map(|m| m.to_json()).collect::<Vec<_>>() });
        if let Some(obs) = &n.observations {
            out["observations"] = Value::Array(obs.clone());
        }
        outln!("{out}");
        return;
    }
    if n.measurements.is_empty() {
        outln!("no template matched this message: 0 measurements");
    } else {
        let mut t = Table::new();
        t.load_preset(UTF8_FULL_CONDENSED)
            .set_content_arrangement(ContentArrangement::Dynamic);
        t.set_header([
            "#",
            "type",
            "device",
            "patient",
            "encounter",
            "correlation",
            "time (UTC)",
            "values",
        ]);
        for (i, m) in n.measurements.iter().enumerate() {
            let values: Vec<String> = m
                .properties
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            t.add_row([
                i.to_string(),
                m.type_name.to_string(),
                m.device_id.clone(),
                m.patient_id.clone().unwrap_or_else(|| "-".into()),
                m.encounter_id.clone().unwrap_or_else(|| "-".into()),
                m.correlation_id.clone().unwrap_or_else(|| "-".into()),
                vitalflow::time::format_rfc3339(&m.occurrence_time),
                values.join(", "),
            ]);
        }
        outln!(
            "{} measurement{}",
            n.measurements.len(),
            plural(n.measurements.len())
        );
        outln!("{t}");
    }
    if let Some(obs) = &n.observations {
        outln!("\n{} observation{}", obs.len(), plural(obs.len()));
        for o in obs {
            outln!("{}", serde_json::to_string_pretty(o).unwrap_or_default());
        }
    }
}

fn validate(device: Option<&Path>, fhir: Option<&Path>, format: Format) -> ExitCode {
    if device.is_none() && fhir.is_none() {
        eprintln!("error: give --device, --fhir or both");
        return ExitCode::from(2);
    }
    let mut errors = Vec::new();
    let mut summary = Vec::new();
    let dm = device.map(|p| (p, DeviceMapping::from_file(p)));
    let fm = fhir.map(|p| (p, FhirMapping::from_file(p)));
    if let Some((p, r)) = &dm {
        match r {
            Ok(m) => summary.push(format!(
                "{}: {} device template{}",
                p.display(),
                m.len(),
                plural(m.len())
            )),
            Err(TemplateErrors(e)) => errors.extend(e.iter().cloned()),
        }
    }
    if let Some((p, r)) = &fm {
        match r {
            Ok(m) => summary.push(format!(
                "{}: {} FHIR template{}",
                p.display(),
                m.templates().len(),
                plural(m.templates().len())
            )),
            Err(TemplateErrors(e)) => errors.extend(e.iter().cloned()),
        }
    }
    let warnings: Vec<String> = match (&dm, &fm) {
        (Some((_, Ok(d))), Some((_, Ok(f)))) => debugger::unmapped_types(d, f)
            .into_iter()
            .map(|t| format!("measurement type \"{t}\" has no FHIR template: its measurements cannot become Observations"))
            .collect(),
        _ => vec![],
    };
    let ok = errors.is_empty();
    match format {
        Format::Json if ok => outln!(
            "{}",
            json!({"valid": true, "summary": summary, "warnings": warnings})
        ),
        Format::Json => outln!("{}", DebugError::Template(TemplateErrors(errors)).to_json()),
        Format::Table => {
            for s in &summary {
                outln!("ok: {s}");
            }
            for w in &warnings {
                outln!("warning: {w}");
            }
            if !ok {
                print_error(&DebugError::Template(TemplateErrors(errors)), format);
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn init_logs(format: LogFormat) {
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
fn load_job(path: Option<&Path>) -> Result<job::JobConfig, ExitCode> {
    let mut job = match path {
        Some(path) => job::load(path).map_err(|e| {
            eprint!("error: {e}");
            ExitCode::from(2)
        })?,
        None => job::embedded_default(),
    };
    if let Err(errors) = job::apply_env(&mut job, std::env::vars()) {
        for e in errors {
            eprintln!("error: environment: {e}");
        }
        return Err(ExitCode::from(2));
    }
    Ok(job)
}

fn run_job(args: RunArgs) -> ExitCode {
    init_logs(args.log_format);
    let mut job = match load_job(args.job.as_deref()) {
        Ok(j) => j,
        Err(code) => return code,
    };
    if let Some(o) = args.output {
        job.set_output_dir(o);
    }
    if let Some(url) = &args.fhir_url {
        job::set_fhir_url(&mut job, url);
    }
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
    let opts = RunOptions {
        workers: args
            .workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        processes: args.processes,
        process: args.process,
        hosts,
        until_end: args.until_end,
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
    let metrics = Metrics::new();
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
fn status_line(metrics: Arc<Metrics>, done: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
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

fn simulate(args: SimulateArgs) -> ExitCode {
    init_logs(LogFormat::Text);
    let cfg = SimulatorConfig {
        devices: args.devices.max(1),
        // A finite run (--count) goes as fast as it can unless paced; an endless one is live.
        rate: args.rate.unwrap_or(if args.count.is_some() {
            0.0
        } else {
            f64::from(args.devices.max(1))
        }),
        seed: args.seed,
        profile: args.profile,
        count: args.count,
        out_of_order: args.out_of_order,
        late_burst: args.late_burst,
        dropout: args.dropout,
        artifacts: args.artifacts,
        acute: args.acute.min(args.devices.max(1)),
    };
    if let Some((field, reason)) = cfg.problems().into_iter().next() {
        eprintln!("error: --{}: {reason}", field.replace('_', "-"));
        return ExitCode::from(2);
    }
    let start = match &args.start {
        Some(s) => match vitalflow::time::parse_timestamp(s) {
            Some(t) => t,
            None => {
                eprintln!("error: --start: \"{s}\" is not an RFC 3339 timestamp");
                return ExitCode::from(2);
            }
        },
        None => Simulator::default_start(&cfg),
    };
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let _ = signal_hook::flag::register(sig, stop.clone());
    }
    let result = match (&args.brokers, &args.topic) {
        (Some(brokers), Some(topic)) => {
            let k = job::KafkaConfig {
                brokers: brokers.clone(),
                topics: vec![topic.clone()],
                group_id: String::new(),
                start: job::StartPosition::Earliest,
                partitions: 1,
                startup_timeout: std::time::Duration::from_secs(30),
                properties: Default::default(),
            };
            let mut k = k;
            match job::apply_env_kafka(&mut k, std::env::vars()) {
                Ok(()) => vitalflow::sources::simulator::produce(
                    &cfg, &k, brokers, topic, start, &stop,
                )
                .map(|n| tracing::info!(messages = n, %topic, "simulated messages delivered")),
                Err(errors) => Err(anyhow::anyhow!("environment: {}", errors.join("; "))),
            }
        }
        _ => write_simulation(&cfg, start, args.output.as_deref().unwrap_or("-"), &stop),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn write_simulation(
    cfg: &SimulatorConfig,
    start: chrono::DateTime<chrono::Utc>,
    output: &str,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out: Box<dyn Write> = if output == "-" {
        Box::new(std::io::BufWriter::new(std::io::stdout().lock()))
    } else {
        Box::new(std::io::BufWriter::new(
            std::fs::File::create(output)
                .map_err(|e| anyhow::anyhow!("cannot create {output}: {e}"))?,
        ))
    };
    let mut sim = Simulator::new(cfg, start, (0, 1));
    let mut pacer =
        vitalflow::sources::simulator::Pacer::new(if output == "-" { cfg.rate } else { 0.0 });
    while !stop.load(Ordering::Relaxed) {
        let n = pacer.allowance(1000);
        if n == 0 {
            out.flush()?;
            std::thread::sleep(pacer.until_next().min(std::time::Duration::from_millis(50)));
            continue;
        }
        for _ in 0..n {
            let Some(m) = sim.next() else {
                out.flush()?;
                return Ok(());
            };
            if let Err(e) = out.write_all(&m.payload).and_then(|_| out.write_all(b"\n")) {
                if e.kind() == std::io::ErrorKind::BrokenPipe {
                    return Ok(());
                }
                return Err(e.into());
            }
        }
        pacer.sent(n);
    }
    out.flush()?;
    Ok(())
}

fn bench(args: BenchArgs) -> ExitCode {
    match args.what {
        Some(BenchWhat::Alerts(a)) => return bench_alerts(a),
        Some(BenchWhat::Peer(p)) => return bench_peer(p),
        None => {}
    }
    init_logs(LogFormat::Text);
    let format = resolve(args.format);
    let (text, file) = match &args.targets {
        Some(p) => match std::fs::read_to_string(p) {
            Ok(t) => (t, p.display().to_string()),
            Err(e) => {
                eprintln!("error: cannot read {}: {e}", p.display());
                return ExitCode::from(2);
            }
        },
        None => (
            vitalflow::bench::DEFAULT_TARGETS.to_string(),
            "benches/targets.toml".to_string(),
        ),
    };
    let targets = match vitalflow::bench::Targets::parse(&text, &file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let mut job = match load_job(args.job.as_deref()) {
        Ok(j) => j,
        Err(code) => return code,
    };
    if let Some(url) = &args.fhir_url {
        let fresh = job.fhir.is_none();
        job::set_fhir_url(&mut job, url);
        if let (true, Some(f)) = (fresh, &mut job.fhir) {
            // The simulator's devices are unknown to the server: create them, once each.
            f.identity = job::IdentityMode::Create;
        }
    }
    if let Err(e) = std::fs::create_dir_all(&args.out) {
        eprintln!("error: cannot create {}: {e}", args.out.display());
        return ExitCode::from(2);
    }
    let opts = vitalflow::bench::BenchOptions {
        rate: args.rate.unwrap_or(targets.throughput.rate),
        duration: args.duration,
        warmup: args.warmup,
        workers: args
            .workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        out: args.out.clone(),
    };
    let outcome = (|| -> anyhow::Result<(Vec<vitalflow::bench::Summary>, Option<f64>)> {
        if args.find_max {
            vitalflow::bench::find_max(&job, &targets, &opts)
        } else {
            let (s, h) = vitalflow::bench::run_once(&job, &targets, &opts)?;
            vitalflow::bench::write_histograms(&args.out, &h, opts.duration)?;
            Ok((vec![s], None))
        }
    })();
    let (runs, max_rate) = match outcome {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let plot = vitalflow::bench::plot(&args.out, &runs)
        .map(|p| p.display().to_string())
        .map_err(|e| tracing::warn!("no plot: {e:#}"))
        .ok();
    let pass = if args.find_max {
        max_rate.is_some()
    } else {
        runs.iter().all(|r| r.pass)
    };
    let summary = json!({
        "runs": runs,
        "max_rate": max_rate,
        "targets": targets,
        "plot": plot,
        "pass": pass,
    });
    let path = args.out.join("summary.json");
    if let Err(e) = std::fs::write(&path, serde_json::to_string_pretty(&summary).expect("JSON")) {
        eprintln!("error: cannot write {}: {e}", path.display());
        return ExitCode::FAILURE;
    }
    match format {
        Format::Json => outln!("{summary}"),
        Format::Table => print_bench(&runs, max_rate, &args.out),
    }
    if pass {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn lake(what: LakeWhat) -> ExitCode {
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
        Ok(_) if args.tables.is_empty() => cfg.specs(),
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

fn alerts(args: AlertsArgs) -> ExitCode {
    init_logs(LogFormat::Text);
    let job = match load_job(args.job.as_deref()) {
        Ok(j) => j,
        Err(code) => return code,
    };
    if job.anomaly_rules.is_none() {
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

fn bench_peer(args: BenchPeerArgs) -> ExitCode {
    init_logs(LogFormat::Text);
    let opts = vitalflow::bench_peer::PeerOptions {
        messages: args.messages,
        devices: args.devices,
        partitions: args.partitions,
        threads: args.threads,
        out: args.out,
        only: args.only,
        brokers: args.brokers,
    };
    match vitalflow::bench_peer::run(&opts) {
        Ok((input, rows)) => {
            match resolve(args.format) {
                Format::Json => println!(
                    "{}",
                    serde_json::json!({"messages": opts.messages, "input_bytes": input, "contenders": rows})
                ),
                Format::Table => print!(
                    "{}",
                    vitalflow::bench_peer::table(opts.messages, input, &rows)
                ),
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn bench_loop(args: BenchLoopArgs) -> ExitCode {
    let every = match args.mode.as_str() {
        "alerts" => false,
        "aggregates" => true,
        m => {
            eprintln!("error: --mode {m}: expected alerts or aggregates");
            return ExitCode::from(2);
        }
    };
    match vitalflow::bench_peer::plain_loop(
        &args.brokers,
        &args.topic,
        &args.alerts_topic,
        every,
        args.threads,
        &args.out,
    ) {
        Ok(n) => {
            println!("{n}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn bench_alerts(args: BenchAlertsArgs) -> ExitCode {
    init_logs(LogFormat::Text);
    let format = resolve(args.format);
    let specs = match vitalflow::bench_alerts::specs(&args.scenarios) {
        Ok(s) if !s.is_empty() => s,
        Ok(_) => {
            eprintln!(
                "error: no scenario (*.toml) in {}",
                args.scenarios.display()
            );
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    let workers = args
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let mut results = Vec::new();
    for spec in &specs {
        match vitalflow::bench_alerts::run_scenario(spec, &args.rules, workers) {
            Ok(r) => results.push(r),
            Err(e) => {
                eprintln!("error: {}: {e:#}", spec.display());
                return ExitCode::FAILURE;
            }
        }
    }
    let vf =
        vitalflow::bench_alerts::total(&results.iter().map(|r| &r.vitalflow).collect::<Vec<_>>());
    let nv = vitalflow::bench_alerts::total(&results.iter().map(|r| &r.naive).collect::<Vec<_>>());
    match format {
        Format::Json => outln!(
            "{}",
            json!({"scenarios": results, "total": {"vitalflow": vf, "naive": nv}})
        ),
        Format::Table => {
            let mut t = Table::new();
            t.load_preset(UTF8_FULL_CONDENSED)
                .set_content_arrangement(ContentArrangement::Dynamic)
                .set_header(vec![
                    "scenario",
                    "detector",
                    "events",
                    "recall",
                    "alerts",
                    "precision",
                    "false/pt-h",
                    "alerts/pt-h",
                    "TTD median s",
                    "TTD p95 s",
                    "max at-since s",
                ]);
            let secs = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0}"));
            let mut row = |name: &str, who: &str, s: &vitalflow::bench_alerts::Score| {
                t.add_row(vec![
                    name.to_string(),
                    who.to_string(),
                    s.events.to_string(),
                    format!("{:.2}", s.recall),
                    s.alerts.to_string(),
                    format!("{:.2}", s.precision),
                    format!("{:.2}", s.false_per_patient_hour),
                    format!("{:.2}", s.alerts_per_patient_hour),
                    secs(s.ttd_median_s),
                    secs(s.ttd_p95_s),
                    secs(s.max_open_delay_s),
                ]);
            };
            for r in &results {
                row(&r.name, "vitalflow", &r.vitalflow);
                row("", "naive", &r.naive);
            }
            row("TOTAL", "vitalflow", &vf);
            row("", "naive", &nv);
            outln!("{t}");
            for r in &results {
                for (patient, kind, ttd) in &r.detections {
                    match ttd {
                        Some(t) => outln!(
                            "{}: {patient} {kind}: detected {t:.0} s after onset",
                            r.name
                        ),
                        None => outln!("{}: {patient} {kind}: missed", r.name),
                    }
                }
                for d in &r.disagreements {
                    outln!("{}: {d}", r.name);
                }
            }
        }
    }
    ExitCode::SUCCESS
}

fn print_bench(runs: &[vitalflow::bench::Summary], max_rate: Option<f64>, out: &Path) {
    let verdict = |ok: bool| if ok { "pass" } else { "FAIL" };
    for r in runs {
        let mut t = Table::new();
        t.load_preset(UTF8_FULL_CONDENSED)
            .set_content_arrangement(ContentArrangement::Dynamic)
            .set_header(vec![
                "path",
                "messages",
                "p50 ms",
                "p99 ms",
                "p99.9 ms",
                "max ms",
                "target p50/p99/p99.9",
                "",
            ]);
        for p in &r.paths {
            let target = p.target.as_ref().map_or("-".to_string(), |t| {
                format!("{} / {} / {}", t.p50_ms, t.p99_ms, t.p999_ms)
            });
            t.add_row(vec![
                p.path.clone(),
                p.count.to_string(),
                format!("{:.1}", p.p50_ms),
                format!("{:.1}", p.p99_ms),
                format!("{:.1}", p.p999_ms),
                format!("{:.1}", p.max_ms),
                target,
                verdict(p.pass).to_string(),
            ]);
        }
        outln!(
            "offered {:.0} msgs/s for {:.1} s on {} workers: consumed {:.0} msgs/s ({:.0} per worker), lag {}, {:.2} cores busy, peak RSS {:.0} MB: {}",
            r.rate,
            r.duration_s,
            r.workers,
            r.throughput_msgs_per_s,
            r.throughput_per_worker,
            r.lag,
            r.cpu_cores,
            r.peak_rss_mb,
            verdict(r.throughput_pass)
        );
        outln!("{t}");
        if let Some(f) = &r.fhir {
            outln!(
                "FHIR: {} Observations acknowledged ({:.0}/s), {} requests: {:.3} per Observation, {:.4} per measurement",
                f.observations,
                f.observations_per_s,
                f.requests,
                f.requests_per_observation,
                f.requests_per_measurement
            );
        }
    }
    if let Some(m) = max_rate {
        outln!("highest rate meeting the p99 and throughput targets: {m:.0} msgs/s");
    }
    outln!(
        "histograms, summary.json and latency.svg in {}",
        out.display()
    );
}
