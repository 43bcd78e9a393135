//! The job's event clock: how far event time has surely advanced (a watermark).
//!
//! Each worker's [`InputClock`] follows the event times its input delivers, per source
//! partition and device, and reports a [`Mark`]: the clock of its slowest busy partition
//! less the allowed lateness. A partition's clock is that of its slowest device still
//! sending (a device whose clock runs behind the others holds the clock back rather than
//! having its readings judged late), where a device silent for [`DEVICE_SILENCE_MS`] of the
//! partition's event time no longer counts. A device's clock is when its next reading is
//! due: its newest event time plus its last sampling interval, at most half the allowed
//! lateness (see [`Partition::observe`]). A partition that has ended (`--until-end`) holds nothing back;
//! in a live job neither does one that has delivered nothing for `idle_timeout` of wall
//! time, and once all of a worker's input is idle its mark advances with the wall clock from
//! the newest event time it saw, so a silent ward cannot stall alerts. Marks are broadcast
//! to every worker, and the [`Watermark`] is the least mark of the workers that hold it
//! back (the greatest of the rest when none does). It never goes back.
//!
//! The wall clock enters only through idleness, and only in live jobs: a replay (`--until-end`)
//! gets the same watermark-ordered processing at any speed, with any number of workers.

use rustc_hash::FxHashMap as HashMap;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What a worker reports of its input's event time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mark {
    /// Its readings at or before this time (event ms) are in, barring late ones.
    At(i64),
    /// It holds nothing back (its input ended or is idle); how far event time has come by
    /// it, when it saw any.
    Free(Option<i64>),
}

/// A source partition: (topic, partition).
pub type PartitionKey = (Arc<str>, i32);

/// How far a device's clock (when its next reading is due) may fall behind its partition's
/// newest event time and still hold the partition's clock: a monitor whose clock runs up to
/// this much behind is waited for; one further behind, or disconnected, stops delaying
/// everyone else's alerts after this much.
pub const DEVICE_SILENCE_MS: i64 = 30_000;

/// A device's event times, as its partition's clock follows them.
#[derive(Clone, Copy)]
struct DeviceTimes {
    newest: i64,
    /// Its newest time plus the credit for its sampling interval: its clock.
    due: i64,
}

/// A partition's event times: per device its newest, and when it last delivered (wall).
struct Partition {
    newest: i64,
    /// A reading of a known device allocates nothing.
    devices: HashMap<Arc<str>, DeviceTimes>,
    /// How many devices have each clock ([`DeviceTimes::due`]): the slowest is the first.
    /// Counts, not device names: moving a device's time compares integers only (a set of
    /// (time, name) compared names of the many devices of one second, 3.6 % of the job).
    by_time: std::collections::BTreeMap<i64, usize>,
    last: Instant,
    /// The offset after the last message observed.
    next: Option<i64>,
    /// The greatest [`Partition::slowest`] so far: the partition's clock never goes back.
    /// A device joining a little behind the others would otherwise pull it back, and a
    /// reading between the two would be on time for its partition yet behind a watermark
    /// already published, judged or dropped depending on the other workers' pace.
    held: i64,
}

/// A partition's clock as it stood before the message at `offset`: written beside the
/// offsets the job commits, so that a restart judges lateness exactly as the run it
/// resumes would have (see [`InputClock::cut_at`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PartitionCut {
    /// The offset the state stands before.
    pub offset: i64,
    newest: i64,
    /// Per device its newest event time.
    devices: Vec<(String, i64)>,
    /// Per device (in the order of `devices`) the credit its clock runs ahead of its newest
    /// time; absent from a cut written before devices had one (none then).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    credits: Vec<i64>,
    #[serde(default = "min_time")]
    held: i64,
}

fn min_time() -> i64 {
    i64::MIN
}

impl PartitionCut {
    /// A partition nothing was observed of, before `offset`.
    pub fn empty(offset: i64) -> Self {
        Self {
            offset,
            newest: i64::MIN,
            devices: Vec::new(),
            credits: Vec::new(),
            held: i64::MIN,
        }
    }
}

impl Partition {
    fn new(now: Instant) -> Self {
        Self {
            newest: i64::MIN,
            devices: HashMap::default(),
            by_time: Default::default(),
            last: now,
            next: None,
            held: i64::MIN,
        }
    }

    fn from_cut(c: &PartitionCut, now: Instant) -> Self {
        let mut p = Self::new(now);
        p.newest = c.newest;
        for (i, (d, t)) in c.devices.iter().enumerate() {
            let credit = c.credits.get(i).copied().unwrap_or(0);
            let times = DeviceTimes {
                newest: *t,
                due: t.saturating_add(credit),
            };
            if p.devices.insert(Arc::from(d.as_str()), times).is_none() {
                *p.by_time.entry(times.due).or_default() += 1;
            }
        }
        p.next = Some(c.offset);
        p.held = c.held;
        p
    }

    fn cut(&self, offset: i64) -> PartitionCut {
        let mut all: Vec<(&str, DeviceTimes)> =
            self.devices.iter().map(|(d, t)| (&**d, *t)).collect();
        all.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let devices = all.iter().map(|(d, t)| (d.to_string(), t.newest)).collect();
        let credits = all.iter().map(|(_, t)| t.due - t.newest).collect();
        PartitionCut {
            offset,
            newest: self.newest,
            devices,
            credits,
            held: self.held,
        }
    }

    /// A reading of `device` at `at`. The device's clock becomes `at` plus the interval
    /// since its previous newest reading, at most `credit_cap` (half the allowed lateness):
    /// the time its next reading is due. Without the credit every reading would wait a whole sampling
    /// interval more than the lateness, for the device whose next reading happens to come
    /// last. The credit costs an in-order reading nothing: with the clock at most half the
    /// lateness past a device's newest time, the watermark stays half the lateness behind
    /// it. A device's own reading older than its newest (re-sent, re-ordered) keeps at
    /// least half the lateness.
    fn observe(&mut self, device: &str, at: i64, credit_cap: i64) {
        self.newest = self.newest.max(at);
        match self.devices.get_mut(device) {
            Some(t) if t.newest >= at => {}
            Some(t) => {
                let before = t.due;
                let credit = (at - t.newest).min(credit_cap);
                *t = DeviceTimes {
                    newest: at,
                    due: at.saturating_add(credit),
                };
                if t.due != before {
                    super::count_down(&mut self.by_time, before);
                    *self.by_time.entry(t.due).or_default() += 1;
                }
            }
            None => {
                let t = DeviceTimes {
                    newest: at,
                    due: at,
                };
                self.devices.insert(Arc::from(device), t);
                *self.by_time.entry(at).or_default() += 1;
            }
        }
        // Devices silent for long in this partition's event time: forgotten.
        let silent_before = self.newest.saturating_sub(DEVICE_SILENCE_MS);
        if self
            .by_time
            .first_key_value()
            .is_some_and(|(t, _)| *t < silent_before)
        {
            // Rare (a device stopped sending): one pass forgets every silent one.
            let by_time = &mut self.by_time;
            self.devices.retain(|_, t| {
                let keep = t.due >= silent_before;
                if !keep {
                    super::count_down(by_time, t.due);
                }
                keep
            });
        }
    }

    /// The clock of the slowest device still sending.
    fn slowest(&self) -> i64 {
        self.by_time
            .first_key_value()
            .map_or(self.newest, |(t, _)| *t)
    }

    /// The partition's clock: the slowest sending device's clock, never going back.
    fn clock(&self) -> i64 {
        self.held.max(self.slowest())
    }
}

/// One worker's input, as its event clock sees it.
pub struct InputClock {
    lateness_ms: i64,
    idle: Duration,
    live: bool,
    started: Instant,
    /// The partitions the source reads, with whether each has ended; empty when the source
    /// does not say (partitions are then known by what they deliver).
    assigned: Vec<(PartitionKey, bool)>,
    /// Per partition: its devices' event times, and when it last delivered (wall).
    seen: HashMap<PartitionKey, Partition>,
    newest: Option<i64>,
    last_input: Option<Instant>,
    sent: u64,
    processed: u64,
    finished: bool,
    /// Cuts asked for and not yet taken: per partition, the offsets to cut before.
    wanted: HashMap<PartitionKey, std::collections::BTreeSet<i64>>,
    /// Cuts taken and not yet committed, per partition by offset.
    cuts: HashMap<PartitionKey, std::collections::BTreeMap<i64, PartitionCut>>,
    /// Cuts a previous run left, per partition: the one at the offset this run starts from
    /// is its state.
    restored: HashMap<PartitionKey, Vec<PartitionCut>>,
    /// The source's current epoch: marks are stamped with it.
    pub epoch: u64,
    /// Wakes the operator that publishes the marks.
    pub activator: Option<timely::scheduling::Activator>,
}

impl InputClock {
    /// A clock allowing `lateness` behind each partition's newest event; `live` lets idle
    /// input release the clock after `idle` of wall time.
    pub fn new(lateness: Duration, idle: Duration, live: bool) -> Self {
        Self {
            lateness_ms: lateness.as_millis().min(i64::MAX as u128 / 4) as i64,
            idle,
            live,
            started: Instant::now(),
            assigned: Vec::new(),
            seen: HashMap::default(),
            newest: None,
            last_input: None,
            sent: 0,
            processed: 0,
            finished: false,
            wanted: HashMap::default(),
            cuts: HashMap::default(),
            restored: HashMap::default(),
            epoch: 0,
            activator: None,
        }
    }

    /// Starts from the cuts a previous run committed with its offsets.
    pub fn restore(&mut self, cuts: HashMap<PartitionKey, Vec<PartitionCut>>) {
        self.restored = cuts;
    }

    /// Asks for each partition's state at `positions` (offsets not yet all observed): taken
    /// before the first message at or past it, or at once when the partition stands there.
    pub fn want_cuts<'a>(&mut self, positions: impl Iterator<Item = (&'a PartitionKey, i64)>) {
        for (k, o) in positions {
            match self.seen.get(k) {
                Some(p) if p.next == Some(o) => {
                    self.cuts.entry(k.clone()).or_default().insert(o, p.cut(o));
                }
                _ => {
                    self.wanted.entry(k.clone()).or_default().insert(o);
                }
            }
        }
    }

    /// Offsets up to `positions` are committed: their cuts are no longer needed.
    pub fn committed<'a>(&mut self, positions: impl Iterator<Item = (&'a PartitionKey, i64)>) {
        for (k, o) in positions {
            if let Some(cs) = self.cuts.get_mut(k) {
                *cs = cs.split_off(&o);
            }
        }
    }

    /// The partition's state just before `offset`, when known: a cut taken there, the
    /// state itself when the partition stands there, or the cut a previous run left there.
    pub fn cut_at(&self, k: &PartitionKey, offset: i64) -> Option<PartitionCut> {
        if let Some(c) = self.cuts.get(k).and_then(|cs| cs.get(&offset)) {
            return Some(c.clone());
        }
        match self.seen.get(k) {
            Some(p) if p.next == Some(offset) => Some(p.cut(offset)),
            Some(_) => None,
            // Nothing observed since the start: what the start found there, which a
            // restart from here would find again.
            None => Some(
                self.restored
                    .get(k)
                    .and_then(|cs| cs.iter().find(|c| c.offset == offset))
                    .cloned()
                    .unwrap_or_else(|| PartitionCut::empty(offset)),
            ),
        }
    }

    /// The source handed out `n` messages at `now`; `partitions` is what it reads.
    pub fn polled(
        &mut self,
        n: usize,
        partitions: Vec<(PartitionKey, bool)>,
        finished: bool,
        now: Instant,
    ) {
        self.sent += n as u64;
        self.assigned = partitions;
        self.finished |= finished;
        if n > 0 {
            self.last_input = Some(now);
        }
    }

    /// A message was normalized (or dead-lettered): `times` are its measurements'
    /// (device, event time), from `partition`. Tells in `late`, per measurement, whether it
    /// came more than the allowed lateness behind its partition: a verdict that depends on
    /// the partition's own order alone, so every run of the input gives the same. Returns
    /// the partition's clock less the lateness before the message (None before its first
    /// reading): no mark published before the message was beyond it, so a late reading is
    /// taken to have arrived just after it.
    pub fn observe<'a>(
        &mut self,
        partition: &PartitionKey,
        offset: i64,
        times: impl Iterator<Item = (&'a str, i64)>,
        now: Instant,
        late: &mut Vec<bool>,
    ) -> Option<i64> {
        self.processed += 1;
        late.clear();
        let p = match self.seen.get_mut(partition) {
            Some(p) => p,
            None => {
                // The first message since the start: the state the last run left at this
                // offset, when it left one.
                let p = (self.restored.get(partition))
                    .and_then(|cs| cs.iter().find(|c| c.offset == offset))
                    .map_or_else(|| Partition::new(now), |c| Partition::from_cut(c, now));
                self.seen.entry(partition.clone()).or_insert(p)
            }
        };
        if let Some(wanted) = self.wanted.get_mut(partition) {
            while let Some(at) = wanted.first().copied().filter(|at| *at <= offset) {
                wanted.pop_first();
                self.cuts
                    .entry(partition.clone())
                    .or_default()
                    .insert(at, p.cut(at));
            }
        }
        p.next = Some(offset + 1);
        let mut times = times.peekable();
        times.peek()?;
        let bound = (!p.devices.is_empty()).then(|| p.clock().saturating_sub(self.lateness_ms));
        for (device, at) in times {
            late.push(bound.is_some_and(|b| at <= b));
            p.observe(device, at, self.lateness_ms / 2);
            self.newest = Some(self.newest.map_or(at, |n| n.max(at)));
        }
        p.held = p.clock();
        p.last = now;
        bound
    }

    /// Everything the source handed out has been normalized, and it will hand out no more.
    pub fn done(&self) -> bool {
        self.finished && self.processed >= self.sent
    }

    /// This worker's mark as of `now` (wall).
    pub fn mark(&self, now: Instant) -> Mark {
        if self.done() {
            return Mark::Free(self.newest);
        }
        let idle_since = |since: Instant| self.live && now.duration_since(since) >= self.idle;
        // Per partition, whether it stands at its end. A source that does not say is taken
        // to, so that its partitions can go idle.
        let reported = !self.assigned.is_empty();
        let parts: Vec<(&PartitionKey, bool)> = if reported {
            self.assigned.iter().map(|(k, e)| (k, *e)).collect()
        } else {
            self.seen.keys().map(|k| (k, true)).collect()
        };
        if parts.is_empty() && !idle_since(self.started) {
            return Mark::At(i64::MIN);
        }
        let mut bound: Option<i64> = None;
        for (k, at_end) in parts {
            if at_end && !self.live {
                // A replay's partition read to its end: ended.
                continue;
            }
            // A live partition goes idle only with nothing left to read: one slow to
            // deliver its backlog still holds the clock, however long it takes.
            let idle = |since: Instant| at_end && idle_since(since);
            match self.seen.get(k) {
                Some(p) if !idle(p.last) => {
                    let b = p.clock().saturating_sub(self.lateness_ms);
                    bound = Some(bound.map_or(b, |x| x.min(b)));
                }
                Some(_) => {}
                None if idle(self.started) => {}
                None => return Mark::At(i64::MIN),
            }
        }
        match bound {
            Some(b) => Mark::At(b),
            None => Mark::Free(self.idle_advance(now)),
        }
    }

    /// How far event time has come by a worker none of whose input holds the clock back:
    /// in a live job the newest event time plus the wall time input has been quiet, less the
    /// lateness; in a replay, the newest event time.
    fn idle_advance(&self, now: Instant) -> Option<i64> {
        let n = self.newest?;
        if !self.live {
            return Some(n);
        }
        let quiet = self
            .last_input
            .map_or(Duration::ZERO, |l| now.duration_since(l));
        Some(
            n.saturating_add(quiet.as_millis().min(i64::MAX as u128 / 4) as i64)
                .saturating_sub(self.lateness_ms),
        )
    }
}

/// The job's watermark, from every worker's latest mark.
pub struct Watermark {
    marks: Vec<Option<Mark>>,
    current: Option<i64>,
}

impl Watermark {
    /// Waits for marks from `workers` workers.
    pub fn new(workers: usize) -> Self {
        Self {
            marks: vec![None; workers],
            current: None,
        }
    }

    /// Worker `worker` reports `mark`.
    pub fn update(&mut self, worker: usize, mark: Mark) {
        if let Some(m) = self.marks.get_mut(worker) {
            *m = Some(mark);
        }
    }

    /// Event time up to which everything is in (None until every worker reported).
    pub fn current(&mut self) -> Option<i64> {
        if self.marks.iter().any(Option::is_none) {
            return self.current;
        }
        let held = self
            .marks
            .iter()
            .filter_map(|m| match m {
                Some(Mark::At(t)) => Some(*t),
                _ => None,
            })
            .min();
        let free = || {
            self.marks
                .iter()
                .filter_map(|m| match m {
                    Some(Mark::Free(t)) => *t,
                    _ => None,
                })
                .max()
        };
        if let Some(c) = held.or_else(free) {
            if c > i64::MIN {
                self.current = Some(self.current.map_or(c, |x| x.max(c)));
            }
        }
        self.current
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(p: i32) -> PartitionKey {
        ("vitals".into(), p)
    }

    #[test]
    fn the_slowest_busy_partition_less_the_lateness_is_the_mark() {
        let mut c = InputClock::new(Duration::from_secs(5), Duration::from_secs(5), false);
        let now = Instant::now();
        c.polled(2, vec![(key(0), false), (key(1), false)], false, now);
        assert_eq!(c.mark(now), Mark::At(i64::MIN), "nothing yet from either");
        c.observe(
            &key(0),
            1,
            [100_000].into_iter().map(|t| ("BM-1", t)),
            now,
            &mut Vec::new(),
        );
        assert_eq!(
            c.mark(now),
            Mark::At(i64::MIN),
            "partition 1 may still bring anything"
        );
        c.observe(
            &key(1),
            2,
            [40_000, 60_000].into_iter().map(|t| ("BM-1", t)),
            now,
            &mut Vec::new(),
        );
        // BM-1's clock in partition 1: 60 s plus its 20 s interval, at most half the
        // lateness.
        assert_eq!(c.mark(now), Mark::At(57_500));
        // Partition 1 ends (a replay): partition 0 alone holds the clock.
        c.polled(0, vec![(key(0), false), (key(1), true)], false, now);
        assert_eq!(c.mark(now), Mark::At(95_000));
        c.polled(0, vec![(key(0), true), (key(1), true)], true, now);
        assert_eq!(
            c.mark(now),
            Mark::Free(Some(100_000)),
            "ended: nothing held"
        );
        // A replay never lets the wall clock in, however long it waits.
        let later = now + Duration::from_secs(3600);
        let mut r = InputClock::new(Duration::from_secs(5), Duration::from_secs(5), false);
        r.polled(1, vec![(key(0), false)], false, now);
        r.observe(
            &key(0),
            3,
            [100_000].into_iter().map(|t| ("BM-1", t)),
            now,
            &mut Vec::new(),
        );
        assert_eq!(r.mark(later), Mark::At(95_000));
    }

    #[test]
    fn a_device_whose_clock_runs_behind_holds_the_clock_until_it_falls_silent() {
        let mut c = InputClock::new(Duration::from_secs(5), Duration::from_secs(5), false);
        let now = Instant::now();
        c.polled(3, vec![(key(0), false)], false, now);
        c.observe(
            &key(0),
            4,
            [("BM-1", 100_000), ("BM-2", 90_000)].into_iter(),
            now,
            &mut Vec::new(),
        );
        assert_eq!(
            c.mark(now),
            Mark::At(85_000),
            "BM-2, 10 s behind, is not late"
        );
        let mut late = Vec::new();
        c.observe(
            &key(0),
            5,
            [("BM-2", 80_000), ("BM-1", 151_000)].into_iter(),
            now,
            &mut late,
        );
        assert_eq!(
            late,
            vec![true, false],
            "80 s is more than 5 s behind BM-2's 90 s"
        );
        assert_eq!(
            c.mark(now),
            Mark::At(148_500),
            "BM-2 over 30 s behind: no longer waited for (BM-1's clock: 151 s and 2.5 s)"
        );
    }

    #[test]
    fn a_device_s_clock_is_when_its_next_reading_is_due_and_no_in_order_reading_is_late() {
        let mut c = InputClock::new(Duration::from_secs(5), Duration::from_secs(5), false);
        let now = Instant::now();
        c.polled(6, vec![(key(0), false)], false, now);
        let mut late = Vec::new();
        // Two 1 Hz monitors half a second apart.
        for (o, d, t) in [
            (0, "BM-1", 100_000),
            (1, "BM-2", 100_500),
            (2, "BM-1", 101_000),
            (3, "BM-2", 101_500),
        ] {
            c.observe(&key(0), o, [(d, t)].into_iter(), now, &mut late);
            assert_eq!(late, vec![false]);
        }
        assert_eq!(
            c.mark(now),
            Mark::At(97_000),
            "BM-1's next reading is due at 102 s: readings wait the lateness past that, \
             not a second more for BM-1 to send it"
        );
        // A cut and a restart from it keep the credit.
        let cut = c.cut_at(&key(0), 4).expect("the partition stands at 4");
        let json = serde_json::to_string(&cut).unwrap();
        let mut r = InputClock::new(Duration::from_secs(5), Duration::from_secs(5), false);
        r.restore([(key(0), vec![cut])].into_iter().collect());
        r.polled(1, vec![(key(0), false)], false, now);
        r.observe(&key(0), 4, [("BM-2", 102_500)].into_iter(), now, &mut late);
        assert_eq!(r.mark(now), Mark::At(97_000));
        // A cut written before devices had credits reads as none.
        let old: PartitionCut =
            serde_json::from_str(&json.replace(r#","credits":[1000,1000]"#, "")).unwrap();
        assert!(old.credits.is_empty(), "{json}");

        // However far apart a device's readings come, the credit is at most half the
        // lateness: every reading newer than the device's newest is on time, and one
        // re-sent out of order keeps half the lateness.
        let mut c = InputClock::new(Duration::from_secs(5), Duration::from_secs(5), false);
        c.polled(4, vec![(key(0), false)], false, now);
        for (o, t, is_late) in [
            (0, 100_000, false),
            (1, 110_000, false),
            (2, 110_001, false),
            (3, 200_000, false),
            (4, 197_501, false),
            (5, 197_500, true),
        ] {
            c.observe(&key(0), o, [("BM-1", t)].into_iter(), now, &mut late);
            assert_eq!(late, vec![is_late], "{t}");
        }
        assert_eq!(c.mark(now), Mark::At(197_500));
    }

    proptest::proptest! {
        /// Devices that all joined at the start and each send in order (any intervals, any
        /// interleaving, none left silent for 30 s): no reading is ever late, whatever the
        /// lateness and the credits.
        #[test]
        fn no_in_order_reading_of_a_known_device_is_late(
            lateness in 0u64..10_000,
            steps in proptest::collection::vec((0usize..4, 0i64..12_000), 1..200),
        ) {
            let mut c = InputClock::new(Duration::from_millis(lateness), Duration::from_secs(5), false);
            let now = Instant::now();
            let names = ["BM-0", "BM-1", "BM-2", "BM-3"];
            c.polled(steps.len() + 1, vec![(key(0), false)], false, now);
            let mut late = Vec::new();
            let mut times = [1_000_000i64; 4];
            c.observe(&key(0), 0, names.iter().map(|d| (*d, 1_000_000)), now, &mut late);
            for (o, (d, gap)) in steps.into_iter().enumerate() {
                let slowest = *times.iter().min().unwrap();
                // Never more than 20 s ahead of the slowest (it would fall silent).
                let at = times[d].max((times[d] + gap).min(slowest + 20_000));
                times[d] = at;
                c.observe(&key(0), o as i64 + 1, [(names[d], at)].into_iter(), now, &mut late);
                proptest::prop_assert_eq!(&late, &vec![false], "{} at {}", names[d], at);
            }
        }
    }

    #[test]
    fn a_device_joining_behind_does_not_pull_the_clock_back() {
        let mut c = InputClock::new(Duration::from_secs(5), Duration::from_secs(5), false);
        let now = Instant::now();
        c.polled(3, vec![(key(0), false)], false, now);
        let mut late = Vec::new();
        c.observe(&key(0), 0, [("BM-1", 100_000)].into_iter(), now, &mut late);
        assert_eq!(c.mark(now), Mark::At(95_000));
        // BM-2 joins 3 s behind: on time, and the mark stays where it was published.
        c.observe(&key(0), 1, [("BM-2", 97_000)].into_iter(), now, &mut late);
        assert_eq!(late, vec![false]);
        assert_eq!(c.mark(now), Mark::At(95_000), "never back to 92 s");
        // A reading at 94 s is behind that mark: late, whatever the other workers did.
        c.observe(&key(0), 2, [("BM-2", 94_000)].into_iter(), now, &mut late);
        assert_eq!(late, vec![true]);
    }

    #[test]
    fn in_a_live_job_idle_input_stops_holding_the_clock_and_it_follows_the_wall_clock() {
        let mut c = InputClock::new(Duration::from_secs(5), Duration::from_secs(2), true);
        let t0 = Instant::now();
        let now = t0;
        c.polled(1, vec![(key(0), false), (key(1), false)], false, now);
        c.observe(
            &key(0),
            6,
            [100_000].into_iter().map(|t| ("BM-1", t)),
            now,
            &mut Vec::new(),
        );
        assert_eq!(
            c.mark(t0),
            Mark::At(i64::MIN),
            "partition 1 is new, not idle"
        );
        let t1 = t0 + Duration::from_secs(3);
        assert_eq!(
            c.mark(t1),
            Mark::At(i64::MIN),
            "quiet, but not read to their ends: a slow fetch of a backlog is not idleness"
        );
        // Both read to their ends: partition 1 never delivered, partition 0 has been quiet
        // for 3 s: both idle.
        c.polled(0, vec![(key(0), true), (key(1), true)], false, t1);
        assert_eq!(c.mark(t1), Mark::Free(Some(98_000)));
        let t2 = t0 + Duration::from_secs(13);
        assert_eq!(
            c.mark(t2),
            Mark::Free(Some(108_000)),
            "advances with the wall"
        );
    }

    #[test]
    fn the_watermark_waits_for_every_worker_ignores_free_ones_and_never_goes_back() {
        let mut w = Watermark::new(3);
        w.update(0, Mark::At(50));
        w.update(1, Mark::Free(Some(500)));
        assert_eq!(w.current(), None, "worker 2 has not reported");
        w.update(2, Mark::At(70));
        assert_eq!(w.current(), Some(50));
        w.update(0, Mark::Free(Some(80)));
        assert_eq!(w.current(), Some(70), "free workers do not hold it");
        w.update(2, Mark::Free(Some(90)));
        assert_eq!(w.current(), Some(500), "all free: as far as any came");
        w.update(1, Mark::At(10));
        assert_eq!(w.current(), Some(500), "never back");
    }
}
