//! Labelled clinical scenarios (`datasets/scenarios/*.toml`): a spec of baseline vitals, their
//! trajectories, artifacts and the events a detector should (or should not) find, turned into
//! bedside-monitor messages with seeded noise. A new scenario is a new spec file, no code.

use super::simulator::SimMessage;
use chrono::{DateTime, Utc};
use rand::{RngExt as _, SeedableRng};
use rand_distr::{Distribution, Normal};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// What the detector should find: an episode of one patient.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    /// Patient identifier.
    pub patient: String,
    /// What happens (`hypoxia`, `news2-emergency`, ...).
    pub kind: String,
    /// When it starts.
    pub onset: DateTime<Utc>,
    /// When it ends.
    pub end: DateTime<Utc>,
    /// Alerts of these rules detect it.
    pub rules: Vec<String>,
    /// Least severity that counts (`critical` for an emergency escalation).
    pub severity: crate::anomaly::rules::Severity,
    /// What kind of alert detects it.
    pub category: crate::anomaly::lifecycle::Category,
}

/// A generated scenario.
#[derive(Debug, Clone)]
pub struct Generated {
    /// Name.
    pub name: String,
    /// Messages, in event-time order.
    pub messages: Vec<SimMessage>,
    /// Ground truth.
    pub events: Vec<Event>,
    /// Patients × duration, hours.
    pub patient_hours: f64,
    /// Patients.
    pub patients: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    name: String,
    #[serde(default)]
    description: String,
    duration: String,
    #[serde(default = "one")]
    patients: u32,
    #[serde(default)]
    seed: u64,
    /// `bedside` (a message per monitor and second) or `ward` (a gateway message per
    /// second carrying every bed's readings of that second).
    #[serde(default)]
    format: Option<String>,
    #[serde(default)]
    baseline: BTreeMap<String, f64>,
    /// How often each vital is measured (default: heart rate, SpO2 and respiratory rate
    /// every second, the cuff every 5 minutes, temperature, oxygen and ACVPU every minute).
    #[serde(default)]
    cadence: BTreeMap<String, String>,
    /// Words a vital is charted in, by value (0, 1, ...): `onOxygen = ["RA", "NC"]`.
    #[serde(default)]
    words: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    change: Vec<SpecChange>,
    #[serde(default)]
    artifact: Vec<SpecArtifact>,
    #[serde(default)]
    event: Vec<SpecEvent>,
}

fn one() -> u32 {
    1
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SpecChange {
    vital: String,
    /// (offset, value) points, linearly interpolated; the last value holds after.
    points: Vec<(String, f64)>,
    /// The patients (by index) it applies to; all when absent.
    #[serde(default)]
    patients: Option<Vec<u32>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SpecArtifact {
    /// The vital, or `*`: the whole message (with `missing`: the monitor sends nothing).
    vital: String,
    from: String,
    to: String,
    /// The value sent instead (probe off as 0); absent with `missing` or `points`.
    value: Option<toml::Value>,
    /// Values sent instead, as (offset, value) points interpolated like a change's: a
    /// slipping probe's falsely low readings.
    points: Option<Vec<(String, f64)>>,
    /// The key is left out of the message instead (a probe off the gateway drops).
    #[serde(default)]
    missing: bool,
    /// Every this many seconds within the span (default: every reading).
    every: Option<u64>,
    /// The patients (by index) it happens to; all when absent.
    #[serde(default)]
    patients: Option<Vec<u32>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SpecEvent {
    kind: String,
    onset: String,
    end: String,
    rules: Vec<String>,
    #[serde(default)]
    severity: Option<String>,
    /// The patients (by index) it happens to; all when absent.
    #[serde(default)]
    patients: Option<Vec<u32>>,
    /// `physiological` (default) or `technical` (a lost signal, a silent monitor).
    #[serde(default)]
    category: Option<String>,
}

const VITALS: [(&str, f64, f64); 8] = [
    // name, default baseline, noise standard deviation
    ("heartRate", 76.0, 1.5),
    ("spo2", 97.0, 0.6),
    ("respiratoryRate", 15.0, 0.8),
    ("systolic", 124.0, 3.0),
    ("diastolic", 76.0, 2.0),
    ("temperature", 36.8, 0.05),
    ("onOxygen", 0.0, 0.0),
    // ACVPU: 0 alert, 1 new confusion, 2 voice, 3 pain, 4 unresponsive.
    ("acvpu", 0.0, 0.0),
];

/// Default measurement cadence, seconds: (vital or `nibp`, every).
const CADENCE: [(&str, i64); 7] = [
    ("heartRate", 1),
    ("spo2", 1),
    ("respiratoryRate", 1),
    ("nibp", 300),
    ("temperature", 60),
    ("onOxygen", 60),
    ("acvpu", 60),
];

fn offset(s: &str) -> anyhow::Result<i64> {
    Ok(humantime::parse_duration(s)
        .map_err(|e| anyhow::anyhow!("\"{s}\" is not a duration: {e}"))?
        .as_secs() as i64)
}

fn interpolate(points: &[(i64, f64)], t: i64) -> Option<f64> {
    let first = points.first()?;
    if t < first.0 {
        return None;
    }
    for w in points.windows(2) {
        let ((t0, v0), (t1, v1)) = (w[0], w[1]);
        if t >= t0 && t <= t1 {
            let f = if t1 == t0 {
                1.0
            } else {
                (t - t0) as f64 / (t1 - t0) as f64
            };
            return Some(v0 + f * (v1 - v0));
        }
    }
    points.last().map(|p| p.1)
}

/// What an artifact sends instead of the true value.
enum ArtifactValue {
    /// One value throughout.
    Fixed(toml::Value),
    /// (offset s, value) points, interpolated.
    Points(Vec<(i64, f64)>),
}

/// A vital's trajectory: the vital, the patients it applies to (None: all), its points.
type Trajectory = (String, Option<Vec<u32>>, Vec<(i64, f64)>);

/// Generates a scenario from its spec text, starting at `start` (event time).
pub fn generate(text: &str, file: &str, start: DateTime<Utc>) -> anyhow::Result<Generated> {
    let spec: Spec = crate::config::error::from_toml("scenario", text, file)?;
    let _ = &spec.description;
    let duration = offset(&spec.duration)?;
    let ward = match spec.format.as_deref() {
        None | Some("bedside") => false,
        Some("ward") => true,
        Some(other) => anyhow::bail!("{file}: format \"{other}\": bedside or ward"),
    };
    // Per vital: (patients it applies to, points); the last matching entry wins.
    let mut changes: Vec<Trajectory> = Vec::new();
    for c in &spec.change {
        let pts = c
            .points
            .iter()
            .map(|(t, v)| Ok((offset(t)?, *v)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        changes.push((c.vital.clone(), c.patients.clone(), pts));
    }
    let mut cadence: BTreeMap<String, i64> =
        CADENCE.iter().map(|(v, s)| (v.to_string(), *s)).collect();
    for (vital, every) in &spec.cadence {
        let known = CADENCE.iter().any(|(v, _)| v == vital) || vital == "systolic";
        anyhow::ensure!(known, "{file}: cadence of unknown vital \"{vital}\"");
        let key = if vital == "systolic" { "nibp" } else { vital };
        cadence.insert(key.to_string(), offset(every)?.max(1));
    }
    let every = |vital: &str| cadence.get(vital).copied().unwrap_or(1);
    let mut artifacts = Vec::new();
    for a in &spec.artifact {
        let given = usize::from(a.missing)
            + usize::from(a.value.is_some())
            + usize::from(a.points.is_some());
        anyhow::ensure!(
            given == 1,
            "{file}: artifact of {} needs one of value, points or missing = true",
            a.vital
        );
        anyhow::ensure!(
            a.vital != "*" || a.missing,
            "{file}: an artifact of every vital (\"*\") is a silent monitor: missing = true"
        );
        let value = match (&a.value, &a.points) {
            (Some(v), _) => Some(ArtifactValue::Fixed(v.clone())),
            (_, Some(pts)) => Some(ArtifactValue::Points(
                pts.iter()
                    .map(|(t, v)| Ok((offset(t)?, *v)))
                    .collect::<anyhow::Result<Vec<_>>>()?,
            )),
            _ => None,
        };
        artifacts.push((
            a.vital.clone(),
            offset(&a.from)?,
            offset(&a.to)?,
            value,
            a.every.unwrap_or(1).max(1) as i64,
            a.patients.clone(),
        ));
    }
    let mut rng = rand::rngs::Xoshiro256PlusPlus::seed_from_u64(spec.seed);
    let mut messages = Vec::new();
    let mut events = Vec::new();
    let slug: String = spec
        .name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '-'
            }
        })
        .collect();
    let word = |vital: &str, v: f64| -> serde_json::Value {
        match spec.words.get(vital) {
            Some(w) if !w.is_empty() => {
                let i = (v.round().max(0.0) as usize).min(w.len() - 1);
                w[i].clone().into()
            }
            _ => match vital {
                "onOxygen" => (if v >= 0.5 { "True" } else { "False" }).into(),
                _ => ["A", "C", "V", "P", "U"][(v.round().max(0.0) as usize).min(4)].into(),
            },
        }
    };
    for p in 0..spec.patients {
        let patient = format!("P-{slug}-{p:02}");
        let device = format!("BM-{slug}-{p:02}");
        // Patients of one scenario start a little apart, so their episodes do too; on a
        // ward gateway they share its clock.
        let shift = if ward { 0 } else { rng.random_range(0..120i64) };
        let t0 = start + chrono::Duration::seconds(shift);
        for e in &spec.event {
            if e.patients.as_ref().is_some_and(|ps| !ps.contains(&p)) {
                continue;
            }
            let severity = match e.severity.as_deref() {
                Some("critical") => crate::anomaly::rules::Severity::Critical,
                _ => crate::anomaly::rules::Severity::Warning,
            };
            let category = match e.category.as_deref() {
                None | Some("physiological") => crate::anomaly::lifecycle::Category::Physiological,
                Some("technical") => crate::anomaly::lifecycle::Category::Technical,
                Some(other) => {
                    anyhow::bail!("{file}: event category \"{other}\": physiological or technical")
                }
            };
            events.push(Event {
                patient: patient.clone(),
                kind: e.kind.clone(),
                onset: t0 + chrono::Duration::seconds(offset(&e.onset)?),
                end: t0 + chrono::Duration::seconds(offset(&e.end)?),
                rules: e.rules.clone(),
                severity,
                category,
            });
        }
        let noise: Vec<Normal<f64>> = VITALS
            .iter()
            .map(|(_, _, sd)| Normal::new(0.0, sd.max(1e-9)).expect("normal"))
            .collect();
        for s in 0..duration {
            let mut v = serde_json::Map::new();
            let base = |i: usize| {
                let (name, default, _) = VITALS[i];
                changes
                    .iter()
                    .rev()
                    .find(|(vital, ps, _)| {
                        vital == name && ps.as_ref().is_none_or(|ps| ps.contains(&p))
                    })
                    .and_then(|(_, _, pts)| interpolate(pts, s))
                    .unwrap_or_else(|| spec.baseline.get(name).copied().unwrap_or(default))
            };
            let mut value = |i: usize| base(i) + noise[i].sample(&mut rng);
            v.insert("deviceId".into(), device.clone().into());
            v.insert("patientId".into(), patient.clone().into());
            v.insert("encounterId".into(), format!("E-{slug}-{p:02}").into());
            let t = t0 + chrono::Duration::seconds(s);
            v.insert("timestamp".into(), crate::time::format_rfc3339(&t).into());
            // Heart rate, SpO2 and respiration draw their noise every second, measured or
            // not (a slower cadence changes what is sent, not the patient); the others when
            // measured, in this order, so that specs keep their messages.
            let hr = value(0).round();
            let spo2 = value(1).round().min(100.0);
            let rr = value(2).round();
            if s % every("heartRate") == 0 {
                v.insert("heartRate".into(), (hr as i64).into());
            }
            if s % every("spo2") == 0 {
                v.insert("spo2".into(), (spo2 as i64).into());
            }
            if s % every("respiratoryRate") == 0 {
                v.insert("respiratoryRate".into(), (rr as i64).into());
            }
            if s % every("nibp") == 0 {
                let (sys, dia) = (value(3).round(), value(4).round());
                v.insert(
                    "nibp".into(),
                    serde_json::json!({"systolic": sys as i64, "diastolic": dia as i64, "mean": ((sys + 2.0 * dia) / 3.0).round() as i64}),
                );
            }
            if s % every("temperature") == 0 {
                v.insert(
                    "temperature".into(),
                    ((value(5) * 10.0).round() / 10.0).into(),
                );
            }
            if s % every("onOxygen") == 0 {
                let o2 = value(6);
                v.insert("onOxygen".into(), word("onOxygen", o2));
            }
            if s % every("acvpu") == 0 {
                // Charted, not measured: no noise.
                v.insert("acvpu".into(), word("acvpu", base(7)));
            }
            let mut silent = false;
            for (vital, from, to, val, every, only) in &artifacts {
                if s < *from
                    || s >= *to
                    || (s - from) % every != 0
                    || only.as_ref().is_some_and(|ps| !ps.contains(&p))
                {
                    continue;
                }
                if vital == "*" {
                    silent = true;
                    continue;
                }
                let j = match val {
                    None => None,
                    Some(ArtifactValue::Fixed(toml::Value::Integer(i))) => {
                        Some(serde_json::Value::from(*i))
                    }
                    Some(ArtifactValue::Fixed(toml::Value::Float(f))) => {
                        Some(serde_json::Value::from(*f))
                    }
                    Some(ArtifactValue::Fixed(toml::Value::String(x))) => {
                        Some(serde_json::Value::from(x.clone()))
                    }
                    Some(ArtifactValue::Fixed(toml::Value::Boolean(b))) => {
                        Some(serde_json::Value::from(*b))
                    }
                    Some(ArtifactValue::Points(pts)) => {
                        interpolate(pts, s).map(|v| serde_json::Value::from(v.round() as i64))
                    }
                    _ => continue,
                };
                match (vital.as_str(), j) {
                    ("systolic" | "diastolic", Some(j)) => {
                        if let Some(n) = v.get_mut("nibp") {
                            n[vital.as_str()] = j;
                        } else {
                            v.insert("nibp".into(), serde_json::json!({ vital.clone(): j }));
                        }
                    }
                    ("systolic" | "diastolic", None) => {
                        v.remove("nibp");
                    }
                    (_, Some(j)) => {
                        v.insert(vital.clone(), j);
                    }
                    (_, None) => {
                        v.remove(vital.as_str());
                    }
                }
            }
            if silent {
                continue;
            }
            messages.push(SimMessage {
                key: device.clone(),
                payload: serde_json::to_vec(&serde_json::Value::Object(v)).expect("JSON"),
                event_time: t,
            });
        }
    }
    messages.sort_by_key(|m| m.event_time);
    if ward {
        messages = ward_messages(&slug, messages);
    }
    Ok(Generated {
        name: spec.name,
        messages,
        events,
        patient_hours: f64::from(spec.patients) * duration as f64 / 3600.0,
        patients: spec.patients,
    })
}

/// One ward-gateway message per second: every bed's readings of that second, as `beds`.
fn ward_messages(slug: &str, beds: Vec<SimMessage>) -> Vec<SimMessage> {
    let mut out: Vec<SimMessage> = Vec::new();
    let mut batch: Vec<serde_json::Value> = Vec::new();
    let mut at: Option<DateTime<Utc>> = None;
    let gateway = format!("GW-{slug}");
    let mut flush = |at: DateTime<Utc>, batch: &mut Vec<serde_json::Value>| {
        let body = serde_json::json!({
            "gateway": gateway,
            "sent": crate::time::format_rfc3339(&at),
            "beds": std::mem::take(batch),
        });
        out.push(SimMessage {
            key: gateway.clone(),
            payload: serde_json::to_vec(&body).expect("JSON"),
            event_time: at,
        });
    };
    for m in beds {
        if at.is_some_and(|t| t != m.event_time) {
            flush(at.expect("set"), &mut batch);
        }
        at = Some(m.event_time);
        batch.push(serde_json::from_slice(&m.payload).expect("JSON"));
    }
    if let Some(t) = at {
        flush(t, &mut batch);
    }
    out
}

/// How long a spec runs (to place its start in the past).
pub fn duration_of(text: &str) -> Duration {
    toml::from_str::<Spec>(text)
        .ok()
        .and_then(|s| offset(&s.duration).ok())
        .map_or(Duration::from_secs(3600), |s| {
            Duration::from_secs(s.max(0) as u64)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trajectories_interpolate_and_hold() {
        let p = [(0, 97.0), (60, 85.0), (120, 85.0)];
        assert_eq!(interpolate(&p, 30), Some(91.0));
        assert_eq!(interpolate(&p, 500), Some(85.0));
        assert_eq!(interpolate(&[(10, 1.0)], 5), None);
    }

    #[test]
    fn cadences_words_missing_keys_and_ward_messages() {
        let text = r#"
name = "w"
duration = "30m"
patients = 3
seed = 2
format = "ward"
[cadence]
systolic = "15m"
temperature = "30m"
[words]
onOxygen = ["RA", "NC"]
[[change]]
vital = "onOxygen"
patients = [1]
points = [["10m", 1]]
[[artifact]]
vital = "spo2"
from = "5m"
to = "6m"
missing = true
[[event]]
kind = "x"
patients = [1]
onset = "10m"
end = "20m"
rules = ["news2"]
"#;
        let start = crate::time::parse_timestamp("2026-11-21T10:00:00Z").expect("t");
        let g = generate(text, "w.toml", start).expect("scenario");
        assert_eq!(g.messages.len(), 1800, "one gateway message a second");
        assert_eq!(g.events.len(), 1, "only patient 1's event");
        let bodies: Vec<serde_json::Value> = g
            .messages
            .iter()
            .map(|m| serde_json::from_slice(&m.payload).expect("json"))
            .collect();
        assert!(bodies
            .iter()
            .all(|b| b["beds"].as_array().is_some_and(|a| a.len() == 3)));
        let beds = || {
            bodies
                .iter()
                .flat_map(|b| b["beds"].as_array().expect("beds").iter())
        };
        assert_eq!(beds().filter(|b| b.get("nibp").is_some()).count(), 3 * 2);
        assert_eq!(beds().filter(|b| b.get("temperature").is_some()).count(), 3);
        assert_eq!(beds().filter(|b| b.get("spo2").is_none()).count(), 3 * 60);
        let nc = beds()
            .filter(|b| b["onOxygen"] == "NC")
            .map(|b| b["patientId"].as_str().expect("id").to_string())
            .collect::<std::collections::BTreeSet<_>>();
        assert_eq!(nc.into_iter().collect::<Vec<_>>(), vec!["P-W-01"]);
        assert!(beds().any(|b| b["onOxygen"] == "RA"));
    }

    #[test]
    fn a_spec_becomes_messages_and_events() {
        let text = r#"
name = "hypoxia"
duration = "10m"
patients = 2
seed = 1
[[change]]
vital = "spo2"
points = [["2m", 97], ["3m", 82], ["8m", 82], ["9m", 97]]
[[event]]
kind = "hypoxia"
onset = "2m40s"
end = "8m30s"
rules = ["hypoxia"]
"#;
        let start = DateTime::parse_from_rfc3339("2026-11-21T10:00:00Z")
            .expect("t")
            .to_utc();
        let g = generate(text, "s.toml", start).expect("scenario");
        assert_eq!(g.messages.len(), 1200);
        assert_eq!(g.events.len(), 2);
        let low = g
            .messages
            .iter()
            .filter(|m| {
                let v: serde_json::Value = serde_json::from_slice(&m.payload).expect("json");
                v["spo2"].as_i64().expect("spo2") < 88
            })
            .count();
        assert!(
            (500..=700).contains(&low),
            "about 5 minutes low per patient: {low}"
        );
        assert!((g.patient_hours - 1.0 / 3.0).abs() < 1e-9);
    }
}
