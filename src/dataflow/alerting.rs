//! The alerting branch of the dataflow: one keyed operator on event time.
//!
//! ```text
//! measurements ──exchange by patient──► PatientAlerts ──► alerts
//! event clock marks ──broadcast──────────┘   (vital state → judge → lifecycle)
//! ```
//!
//! Measurements wait in the operator until the job's watermark (see `event_clock`) passes
//! their event time; then, and only then, they are applied in event-time order, with the
//! lifecycle's timers (`sustained`, `resolve_after`, `suppress`) and NEWS2 staleness firing
//! at their exact deadlines in between. Alerts are therefore a function of the input and the
//! rules alone: not of how the input was cut into epochs and batches, how fast it was read,
//! or how many workers read it. A reading that arrives after the watermark has passed its
//! time is counted (`vitalflow_alert_inputs_late_total`) and not judged: it would otherwise
//! rewrite a history already alerted on.
//!
//! The state it drives is `patient_alerts`, as `window` is the state the window operator
//! drives.
//!
//! Why not differential dataflow here: a differential collection timestamped with ingestion
//! epochs consolidates the updates within an epoch, so a band crossing and its reversal in
//! one epoch never reach a rule, and alerts depend on the epoch length. Per patient, the
//! readings, rules and lifecycle are small keyed state; a patient is one worker's.

use super::control::Control;
use super::epoch_gate::EpochGate;
use super::event_clock::{Mark, Watermark};
use super::patient_alerts::PatientAlerts;
use super::route;
use crate::anomaly::lifecycle::Alert;
use crate::anomaly::reload::Rules;
use crate::metrics::Metrics;
use crate::model::Measurement;
use std::cell::Cell;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Broadcast;
use timely::dataflow::{Scope, Stream};
/// What the alerting operator gives: alert events, and (with checkpoints) the state to
/// checkpoint once every alert event before it is durable: None when it has not changed
/// since the last.
#[derive(Clone)]
// Alert events are the common case: boxing them to shrink the rare snapshot would cost an
// allocation each.
#[allow(clippy::large_enum_variant)]
pub(super) enum Out {
    /// An alert event.
    Alert(Alert),
    /// A checkpoint of the state (see [`super::alert_state::encode`]), covering every epoch
    /// before the time it is given at.
    Snapshot(Option<Arc<Vec<u8>>>),
    /// An alert open in the state a restart resumed: for the board, which starts empty (no
    /// output writes it again).
    Standing(Alert),
}

/// What the alerting branch reads: its rules, where and how often it checkpoints, when it
/// forgets a silent patient.
pub(super) struct Settings {
    /// The rules in force (reloaded while the job runs).
    pub rules: Arc<Rules>,
    /// Where checkpoints go and the input they belong to (None: an input that replays from
    /// its start, which resumes nothing).
    pub checkpoints: Option<(PathBuf, String)>,
    /// Checkpoint at most this often.
    pub checkpoint_every: Duration,
    /// A patient silent this long in event time is forgotten (unless an alert is open).
    pub forget_after: Duration,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// To fail the job on an unreadable checkpoint.
    pub control: Arc<Control>,
    /// Epochs taken in and not yet applied, for this worker's source to wait on.
    pub behind: Rc<Cell<usize>>,
}

/// Builds the alerting branch on a worker's measurements and the workers' clock marks;
/// `alerts_topic`: where the alert topic stands (Kafka alerts), recorded in checkpoints.
pub(super) fn build<G: Scope<Timestamp = u64>>(
    measurements: &Stream<G, Arc<Measurement>>,
    marks: &Stream<G, (usize, Mark)>,
    alerts_topic: Option<crate::sinks::alerts::Positions>,
    s: Settings,
) -> Stream<G, Out> {
    let (rules, every) = (s.rules, s.checkpoint_every);
    let behind = s.behind;
    let scope = measurements.scope();
    let (peers, index) = (scope.peers(), scope.index());
    let exchange =
        Exchange::new(|m: &Arc<Measurement>| route(m.patient_id.as_deref().unwrap_or("")));
    let marks = marks.broadcast();
    let place = s.checkpoints.map(|c| checkpoint_place(c, peers));
    let metrics = s.metrics;
    let control = s.control;
    measurements.binary_frontier(
        &marks,
        exchange,
        Pipeline,
        "PatientAlerts",
        move |capability, info| {
            let activator = scope.activator_for(info.address);
            let (mut seen, set) = rules.get();
            let mut state = PatientAlerts::new(set, rules.shared_vitals(), metrics.clone())
                .forget_idle_after(s.forget_after);
            if let Some(place) = &place {
                let owns = |p: &str| route(p) % peers as u64 == index as u64;
                match super::alert_state::read_all(&place.dir, &place.source) {
                    Ok(found) if !found.is_empty() => {
                        tracing::info!(
                            worker = index,
                            checkpoints = found.len(),
                            "alerting resumes its checkpointed state"
                        );
                        state.resume(found, &owns);
                    }
                    Ok(_) => {}
                    Err(e) => control.fail(format!("alerting: {e:#}")),
                }
            }
            let mut standing = state.standing();
            let mut last_checkpoint = std::time::Instant::now();
            // Encoding a checkpoint costs in proportion to the state: checkpoints are spaced
            // so that they take at most 1/20 of the worker's time, whatever the state's size.
            let mut interval = every;
            let mut clock = Watermark::new(peers);
            let mut pending: EpochGate<Arc<Measurement>, (usize, Mark)> = EpochGate::new();
            // Epochs complete at both inputs, the front one possibly applied in part.
            let mut applying = std::collections::VecDeque::new();
            let mut alerts = Vec::new();
            let mut waiting = 0u64;
            let mut patients = 0u64;
            // With checkpoints: a capability at the input frontier, to give each snapshot
            // at the first epoch it does not cover (and the last one when the input ends).
            let mut spare = place.as_ref().map(|_| capability);
            move |(input, f1), (marks, f2), output| {
                if let (false, Some(cap)) = (standing.is_empty(), spare.as_ref()) {
                    output
                        .session(cap)
                        .give_iterator(standing.drain(..).map(Out::Standing));
                }
                input.for_each_time(|time, data| pending.hold_a(time, data));
                marks.for_each_time(|time, data| pending.hold_b(time, data));
                applying.extend(
                    pending
                        .complete(f1, f2)
                        .into_iter()
                        .map(|e| (e.cap, Some((e.a, e.b)))),
                );
                // Epochs strictly in order, each taken in whole before the next: the same
                // steps as applying each at once, spread over activations by `FUEL`.
                let mut fuel = FUEL;
                while let Some((cap, taken)) = applying.front_mut() {
                    if let Some((ms, ks)) = taken.take() {
                        let (version, set) = rules.get();
                        if version != seen {
                            seen = version;
                            state.set_rules(set, &mut alerts);
                        }
                        for m in ms.into_iter().flatten() {
                            state.add(m);
                        }
                        alerts.extend(state.take_acks());
                        for (worker, mark) in ks.into_iter().flatten() {
                            clock.update(worker, mark);
                        }
                        if let Some(w) = clock.current() {
                            state.aim(w);
                        }
                    }
                    let done = state.run(&mut fuel, &mut alerts);
                    if !alerts.is_empty() {
                        output
                            .session(&*cap)
                            .give_iterator(alerts.drain(..).map(Out::Alert));
                    }
                    if !done {
                        activator.activate();
                        break;
                    }
                    applying.pop_front();
                }
                behind.set(applying.len());
                let now = state.waiting() as u64;
                metrics.alert_inputs_waiting.fetch_add(
                    now.wrapping_sub(waiting),
                    std::sync::atomic::Ordering::Relaxed,
                );
                waiting = now;
                let now = state.patients() as u64;
                metrics.alert_patients.fetch_add(
                    now.wrapping_sub(patients),
                    std::sync::atomic::Ordering::Relaxed,
                );
                patients = now;
                let Some(cap) = spare.as_mut() else {
                    return;
                };
                if !applying.is_empty() {
                    // A snapshot covers whole epochs only; this one goes on next activation.
                    return;
                }
                // Every epoch before the input frontier is applied: a snapshot now covers
                // them all, and is given at the frontier.
                let frontier = f1
                    .frontier()
                    .iter()
                    .chain(f2.frontier().iter())
                    .min()
                    .copied();
                let finished = frontier.is_none();
                if let Some(f) = frontier {
                    if *cap.time() < f {
                        cap.downgrade(&f);
                    }
                }
                let due = last_checkpoint.elapsed();
                if due >= interval || finished {
                    let encoding = std::time::Instant::now();
                    let snapshot = if state.take_dirty() {
                        let place = place.as_ref().expect("checkpoints");
                        let at = alerts_topic
                            .as_ref()
                            .map(|a| a.at(state.applied()))
                            .unwrap_or_default();
                        match super::alert_state::encode(&state.checkpoint(
                            &place.source,
                            place.run,
                            place.peers,
                            at,
                        )) {
                            Ok(bytes) => Some(Arc::new(bytes)),
                            Err(e) => {
                                control
                                    .fail(format!("alerting: cannot encode a checkpoint: {e:#}"));
                                return;
                            }
                        }
                    } else {
                        None
                    };
                    output.session(&*cap).give(Out::Snapshot(snapshot));
                    last_checkpoint = std::time::Instant::now();
                    interval = every.max(encoding.elapsed() * 20);
                } else {
                    activator.activate_after(interval - due);
                }
                if finished {
                    spare = None;
                }
            }
        },
    )
}

/// Readings, timers and forgotten patients applied per activation at most: a watermark that
/// jumps (a partition catching up) releases tens of thousands of readings at once, which
/// took the worker for half a second and held up reading the input behind them.
const FUEL: usize = 2_000;

/// Where this run's alerting checkpoints go: (directory, the input they belong to).
fn checkpoint_place((dir, source): (PathBuf, String), peers: usize) -> super::alert_state::Place {
    super::alert_state::Place {
        dir,
        source,
        run: chrono::Utc::now().timestamp_millis().max(0) as u64,
        peers,
    }
}

/// Writes the alerting snapshots as checkpoints once every alert event before each is
/// durable (`alerts_durable`: the alert outputs' durable frontier), and holds every epoch
/// no written checkpoint covers yet: offsets commit only past what a checkpoint holds, and
/// a checkpoint holds only what the outputs have. A kill between the outputs' write and the
/// checkpoint replays those readings and raises the same events again, which the outputs
/// recognise; a checkpoint ahead of the outputs would lose them.
pub(super) fn checkpoint_writer<G: Scope<Timestamp = u64>>(
    snapshots: &Stream<G, Out>,
    alerts_durable: &Stream<G, ()>,
    checkpoints: (PathBuf, String),
) -> Stream<G, ()> {
    let scope = snapshots.scope();
    let (peers, index) = (scope.peers(), scope.index());
    let place = checkpoint_place(checkpoints, peers);
    snapshots.binary_frontier::<_, CapacityContainerBuilder<Vec<()>>, _, _, _, _>(
        alerts_durable,
        Pipeline,
        Pipeline,
        "AlertCheckpoint",
        move |capability, info| {
            let activator = scope.activator_for(info.address);
            let mut hold = Some(capability);
            let mut staged: BTreeMap<u64, Option<Arc<Vec<u8>>>> = BTreeMap::new();
            move |(input, f1), (durable, f2), _output| {
                input.for_each_time(|time, data| {
                    for batch in data {
                        for o in batch.drain(..) {
                            if let Out::Snapshot(s) = o {
                                let e = staged.entry(*time.time()).or_insert(None);
                                if s.is_some() {
                                    *e = s;
                                }
                            }
                        }
                    }
                });
                durable.for_each(|_, _| {});
                let Some(h) = hold.as_mut() else { return };
                // The newest snapshot all of whose alert events are durable.
                let ready = staged.keys().rev().find(|t| !f2.less_equal(t)).copied();
                if let Some(t) = ready {
                    let newest = staged.range(..=t).rev().find_map(|(_, s)| s.clone());
                    if let Some(bytes) = newest {
                        if let Err(e) = super::alert_state::write(&place, index, &bytes) {
                            tracing::warn!("alerting checkpoint failed, retried: {e:#}");
                            activator.activate_after(std::time::Duration::from_secs(1));
                            return;
                        }
                    }
                    staged = staged.split_off(&(t + 1));
                    if *h.time() < t {
                        h.downgrade(&t);
                    }
                }
                if f1.is_empty() && staged.is_empty() {
                    hold = None;
                }
            }
        },
    )
}
