//! `vitalflow alerts`: the alerts a job delivers, as readable lines for people at a
//! terminal (colour by severity), or as the JSON objects themselves for scripts.

use crate::config::JobConfig;
use anyhow::{anyhow, Context as _};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::Message;
use serde_json::Value;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How to show alerts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// One line per alert; ANSI colours when `true`.
    Lines(bool),
    /// The JSON objects, one per line.
    Json,
}

/// One alert as a line: time, severity, state, patient, what, since.
pub fn line(a: &Value, colour: bool) -> String {
    let s = |k: &str| a[k].as_str().unwrap_or("");
    let severity = s("severity").to_uppercase();
    let state = s("state");
    let (on, off) = match (colour, state, s("severity")) {
        (false, _, _) => ("", ""),
        (true, "resolved", _) => ("\x1b[32m", "\x1b[0m"),
        (true, _, "critical") => ("\x1b[1;31m", "\x1b[0m"),
        (true, _, _) => ("\x1b[33m", "\x1b[0m"),
    };
    let at = s("at").get(11..19).unwrap_or(s("at"));
    let value = a["values"]
        .get(0)
        .and_then(|v| v.get(1))
        .and_then(Value::as_f64)
        .map(|v| format!(" {v}"))
        .unwrap_or_default();
    format!(
        "{at} {on}{severity:<8} {state:<9}{off} {patient:<16} {title}{value}  [{rule}, device {device}, since {since}, id {id}]",
        patient = s("patient"),
        title = s("title"),
        rule = s("rule"),
        device = s("device"),
        since = s("since").get(11..19).unwrap_or(s("since")),
        id = s("id").get(..8).unwrap_or(s("id")),
    )
}

fn show(out: &mut impl Write, payload: &[u8], style: Style) -> anyhow::Result<()> {
    match style {
        Style::Json => out.write_all(payload).and_then(|()| out.write_all(b"\n"))?,
        Style::Lines(colour) => {
            let v: Value = serde_json::from_slice(payload).context("an alert that is not JSON")?;
            writeln!(out, "{}", line(&v, colour))?;
        }
    }
    out.flush()?;
    Ok(())
}

/// Prints the job's alerts: from its alerts topic, or from its alert files. With `follow`,
/// waits for more until `stop`.
pub fn tail(
    job: &JobConfig,
    from_beginning: bool,
    follow: bool,
    style: Style,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let to = job.anomaly.as_ref().map(|a| &a.alerts);
    match to {
        Some(crate::config::Output::Topic { kafka: k, topic }) => {
            if k.embedded() {
                return Err(anyhow!(
                    "{}: the job's Kafka is embedded in its own process; its alerts are on the topic \"{topic}\" there only (give the job real brokers, or drop anomaly.topic to write files)",
                    job.file
                ));
            }
            let c: BaseConsumer = crate::sources::kafka::client_config(k, &k.brokers)
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
                for part in crate::sinks::files::committed_parts(&dir) {
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
