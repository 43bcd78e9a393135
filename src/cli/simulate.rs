//! `vitalflow simulate`: reproducible device messages into Kafka or a file.

use super::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use vitalflow::config::SimulatorConfig;
use vitalflow::sources::simulator::Simulator;

/// Help shown after `vitalflow simulate --help`.
pub const SIMULATE_HELP: &str = "Examples:
  vitalflow simulate --devices 50 --count 3000 --output vitals.ndjson
  vitalflow simulate --brokers 127.0.0.1:9092 --topic icu-vitals --devices 200 --rate 200
  vitalflow simulate --profile wearable --devices 10 --count 100 --seed 7 --start 2026-11-21T08:00:00Z

The same seed, devices, count and start give the same messages.";

/// Arguments of `vitalflow simulate`.
#[derive(clap::Args)]
pub struct SimulateArgs {
    /// Device profile: bedside-monitor (templates/bedside-monitor), wearable (templates/basic), or
    /// ihe-pcd01 (HL7 v2 ORU^R01 messages, templates/ihe-pcd01).
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

/// Runs `vitalflow simulate`.
pub fn run(args: SimulateArgs) -> ExitCode {
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
            match config::kafka_from_flags(brokers, topic, &config::Overrides::from_env()) {
                Ok(k) => vitalflow::sources::simulator::produce(
                    &cfg, &k, &k.brokers, topic, start, &stop,
                )
                .map(|n| tracing::info!(messages = n, %topic, "simulated messages delivered")),
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
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
