//! What every operator of a job may do to it: notice that it stops or failed, fail it with a
//! reason, and report how long a sink has held output not yet durable.

use crate::metrics::Metrics;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The job's stop and failure state, shared by the operators of every worker.
pub(crate) struct Control {
    stop: Arc<AtomicBool>,
    fatal: Mutex<Option<String>>,
    metrics: Arc<Metrics>,
    backlog: Backlog,
}

impl Control {
    /// Control over a job stopped by `stop` (a signal, `--duration`), reporting to `metrics`.
    pub(crate) fn new(stop: Arc<AtomicBool>, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            stop,
            fatal: Mutex::new(None),
            metrics,
            backlog: Backlog::default(),
        })
    }

    /// Whether the job was asked to stop (it then drains what it read).
    pub(crate) fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Whether the job failed: workers stop where they are, committing nothing more.
    pub(crate) fn failed(&self) -> bool {
        self.fatal.lock().map_or(true, |f| f.is_some())
    }

    /// Fails the job with `e` (the first reason wins) and stops it.
    pub(crate) fn fail(&self, e: impl std::fmt::Display) {
        let mut f = self.fatal.lock().unwrap_or_else(|p| p.into_inner());
        if f.is_none() {
            let reason = e.to_string();
            // Said now, not only when the job has wound down: a stop that hangs, then a
            // second Ctrl-C (which exits at once), would otherwise leave no reason at all.
            // The same text the run reports at its end, so no more than it says.
            tracing::error!("the job failed and stops: {reason}");
            *f = Some(reason);
        }
        self.metrics.healthy.store(false, Ordering::Relaxed);
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Why the job failed, once.
    pub(crate) fn take_failure(&self) -> Option<String> {
        self.fatal.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// The job's metrics.
    pub(crate) fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Since when the sinks have held output not yet durable.
    pub(crate) fn backlog(&self) -> &Backlog {
        &self.backlog
    }
}

/// Since when each sink of the process has held output not yet durable: what the sources
/// pause on (`max_durable_lag`). Not the probe: an epoch may wait for reasons that take no
/// memory (a window holding it for its next version), while output a sink cannot write
/// piles up.
#[derive(Default)]
pub(crate) struct Backlog {
    sinks: Mutex<Vec<Arc<Mutex<Option<Instant>>>>>,
}

impl Backlog {
    pub(super) fn register(&self) -> Arc<Mutex<Option<Instant>>> {
        let slot = Arc::new(Mutex::new(None));
        self.sinks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(slot.clone());
        slot
    }

    /// How long the oldest output of any sink has waited to be durable.
    pub(super) fn oldest(&self) -> Option<Duration> {
        let sinks = self.sinks.lock().unwrap_or_else(|p| p.into_inner());
        sinks
            .iter()
            .filter_map(|s| *s.lock().unwrap_or_else(|p| p.into_inner()))
            .min()
            .map(|since| since.elapsed())
    }
}
