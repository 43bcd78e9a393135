//! The alerting branch of the dataflow.
//!
//! ```text
//! measurements ─exchange by patient─► vital state (keyed timely state) ──ticks──────────┐
//!                                        │ readings: band crossings, ±1                  │
//!                                        ▼                                               ▼
//! rules file ─► rules (worker 0, ±1) ─► join by signal ─► conditions ─exchange─► lifecycle ─► alerts
//!                                        │                                  by patient  ▲
//!                                        └─► NEWS2: reduce per patient ─────────────────┘
//! ```
//!
//! Differential holds what changes slowly: the latest reading per (patient, signal), the
//! rules, per-patient NEWS2. A changed rule re-evaluates only the readings of its signal.

use super::{route, Shared};
use crate::anomaly::lifecycle::{Alert, Condition, Lifecycle};
use crate::anomaly::news2::{self, Param};
use crate::anomaly::rules::{Level, RuleRow, RuleSet};
use crate::anomaly::signals::{signal_key, Change, Reading, VitalState};
use crate::metrics::Metrics;
use crate::model::Measurement;
use differential_dataflow::operators::{Join, Reduce};
use differential_dataflow::{AsCollection, VecCollection};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::operator::source;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;
use timely::dataflow::{Scope, Stream};

type Readings<G> = VecCollection<G, ((String, String), Reading)>;
/// Conditions by (patient, rule).
type Conditions<G> = VecCollection<G, ((String, String), Condition)>;
/// A patient's clock: (patient, event ms, Kafka ms).
type Tick = (String, i64, i64);

fn now_ms() -> u64 {
    chrono::Utc::now().timestamp_millis().max(0) as u64
}

/// Rows of the rules collection: (signal key, rule).
fn rule_rows(rules: &RuleSet) -> Vec<(String, RuleRow)> {
    rules
        .rules
        .iter()
        .map(|r| (signal_key(&r.signal), RuleRow::from(r)))
        .collect()
}

/// The rules collection: worker 0 inserts the rules and, on every reload, retracts the old
/// rows and inserts the new.
fn rules_input<G: Scope<Timestamp = u64>>(
    scope: &G,
    shared: Arc<Shared>,
    active: bool,
) -> VecCollection<G, (String, RuleRow)> {
    let rules = shared.rules.clone().expect("alerting has rules");
    source(scope, "Rules", move |cap, info| {
        let activator = scope.activator_for(info.address);
        let mut cap = Some(cap);
        let mut seen = 0u64;
        let mut rows: Vec<(String, RuleRow)> = Vec::new();
        move |output| {
            let Some(c) = cap.as_mut() else { return };
            // The rules are final once this process reads nothing more: without that the
            // dataflow would never complete.
            if !active || shared.inputs_done() || shared.failed() {
                cap = None;
                return;
            }
            let now = now_ms().max(*c.time());
            c.downgrade(&now);
            let (version, set) = rules.get();
            if version != seen {
                let fresh = rule_rows(&set);
                let mut s = output.session(&*c);
                for r in rows.drain(..) {
                    s.give((r, now, -1isize));
                }
                for r in &fresh {
                    s.give((r.clone(), now, 1isize));
                }
                rows = fresh;
                seen = version;
            }
            activator.activate_after(Duration::from_millis(20));
        }
    })
    .as_collection()
}

/// Per-patient vital state: readings for the collections, clock ticks for the lifecycle.
fn vital_state<G: Scope<Timestamp = u64>>(
    measurements: &Stream<G, Measurement>,
    shared: Arc<Shared>,
) -> (Readings<G>, Stream<G, Tick>) {
    let rules = shared.rules.clone().expect("alerting has rules");
    let exchange = Exchange::new(|m: &Measurement| route(m.patient_id.as_deref().unwrap_or("")));
    let changes: Stream<G, Change> = measurements.unary(exchange, "VitalState", move |_, _| {
        let mut state = VitalState::default();
        let mut seen = 0u64;
        let mut out = Vec::new();
        move |input, output| {
            input.for_each_time(|time, data| {
                let (version, set) = rules.get();
                if version != seen {
                    state.set_rules(&set, &mut out);
                    seen = version;
                }
                for batch in data {
                    for m in batch.iter() {
                        state.add(m, rules.vitals(), &set, &mut out);
                    }
                }
                let mut rejected = 0;
                for c in &out {
                    if let Change::Rejected { vital, reason } = c {
                        rejected += 1;
                        if let Ok(mut r) = shared.metrics.alert_rejections.lock() {
                            *r.entry((vital.clone(), *reason)).or_default() += 1;
                        }
                    }
                }
                Metrics::add(&shared.metrics.alert_inputs_rejected, rejected);
                output.session(&time).give_iterator(out.drain(..));
            });
        }
    });
    let readings = changes
        .unary(Pipeline, "Readings", |_, _| {
            move |input, output| {
                input.for_each_time(|time, data| {
                    let t = *time.time();
                    let mut s = output.session(&time);
                    for batch in data {
                        for c in batch.drain(..) {
                            if let Change::Reading(k, r, d) = c {
                                s.give(((k, r), t, d));
                            }
                        }
                    }
                });
            }
        })
        .as_collection();
    let ticks = changes.unary(Pipeline, "Ticks", |_, _| {
        move |input, output| {
            input.for_each_time(|time, data| {
                let mut s = output.session(&time);
                for batch in data {
                    for c in batch.drain(..) {
                        if let Change::Tick {
                            patient,
                            at_ms,
                            stamp_ms,
                        } = c
                        {
                            s.give((patient, at_ms, stamp_ms));
                        }
                    }
                }
            });
        }
    });
    (readings, ticks)
}

fn unit_suffix(u: &Option<String>) -> String {
    u.as_ref().map(|u| format!(" {u}")).unwrap_or_default()
}

/// Rule conditions: each reading judged by each rule on its signal.
fn conditions<G: Scope<Timestamp = u64>>(
    readings: &Readings<G>,
    rules: &VecCollection<G, (String, RuleRow)>,
) -> Conditions<G> {
    readings
        .map(|((patient, signal), r)| (signal, (patient, r)))
        .join_map(rules, |signal, (patient, r), rule| {
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
            (
                (patient.clone(), rule.id.clone()),
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
                },
            )
        })
}

/// NEWS2 per patient, from its parameters' current readings.
fn news2_conditions<G: Scope<Timestamp = u64>>(
    readings: &Readings<G>,
    rules: &RuleSet,
) -> Option<Conditions<G>> {
    let cfg = rules.news2.clone()?;
    let params: HashMap<String, Param> = cfg
        .vitals
        .iter()
        .map(|(p, v)| (signal_key(&cfg.signal(v)), *p))
        .collect();
    let ms = |d: Duration| d.as_millis().min(i64::MAX as u128) as i64;
    let timing = (ms(cfg.sustained), ms(cfg.resolve_after), ms(cfg.suppress));
    Some(
        readings
            .flat_map(move |((patient, signal), r)| {
                params.get(&signal).map(|p| {
                    (
                        patient,
                        (Param::ALL.iter().position(|q| q == p).unwrap_or(0), r),
                    )
                })
            })
            .reduce(move |patient, input, output| {
                let values: Vec<(Param, Option<f64>)> = Param::ALL
                    .iter()
                    .enumerate()
                    .map(|(i, p)| {
                        let v = input
                            .iter()
                            .filter(|((j, _), _)| *j == i)
                            .max_by_key(|((_, r), _)| r.at_ms)
                            .map(|((_, r), _)| r.value as f64 / 1000.0);
                        (*p, v)
                    })
                    .collect();
                let scale2 = cfg.scale2_patients.iter().any(|p| p == patient);
                let a = news2::assess(&values, scale2);
                let level = if a.score >= cfg.emergency {
                    Level::Critical
                } else if a.score >= cfg.urgent
                    || (cfg.single_parameter && a.risk == news2::Risk::LowMedium)
                {
                    Level::Warning
                } else {
                    Level::Normal
                };
                let newest = input.iter().max_by_key(|((_, r), _)| (r.at_ms, r.stamp_ms));
                let (at_ms, stamp_ms, device) = newest
                    .map(|((_, r), _)| (r.at_ms, r.stamp_ms, r.device.clone()))
                    .unwrap_or_default();
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
                output.push((
                    Condition {
                        level: level as u8,
                        title: "NEWS2".into(),
                        vital: "news2".into(),
                        value: i64::from(a.score) * 1000,
                        at_ms,
                        stamp_ms,
                        device,
                        timing,
                        detail,
                    },
                    1,
                ));
            })
            .map(|(patient, c)| ((patient, "news2".to_string()), c)),
    )
}

/// The lifecycle: conditions and clock ticks of a patient, in time order, become alerts.
fn lifecycle<G: Scope<Timestamp = u64>>(
    conditions: &Conditions<G>,
    ticks: &Stream<G, Tick>,
) -> Stream<G, Alert> {
    type Update = (((String, String), Condition), u64, isize);
    let exchange = Exchange::new(|u: &Update| route(&(u.0).0 .0));
    conditions
        .inner
        .binary_frontier(ticks, exchange, Pipeline, "Lifecycle", |_, _| {
            let mut state = Lifecycle::default();
            /// What arrived for one epoch, held until the epoch is complete.
            type Epoch = (Capability<u64>, Vec<Update>, Vec<Tick>);
            let mut pending: BTreeMap<u64, Epoch> = BTreeMap::new();
            let mut alerts = Vec::new();
            move |(conds, f1), (ticks, f2), output| {
                conds.for_each_time(|time, data| {
                    let e = pending
                        .entry(*time.time())
                        .or_insert_with(|| (time.retain(), Vec::new(), Vec::new()));
                    for batch in data {
                        e.1.append(batch);
                    }
                });
                ticks.for_each_time(|time, data| {
                    let e = pending
                        .entry(*time.time())
                        .or_insert_with(|| (time.retain(), Vec::new(), Vec::new()));
                    for batch in data {
                        e.2.append(batch);
                    }
                });
                let complete: Vec<u64> = pending
                    .keys()
                    .copied()
                    .take_while(|t| !f1.less_equal(t) && !f2.less_equal(t))
                    .collect();
                for t in complete {
                    let (cap, updates, mut ticks) = pending.remove(&t).expect("pending");
                    // An epoch may hold seconds of a patient's readings (replays): the new
                    // conditions and the clock ticks are applied in event-time order, each
                    // replacing its key's old condition; an old condition nothing replaces
                    // (a stale value, a removed rule) leaves at the end.
                    let (gone, mut fresh): (Vec<Update>, Vec<Update>) =
                        updates.into_iter().partition(|(_, _, d)| *d < 0);
                    let replaced: std::collections::HashSet<(String, String)> =
                        fresh.iter().map(|((k, _), _, _)| k.clone()).collect();
                    fresh.sort_by_key(|((_, c), _, _)| c.at_ms);
                    ticks.sort_by_key(|(_, at, _)| *at);
                    let mut ticks = ticks.into_iter().peekable();
                    for (((patient, rule), c), _, d) in fresh {
                        while let Some((p, at, stamp)) = ticks.next_if(|(_, at, _)| *at < c.at_ms) {
                            state.tick(&p, at, stamp, &mut alerts);
                        }
                        state.condition(&patient, &rule, c, d, &mut alerts);
                    }
                    for (p, at, stamp) in ticks {
                        state.tick(&p, at, stamp, &mut alerts);
                    }
                    for (((patient, rule), c), _, d) in gone {
                        if !replaced.contains(&(patient.clone(), rule.clone())) {
                            state.condition(&patient, &rule, c, d, &mut alerts);
                        }
                    }
                    if !alerts.is_empty() {
                        output.session(&cap).give_iterator(alerts.drain(..));
                    }
                }
            }
        })
}

/// Builds the alerting branch on a worker's measurements.
pub(super) fn build<G: Scope<Timestamp = u64>>(
    measurements: &Stream<G, Measurement>,
    shared: Arc<Shared>,
    worker: usize,
) -> Stream<G, Alert> {
    let scope = measurements.scope();
    let (_, set) = shared.rules.as_ref().expect("rules").get();
    let rules = rules_input(&scope, shared.clone(), worker == 0);
    let (readings, ticks) = vital_state(measurements, shared.clone());
    let mut conds = conditions(&readings, &rules);
    if let Some(n) = news2_conditions(&readings, &set) {
        conds = conds.concat(&n);
    }
    lifecycle(&conds, &ticks)
}
