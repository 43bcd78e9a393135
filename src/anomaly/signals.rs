//! Per-patient vital state, updated in place for every measurement, in event-time order.
//!
//! It turns the raw stream into the few changes the rule evaluation needs: a signal (a
//! vital's value, its change over a window, its z-score against the patient's baseline) is
//! passed on only when it crosses a boundary where some rule or NEWS2 could judge it
//! differently, as a retraction of the previous reading and an insertion of the new one.
//! A NEWS2 parameter whose last reading is older than the staleness age is retracted when
//! the event clock passes that age ([`VitalState::expire`]), whether or not the patient
//! sends anything else. Implausible values are dropped here, with the reason counted.

use super::rules::{milli, RuleSet, Signal};
use crate::model::Measurement;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};

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
}

#[derive(Default, Serialize, Deserialize)]
struct PatientState {
    vitals: HashMap<String, VitalTrack>,
    /// The current reading per signal key, with its band.
    emitted: HashMap<String, (i64, Reading)>,
    /// The staleness check this patient has pending, if any.
    stale_check: Option<i64>,
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
    patients: HashMap<String, PatientState>,
    #[serde(skip)]
    boundaries: HashMap<Signal, Vec<f64>>,
    #[serde(skip)]
    by_vital: HashMap<String, Vec<Signal>>,
    /// (event ms, patient): when a patient's NEWS2 parameters may go stale.
    stale_checks: std::collections::BTreeSet<(i64, String)>,
}

impl VitalState {
    /// Uses a (new) rule set: signals are re-banded and re-emitted where their band changed;
    /// signals no rule watches any more are retracted.
    pub fn set_rules(&mut self, rules: &RuleSet, out: &mut Vec<Change>) {
        self.boundaries = rules.boundaries();
        self.by_vital.clear();
        for s in self.boundaries.keys() {
            self.by_vital
                .entry(s.vital().to_string())
                .or_default()
                .push(s.clone());
        }
        let keys: HashMap<String, &Vec<f64>> = self
            .boundaries
            .iter()
            .map(|(s, b)| (signal_key(s), b))
            .collect();
        for (patient, st) in &mut self.patients {
            let mut gone = Vec::new();
            for (key, (old_band, r)) in st.emitted.iter_mut() {
                match keys.get(key) {
                    None => gone.push(key.clone()),
                    Some(b) => {
                        let nb = band(b, r.value as f64 / 1000.0);
                        if nb != *old_band {
                            *old_band = nb;
                            // Same reading, new band: retract and insert so that the
                            // judge sees it again (its rule changed).
                            out.push(Change::Reading(
                                (patient.clone(), key.clone()),
                                r.clone(),
                                -1,
                            ));
                            out.push(Change::Reading(
                                (patient.clone(), key.clone()),
                                r.clone(),
                                1,
                            ));
                        }
                    }
                }
            }
            for key in gone {
                if let Some((_, r)) = st.emitted.remove(&key) {
                    out.push(Change::Reading((patient.clone(), key), r, -1));
                }
            }
        }
    }

    /// The current reading of a patient's signal.
    pub fn reading(&self, patient: &str, key: &str) -> Option<&Reading> {
        self.patients.get(patient)?.emitted.get(key).map(|(_, r)| r)
    }

    /// The earliest pending staleness check.
    pub fn next_check(&self) -> Option<i64> {
        self.stale_checks.first().map(|(t, _)| *t)
    }

    /// Retracts, as of event time `now`, every NEWS2 parameter whose last reading is older
    /// than `stale_after`: a parameter that stopped coming stops counting (by its last
    /// reading, not its last band change). Changes are tagged with the patient.
    pub fn expire(&mut self, now: i64, stale_after: i64, out: &mut Vec<Change>) {
        while let Some((t, patient)) = self.stale_checks.first().cloned() {
            if t > now {
                break;
            }
            self.stale_checks.pop_first();
            let Some(st) = self.patients.get_mut(&patient) else {
                continue;
            };
            st.stale_check = None;
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
            let next = st
                .emitted
                .keys()
                .filter_map(|k| last_of(k))
                .filter(|at| *at > stale_before)
                .min();
            for k in stale {
                if let Some((_, r)) = st.emitted.remove(&k) {
                    out.push(Change::Reading((patient.clone(), k), r, -1));
                }
            }
            if let Some(at) = next {
                let due = at + stale_after;
                st.stale_check = Some(due);
                self.stale_checks.insert((due, patient));
            }
        }
    }

    /// Keeps the patients `keep` says, and takes those `other` holds that it says too.
    pub fn absorb(&mut self, other: VitalState, keep: &dyn Fn(&str) -> bool) {
        for (p, st) in other.patients {
            if keep(&p) {
                if let Some(due) = st.stale_check {
                    self.stale_checks.insert((due, p.clone()));
                }
                self.patients.insert(p, st);
            }
        }
    }

    /// Forgets a patient (silent beyond the horizon).
    pub fn forget(&mut self, patient: &str) {
        if let Some(st) = self.patients.remove(patient) {
            if let Some(due) = st.stale_check {
                self.stale_checks.remove(&(due, patient.to_string()));
            }
        }
    }

    /// The patients held, in order.
    pub fn patients(&self) -> Vec<String> {
        let mut p: Vec<String> = self.patients.keys().cloned().collect();
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
        let st = self.patients.entry(patient.clone()).or_default();
        for (name, raw) in &m.properties {
            let Some(vital) = vitals.of(&m.type_name, name) else {
                continue;
            };
            let Some(signals) = self.by_vital.get(vital) else {
                continue;
            };
            let Some(v) = rules.number(vital, raw) else {
                out.push(Change::Rejected {
                    vital: vital.to_string(),
                    reason: "not a number",
                });
                continue;
            };
            let track = st.vitals.entry(vital.to_string()).or_default();
            if let Some(q) = rules.quality.get(vital) {
                let reason = if q.min.is_some_and(|lo| v < lo) {
                    Some("below the plausible minimum")
                } else if q.max.is_some_and(|hi| v > hi) {
                    Some("above the plausible maximum")
                } else if let (Some(step), Some((t0, last))) = (q.max_step, track.last) {
                    // A jump no physiology makes between close readings: probe off, motion.
                    ((v - last).abs() > step && at - t0 < 60_000).then_some("implausible jump")
                } else {
                    None
                };
                if let Some(reason) = reason {
                    out.push(Change::Rejected {
                        vital: vital.to_string(),
                        reason,
                    });
                    continue;
                }
            }
            if track.last.is_some_and(|(t0, _)| at < t0) {
                // Late data (a device syncing its backlog): it belongs to the record, not to
                // the alerting picture of now.
                continue;
            }
            track.last = Some((at, v));
            for s in signals {
                let value = match s {
                    Signal::Value(_) => Some(v),
                    Signal::Smoothed { window_s, .. } => {
                        let since = at - *window_s as i64 * 1000;
                        let mut w: Vec<f64> = track
                            .history
                            .iter()
                            .filter(|(t, _)| *t >= since)
                            .map(|(_, x)| *x)
                            .chain(std::iter::once(v))
                            .collect();
                        w.sort_by(f64::total_cmp);
                        Some(w[w.len() / 2])
                    }
                    Signal::Change {
                        within_s, falling, ..
                    } => {
                        // The window includes this reading: alone in it, the change is 0.
                        let since = at - *within_s as i64 * 1000;
                        let h = &track.history;
                        let window = h
                            .iter()
                            .filter(|(t, _)| *t >= since)
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
                        let key = signal_key(s);
                        let b = track.baselines.entry(key).or_insert((v, 0.0, at, at));
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
                let key = signal_key(s);
                let Some(value) = value else { continue };
                let nb = band(&self.boundaries[s], value);
                if st.emitted.get(&key).is_some_and(|(b, _)| *b == nb) {
                    continue;
                }
                let r = Reading {
                    value: milli(value),
                    at_ms: at,
                    stamp_ms: stamp,
                    device: m.device_id.clone(),
                };
                if let Some((_, old)) = st.emitted.insert(key.clone(), (nb, r.clone())) {
                    out.push(Change::Reading((patient.clone(), key.clone()), old, -1));
                }
                out.push(Change::Reading((patient.clone(), key), r, 1));
            }
            let longest = signals
                .iter()
                .filter_map(|s| match s {
                    Signal::Change { within_s, .. } => Some(*within_s as i64 * 1000),
                    Signal::Smoothed { window_s, .. } => Some(*window_s as i64 * 1000),
                    _ => None,
                })
                .max();
            if let Some(keep) = longest {
                let smooth = signals
                    .iter()
                    .filter_map(|s| match s {
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
            if newest > 0 && st.stale_check.is_none() {
                let due = at + n.stale_after.as_millis().min(i64::MAX as u128 / 2) as i64;
                st.stale_check = Some(due);
                self.stale_checks.insert((due, patient.clone()));
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
            vec![(80.0, 1)],
            "85 is in the same band as 80"
        );
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
