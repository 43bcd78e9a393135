//! `vitalflow bench alerts`: replays labelled scenarios through the job and scores its alerts
//! against the ground truth, next to a naive fixed-threshold detector on the same data.
//!
//! An event counts as detected by an alert of one of its rules, for its patient, at or
//! above its severity, raised between `EARLY` before its onset and its end. Every opened
//! alert that detects no event is a false alert. The naive detector raises one alert per
//! reading beyond a rule's warning threshold (what re-alarming monitors do).
//!
//! Physiological and technical alerts are scored apart, each against the events of its
//! category: a lost signal that raises "signal lost" is right, one that raises "SpO2 low"
//! is a false alarm.

use crate::anomaly::lifecycle::Category;
use crate::anomaly::rules::{self, Severity, Signal, Vitals};
use crate::config;
use crate::dataflow::{self, RunOptions};
use crate::mapping::DeviceMapping;
use crate::metrics::Metrics;
use crate::sources::scenario::{self, Event};
use anyhow::Context as _;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// How long before an event's onset an alert still counts as detecting it: gradual
/// deteriorations cross thresholds in the noise before the noise-free trajectory does.
const EARLY_S: i64 = 600;

/// One raised alert, as scored.
#[derive(Debug, Clone, Serialize)]
pub struct Raised {
    /// Patient.
    pub patient: String,
    /// Rule.
    pub rule: String,
    /// Severity.
    pub severity: Severity,
    /// When (event time).
    pub at: DateTime<Utc>,
    /// Since when its condition held (event time).
    pub since: DateTime<Utc>,
    /// True for an escalation (counts as detection, not as another alert).
    pub escalation: bool,
    /// When it resolved (None: still open at the end).
    pub until: Option<DateTime<Utc>>,
    /// Physiological or technical.
    pub category: Category,
}

/// Scores of one detector on one scenario (or all).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Score {
    /// Ground-truth events.
    pub events: usize,
    /// Events detected.
    pub detected: usize,
    /// detected / events (1 when there are none).
    pub recall: f64,
    /// Alerts raised (escalations excluded).
    pub alerts: usize,
    /// Alerts that detect an event.
    pub true_alerts: usize,
    /// true_alerts / alerts (1 when none raised).
    pub precision: f64,
    /// Alerts that detect nothing, per patient-hour.
    pub false_per_patient_hour: f64,
    /// Alerts per patient-hour.
    pub alerts_per_patient_hour: f64,
    /// Median time from onset to first detection, seconds.
    pub ttd_median_s: Option<f64>,
    /// 95th percentile of the same, seconds.
    pub ttd_p95_s: Option<f64>,
    /// The largest time from a condition's start to its alert (`at - since`), seconds.
    pub max_open_delay_s: Option<f64>,
    /// Patient-hours replayed.
    pub patient_hours: f64,
    /// Every detection's time to detect, seconds (for totals).
    #[serde(skip)]
    pub ttd: Vec<f64>,
}

/// One scenario's result.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioResult {
    /// Name.
    pub name: String,
    /// vitalflow's physiological alerts.
    pub vitalflow: Score,
    /// vitalflow's technical alerts, against the technical events.
    pub technical: Score,
    /// The naive fixed-threshold detector.
    pub naive: Score,
    /// Where vitalflow and the ground truth disagree: missed events and false alerts.
    pub disagreements: Vec<String>,
    /// Per event: patient, kind, and vitalflow's time to detect it (None: missed), seconds.
    pub detections: Vec<(String, String, Option<f64>)>,
}

fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    Some(sorted[i.min(sorted.len() - 1)])
}

/// The alert belongs to the event: its patient, one of its rules (or a side of one, as
/// `rule/above`), within its window.
fn explains(e: &Event, a: &Raised) -> bool {
    // Open during the event's window: raised within it, or raised just before and still
    // open when it starts (noise crosses a threshold before the trajectory does).
    a.patient == e.patient
        && a.category == e.category
        && e.rules
            .iter()
            .any(|r| a.rule == *r || a.rule.starts_with(&format!("{r}/")))
        && a.at <= e.end
        && a.until
            .is_none_or(|u| u >= e.onset - chrono::Duration::seconds(EARLY_S))
}

/// ...and is severe enough to count as detecting it.
fn detects(e: &Event, a: &Raised) -> bool {
    explains(e, a) && a.severity >= e.severity
}

/// Scores alerts against events.
pub fn score(events: &[Event], raised: &[Raised], patient_hours: f64) -> (Score, Vec<String>) {
    let mut ttd = Vec::new();
    let mut notes = Vec::new();
    let mut detected = 0;
    for e in events {
        let first = raised
            .iter()
            .filter(|a| detects(e, a))
            .map(|a| a.at.max(e.onset - chrono::Duration::seconds(EARLY_S)))
            .min();
        match first {
            Some(t) => {
                detected += 1;
                ttd.push((t - e.onset).num_milliseconds() as f64 / 1000.0);
            }
            None => notes.push(format!(
                "missed: {} {} from {}",
                e.patient,
                e.kind,
                e.onset.format("%H:%M:%S")
            )),
        }
    }
    let opened: Vec<&Raised> = raised.iter().filter(|a| !a.escalation).collect();
    let mut true_alerts = 0;
    for a in &opened {
        if events.iter().any(|e| explains(e, a)) {
            true_alerts += 1;
        } else {
            notes.push(format!(
                "false alert: {} {} {:?} at {}",
                a.patient,
                a.rule,
                a.severity,
                a.at.format("%H:%M:%S")
            ));
        }
    }
    ttd.sort_by(f64::total_cmp);
    let max_open_delay_s = opened
        .iter()
        .map(|a| (a.at - a.since).num_milliseconds() as f64 / 1000.0)
        .max_by(f64::total_cmp);
    let n = opened.len();
    let ph = patient_hours.max(1e-9);
    (
        Score {
            events: events.len(),
            detected,
            recall: if events.is_empty() {
                1.0
            } else {
                detected as f64 / events.len() as f64
            },
            alerts: n,
            true_alerts,
            precision: if n == 0 {
                1.0
            } else {
                true_alerts as f64 / n as f64
            },
            false_per_patient_hour: (n - true_alerts) as f64 / ph,
            alerts_per_patient_hour: n as f64 / ph,
            ttd_median_s: percentile(&ttd, 0.5),
            ttd_p95_s: percentile(&ttd, 0.95),
            max_open_delay_s,
            patient_hours,
            ttd,
        },
        notes,
    )
}

/// Sums scenario scores into a total.
pub fn total(results: &[&Score]) -> Score {
    let mut t = Score::default();
    let mut ttd = Vec::new();
    for s in results {
        t.events += s.events;
        t.detected += s.detected;
        t.alerts += s.alerts;
        t.true_alerts += s.true_alerts;
        t.patient_hours += s.patient_hours;
        ttd.extend(&s.ttd);
        t.max_open_delay_s = match (t.max_open_delay_s, s.max_open_delay_s) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }
    let ph = t.patient_hours.max(1e-9);
    t.recall = if t.events == 0 {
        1.0
    } else {
        t.detected as f64 / t.events as f64
    };
    t.precision = if t.alerts == 0 {
        1.0
    } else {
        t.true_alerts as f64 / t.alerts as f64
    };
    t.false_per_patient_hour = (t.alerts - t.true_alerts) as f64 / ph;
    t.alerts_per_patient_hour = t.alerts as f64 / ph;
    ttd.sort_by(f64::total_cmp);
    t.ttd_median_s = percentile(&ttd, 0.5);
    t.ttd_p95_s = percentile(&ttd, 0.95);
    t.ttd = ttd;
    t
}

fn naive(
    g: &scenario::Generated,
    device: &DeviceMapping,
    vitals: &Vitals,
    set: &rules::RuleSet,
) -> Vec<Raised> {
    let mut out = Vec::new();
    for m in &g.messages {
        let Ok(body) = serde_json::from_slice::<Value>(&m.payload) else {
            continue;
        };
        let ev = crate::event::wrap(body, Default::default(), Default::default());
        let Ok(ms) = device.normalize(&ev) else {
            continue;
        };
        for x in ms {
            for (name, raw) in &x.properties {
                let Some(vital) = vitals.of(&x.type_name, name) else {
                    continue;
                };
                let Some(v) = crate::anomaly::rules::numeric(raw) else {
                    continue;
                };
                for r in &set.rules {
                    if r.signal != Signal::Value(vital.to_string()) {
                        continue;
                    }
                    if let Some(sev) = r.level(v).severity() {
                        out.push(Raised {
                            patient: x.patient_id.as_deref().unwrap_or_default().to_string(),
                            rule: r.id.clone(),
                            severity: sev,
                            at: x.occurrence_time,
                            since: x.occurrence_time,
                            escalation: false,
                            until: Some(x.occurrence_time),
                            category: Category::Physiological,
                        });
                    }
                }
            }
        }
    }
    out
}

/// Replays one scenario spec through the job and scores it.
pub fn run_scenario(
    spec: &Path,
    rules_file: &Path,
    workers: usize,
) -> anyhow::Result<ScenarioResult> {
    let text =
        std::fs::read_to_string(spec).with_context(|| format!("cannot read {}", spec.display()))?;
    let span = scenario::duration_of(&text);
    let start = Utc::now()
        - chrono::Duration::from_std(span).unwrap_or_default()
        - chrono::Duration::minutes(10);
    let start = crate::time::parse_timestamp(&start.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .expect("time");
    let g = scenario::generate(&text, &spec.display().to_string(), start)?;
    let tmp = std::env::temp_dir().join(format!(
        "vitalflow-scenario-{}-{}",
        std::process::id(),
        g.name
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    let input = tmp.join("messages.ndjson");
    let mut lines = Vec::new();
    for m in &g.messages {
        lines.extend_from_slice(&m.payload);
        lines.push(b'\n');
    }
    std::fs::write(&input, lines)?;
    // Replayed as fast as it goes: alerts follow the event clock, not the replay speed.
    let job_text = format!(
        "name = \"scenario\"\nsource = \"file\"\n[performance]\nepoch = \"5ms\"\nbatch_size = 200\n[file]\npath = \"{}\"\n[mapping]\ndevice = \"templates/bedside-monitor/devicecontent.json\"\nfhir = \"templates/bedside-monitor/fhirmapping.json\"\n[anomaly]\nrules = \"{}\"\n[sinks.ndjson]\ndir = \"{}\"\nflush_interval = \"1s\"\n",
        input.display(),
        rules_file.display(),
        tmp.join("out").display()
    );
    let job = config::parse(
        &job_text,
        "<scenario job>",
        Path::new("."),
        &config::Overrides::default(),
    )?;
    let opts = RunOptions {
        workers,
        processes: 1,
        process: 0,
        hosts: Vec::new(),
        until_end: true,
        board: None,
        acks_topic: None,
    };
    dataflow::run(
        &job,
        &opts,
        Arc::new(AtomicBool::new(false)),
        Metrics::new(),
    )?;
    let mut raised: Vec<Raised> = Vec::new();
    let mut ids = Vec::new();
    for part in crate::sinks::files::committed_parts(&tmp.join("out/alerts")) {
        for line in std::fs::read_to_string(&part)?.lines() {
            let a: Value = serde_json::from_str(line)?;
            let state = a["state"].as_str().unwrap_or("");
            let at = a["at"]
                .as_str()
                .and_then(crate::time::parse_timestamp)
                .unwrap_or(start);
            let id = a["id"].as_str().unwrap_or("").to_string();
            let since = a["since"]
                .as_str()
                .and_then(crate::time::parse_timestamp)
                .unwrap_or(at);
            if state == "resolved" {
                for (r, i) in raised.iter_mut().zip(&ids) {
                    if *i == id {
                        r.until = Some(at);
                    }
                }
                continue;
            }
            ids.push(id);
            raised.push(Raised {
                patient: a["patient"].as_str().unwrap_or("").to_string(),
                rule: a["rule"].as_str().unwrap_or("").to_string(),
                severity: if a["severity"] == "critical" {
                    Severity::Critical
                } else {
                    Severity::Warning
                },
                at,
                since,
                escalation: state == "escalated",
                until: None,
                category: if a["category"] == "technical" {
                    Category::Technical
                } else {
                    Category::Physiological
                },
            });
        }
    }
    if std::env::var_os("VITALFLOW_BENCH_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    let (device, fhir) = dataflow::load_mappings(&job)?;
    let vitals = Vitals::new(&fhir);
    let set = rules::load(rules_file, &vitals).map_err(|e| anyhow::anyhow!("{e}"))?;
    let naive_alerts = naive(&g, &device, &vitals, &set);
    // A recording ends: its monitors fall silent while other patients' readings carry the
    // clock on. That is the end of the labels, not a lost signal, and is not scored.
    let mut ends: std::collections::HashMap<String, DateTime<Utc>> = Default::default();
    for m in &g.messages {
        if let Ok(v) = serde_json::from_slice::<Value>(&m.payload) {
            let beds = v["beds"].as_array().cloned().unwrap_or_else(|| vec![v]);
            for b in beds {
                if let Some(p) = b["patientId"].as_str() {
                    let e = ends.entry(p.to_string()).or_insert(m.event_time);
                    *e = (*e).max(m.event_time);
                }
            }
        }
    }
    let ended = |a: &Raised| {
        a.category == Category::Technical && ends.get(&a.patient).is_some_and(|e| a.since >= *e)
    };
    let of = |c: Category| -> (Vec<Event>, Vec<Raised>) {
        (
            g.events
                .iter()
                .filter(|e| e.category == c)
                .cloned()
                .collect(),
            raised
                .iter()
                .filter(|a| a.category == c && !ended(a))
                .cloned()
                .collect(),
        )
    };
    let (phys_events, phys) = of(Category::Physiological);
    let (tech_events, tech) = of(Category::Technical);
    let (vf, mut disagreements) = score(&phys_events, &phys, g.patient_hours);
    let (tc, tech_notes) = score(&tech_events, &tech, g.patient_hours);
    disagreements.extend(tech_notes.into_iter().map(|n| format!("technical {n}")));
    let (nv, _) = score(&phys_events, &naive_alerts, g.patient_hours);
    let detections = g
        .events
        .iter()
        .map(|e| {
            let first = raised
                .iter()
                .filter(|a| detects(e, a))
                .map(|a| a.at.max(e.onset - chrono::Duration::seconds(EARLY_S)))
                .min();
            (
                e.patient.clone(),
                e.kind.clone(),
                first.map(|t| (t - e.onset).num_milliseconds() as f64 / 1000.0),
            )
        })
        .collect();
    Ok(ScenarioResult {
        name: g.name,
        vitalflow: vf,
        technical: tc,
        naive: nv,
        disagreements,
        detections,
    })
}

/// The scenario specs of a directory, by name.
pub fn specs(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    v.sort();
    Ok(v)
}
