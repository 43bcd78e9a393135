//! Judging a patient's current readings: every rule on its signal, and NEWS2 over its
//! parameters. What comes out are the conditions the lifecycle turns into alerts.

use super::lifecycle::Condition;
use super::news2::{self, Param};
use super::rules::{Level, News2Config, RuleRow, RuleSet};
use super::signals::{signal_key, Reading, VitalState};
use rustc_hash::FxHashMap as HashMap;
use std::time::Duration;

/// The rules of a rule set, by the signal they watch.
pub struct Judge {
    by_signal: HashMap<String, Vec<RuleRow>>,
    news2: Option<News2Judge>,
    rule_ids: Vec<String>,
}

struct News2Judge {
    cfg: News2Config,
    /// Signal key of each parameter.
    params: Vec<(Param, String)>,
    timing: (i64, i64, i64),
}

fn ms(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128 / 4) as i64
}

fn unit_suffix(u: &Option<String>) -> String {
    u.as_ref().map(|u| format!(" {u}")).unwrap_or_default()
}

/// The rule id NEWS2 alerts carry.
pub const NEWS2_RULE: &str = "news2";

/// What a rule says of a patient after a change.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// The condition its current readings show.
    Holds(Condition),
    /// Its vital's evidence stopped (a gap, a rejected or suspect reading): nothing is
    /// known, so nothing opens, escalates or resolves until valid readings resume.
    Suspended,
    /// No reading any more (gone stale, or no rule watches the signal).
    Gone,
}

impl Judge {
    /// The rules of `set`.
    pub fn new(set: &RuleSet) -> Self {
        let mut by_signal: HashMap<String, Vec<RuleRow>> = HashMap::default();
        for r in &set.rules {
            by_signal
                .entry(signal_key(&r.signal))
                .or_default()
                .push(RuleRow::from(r));
        }
        let news2 = set.news2.clone().map(|cfg| News2Judge {
            params: Param::ALL
                .iter()
                .filter_map(|p| cfg.vitals.get(p).map(|v| (*p, signal_key(&cfg.signal(v)))))
                .collect(),
            timing: (ms(cfg.sustained), ms(cfg.resolve_after), ms(cfg.suppress)),
            cfg,
        });
        let mut rule_ids: Vec<String> = set.rules.iter().map(|r| r.id.clone()).collect();
        if news2.is_some() {
            rule_ids.push(NEWS2_RULE.into());
        }
        Self {
            by_signal,
            news2,
            rule_ids,
        }
    }

    /// Whether `id` is a rule of this set (NEWS2 included).
    pub fn has_rule(&self, id: &str) -> bool {
        self.rule_ids.iter().any(|r| r == id)
    }

    /// How long a NEWS2 parameter counts after its last reading, ms (None: no NEWS2).
    pub fn stale_after(&self) -> Option<i64> {
        self.news2.as_ref().map(|n| ms(n.cfg.stale_after))
    }

    /// The verdicts on `patient` after its signals `touched` changed, per rule: the new
    /// condition, suspended where the rule's vital has no evidence now, gone where its
    /// signal has no current reading any more. In rule order, NEWS2 last.
    pub fn judge(
        &self,
        patient: &str,
        touched: &[String],
        state: &VitalState,
        out: &mut Vec<(String, Verdict)>,
    ) {
        for key in touched {
            let Some(rules) = self.by_signal.get(key) else {
                continue;
            };
            let reading = state.reading(patient, key);
            for rule in rules {
                let v = match reading {
                    Some(r) => Verdict::Holds(condition(rule, key, r)),
                    None if state.suspended(patient, &rule.vital) => Verdict::Suspended,
                    None => Verdict::Gone,
                };
                out.push((rule.id.clone(), v));
            }
        }
        if let Some(n) = &self.news2 {
            if touched.iter().any(|k| n.params.iter().any(|(_, p)| p == k)) {
                out.push((NEWS2_RULE.into(), n.assess(patient, state)));
            }
        }
    }

    /// Every signal key a rule or NEWS2 watches.
    pub fn signals(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.by_signal.keys().cloned().collect();
        if let Some(n) = &self.news2 {
            keys.extend(n.params.iter().map(|(_, k)| k.clone()));
        }
        keys.sort();
        keys.dedup();
        keys
    }
}

/// A reading judged by a rule.
fn condition(rule: &RuleRow, signal: &str, r: &Reading) -> Condition {
    let level = rule.level(r.value);
    let v = r.value as f64 / 1000.0;
    let threshold = match level {
        Level::Critical => rule.critical,
        _ => rule.warning.or(rule.critical),
    }
    .map(|t| t as f64 / 1000.0);
    let what = if signal.starts_with("change:") {
        "change "
    } else if signal.starts_with("baseline:") {
        "z-score "
    } else {
        ""
    };
    let detail = match threshold {
        Some(t) if level >= Level::Warning => format!(
            "{what}{v}{} ({} {t})",
            unit_suffix(&rule.unit),
            if rule.above {
                "at or above"
            } else {
                "at or below"
            }
        ),
        _ => format!("{what}{v}{}", unit_suffix(&rule.unit)),
    };
    Condition {
        level: level as u8,
        title: rule.title.clone(),
        vital: rule.vital.clone(),
        value: r.value,
        at_ms: r.at_ms,
        stamp_ms: r.stamp_ms,
        device: r.device.clone(),
        timing: rule.timing,
        detail,
        category: Default::default(),
        since_ms: None,
    }
}

impl News2Judge {
    /// NEWS2 from the patient's current parameter readings: gone when it has none,
    /// suspended while a parameter that scores has no evidence now (a lost probe's last
    /// median is not the patient's).
    fn assess(&self, patient: &str, state: &VitalState) -> Verdict {
        match self.score(patient, state) {
            None => Verdict::Gone,
            Some((_, suspect)) if suspect => Verdict::Suspended,
            Some((c, _)) => Verdict::Holds(c),
        }
    }

    /// The NEWS2 condition, and whether a scoring parameter is suspended.
    fn score(&self, patient: &str, state: &VitalState) -> Option<(Condition, bool)> {
        let readings: Vec<(Param, Option<&Reading>)> = Param::ALL
            .iter()
            .map(|p| {
                let r = self
                    .params
                    .iter()
                    .find(|(q, _)| q == p)
                    .and_then(|(_, key)| state.reading(patient, key));
                (*p, r)
            })
            .collect();
        let newest = readings
            .iter()
            .filter_map(|(_, r)| *r)
            .max_by_key(|r| (r.at_ms, r.stamp_ms))?;
        let values: Vec<(Param, Option<f64>)> = readings
            .iter()
            .map(|(p, r)| (*p, r.map(|r| r.value as f64 / 1000.0)))
            .collect();
        let cfg = &self.cfg;
        let scale2 = cfg.scale2_patients.iter().any(|p| p == patient);
        let a = news2::assess(&values, scale2);
        let suspect = a.scores.iter().any(|(p, s)| {
            *s > 0
                && cfg
                    .vitals
                    .get(p)
                    .is_some_and(|v| state.suspended(patient, v))
        });
        let level = if a.score >= cfg.emergency {
            Level::Critical
        } else if a.score >= cfg.urgent
            || (cfg.single_parameter && a.risk == news2::Risk::LowMedium)
        {
            Level::Warning
        } else {
            Level::Normal
        };
        let scores: Vec<String> = a
            .scores
            .iter()
            .filter(|(_, s)| *s > 0)
            .map(|(p, s)| format!("{} {s}", p.name()))
            .collect();
        let missing: Vec<&str> = a.missing.iter().map(|p| p.name()).collect();
        let detail = format!(
            "NEWS2 {} ({:?} risk{}{}{})",
            a.score,
            a.risk,
            if scores.is_empty() { "" } else { ": " },
            scores.join(", "),
            if missing.is_empty() {
                String::new()
            } else {
                format!("; missing or stale: {}", missing.join(", "))
            }
        );
        let c = Condition {
            level: level as u8,
            title: "NEWS2".into(),
            vital: NEWS2_RULE.into(),
            value: i64::from(a.score) * 1000,
            at_ms: newest.at_ms,
            stamp_ms: newest.stamp_ms,
            device: newest.device.clone(),
            timing: self.timing,
            detail,
            category: Default::default(),
            since_ms: None,
        };
        Some((c, suspect))
    }
}
