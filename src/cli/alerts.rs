//! `vitalflow alerts`: the alerts a job delivers, as they come: readable lines for people
//! at a terminal (colour by severity), or the JSON objects themselves for scripts.

use super::*;
use anyhow::{anyhow, Context as _};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::Message;
use serde_json::Value;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use vitalflow::config::JobConfig;

/// Help shown after `vitalflow alerts --help`.
pub const ALERTS_HELP: &str = "Lines show time (event time), severity, state (open, escalated, \
resolved; acknowledged and silenced with who, from the ward board), patient, what and the value, then rule, device, since when and the alert id. \
Technical alerts (signal lost, monitor silent: about the equipment, not the patient) show \
TECHNICAL where physiological ones show their severity. Colours on a terminal: red \
critical, yellow warning, cyan technical, green resolved.

Examples:
  vitalflow alerts                                           # the embedded default's, from ./vitalflow-out
  vitalflow alerts --job dataflows/icu.toml                  # new alerts, until Ctrl-C
  vitalflow alerts --job dataflows/icu.toml --from-beginning --no-follow
  vitalflow alerts --job dataflows/icu.toml --category technical   # lost signals only
  vitalflow alerts --job dataflows/icu.toml --format json | jq .text";

/// Arguments of `vitalflow alerts`.
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
    /// Only alerts of this category [default: both].
    #[arg(long, value_enum)]
    category: Option<AlertCategory>,
}

/// The two kinds of alert (IEC 60601-1-8).
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum AlertCategory {
    /// About the patient.
    Physiological,
    /// About the signal or the device.
    Technical,
}

/// Runs `vitalflow alerts`.
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
    let format = match resolve(args.format) {
        Format::Json => Style::Json,
        Format::Table => Style::Lines(std::io::stdout().is_terminal()),
    };
    let style = Shown {
        format,
        category: args.category.map(|c| match c {
            AlertCategory::Physiological => "physiological",
            AlertCategory::Technical => "technical",
        }),
    };
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let _ = signal_hook::flag::register(sig, stop.clone());
    }
    match tail(&job, args.from_beginning, !args.no_follow, style, stop) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// How to show alerts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Style {
    /// One line per alert; ANSI colours when `true`.
    Lines(bool),
    /// The JSON objects, one per line.
    Json,
}

/// How to show alerts, and which.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Shown {
    format: Style,
    /// Only this category (as written in the records).
    category: Option<&'static str>,
}

/// The category of an alert record (records from before categories are physiological).
fn category_of(a: &Value) -> &str {
    a["category"].as_str().unwrap_or("physiological")
}

/// One alert as a line: time, severity (TECHNICAL for technical alerts), state, patient,
/// what, since.
fn line(a: &Value, colour: bool) -> String {
    let s = |k: &str| a[k].as_str().unwrap_or("");
    let technical = category_of(a) == "technical";
    let severity = if technical {
        "TECHNICAL".to_string()
    } else {
        s("severity").to_uppercase()
    };
    let state = s("state");
    let (on, off) = match (colour, state, s("severity")) {
        (false, _, _) => ("", ""),
        (true, "acknowledged" | "silenced", _) => ("\x1b[2m", "\x1b[0m"),
        (true, "resolved", _) => ("\x1b[32m", "\x1b[0m"),
        (true, _, _) if technical => ("\x1b[36m", "\x1b[0m"),
        (true, _, "critical") => ("\x1b[1;31m", "\x1b[0m"),
        (true, _, _) => ("\x1b[33m", "\x1b[0m"),
    };
    let at = s("at").get(11..19).unwrap_or(s("at"));
    let value = match (
        a["values"]
            .get(0)
            .and_then(|v| v.get(1))
            .and_then(Value::as_f64),
        a["by"].as_str(),
    ) {
        (Some(v), _) => format!(" {v}"),
        (None, Some(by)) => {
            let until = a["until"].as_str().and_then(|u| u.get(11..19));
            format!(
                " by {by}{}",
                until.map(|u| format!(" until {u}")).unwrap_or_default()
            )
        }
        _ => String::new(),
    };
    format!(
        "{at} {on}{severity:<9} {state:<12}{off} {patient:<16} {title}{value}  [{rule}, device {device}, since {since}, id {id}]",
        patient = s("patient"),
        title = s("title"),
        rule = s("rule"),
        device = s("device"),
        since = s("since").get(11..19).unwrap_or(s("since")),
        id = s("id").get(..8).unwrap_or(s("id")),
    )
}

fn show(out: &mut impl Write, payload: &[u8], shown: Shown) -> anyhow::Result<()> {
    let v: Value = serde_json::from_slice(payload).context("an alert that is not JSON")?;
    if shown.category.is_some_and(|c| c != category_of(&v)) {
        return Ok(());
    }
    match shown.format {
        Style::Json => out.write_all(payload).and_then(|()| out.write_all(b"\n"))?,
        Style::Lines(colour) => writeln!(out, "{}", line(&v, colour))?,
    }
    out.flush()?;
    Ok(())
}

/// Prints the job's alerts: from its alerts topic, or from its alert files. With `follow`,
/// waits for more until `stop`.
fn tail(
    job: &JobConfig,
    from_beginning: bool,
    follow: bool,
    style: Shown,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let to = job.anomaly.as_ref().map(|a| &a.alerts);
    match to {
        Some(vitalflow::config::Output::Topic { kafka: k, topic }) => {
            if k.embedded() {
                return Err(anyhow!(
                    "{}: the job's Kafka is embedded in its own process; its alerts are on the topic \"{topic}\" there only (give the job real brokers, or drop anomaly.topic to write files)",
                    job.file
                ));
            }
            let c: BaseConsumer = vitalflow::kafka::client_config(k, &k.brokers)
                .set(
                    "group.id",
                    format!("{}-alerts-tail-{}", job.name, std::process::id()),
                )
                .set("enable.auto.commit", "false")
                .set("enable.partition.eof", "true")
                .set(
                    "auto.offset.reset",
                    if from_beginning { "earliest" } else { "latest" },
                )
                .create()
                .with_context(|| format!("cannot connect to {}", k.brokers))?;
            c.subscribe(&[topic])
                .with_context(|| format!("cannot read {topic}"))?;
            while !stop.load(Ordering::Relaxed) {
                match c.poll(Duration::from_millis(200)) {
                    Some(Ok(m)) => show(&mut out, m.payload().unwrap_or_default(), style)?,
                    Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) if !follow => break,
                    Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) | None => {}
                    Some(Err(e)) => tracing::warn!("alerts topic: {e}"),
                }
            }
        }
        _ => {
            let dir = job.output_dir.join("alerts");
            let mut seen = std::collections::HashSet::new();
            let mut first = true;
            loop {
                for part in vitalflow::sinks::files::committed_parts(&dir) {
                    if !seen.insert(part.clone()) || (first && !from_beginning) {
                        continue;
                    }
                    for l in std::fs::read_to_string(&part)?.lines() {
                        show(&mut out, l.as_bytes(), style)?;
                    }
                }
                first = false;
                if !follow || stop.load(Ordering::Relaxed) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }
    Ok(())
}
