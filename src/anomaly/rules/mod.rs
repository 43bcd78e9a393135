//! Alert rules as data (`templates/alerts/*.toml`): thresholds with severity bands,
//! rates of change, deviation from the patient's own baseline, and NEWS2.
//!
//! A rule names its vital by a code of the FHIR mapping (LOINC `8867-4`, a component's code
//! such as `8480-6`) or by the measurement type name (`heartRate`, or `bloodPressure.systolic`
//! for a component), so one rule set works for every device mapping that codes its vitals.
//! Every problem is reported with the file, line and column.

//!
//! This module holds the rules as alerting uses them; `parse` reads and checks a rules file,
//! `vitals` names the vitals a FHIR mapping produces.

mod parse;
mod vitals;

pub use parse::{load, parse, RuleErrors};
pub use vitals::Vitals;

use super::news2::Param;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// How bad a condition is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Look soon.
    Warning,
    /// Look now.
    Critical,
}

/// Where a value stands against a rule: the order matters (higher is worse).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Level {
    /// Normal, beyond the hysteresis margin.
    Normal,
    /// Back inside the threshold but within the hysteresis margin: neither opens nor resolves.
    Margin,
    /// Beyond the warning threshold.
    Warning,
    /// Beyond the critical threshold.
    Critical,
}

impl Level {
    /// The severity an alert at this level has.
    pub fn severity(self) -> Option<Severity> {
        match self {
            Level::Warning => Some(Severity::Warning),
            Level::Critical => Some(Severity::Critical),
            _ => None,
        }
    }
}

/// What a rule watches: a vital as measured, or something derived from it per patient.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Signal {
    /// The vital's value.
    Value(String),
    /// The value minus the highest (`drop`) or lowest (`rise`) value within the window.
    Change {
        /// The vital.
        vital: String,
        /// Window, seconds.
        within_s: u64,
        /// True: against the highest value (falls); false: the lowest (rises).
        falling: bool,
    },
    /// The median of the vital over the last `window_s` seconds: what NEWS2 scores, as a
    /// charted observation would be, so one noisy second does not change a patient's score.
    Smoothed {
        /// The vital.
        vital: String,
        /// Window, seconds.
        window_s: u64,
    },
    /// z-score against the patient's exponentially weighted mean and variance.
    Baseline {
        /// The vital.
        vital: String,
        /// Half-life of the weights, seconds.
        halflife_s: u64,
        /// Readings are not judged before this much history, seconds.
        warmup_s: u64,
    },
}

impl Signal {
    /// The vital the signal derives from.
    pub fn vital(&self) -> &str {
        match self {
            Signal::Value(v) => v,
            Signal::Change { vital, .. }
            | Signal::Baseline { vital, .. }
            | Signal::Smoothed { vital, .. } => vital,
        }
    }
}

/// How a rule judges its signal.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum Test {
    /// Alert when the signal is at or above the thresholds.
    Above {
        /// Warning threshold.
        warning: Option<f64>,
        /// Critical threshold.
        critical: Option<f64>,
    },
    /// Alert when the signal is at or below the thresholds.
    Below {
        /// Warning threshold.
        warning: Option<f64>,
        /// Critical threshold.
        critical: Option<f64>,
    },
}

/// One alert rule.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rule {
    /// Stable id (alert ids derive from it).
    pub id: String,
    /// What a clinician reads.
    pub title: String,
    /// The signal judged.
    pub signal: Signal,
    /// The judgement.
    pub test: Test,
    /// How far back inside a threshold a value must come before it counts as normal.
    pub hysteresis: f64,
    /// How long (event time) a condition must hold before it alerts.
    pub sustained: Duration,
    /// How long values must stay normal before an alert resolves.
    pub resolve_after: Duration,
    /// A resolved alert does not reopen at the same or a lower severity within this.
    pub suppress: Duration,
    /// Unit of the thresholds, when the rule states one.
    pub unit: Option<String>,
    /// The longest gap between two readings that still sustains a condition (None: the
    /// vital's own, or what the job observes).
    pub max_gap: Option<Duration>,
}

impl Rule {
    /// The level of a value.
    pub fn level(&self, v: f64) -> Level {
        RuleRow::from(self).level(milli(v))
    }

    /// Values at which [`Rule::level`] can change.
    pub fn boundaries(&self) -> Vec<f64> {
        let (w, c, sign) = match self.test {
            Test::Above { warning, critical } => (warning, critical, -1.0),
            Test::Below { warning, critical } => (warning, critical, 1.0),
        };
        let mut b: Vec<f64> = [w, c].into_iter().flatten().collect();
        if let Some(edge) = w.or(c) {
            b.push(edge + sign * self.hysteresis);
        }
        b
    }
}

/// A rule as alerting judges with it: thresholds in thousandths, so that it is
/// `Ord` and `Hash`, and a changed threshold compares unequal.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RuleRow {
    /// Rule id.
    pub id: String,
    /// Title.
    pub title: String,
    /// The vital its signal derives from.
    pub vital: String,
    /// Above (true) or below.
    pub above: bool,
    /// Warning threshold, thousandths.
    pub warning: Option<i64>,
    /// Critical threshold, thousandths.
    pub critical: Option<i64>,
    /// Hysteresis, thousandths.
    pub hysteresis: i64,
    /// Sustain, resolve and suppression times, ms.
    pub timing: (i64, i64, i64),
    /// Unit, for texts.
    pub unit: Option<String>,
}

impl RuleRow {
    /// The level of a value (thousandths).
    pub fn level(&self, v: i64) -> Level {
        let at_or = |t: Option<i64>| t.is_some_and(|t| if self.above { v >= t } else { v <= t });
        let edge = self.warning.or(self.critical).map(|t| {
            if self.above {
                t - self.hysteresis
            } else {
                t + self.hysteresis
            }
        });
        if at_or(self.critical) {
            Level::Critical
        } else if at_or(self.warning) {
            Level::Warning
        } else if at_or(edge) {
            Level::Margin
        } else {
            Level::Normal
        }
    }
}

impl From<&Rule> for RuleRow {
    fn from(r: &Rule) -> Self {
        let m = milli;
        let ms = |d: Duration| d.as_millis().min(i64::MAX as u128) as i64;
        let (above, warning, critical) = match r.test {
            Test::Above { warning, critical } => (true, warning, critical),
            Test::Below { warning, critical } => (false, warning, critical),
        };
        Self {
            id: r.id.clone(),
            title: r.title.clone(),
            vital: r.signal.vital().to_string(),
            above,
            warning: warning.map(m),
            critical: critical.map(m),
            hysteresis: m(r.hysteresis),
            timing: (ms(r.sustained), ms(r.resolve_after), ms(r.suppress)),
            unit: r.unit.clone(),
        }
    }
}

/// NEWS2 settings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct News2Config {
    /// Aggregate at which an urgent response (warning) is called.
    pub urgent: u8,
    /// Aggregate at which an emergency response (critical) is called.
    pub emergency: u8,
    /// Any single parameter scoring 3 alerts (warning).
    pub single_parameter: bool,
    /// A value older than this (event time, against the job's event clock) stops counting.
    pub stale_after: Duration,
    /// Parameters are scored on their median over this window.
    pub smoothing: Duration,
    /// Patients scored on SpO2 scale 2 (hypercapnic respiratory failure), by identifier.
    pub scale2_patients: Vec<String>,
    /// The vital each parameter is read from.
    pub vitals: BTreeMap<Param, String>,
    /// Sustain, resolve and suppression timings of NEWS2 alerts.
    pub sustained: Duration,
    /// See [`Rule::resolve_after`].
    pub resolve_after: Duration,
    /// See [`Rule::suppress`].
    pub suppress: Duration,
}

impl News2Config {
    /// The signal a parameter is scored on.
    pub fn signal(&self, vital: &str) -> Signal {
        Signal::Smoothed {
            vital: vital.to_string(),
            window_s: self.smoothing.as_secs().max(1),
        }
    }
}

/// Signal-quality limits of a vital: values outside are artifacts, not physiology.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Quality {
    /// Lowest plausible value.
    pub min: Option<f64>,
    /// Highest plausible value.
    pub max: Option<f64>,
    /// Largest plausible change from the previous accepted reading, and from any accepted
    /// reading within [`Evidence::suspect_within`] before it.
    pub max_step: Option<f64>,
    /// The longest gap between two readings that still sustains a condition.
    pub max_gap: Option<Duration>,
}

/// What counts as evidence that a condition holds: a condition is sustained only by valid
/// readings, with no gap between two of them longer than the vital's `max_gap`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Evidence {
    /// Per vital, the `max_gap` the file sets (on the vital in `[quality]`, or the
    /// smallest of the rules on it, or `[defaults] max_gap`), ms; other vitals use what
    /// the job observes.
    pub max_gap_ms: BTreeMap<String, i64>,
    /// `[defaults] max_gap`, ms, when the file sets one.
    pub default_max_gap_ms: Option<i64>,
    /// A reading further than `max_step` from any accepted reading this recent is suspect.
    pub suspect_within_ms: i64,
}

/// Observed `max_gap`: this many times the patient's usual interval for the vital...
pub const GAP_INTERVALS: i64 = 4;
/// ...at least this (ms)...
pub const GAP_MIN_MS: i64 = 5_000;
/// ...at most this (ms), which is also the gap allowed before an interval is known.
pub const GAP_MAX_MS: i64 = 3_600_000;

impl Evidence {
    /// The `max_gap` of `vital`, ms, for a patient whose usual interval for it is `usual`.
    pub fn max_gap(&self, vital: &str, usual: Option<i64>) -> i64 {
        if let Some(g) = self
            .max_gap_ms
            .get(vital)
            .or(self.default_max_gap_ms.as_ref())
        {
            return *g;
        }
        usual.map_or(GAP_MAX_MS, |u| {
            u.saturating_mul(GAP_INTERVALS)
                .clamp(GAP_MIN_MS, GAP_MAX_MS)
        })
    }
}

impl Default for Evidence {
    fn default() -> Self {
        Self {
            max_gap_ms: BTreeMap::new(),
            default_max_gap_ms: None,
            suspect_within_ms: 10_000,
        }
    }
}

/// Technical alerts (IEC 60601-1-8): about the signal, not the patient.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Technical {
    /// False: none are raised (readings are still judged as evidence).
    pub enabled: bool,
    /// A continuous vital with no valid reading this long raises "signal lost" (or
    /// "monitor silent" when its device sent nothing at all), ms.
    pub signal_lost_after_ms: i64,
    /// Valid readings back this long resolve it, ms.
    pub resolve_after_ms: i64,
    /// A resolved technical alert does not reopen within this, ms.
    pub suppress_ms: i64,
    /// Devices' own flags that a sensor is off, by (measurement type, value name).
    pub flags: BTreeMap<(String, String), Flag>,
}

/// A value a device sends to say a sensor is off (a pulse oximeter's "probe off").
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Flag {
    /// What a clinician reads while it is on ("SpO2 probe off").
    pub title: String,
    /// Vitals whose readings mean nothing while it is on.
    pub suspends: Vec<String>,
    /// Texts that mean on (lower case), beside true / yes / on and non-zero numbers.
    pub on_words: Vec<String>,
}

impl Flag {
    /// Whether a value of the flag says the sensor is off.
    pub fn is_on(&self, raw: &str) -> bool {
        let t = raw.trim().to_lowercase();
        self.on_words.contains(&t) || numeric(&t).is_some_and(|v| v != 0.0)
    }
}

impl Technical {
    /// Sustain, resolve and suppression times, as the lifecycle takes them (ms): the
    /// condition is raised once it has held `signal_lost_after` already.
    pub fn timing(&self) -> (i64, i64, i64) {
        (0, self.resolve_after_ms, self.suppress_ms)
    }

    /// A vital read at least this often (ms) is continuous: its loss is a technical alert.
    pub fn continuous_within_ms(&self) -> i64 {
        self.signal_lost_after_ms / 3
    }
}

impl Default for Technical {
    fn default() -> Self {
        Self {
            enabled: true,
            signal_lost_after_ms: 30_000,
            resolve_after_ms: 10_000,
            suppress_ms: 0,
            flags: BTreeMap::new(),
        }
    }
}

/// A validated rule set.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RuleSet {
    /// The file it came from.
    pub file: String,
    /// Rules, in file order.
    pub rules: Vec<Rule>,
    /// NEWS2, when enabled.
    pub news2: Option<News2Config>,
    /// Plausibility limits by vital.
    pub quality: BTreeMap<String, Quality>,
    /// Per vital, the number a text reading stands for (lower-case text), for devices that
    /// chart words: oxygen delivery `RA` / `NC`, a consciousness scale.
    pub text_values: BTreeMap<String, BTreeMap<String, f64>>,
    /// What sustains a condition.
    pub evidence: Evidence,
    /// Technical alerts.
    pub technical: Technical,
}

impl RuleSet {
    /// The number a reading of `vital` stands for: a number, a text the file maps, or a
    /// charting word understood everywhere (booleans, ACVPU).
    pub fn number(&self, vital: &str, raw: &str) -> Option<f64> {
        let t = raw.trim();
        if let Ok(f) = t.parse::<f64>() {
            return f.is_finite().then_some(f);
        }
        if let Some(n) = self
            .text_values
            .get(vital)
            .and_then(|m| m.get(&t.to_lowercase()))
        {
            return Some(*n);
        }
        numeric(t)
    }

    /// Level-change points of every rule on a signal, sorted: readings are passed on only
    /// when they cross one.
    pub fn boundaries(&self) -> HashMap<Signal, Vec<f64>> {
        let mut out: HashMap<Signal, Vec<f64>> = HashMap::new();
        for r in &self.rules {
            out.entry(r.signal.clone())
                .or_default()
                .extend(r.boundaries());
        }
        if let Some(n) = &self.news2 {
            for (p, vital) in &n.vitals {
                out.entry(n.signal(vital))
                    .or_default()
                    .extend_from_slice(super::news2::boundaries(*p));
            }
        }
        for b in out.values_mut() {
            b.sort_by(f64::total_cmp);
            b.dedup();
        }
        out
    }
}

/// Values travel as thousandths: readings and rules compare exactly, and are `Ord` and `Hash`.
pub fn milli(v: f64) -> i64 {
    (v * 1000.0).round() as i64
}

/// Parses a measured value: numbers, booleans (supplemental oxygen), ACVPU letters.
pub fn numeric(v: &str) -> Option<f64> {
    let t = v.trim();
    if let Ok(f) = t.parse::<f64>() {
        return f.is_finite().then_some(f);
    }
    match t.to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" => Some(1.0),
        "false" | "no" | "off" => Some(0.0),
        _ => super::news2::acvpu(t),
    }
}
