//! The sink operator: hands outputs to the sink on a thread of its own and holds each epoch
//! open until the sink reports it durable.
//!
//! Building and writing outputs (Observation builds, fsync, Kafka acknowledgements) runs off
//! the worker thread, so reading and normalizing go on meanwhile. The channel to the thread
//! is bounded: a sink that falls behind blocks the worker, which slows its reads instead of
//! buffering without bound.

use super::control::Control;
use crate::sinks::Sink;
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{channel, sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;
use timely::dataflow::{Scope, Stream};

enum Command<D> {
    Write(u64, Vec<D>),
    Flush(u64),
}

/// Batches in flight to the sink thread before the worker waits.
const QUEUE: usize = 16;

/// A failed flush: why, and whether retrying can help.
struct Failure {
    message: String,
    fatal: bool,
}

/// Answers of the sink thread: a flush's sequence number and its outcome.
type Done = Receiver<(u64, Result<(), Failure>)>;

fn spawn_sink<D, S>(
    name: &str,
    mut sink: S,
    wake: timely::scheduling::SyncActivator,
) -> (SyncSender<Command<D>>, Done)
where
    D: Send + 'static,
    S: Sink<D> + Send + 'static,
{
    let (tx, rx) = sync_channel::<Command<D>>(QUEUE);
    let (done_tx, done_rx) = channel();
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            let failure = |e: anyhow::Error| Failure {
                fatal: e.downcast_ref::<crate::sinks::Fatal>().is_some(),
                message: format!("{e:#}"),
            };
            let mut write_error: Option<Failure> = None;
            for cmd in rx {
                match cmd {
                    Command::Write(epoch, items) => {
                        for d in items {
                            if let Err(e) = sink.write(epoch, d) {
                                write_error.get_or_insert_with(|| failure(e));
                            }
                        }
                    }
                    Command::Flush(seq) => {
                        let r = match write_error.take() {
                            Some(e) => Err(e),
                            None => sink.flush().map_err(failure),
                        };
                        if r.is_ok() {
                            // Durable in the sink, its epochs not yet released nor committed.
                            crate::failpoint::hit("sink.flushed");
                        }
                        tracing::debug!(
                            seq,
                            ok = r.is_ok(),
                            fatal = r.as_ref().err().map(|f| f.fatal),
                            "flush done"
                        );
                        if done_tx.send((seq, r)).is_err() {
                            return;
                        }
                        let _ = wake.activate();
                    }
                }
            }
        })
        .expect("spawn the sink thread");
    (tx, done_rx)
}

/// One output of a worker: a sink, its name in logs and metrics, and how often it flushes
/// (zero: once per complete epoch).
pub(super) struct NamedSink<D> {
    /// Name in logs.
    pub name: &'static str,
    /// The sink.
    pub sink: Box<dyn Sink<D> + Send>,
    /// Flush at most this often.
    pub interval: Duration,
}

impl<D> NamedSink<D> {
    /// `sink`, named `name`, flushing at most once per `interval`.
    pub fn new(
        name: &'static str,
        sink: impl Sink<D> + Send + 'static,
        interval: Duration,
    ) -> Self {
        Self {
            name,
            sink: Box::new(sink),
            interval,
        }
    }
}

/// Writes `stream` to each output; the returned streams carry no data, and their frontiers
/// are the outputs' durable frontiers.
pub(super) fn attach<G, D>(
    stream: &Stream<G, D>,
    outputs: Vec<NamedSink<D>>,
    control: &Arc<Control>,
) -> Vec<Stream<G, ()>>
where
    G: Scope<Timestamp = u64>,
    D: Clone + Send + 'static,
{
    outputs
        .into_iter()
        .map(|o| sink_operator(stream, o.name, o.sink, o.interval, control.clone()))
        .collect()
}

/// Writes a stream to `sink`, flushing at most once per `interval`; the returned stream
/// carries no data, and its frontier is the sink's durable frontier.
pub(super) fn sink_operator<G, D, S>(
    stream: &Stream<G, D>,
    name: &str,
    sink: S,
    interval: Duration,
    control: Arc<Control>,
) -> Stream<G, ()>
where
    G: Scope<Timestamp = u64>,
    D: Clone + Send + 'static,
    S: Sink<D> + Send + 'static,
{
    let name_owned = name.to_string();
    let scope = stream.scope();
    stream.unary_frontier::<CapacityContainerBuilder<Vec<()>>, _, _, _>(Pipeline, name, move |_, info| {
        let activator = scope.activator_for(info.address.clone());
        let wake = scope.sync_activator_for(info.address.to_vec());
        let (tx, done) = spawn_sink(&name_owned, sink, wake);
        let backlog = control.backlog().register();
        let set_backlog = move |since: Option<Instant>| {
            *backlog.lock().unwrap_or_else(|p| p.into_inner()) = since;
        };
        // Data handed to the thread but not yet asked to flush: the oldest epoch's capability,
        // and since when.
        let mut held: Option<(Capability<u64>, Instant)> = None;
        // Flushes asked for and not yet answered, with the capability each releases and when
        // its oldest data came.
        let mut in_flight: VecDeque<(u64, Capability<u64>, Instant)> = VecDeque::new();
        let mut seq = 0u64;
        let mut retry_at: Option<Instant> = None;
        let mut backoff = Duration::from_millis(100);
        let mut failing = false;
        let mut last_flush: Option<Instant> = None;
        move |(input, frontier), _output| {
            input.for_each_time(|time, data| {
                let items: Vec<D> = data.flat_map(|batch| batch.drain(..)).collect();
                if !items.is_empty() {
                    // Blocks when the sink is behind: backpressure on this worker's reads.
                    let _ = tx.send(Command::Write(*time.time(), items));
                }
                match &mut held {
                    Some((h, _)) if time.time() >= h.time() => {}
                    Some((h, _)) => *h = time.retain(),
                    None => held = Some((time.retain(), Instant::now())),
                }
            });
            while let Ok((done_seq, result)) = done.try_recv() {
                match result {
                    Ok(()) => {
                        // Releasing the capabilities tells the probe these epochs are durable.
                        while in_flight.front().is_some_and(|(s, ..)| *s <= done_seq) {
                            in_flight.pop_front();
                        }
                        backoff = Duration::from_millis(100);
                        if failing {
                            failing = false;
                            control.metrics().failing_sinks.fetch_sub(1, Ordering::Relaxed);
                        }
                    }
                    Err(Failure { message, fatal: true }) => {
                        // Nothing of the held epochs is durable and nothing more will be: the
                        // worker stops without committing past them.
                        control.fail(format!("{name_owned}: {message}"));
                        return;
                    }
                    Err(Failure { message: e, .. }) => {
                        tracing::error!(sink = %name_owned, retry_in_ms = backoff.as_millis() as u64, "flush failed, outputs kept and retried: {e}");
                        if !failing {
                            failing = true;
                            control.metrics().failing_sinks.fetch_add(1, Ordering::Relaxed);
                        }
                        retry_at = Some(Instant::now() + backoff);
                        backoff = (backoff * 2).min(Duration::from_secs(10));
                    }
                }
            }
            if let Some(at) = retry_at {
                if Instant::now() < at {
                    activator.activate_after(at - Instant::now());
                    return;
                }
                retry_at = None;
                if let Some((s, ..)) = in_flight.back() {
                    // The sink kept everything: flushing again retries it all.
                    let _ = tx.send(Command::Flush(*s));
                }
            }
            // Flush at most once per interval: once every input of the held epochs has
            // arrived, or, for data an upstream operator holds epochs under (a window waiting
            // for its next version), once the data has waited an interval.
            let complete = held.as_ref().is_some_and(|(h, _)| !frontier.less_equal(h.time()));
            // (Sinks without an interval flush per complete epoch: dead letters and alerts come
            // from operators that hold no epoch for long.)
            let waited = !interval.is_zero()
                && held.as_ref().is_some_and(|(_, since)| since.elapsed() >= interval);
            if complete && !frontier.is_empty() {
                if let Some(wait) = last_flush.and_then(|l| interval.checked_sub(l.elapsed())) {
                    activator.activate_after(wait);
                    set_backlog(in_flight.front().map(|f| f.2).or(held.as_ref().map(|h| h.1)));
                    return;
                }
            }
            if (complete || waited) && in_flight.len() < 2 {
                last_flush = Some(Instant::now());
                seq += 1;
                let _ = tx.send(Command::Flush(seq));
                let (cap, since) = held.take().expect("held");
                in_flight.push_back((seq, cap, since));
            } else if let Some((_, since)) = &held {
                // Incomplete data waits for its interval; completion, and the answer to a flush
                // in flight, wake the operator anyway.
                if !complete && !waited && !interval.is_zero() {
                    activator.activate_after(interval.saturating_sub(since.elapsed()));
                }
            }
            set_backlog(in_flight.front().map(|f| f.2).or(held.as_ref().map(|h| h.1)));
        }
    })
}
