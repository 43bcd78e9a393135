//! The timely operators of a worker and its progress loop.

use super::commit_log;
use super::control::Control;
use super::event_clock::{InputClock, Mark, PartitionKey, Watermark};
use super::normalize::normalize;
use super::sink_thread::attach;
use super::window::Windows;
use super::{route, worker_parts, Shared};
use crate::fhir::store::WindowUpdate;
use crate::mapping::{DeviceMapping, FhirMapping};
use crate::metrics::{Latencies, Metrics};
use crate::model::Measurement;
use crate::sinks::dead_letter::DeadLetter;
use crate::sources::{Poll, Positions, RawMessage, Source};
use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use timely::communication::Allocate;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::operator::source;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::probe::Handle as ProbeHandle;
use timely::dataflow::operators::{
    Branch, Broadcast, Capability, Concat, Concatenate, Map, OkErr, Probe,
};
use timely::dataflow::{Scope, Stream};
use timely::worker::Worker;

/// How often the event clock is cut for an offset commit (Kafka sources).
const CUT_EVERY: Duration = Duration::from_millis(500);

fn now_ms() -> u64 {
    chrono::Utc::now().timestamp_millis().max(0) as u64
}

/// Source positions per closed epoch, committed once the epoch is durable.
struct Committer {
    source: Box<dyn Source>,
    /// Closed epochs: the positions at their end, when they opened, the Kafka timestamps
    /// of their messages (for the append → durable latency), and whether the event clock
    /// was asked for its state at those positions.
    pending: VecDeque<Pending>,
    stamps: Vec<i64>,
    last: Option<Positions>,
    metrics: Arc<Metrics>,
    /// With alerting checkpoints: the event clock's state is committed with the offsets.
    cuts: Option<CutLog>,
}

/// A closed epoch waiting to be durable.
struct Pending {
    epoch: u64,
    positions: Positions,
    opened: Instant,
    stamps: Vec<i64>,
    /// With the commit log: whether the clock was cut here, and per partition where the
    /// dead-letter topic stood.
    cut: Option<DeadLetterAt>,
}

/// Per source partition, where the dead-letter topic stood (Kafka dead letters).
type DeadLetterAt = BTreeMap<PartitionKey, BTreeMap<i32, i64>>;

/// The commit log (dataflow::commit_log): written before each offset commit.
struct CutLog {
    dir: std::path::PathBuf,
    /// At most this often: each commit waits for a cut, and a cut copies the partition's
    /// device clocks.
    every: Duration,
    last: Option<Instant>,
    /// Per partition, the records the committed offsets may stand at.
    committed: std::collections::HashMap<PartitionKey, Vec<commit_log::Record>>,
    /// Where the dead-letter topic stands (Kafka dead letters).
    dead_letters: Option<crate::sinks::dead_letter::Positions>,
    /// The records written for the commit under way.
    pending: Vec<(PartitionKey, commit_log::Record)>,
}

impl Committer {
    fn close_epoch(&mut self, epoch: u64, opened: Instant, clock: &mut InputClock) {
        let positions = self.source.positions();
        let changed = self.pending.back().map(|p| &p.positions) != Some(&positions)
            && self.last.as_ref() != Some(&positions);
        if changed {
            let cut = self.cuts.as_mut().and_then(|c| {
                let due = c.last.is_none_or(|l| l.elapsed() >= c.every);
                due.then(|| {
                    c.last = Some(Instant::now());
                    clock.want_cuts(positions.iter().map(|(k, o)| (k, *o)));
                    // Dead letters of messages past these positions are not sent yet.
                    match &c.dead_letters {
                        Some(d) => positions
                            .iter()
                            .map(|((t, p), o)| ((t.clone(), *p), d.at(t, *p, *o)))
                            .collect(),
                        None => BTreeMap::new(),
                    }
                })
            });
            let stamps = std::mem::take(&mut self.stamps);
            self.pending.push_back(Pending {
                epoch,
                positions,
                opened,
                stamps,
                cut,
            });
        }
    }

    /// Commits the newest epoch the probe reports durable (with cuts: the newest whose
    /// clock state is known).
    fn commit_durable(
        &mut self,
        probe: &ProbeHandle<u64>,
        clock: &mut InputClock,
    ) -> anyhow::Result<()> {
        let mut newest = None;
        let now_us = chrono::Utc::now().timestamp_micros();
        while let Some(p) = self.pending.front() {
            if probe.less_equal(&p.epoch) {
                break;
            }
            let p = self.pending.pop_front().expect("front");
            self.metrics.epoch_durable(p.opened.elapsed());
            Latencies::record(&self.metrics.latency.durable, now_us, &p.stamps);
            if self.cuts.is_none() || p.cut.is_some() {
                newest = Some((p.positions, p.cut.unwrap_or_default()));
            }
        }
        if let Some((p, dead_letters)) = newest {
            self.commit(&p, &dead_letters, clock, false)?;
        }
        Ok(())
    }

    /// Writes the clock's cuts at `p` (when kept), then commits `p`.
    fn commit(
        &mut self,
        p: &Positions,
        dead_letters: &DeadLetterAt,
        clock: &mut InputClock,
        last: bool,
    ) -> anyhow::Result<()> {
        if let Some(log) = &mut self.cuts {
            let mut taken = Vec::with_capacity(p.len());
            for (k, o) in p {
                match clock.cut_at(k, *o) {
                    Some(c) => taken.push((
                        k.clone(),
                        commit_log::Record {
                            clock: c,
                            dead_letters: dead_letters.get(k).cloned().unwrap_or_default(),
                        },
                    )),
                    // Not known at these offsets: the next epoch with a cut commits instead.
                    None => {
                        tracing::debug!(
                            last,
                            "no event-clock cut at these offsets: commit deferred"
                        );
                        return Ok(());
                    }
                }
            }
            commit_log::write(&log.dir, &taken, &log.committed)?;
            log.pending = taken;
        }
        crate::failpoint::hit("offsets.before_commit");
        if last {
            self.source.commit_final(p)?;
        } else {
            self.source.commit(p)?;
        }
        crate::failpoint::hit("offsets.committed");
        if let Some(log) = &mut self.cuts {
            // Committed: only these records can be where the offsets stand now.
            for (k, r) in log.pending.drain(..) {
                log.committed.insert(k, vec![r]);
            }
        }
        clock.committed(p.iter().map(|(k, o)| (k, *o)));
        Metrics::add(&self.metrics.commits, 1);
        self.last = Some(p.clone());
        Ok(())
    }

    /// At shutdown, every output is durable: commit where the source stands.
    fn commit_final(&mut self, clock: &mut InputClock) -> anyhow::Result<()> {
        let p = self.source.positions();
        let now_us = chrono::Utc::now().timestamp_micros();
        for pending in self.pending.drain(..) {
            self.metrics.epoch_durable(pending.opened.elapsed());
            Latencies::record(&self.metrics.latency.durable, now_us, &pending.stamps);
        }
        let stamps = std::mem::take(&mut self.stamps);
        Latencies::record(&self.metrics.latency.durable, now_us, &stamps);
        if self.last.as_ref() != Some(&p) && !p.is_empty() {
            let dead_letters = match self.cuts.as_ref().and_then(|c| c.dead_letters.as_ref()) {
                Some(d) => p
                    .iter()
                    .map(|((t, q), o)| ((t.clone(), *q), d.at(t, *q, *o)))
                    .collect(),
                None => BTreeMap::new(),
            };
            self.commit(&p, &dead_letters, clock, true)?;
        }
        Ok(())
    }
}

/// Builds this worker's dataflow and runs it until it completes.
pub(super) fn run_worker<A: Allocate>(
    worker: &mut Worker<A>,
    shared: &Arc<Shared>,
) -> anyhow::Result<()> {
    let index = worker.index();
    let peers = worker.peers();
    let parts = worker_parts(shared, index, peers)?;
    let mut input_clock = InputClock::new(
        shared.job.allowed_lateness,
        shared.job.idle_timeout,
        !shared.until_end,
    );
    let cuts = match &shared.commit_log {
        Some(dir) => {
            let records = commit_log::read(dir)?;
            // Kept as the previous commit's until this run commits: a kill before then
            // restarts from them again.
            let committed = records.clone();
            input_clock.restore(
                records
                    .into_iter()
                    .map(|(k, rs)| (k, rs.into_iter().map(|r| r.clock).collect()))
                    .collect(),
            );
            Some(CutLog {
                dir: dir.clone(),
                every: CUT_EVERY,
                last: None,
                committed,
                dead_letters: parts.dead_letter_positions.clone(),
                pending: Vec::new(),
            })
        }
        None => None,
    };
    let committer = Rc::new(RefCell::new(Committer {
        source: parts.source,
        pending: VecDeque::new(),
        stamps: Vec::new(),
        last: None,
        metrics: shared.metrics.clone(),
        cuts,
    }));
    let probe = ProbeHandle::new();
    let clock = Rc::new(RefCell::new(input_clock));
    let control = &shared.control;
    let job = &shared.job;
    let reading = Reading {
        epoch: job.epoch,
        batch_size: job.batch_size,
        max_durable_lag: job.max_durable_lag,
    };
    let normalizer = Normalizer {
        device: shared.device.clone(),
        mapping: shared.mapping.clone(),
        max_future_skew: job.max_future_skew,
        metrics: shared.metrics.clone(),
        acks_topic: shared.acks_topic.as_deref().map(Arc::from),
    };
    worker.dataflow::<u64, _, _>(|scope| {
        let raw = source_operator(
            scope,
            committer.clone(),
            probe.clone(),
            clock.clone(),
            reading,
            control.clone(),
        );
        let (judged, dead) = normalize_operator(&raw, clock.clone(), normalizer);
        // Acknowledgements go to alerting only: no window, table or board takes them.
        let (judged, acks) = judged.branch(|_, j| crate::anomaly::ack::is_ack(&j.measurement));
        let alerting = !parts.alerts.is_empty();
        let marks = (!parts.observations.is_empty() || alerting)
            .then(|| clock_operator(scope, clock.clone(), control.clone()));
        let mut durable = attach(&dead, vec![parts.dead_letters], control);
        if let (Some(marks), false) = (&marks, parts.observations.is_empty()) {
            let windows = Windows::new(shared.mapping.clone(), job.horizon, job.update_every);
            let updates = window_operator(&judged, marks, windows, shared.metrics.clone());
            durable.extend(attach(&updates, parts.observations, control));
        }
        if !parts.measurements.is_empty() {
            let measurements = judged.map(|j| j.measurement);
            durable.extend(attach(&measurements, parts.measurements, control));
        }
        let settings = match (&shared.rules, &job.anomaly, alerting) {
            (Some(rules), Some(a), true) => Some(super::alerting::Settings {
                rules: rules.clone(),
                checkpoints: shared.alert_checkpoints.clone(),
                checkpoint_every: a.checkpoint_every,
                forget_after: job.horizon,
                metrics: shared.metrics.clone(),
                control: control.clone(),
            }),
            _ => None,
        };
        let mut board_alerts = None;
        if let (Some(settings), Some(marks)) = (settings, &marks) {
            // Readings beyond the allowed lateness behind their partition are recorded,
            // not judged: judged, they would depend on how fast the other partitions went.
            let metrics = shared.metrics.clone();
            let on_time = judged.flat_map(move |j| {
                if j.late {
                    Metrics::add(&metrics.alert_inputs_late, 1);
                }
                (!j.late).then_some(j.measurement)
            });
            let on_time = on_time.concat(&acks.map(|j| j.measurement));
            let checkpoints = settings.checkpoints.clone();
            let out = super::alerting::build(&on_time, marks, parts.alerts_topic, settings);
            let alerts = out.flat_map(|o| match o {
                super::alerting::Out::Alert(a) => Some(a),
                _ => None,
            });
            let alerts_durable = scope.concatenate(attach(&alerts, parts.alerts, control));
            if let Some(place) = checkpoints {
                // Checkpoints follow the alert outputs, and offsets follow checkpoints.
                let c = super::alerting::checkpoint_writer(&out, &alerts_durable, place);
                durable.push(c);
            }
            durable.push(alerts_durable);
            board_alerts = Some(out.flat_map(|o| match o {
                super::alerting::Out::Alert(a) | super::alerting::Out::Standing(a) => Some(a),
                super::alerting::Out::Snapshot(_) => None,
            }));
        }
        if let Some(board) = &shared.board {
            let names = Arc::new(crate::anomaly::rules::Vitals::new(&shared.mapping));
            let measurements = judged.map(|j| j.measurement);
            super::board_feed::build(
                &measurements,
                board_alerts.as_ref(),
                &dead,
                names,
                board.clone(),
                shared.metrics.clone(),
            );
        }
        scope.concatenate(durable).probe_with(&probe);
    });
    while !probe.done() {
        if control.failed() {
            // A failed job stops where it is: outputs not yet durable keep their offsets
            // uncommitted, and the next start reads them again. Timely would otherwise keep
            // stepping a dataflow whose sink never releases its epochs.
            for id in worker.installed_dataflows() {
                worker.drop_dataflow(id);
            }
            return Ok(());
        }
        worker.step_or_park(Some(Duration::from_millis(100)));
    }
    if !control.failed() {
        committer
            .borrow_mut()
            .commit_final(&mut clock.borrow_mut())?;
    }
    Ok(())
}

/// Publishes this worker's event-clock mark, stamped with the source's current epoch,
/// whenever it changes; ends once the source has ended and all it read is normalized.
fn clock_operator<G: Scope<Timestamp = u64>>(
    scope: &G,
    clock: Rc<RefCell<InputClock>>,
    control: Arc<Control>,
) -> Stream<G, (usize, Mark)> {
    let index = scope.index();
    source(scope, "EventClock", move |cap, info| {
        let activator = scope.activator_for(info.address.clone());
        clock.borrow_mut().activator = Some(scope.activator_for(info.address));
        let mut cap = Some(cap);
        let mut last: Option<Mark> = None;
        move |output| {
            let Some(c) = cap.as_mut() else { return };
            if control.failed() {
                cap = None;
                return;
            }
            let clock = clock.borrow();
            if clock.epoch > *c.time() {
                c.downgrade(&clock.epoch);
            }
            let mark = clock.mark(Instant::now());
            if last != Some(mark) {
                output.session(&*c).give((index, mark));
                last = Some(mark);
            }
            if clock.done() {
                cap = None;
                return;
            }
            // Idle input advances the clock with the wall clock: look again shortly.
            activator.activate_after(Duration::from_millis(50));
        }
    })
}

/// How a worker reads: epoch length, batch size, and how far behind durability may fall.
#[derive(Clone, Copy)]
struct Reading {
    epoch: Duration,
    batch_size: usize,
    max_durable_lag: Duration,
}

/// Reads the worker's share of the input in epochs, and commits positions as the probe
/// reports epochs durable.
fn source_operator<G: Scope<Timestamp = u64>>(
    scope: &G,
    committer: Rc<RefCell<Committer>>,
    probe: ProbeHandle<u64>,
    clock: Rc<RefCell<InputClock>>,
    reading: Reading,
    control: Arc<Control>,
) -> Stream<G, RawMessage> {
    let epoch_len = reading.epoch;
    let batch = reading.batch_size;
    source(scope, "Source", move |cap, info| {
        let activator = scope.activator_for(info.address);
        let mut cap = Some(cap);
        let mut opened = Instant::now();
        let mut paused = false;
        let mut buf: Vec<RawMessage> = Vec::with_capacity(batch);
        move |output| {
            let mut c = committer.borrow_mut();
            if control.failed() {
                return;
            }
            if let Err(e) = c.commit_durable(&probe, &mut clock.borrow_mut()) {
                // A failed commit is retried with the next durable epoch; data is safe.
                tracing::warn!("offset commit failed: {e:#}");
            }
            let Some(capability) = cap.as_mut() else {
                return;
            };
            if *capability.time() == 0 {
                capability.downgrade(&now_ms());
            }
            // An output that cannot make input durable (a server down) stops the reading
            // once it is `max_durable_lag` behind, instead of buffering without bound.
            let lag = control.backlog().oldest().unwrap_or_default();
            let behind = lag > reading.max_durable_lag;
            if behind != paused {
                paused = behind;
                control
                    .metrics()
                    .reading_paused
                    .fetch_add(if behind { 1 } else { u64::MAX }, Ordering::Relaxed);
                if behind {
                    tracing::warn!(
                        lag_s = lag.as_secs(),
                        "outputs are not durable: reading paused until they catch up"
                    );
                } else {
                    tracing::info!("outputs durable again: reading resumed");
                }
            }
            if behind && !control.stopping() {
                activator.activate_after(Duration::from_millis(100));
                return;
            }
            let state = if control.stopping() {
                Poll::Finished
            } else {
                match c.source.poll(batch, &mut buf) {
                    Ok(s) => s,
                    Err(e) => {
                        control.fail(format!("source: {e:#}"));
                        Poll::Finished
                    }
                }
            };
            {
                let mut clock = clock.borrow_mut();
                clock.polled(
                    buf.len(),
                    c.source.partitions(),
                    state == Poll::Finished,
                    Instant::now(),
                );
                clock.epoch = *capability.time();
            }
            if !buf.is_empty() {
                Metrics::add(&control.metrics().messages_in, buf.len() as u64);
                c.stamps
                    .extend(buf.iter().filter_map(|m| m.origin.timestamp_ms));
                output.session(&*capability).give_iterator(buf.drain(..));
            }
            if state == Poll::Finished {
                let epoch = *capability.time();
                c.close_epoch(epoch, opened, &mut clock.borrow_mut());
                cap = None;
                // Keep committing as epochs become durable until the dataflow completes.
                activator.activate_after(Duration::from_millis(10));
                return;
            }
            if opened.elapsed() >= epoch_len {
                let epoch = *capability.time();
                let mut clock = clock.borrow_mut();
                c.close_epoch(epoch, opened, &mut clock);
                capability.downgrade(&now_ms().max(epoch + 1));
                opened = Instant::now();
                clock.epoch = *capability.time();
                if let Some(a) = &clock.activator {
                    a.activate();
                }
            }
            match state {
                Poll::Ready => activator.activate(),
                _ => activator.activate_after(epoch_len.min(Duration::from_millis(10))),
            }
        }
    })
}

/// A normalized measurement and its timing.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct Judged {
    pub measurement: Measurement,
    /// Whether it came beyond the allowed lateness behind its partition.
    pub late: bool,
    /// When it takes effect in event time (ms): its own time, or for a late reading the
    /// moment just past its partition's clock (less the lateness) as it was read.
    pub effective: i64,
}

type Normalized = Result<Judged, DeadLetter>;

/// What normalization reads: the mappings, how far ahead of the wall clock a reading may be.
struct Normalizer {
    device: Arc<DeviceMapping>,
    mapping: Arc<FhirMapping>,
    max_future_skew: Duration,
    metrics: Arc<Metrics>,
    /// The topic acknowledgements come in on, when the job takes them.
    acks_topic: Option<Arc<str>>,
}

/// An acknowledgement read from the acknowledgements topic, as the measurement it travels as.
fn acknowledgement(
    m: RawMessage,
    source: &crate::model::SourcePos,
    out: &mut Vec<Measurement>,
) -> Result<(), Box<DeadLetter>> {
    match crate::anomaly::ack::AckRequest::parse(&m.payload) {
        Ok(a) => {
            out.push(a.to_measurement(source.clone()));
            Ok(())
        }
        Err(error) => Err(Box::new(DeadLetter {
            message: m,
            stage: "parse",
            error,
            template: None,
        })),
    }
}

// Measurements are as large as dead letters: boxing either would only add allocations.
#[allow(clippy::result_large_err)]
fn normalize_operator<G: Scope<Timestamp = u64>>(
    raw: &Stream<G, RawMessage>,
    clock: Rc<RefCell<InputClock>>,
    n: Normalizer,
) -> (Stream<G, Judged>, Stream<G, DeadLetter>) {
    let skew = chrono::Duration::from_std(n.max_future_skew).unwrap_or(chrono::Duration::MAX);
    let out: Stream<G, Normalized> = raw.unary(Pipeline, "Normalize", move |_, _| {
        let mut ms = Vec::new();
        let mut late = Vec::new();
        let mut stamps = Vec::new();
        move |input, output| {
            let now = chrono::Utc::now();
            input.for_each_time(|time, data| {
                let mut session = output.session(&time);
                for batch in data {
                    for m in batch.drain(..) {
                        ms.clear();
                        stamps.extend(m.origin.timestamp_ms);
                        let received = m.origin.timestamp_ms;
                        let source = crate::model::SourcePos {
                            topic: m.origin.topic.clone(),
                            partition: m.origin.partition,
                            offset: m.origin.offset,
                        };
                        let result = if n.acks_topic.as_deref() == Some(&*source.topic) {
                            acknowledgement(m, &source, &mut ms)
                        } else {
                            normalize(&n.device, &n.mapping, skew, now, m, &mut ms)
                        };
                        let bound = clock.borrow_mut().observe(
                            &(source.topic.clone(), source.partition),
                            source.offset,
                            ms.iter().map(|x| {
                                (x.device_id.as_str(), x.occurrence_time.timestamp_millis())
                            }),
                            Instant::now(),
                            &mut late,
                        );
                        match result {
                            Ok(()) => {
                                for x in &mut ms {
                                    x.received_ms = received;
                                    x.source = Some(source.clone());
                                }
                                Metrics::add(&n.metrics.measurements, ms.len() as u64);
                                session.give_iterator(ms.drain(..).zip(late.drain(..)).map(
                                    |(measurement, late)| {
                                        let at = measurement.occurrence_time.timestamp_millis();
                                        let effective = match bound {
                                            Some(b) if late => b.saturating_add(1).max(at),
                                            _ => at,
                                        };
                                        Ok(Judged {
                                            measurement,
                                            late,
                                            effective,
                                        })
                                    },
                                ));
                            }
                            Err(d) => {
                                Metrics::add(&n.metrics.dead_letters, 1);
                                session.give(Err(*d));
                            }
                        }
                    }
                }
            });
            let now_us = chrono::Utc::now().timestamp_micros();
            Latencies::record(&n.metrics.latency.normalize, now_us, &stamps);
            stamps.clear();
        }
    });
    out.ok_err(|r| r)
}

/// Groups measurements into Observation windows and emits their versions as the job's
/// watermark passes their checkpoints (see `window`), holding the epochs of the values
/// waiting for one: offsets commit only past what a version holds.
fn window_operator<G: Scope<Timestamp = u64>>(
    measurements: &Stream<G, Judged>,
    marks: &Stream<G, (usize, Mark)>,
    mut windows: Windows,
    metrics: Arc<Metrics>,
) -> Stream<G, WindowUpdate> {
    let exchange = Exchange::new(|j: &Judged| route(&j.measurement.device_id));
    let marks = marks.broadcast();
    let scope = measurements.scope();
    let peers = scope.peers();
    measurements.binary_frontier(&marks, exchange, Pipeline, "Window", move |_, _| {
        let mut clock = Watermark::new(peers);
        /// What arrived for one epoch, applied once the epoch is complete.
        type Epoch = (Vec<Judged>, Vec<(usize, Mark)>);
        let mut pending: BTreeMap<u64, Epoch> = BTreeMap::new();
        let mut caps: BTreeMap<u64, Capability<u64>> = BTreeMap::new();
        let mut open = 0u64;
        let mut waiting = 0u64;
        let mut last_evict = Instant::now();
        move |(input, f1), (marks, f2), output| {
            input.for_each_time(|time, data| {
                let t = *time.time();
                caps.entry(t).or_insert_with(|| time.retain());
                let e = pending.entry(t).or_default();
                for batch in data {
                    e.0.append(batch);
                }
            });
            marks.for_each_time(|time, data| {
                let t = *time.time();
                caps.entry(t).or_insert_with(|| time.retain());
                let e = pending.entry(t).or_default();
                for batch in data {
                    e.1.append(batch);
                }
            });
            let complete: Vec<u64> = pending
                .keys()
                .copied()
                .take_while(|t| !f1.less_equal(t) && !f2.less_equal(t))
                .collect();
            for t in complete {
                let (ms, ks) = pending.remove(&t).expect("pending");
                for j in ms {
                    windows.add(j.measurement, j.effective, t);
                }
                for (worker, mark) in ks {
                    clock.update(worker, mark);
                }
                let Some(w) = clock.current() else { continue };
                let versions = windows.advance(w);
                if !versions.is_empty() {
                    // At the oldest epoch held: it is at or before the epoch of every value
                    // the versions take in, so the outputs hold those epochs until the
                    // versions are durable (offsets never pass a value no durable version
                    // holds), and it never goes back, so each window's versions are in
                    // epoch order, the order outputs read them back in.
                    let (_, cap) = caps.first_key_value().expect("the epoch being applied");
                    let now = chrono::Utc::now().timestamp_millis();
                    output
                        .session(cap)
                        .give_iterator(versions.into_iter().map(|mut v| {
                            v.emitted_ms = now;
                            v
                        }));
                }
                if last_evict.elapsed() >= Duration::from_secs(1) {
                    last_evict = Instant::now();
                    let evicted = windows.evict(w);
                    Metrics::add(&metrics.windows_evicted, evicted as u64);
                }
            }
            if f1.is_empty() && f2.is_empty() && pending.is_empty() {
                // The input ended (or the job stops): every waiting value gets its version.
                let versions = windows.flush();
                if let Some((_, cap)) = caps.first_key_value() {
                    let now = chrono::Utc::now().timestamp_millis();
                    output
                        .session(cap)
                        .give_iterator(versions.into_iter().map(|mut v| {
                            v.emitted_ms = now;
                            v
                        }));
                }
            }
            caps.retain(|t, _| pending.contains_key(t) || windows.holds(*t));
            let gauge = |g: &std::sync::atomic::AtomicU64, last: &mut u64, now: u64| {
                g.fetch_add(now.wrapping_sub(*last), Ordering::Relaxed);
                *last = now;
            };
            gauge(&metrics.windows_open, &mut open, windows.len() as u64);
            gauge(
                &metrics.window_values_waiting,
                &mut waiting,
                windows.waiting() as u64,
            );
        }
    })
}

#[cfg(test)]
mod tests {
    //! The operators on their own, in one timely worker: what they emit, and which epochs
    //! they hold, with nothing of a job around them.

    use super::*;
    use crate::sinks::observations::tests::{bedside_fhir, heart_rate};
    use crate::sinks::Sink;
    use chrono::{DateTime, TimeZone, Utc};
    use std::sync::atomic::AtomicBool;
    use std::sync::Mutex;
    use timely::dataflow::operators::{Input, Inspect};

    fn hr(at: DateTime<Utc>, v: &str) -> Judged {
        Judged {
            measurement: heart_rate(at, v),
            late: false,
            effective: at.timestamp_millis(),
        }
    }

    /// Steps `worker` until `done` or 10 s pass; returns whether `done` held.
    fn step_until<A: Allocate>(worker: &mut Worker<A>, mut done: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            if Instant::now() > deadline {
                return false;
            }
            worker.step_or_park(Some(Duration::from_millis(5)));
        }
        true
    }

    #[test]
    fn a_window_emits_a_version_once_the_watermark_passes_its_checkpoint_and_holds_its_epoch_till_then(
    ) {
        timely::execute_directly(|worker| {
            let emitted = Rc::new(RefCell::new(Vec::<(u64, WindowUpdate)>::new()));
            let seen = emitted.clone();
            let metrics = Metrics::new();
            let gauges = metrics.clone();
            let (mut readings, mut marks, probe) = worker.dataflow::<u64, _, _>(|scope| {
                let (readings_in, readings) = scope.new_input::<Judged>();
                let (marks_in, marks) = scope.new_input::<(usize, Mark)>();
                let windows = Windows::new(
                    bedside_fhir(),
                    Duration::from_secs(7200),
                    Duration::from_secs(60),
                );
                let probe = window_operator(&readings, &marks, windows, gauges)
                    .inspect_batch(move |t, batch| {
                        seen.borrow_mut()
                            .extend(batch.iter().map(|u| (*t, u.clone())))
                    })
                    .probe();
                (readings_in, marks_in, probe)
            });
            let at = |s: u32| Utc.with_ymd_and_hms(2026, 11, 2, 10, 0, s).unwrap();
            let ms = |t: DateTime<Utc>| t.timestamp_millis();
            // Epoch 1: two readings before the 10:01 checkpoint; the clock is at 10:00:30.
            readings.advance_to(1);
            marks.advance_to(1);
            readings.send(hr(at(10), "70"));
            readings.send(hr(at(20), "72"));
            marks.send((0, Mark::At(ms(at(30)))));
            readings.advance_to(2);
            marks.advance_to(2);
            assert!(
                step_until(worker, || metrics
                    .window_values_waiting
                    .load(Ordering::Relaxed)
                    == 2),
                "epoch 1 applied: both readings wait in their window"
            );
            assert!(
                emitted.borrow().is_empty(),
                "no version before its checkpoint"
            );
            assert!(
                probe.less_equal(&1),
                "epoch 1 stays open while its readings wait for a version"
            );
            // Epoch 2: the clock passes 10:01; the version holds both readings and comes out
            // at epoch 1, the oldest epoch it takes values from.
            marks.send((0, Mark::At(ms(at(0)) + 65_000)));
            readings.advance_to(3);
            marks.advance_to(3);
            assert!(step_until(worker, || !emitted.borrow().is_empty()));
            {
                let e = emitted.borrow();
                assert_eq!(e.len(), 1, "one window, one version");
                let (epoch, u) = &e[0];
                assert_eq!(*epoch, 1);
                let values = u.group.get("hr").expect("heart rate values");
                assert_eq!(values.len(), 2);
            }
            assert!(
                step_until(worker, || !probe.less_equal(&2)),
                "once the version is out, nothing holds the epochs"
            );
        });
    }

    /// A source of ten messages on one partition that records what it is told to commit.
    struct TenMessages {
        read: bool,
        committed: Arc<Mutex<Vec<Positions>>>,
    }

    impl Source for TenMessages {
        fn poll(&mut self, _max: usize, out: &mut Vec<RawMessage>) -> anyhow::Result<Poll> {
            if !self.read {
                self.read = true;
                out.extend((0..10).map(|offset| RawMessage {
                    payload: b"{}".to_vec(),
                    key: None,
                    headers: Vec::new(),
                    origin: crate::model::Origin {
                        topic: "vitals".into(),
                        partition: 0,
                        offset,
                        timestamp_ms: None,
                    },
                }));
            }
            Ok(Poll::Idle)
        }

        fn positions(&self) -> Positions {
            let next = if self.read { 10 } else { 0 };
            [(("vitals".into(), 0), next)].into_iter().collect()
        }

        fn commit(&mut self, positions: &Positions) -> anyhow::Result<()> {
            self.committed.lock().expect("lock").push(positions.clone());
            Ok(())
        }
    }

    /// A sink whose flush waits until its gate opens.
    struct Gated {
        open: Arc<AtomicBool>,
        written: usize,
    }

    impl Sink<RawMessage> for Gated {
        fn write(&mut self, _epoch: u64, _item: RawMessage) -> anyhow::Result<()> {
            self.written += 1;
            Ok(())
        }

        fn flush(&mut self) -> anyhow::Result<()> {
            while !self.open.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(5));
            }
            Ok(())
        }
    }

    #[test]
    fn offsets_are_committed_only_once_every_output_of_them_is_durable() {
        timely::execute_directly(|worker| {
            let committed = Arc::new(Mutex::new(Vec::new()));
            let open = Arc::new(AtomicBool::new(false));
            let metrics = Metrics::new();
            let control = Control::new(Arc::new(AtomicBool::new(false)), metrics.clone());
            let committer = Rc::new(RefCell::new(Committer {
                source: Box::new(TenMessages {
                    read: false,
                    committed: committed.clone(),
                }),
                pending: VecDeque::new(),
                stamps: Vec::new(),
                last: None,
                metrics,
                cuts: None,
            }));
            let probe = ProbeHandle::new();
            let clock = Rc::new(RefCell::new(InputClock::new(
                Duration::from_secs(5),
                Duration::from_secs(5),
                true,
            )));
            let reading = Reading {
                epoch: Duration::from_millis(20),
                batch_size: 100,
                max_durable_lag: Duration::from_secs(60),
            };
            let gate = open.clone();
            worker.dataflow::<u64, _, _>(|scope| {
                let raw = source_operator(
                    scope,
                    committer.clone(),
                    probe.clone(),
                    clock.clone(),
                    reading,
                    control.clone(),
                );
                let sink = Gated {
                    open: gate,
                    written: 0,
                };
                let outputs = vec![super::super::sink_thread::NamedSink::new(
                    "Gated",
                    sink,
                    Duration::ZERO,
                )];
                scope
                    .concatenate(attach(&raw, outputs, &control))
                    .probe_with(&probe);
            });
            // The source has read everything and closed epochs, but the sink cannot flush.
            let until = Instant::now() + Duration::from_millis(400);
            while Instant::now() < until {
                worker.step_or_park(Some(Duration::from_millis(5)));
            }
            assert!(
                !committer.borrow().pending.is_empty(),
                "epochs were closed with their positions"
            );
            assert!(
                committed.lock().expect("lock").is_empty(),
                "nothing is committed while the output is not durable"
            );
            open.store(true, Ordering::Relaxed);
            assert!(
                step_until(worker, || !committed.lock().expect("lock").is_empty()),
                "durable output lets the offsets commit"
            );
            let last = committed
                .lock()
                .expect("lock")
                .last()
                .cloned()
                .expect("a commit");
            assert_eq!(last.get(&("vitals".into(), 0)), Some(&10));
            // The source reads forever: end the dataflow as a failed job does.
            for id in worker.installed_dataflows() {
                worker.drop_dataflow(id);
            }
        });
    }
}
