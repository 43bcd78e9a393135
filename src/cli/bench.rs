//! `vitalflow bench`: the job under load, the plain-loop peer, the alert scenarios.

use super::*;
use comfy_table::{presets::UTF8_FULL_CONDENSED, ContentArrangement, Table};
use serde_json::json;
use std::path::PathBuf;

/// Help shown after `vitalflow bench --help`.
pub const BENCH_HELP: &str =
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

/// The benches besides the default load bench.
#[derive(clap::Subcommand)]
pub enum BenchWhat {
    /// Replay labelled scenarios and score the alerts against their ground truth, next to a
    /// naive fixed-threshold detector.
    #[command(after_help = BENCH_ALERTS_HELP)]
    Alerts(BenchAlertsArgs),
    /// Drain one seeded Kafka input with the job and with plain-loop baselines, each timed
    /// as a whole process: msgs/s, CPU seconds, peak RSS, bytes written.
    #[command(after_help = BENCH_PEER_HELP)]
    Peer(BenchPeerArgs),
    /// The MLLP gateway on loopback: messages/s with every ACK after Kafka, and the
    /// send-to-ACK latency (mock Kafka cluster in process).
    Mllp(BenchMllpArgs),
    /// The MQTT gateway: messages/s at QoS 1 with every PUBACK after Kafka, next to a plain
    /// subscriber on the same broker (Mosquitto started here unless --broker).
    Mqtt(BenchMqttArgs),
}

/// Arguments of `vitalflow bench mqtt`.
#[derive(clap::Args)]
pub struct BenchMqttArgs {
    /// An MQTT broker to use (mqtt://host:port); a Mosquitto of its own otherwise.
    #[arg(long)]
    broker: Option<String>,
    /// Publishing connections.
    #[arg(long, default_value_t = 4)]
    publishers: usize,
    /// Messages in all (bedside readings, ~400 bytes of JSON each).
    #[arg(long, default_value_t = 100_000)]
    messages: u64,
}

fn bench_mqtt(args: BenchMqttArgs) -> ExitCode {
    init_logs(LogFormat::Text);
    print_report(vitalflow::bench::gateway::mqtt(
        args.broker.as_deref(),
        args.publishers.max(1),
        args.messages,
    ))
}

/// Prints a gateway bench's report as JSON, or its error.
fn print_report(report: anyhow::Result<impl serde::Serialize>) -> ExitCode {
    match report {
        Ok(r) => {
            outln!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Arguments of `vitalflow bench mllp`.
#[derive(clap::Args)]
pub struct BenchMllpArgs {
    /// Concurrent connections, each waiting for its ACK before the next message.
    #[arg(long, default_value_t = 10)]
    connections: usize,
    /// Messages in all (12-OBX PCD-01 ORU^R01 each).
    #[arg(long, default_value_t = 20_000)]
    messages: u64,
    /// Kafka brokers with a topic "hl7" (the in-process mock cluster otherwise).
    #[arg(long)]
    brokers: Option<String>,
}

fn bench_mllp(args: BenchMllpArgs) -> ExitCode {
    init_logs(LogFormat::Text);
    print_report(vitalflow::bench::gateway::mllp(
        args.connections.max(1),
        args.messages,
        args.brokers.as_deref(),
    ))
}

/// Help shown after `vitalflow bench peer --help`.
pub const BENCH_PEER_HELP: &str = "Contenders: loop-alerts (rdkafka + serde_json, hourly \
count/min/max/mean per device and vital in a HashMap, threshold alerts to a topic), \
loop-aggregates (the same, writing every aggregate update), vitalflow (hourly SampledData \
Observations to NDJSON flushed every second, threshold alerts to a topic) and \
vitalflow-alerts (no NDJSON). Build with --release before measuring.

Examples:
  vitalflow bench peer --messages 60000 --devices 200
  tansu broker --listener-url tcp://127.0.0.1:9092 --storage-engine memory://tansu/ &
  vitalflow bench peer --brokers 127.0.0.1:9092 --messages 1000000 --devices 2000";

/// Arguments of `vitalflow bench peer`.
#[derive(clap::Args)]
pub struct BenchPeerArgs {
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
pub struct BenchLoopArgs {
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

/// Help shown after `vitalflow bench alerts --help`.
pub const BENCH_ALERTS_HELP: &str = "Each scenario (datasets/scenarios/*.toml, format in \
datasets/scenarios/README.md) is generated, replayed through the job from a file, and its \
alerts scored: recall (events detected), episode precision (alerts that belong to an event), \
false alerts per patient-hour, median and p95 time from onset to detection. The naive \
detector raises an alert for every reading beyond a rule's warning threshold.

Examples:
  vitalflow bench alerts --scenarios datasets/scenarios
  vitalflow bench alerts --scenarios datasets/scenarios --format json | jq .total";

/// Arguments of `vitalflow bench alerts`.
#[derive(clap::Args)]
pub struct BenchAlertsArgs {
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

/// Arguments of `vitalflow bench`.
#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
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
    /// Also keep the ward board's views, read every 5 s as one open page does (its cost).
    #[arg(long)]
    board: bool,
    /// Output format [default: table on a terminal, json otherwise].
    #[arg(long, value_enum)]
    format: Option<Format>,
}

/// Runs `vitalflow bench` (or one of its subcommands).
pub fn run(args: BenchArgs) -> ExitCode {
    match args.what {
        Some(BenchWhat::Alerts(a)) => return bench_alerts(a),
        Some(BenchWhat::Peer(p)) => return bench_peer(p),
        Some(BenchWhat::Mllp(m)) => return bench_mllp(m),
        Some(BenchWhat::Mqtt(m)) => return bench_mqtt(m),
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
        let mut overrides =
            config::Overrides::from_env().option("--fhir-url", "VITALFLOW_FHIR_URL", url);
        if job.fhir.is_none() {
            // The simulator's devices are unknown to the server: create them, once each.
            overrides = overrides.option("--fhir-url", "VITALFLOW_FHIR_IDENTITY", "Create");
        }
        job = match load_job_with(args.job.as_deref(), overrides) {
            Ok(j) => j,
            Err(code) => return code,
        };
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
        board: args.board,
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

fn bench_peer(args: BenchPeerArgs) -> ExitCode {
    init_logs(LogFormat::Text);
    let opts = vitalflow::bench::peer::PeerOptions {
        messages: args.messages,
        devices: args.devices,
        partitions: args.partitions,
        threads: args.threads,
        out: args.out,
        only: args.only,
        brokers: args.brokers,
    };
    match vitalflow::bench::peer::run(&opts) {
        Ok((input, rows)) => {
            match resolve(args.format) {
                Format::Json => println!(
                    "{}",
                    serde_json::json!({"messages": opts.messages, "input_bytes": input, "contenders": rows})
                ),
                Format::Table => print!(
                    "{}",
                    vitalflow::bench::peer::table(opts.messages, input, &rows)
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

/// Runs one plain-loop contender of `vitalflow bench peer`.
pub fn bench_loop(args: BenchLoopArgs) -> ExitCode {
    let every = match args.mode.as_str() {
        "alerts" => false,
        "aggregates" => true,
        m => {
            eprintln!("error: --mode {m}: expected alerts or aggregates");
            return ExitCode::from(2);
        }
    };
    match vitalflow::bench::peer::plain_loop(
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
    let specs = match vitalflow::bench::alerts::specs(&args.scenarios) {
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
        match vitalflow::bench::alerts::run_scenario(spec, &args.rules, workers) {
            Ok(r) => results.push(r),
            Err(e) => {
                eprintln!("error: {}: {e:#}", spec.display());
                return ExitCode::FAILURE;
            }
        }
    }
    let vf =
        vitalflow::bench::alerts::total(&results.iter().map(|r| &r.vitalflow).collect::<Vec<_>>());
    let nv = vitalflow::bench::alerts::total(&results.iter().map(|r| &r.naive).collect::<Vec<_>>());
    let tc =
        vitalflow::bench::alerts::total(&results.iter().map(|r| &r.technical).collect::<Vec<_>>());
    match format {
        Format::Json => outln!(
            "{}",
            json!({"scenarios": results, "total": {"vitalflow": vf, "technical": tc, "naive": nv}})
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
            let mut row = |name: &str, who: &str, s: &vitalflow::bench::alerts::Score| {
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
                if r.technical.events + r.technical.alerts > 0 {
                    row("", "technical", &r.technical);
                }
                row("", "naive", &r.naive);
            }
            row("TOTAL", "vitalflow", &vf);
            row("", "technical", &tc);
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
        if let Some(b) = &r.board {
            outln!(
                "ward board: {} patients; a read with 1 h of trends {:.0} KB, built in {:.1} ms; without trends {:.0} KB ({:.0} KB gzipped, as sent)",
                b.patients,
                b.snapshot_bytes as f64 / 1024.0,
                b.snapshot_ms,
                b.values_bytes as f64 / 1024.0,
                b.values_gzip_bytes as f64 / 1024.0
            );
        }
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
