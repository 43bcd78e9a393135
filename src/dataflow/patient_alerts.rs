//! The alerting state of one worker: the vital signals, rule judgement and alert lifecycle
//! of the patients routed to it, driven in event-time order as the watermark advances
//! (the operator around it is `alerting`).

use super::time_queue::TimeQueue;
use crate::anomaly::ack;
use crate::anomaly::judge::{Judge, Verdict};
use crate::anomaly::lifecycle::{Alert, Category, Condition, Lifecycle};
use crate::anomaly::rules::{RuleSet, Vitals};
use crate::anomaly::signals::{Change, TechnicalChange, VitalState};
use crate::metrics::Metrics;
use crate::model::Measurement;
use rustc_hash::FxHashMap as HashMap;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The highest offset taken in, per (topic, partition), sorted by both. Found by borrowed
/// names: a reading's own topic `Arc` is never cloned to look its partition up (its
/// counter is written by every worker), with one path for any number of partitions.
#[derive(Clone, Default)]
struct Offsets(Vec<((Arc<str>, i32), i64)>);

impl Offsets {
    fn find(&self, topic: &str, partition: i32) -> Result<usize, usize> {
        (self.0).binary_search_by(|((t, p), _)| (&**t, *p).cmp(&(topic, partition)))
    }

    /// The offset taken in of a partition.
    fn get(&self, topic: &str, partition: i32) -> Option<i64> {
        self.find(topic, partition).ok().map(|i| self.0[i].1)
    }

    /// Raises a partition's offset to `offset` (adds the partition when new).
    fn raise(&mut self, topic: &Arc<str>, partition: i32, offset: i64) {
        match self.find(topic, partition) {
            Ok(i) => self.0[i].1 = self.0[i].1.max(offset),
            Err(i) => self.0.insert(i, ((topic.clone(), partition), offset)),
        }
    }

    /// As (topic, partition, offset), in order.
    fn rows(&self) -> Vec<(String, i32, i64)> {
        self.0
            .iter()
            .map(|((t, p), o)| (t.to_string(), *p, *o))
            .collect()
    }

    /// From checkpoint rows (the highest of a partition named twice).
    fn of_rows(rows: &[(String, i32, i64)]) -> Self {
        let mut o = Self::default();
        for (t, p, v) in rows {
            o.raise(&Arc::from(t.as_str()), *p, *v);
        }
        o
    }
}

/// Where two readings of one event time stand in event-time order: by fields that are the
/// same in every run of the same input (patient, device, type, source position), then by
/// arrival (only measurements of one message can tie that far, and they arrive in message
/// order). Compared field by field as far as they differ, borrowing: building both keys
/// per comparison (or cloning them once) was 4 % of the job.
fn same_time_order(a: &Measurement, aa: u64, b: &Measurement, ab: u64) -> std::cmp::Ordering {
    fn source(m: &Measurement) -> (&str, i32, i64) {
        (m.source.as_ref()).map_or(("", 0, 0), |s| (&*s.topic, s.partition, s.offset))
    }
    fn patient(m: &Measurement) -> &str {
        m.patient_id.as_deref().unwrap_or_default()
    }
    (patient(a).cmp(patient(b)))
        .then_with(|| a.device_id.cmp(&b.device_id))
        .then_with(|| a.type_name.cmp(&b.type_name))
        .then_with(|| source(a).cmp(&source(b)))
        .then(aa.cmp(&ab))
}

/// A reading of the event time being applied, with what orders it among the others.
struct Queued {
    /// The patient's [`super::route`] hash: readings of one second order by it first, an
    /// integer comparison, and by [`same_time_order`] within a patient. Sorting a worker's
    /// second of readings by identifier strings was 4.6 % of the job. Any order the input
    /// alone decides keeps outputs identical; patients are independent of each other.
    patient: u64,
    arrival: u64,
    m: Arc<Measurement>,
}

impl Queued {
    /// The [`PatientAlerts::waiting`] key of `m`, the `arrival`-th reading taken in.
    fn key(m: &Measurement, arrival: u64) -> (i64, u64, u64) {
        let patient = super::route(m.patient_id.as_deref().unwrap_or_default());
        (m.occurrence_time.timestamp_millis(), patient, arrival)
    }

    /// Event-time order among readings of one time.
    fn order(&self, other: &Self) -> std::cmp::Ordering {
        self.patient
            .cmp(&other.patient)
            .then_with(|| same_time_order(&self.m, self.arrival, &other.m, other.arrival))
    }
}

/// The per-worker alerting state: vital signals, rule judgement and lifecycle of the
/// patients routed here, driven in event-time order.
pub struct PatientAlerts {
    vitals: VitalState,
    /// The vitals rules may name, by the mapping's types and values.
    names: Arc<Vitals>,
    judge: Judge,
    lifecycle: Lifecycle,
    rules: Arc<RuleSet>,
    /// Measurements waiting for the watermark, least (event ms, patient hash, arrival)
    /// ([`Queued::key`]) first: a key that has a second's readings in [`Queued::order`]
    /// but for ties within a patient. Those of the earliest time are taken together into
    /// `bucket` and applied in that order.
    waiting: TimeQueue<Arc<Measurement>>,
    /// The readings of one event time being applied, in reverse [`Queued::order`].
    bucket: Vec<Queued>,
    arrivals: u64,
    /// Event time everything up to which has been applied.
    applied: Option<i64>,
    /// Event time being applied up to, while [`Self::run`] has not got there.
    target: Option<i64>,
    changes: Vec<Change>,
    judged: Vec<(String, Verdict)>,
    metrics: Arc<Metrics>,
    /// Highest offset taken in per source partition (what a checkpoint covers).
    seen: Offsets,
    /// Whether anything changed since the last checkpoint.
    dirty: bool,
    /// Per patient resumed from a checkpoint, what that checkpoint had taken in: replayed
    /// readings up to there are in the state already.
    resumed: HashMap<String, Arc<Offsets>>,
    /// A patient silent this long in event time (the job's horizon) is forgotten, unless an
    /// alert of theirs is open: state follows the patients monitored, not every patient
    /// ever seen.
    idle_after: i64,
    /// Per patient, the event time of their last reading applied.
    last: HashMap<String, i64>,
    /// (deadline, patient), one per patient in `last`: when the patient is looked at to be
    /// forgotten. A deadline is set from the patient's first reading and moved to the last
    /// reading's (+ idle_after) only when it comes due, so readings do not touch this set.
    idle: std::collections::BTreeSet<(i64, String)>,
    /// Acknowledgement and silence events taken in, not yet given out.
    acks: Vec<Alert>,
}

impl PatientAlerts {
    /// Empty state under `rules`, naming vitals by `names`.
    pub fn new(rules: Arc<RuleSet>, names: Arc<Vitals>, metrics: Arc<Metrics>) -> Self {
        let mut vitals = VitalState::default();
        let mut changes = Vec::new();
        vitals.set_rules(&rules, &mut changes);
        Self {
            vitals,
            names,
            judge: Judge::new(&rules),
            lifecycle: Lifecycle::default(),
            rules,
            waiting: TimeQueue::default(),
            bucket: Vec::new(),
            arrivals: 0,
            applied: None,
            target: None,
            changes,
            judged: Vec::new(),
            metrics,
            seen: Offsets::default(),
            dirty: false,
            resumed: HashMap::default(),
            idle_after: i64::MAX,
            last: HashMap::default(),
            idle: Default::default(),
            acks: Vec::new(),
        }
    }

    /// Forgets patients silent for `after` of event time (see [`PatientAlerts::idle`]).
    pub fn forget_idle_after(mut self, after: std::time::Duration) -> Self {
        self.idle_after = after.as_millis().min(i64::MAX as u128 / 4) as i64;
        self
    }

    /// Patients held (vital state or alert tracks).
    pub fn patients(&self) -> usize {
        self.last.len().max(self.vitals.len())
    }

    fn touched(&mut self, patient: &str, at: i64) {
        if self.idle_after == i64::MAX {
            return;
        }
        // A reading only moves `last`: the patient's entry in `idle` is moved when it comes
        // due (`run`), so a known patient's reading allocates nothing and touches no set.
        match self.last.get_mut(patient) {
            Some(l) => *l = (*l).max(at),
            None => {
                self.last.insert(patient.to_string(), at);
                self.idle
                    .insert((at.saturating_add(self.idle_after), patient.to_string()));
            }
        }
    }

    /// The patient's deadline passed: their technical alerts resolve (monitoring ended),
    /// and they are forgotten, or, with a physiological alert open, looked at again one
    /// idle period later.
    fn forget(&mut self, due: i64, patient: String, out: &mut Vec<Alert>) {
        if self.lifecycle.end_monitoring(&patient, due, out) {
            self.idle
                .insert((due.saturating_add(self.idle_after), patient));
            return;
        }
        self.last.remove(&patient);
        self.vitals.forget(&patient);
        self.lifecycle.forget(&patient);
        self.resumed.remove(&patient);
    }

    /// Whether anything changed since the last call: an unchanged state needs no new
    /// checkpoint.
    pub fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }

    /// Event time everything up to which has been applied.
    pub fn applied(&self) -> Option<i64> {
        self.applied
    }

    /// What a checkpoint of this state holds.
    pub fn checkpoint<'a>(
        &'a self,
        source: &'a str,
        run: u64,
        peers: usize,
        alerts_topic: BTreeMap<i32, i64>,
    ) -> super::alert_state::CheckpointRef<'a> {
        super::alert_state::CheckpointRef {
            source,
            run,
            peers,
            alerts_topic,
            seen: self.seen.rows(),
            applied: self.applied,
            vitals: &self.vitals,
            lifecycle: &self.lifecycle,
            waiting: self
                .bucket
                .iter()
                .rev()
                .map(|q| super::alert_state::Row(&q.m))
                .chain(self.waiting_in_order().map(|m| super::alert_state::Row(m)))
                .collect(),
            resumed: self.resumed_groups(),
            last: self.last.iter().map(|(p, t)| (p.as_str(), *t)).collect(),
        }
    }

    /// The patients resumed from a checkpoint whose readings this run has not yet replayed
    /// past: a later restart must skip those readings for them as this one does.
    fn resumed_groups(&self) -> Vec<super::alert_state::Resumed> {
        let mut groups: HashMap<*const Offsets, (&Arc<Offsets>, Vec<String>)> = HashMap::default();
        for (p, o) in &self.resumed {
            let ahead =
                o.0.iter()
                    .any(|((t, p), off)| self.seen.get(t, *p).is_none_or(|s| s < *off));
            if ahead {
                groups
                    .entry(Arc::as_ptr(o))
                    .or_insert_with(|| (o, Vec::new()))
                    .1
                    .push(p.clone());
            }
        }
        let mut out: Vec<super::alert_state::Resumed> = groups
            .into_values()
            .map(|(o, mut patients)| {
                patients.sort();
                super::alert_state::Resumed {
                    patients,
                    seen: o.rows(),
                }
            })
            .collect();
        out.sort_by(|a, b| a.patients.cmp(&b.patients));
        out
    }

    /// Resumes the patients `owns` says from checkpoints (of any worker count; newest run
    /// first).
    pub fn resume(
        &mut self,
        checkpoints: Vec<super::alert_state::Checkpoint>,
        owns: &dyn Fn(&str) -> bool,
    ) {
        let mut taken: std::collections::HashSet<String> = Default::default();
        for c in checkpoints {
            let mut mine: std::collections::HashSet<String> = c
                .vitals
                .patients()
                .into_iter()
                .chain(c.lifecycle.patients())
                .chain(
                    c.waiting
                        .iter()
                        .filter_map(|m| m.patient_id.as_deref().map(str::to_string)),
                )
                .filter(|p| owns(p) && !taken.contains(p))
                .collect();
            let seen: Arc<Offsets> = Arc::new(Offsets::of_rows(&c.seen));
            // Patients that checkpoint had itself resumed and not replayed past yet: what
            // their state holds reaches further than the checkpoint's own offsets.
            let mut further: HashMap<&str, Arc<Offsets>> = HashMap::default();
            for g in &c.resumed {
                let mut o = (*seen).clone();
                for (t, p, v) in &g.seen {
                    o.raise(&Arc::from(t.as_str()), *p, *v);
                }
                let o = Arc::new(o);
                for p in &g.patients {
                    further.insert(p.as_str(), o.clone());
                }
            }
            for p in &mine {
                let o = further.get(p.as_str()).unwrap_or(&seen).clone();
                self.resumed.insert(p.clone(), o);
            }
            let keep = |p: &str| mine.contains(p);
            self.vitals.absorb(c.vitals, &keep);
            self.lifecycle.absorb(c.lifecycle, &keep);
            for (p, t) in c.last {
                if keep(&p) {
                    self.touched(&p, t);
                }
            }
            for m in c.waiting {
                if m.patient_id.as_deref().is_some_and(keep) {
                    self.arrivals += 1;
                    self.waiting
                        .push(Queued::key(&m, self.arrivals), Arc::new(m));
                }
            }
            // `applied` is not taken: the patients a checkpoint holds get no reading at or
            // before it again (those after it are after it in event time too, the partition
            // clocks never going back), and the patients it does not hold (their worker had
            // not checkpointed) are replayed from the start and must not be judged late.
            taken.extend(mine.drain());
        }
        let mut ignored = Vec::new();
        self.vitals.set_rules(&self.rules, &mut ignored);
    }

    /// Takes a measurement to apply once the watermark passes it; one the watermark has
    /// passed already is counted as late and dropped.
    pub fn add(&mut self, m: Arc<Measurement>) {
        if let Some(s) = &m.source {
            if let Some(r) = m
                .patient_id
                .as_ref()
                .and_then(|p| self.resumed.get(p.as_str()))
            {
                if r.get(&s.topic, s.partition).is_some_and(|o| s.offset <= o) {
                    // Replayed after a restart: the checkpoint holds it already.
                    return;
                }
            }
            self.seen.raise(&s.topic, s.partition, s.offset);
        }
        let behind = self
            .applied
            .is_some_and(|w| m.occurrence_time.timestamp_millis() <= w);
        if behind && ack::is_ack(&m) {
            // Read after the watermark passed its time: recorded at once all the same (its
            // event is built from the acknowledgement alone, see `anomaly::ack`), never
            // dropped as a late reading is.
            self.acks.extend(ack::alert_of(&m));
            self.dirty = true;
            return;
        }
        if behind {
            Metrics::add(&self.metrics.alert_inputs_late, 1);
            return;
        }
        self.arrivals += 1;
        self.waiting.push(Queued::key(&m, self.arrivals), m);
        self.dirty = true;
    }

    /// The alerts open now, as their latest events would show them.
    pub fn standing(&self) -> Vec<Alert> {
        self.lifecycle.standing()
    }

    /// The acknowledgement and silence events taken in since the last call.
    pub fn take_acks(&mut self) -> std::vec::Drain<'_, Alert> {
        self.acks.drain(..)
    }

    /// The readings in [`Self::waiting`], least key first (the queue's buckets wait
    /// unsorted; a checkpoint lists them in this order).
    fn waiting_in_order(&self) -> impl Iterator<Item = &Arc<Measurement>> {
        let mut w: Vec<_> = self.waiting.iter().collect();
        w.sort_unstable_by_key(|(k, _)| *k);
        w.into_iter().map(|(_, m)| m)
    }

    /// Measurements waiting for the watermark.
    pub fn waiting(&self) -> usize {
        self.waiting.len() + self.bucket.len()
    }

    /// Uses new rules from event time `applied` on: every held signal is judged again, and
    /// the alerts of removed rules resolve.
    pub fn set_rules(&mut self, rules: Arc<RuleSet>, out: &mut Vec<Alert>) {
        self.dirty = true;
        let now = self.applied.unwrap_or(i64::MIN);
        self.vitals.set_rules(&rules, &mut self.changes);
        self.changes.clear();
        self.judge = Judge::new(&rules);
        self.rules = rules;
        let signals = self.judge.signals();
        for patient in self.vitals.patients() {
            self.judge_signals(&patient, &signals, now, out);
        }
        let judge = &self.judge;
        self.lifecycle
            .clear_where(|rule| !judge.has_rule(rule), now, out);
    }

    /// Takes the waiting readings of the earliest event time, in reverse [`Queued::order`].
    fn fill_bucket(&mut self) {
        let bucket = &mut self.bucket;
        self.waiting.take_earliest(|(_, patient, arrival), m| {
            bucket.push(Queued {
                patient,
                arrival,
                m,
            })
        });
        // In patient order already: only a patient's few readings are sorted (sorting the
        // whole second was 3 % of a replay's instructions, `valgrind --tool=callgrind`).
        for run in self.bucket.chunk_by_mut(|a, b| a.patient == b.patient) {
            if run.len() > 1 {
                run.sort_unstable_by(|a, b| a.order(b));
            }
        }
        self.bucket.reverse();
    }

    /// Applies everything waiting at or before `to`, firing timers at their deadlines in
    /// between; alerts go to `out` (all at once: the operator runs on fuel instead).
    #[cfg(test)]
    pub fn advance(&mut self, to: i64, out: &mut Vec<Alert>) {
        self.aim(to);
        let mut unlimited = usize::MAX;
        self.run(&mut unlimited, out);
    }

    /// Sets the event time [`Self::run`] applies up to.
    pub fn aim(&mut self, to: i64) {
        self.target = Some(self.target.map_or(to, |t| t.max(to)));
    }

    /// Whether [`Self::run`] has not yet applied everything up to its aim.
    #[cfg(test)]
    pub fn running(&self) -> bool {
        self.target.is_some()
    }

    /// Applies what [`Self::aim`] asks for, one reading, timer or forgotten patient per unit
    /// of `fuel`: false when the fuel ran out first (call again, with nothing else between,
    /// to go on exactly where it stopped). A caller with many readings due at once (the
    /// watermark jumping) spreads them over activations, so the worker's other operators
    /// (reading and normalizing the input) run in between.
    pub fn run(&mut self, fuel: &mut usize, out: &mut Vec<Alert>) -> bool {
        let Some(to) = self.target else {
            return true;
        };
        let stale_after = self.judge.stale_after();
        loop {
            let next_m = match self.bucket.last() {
                Some(q) => Some(q.m.occurrence_time.timestamp_millis()),
                None => self.waiting.next_time(),
            };
            let next_t = [self.lifecycle.next_timer(), self.vitals.next_check()]
                .into_iter()
                .flatten()
                .min();
            // Forgetting comes last at its time: everything due then happens first.
            if let Some(due) = self.idle.first().map(|e| e.0) {
                let first = [next_m, next_t].into_iter().flatten().all(|t| due < t);
                if due <= to && first {
                    if *fuel == 0 {
                        return false;
                    }
                    *fuel -= 1;
                    let (due, patient) = self.idle.pop_first().expect("the first entry");
                    let deadline = self
                        .last
                        .get(&patient)
                        .map(|l| l.saturating_add(self.idle_after));
                    if let Some(later) = deadline.filter(|d| *d > due) {
                        // Readings came after this deadline was set: it moves to theirs.
                        self.idle.insert((later, patient));
                        continue;
                    }
                    self.dirty = true;
                    self.forget(due, patient, out);
                    continue;
                }
            }
            match (next_m.filter(|t| *t <= to), next_t.filter(|t| *t <= to)) {
                (None, None) => break,
                // Timers due at a measurement's time fire first: the condition held until then.
                (m, Some(t)) if m.is_none_or(|m| t <= m) => {
                    if *fuel == 0 {
                        return false;
                    }
                    *fuel -= 1;
                    self.dirty = true;
                    self.vitals
                        .check(t, stale_after, &self.rules, &self.names, &mut self.changes);
                    self.apply_changes(t, out);
                    self.lifecycle.advance(t, out);
                }
                _ => {
                    if *fuel == 0 {
                        return false;
                    }
                    *fuel -= 1;
                    self.dirty = true;
                    if self.bucket.is_empty() {
                        self.fill_bucket();
                    }
                    let m = self.bucket.pop().expect("a reading").m;
                    if ack::is_ack(&m) {
                        // Recorded in event-time order among the patient's events.
                        out.extend(ack::alert_of(&m));
                        continue;
                    }
                    let at = m.occurrence_time.timestamp_millis();
                    if let Some(p) = &m.patient_id {
                        self.touched(p, at);
                    }
                    self.vitals
                        .add(&m, &self.names, &self.rules, &mut self.changes);
                    self.apply_changes(at, out);
                }
            }
        }
        // The clock alone moving (an idle ward) changes nothing worth a checkpoint.
        self.applied = Some(self.applied.map_or(to, |a| a.max(to)));
        self.target = None;
        true
    }

    /// Judges the signals the last changes touched, patient by patient, at `now`.
    fn apply_changes(&mut self, now: i64, out: &mut Vec<Alert>) {
        if self.changes.is_empty() {
            return;
        }
        let mut touched: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut rejected: HashMap<(String, &'static str), u64> = HashMap::default();
        let mut technical: Vec<TechnicalChange> = Vec::new();
        for c in self.changes.drain(..) {
            match c {
                Change::Reading((patient, key), _, _) | Change::Touch((patient, key)) => {
                    let keys = touched.entry(patient).or_default();
                    if !keys.contains(&key) {
                        keys.push(key);
                    }
                }
                Change::Technical(t) => technical.push(t),
                Change::Rejected { vital, reason } => {
                    *rejected.entry((vital, reason)).or_default() += 1;
                }
            }
        }
        if !rejected.is_empty() {
            let n: u64 = rejected.values().sum();
            Metrics::add(&self.metrics.alert_inputs_rejected, n);
            if let Ok(mut r) = self.metrics.alert_rejections.lock() {
                for (k, v) in rejected {
                    *r.entry(k).or_default() += v;
                }
            }
        }
        for (patient, keys) in touched {
            self.judge_signals(&patient, &keys, now, out);
        }
        // In the order the vital state found them (patients and vitals in order).
        let timing = self.rules.technical.timing();
        for t in technical {
            let c = Condition {
                level: if t.on { 2 } else { 0 },
                title: t.title,
                vital: t.vital,
                value: crate::anomaly::rules::milli(t.last.1),
                at_ms: t.last.0,
                stamp_ms: 0,
                device: t.device,
                timing,
                detail: t.detail,
                category: Category::Technical,
                since_ms: t.on.then_some(t.since),
            };
            self.lifecycle.set(&t.patient, &t.rule, c, now, out);
        }
    }

    /// Judges `signals` of `patient` and hands the conditions to the lifecycle at `now`.
    fn judge_signals(&mut self, patient: &str, signals: &[String], now: i64, out: &mut Vec<Alert>) {
        self.judged.clear();
        self.judge
            .judge(patient, signals, &self.vitals, &mut self.judged);
        for (rule, v) in self.judged.drain(..) {
            match v {
                Verdict::Holds(c) => self.lifecycle.set(patient, &rule, c, now, out),
                Verdict::Suspended => self.lifecycle.suspend(patient, &rule, now, out),
                Verdict::Gone => self.lifecycle.clear(patient, &rule, now, out),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::FhirMapping;

    fn state(horizon: std::time::Duration) -> PatientAlerts {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let fhir = FhirMapping::from_text(
            &std::fs::read_to_string(root.join("templates/bedside-monitor/fhirmapping.json"))
                .expect("mapping"),
            None,
        )
        .expect("fhir");
        let vitals = Arc::new(Vitals::new(&fhir));
        let rules =
            crate::anomaly::rules::load(&root.join("templates/alerts/adult-vitals.toml"), &vitals)
                .expect("rules");
        PatientAlerts::new(Arc::new(rules), vitals, Arc::new(Metrics::default()))
            .forget_idle_after(horizon)
    }

    fn reading(patient: &str, at_ms: i64, spo2: f64) -> Measurement {
        Measurement {
            type_name: "spo2".into(),
            device_id: format!("D-{patient}").into(),
            patient_id: Some(patient.into()),
            encounter_id: None,
            correlation_id: None,
            occurrence_time: chrono::DateTime::from_timestamp_millis(at_ms).expect("time"),
            properties: vec![("spo2".into(), spo2.to_string().into())],
            received_ms: None,
            source: None,
        }
    }

    #[test]
    fn a_second_is_taken_in_the_order_sorting_all_of_it_gives() {
        // Patients, devices and types mixed, several readings per patient, arriving in no
        // order: the bucket is what sorting every reading by `Queued::order` gives.
        let mut s = state(std::time::Duration::from_secs(3600));
        let t = 1_800_000_000_000;
        let mut k = 0u64;
        for round in 0..3 {
            for p in [7, 2, 9, 4, 2, 0, 7, 5] {
                for (ty, dev) in [("spo2", "A"), ("heartRate", "B"), ("spo2", "B")] {
                    k = k
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let mut m = reading(&format!("P-{p}"), t, f64::from(90 + round));
                    m.type_name = ty.into();
                    m.device_id = format!("{dev}-{}", k % 3).into();
                    s.add(Arc::new(m));
                }
            }
            s.add(Arc::new(reading("P-3", t + 1000, 95.0)));
        }
        let mut expected: Vec<Queued> = s
            .waiting
            .iter()
            .filter(|(k, _)| k.0 == t)
            .map(|(k, m)| Queued {
                patient: k.1,
                arrival: k.2,
                m: m.clone(),
            })
            .collect();
        expected.sort_unstable_by(|b, a| a.order(b));
        s.fill_bucket();
        let ids = |q: &[Queued]| q.iter().map(|q| q.arrival).collect::<Vec<_>>();
        assert_eq!(ids(&s.bucket), ids(&expected));
        assert_eq!(
            s.bucket.len(),
            72,
            "the second's readings, not the next second's"
        );
    }

    #[test]
    fn offsets_keep_the_highest_per_partition_in_order_whatever_the_arrival() {
        let (a, b): (Arc<str>, Arc<str>) = ("vitals".into(), "acks".into());
        let mut o = Offsets::default();
        // Another `Arc` of the same name (another worker's source) is the same partition.
        for (t, p, v) in [
            (&a, 2, 7),
            (&b, 0, 3),
            (&a, 0, 9),
            (&a, 2, 5),
            (&"vitals".into(), 2, 8),
        ] {
            o.raise(t, p, v);
        }
        let rows = o.rows();
        assert_eq!(
            rows,
            [
                ("acks".to_string(), 0, 3),
                ("vitals".to_string(), 0, 9),
                ("vitals".to_string(), 2, 8)
            ]
        );
        assert_eq!((o.get("vitals", 2), o.get("vitals", 1)), (Some(8), None));
        // Read back from a checkpoint's rows, a partition named twice keeps its highest.
        let mut twice = rows.clone();
        twice.push(("vitals".to_string(), 0, 4));
        assert_eq!(Offsets::of_rows(&twice).rows(), rows);
    }

    #[test]
    fn a_patient_is_forgotten_an_idle_period_after_their_last_reading_not_their_first() {
        let (hour, t0) = (3_600_000, 1_800_000_000_000);
        let mut s = state(std::time::Duration::from_secs(3600));
        let mut out = Vec::new();
        s.add(Arc::new(reading("P-1", t0, 97.0)));
        s.add(Arc::new(reading("P-1", t0 + hour / 2, 97.0)));
        // Past the deadline the first reading set, not the one the last reading sets.
        s.advance(t0 + hour + 60_000, &mut out);
        assert_eq!(s.patients(), 1, "still monitored: {out:?}");
        s.advance(t0 + hour + hour / 2 - 1, &mut out);
        assert_eq!(
            s.patients(),
            1,
            "an idle period after the last reading not yet passed"
        );
        s.advance(t0 + 2 * hour, &mut out);
        assert_eq!(
            s.patients(),
            0,
            "forgotten an idle period after the last reading"
        );
    }

    #[test]
    fn patients_silent_beyond_the_horizon_are_forgotten_unless_an_alert_is_open() {
        let hour = 3_600_000;
        let mut s = state(std::time::Duration::from_secs(3600));
        let mut out = Vec::new();
        let mut most = 0;
        // 60,000 distinct patients over 48 hours of event time, each sending for a minute.
        let t0 = 1_800_000_000_000;
        for i in 0..60_000i64 {
            let at = t0 + i * (48 * hour / 60_000);
            let p = format!("P-{i}");
            s.add(Arc::new(reading(&p, at, 97.0)));
            s.add(Arc::new(reading(&p, at + 60_000, 97.0)));
            if i % 100 == 0 {
                s.advance(at, &mut out);
                most = most.max(s.patients());
            }
        }
        // About an hour of patients (1,250) plus the batch between advances: bounded, not
        // every patient ever seen.
        assert!(most < 2_000, "at most {most} patients held");
        // A patient with an open alert is kept past the horizon.
        let t1 = t0 + 49 * hour;
        for k in 0..120 {
            s.add(Arc::new(reading("P-hypoxic", t1 + k * 1000, 84.0)));
        }
        s.advance(t1 + 120_000, &mut out);
        assert!(s.lifecycle.has_open("P-hypoxic"), "hypoxia open: {out:?}");
        s.advance(t1 + 3 * hour, &mut out);
        assert!(
            s.lifecycle.has_open("P-hypoxic") || s.last.contains_key("P-hypoxic"),
            "an open alert keeps its patient"
        );
        s.advance(t1 + 60 * hour, &mut out);
        assert!(
            s.patients() <= 1,
            "everyone else forgotten: {}",
            s.patients()
        );
    }

    #[test]
    fn running_on_little_fuel_gives_what_advancing_at_once_gives() {
        // Episodes, recoveries, silences and forgetting, for a few patients, with the
        // watermark jumping over all of it at once.
        let feed = |s: &mut PatientAlerts| {
            let t0 = 1_800_000_000_000;
            for p in 0..6i64 {
                for k in 0..600i64 {
                    let dip = (100..300).contains(&k) && p % 2 == 0;
                    let gap = (400..470).contains(&k) && p == 3;
                    if !gap {
                        let spo2 = if dip { 84.0 } else { 97.0 };
                        s.add(Arc::new(reading(&format!("P-{p}"), t0 + k * 1000, spo2)));
                    }
                }
            }
            t0 + 3 * 3_600_000
        };
        let mut at_once = state(std::time::Duration::from_secs(3600));
        let to = feed(&mut at_once);
        let mut expected = Vec::new();
        at_once.advance(to, &mut expected);
        assert!(
            expected.len() >= 6,
            "episodes opened and closed: {expected:?}"
        );
        let mut stepped = state(std::time::Duration::from_secs(3600));
        feed(&mut stepped);
        stepped.aim(to);
        let (mut got, mut runs) = (Vec::new(), 0);
        loop {
            runs += 1;
            let mut fuel = 7;
            if stepped.run(&mut fuel, &mut got) {
                break;
            }
            assert_eq!(fuel, 0, "stopped only for lack of fuel");
            assert!(stepped.running());
        }
        assert!(runs > 100, "{runs} runs");
        assert!(!stepped.running());
        assert_eq!(got, expected);
        assert_eq!(stepped.applied(), at_once.applied());
        assert_eq!(stepped.patients(), at_once.patients());
    }
}
