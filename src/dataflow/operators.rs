//! The timely operators of a worker and its progress loop.

use super::committer::{now_ms, Committer};
use super::control::Control;
use super::devices::{Described, DeviceNews, SeenTrees};
use super::epoch_gate::EpochGate;
use super::event_clock::{InputClock, Mark, Watermark};
use super::normalize::normalize_seeing;
use super::route;
use super::window::Windows;
use crate::fhir::store::WindowUpdate;
use crate::mapping::{DeviceMapping, FhirMapping};
use crate::metrics::{Latencies, Metrics};
use crate::model::Measurement;
use crate::sinks::dead_letter::DeadLetter;
use crate::sources::{Poll, RawMessage};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::operator::source;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::probe::Handle as ProbeHandle;
use timely::dataflow::operators::{Broadcast, Capability, OkErr};
use timely::dataflow::{Scope, Stream};

/// Publishes this worker's event-clock mark, stamped with the source's current epoch,
/// whenever it changes; ends once the source has ended and all it read is normalized.
pub(super) fn clock_operator<G: Scope<Timestamp = u64>>(
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
pub(super) struct Reading {
    pub(super) epoch: Duration,
    pub(super) batch_size: usize,
    pub(super) max_durable_lag: Duration,
}

/// Epochs alerting has taken in and not applied yet: the source reads no further while it
/// is more than [`MAX_BEHIND`], so input waits in the broker, not in the worker's memory.
pub(super) type Behind = std::rc::Rc<std::cell::Cell<usize>>;

/// See [`Behind`].
const MAX_BEHIND: usize = 2;

/// Reads the worker's share of the input in epochs, and commits positions as the probe
/// reports epochs durable.
pub(super) fn source_operator<G: Scope<Timestamp = u64>>(
    scope: &G,
    committer: Rc<RefCell<Committer>>,
    probe: ProbeHandle<u64>,
    clock: Rc<RefCell<InputClock>>,
    reading: Reading,
    control: Arc<Control>,
    alerting: Behind,
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
            if alerting.get() > MAX_BEHIND && !control.stopping() {
                activator.activate_after(Duration::from_millis(1));
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
    /// Shared: the windows, alerting and the measurement outputs each take every reading,
    /// and timely clones a stream's data for each consumer but the last (a deep copy was
    /// 4.4 % of the job with two consumers).
    pub measurement: Arc<Measurement>,
    /// Whether it came beyond the allowed lateness behind its partition.
    pub late: bool,
    /// When it takes effect in event time (ms): its own time, or for a late reading the
    /// moment just past its partition's clock (less the lateness) as it was read.
    pub effective: i64,
}

type Normalized = Result<Judged, Aside>;

/// The streams the normalize stage makes.
pub(super) struct Normalizing<G: Scope<Timestamp = u64>> {
    /// Readings, judged on time or late.
    pub(super) judged: Stream<G, Judged>,
    /// Messages that cannot be normalized.
    pub(super) dead: Stream<G, DeadLetter>,
    /// What messages say about their devices.
    pub(super) devices: Stream<G, DeviceNews>,
    /// The state of messages' metrics, for alerting only.
    pub(super) states: Stream<G, Judged>,
}

/// What normalization sets aside from the readings.
#[derive(Clone)]
enum Aside {
    /// A message that cannot be normalized.
    Dead(DeadLetter),
    /// What a message says about its devices (jobs with a device output).
    Device(DeviceNews),
    /// The state of a message's metrics (operational status, calibration), for alerting.
    State(Judged),
}

/// What normalization reads: the mappings, how far ahead of the wall clock a reading may be.
pub(super) struct Normalizer {
    pub(super) device: Arc<DeviceMapping>,
    pub(super) mapping: Arc<FhirMapping>,
    pub(super) max_future_skew: Duration,
    pub(super) metrics: Arc<Metrics>,
    /// The topic acknowledgements come in on, when the job takes them.
    pub(super) acks_topic: Option<Arc<str>>,
    /// Whether the job writes devices: messages' device trees are read.
    pub(super) devices: bool,
    /// Whether alerting takes the state of messages' metrics (device trees are read).
    pub(super) states: bool,
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
pub(super) fn normalize_operator<G: Scope<Timestamp = u64>>(
    raw: &Stream<G, RawMessage>,
    clock: Rc<RefCell<InputClock>>,
    n: Normalizer,
) -> Normalizing<G> {
    let skew = chrono::Duration::from_std(n.max_future_skew).unwrap_or(chrono::Duration::MAX);
    let out: Stream<G, Normalized> = raw.unary(Pipeline, "Normalize", move |_, _| {
        let mut ms = Vec::new();
        let mut late = Vec::new();
        let mut stamps = Vec::new();
        let mut seen = SeenTrees::default();
        // JSON templates naming device attributes put them among the readings' properties:
        // they are taken out of every reading, device outputs or not.
        let json_attributes = n.device.names_device_attributes();
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
                        let ack = n.acks_topic.as_deref() == Some(&*source.topic);
                        let mut described = Vec::new();
                        let result = if ack {
                            acknowledgement(m, &source, &mut ms)
                        } else {
                            let trees = n.devices || n.states;
                            // The device tree is read from the parse the readings come from.
                            let mut look = |msg: &crate::hl7::Hl7<'_>| {
                                if trees {
                                    described = seen.read(msg);
                                }
                            };
                            normalize_seeing(
                                &n.device, &n.mapping, skew, now, m, &mut ms, &mut look,
                            )
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
                                if json_attributes && !ack {
                                    for tree in
                                        crate::mapping::device_tree::take_json_attributes(&mut ms)
                                    {
                                        described.push(seen.describe(tree));
                                    }
                                }
                                let newest = ms.iter().map(|x| x.occurrence_time).max();
                                // Judged as the message's readings are: late if any is.
                                let any_late = late.iter().any(|l| *l);
                                for d in described {
                                    let (kept, sent, time) = match d {
                                        Described::Same { identifier, time } => {
                                            (Some(identifier), None, time)
                                        }
                                        Described::New {
                                            tree,
                                            fingerprint,
                                            time,
                                        } => (None, Some((tree, fingerprint)), time),
                                    };
                                    let tree = match (&kept, &sent) {
                                        (Some(id), _) => seen.tree(id),
                                        (None, Some((t, _))) => Some(t),
                                        (None, None) => None,
                                    };
                                    let Some(tree) = tree else {
                                        continue;
                                    };
                                    if n.states {
                                        if let Some(at) = newest.or(time) {
                                            for mut x in n.device.metric_states(tree, at) {
                                                x.received_ms = received;
                                                x.source = Some(source.clone());
                                                let at = at.timestamp_millis();
                                                let effective = match bound {
                                                    Some(b) if any_late => {
                                                        b.saturating_add(1).max(at)
                                                    }
                                                    _ => at,
                                                };
                                                session.give(Err(Aside::State(Judged {
                                                    measurement: Arc::new(x),
                                                    late: any_late,
                                                    effective,
                                                })));
                                            }
                                        }
                                    }
                                    let at = time.or(newest).map(|t| t.timestamp_millis());
                                    if let (true, Some(at)) = (n.devices, at) {
                                        session.give(Err(Aside::Device(DeviceNews {
                                            identifier: tree.identifier.clone(),
                                            tree: sent.as_ref().map(|(t, _)| t.clone()),
                                            at,
                                            source: Some((
                                                source.topic.to_string(),
                                                source.partition,
                                                source.offset,
                                            )),
                                        })));
                                    }
                                    if let Some((t, fp)) = sent {
                                        seen.remember(t, fp);
                                    }
                                }
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
                                            measurement: Arc::new(measurement),
                                            late,
                                            effective,
                                        })
                                    },
                                ));
                            }
                            Err(d) => {
                                Metrics::add(&n.metrics.dead_letters, 1);
                                session.give(Err(Aside::Dead(*d)));
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
    let (judged, aside): (Stream<G, Judged>, Stream<G, Aside>) = out.ok_err(|r| r);
    let (dead, rest): (Stream<G, DeadLetter>, Stream<G, Aside>) = aside.ok_err(|a| match a {
        Aside::Dead(d) => Ok(d),
        other => Err(other),
    });
    let (devices, states) = rest.ok_err(|a| match a {
        Aside::Device(r) => Ok(r),
        Aside::State(j) => Err(j),
        Aside::Dead(_) => unreachable!("dead letters went their way"),
    });
    Normalizing {
        judged,
        dead,
        devices,
        states,
    }
}

/// Groups measurements into Observation windows and emits their versions as the job's
/// watermark passes their checkpoints (see `window`), holding the epochs of the values
/// waiting for one: offsets commit only past what a version holds.
pub(super) fn window_operator<G: Scope<Timestamp = u64>>(
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
        let mut pending: EpochGate<Judged, (usize, Mark)> = EpochGate::new();
        // Every epoch not yet applied, or holding a value no version has taken yet: the
        // oldest is where versions are given.
        let mut caps: BTreeMap<u64, Capability<u64>> = BTreeMap::new();
        let mut open = 0u64;
        let mut waiting = 0u64;
        let mut last_evict = Instant::now();
        move |(input, f1), (marks, f2), output| {
            input.for_each_time(|time, data| pending.hold_a(time, data));
            marks.for_each_time(|time, data| pending.hold_b(time, data));
            for epoch in pending.complete(f1, f2) {
                let (t, ms, ks) = (epoch.time, epoch.a, epoch.b);
                caps.entry(t).or_insert(epoch.cap);
                for j in ms.into_iter().flatten() {
                    windows.add(&j.measurement, j.effective, t);
                }
                for (worker, mark) in ks.into_iter().flatten() {
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
            caps.retain(|t, _| windows.holds(*t));
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
    use crate::dataflow::sink_thread::attach;
    use crate::sinks::observations::tests::{bedside_fhir, heart_rate};
    use crate::sinks::Sink;
    use crate::sources::{Positions, Source};
    use chrono::{DateTime, TimeZone, Utc};
    use std::collections::VecDeque;
    use std::sync::atomic::AtomicBool;
    use std::sync::Mutex;
    use timely::communication::Allocate;
    use timely::dataflow::operators::{Concatenate, Probe};
    use timely::dataflow::operators::{Input, Inspect};
    use timely::worker::Worker;

    fn hr(at: DateTime<Utc>, v: &str) -> Judged {
        Judged {
            measurement: Arc::new(heart_rate(at, v)),
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
                    Behind::default(),
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
