//! The alert lifecycle: a condition that holds long enough opens an alert, a worse one
//! escalates it, values back to normal for the hold-down time resolve it. Hysteresis (the
//! margin level) keeps values hovering at a threshold from flapping; a resolved alert does
//! not reopen at the same severity within the suppression time.
//!
//! Time is event time, given by the caller: a condition takes effect at the event time it is
//! applied at, and the timers (`sustained`, `resolve_after`, `suppress`) fire at their exact
//! deadlines when the job's event clock passes them ([`Lifecycle::advance`]), whether or not
//! anything else about the patient changes. Fed the same conditions at the same times, it
//! raises the same alerts, whatever the replay speed or the batching.

use super::rules::{Level, Severity};
use rustc_hash::FxHashMap as HashMap;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;

/// The state of one (patient, rule) as the rule evaluation reports it.
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
    /// Physiological (about the patient) or technical (about the signal).
    #[serde(default)]
    pub category: Category,
    /// When the condition began, where that is before the event time it is reported at
    /// (a signal lost since its last valid reading); None: when reported.
    #[serde(default)]
    pub since_ms: Option<i64>,
}

/// IEC 60601-1-8's two kinds of alarm condition: about the patient, or about the
/// equipment and its signal. A technical alert never counts toward a physiological one.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    /// The patient's condition (a threshold, a change, NEWS2).
    #[default]
    Physiological,
    /// The signal's: lost, a silent monitor, a probe off.
    Technical,
}

impl Category {
    /// As written in every output.
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Physiological => "physiological",
            Category::Technical => "technical",
        }
    }
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
    /// A clinician has seen it (an input of the job, never a change of what is detected).
    Acknowledged,
    /// A clinician silenced its annunciation for a while (idem).
    Silenced,
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
    /// Physiological or technical.
    pub category: Category,
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
    /// Who acknowledged or silenced it (those events only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// Their note (those events only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Silenced until, RFC 3339 (silence events only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    /// Kafka time of the message that triggered this event, ms (latency measurement).
    #[serde(skip)]
    pub stamp_ms: i64,
}

/// An event time as alert events carry it (RFC 3339, whole seconds, UTC).
pub fn rfc3339(ms: i64) -> String {
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

#[derive(Debug, Default, Serialize, Deserialize)]
struct Track {
    current: Option<Condition>,
    /// Sustain, resolve and suppression times of the last condition seen (a cleared
    /// condition's alert still resolves on its own hold-down).
    timing: (i64, i64, i64),
    /// Since when the level has been at least warning / critical (event ms).
    abnormal_since: Option<i64>,
    critical_since: Option<i64>,
    normal_since: Option<i64>,
    open: Option<(String, Severity, i64)>,
    resolved: Option<(i64, Severity)>,
    /// The last event time the track was evaluated at.
    checked: i64,
    /// The category of its conditions.
    #[serde(default)]
    category: Category,
}

impl Track {
    /// The next event time after the last evaluation at which a timer may change the
    /// track's state: an open, an escalation, a resolution, the end of a suppression.
    fn next_deadline(&self) -> Option<i64> {
        let (sustain, resolve, suppress) = self.timing;
        let candidates = match &self.open {
            None => [
                self.abnormal_since.map(|s| s.saturating_add(sustain)),
                self.critical_since.map(|c| c.saturating_add(sustain)),
                self.resolved.map(|(at, _)| at.saturating_add(suppress)),
            ],
            Some((_, severity, _)) => [
                (*severity == Severity::Warning)
                    .then_some(self.critical_since)
                    .flatten()
                    .map(|c| c.saturating_add(sustain)),
                self.normal_since.map(|n| n.saturating_add(resolve)),
                None,
            ],
        };
        candidates
            .into_iter()
            .flatten()
            .filter(|d| *d > self.checked)
            .min()
    }
}

/// Alert state of the patients of one worker, with its timers. It serializes only the
/// tracks that carry an episode (open, pending, or recently resolved): a normal track is
/// rebuilt by the next reading exactly as it was; timers come back from the tracks.
#[derive(Default, Serialize, Deserialize)]
pub struct Lifecycle {
    /// Per patient, per rule.
    #[serde(serialize_with = "live_tracks")]
    tracks: HashMap<String, HashMap<String, Track>>,
    /// (deadline, patient, rule): an entry whose track has another deadline is stale.
    #[serde(skip)]
    timers: BTreeSet<(i64, String, String)>,
}

impl Track {
    /// Whether the track holds more than its next reading would rebuild.
    fn live(&self) -> bool {
        self.open.is_some()
            || self.resolved.is_some()
            || self.abnormal_since.is_some()
            || self.critical_since.is_some()
    }
}

fn live_tracks<S: serde::Serializer>(
    tracks: &HashMap<String, HashMap<String, Track>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap as _;
    let live: Vec<(&String, Vec<(&String, &Track)>)> = tracks
        .iter()
        .map(|(p, rules)| {
            (
                p,
                rules.iter().filter(|(_, t)| t.live()).collect::<Vec<_>>(),
            )
        })
        .filter(|(_, rules)| !rules.is_empty())
        .collect();
    let mut m = s.serialize_map(Some(live.len()))?;
    for (p, rules) in live {
        let rules: HashMap<&String, &Track> = rules.into_iter().collect();
        m.serialize_entry(p, &rules)?;
    }
    m.end()
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

    /// Whether the patient has an alert open.
    pub fn has_open(&self, patient: &str) -> bool {
        self.tracks
            .get(patient)
            .is_some_and(|r| r.values().any(|t| t.open.is_some()))
    }

    /// Forgets a patient's tracks (their timers lapse: a timer without its track is skipped).
    pub fn forget(&mut self, patient: &str) {
        self.tracks.remove(patient);
    }

    /// The patients with a track.
    pub fn patients(&self) -> Vec<String> {
        self.tracks.keys().cloned().collect()
    }

    /// Takes the tracks of the patients `keep` says from `other`, with their timers.
    pub fn absorb(&mut self, other: Lifecycle, keep: &dyn Fn(&str) -> bool) {
        for (p, rules) in other.tracks {
            if keep(&p) {
                let rule_ids: Vec<String> = rules.keys().cloned().collect();
                self.tracks.insert(p.clone(), rules);
                for r in rule_ids {
                    self.arm(&p, &r);
                }
            }
        }
    }

    /// The earliest pending timer.
    pub fn next_timer(&self) -> Option<i64> {
        self.timers.first().map(|(d, _, _)| *d)
    }

    fn track(&mut self, patient: &str, rule: &str) -> &mut Track {
        self.tracks
            .entry(patient.to_string())
            .or_default()
            .entry(rule.to_string())
            .or_default()
    }

    fn arm(&mut self, patient: &str, rule: &str) {
        let Some(t) = self.tracks.get(patient).and_then(|r| r.get(rule)) else {
            return;
        };
        if let Some(d) = t.next_deadline() {
            self.timers
                .insert((d, patient.to_string(), rule.to_string()));
        }
    }

    /// The condition of (patient, rule) is `c` from event time `now` on.
    pub fn set(&mut self, patient: &str, rule: &str, c: Condition, now: i64, out: &mut Vec<Alert>) {
        let t = self.track(patient, rule);
        let level = c.level;
        let since = c.since_ms.map_or(now, |s| s.min(now));
        t.timing = c.timing;
        t.category = c.category;
        t.current = Some(c);
        // Level history, in event time.
        if level >= Level::Warning as u8 {
            t.abnormal_since.get_or_insert(since);
            t.normal_since = None;
        } else {
            t.abnormal_since = None;
            if level == Level::Normal as u8 {
                t.normal_since.get_or_insert(now);
            } else {
                t.normal_since = None;
            }
        }
        if level >= Level::Critical as u8 {
            t.critical_since.get_or_insert(since);
        } else {
            t.critical_since = None;
        }
        Self::step(patient, rule, t, now, out);
        self.arm(patient, rule);
    }

    /// (patient, rule) has no condition any more from `now` on (its signal went stale, its
    /// rule was removed): an open alert resolves after the hold-down.
    pub fn clear(&mut self, patient: &str, rule: &str, now: i64, out: &mut Vec<Alert>) {
        let Some(t) = self.tracks.get_mut(patient).and_then(|r| r.get_mut(rule)) else {
            return;
        };
        if t.current.take().is_none() {
            return;
        }
        t.abnormal_since = None;
        t.critical_since = None;
        if t.open.is_some() {
            t.normal_since.get_or_insert(now);
        }
        Self::step(patient, rule, t, now, out);
        self.arm(patient, rule);
    }

    /// The evidence for (patient, rule) stopped at `now` (a gap, a rejected or suspect
    /// reading): a pending condition is dropped, so its `sustained` restarts when valid
    /// readings resume, and an open alert neither escalates nor resolves on absent data.
    pub fn suspend(&mut self, patient: &str, rule: &str, now: i64, out: &mut Vec<Alert>) {
        let Some(t) = self.tracks.get_mut(patient).and_then(|r| r.get_mut(rule)) else {
            return;
        };
        t.current = None;
        t.abnormal_since = None;
        t.critical_since = None;
        t.normal_since = None;
        Self::step(patient, rule, t, now, out);
        self.arm(patient, rule);
    }

    /// Resolves the patient's open technical alerts at `now` (monitoring ended: the patient
    /// has been silent beyond the horizon); true when a physiological alert stays open.
    pub fn end_monitoring(&mut self, patient: &str, now: i64, out: &mut Vec<Alert>) -> bool {
        let Some(rules) = self.tracks.get_mut(patient) else {
            return false;
        };
        let mut ids: Vec<&String> = rules.keys().collect();
        ids.sort();
        let ids: Vec<String> = ids.into_iter().cloned().collect();
        for rule in ids {
            let t = rules.get_mut(&rule).expect("track");
            if t.category == Category::Technical && t.open.is_some() {
                t.abnormal_since = None;
                t.critical_since = None;
                t.normal_since = Some(now.saturating_sub(t.timing.1));
                Self::step(patient, &rule, t, now, out);
            }
        }
        rules.values().any(|t| t.open.is_some())
    }

    /// Clears every (patient, rule) whose rule `gone(rule)` says no longer exists.
    pub fn clear_where(&mut self, gone: impl Fn(&str) -> bool, now: i64, out: &mut Vec<Alert>) {
        let mut keys: Vec<(String, String)> = self
            .tracks
            .iter()
            .flat_map(|(p, rules)| {
                rules
                    .keys()
                    .filter(|r| gone(r))
                    .map(move |r| (p.clone(), r.clone()))
            })
            .collect();
        keys.sort();
        for (p, r) in keys {
            self.clear(&p, &r, now, out);
        }
    }

    /// Fires every timer due at or before `to`, each at its own deadline, in time order.
    pub fn advance(&mut self, to: i64, out: &mut Vec<Alert>) {
        while let Some((d, patient, rule)) = self.timers.first().cloned() {
            if d > to {
                break;
            }
            self.timers.pop_first();
            let Some(t) = self.tracks.get_mut(&patient).and_then(|r| r.get_mut(&rule)) else {
                continue;
            };
            if t.next_deadline() != Some(d) {
                continue;
            }
            Self::step(&patient, &rule, t, d, out);
            self.arm(&patient, &rule);
        }
    }

    /// The alert event of a track's episode at event time `now`.
    #[allow(clippy::too_many_arguments)]
    fn event(
        patient: &str,
        rule: &str,
        now: i64,
        t: &Track,
        id: &str,
        severity: Severity,
        since: i64,
        state: State,
    ) -> Alert {
        let c = t.current.as_ref();
        let (vital, value, at, detail) = c.map_or((String::new(), 0.0, now, String::new()), |c| {
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
            State::Acknowledged => "acknowledged",
            State::Silenced => "silenced",
        };
        Alert {
            id: id.to_string(),
            patient: patient.to_string(),
            device: c.map_or_else(String::new, |c| c.device.clone()),
            rule: rule.to_string(),
            title: title.clone(),
            severity,
            category: t.category,
            state,
            since: rfc3339(since),
            at: rfc3339(now),
            values: vec![(vital, value, rfc3339(at))],
            text: format!(
                "{} {verb}: patient {patient}: {title}{}{}",
                match (t.category, severity) {
                    (Category::Technical, _) => "TECHNICAL",
                    (_, Severity::Critical) => "CRITICAL",
                    (_, Severity::Warning) => "WARNING",
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
            by: None,
            note: None,
            until: None,
            stamp_ms: c.map_or(0, |c| c.stamp_ms),
        }
    }

    /// The alerts open now, each as its latest event would show it (open or escalated, at
    /// the track's last evaluation): what a board restarted from a checkpoint shows.
    pub fn standing(&self) -> Vec<Alert> {
        let mut out = Vec::new();
        for (patient, rules) in &self.tracks {
            for (rule, t) in rules {
                if let Some((id, severity, since)) = &t.open {
                    let state = if *severity == Severity::Critical {
                        State::Escalated
                    } else {
                        State::Open
                    };
                    out.push(Self::event(
                        patient, rule, t.checked, t, id, *severity, *since, state,
                    ));
                }
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    fn step(patient: &str, rule: &str, t: &mut Track, now: i64, out: &mut Vec<Alert>) {
        t.checked = t.checked.max(now);
        let (sustain, resolve, suppress) = t.timing;
        let emit = |t: &Track, id: &str, severity: Severity, since: i64, state: State| {
            Self::event(patient, rule, now, t, id, severity, since, state)
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
            category: Category::Physiological,
            since_ms: None,
        }
    }

    /// Conditions set at their times, with the event clock advanced to each step's time
    /// first; `None` only advances the clock.
    fn run(steps: &[(i64, Option<u8>)]) -> Vec<(i64, State, Severity)> {
        let mut l = Lifecycle::default();
        let mut out = Vec::new();
        for (at, level) in steps {
            l.advance(at * 1000, &mut out);
            if let Some(lv) = level {
                l.set("P", "hr", cond(*lv, *at), at * 1000, &mut out);
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
        // Nothing happens between the steps: the timers fire at their deadlines.
        let events = run(&[
            (0, Some(2)),
            (40, Some(3)),
            (80, Some(1)),
            (90, Some(0)),
            (1000, None),
        ]);
        assert_eq!(
            events,
            vec![
                (30, State::Open, Severity::Warning),
                (70, State::Escalated, Severity::Critical),
                (210, State::Resolved, Severity::Critical),
            ]
        );
        // The same conditions with the clock advanced in other steps: the same alerts.
        let fine: Vec<(i64, Option<u8>)> = (0..1000)
            .map(|t| {
                let level = match t {
                    0 => Some(2),
                    40 => Some(3),
                    80 => Some(1),
                    90 => Some(0),
                    _ => None,
                };
                (t, level)
            })
            .collect();
        assert_eq!(run(&fine), events);
    }

    #[test]
    fn brief_spikes_and_hovering_values_do_not_alert_or_flap() {
        // A 10 s spike: never sustained.
        assert!(run(&[(0, Some(2)), (10, Some(0)), (60, None)]).is_empty());
        // Open, then hovering in the margin: never resolves while it hovers.
        let e = run(&[(0, Some(2)), (40, Some(1)), (301, Some(2)), (400, None)]);
        assert_eq!(e, vec![(30, State::Open, Severity::Warning)]);
    }

    #[test]
    fn a_resolved_alert_is_not_reopened_at_the_same_severity_within_the_suppression() {
        let e = run(&[(0, Some(2)), (40, Some(0)), (200, Some(2)), (2000, None)]);
        let states: Vec<State> = e.iter().map(|x| x.1).collect();
        assert_eq!(
            states,
            vec![State::Open, State::Resolved, State::Open],
            "{e:?}"
        );
        assert_eq!(e[1].0, 160, "resolved after the 120 s hold-down");
        assert_eq!(
            e[2].0, 760,
            "still abnormal when the suppression (600 s from 160) ends"
        );
    }

    #[test]
    fn standing_alerts_are_the_open_ones_as_last_shown() {
        let mut l = Lifecycle::default();
        let mut out = Vec::new();
        l.set("P", "hr", cond(3, 0), 0, &mut out);
        l.advance(50_000, &mut out);
        let standing = l.standing();
        assert_eq!(standing.len(), 1);
        let last = out.last().expect("an event");
        assert_eq!(
            (&standing[0].id, standing[0].severity),
            (&last.id, last.severity)
        );
        assert_eq!(standing[0].since, last.since);
        l.clear("P", "hr", 50_000, &mut out);
        l.advance(1_000_000, &mut out);
        assert!(l.standing().is_empty(), "resolved: {out:?}");
    }

    #[test]
    fn a_cleared_condition_resolves_its_open_alert_after_the_hold_down() {
        let mut l = Lifecycle::default();
        let mut out = Vec::new();
        l.set("P", "hr", cond(3, 0), 0, &mut out);
        l.advance(50_000, &mut out);
        l.clear("P", "hr", 50_000, &mut out);
        l.advance(1_000_000, &mut out);
        let states: Vec<(State, String)> = out.iter().map(|a| (a.state, a.at.clone())).collect();
        assert_eq!(
            states,
            vec![
                (State::Open, "1970-01-01T00:00:30Z".into()),
                (State::Resolved, "1970-01-01T00:02:50Z".into())
            ]
        );
        assert_eq!(l.next_timer(), None, "nothing left to fire");
    }

    #[test]
    fn alert_ids_are_stable_per_episode() {
        assert_eq!(alert_id("P", "hr", 1), alert_id("P", "hr", 1));
        assert_ne!(alert_id("P", "hr", 1), alert_id("P", "hr", 2));
    }
}
