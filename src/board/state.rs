//! The ward board's views, kept in event time: the latest value of each vital per patient
//! with a minute-by-minute trend, NEWS2 from those values, open alerts and their history, and
//! the latest dead letters. Pure state: the dataflow feeds it (`dataflow::board_feed`), the
//! web pages read snapshots of it.
//!
//! Every view is a function of the updates, not of their arrival order: a value replaces
//! the latest only when its event time is later, a trend bucket keeps its latest reading,
//! and an alert's record is the event with the latest time (the lifecycle's order on ties).
//! The same input therefore shows the same board whatever the worker count or speed.

use crate::anomaly::lifecycle::{Alert, Category};
use crate::anomaly::news2::{self, Param};
use crate::anomaly::rules::Severity;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, VecDeque};

/// Trend buckets kept per vital: four hours of one-minute buckets.
pub const TREND_MINUTES: usize = 240;
/// A value is shown as stale once older (event time, behind the board's clock) than this
/// many of its vital's usual intervals...
pub const STALE_INTERVALS: i64 = 3;
/// ...and at least this: a 1 Hz SpO2 is stale after 30 s, a cuff pressure taken every 15
/// minutes after 45.
pub const STALE_MIN_MS: i64 = 30_000;
/// Before a vital's cadence is known (one reading so far): stale after this.
pub const STALE_UNKNOWN_MS: i64 = 120_000;
/// NEWS2 counts a parameter only while its value is this fresh (the rules' default).
pub const NEWS2_FRESH_MS: i64 = 15 * 60_000;
/// Alert events kept in the history.
pub const HISTORY: usize = 500;
/// Dead letters kept for the job page.
pub const DEAD_LETTERS: usize = 20;
/// Bytes of a dead letter's payload kept for the job page.
pub const PAYLOAD_BYTES: usize = 4096;

/// One update of the board's views, as the dataflow gathers them to the serving worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum BoardUpdate {
    /// A measured value of one vital.
    Reading(Reading),
    /// An alert event as the job emitted it.
    Alert(BoardAlert),
    /// A message refused, for the job page.
    DeadLetter(DeadLetterView),
}

/// A measured value of one vital.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    /// Patient identifier.
    pub patient: String,
    /// Device identifier.
    pub device: String,
    /// The vital's canonical key (its code, as rules name it).
    pub vital: String,
    /// What a clinician calls it ("SpO2").
    pub label: String,
    /// The value.
    pub value: f64,
    /// Event time, ms.
    pub at_ms: i64,
}

/// An alert event, as the board shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BoardAlert {
    /// The episode's id.
    pub id: String,
    /// Patient identifier.
    pub patient: String,
    /// Device identifier.
    pub device: String,
    /// Rule id.
    pub rule: String,
    /// The rule's title.
    pub title: String,
    /// Warning or critical.
    pub severity: Severity,
    /// Physiological or technical.
    pub category: Category,
    /// `open`, `escalated`, `resolved`, `acknowledged`, `silenced`.
    pub state: String,
    /// When the condition began, RFC 3339.
    pub since: String,
    /// This event's time, RFC 3339.
    pub at: String,
    /// Event time of this event, ms.
    pub at_ms: i64,
    /// The alert's text.
    pub text: String,
    /// Who acknowledged or silenced it (those events only).
    #[serde(default)]
    pub by: Option<String>,
    /// Their note.
    #[serde(default)]
    pub note: Option<String>,
    /// Silenced until, RFC 3339.
    #[serde(default)]
    pub until: Option<String>,
    /// When alerting emitted it (wall clock, µs): the board's and the page's latency.
    #[serde(default)]
    pub emitted_us: i64,
}

impl From<&Alert> for BoardAlert {
    fn from(a: &Alert) -> Self {
        let state = serde_json::to_value(a.state)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default();
        BoardAlert {
            id: a.id.clone(),
            patient: a.patient.clone(),
            device: a.device.clone(),
            rule: a.rule.clone(),
            title: a.title.clone(),
            severity: a.severity,
            category: a.category,
            state,
            since: a.since.clone(),
            at: a.at.clone(),
            at_ms: chrono::DateTime::parse_from_rfc3339(&a.at).map_or(0, |t| t.timestamp_millis()),
            text: a.text.clone(),
            by: a.by.clone(),
            note: a.note.clone(),
            until: a.until.clone(),
            emitted_us: chrono::Utc::now().timestamp_micros(),
        }
    }
}

/// A refused message, as the job page lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetterView {
    /// The stage that refused it.
    pub stage: String,
    /// Why.
    pub reason: String,
    /// Topic (or file), partition and offset (or line).
    pub position: String,
    /// When it was refused (wall clock, ms): the job page's "latest".
    pub at_ms: i64,
    /// The first [`PAYLOAD_BYTES`] of the message: shown only on request.
    pub payload: String,
}

#[derive(Debug, Default)]
struct Vital {
    seen: bool,
    label: String,
    value: f64,
    at_ms: i64,
    /// The interval between its last two readings, ms: how often it is measured.
    interval_ms: i64,
    /// (minute of event time, latest value in it, its time), oldest first.
    trend: VecDeque<(i64, f32, i64)>,
}

impl Vital {
    fn apply(&mut self, r: &Reading) {
        if !self.seen || r.at_ms >= self.at_ms {
            if self.seen && r.at_ms > self.at_ms {
                self.interval_ms = r.at_ms - self.at_ms;
            }
            self.seen = true;
            self.value = r.value;
            self.at_ms = r.at_ms;
            self.label.clone_from(&r.label);
        }
        let minute = r.at_ms.div_euclid(60_000);
        let pos = self.trend.partition_point(|(m, _, _)| *m < minute);
        match self.trend.get_mut(pos) {
            Some(b) if b.0 == minute => {
                if r.at_ms >= b.2 {
                    *b = (minute, r.value as f32, r.at_ms);
                }
            }
            _ => {
                if pos == 0 && self.trend.len() >= TREND_MINUTES {
                    return; // older than all that is kept
                }
                self.trend.insert(pos, (minute, r.value as f32, r.at_ms));
                while self.trend.len() > TREND_MINUTES {
                    self.trend.pop_front();
                }
            }
        }
    }
}

impl Vital {
    fn stale_after(&self) -> i64 {
        if self.interval_ms == 0 {
            return STALE_UNKNOWN_MS;
        }
        (self.interval_ms.saturating_mul(STALE_INTERVALS)).max(STALE_MIN_MS)
    }
}

/// The order vitals are listed in on a tile, as on a monitor: heart rate, SpO2,
/// respiration, blood pressure, temperature; others after, by code.
fn chart_order(code: &str) -> usize {
    const ORDER: [&str; 9] = [
        "8867-4", "8889-8", "59408-5", "2708-6", "9279-1", "8480-6", "8462-4", "8478-0", "8310-5",
    ];
    ORDER.iter().position(|c| *c == code).unwrap_or(ORDER.len())
}

#[derive(Debug, Default)]
struct Patient {
    device: String,
    vitals: BTreeMap<String, Vital>,
}

/// The board's views.
#[derive(Debug, Default)]
pub struct BoardState {
    patients: BTreeMap<String, Patient>,
    /// Each alert episode's events, as far as the views need them.
    episodes: HashMap<String, Episode>,
    /// The latest alert events, newest last.
    history: VecDeque<BoardAlert>,
    dead_counts: BTreeMap<(String, String), u64>,
    dead_latest: VecDeque<DeadLetterView>,
    /// The latest event time seen: the board's clock, against which ages are shown.
    clock_ms: i64,
}

/// The first line of a reason, without the values it may quote: the dead-letter counts'
/// key (the full reason stays on each listed dead letter).
fn reason_kind(reason: &str) -> String {
    let line = reason.lines().next().unwrap_or("");
    let cut = line.find([':', '"', '\'']).unwrap_or(line.len());
    line[..cut].trim().chars().take(80).collect()
}

impl BoardState {
    /// Applies one update.
    pub fn apply(&mut self, u: BoardUpdate) {
        match u {
            BoardUpdate::Reading(r) => {
                self.clock_ms = self.clock_ms.max(r.at_ms);
                let p = self.patients.entry(r.patient.clone()).or_default();
                p.device.clone_from(&r.device);
                p.vitals.entry(r.vital.clone()).or_default().apply(&r);
            }
            BoardUpdate::Alert(a) => {
                self.clock_ms = self.clock_ms.max(a.at_ms);
                self.patients.entry(a.patient.clone()).or_default();
                let at = self.history.partition_point(|h| h.at_ms <= a.at_ms);
                if at > 0 || self.history.len() < HISTORY {
                    self.history.insert(at, a.clone());
                    while self.history.len() > HISTORY {
                        self.history.pop_front();
                    }
                }
                self.episodes.entry(a.id.clone()).or_default().apply(a);
            }
            BoardUpdate::DeadLetter(d) => {
                *self
                    .dead_counts
                    .entry((d.stage.clone(), reason_kind(&d.reason)))
                    .or_default() += 1;
                self.dead_latest.push_back(d);
                while self.dead_latest.len() > DEAD_LETTERS {
                    self.dead_latest.pop_front();
                }
            }
        }
    }

    /// The board's clock: the latest event time seen, ms.
    pub fn clock_ms(&self) -> i64 {
        self.clock_ms
    }

    /// Patients on the board.
    pub fn patients(&self) -> usize {
        self.patients.len()
    }

    /// The open alerts, most severe then newest first.
    pub fn open_alerts(&self) -> Vec<BoardAlert> {
        let mut v: Vec<BoardAlert> = self.episodes.values().filter_map(Episode::open).collect();
        v.sort_by(|a, b| {
            (b.category == Category::Physiological)
                .cmp(&(a.category == Category::Physiological))
                .then(b.severity.cmp(&a.severity))
                .then(b.at_ms.cmp(&a.at_ms))
                .then(a.id.cmp(&b.id))
        });
        v
    }

    /// The board as the page draws it. `key` gives each patient its opaque tile key (no
    /// identifier goes into a URL); `trend_minutes` how much of each trend to include.
    pub fn snapshot(&self, key: &dyn Fn(&str) -> String, trend_minutes: usize) -> Value {
        let open = self.open_alerts();
        let worst = worst_of(&open);
        let patients: Vec<Value> = self
            .patients
            .iter()
            .map(|(id, p)| {
                self.patient_json(id, p, worst.get(id.as_str()).copied(), key, trend_minutes)
            })
            .collect();
        let open: Vec<Value> = open.iter().map(|a| alert_json(a, key)).collect();
        let history: Vec<Value> = self
            .history
            .iter()
            .rev()
            .take(100)
            .map(|a| alert_json(a, key))
            .collect();
        json!({
            "clock": self.clock_ms,
            "patients": patients,
            "alerts": open,
            "history": history,
        })
    }

    /// One patient's tile, found by its key, with `trend_minutes` of trends (a drill-down):
    /// only that patient's JSON is built.
    pub fn patient(
        &self,
        key: &dyn Fn(&str) -> String,
        wanted: &str,
        trend_minutes: usize,
    ) -> Option<Value> {
        let (id, p) = self.patients.iter().find(|(id, _)| key(id) == wanted)?;
        let open = self.open_alerts();
        let worst = worst_of(&open);
        let mut v = self.patient_json(id, p, worst.get(id.as_str()).copied(), key, trend_minutes);
        v["clock"] = json!(self.clock_ms);
        Some(v)
    }

    fn patient_json(
        &self,
        id: &str,
        p: &Patient,
        worst: Option<&BoardAlert>,
        key: &dyn Fn(&str) -> String,
        trend_minutes: usize,
    ) -> Value {
        let now = self.clock_ms;
        let first_minute = now.div_euclid(60_000) - trend_minutes as i64 + 1;
        let mut ordered: Vec<(&String, &Vital)> = p.vitals.iter().filter(|(_, v)| v.seen).collect();
        ordered.sort_by_key(|(k, _)| (chart_order(k), k.as_str()));
        let vitals: Vec<Value> = ordered
            .into_iter()
            .map(|(k, v)| {
                let trend: Vec<Value> = v
                    .trend
                    .iter()
                    .filter(|(m, _, _)| *m >= first_minute)
                    .map(|(m, x, _)| json!([m * 60, round(*x as f64)]))
                    .collect();
                json!({
                    "key": k,
                    "label": v.label,
                    "value": round(v.value),
                    "at": v.at_ms,
                    "ageSeconds": (now - v.at_ms).max(0) / 1000,
                    "stale": now - v.at_ms > v.stale_after(),
                    "trend": trend,
                })
            })
            .collect();
        json!({
            "key": key(id),
            "patient": id,
            "device": p.device,
            "vitals": vitals,
            "news2": self.news2(p, now),
            "alert": worst.map(|a| alert_json(a, key)),
        })
    }

    fn news2(&self, p: &Patient, now: i64) -> Value {
        let values: Vec<(Param, Option<f64>)> = Param::ALL
            .iter()
            .map(|&param| {
                let v = p
                    .vitals
                    .get(param.default_code())
                    .filter(|v| v.seen && now - v.at_ms <= NEWS2_FRESH_MS)
                    .map(|v| v.value);
                (param, v)
            })
            .collect();
        if values.iter().all(|(_, v)| v.is_none()) {
            return Value::Null;
        }
        let a = news2::assess(&values, false);
        json!({
            "score": a.score,
            "risk": a.risk,
            "scoring": a.scores.iter().filter(|(_, s)| *s > 0)
                .map(|(p, s)| json!({"parameter": p.name(), "score": s}))
                .collect::<Vec<_>>(),
            "missing": a.missing.iter().map(|p| p.name()).collect::<Vec<_>>(),
        })
    }

    /// Dead letters per (stage, reason) and the latest few, payloads left out unless asked.
    pub fn dead_letters(&self, payloads: bool) -> Value {
        let counts: Vec<Value> = self
            .dead_counts
            .iter()
            .map(|((stage, reason), n)| json!({"stage": stage, "reason": reason, "count": n}))
            .collect();
        let latest: Vec<Value> = self
            .dead_latest
            .iter()
            .rev()
            .enumerate()
            .map(|(i, d)| {
                let mut v = json!({
                    "index": i, "stage": d.stage, "reason": d.reason,
                    "position": d.position, "at": d.at_ms,
                });
                if payloads {
                    v["payload"] = json!(d.payload);
                }
                v
            })
            .collect();
        json!({"counts": counts, "latest": latest})
    }
}

/// What the views keep of an alert episode: its latest lifecycle event, and the latest
/// acknowledgement and silence, each chosen by event time whatever the order they came in.
#[derive(Debug, Default)]
struct Episode {
    main: Option<BoardAlert>,
    ack: Option<BoardAlert>,
    silence: Option<BoardAlert>,
}

/// Among events of one time, the later in an episode's life wins.
fn stage(state: &str) -> u8 {
    match state {
        "open" => 0,
        "escalated" => 1,
        _ => 2,
    }
}

impl Episode {
    fn apply(&mut self, a: BoardAlert) {
        let slot = match a.state.as_str() {
            "acknowledged" => &mut self.ack,
            "silenced" => &mut self.silence,
            _ => &mut self.main,
        };
        let later = slot
            .as_ref()
            .is_none_or(|o| (a.at_ms, stage(&a.state)) >= (o.at_ms, stage(&o.state)));
        if later {
            *slot = Some(a);
        }
    }

    /// The alert as it stands, when open: who acknowledged or silenced it, and until when.
    fn open(&self) -> Option<BoardAlert> {
        let main = self.main.as_ref().filter(|m| m.state != "resolved")?;
        let mut a = main.clone();
        let seen = [&self.ack, &self.silence]
            .into_iter()
            .flatten()
            .max_by_key(|x| x.at_ms);
        if let Some(s) = seen {
            a.by.clone_from(&s.by);
        }
        a.note = [&self.ack, &self.silence]
            .into_iter()
            .flatten()
            .filter(|x| x.note.is_some())
            .max_by_key(|x| x.at_ms)
            .and_then(|x| x.note.clone());
        if self.ack.is_some() {
            a.state = "acknowledged".into();
        }
        if let Some(s) = &self.silence {
            a.until.clone_from(&s.until);
        }
        Some(a)
    }
}

/// Each patient's worst open alert.
fn worst_of(open: &[BoardAlert]) -> HashMap<&str, &BoardAlert> {
    let mut worst: HashMap<&str, &BoardAlert> = HashMap::new();
    for a in open {
        let e = worst.entry(a.patient.as_str()).or_insert(a);
        if rank(a) > rank(e) {
            *e = a;
        }
    }
    worst
}

fn rank(a: &BoardAlert) -> (bool, Severity, i64) {
    (a.category == Category::Physiological, a.severity, a.at_ms)
}

fn round(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// An alert as the page shows it: with its patient's tile key.
pub fn alert_json(a: &BoardAlert, key: &dyn Fn(&str) -> String) -> Value {
    let mut v = serde_json::to_value(a).unwrap_or(Value::Null);
    v["key"] = json!(key(&a.patient));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(patient: &str, vital: &str, value: f64, at_ms: i64) -> BoardUpdate {
        BoardUpdate::Reading(Reading {
            patient: patient.into(),
            device: format!("dev-{patient}"),
            vital: vital.into(),
            label: vital.into(),
            value,
            at_ms,
        })
    }

    fn alert(id: &str, state: &str, severity: Severity, at_ms: i64) -> BoardUpdate {
        BoardUpdate::Alert(BoardAlert {
            id: id.into(),
            patient: "p1".into(),
            device: "d1".into(),
            rule: "r".into(),
            title: "SpO2 low".into(),
            severity,
            category: Category::Physiological,
            state: state.into(),
            since: String::new(),
            at: String::new(),
            at_ms,
            text: "t".into(),
            by: (state == "acknowledged").then(|| "nurse".into()),
            note: None,
            until: None,
            emitted_us: 0,
        })
    }

    fn snap(s: &BoardState) -> Value {
        s.snapshot(&|p: &str| format!("k-{p}"), 60)
    }

    #[test]
    fn views_do_not_depend_on_arrival_order() {
        let updates = [
            reading("p1", "59408-5", 97.0, 60_000),
            reading("p1", "59408-5", 88.0, 121_000),
            reading("p1", "59408-5", 90.0, 61_000),
            alert("a", "open", Severity::Warning, 100_000),
            alert("a", "escalated", Severity::Critical, 110_000),
            alert("a", "acknowledged", Severity::Critical, 115_000),
        ];
        let mut forward = BoardState::default();
        let mut backward = BoardState::default();
        for u in updates.iter().cloned() {
            forward.apply(u);
        }
        for u in updates.iter().rev().cloned() {
            backward.apply(u);
        }
        let (f, b) = (snap(&forward), snap(&backward));
        assert_eq!(f["patients"], b["patients"]);
        let spo2 = &f["patients"][0]["vitals"][0];
        assert_eq!(spo2["value"], 88.0);
        // Minute 1 keeps its latest reading (90 at 61 s), minute 2 its own.
        assert_eq!(spo2["trend"], json!([[60, 90.0], [120, 88.0]]));
        assert_eq!(f["alerts"][0]["severity"], "critical");
        assert_eq!(f["alerts"][0]["state"], "acknowledged");
        assert_eq!(f["alerts"][0]["by"], "nurse");
    }

    #[test]
    fn resolved_alerts_leave_the_open_list_and_values_go_stale() {
        let mut s = BoardState::default();
        s.apply(reading("p1", "8867-4", 80.0, 0));
        s.apply(reading("p1", "8867-4", 80.0, 1_000));
        s.apply(alert("a", "open", Severity::Warning, 1_000));
        assert_eq!(snap(&s)["patients"][0]["alert"]["id"], "a");
        assert_eq!(snap(&s)["patients"][0]["vitals"][0]["stale"], false);
        s.apply(alert("a", "resolved", Severity::Warning, 31_500));
        let v = snap(&s);
        assert_eq!(v["alerts"], json!([]));
        assert!(v["patients"][0]["alert"].is_null());
        assert_eq!(
            v["patients"][0]["vitals"][0]["stale"], true,
            "1 s readings: stale after 30 s"
        );
        assert_eq!(v["history"].as_array().map(Vec::len), Some(2));
    }

    #[test]
    fn news2_names_the_parameters_that_score_and_ignores_stale_ones() {
        let mut s = BoardState::default();
        s.apply(reading("p1", "59408-5", 90.0, 0)); // SpO2 90: 3
        s.apply(reading("p1", "8867-4", 120.0, 20 * 60_000)); // pulse 120: 2
        let n = &snap(&s)["patients"][0]["news2"];
        assert_eq!(n["score"], 2, "SpO2 is 20 min old: not counted");
        assert_eq!(n["scoring"], json!([{"parameter": "pulse", "score": 2}]));
    }

    #[test]
    fn a_drill_down_finds_its_patient_by_key_alone() {
        let mut s = BoardState::default();
        s.apply(reading("p1", "8867-4", 80.0, 0));
        s.apply(reading("p2", "8867-4", 90.0, 0));
        let key = |p: &str| format!("k-{p}");
        let p = s.patient(&key, "k-p2", TREND_MINUTES).expect("found");
        assert_eq!(p["patient"], "p2");
        assert_eq!(p["vitals"][0]["value"], 90.0);
        assert!(
            s.patient(&key, "p2", TREND_MINUTES).is_none(),
            "keys, not ids"
        );
    }

    #[test]
    fn trends_keep_four_hours() {
        let mut s = BoardState::default();
        for m in 0..300 {
            s.apply(reading("p1", "8867-4", m as f64, m * 60_000));
        }
        let v = s.snapshot(&|p: &str| p.to_string(), TREND_MINUTES);
        let trend = v["patients"][0]["vitals"][0]["trend"].as_array().cloned();
        assert_eq!(trend.map(|t| t.len()), Some(TREND_MINUTES));
    }

    #[test]
    fn dead_letters_count_by_reason_kind_and_hide_payloads() {
        let mut s = BoardState::default();
        for v in ["x", "y"] {
            s.apply(BoardUpdate::DeadLetter(DeadLetterView {
                stage: "normalize".into(),
                reason: format!("value \"{v}\" is not a number"),
                position: "vitals/0/1".into(),
                at_ms: 0,
                payload: "{}".into(),
            }));
        }
        let d = s.dead_letters(false);
        assert_eq!(d["counts"][0]["count"], 2);
        assert_eq!(d["counts"][0]["reason"], "value");
        assert!(d["latest"][0].get("payload").is_none());
        assert_eq!(s.dead_letters(true)["latest"][0]["payload"], "{}");
    }
}
