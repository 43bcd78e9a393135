//! Offset commits: source positions per closed epoch, committed once every output of the
//! epoch is durable, with the event clock's cut and the dead-letter topic's position written
//! to the commit log first (Kafka sources whose positions outlive the run).

use super::commit_log;
use super::event_clock::{InputClock, PartitionKey};
use crate::metrics::{Latencies, Metrics};
use crate::sources::{Positions, Source};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use timely::dataflow::operators::probe::Handle as ProbeHandle;

/// How often the event clock is cut for an offset commit (Kafka sources).
pub(super) const CUT_EVERY: Duration = Duration::from_millis(500);

pub(super) fn now_ms() -> u64 {
    chrono::Utc::now().timestamp_millis().max(0) as u64
}

/// Source positions per closed epoch, committed once the epoch is durable.
pub(super) struct Committer {
    pub(super) source: Box<dyn Source>,
    /// Closed epochs: the positions at their end, when they opened, the Kafka timestamps
    /// of their messages (for the append → durable latency), and whether the event clock
    /// was asked for its state at those positions.
    pub(super) pending: VecDeque<Pending>,
    pub(super) stamps: Vec<i64>,
    pub(super) last: Option<Positions>,
    pub(super) metrics: Arc<Metrics>,
    /// With alerting checkpoints: the event clock's state is committed with the offsets.
    pub(super) cuts: Option<CutLog>,
}

/// A closed epoch waiting to be durable.
pub(super) struct Pending {
    pub(super) epoch: u64,
    pub(super) positions: Positions,
    pub(super) opened: Instant,
    pub(super) stamps: Vec<i64>,
    /// With the commit log: whether the clock was cut here, and per partition where the
    /// dead-letter topic stood.
    pub(super) cut: Option<DeadLetterAt>,
}

/// Per source partition, where the dead-letter topic stood (Kafka dead letters).
pub(super) type DeadLetterAt = BTreeMap<PartitionKey, BTreeMap<i32, i64>>;

/// The commit log (dataflow::commit_log): written before each offset commit.
pub(super) struct CutLog {
    pub(super) dir: std::path::PathBuf,
    /// At most this often: each commit waits for a cut, and a cut copies the partition's
    /// device clocks.
    pub(super) every: Duration,
    pub(super) last: Option<Instant>,
    /// Per partition, the records the committed offsets may stand at.
    pub(super) committed: std::collections::HashMap<PartitionKey, Vec<commit_log::Record>>,
    /// Where the dead-letter topic stands (Kafka dead letters).
    pub(super) dead_letters: Option<crate::sinks::dead_letter::Positions>,
    /// The records written for the commit under way.
    pub(super) pending: Vec<(PartitionKey, commit_log::Record)>,
}

impl Committer {
    pub(super) fn close_epoch(&mut self, epoch: u64, opened: Instant, clock: &mut InputClock) {
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
    pub(super) fn commit_durable(
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
    pub(super) fn commit(
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
    pub(super) fn commit_final(&mut self, clock: &mut InputClock) -> anyhow::Result<()> {
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
