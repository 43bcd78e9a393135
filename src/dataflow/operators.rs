//! The timely operators of a worker and its progress loop.

use super::commit_log;
use super::event_clock::{InputClock, Mark, PartitionKey};
use super::normalize::normalize;
use super::sink_thread::sink_operator;
use super::window::{WindowUpdate, Windows};
use super::{route, worker_parts, Shared};
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
use timely::dataflow::operators::{Capability, Concat, Map, OkErr, Probe};
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

    /// How long ago the oldest epoch not yet durable was read.
    fn durable_lag(&self) -> Option<Duration> {
        self.pending.front().map(|p| p.opened.elapsed())
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
    worker.dataflow::<u64, _, _>(|scope| {
        let raw = source_operator(
            scope,
            committer.clone(),
            probe.clone(),
            clock.clone(),
            shared.clone(),
        );
        let (judged, dead) = normalize_operator(&raw, clock.clone(), shared.clone());
        let measurements = judged.map(|(m, _)| m);
        let updates = window_operator(&measurements, shared.clone());
        let mut durable = sink_operator(
            &dead,
            "DeadLetterSink",
            parts.dead_letters,
            Duration::ZERO,
            shared.clone(),
        );
        if let Some(sink) = parts.observations {
            let o = sink_operator(
                &updates,
                "ObservationSink",
                sink,
                shared.job.flush_interval,
                shared.clone(),
            );
            durable = durable.concat(&o);
        }
        let lake = parts.lake;
        let lake_interval = shared.job.lake.as_ref().map(|l| l.flush_interval);
        if let (Some(sink), Some(every)) = (lake.measurements, lake_interval) {
            let l = sink_operator(
                &measurements,
                "LakeMeasurements",
                sink,
                every,
                shared.clone(),
            );
            durable = durable.concat(&l);
        }
        if let (Some(sink), Some(every)) = (lake.observations, lake_interval) {
            let l = sink_operator(&updates, "LakeObservations", sink, every, shared.clone());
            durable = durable.concat(&l);
        }
        if parts.alerts.is_some() || lake.alerts.is_some() {
            let marks = clock_operator(scope, clock.clone(), shared.clone());
            // Readings beyond the allowed lateness behind their partition are recorded,
            // not judged: judged, they would depend on how fast the other partitions went.
            let metrics = shared.metrics.clone();
            let on_time = judged.flat_map(move |(m, late)| {
                if late {
                    Metrics::add(&metrics.alert_inputs_late, 1);
                }
                (!late).then_some(m)
            });
            let alerts_topic = parts.alerts.as_ref().and_then(|a| a.positions());
            let out = super::alerting::build(&on_time, &marks, alerts_topic, shared.clone());
            let alerts = out.flat_map(|o| match o {
                super::alerting::Out::Alert(a) => Some(a),
                super::alerting::Out::Snapshot(_) => None,
            });
            let mut alerts_durable: Option<Stream<_, ()>> = None;
            if let Some(sink) = parts.alerts {
                let a = sink_operator(&alerts, "AlertSink", sink, Duration::ZERO, shared.clone());
                alerts_durable = Some(a);
            }
            if let (Some(sink), Some(every)) = (lake.alerts, lake_interval) {
                let l = sink_operator(&alerts, "LakeAlerts", sink, every, shared.clone());
                alerts_durable = Some(match alerts_durable {
                    Some(a) => a.concat(&l),
                    None => l,
                });
            }
            if let Some(a) = alerts_durable {
                durable = durable.concat(&a);
                if shared.alert_checkpoints.is_some() {
                    // Checkpoints follow the alert outputs, and offsets follow checkpoints.
                    let c = super::alerting::checkpoint_writer(&out, &a, shared.clone());
                    durable = durable.concat(&c);
                }
            }
        }
        if let Some((sink, interval)) = parts.fhir {
            let f = sink_operator(&updates, "FhirSink", sink, interval, shared.clone());
            durable = durable.concat(&f);
        }
        durable.probe_with(&probe);
    });
    while !probe.done() {
        if shared.failed() {
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
    if !shared.failed() {
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
    shared: Arc<Shared>,
) -> Stream<G, (usize, Mark)> {
    let index = scope.index();
    source(scope, "EventClock", move |cap, info| {
        let activator = scope.activator_for(info.address.clone());
        clock.borrow_mut().activator = Some(scope.activator_for(info.address));
        let mut cap = Some(cap);
        let mut last: Option<Mark> = None;
        move |output| {
            let Some(c) = cap.as_mut() else { return };
            if shared.failed() {
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

fn source_operator<G: Scope<Timestamp = u64>>(
    scope: &G,
    committer: Rc<RefCell<Committer>>,
    probe: ProbeHandle<u64>,
    clock: Rc<RefCell<InputClock>>,
    shared: Arc<Shared>,
) -> Stream<G, RawMessage> {
    let epoch_len = shared.job.epoch;
    let batch = shared.job.batch_size;
    source(scope, "Source", move |cap, info| {
        let activator = scope.activator_for(info.address);
        let mut cap = Some(cap);
        let mut opened = Instant::now();
        let mut paused = false;
        let mut buf: Vec<RawMessage> = Vec::with_capacity(batch);
        move |output| {
            let mut c = committer.borrow_mut();
            if shared.failed() {
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
            let lag = c.durable_lag().unwrap_or_default();
            let behind = lag > shared.job.max_durable_lag;
            if behind != paused {
                paused = behind;
                shared
                    .metrics
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
            if behind && !shared.stop.load(Ordering::Relaxed) {
                activator.activate_after(Duration::from_millis(100));
                return;
            }
            let state = if shared.stop.load(Ordering::Relaxed) {
                Poll::Finished
            } else {
                match c.source.poll(batch, &mut buf) {
                    Ok(s) => s,
                    Err(e) => {
                        shared.fail(format!("source: {e:#}"));
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
                Metrics::add(&shared.metrics.messages_in, buf.len() as u64);
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

/// A measurement, and whether it came beyond the allowed lateness behind its partition.
type Normalized = Result<(Measurement, bool), DeadLetter>;

// Measurements are as large as dead letters: boxing either would only add allocations.
#[allow(clippy::result_large_err)]
fn normalize_operator<G: Scope<Timestamp = u64>>(
    raw: &Stream<G, RawMessage>,
    clock: Rc<RefCell<InputClock>>,
    shared: Arc<Shared>,
) -> (Stream<G, (Measurement, bool)>, Stream<G, DeadLetter>) {
    let skew =
        chrono::Duration::from_std(shared.job.max_future_skew).unwrap_or(chrono::Duration::MAX);
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
                        let result =
                            normalize(&shared.device, &shared.mapping, skew, now, m, &mut ms);
                        clock.borrow_mut().observe(
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
                                Metrics::add(&shared.metrics.measurements, ms.len() as u64);
                                session.give_iterator(ms.drain(..).zip(late.drain(..)).map(Ok));
                            }
                            Err(d) => {
                                Metrics::add(&shared.metrics.dead_letters, 1);
                                session.give(Err(*d));
                            }
                        }
                    }
                }
            });
            let now_us = chrono::Utc::now().timestamp_micros();
            Latencies::record(&shared.metrics.latency.normalize, now_us, &stamps);
            stamps.clear();
        }
    });
    out.ok_err(|r| r)
}

fn window_operator<G: Scope<Timestamp = u64>>(
    measurements: &Stream<G, Measurement>,
    shared: Arc<Shared>,
) -> Stream<G, WindowUpdate> {
    let exchange = Exchange::new(|m: &Measurement| route(&m.device_id));
    let interval = shared.job.emit_interval();
    let scope = measurements.scope();
    measurements.unary_frontier(exchange, "Window", move |_, info| {
        let activator = scope.activator_for(info.address);
        let mut windows = Windows::new(shared.mapping.clone(), shared.job.horizon);
        let mut held: BTreeMap<u64, Capability<u64>> = BTreeMap::new();
        let mut open = 0u64;
        let mut last_emit = Instant::now();
        let mut last_evict = Instant::now();
        move |(input, frontier), output| {
            input.for_each_time(|time, data| {
                for batch in data {
                    for m in batch.drain(..) {
                        windows.add(&m);
                    }
                }
                let t = *time.time();
                held.entry(t).or_insert_with(|| time.retain());
            });
            // A window changed by complete epochs is emitted at most once per flush interval:
            // emitting copies nothing, but the next change to a window a sink still holds
            // copies its group, so emitting every epoch would copy every window 20 times a
            // second.
            let complete: Vec<u64> = held
                .keys()
                .copied()
                .take_while(|t| !frontier.less_equal(t))
                .collect();
            let Some(first) = complete.first() else {
                return;
            };
            let since = last_emit.elapsed();
            if since < interval && !frontier.is_empty() {
                activator.activate_after(interval - since);
                return;
            }
            let updates = windows.take_dirty();
            if !updates.is_empty() {
                output
                    .session(&held[first])
                    .give_iterator(updates.into_iter());
            }
            for t in &complete {
                held.remove(t);
            }
            last_emit = Instant::now();
            // Eviction scans every window: once a second is plenty for a horizon of hours.
            if last_evict.elapsed() >= Duration::from_secs(1) {
                last_evict = Instant::now();
                let evicted = windows.evict();
                Metrics::add(&shared.metrics.windows_evicted, evicted as u64);
            }
            let now = windows.len() as u64;
            shared
                .metrics
                .windows_open
                .fetch_add(now.wrapping_sub(open), Ordering::Relaxed);
            open = now;
        }
    })
}
