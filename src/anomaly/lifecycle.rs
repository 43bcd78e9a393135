//! The alert lifecycle: a condition that holds long enough opens an alert, a worse one
//! escalates it, values back to normal for the hold-down time resolve it. Hysteresis (the
//! margin level) keeps values hovering at a threshold from flapping; a resolved alert does
//! not reopen at the same severity within the suppression time.
//!
//! Time is the patient's event time: replays and live data alert alike.

use super::rules::{Level, Severity};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;

/// The state of one (patient, rule) as the differential evaluation reports it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Condition {
    /// 0 normal, 1 margin, 2 warning, 3 critical.
    pub level: u8,
    /// The rule's title.
    pub title: String,
    /// The vital judged.
    pub vital: String,
    /// The value judged, thousandths.
    pub value: i64,
    /// Its event time, ms.
    pub at_ms: i64,
    /// Kafka time of its message, ms.
    pub stamp_ms: i64,
    /// The device that measured it.
    pub device: String,
    /// Sustain, resolve and suppression times, ms.
    pub timing: (i64, i64, i64),
    /// A one-line account for people ("HR 152 /min, at or above 150").
    pub detail: String,
}

/// Lifecycle states an alert goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Newly raised.
    Open,
    /// Raised to a higher severity.
    Escalated,
    /// Values back to normal for the hold-down time.
    Resolved,
}

/// One alert event, as delivered to the alerts topic, FHIR and the terminal.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Alert {
    /// Stable id: the same episode has the same id in every event and every replay.
    pub id: String,
    /// Patient identifier.
    pub patient: String,
    /// Device identifier.
    pub device: String,
    /// Rule id (`news2` for NEWS2).
    pub rule: String,
    /// The rule's title.
    pub title: String,
    /// Severity.
    pub severity: Severity,
    /// This event.
    pub state: State,
    /// Event time the condition started, RFC 3339.
    pub since: String,
    /// Event time of this event, RFC 3339.
    pub at: String,
    /// The values that made it: vital, value, event time.
    pub values: Vec<(String, f64, String)>,
    /// Human-readable text.
    pub text: String,
    /// Kafka time of the message that triggered this event, ms (latency measurement).
    #[serde(skip)]
    pub stamp_ms: i64,
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

/// The alert id of an episode.
pub fn alert_id(patient: &str, rule: &str, since_ms: i64) -> String {
    let mut h = Sha256::new();
    h.update(format!("{patient}|{rule}|{since_ms}").as_bytes());
    h.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[derive(Debug, Default)]
struct Track {
    current: Option<Condition>,
    /// Sustain, resolve and suppression times of the last condition seen (a retracted
    /// condition's alert still resolves on its own hold-down).
    timing: (i64, i64, i64),
    /// Since when the level has been at least warning / critical (event ms).
    abnormal_since: Option<i64>,
    critical_since: Option<i64>,
    normal_since: Option<i64>,
    open: Option<(String, Severity, i64)>,
    resolved: Option<(i64, Severity)>,
}

/// Alert state of the patients of one worker.
#[derive(Default)]
pub struct Lifecycle {
    /// Per patient, per rule: ticks visit one patient's tracks only.
    tracks: HashMap<String, HashMap<String, Track>>,
    clocks: HashMap<String, i64>,
}

impl Lifecycle {
    /// Open alerts.
    pub fn open_alerts(&self) -> usize {
        self.tracks
            .values()
            .flat_map(|r| r.values())
            .filter(|t| t.open.is_some())
            .count()
    }

    /// A condition entered (+1) or left (-1) the evaluation. Retractions of a key must be
    /// applied before the insertions of the same time.
    pub fn condition(
        &mut self,
        patient: &str,
        rule: &str,
        c: Condition,
        diff: isize,
        out: &mut Vec<Alert>,
    ) {
        let clock = self.clocks.entry(patient.to_string()).or_insert(i64::MIN);
        *clock = (*clock).max(c.at_ms);
        let now = *clock;
        let t = self
            .tracks
            .entry(patient.to_string())
            .or_default()
            .entry(rule.to_string())
            .or_default();
        if diff < 0 {
            if t.current.as_ref() == Some(&c) {
                // Nothing replaces it: the condition no longer holds (stale value, rule
                // removed); an open alert resolves after the hold-down, on ticks.
                t.current = None;
                t.abnormal_since = None;
                t.critical_since = None;
                if t.open.is_some() {
                    t.normal_since.get_or_insert(now);
                }
            }
            return;
        }
        let level = c.level;
        t.timing = c.timing;
        t.current = Some(c);
        // Level history, in event time.
        if level >= Level::Warning as u8 {
            t.abnormal_since
                .get_or_insert(t.current.as_ref().map_or(now, |c| c.at_ms));
            t.normal_since = None;
        } else {
            t.abnormal_since = None;
            if level == Level::Normal as u8 {
                t.normal_since
                    .get_or_insert(t.current.as_ref().map_or(now, |c| c.at_ms));
            } else {
                t.normal_since = None;
            }
        }
        if level >= Level::Critical as u8 {
            t.critical_since
                .get_or_insert(t.current.as_ref().map_or(now, |c| c.at_ms));
        } else {
            t.critical_since = None;
        }
        Self::step(patient, rule, t, now, out);
    }

    /// The patient's event clock advanced: timers may fire.
    pub fn tick(&mut self, patient: &str, at_ms: i64, stamp_ms: i64, out: &mut Vec<Alert>) {
        let clock = self.clocks.entry(patient.to_string()).or_insert(i64::MIN);
        *clock = (*clock).max(at_ms);
        let now = *clock;
        let Some(rules) = self.tracks.get_mut(patient) else {
            return;
        };
        for (rule, t) in rules.iter_mut() {
            let before = out.len();
            Self::step(patient, rule, t, now, out);
            for a in &mut out[before..] {
                a.stamp_ms = a.stamp_ms.max(stamp_ms);
            }
        }
    }

    fn step(patient: &str, rule: &str, t: &mut Track, now: i64, out: &mut Vec<Alert>) {
        let (sustain, resolve, suppress) = t.timing;
        let emit = |t: &Track, id: &str, severity: Severity, since: i64, state: State| {
            let c = t.current.as_ref();
            let (vital, value, at, detail) =
                c.map_or((String::new(), 0.0, now, String::new()), |c| {
                    (
                        c.vital.clone(),
                        c.value as f64 / 1000.0,
                        c.at_ms,
                        c.detail.clone(),
                    )
                });
            let title = c.map_or_else(|| rule.to_string(), |c| c.title.clone());
            let verb = match state {
                State::Open => "opened",
                State::Escalated => "escalated",
                State::Resolved => "resolved",
            };
            Alert {
                id: id.to_string(),
                patient: patient.to_string(),
                device: c.map_or_else(String::new, |c| c.device.clone()),
                rule: rule.to_string(),
                title: title.clone(),
                severity,
                state,
                since: rfc3339(since),
                at: rfc3339(now),
                values: vec![(vital, value, rfc3339(at))],
                text: format!(
                    "{} {verb}: patient {patient}: {title}{}{}",
                    match severity {
                        Severity::Critical => "CRITICAL",
                        Severity::Warning => "WARNING",
                    },
                    if detail.is_empty() {
                        String::new()
                    } else {
                        format!(": {detail}")
                    },
                    if state == State::Resolved {
                        String::new()
                    } else {
                        format!(" (since {})", rfc3339(since))
                    },
                ),
                stamp_ms: c.map_or(0, |c| c.stamp_ms),
            }
        };
        match t.open.clone() {
            None => {
                let Some(since) = t.abnormal_since else {
                    return;
                };
                if now - since < sustain {
                    return;
                }
                let severity = if t.critical_since.is_some_and(|c| now - c >= sustain) {
                    Severity::Critical
                } else {
                    Severity::Warning
                };
                if let Some((at, s)) = t.resolved {
                    if now - at < suppress && severity <= s {
                        return;
                    }
                }
                let id = alert_id(patient, rule, since);
                out.push(emit(t, &id, severity, since, State::Open));
                t.open = Some((id, severity, since));
            }
            Some((id, severity, since)) => {
                if severity == Severity::Warning
                    && t.critical_since.is_some_and(|c| now - c >= sustain)
                {
                    out.push(emit(t, &id, Severity::Critical, since, State::Escalated));
                    t.open = Some((id, Severity::Critical, since));
                } else if t.normal_since.is_some_and(|n| now - n >= resolve) {
                    out.push(emit(t, &id, severity, since, State::Resolved));
                    t.open = None;
                    t.resolved = Some((now, severity));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cond(level: u8, at_s: i64) -> Condition {
        Condition {
            level,
            title: "Heart rate high".into(),
            vital: "8867-4".into(),
            value: 140_000,
            at_ms: at_s * 1000,
            stamp_ms: 0,
            device: "BM-1".into(),
            timing: (30_000, 120_000, 600_000),
            detail: String::new(),
        }
    }

    fn run(steps: &[(i64, Option<u8>)]) -> Vec<(i64, State, Severity)> {
        let mut l = Lifecycle::default();
        let mut out = Vec::new();
        let mut current: Option<Condition> = None;
        for (at, level) in steps {
            match level {
                Some(lv) => {
                    if let Some(c) = current.take() {
                        l.condition("P", "hr", c, -1, &mut out);
                    }
                    let c = cond(*lv, *at);
                    l.condition("P", "hr", c.clone(), 1, &mut out);
                    current = Some(c);
                }
                None => l.tick("P", at * 1000, 0, &mut out),
            }
        }
        out.iter()
            .map(|a| {
                let at = chrono::DateTime::parse_from_rfc3339(&a.at)
                    .expect("at")
                    .timestamp();
                (at, a.state, a.severity)
            })
            .collect()
    }

    #[test]
    fn sustained_conditions_open_escalate_and_resolve_after_the_hold_down() {
        let events = run(&[
            (0, Some(2)),
            (20, None),
            (31, None),
            (40, Some(3)),
            (75, None),
            (80, Some(1)),
            (90, Some(0)),
            (150, None),
            (211, None),
        ]);
        assert_eq!(
            events,
            vec![
                (31, State::Open, Severity::Warning),
                (75, State::Escalated, Severity::Critical),
                (211, State::Resolved, Severity::Critical),
            ]
        );
    }

    #[test]
    fn brief_spikes_and_hovering_values_do_not_alert_or_flap() {
        // A 10 s spike: never sustained.
        assert!(run(&[(0, Some(2)), (10, Some(0)), (60, None)]).is_empty());
        // Open, then hovering in the margin: never resolves while it hovers.
        let e = run(&[
            (0, Some(2)),
            (35, None),
            (40, Some(1)),
            (300, None),
            (301, Some(2)),
            (400, None),
        ]);
        assert_eq!(e, vec![(35, State::Open, Severity::Warning)]);
    }

    #[test]
    fn a_resolved_alert_is_not_reopened_at_the_same_severity_within_the_suppression() {
        let e = run(&[
            (0, Some(2)),
            (31, None),
            (40, Some(0)),
            (161, None),
            (200, Some(2)),
            (240, None),
            (700, None),
            (800, None),
        ]);
        let states: Vec<State> = e.iter().map(|x| x.1).collect();
        assert_eq!(
            states,
            vec![State::Open, State::Resolved, State::Open],
            "{e:?}"
        );
        assert_eq!(
            e[2].0, 800,
            "still abnormal once the suppression (600 s) is over"
        );
    }

    #[test]
    fn alert_ids_are_stable_per_episode() {
        assert_eq!(alert_id("P", "hr", 1), alert_id("P", "hr", 1));
        assert_ne!(alert_id("P", "hr", 1), alert_id("P", "hr", 2));
    }
}
