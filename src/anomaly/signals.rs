//! Per-patient vital state, updated in place for every measurement, in event-time order.
//!
//! It turns the raw stream into the few changes the rule evaluation needs: a signal (a
//! vital's value, its change over a window, its z-score against the patient's baseline) is
//! passed on only when it crosses a boundary where some rule or NEWS2 could judge it
//! differently, as a retraction of the previous reading and an insertion of the new one.
//! A NEWS2 parameter whose last reading is older than the staleness age is retracted when
//! the event clock passes that age ([`VitalState::expire`]), whether or not the patient
//! sends anything else. Implausible values are dropped here, with the reason counted.
//!
//! Missing is not a value: a vital's rules hold only while valid readings keep coming. A
//! rejected or suspect reading, or a gap longer than the vital's `max_gap`, suspends the
//! vital ([`Change::Touch`] and retractions; the judge reports its rules as suspended), and
//! a continuous vital with no valid reading for `signal_lost_after` raises a technical
//! condition ([`Change::Technical`]): its signal is lost, or its monitor is silent.

use super::evidence::{clock, Cadence, DeviceSeen, LOST_DEVICE, LOST_FLAG, LOST_NO, LOST_SIGNAL};
pub use super::evidence::{vital_label, TechnicalChange, DEVICE_SILENT, SENSOR_OFF, SIGNAL_LOST};
use super::rules::{milli, RuleSet, Signal};
use crate::model::{Measurement, Text};
use rustc_hash::FxHashMap as HashMap;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// A signal's key in a patient's readings.
pub fn signal_key(s: &Signal) -> String {
    match s {
        Signal::Value(v) => format!("value:{v}"),
        Signal::Change {
            vital,
            within_s,
            falling,
        } => format!(
            "change:{vital}:{within_s}:{}",
            if *falling { "drop" } else { "rise" }
        ),
        Signal::Baseline {
            vital,
            halflife_s,
            warmup_s,
        } => format!("baseline:{vital}:{halflife_s}:{warmup_s}"),
        Signal::Smoothed { vital, window_s } => format!("smoothed:{vital}:{window_s}"),
    }
}

/// One reading of a signal, as the rule evaluation judges it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Reading {
    /// Value, thousandths.
    pub value: i64,
    /// Event time of the reading, ms since the Unix epoch.
    pub at_ms: i64,
    /// When its message reached Kafka, ms (0 when unknown).
    pub stamp_ms: i64,
    /// The device that measured it.
    pub device: String,
}

/// What the vital state passes on.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// A reading of `(patient, signal key)` becomes current (+1) or stops being (-1).
    Reading((String, String), Reading, isize),
    /// A value was dropped as implausible.
    Rejected {
        /// The vital.
        vital: String,
        /// Why.
        reason: &'static str,
    },
    /// `(patient, signal key)` must be judged again: its vital's evidence stopped or
    /// resumed, though the signal's reading is unchanged.
    Touch((String, String)),
    /// A technical condition of a patient turns on or off.
    Technical(TechnicalChange),
}

#[derive(Default, Serialize, Deserialize)]
struct VitalTrack {
    last: Option<(i64, f64)>,
    /// (time, value) within the longest change window of any rule: every reading within the
    /// longest median window, and older ones only while they can be a change window's
    /// highest or lowest (see [`prune`]). Checkpointed, so that a restart judges the same
    /// medians and changes as the uninterrupted run.
    #[serde(default)]
    history: VecDeque<(i64, f64)>,
    /// Per baseline signal: (mean, variance, first reading ms, last reading ms).
    baselines: HashMap<String, (f64, f64, i64, i64)>,
    /// The time of the last reading of any validity (for the cadence).
    #[serde(default)]
    seen: Option<i64>,
    #[serde(default)]
    cadence: Cadence,
    /// Accepted readings within the suspect window (vitals with a `max_step`).
    #[serde(default)]
    recent: VecDeque<(i64, f64)>,
    /// The vital's evidence stopped: its signals are retracted until a valid reading.
    #[serde(default)]
    suspended: bool,
    /// Its loss was reported ([`LOST_SIGNAL`], [`LOST_DEVICE`]) or not.
    #[serde(default)]
    lost: u8,
    /// Readings were rejected since the last valid one.
    #[serde(default)]
    rejected: bool,
    /// The device of the last valid reading.
    #[serde(default)]
    device: Text,
}

impl VitalTrack {
    /// Seen flowing at least every `within` ms: a loss of it is worth a technical alert.
    fn continuous(&self, within: i64) -> bool {
        self.cadence.count() >= 3 && self.cadence.usual().is_some_and(|u| u <= within)
    }
}

#[derive(Default, Serialize, Deserialize)]
struct PatientState {
    vitals: HashMap<String, VitalTrack>,
    /// The current reading per signal key, with its band.
    emitted: HashMap<String, (i64, Reading)>,
    /// The check (staleness, gaps, lost signals) this patient has pending, if any.
    #[serde(alias = "stale_check")]
    check: Option<i64>,
    /// The devices that send this patient's readings.
    #[serde(default)]
    devices: Vec<DeviceSeen>,
    /// The devices' "sensor off" flags that are on: (type, value, since).
    #[serde(default)]
    flags: Vec<(String, String, i64)>,
}

/// Retracts the signals of `vital` a rule judges as they are (its evidence stopped) and
/// has the smoothed ones (NEWS2's) judged again; marks the vital suspended.
fn suspend(
    patient: &str,
    track: &mut VitalTrack,
    signals: &[Watched],
    emitted: &mut HashMap<String, (i64, Reading)>,
    out: &mut Vec<Change>,
) {
    if track.suspended {
        return;
    }
    track.suspended = true;
    for w in signals {
        if matches!(w.signal, Signal::Smoothed { .. }) {
            out.push(Change::Touch((patient.to_string(), w.key.clone())));
        } else if let Some((_, r)) = emitted.remove(&w.key) {
            out.push(Change::Reading((patient.to_string(), w.key.clone()), r, -1));
        }
    }
}

/// A signal the rules watch, with its key and band boundaries: worked out once per rule
/// set, not for every reading.
#[derive(Debug, Clone)]
struct Watched {
    signal: Signal,
    key: String,
    bounds: Vec<f64>,
}

/// Drops from a vital's history what no signal can read any more: readings older than
/// `keep` (the longest window), and, older than `smooth` (the longest median window), each
/// reading that a later one at least as high and a later one at least as low make
/// redundant: a change window's highest and lowest are then those of the full history.
/// What is left is the recent readings and two chains (measured in the tests: a random walk
/// at one reading a second keeps at most 200 of a 30-minute window's 1,800 readings).
fn prune(history: &mut VecDeque<(i64, f64)>, at: i64, keep: i64, smooth: i64) {
    while history.front().is_some_and(|(t, _)| *t < at - keep) {
        history.pop_front();
    }
    let cutoff = at - smooth;
    let old = history.iter().take_while(|(t, _)| *t < cutoff).count();
    if old == 0 {
        return;
    }
    let (mut hi, mut lo) = (f64::NEG_INFINITY, f64::INFINITY);
    for (_, x) in history.iter().skip(old) {
        hi = hi.max(*x);
        lo = lo.min(*x);
    }
    let mut needed = vec![true; old];
    for i in (0..old).rev() {
        let x = history[i].1;
        needed[i] = !(hi >= x && lo <= x);
        hi = hi.max(x);
        lo = lo.min(x);
    }
    let mut i = 0;
    history.retain(|_| {
        let k = i >= old || needed[i];
        i += 1;
        k
    });
}

fn band(boundaries: &[f64], v: f64) -> i64 {
    // Below, at and above each boundary are different bands: thresholds are inclusive.
    boundaries
        .iter()
        .map(|b| match v.partial_cmp(b) {
            Some(std::cmp::Ordering::Less) | None => 0,
            Some(std::cmp::Ordering::Equal) => 1,
            Some(std::cmp::Ordering::Greater) => 2,
        })
        .sum()
}

/// The vital state of all patients of one worker. What it serializes is the patients'
/// state; the rules' boundaries come back with [`VitalState::set_rules`].
#[derive(Default, Serialize, Deserialize)]
pub struct VitalState {
    patients: HashMap<Text, PatientState>,
    #[serde(skip)]
    /// Per vital, the signals watched, in key order (the order their changes are judged).
    by_vital: HashMap<String, Vec<Watched>>,
    /// (event ms, patient): when a patient's next check is due (NEWS2 parameters going
    /// stale, a vital's evidence gap, a lost signal).
    #[serde(alias = "stale_checks")]
    checks: std::collections::BTreeSet<(i64, Text)>,
    /// A smoothing window's values, reused from reading to reading.
    #[serde(skip)]
    scratch: Vec<f64>,
}

impl VitalState {
    /// Uses a (new) rule set: signals are re-banded and re-emitted where their band changed;
    /// signals no rule watches any more are retracted.
    pub fn set_rules(&mut self, rules: &RuleSet, out: &mut Vec<Change>) {
        self.by_vital.clear();
        for (signal, bounds) in rules.boundaries() {
            self.by_vital
                .entry(signal.vital().to_string())
                .or_default()
                .push(Watched {
                    key: signal_key(&signal),
                    signal,
                    bounds,
                });
        }
        for watched in self.by_vital.values_mut() {
            watched.sort_by(|a, b| a.key.cmp(&b.key));
        }
        let keys: HashMap<&str, &[f64]> = (self.by_vital.values().flatten())
            .map(|w| (w.key.as_str(), w.bounds.as_slice()))
            .collect();
        for (patient, st) in &mut self.patients {
            let mut gone = Vec::new();
            for (key, (old_band, r)) in st.emitted.iter_mut() {
                match keys.get(key.as_str()) {
                    None => gone.push(key.clone()),
                    Some(b) => {
                        let nb = band(b, r.value as f64 / 1000.0);
                        if nb != *old_band {
                            *old_band = nb;
                            // Same reading, new band: retract and insert so that the
                            // judge sees it again (its rule changed).
                            out.push(Change::Reading(
                                (patient.to_string(), key.clone()),
                                r.clone(),
                                -1,
                            ));
                            out.push(Change::Reading(
                                (patient.to_string(), key.clone()),
                                r.clone(),
                                1,
                            ));
                        }
                    }
                }
            }
            for key in gone {
                if let Some((_, r)) = st.emitted.remove(&key) {
                    out.push(Change::Reading((patient.to_string(), key), r, -1));
                }
            }
        }
    }

    /// The current reading of a patient's signal.
    pub fn reading(&self, patient: &str, key: &str) -> Option<&Reading> {
        self.patients.get(patient)?.emitted.get(key).map(|(_, r)| r)
    }

    /// Whether the patient's `vital` is suspended: its evidence stopped (a gap, a rejected
    /// or suspect reading) and no valid reading has come since.
    pub fn suspended(&self, patient: &str, vital: &str) -> bool {
        self.patients
            .get(patient)
            .and_then(|p| p.vitals.get(vital))
            .is_some_and(|t| t.suspended)
    }

    /// The earliest pending check.
    pub fn next_check(&self) -> Option<i64> {
        self.checks.first().map(|(t, _)| *t)
    }

    /// Runs the checks due at or before event time `now`, each at its own time: NEWS2
    /// parameters older than `stale_after` stop counting (by their last reading, not their
    /// last band change); a vital with no valid reading for longer than its `max_gap` is
    /// suspended; a continuous one with none for `signal_lost_after` raises a technical
    /// condition. Changes are tagged with the patient.
    pub fn check(
        &mut self,
        now: i64,
        stale_after: Option<i64>,
        rules: &RuleSet,
        names: &super::rules::Vitals,
        out: &mut Vec<Change>,
    ) {
        let tech = &rules.technical;
        let lost_after = tech.signal_lost_after_ms;
        let continuous = tech.continuous_within_ms();
        while let Some((t, patient)) = self.checks.first().cloned() {
            if t > now {
                break;
            }
            self.checks.pop_first();
            let Some(st) = self.patients.get_mut(patient.as_str()) else {
                continue;
            };
            st.check = None;
            let mut next: Option<i64> = None;
            let mut due = |d: i64| next = Some(next.map_or(d, |n: i64| n.min(d)));
            if let Some(stale_after) = stale_after {
                let stale_before = t - stale_after;
                let vitals = &st.vitals;
                let last_of = |k: &str| {
                    k.strip_prefix("smoothed:")
                        .and_then(|rest| rest.rsplit_once(':'))
                        .and_then(|(vital, _)| vitals.get(vital))
                        .and_then(|t| t.last)
                        .map(|(at, _)| at)
                };
                let mut stale: Vec<String> = st
                    .emitted
                    .keys()
                    .filter(|k| last_of(k).is_some_and(|at| at <= stale_before))
                    .cloned()
                    .collect();
                stale.sort();
                if let Some(at) = st
                    .emitted
                    .keys()
                    .filter_map(|k| last_of(k))
                    .filter(|at| *at > stale_before)
                    .min()
                {
                    due(at + stale_after);
                }
                for k in stale {
                    if let Some((_, r)) = st.emitted.remove(&k) {
                        out.push(Change::Reading((patient.to_string(), k), r, -1));
                    }
                }
            }
            let mut vitals: Vec<&String> = st.vitals.keys().collect();
            vitals.sort();
            let vitals: Vec<String> = vitals.into_iter().cloned().collect();
            for vital in vitals {
                let track = st.vitals.get_mut(&vital).expect("track");
                let Some((last_at, last_v)) = track.last else {
                    continue;
                };
                let gap = rules.evidence.max_gap(&vital, track.cadence.usual());
                if !track.suspended {
                    if t - last_at > gap {
                        let signals = self.by_vital.get(&vital).map_or(&[][..], |v| v);
                        suspend(&patient, track, signals, &mut st.emitted, out);
                    } else {
                        due(last_at.saturating_add(gap).saturating_add(1));
                    }
                }
                if !tech.enabled || track.lost != LOST_NO || !track.continuous(continuous) {
                    continue;
                }
                if t - last_at < lost_after {
                    due(last_at.saturating_add(lost_after));
                    continue;
                }
                let device = track.device.clone();
                let seen = st.devices.iter_mut().find(|d| d.device == device);
                // Nothing at all from its device since: the monitor, not the probe.
                let silent = seen.as_ref().is_some_and(|d| d.last <= last_at);
                let label = vital_label(&vital, names);
                let change = |rule: String, title: String, since: i64, detail: String| {
                    Change::Technical(TechnicalChange {
                        patient: patient.to_string(),
                        rule,
                        title,
                        vital: vital.clone(),
                        device: device.to_string(),
                        on: true,
                        since,
                        last: (last_at, last_v),
                        detail,
                    })
                };
                if silent {
                    track.lost = LOST_DEVICE;
                    let d = seen.expect("seen");
                    if !d.silent {
                        d.silent = true;
                        out.push(change(
                            format!("{DEVICE_SILENT}/{device}"),
                            "Monitor silent".into(),
                            d.last,
                            format!("no message from the device since {}", clock(d.last)),
                        ));
                    }
                } else {
                    track.lost = LOST_SIGNAL;
                    let why = if track.rejected {
                        "only implausible readings"
                    } else {
                        "no reading"
                    };
                    out.push(change(
                        format!("{SIGNAL_LOST}/{vital}"),
                        format!("{label} signal lost"),
                        last_at,
                        format!(
                            "{why} since {} (last valid {last_v} at {})",
                            clock(last_at),
                            clock(last_at)
                        ),
                    ));
                }
            }
            if let Some(d) = next {
                st.check = Some(d);
                self.checks.insert((d, patient));
            }
        }
    }

    /// Keeps the patients `keep` says, and takes those `other` holds that it says too.
    pub fn absorb(&mut self, other: VitalState, keep: &dyn Fn(&str) -> bool) {
        for (p, st) in other.patients {
            if keep(&p) {
                if let Some(due) = st.check {
                    self.checks.insert((due, p.clone()));
                }
                self.patients.insert(p, st);
            }
        }
    }

    /// Forgets a patient (silent beyond the horizon).
    pub fn forget(&mut self, patient: &str) {
        if let Some(st) = self.patients.remove(patient) {
            if let Some(due) = st.check {
                self.checks.remove(&(due, patient.into()));
            }
        }
    }

    /// The patients held, in order.
    pub fn patients(&self) -> Vec<String> {
        let mut p: Vec<String> = self.patients.keys().map(Text::to_string).collect();
        p.sort();
        p
    }

    /// Patients held.
    pub fn len(&self) -> usize {
        self.patients.len()
    }

    /// True when no patient is held.
    pub fn is_empty(&self) -> bool {
        self.patients.is_empty()
    }

    /// Adds one measurement.
    pub fn add(
        &mut self,
        m: &Measurement,
        vitals: &super::rules::Vitals,
        rules: &RuleSet,
        out: &mut Vec<Change>,
    ) {
        let Some(patient) = &m.patient_id else { return };
        let at = m.occurrence_time.timestamp_millis();
        let stamp = m.received_ms.unwrap_or(0);
        // Looked up before inserting: a key is allocated only for a new patient.
        let st = match self.patients.get_mut(patient) {
            Some(st) => st,
            None => self.patients.entry(patient.clone()).or_default(),
        };
        // Anything from a device shows it is not silent.
        match st.devices.iter_mut().find(|d| d.device == m.device_id) {
            Some(d) => {
                d.last = d.last.max(at);
                if std::mem::take(&mut d.silent) {
                    out.push(Change::Technical(TechnicalChange {
                        patient: patient.to_string(),
                        rule: format!("{DEVICE_SILENT}/{}", m.device_id),
                        title: "Monitor silent".into(),
                        vital: String::new(),
                        device: m.device_id.to_string(),
                        on: false,
                        since: at,
                        last: (at, 0.0),
                        detail: "the device sends again".into(),
                    }));
                }
            }
            None => st.devices.push(DeviceSeen {
                device: m.device_id.clone(),
                last: at,
                silent: false,
            }),
        }
        let mut arm: Option<i64> = None;
        // The device's own flags first: a value in the same message as a flag turning on
        // is already one the device disowns.
        if !rules.technical.flags.is_empty() {
            for (name, raw) in &m.properties {
                let flag = rules
                    .technical
                    .flags
                    .iter()
                    .find(|((t, v), _)| **t == *m.type_name && **v == **name);
                if let Some(((type_name, value), flag)) = flag {
                    let at_flag = st
                        .flags
                        .iter()
                        .position(|(t, v, _)| t == type_name && v == value);
                    let on = flag.is_on(raw);
                    if on == at_flag.is_some() {
                        continue;
                    }
                    if let Some(i) = at_flag {
                        st.flags.remove(i);
                    } else {
                        st.flags.push((type_name.clone(), value.clone(), at));
                    }
                    for v in &flag.suspends {
                        let Some(track) = st.vitals.get_mut(v) else {
                            continue;
                        };
                        if on {
                            track.lost = LOST_FLAG;
                            let signals = self.by_vital.get(v).map_or(&[][..], |s| s);
                            suspend(patient, track, signals, &mut st.emitted, out);
                        } else if track.lost == LOST_FLAG {
                            track.lost = LOST_NO;
                        }
                    }
                    if rules.technical.enabled {
                        out.push(Change::Technical(TechnicalChange {
                            patient: patient.to_string(),
                            rule: format!("{SENSOR_OFF}/{type_name}.{value}"),
                            title: flag.title.clone(),
                            vital: flag.suspends.first().cloned().unwrap_or_default(),
                            device: m.device_id.to_string(),
                            on,
                            since: at,
                            last: (at, if on { 1.0 } else { 0.0 }),
                            detail: if on {
                                format!("the device reports it at {}", clock(at))
                            } else {
                                "the device reports the sensor back".into()
                            },
                        }));
                    }
                    continue;
                }
            }
        }
        for (name, raw) in &m.properties {
            let Some(vital) = vitals.of(&m.type_name, name) else {
                continue;
            };
            let Some(signals) = self.by_vital.get(vital) else {
                continue;
            };
            let track = match st.vitals.get_mut(vital) {
                Some(track) => track,
                None => st.vitals.entry(vital.to_string()).or_default(),
            };
            if track.last.is_some_and(|(t0, _)| at < t0) {
                // Late data (a device syncing its backlog): it belongs to the record, not to
                // the alerting picture of now.
                continue;
            }
            if let Some(prev) = track.seen {
                if at > prev {
                    track.cadence.push(at - prev);
                }
            }
            track.seen = Some(track.seen.map_or(at, |p| p.max(at)));
            let q = rules.quality.get(vital);
            let number = rules.number(vital, raw);
            let flagged = !st.flags.is_empty()
                && st.flags.iter().any(|(t, v, _)| {
                    rules
                        .technical
                        .flags
                        .get(&(t.clone(), v.clone()))
                        .is_some_and(|f| f.suspends.iter().any(|s| s == vital))
                });
            let reason = match number {
                _ if flagged => Some("the device reports the sensor off"),
                None => Some("not a number"),
                Some(v) => q.and_then(|q| {
                    if q.min.is_some_and(|lo| v < lo) {
                        Some("below the plausible minimum")
                    } else if q.max.is_some_and(|hi| v > hi) {
                        Some("above the plausible maximum")
                    } else if let (Some(step), Some((t0, last))) = (q.max_step, track.last) {
                        // A jump no physiology makes between close readings: probe off,
                        // motion; or a fall (rise) that fast within a few seconds, as a
                        // slipping probe reads before it reads nothing.
                        let within = rules.evidence.suspect_within_ms;
                        if (v - last).abs() > step && at - t0 < 60_000 {
                            Some("implausible jump")
                        } else if track
                            .recent
                            .iter()
                            .any(|(t, x)| at - t <= within && (v - x).abs() > step)
                        {
                            Some("implausible change")
                        } else {
                            None
                        }
                    } else {
                        None
                    }
                }),
            };
            if let Some(reason) = reason {
                out.push(Change::Rejected {
                    vital: vital.to_string(),
                    reason,
                });
                track.rejected = true;
                suspend(patient, track, signals, &mut st.emitted, out);
                continue;
            }
            let Some(v) = number else {
                continue;
            };
            if std::mem::take(&mut track.suspended) {
                for w in signals {
                    if matches!(w.signal, Signal::Smoothed { .. }) {
                        out.push(Change::Touch((patient.to_string(), w.key.clone())));
                    }
                }
            }
            if track.device != m.device_id {
                track.device = m.device_id.clone();
            }
            let was_lost = std::mem::replace(&mut track.lost, LOST_NO);
            if was_lost == LOST_SIGNAL {
                out.push(Change::Technical(TechnicalChange {
                    patient: patient.to_string(),
                    rule: format!("{SIGNAL_LOST}/{vital}"),
                    title: format!("{} signal lost", vital_label(vital, vitals)),
                    vital: vital.to_string(),
                    device: m.device_id.to_string(),
                    on: false,
                    since: at,
                    last: (at, v),
                    detail: format!("valid readings again ({v} at {})", clock(at)),
                }));
            }
            track.rejected = false;
            if q.is_some_and(|q| q.max_step.is_some()) {
                let within = rules.evidence.suspect_within_ms;
                while track.recent.front().is_some_and(|(t, _)| at - t > within) {
                    track.recent.pop_front();
                }
                track.recent.push_back((at, v));
            }
            track.last = Some((at, v));
            let gap = rules.evidence.max_gap(vital, track.cadence.usual());
            let mut d = at.saturating_add(gap).saturating_add(1);
            let tech = &rules.technical;
            if tech.enabled && track.continuous(tech.continuous_within_ms()) {
                d = d.min(at.saturating_add(tech.signal_lost_after_ms));
            }
            arm = Some(arm.map_or(d, |a| a.min(d)));
            for w in signals {
                let s = &w.signal;
                let value = match s {
                    Signal::Value(_) => Some(v),
                    Signal::Smoothed { window_s, .. } => {
                        let since = at - *window_s as i64 * 1000;
                        let w = &mut self.scratch;
                        w.clear();
                        // The history is in time order: the window is its tail.
                        let from = track.history.partition_point(|(t, _)| *t < since);
                        w.extend(
                            (track.history.range(from..))
                                .map(|(_, x)| *x)
                                .chain(std::iter::once(v)),
                        );
                        // The middle of the sorted window, found without sorting it (it
                        // was a quarter of alerting's time): equal under `total_cmp` is
                        // equal bits, so the value is the same.
                        let mid = w.len() / 2;
                        Some(*w.select_nth_unstable_by(mid, f64::total_cmp).1)
                    }
                    Signal::Change {
                        within_s, falling, ..
                    } => {
                        // The window includes this reading: alone in it, the change is 0.
                        let since = at - *within_s as i64 * 1000;
                        let h = &track.history;
                        let window = (h.range(h.partition_point(|(t, _)| *t < since)..))
                            .map(|(_, x)| *x)
                            .chain(std::iter::once(v));
                        let extreme = if *falling {
                            window.fold(v, f64::max)
                        } else {
                            window.fold(v, f64::min)
                        };
                        Some(v - extreme)
                    }
                    Signal::Baseline {
                        halflife_s,
                        warmup_s,
                        ..
                    } => {
                        let b = match track.baselines.get_mut(&w.key) {
                            Some(b) => b,
                            None => {
                                (track.baselines.entry(w.key.clone())).or_insert((v, 0.0, at, at))
                            }
                        };
                        let (mean, var, first, last) = *b;
                        // Judge against the baseline before this reading joins it.
                        let sd = var.sqrt().max(1.0).max(mean.abs() * 0.02);
                        let z = (v - mean).abs() / sd;
                        let dt = (at - last).max(0) as f64 / 1000.0;
                        let w = 0.5f64.powf(dt / *halflife_s as f64);
                        let d = v - mean;
                        let new_mean = mean + (1.0 - w) * d;
                        *b = (new_mean, w * (var + (1.0 - w) * d * d), first, at);
                        (at - first >= *warmup_s as i64 * 1000).then_some(z)
                    }
                };
                let key = &w.key;
                let Some(value) = value else { continue };
                let nb = band(&w.bounds, value);
                if st.emitted.get(key).is_some_and(|(b, _)| *b == nb) {
                    continue;
                }
                let r = Reading {
                    value: milli(value),
                    at_ms: at,
                    stamp_ms: stamp,
                    device: m.device_id.to_string(),
                };
                if let Some((_, old)) = st.emitted.insert(key.clone(), (nb, r.clone())) {
                    out.push(Change::Reading((patient.to_string(), key.clone()), old, -1));
                }
                out.push(Change::Reading((patient.to_string(), key.clone()), r, 1));
            }
            let longest = signals
                .iter()
                .filter_map(|w| match &w.signal {
                    Signal::Change { within_s, .. } => Some(*within_s as i64 * 1000),
                    Signal::Smoothed { window_s, .. } => Some(*window_s as i64 * 1000),
                    _ => None,
                })
                .max();
            if let Some(keep) = longest {
                let smooth = signals
                    .iter()
                    .filter_map(|w| match &w.signal {
                        Signal::Smoothed { window_s, .. } => Some(*window_s as i64 * 1000),
                        _ => None,
                    })
                    .max()
                    .unwrap_or(0);
                track.history.push_back((at, v));
                prune(&mut track.history, at, keep, smooth);
            }
        }
        // A NEWS2 parameter read now goes stale `stale_after` later, unless read again.
        if let Some(n) = &rules.news2 {
            let newest = st
                .emitted
                .keys()
                .filter(|k| k.starts_with("smoothed:"))
                .count();
            if newest > 0 {
                let due = at + n.stale_after.as_millis().min(i64::MAX as u128 / 2) as i64;
                arm = Some(arm.map_or(due, |a| a.min(due)));
            }
        }
        // One pending check per patient, at the earliest of its deadlines: a check that
        // finds nothing due re-arms itself at the next one.
        if let Some(due) = arm {
            if st.check.is_none_or(|c| due < c) {
                if let Some(c) = st.check.replace(due) {
                    self.checks.remove(&(c, patient.clone()));
                }
                self.checks.insert((due, patient.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_pruned_history_gives_every_window_the_extremes_and_medians_of_the_full_one() {
        use rand::{RngExt as _, SeedableRng as _};
        let mut rng = rand::rngs::Xoshiro256PlusPlus::seed_from_u64(7);
        let (keep, smooth) = (30 * 60_000, 60_000);
        let mut full: VecDeque<(i64, f64)> = VecDeque::new();
        let mut pruned: VecDeque<(i64, f64)> = VecDeque::new();
        let mut v = 120.0;
        let mut largest = 0;
        for i in 0..7200i64 {
            let at = i * 1000;
            v += rng.random_range(-2.0..2.0);
            full.push_back((at, v));
            while full.front().is_some_and(|(t, _)| *t < at - keep) {
                full.pop_front();
            }
            pruned.push_back((at, v));
            prune(&mut pruned, at, keep, smooth);
            largest = largest.max(pruned.len());
            for within in [smooth, 5 * 60_000, keep] {
                let window = |h: &VecDeque<(i64, f64)>| {
                    let xs: Vec<f64> = h
                        .iter()
                        .filter(|(t, _)| *t >= at - within)
                        .map(|(_, x)| *x)
                        .collect();
                    let hi = xs.iter().copied().fold(f64::MIN, f64::max);
                    let lo = xs.iter().copied().fold(f64::MAX, f64::min);
                    (hi, lo)
                };
                assert_eq!(window(&pruned), window(&full), "at {at} within {within}");
            }
            let median = |h: &VecDeque<(i64, f64)>| {
                let mut w: Vec<f64> = h
                    .iter()
                    .filter(|(t, _)| *t >= at - smooth)
                    .map(|(_, x)| *x)
                    .collect();
                w.sort_by(f64::total_cmp);
                w[w.len() / 2]
            };
            assert_eq!(median(&pruned), median(&full), "at {at}");
        }
        assert!(
            largest < 400,
            "a 30-minute window of 1,800 readings keeps {largest}"
        );
        eprintln!("pruned history: at most {largest} of 1,800 readings");
    }
    use super::*;
    use crate::anomaly::rules::{parse, Vitals};
    use crate::mapping::FhirMapping;
    use std::sync::Arc;

    fn setup(text: &str) -> (Vitals, RuleSet) {
        let fhir = FhirMapping::from_file(std::path::Path::new(
            "templates/bedside-monitor/fhirmapping.json",
        ))
        .expect("mapping");
        let v = Vitals::new(&fhir);
        let r = parse(text, "r.toml", &v).expect("rules");
        (v, r)
    }

    fn hr(second: i64, v: &str) -> Measurement {
        Measurement {
            type_name: Arc::from("heartRate"),
            device_id: "BM-1".into(),
            patient_id: Some("P-1".into()),
            encounter_id: None,
            correlation_id: None,
            occurrence_time: chrono::DateTime::from_timestamp(1_800_000_000 + second, 0)
                .expect("time"),
            properties: vec![(Arc::from("hr"), v.into())],
            received_ms: Some(5),
            source: None,
        }
    }

    /// The readings of signals whose key starts with `prefix`: (value, diff).
    fn values_of(out: &[Change], prefix: &str) -> Vec<(f64, isize)> {
        out.iter()
            .filter_map(|c| match c {
                Change::Reading((_, k), r, d) if k.starts_with(prefix) => {
                    Some((r.value as f64 / 1000.0, *d))
                }
                _ => None,
            })
            .collect()
    }

    /// A vital state under `r`, and its (empty) output.
    fn state(r: &RuleSet) -> (VitalState, Vec<Change>) {
        let mut s = VitalState::default();
        let mut out = Vec::new();
        s.set_rules(r, &mut out);
        (s, out)
    }

    fn oxygen(second: i64, v: &str) -> Measurement {
        Measurement {
            type_name: Arc::from("supplementalOxygen"),
            properties: vec![(Arc::from("onOxygen"), v.into())],
            ..hr(second, "0")
        }
    }

    #[test]
    fn charted_words_become_the_numbers_news2_reads() {
        let (v, r) = setup(
            "[news2]\n\n[text_values.supplementalOxygen]\n\"high flow oxygen\" = 1\n\"Air\" = 0\n",
        );
        let (mut s, mut out) = state(&r);
        let mut values = Vec::new();
        for (i, word) in ["RA", "NC", "room air", "MASK", "High Flow Oxygen", "air"]
            .iter()
            .enumerate()
        {
            out.clear();
            s.add(&oxygen(i as i64 * 120, word), &v, &r, &mut out);
            values.extend(
                values_of(&out, "smoothed:3150-0")
                    .into_iter()
                    .filter(|(_, d)| *d > 0),
            );
        }
        let values: Vec<f64> = values.into_iter().map(|(v, _)| v).collect();
        assert_eq!(
            values,
            vec![0.0, 1.0, 0.0, 1.0, 0.0],
            "the defaults and the file's words; high flow after a mask is no change"
        );
    }

    #[test]
    fn text_values_name_known_vitals_and_numbers_with_their_line() {
        let fhir = FhirMapping::from_file(std::path::Path::new(
            "templates/bedside-monitor/fhirmapping.json",
        ))
        .expect("mapping");
        let v = Vitals::new(&fhir);
        let e = parse(
            "[text_values.oxygenFlow]\nNC = 1\n\n[text_values.supplementalOxygen]\nNC = \"yes\"\n",
            "r.toml",
            &v,
        )
        .expect_err("invalid");
        let lines: Vec<(usize, String)> = e
            .errors
            .iter()
            .map(|e| (e.line.unwrap_or(0), e.reason.clone()))
            .collect();
        assert!(
            lines
                .iter()
                .any(|(l, r)| *l == 1 && r.contains("unknown vital \"oxygenFlow\"")),
            "{lines:?}"
        );
        assert!(
            lines
                .iter()
                .any(|(l, r)| *l == 5 && r.contains("must be a number")),
            "{lines:?}"
        );
    }

    #[test]
    fn only_band_crossings_are_passed_on() {
        let (v, r) = setup(
            "[[rule]]\nid = \"hr\"\nvital = \"heartRate\"\nabove = { warning = 130 }\nhysteresis = 5\n",
        );
        let (mut s, mut out) = state(&r);
        for (i, x) in ["80", "90", "100", "126", "127", "131", "140", "124"]
            .iter()
            .enumerate()
        {
            s.add(&hr(i as i64, x), &v, &r, &mut out);
        }
        assert_eq!(
            values_of(&out, "value:"),
            vec![
                (80.0, 1),
                (80.0, -1),
                (126.0, 1),
                (126.0, -1),
                (131.0, 1),
                (131.0, -1),
                (124.0, 1)
            ]
        );
    }

    #[test]
    fn implausible_values_are_rejected_with_the_reason() {
        let (v, r) = setup(
            "[[rule]]\nid = \"hr\"\nvital = \"heartRate\"\nabove = { warning = 130 }\n[quality]\nheartRate = { min = 20, max = 300, max_step = 40 }\n",
        );
        let (mut s, mut out) = state(&r);
        for (i, x) in ["80", "0", "200", "85", "abc"].iter().enumerate() {
            s.add(&hr(i as i64, x), &v, &r, &mut out);
        }
        let reasons: Vec<&str> = out
            .iter()
            .filter_map(|c| match c {
                Change::Rejected { reason, .. } => Some(*reason),
                _ => None,
            })
            .collect();
        assert_eq!(
            reasons,
            vec![
                "below the plausible minimum",
                "implausible jump",
                "not a number"
            ]
        );
        assert_eq!(
            values_of(&out, "value:"),
            vec![(80.0, 1), (80.0, -1), (85.0, 1), (85.0, -1)],
            "a rejected reading suspends the vital (its reading is retracted) and the next \
             valid one is judged afresh"
        );
        assert!(s.suspended("P-1", "8867-4"), "\"abc\" left it suspended");
    }

    #[test]
    fn a_gap_longer_than_max_gap_suspends_a_vital_and_a_reading_resumes_it() {
        let (v, r) =
            setup("[[rule]]\nid = \"hr\"\nvital = \"heartRate\"\nabove = { warning = 130 }\n");
        let (mut s, mut out) = state(&r);
        for t in 0..10 {
            s.add(&hr(t, "140"), &v, &r, &mut out);
        }
        let t0 = 1_800_000_000_000i64;
        // 1 Hz: max_gap is 5 s (4 s, at least 5). Nothing due until 9 s + 5 s.
        s.check(t0 + 14_000, None, &r, &v, &mut out);
        assert!(!s.suspended("P-1", "8867-4"));
        s.check(t0 + 14_001, None, &r, &v, &mut out);
        assert!(s.suspended("P-1", "8867-4"), "a gap of more than 5 s");
        assert_eq!(values_of(&out, "value:"), vec![(140.0, 1), (140.0, -1)]);
        // The signal was flowing: 30 s without a valid reading is a technical condition.
        out.clear();
        s.check(t0 + 39_000, None, &r, &v, &mut out);
        let lost: Vec<(String, bool, i64)> = technical_changes(&out)
            .map(|t| (t.rule.clone(), t.on, t.since))
            .collect();
        assert_eq!(
            lost,
            vec![("device-silent/BM-1".to_string(), true, t0 + 9_000)],
            "nothing at all came from the device: the monitor, not the probe"
        );
        out.clear();
        s.add(&hr(60, "141"), &v, &r, &mut out);
        assert!(!s.suspended("P-1", "8867-4"));
        assert_eq!(values_of(&out, "value:"), vec![(141.0, 1)], "judged afresh");
        assert!(
            out.iter()
                .any(|c| matches!(c, Change::Technical(t) if !t.on)),
            "the device sends again: {out:?}"
        );
    }

    #[test]
    fn rejected_readings_from_a_sending_device_are_a_lost_signal_not_a_silent_monitor() {
        let (v, r) = setup(
            "[[rule]]\nid = \"hr\"\nvital = \"heartRate\"\nabove = { warning = 130 }\n[quality]\nheartRate = { min = 20 }\n",
        );
        let (mut s, mut out) = state(&r);
        for t in 0..10 {
            s.add(&hr(t, "80"), &v, &r, &mut out);
        }
        for t in 10..60 {
            s.add(&hr(t, "0"), &v, &r, &mut out);
        }
        out.clear();
        s.check(1_800_000_000_000 + 60_000, None, &r, &v, &mut out);
        let lost: Vec<(String, String)> = technical_changes(&out)
            .filter(|t| t.on)
            .map(|t| (t.rule.clone(), t.detail.clone()))
            .collect();
        assert_eq!(lost.len(), 1, "{out:?}");
        assert_eq!(lost[0].0, "signal-lost/8867-4");
        assert!(
            lost[0].1.starts_with("only implausible readings"),
            "{lost:?}"
        );
    }

    fn spo2(second: i64, v: &str, probe_off: Option<&str>) -> Measurement {
        let mut properties = vec![(Arc::from("spo2"), v.into())];
        if let Some(f) = probe_off {
            properties.push((Arc::from("probeOff"), f.into()));
        }
        Measurement {
            type_name: Arc::from("spo2"),
            properties,
            ..hr(second, "0")
        }
    }

    /// The technical conditions among the changes.
    fn technical_changes(out: &[Change]) -> impl Iterator<Item = &TechnicalChange> {
        out.iter().filter_map(|c| match c {
            Change::Technical(t) => Some(t),
            _ => None,
        })
    }

    fn technical(out: &[Change]) -> Vec<(String, bool)> {
        technical_changes(out)
            .map(|t| (t.rule.clone(), t.on))
            .collect()
    }

    #[test]
    fn a_devices_own_probe_off_flag_is_a_technical_condition_and_suspends_its_vital() {
        let text = "[[rule]]\nid = \"hypoxia\"\nvital = \"spo2\"\nbelow = { warning = 90 }\n\
            [technical.flags.\"spo2.probeOff\"]\ntitle = \"SpO2 probe off\"\n\
            suspends = [\"59408-5\"]\non = [\"sensor off\"]\n";
        let (v, r) = setup(text);
        let (mut s, mut out) = state(&r);
        for t in 0..10 {
            s.add(&spo2(t, "97", Some("false")), &v, &r, &mut out);
        }
        out.clear();
        for t in 10..50 {
            s.add(&spo2(t, "84", Some("SENSOR OFF")), &v, &r, &mut out);
        }
        assert_eq!(
            technical(&out),
            vec![("sensor-off/spo2.probeOff".to_string(), true)]
        );
        assert!(
            values_of(&out, "value:").iter().all(|(_, d)| *d < 0),
            "{out:?}"
        );
        assert!(s.suspended("P-1", "59408-5"));
        out.clear();
        s.check(1_800_000_000_000 + 50_000, None, &r, &v, &mut out);
        assert!(
            technical(&out).is_empty(),
            "no second alert for the same loss"
        );
        s.add(&spo2(50, "97", Some("0")), &v, &r, &mut out);
        assert_eq!(
            technical(&out),
            vec![("sensor-off/spo2.probeOff".to_string(), false)]
        );
        assert!(!s.suspended("P-1", "59408-5"), "valid again");
    }

    #[test]
    fn technical_alerts_can_be_switched_off() {
        let (v, r) = setup(
            "[[rule]]\nid = \"hr\"\nvital = \"heartRate\"\nabove = { warning = 130 }\n[technical]\nenabled = false\n",
        );
        let (mut s, mut out) = state(&r);
        for t in 0..10 {
            s.add(&hr(t, "80"), &v, &r, &mut out);
        }
        s.check(1_800_000_000_000 + 120_000, None, &r, &v, &mut out);
        assert!(s.suspended("P-1", "8867-4"), "evidence is still judged");
        assert!(technical(&out).is_empty(), "{out:?}");
    }

    #[test]
    fn a_fall_faster_than_max_step_within_seconds_is_suspect() {
        let (v, r) = setup(
            "[[rule]]\nid = \"hr\"\nvital = \"heartRate\"\nbelow = { warning = 50 }\n[quality]\nheartRate = { min = 20, max_step = 30 }\n",
        );
        let (mut s, mut out) = state(&r);
        // Each step is under 30, but 80 -> 45 within 3 s is not physiology (80 -> 50 is
        // the most there is).
        for (t, x) in [(0, "80"), (1, "80"), (2, "62"), (3, "50"), (4, "45")] {
            s.add(&hr(t, x), &v, &r, &mut out);
        }
        let reasons: Vec<&str> = out
            .iter()
            .filter_map(|c| match c {
                Change::Rejected { reason, .. } => Some(*reason),
                _ => None,
            })
            .collect();
        assert_eq!(reasons, vec!["implausible change"]);
        // A slow fall of the same size is physiology.
        let (mut s, mut out) = state(&r);
        for (i, x) in ["80", "70", "60", "50", "45"].iter().enumerate() {
            s.add(&hr(i as i64 * 20, x), &v, &r, &mut out);
        }
        assert!(!out.iter().any(|c| matches!(c, Change::Rejected { .. })));
        assert!(values_of(&out, "value:").contains(&(50.0, 1)));
    }

    #[test]
    fn a_rule_change_rebands_what_is_held() {
        let (v, r) =
            setup("[[rule]]\nid = \"hr\"\nvital = \"heartRate\"\nabove = { warning = 130 }\n");
        let (mut s, mut out) = state(&r);
        s.add(&hr(0, "110"), &v, &r, &mut out);
        out.clear();
        let (_, r2) =
            setup("[[rule]]\nid = \"hr\"\nvital = \"heartRate\"\nabove = { warning = 100 }\n");
        s.set_rules(&r2, &mut out);
        assert_eq!(
            values_of(&out, "value:"),
            vec![(110.0, -1), (110.0, 1)],
            "re-judged under the new rule"
        );
    }

    #[test]
    fn a_fall_within_the_window_is_measured_from_its_highest_value() {
        let (v, r) = setup(
            "[[rule]]\nid = \"hr-fall\"\nvital = \"heartRate\"\nchange = { within = \"10m\", drop = 30 }\n",
        );
        let (mut s, mut out) = state(&r);
        for (t, x) in [
            (0, "100"),
            (60, "110"),
            (120, "95"),
            (180, "78"),
            (900, "78"),
        ] {
            s.add(&hr(t, x), &v, &r, &mut out);
        }
        let changes = values_of(&out, "change:");
        // 0 (first reading) ... -32 at 180 s (110 → 78), back to 0 once 110 left the window.
        assert_eq!(changes.first(), Some(&(0.0, 1)));
        assert!(changes.contains(&(-32.0, 1)), "{changes:?}");
        assert_eq!(changes.last(), Some(&(0.0, 1)), "{changes:?}");
    }

    #[test]
    fn the_baseline_judges_after_its_warm_up_and_against_the_patients_own_values() {
        let (v, r) = setup(
            "[[rule]]\nid = \"hr-z\"\nvital = \"heartRate\"\nbaseline = { halflife = \"10m\", warmup = \"2m\", z = 4 }\n",
        );
        let (mut s, mut out) = state(&r);
        for t in 0..100 {
            s.add(
                &hr(t, if t % 2 == 0 { "70" } else { "72" }),
                &v,
                &r,
                &mut out,
            );
        }
        assert!(
            values_of(&out, "baseline:").is_empty(),
            "nothing during the warm-up"
        );
        for t in 120..130 {
            s.add(
                &hr(t, if t % 2 == 0 { "70" } else { "72" }),
                &v,
                &r,
                &mut out,
            );
        }
        s.add(&hr(130, "110"), &v, &r, &mut out);
        let z = values_of(&out, "baseline:");
        let last = z.last().expect("a z-score").0;
        assert!(last >= 4.0, "110 is far from a 70-72 baseline: {z:?}");
    }
}
