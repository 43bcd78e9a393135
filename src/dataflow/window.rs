//! Keyed window state: measurements grouped per Observation (patient, device, type and
//! `periodInterval` window or correlation id), versioned on event time.
//!
//! A window emits a version when the watermark passes one of its checkpoints: every
//! `update_every` of event time (a grid aligned to the Unix epoch), and its close (the end
//! of its period). A version holds every value whose effective time is before the
//! checkpoint: the reading's own time, or, for a reading that came later than the allowed
//! lateness behind its partition, the moment its partition's clock says it arrived. Both
//! depend on the input alone, so a replay at any speed, with any number of workers or any
//! epoch length, emits the same versions with the same values; the wall clock decides only
//! when they are written. Late data for a closed window amends it at the next checkpoint.
//!
//! Values wait in their window until their version is emitted, and the window holds the
//! ingestion epoch each came in: offsets are committed only past values some durable
//! version holds, so a restart reads again what no version wrote.
//!
//! Windows whose close is further than the horizon behind the watermark and that hold no
//! waiting value are evicted; data arriving for them later starts a new group, which the
//! sinks merge into the stored Observation.

use crate::fhir::groups::{
    boundary, period_segment, period_start_ms, ObservationGroup, Series, TimeValue,
};
use crate::fhir::observation::{identifier_value, observation_id, Subjects};
use crate::fhir::sampled_data::{ticks_of, time_of, TICKS_PER_MS};
use crate::fhir::store::WindowUpdate;
use crate::mapping::fhir::PeriodInterval;
use crate::mapping::FhirMapping;
use crate::model::Measurement;
use arcstr::ArcStr;
use rustc_hash::FxHashMap;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// A value no version holds yet, with what orders it, in 40 bytes: on a drain the
/// watermark trails by minutes of event time and nearly every value read waits here, so its
/// size is most of the job's peak and of the fresh pages the kernel zeroes for it. The
/// ingestion epoch it came in is not kept per value: it is held per checkpoint
/// ([`Windows::holds`]).
struct Value {
    /// Its time in ticks ([`crate::fhir::sampled_data::ticks_of`]).
    ticks: i64,
    /// The checkpoint whose version first holds it (from its effective time).
    checkpoint: i64,
    /// Where it was read (interned topic, partition, offset): orders readings of one time.
    position: (u32, i32, i64),
    /// Interned ([`Windows::texts`]): readings repeat a few values ("72", "98"), so a value
    /// costs a pointer, and a version's group shares it instead of copying it.
    value: ArcStr,
}

/// One value name's values in a window.
///
/// A value some version holds keeps only its time and text, in a [`Series`] (about 3 bytes
/// where a waiting one takes 40; an hourly window at 1 Hz holds 3,600 of them per vital), one
/// per time (tick): of
/// readings of one time a version keeps the first, and every value still to come sorts
/// after those of its time already held (its checkpoint is later: its effective time is
/// past the watermark that emitted them).
struct Column {
    name: Arc<str>,
    /// Values versions hold, by time, one per time: what the last version held, shared
    /// with it.
    held: Arc<Series>,
    /// Values no version holds yet, sorted by (time, checkpoint, position).
    waiting: Vec<Value>,
    /// How many values the last version took: room made at once for as many after it
    /// (growing the list by doubling was 2-4 % of the profile; until the first version
    /// there is no count to go by but the readings' spacing, see [`Windows::add`]).
    last_taken: u32,
}

struct Window {
    update: WindowUpdate,
    /// Where the period ends (event ms, exclusive); None for correlation-id groups.
    close: Option<i64>,
    /// Per value name, in the order first seen.
    values: Vec<Column>,
    /// Values no version holds yet.
    waiting: usize,
    /// The checkpoint the window is scheduled at, when values wait.
    next: Option<i64>,
}

impl Window {
    /// The first checkpoint after `effective`: the `every` grid, and the close while open.
    fn checkpoint(&self, effective: i64, every: i64) -> i64 {
        let grid = (effective.div_euclid(every) + 1).saturating_mul(every);
        match self.close {
            Some(c) if effective < c => grid.min(c),
            _ => grid,
        }
    }

    /// The version of `checkpoint` (all values with None), when it holds values no version
    /// held before: its group holds every value whose checkpoint is at or before it. The
    /// window keeps its values only in columns: the group is built here, and lives as long
    /// as the outputs need it. Also returns the checkpoint the values still waiting wait
    /// for (found in the same pass).
    fn version(&mut self, checkpoint: Option<i64>) -> (Option<WindowUpdate>, Option<i64>) {
        let due = |v: &Value| checkpoint.is_none_or(|c| v.checkpoint <= c);
        let mut group = ObservationGroup {
            start: self.update.group.start,
            end: self.update.group.end,
            id_segment: self.update.group.id_segment.clone(),
            values: Vec::with_capacity(self.values.len()),
        };
        let mut taken = 0;
        let mut next: Option<i64> = None;
        // The close's version, the input's end, or a correlation group: no values due.
        let closing = match (checkpoint, self.close) {
            (Some(c), Some(close)) => c >= close,
            _ => true,
        };
        for col in &mut self.values {
            let mut taking = Vec::with_capacity(col.waiting.len());
            col.waiting.retain(|v| {
                if due(v) {
                    taking.push(TimeValue::from_ticks(v.ticks, v.value.clone()));
                    false
                } else {
                    next = Some(next.map_or(v.checkpoint, |n| n.min(v.checkpoint)));
                    true
                }
            });
            taken += taking.len();
            if !taking.is_empty() {
                col.last_taken = u32::try_from(taking.len()).unwrap_or(u32::MAX);
            }
            if closing && col.waiting.capacity() > 4 * col.waiting.len() {
                // What the version took is held, at two fifths of the size: no room kept
                // for it here once no more values are due. An open window keeps its room:
                // the next checkpoint's values come a moment later and would ask for as
                // much again, and on a live job every column freeing its room at one
                // checkpoint and taking it back was memory handed to the kernel and
                // faulted in again.
                col.waiting.shrink_to_fit();
            }
            if !taking.is_empty() {
                // In place once the outputs dropped the last version (copied if one still
                // holds it).
                Arc::make_mut(&mut col.held).extend_sorted(taking);
            }
            if !col.held.is_empty() {
                group.values.push((col.name.clone(), col.held.clone()));
            }
        }
        self.waiting -= taken;
        if self.close.is_none() {
            // A correlation group spans the times of the values this version holds, not of
            // values still waiting.
            let firsts = group.values.iter().filter_map(|(_, v)| v.first_ticks());
            let lasts = group
                .values
                .iter()
                .filter_map(|(_, v)| v.last().map(|l| l.ticks()));
            if let (Some(lo), Some(hi)) = (firsts.min(), lasts.max()) {
                group.start = time_of(lo);
                group.end = time_of(hi);
            }
        }
        let version = (taken > 0).then(|| WindowUpdate {
            group: Arc::new(group),
            ..self.update.clone()
        });
        (version, next)
    }

    /// Where the window ends for eviction: its period's close, or for a correlation-id
    /// group just after its newest value (each value list is sorted by time).
    fn evict_after(&self) -> i64 {
        self.close.unwrap_or_else(|| {
            let newest = self.values.iter().flat_map(|c| {
                let held = c.held.last().map(|l| l.ticks());
                held.into_iter().chain(c.waiting.last().map(|v| v.ticks))
            });
            newest
                .max()
                .map_or(self.update.group.end, time_of)
                .timestamp_millis()
                + 1
        })
    }
}

/// What identifies a window, cheap to build per measurement (the Observation id, a SHA-256,
/// is computed once per window).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct WindowKey {
    /// Interned type, patient and device identifiers ([`Windows::ids`]): a measurement's
    /// key allocates nothing, nor touches the template's shared `Arc` (a counter every
    /// worker would write).
    type_name: u32,
    patient: u32,
    device: u32,
    slot: Slot,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Slot {
    /// Start of the period, milliseconds since the Unix epoch.
    Period(i64),
    /// Correlation id.
    Correlation(crate::model::Text),
}

/// Identifiers seen (types, patients, devices, topics), numbered.
///
/// A message's readings follow one another and share their patient, device and topic: the
/// identifier last numbered in each role answers without hashing, and a type is found by
/// its template's `Arc` among a few (hashing and probing the table was 2.4 % of the peer
/// drain).
#[derive(Default)]
struct Ids {
    numbers: FxHashMap<Arc<str>, u32>,
    /// Each number's identifier.
    names: Vec<Arc<str>>,
    /// Per [`Role`]: the number last asked for.
    last: [Option<u32>; 3],
    /// Types with their numbers (a template has a few).
    types: Vec<(Arc<str>, u32)>,
}

/// What an identifier names, for [`Ids::number`].
#[derive(Clone, Copy)]
enum Role {
    Patient = 0,
    Device = 1,
    Topic = 2,
}

impl Ids {
    /// The number of `id`, numbering it when new.
    fn number(&mut self, role: Role, id: &str) -> u32 {
        if let Some(n) = self.last[role as usize] {
            if *self.names[n as usize] == *id {
                return n;
            }
        }
        let n = self.numbered(id);
        self.last[role as usize] = Some(n);
        n
    }

    /// The number of `id` from the table, numbering it when new.
    fn numbered(&mut self, id: &str) -> u32 {
        if let Some(n) = self.numbers.get(id) {
            return *n;
        }
        let n = self.names.len() as u32;
        let k: Arc<str> = Arc::from(id);
        self.numbers.insert(k.clone(), n);
        self.names.push(k);
        n
    }

    /// The number of a type name.
    fn type_number(&mut self, t: &Arc<str>) -> u32 {
        let same = |k: &Arc<str>| Arc::ptr_eq(k, t) || **k == **t;
        if let Some((_, n)) = self.types.iter().find(|(k, _)| same(k)) {
            return *n;
        }
        let n = self.numbered(t);
        // A template has a few types; past that many, the table answers.
        if self.types.len() < 64 {
            self.types.push((t.clone(), n));
        }
        n
    }
}

/// The most values a column makes room for ahead of them (160 KB); past that it grows.
const MAX_RESERVED: i64 = 1 << 12;

/// All open windows of one worker.
pub struct Windows {
    fhir: Arc<FhirMapping>,
    windows: FxHashMap<WindowKey, Window>,
    /// Type, patient, device and topic identifiers seen, numbered.
    ids: Ids,
    /// Values held, each text once; those no window holds any more are dropped as windows
    /// are evicted ([`Windows::evict`]).
    texts: rustc_hash::FxHashSet<ArcStr>,
    /// How many texts the last purge kept: the next waits for twice as many.
    texts_kept: usize,
    /// Windows by the checkpoint they wait for: emitting is O(versions), not O(windows).
    schedule: BTreeMap<i64, Vec<WindowKey>>,
    /// Per checkpoint, the ingestion epochs values waiting for it came in (each once per
    /// run of one epoch). When the watermark passes a checkpoint every value waiting for it
    /// is taken (a window is versioned at the first checkpoint any of its values waits
    /// for), so its epochs are released whole: no value carries its epoch.
    epochs_by_checkpoint: BTreeMap<i64, Vec<u64>>,
    /// Per ingestion epoch, how many entries of `epochs_by_checkpoint` hold it.
    holds: BTreeMap<u64, usize>,
    /// The last (checkpoint, epoch) entered in `epochs_by_checkpoint`: a message's readings
    /// share both, and skip the lookup.
    last_hold: Option<(i64, u64)>,
    /// Values waiting for their version.
    waiting: usize,
    every: i64,
    horizon: i64,
    instances: u64,
}

impl Windows {
    /// Empty state: versions every `every` of event time; windows closed more than
    /// `horizon` behind the watermark are evicted.
    pub fn new(fhir: Arc<FhirMapping>, horizon: Duration, every: Duration) -> Self {
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX).max(1);
        Self {
            fhir,
            windows: FxHashMap::default(),
            ids: Ids::default(),
            texts: Default::default(),
            texts_kept: 0,
            schedule: BTreeMap::new(),
            epochs_by_checkpoint: BTreeMap::new(),
            holds: BTreeMap::new(),
            last_hold: None,
            waiting: 0,
            every: ms(every),
            horizon: ms(horizon),
            instances: 0,
        }
    }

    /// Open windows.
    pub fn len(&self) -> usize {
        self.windows.len()
    }

    /// True when no window is open.
    pub fn is_empty(&self) -> bool {
        self.windows.is_empty()
    }

    /// The oldest ingestion epoch a waiting value came in.
    #[cfg(test)]
    pub fn oldest_held_epoch(&self) -> Option<u64> {
        self.holds.keys().next().copied()
    }

    /// Whether values read in `epoch` wait for a version.
    pub fn holds(&self, epoch: u64) -> bool {
        self.holds.contains_key(&epoch)
    }

    /// Values waiting for their version.
    pub fn waiting(&self) -> usize {
        self.waiting
    }

    /// Holds `epoch` until the watermark passes `checkpoint`.
    fn hold(&mut self, checkpoint: i64, epoch: u64) {
        if self.last_hold == Some((checkpoint, epoch)) {
            return;
        }
        self.last_hold = Some((checkpoint, epoch));
        let epochs = self.epochs_by_checkpoint.entry(checkpoint).or_default();
        if epochs.last() != Some(&epoch) {
            epochs.push(epoch);
            *self.holds.entry(epoch).or_default() += 1;
        }
    }

    /// Releases the epochs of every checkpoint `passed` says all values waiting for are
    /// taken.
    fn release(&mut self, passed: impl Fn(i64) -> bool) {
        while let Some(entry) = self.epochs_by_checkpoint.first_entry() {
            if !passed(*entry.key()) {
                break;
            }
            for epoch in entry.remove() {
                super::count_down(&mut self.holds, epoch);
            }
        }
        self.last_hold = None;
    }

    /// Adds a measurement effective at `effective` (event ms), read in `epoch`. Returns
    /// false when the FHIR mapping has no template for its type or it has no patient (the
    /// normalize stage dead-letters those first).
    pub fn add(&mut self, m: &Measurement, effective: i64, epoch: u64) -> bool {
        let (Some(tpl), Some(patient)) = (self.fhir.get(&m.type_name), m.patient_id.as_deref())
        else {
            return false;
        };
        let slot = match tpl.period {
            PeriodInterval::Correlation => match &m.correlation_id {
                Some(c) => Slot::Correlation(c.clone()),
                None => return false,
            },
            p => Slot::Period(period_start_ms(p, &m.occurrence_time)),
        };
        let key = WindowKey {
            type_name: self.ids.type_number(&m.type_name),
            patient: self.ids.number(Role::Patient, patient),
            device: self.ids.number(Role::Device, &m.device_id),
            slot,
        };
        let instances = &mut self.instances;
        // One lookup: the key hashed once per measurement.
        let w = self.windows.entry(key.clone()).or_insert_with(|| {
            let (start, end) = boundary(tpl.period, m.occurrence_time);
            let segment = match &key.slot {
                Slot::Correlation(c) => c.to_string(),
                Slot::Period(_) => period_segment(&start, &end),
            };
            let subjects = Subjects {
                patient,
                device: &m.device_id,
                encounter: None,
                resolved: false,
            };
            let id = observation_id(&identifier_value(&subjects, &m.type_name, &segment));
            *instances += 1;
            let close = match key.slot {
                Slot::Correlation(_) => None,
                // The period's end is inclusive to the tick: it closes at the next millisecond.
                Slot::Period(_) => Some(end.timestamp_millis() + 1),
            };
            Window {
                update: WindowUpdate {
                    id,
                    type_name: m.type_name.clone(),
                    patient: patient.to_string(),
                    device: m.device_id.to_string(),
                    encounter: m.encounter_id.as_deref().map(str::to_string),
                    template: tpl.clone(),
                    group: Arc::new(ObservationGroup {
                        start,
                        end,
                        id_segment: segment,
                        values: Vec::new(),
                    }),
                    instance: *instances,
                    emitted_ms: 0,
                },
                close,
                values: Vec::new(),
                waiting: 0,
                next: None,
            }
        });
        let at = w.checkpoint(effective, self.every);
        let topic = m
            .source
            .as_ref()
            .map_or(u32::MAX, |s| self.ids.number(Role::Topic, &s.topic));
        let position = m
            .source
            .as_ref()
            .map_or((topic, 0, 0), |s| (topic, s.partition, s.offset));
        let ticks = ticks_of(m.occurrence_time);
        let mut held = 0;
        for (name, value) in &m.properties {
            // Names are the template's own `Arc`s: the pointer usually answers.
            let same = |n: &Arc<str>| Arc::ptr_eq(n, name) || n == name;
            let col = match w.values.iter_mut().position(|c| same(&c.name)) {
                Some(i) => &mut w.values[i],
                None => {
                    w.values.push(Column {
                        name: name.clone(),
                        held: Arc::default(),
                        waiting: Vec::new(),
                        last_taken: 0,
                    });
                    w.values.last_mut().expect("just pushed")
                }
            };
            if col.waiting.capacity() == 0 {
                col.waiting.reserve_exact(col.last_taken as usize);
            }
            let list = &mut col.waiting;
            // A vital often reads as it did a second before: the column's newest text
            // answers without hashing.
            let newest = (list.last().map(|v| &v.value)).or_else(|| col.held.last_shared());
            let value = match newest.filter(|t| t.as_str() == value.as_str()) {
                Some(t) => t.clone(),
                None => match self.texts.get(value.as_str()) {
                    Some(t) => t.clone(),
                    None => {
                        let t = ArcStr::from(value.as_str());
                        self.texts.insert(t.clone());
                        t
                    }
                },
            };
            let v = Value {
                ticks,
                checkpoint: at,
                position,
                value,
            };
            let key = |x: &Value| (x.ticks, x.checkpoint, x.position);
            // A device's readings mostly come in time order: append without a search
            // (the binary search over an hour of values was 6 % of the job).
            if list.last().is_none_or(|x| key(x) <= key(&v)) {
                list.push(v);
            } else {
                let i = list.partition_point(|x| key(x) <= key(&v));
                list.insert(i, v);
            }
            if list.len() == 3 {
                // The first readings' spacing says how many come before the first's
                // checkpoint (a 1 Hz monitor: one a second): room made for them at once
                // spares the doublings and their copies (on the peer drain 37,000
                // allocations instead of 66,000, 7 % fewer page faults; the peak heap is
                // unchanged, as the room is taken at once rather than as values come). The
                // wider of the first two steps: two readings a moment apart (a resend, a
                // clock's jitter) would otherwise ask room for thousands.
                let step = |i: usize| (list[i + 1].ticks - list[i].ticks) / TICKS_PER_MS;
                let step = step(0).max(step(1));
                if step > 0 {
                    let span = list[0].checkpoint - list[0].ticks.div_euclid(TICKS_PER_MS);
                    let expected = ((span + step - 1) / step).clamp(0, MAX_RESERVED) as usize;
                    list.reserve_exact(expected.saturating_sub(list.len()));
                }
            }
            w.waiting += 1;
            held += 1;
        }
        if w.next.is_none_or(|n| at < n) {
            w.next = Some(at);
            self.schedule.entry(at).or_default().push(key);
        }
        if held > 0 {
            self.waiting += held;
            self.hold(at, epoch);
        }
        true
    }

    /// The versions of every checkpoint the watermark (event ms: everything at or before
    /// it is in) has passed, in checkpoint order.
    pub fn advance(&mut self, watermark: i64) -> Vec<WindowUpdate> {
        let mut out = Vec::new();
        while let Some(entry) = self.schedule.first_entry() {
            let at = *entry.key();
            if at.saturating_sub(1) > watermark {
                break;
            }
            let mut keys = entry.remove();
            keys.sort_by(|a, b| {
                let id = |k: &WindowKey| self.windows.get(k).map(|w| &w.update.id);
                id(a).cmp(&id(b))
            });
            for key in keys {
                let Some(w) = self.windows.get_mut(&key) else {
                    continue;
                };
                if w.next != Some(at) {
                    continue;
                }
                let before = w.waiting;
                let (version, waiting) = w.version(Some(at));
                self.waiting -= before - w.waiting;
                out.extend(version);
                w.next = waiting;
                if let Some(n) = waiting {
                    self.schedule.entry(n).or_default().push(key);
                }
            }
        }
        self.release(|c| c.saturating_sub(1) <= watermark);
        out
    }

    /// A version of every window holding waiting values, with all of them (the input ended,
    /// or the job stops).
    pub fn flush(&mut self) -> Vec<WindowUpdate> {
        self.schedule.clear();
        let mut out = Vec::new();
        for w in self.windows.values_mut() {
            w.next = None;
            if w.waiting > 0 {
                out.extend(w.version(None).0);
            }
        }
        self.release(|_| true);
        self.waiting = 0;
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// Evicts windows holding no waiting value whose close is more than the horizon behind
    /// the watermark; returns how many.
    pub fn evict(&mut self, watermark: i64) -> usize {
        let cutoff = watermark.saturating_sub(self.horizon);
        let before = self.windows.len();
        self.windows
            .retain(|_, w| w.waiting > 0 || w.evict_after() >= cutoff);
        if self.texts.len() > 2 * self.texts_kept + 1024 {
            // Texts only this set holds belong to no window (nor to a version an output
            // still holds): values never seen again cost nothing after their window.
            self.texts
                .retain(|t| ArcStr::strong_count(t).is_some_and(|n| n > 1));
            self.texts_kept = self.texts.len();
        }
        before - self.windows.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::parse_timestamp;

    #[test]
    fn a_waiting_value_takes_the_bytes_the_docs_say() {
        // docs/ARCHITECTURE.md and docs/scaling.md size a window's values by these.
        assert_eq!(std::mem::size_of::<Value>(), 40);
    }

    #[test]
    fn held_values_merge_by_time_with_those_held_first_and_one_per_time() {
        let t = |s: i64| chrono::DateTime::from_timestamp(1_764_892_800 + s, 0).expect("t");
        let taking = |xs: &[(i64, &str)]| -> Vec<TimeValue> {
            xs.iter()
                .map(|(s, v)| TimeValue::new(t(*s), (*v).into()))
                .collect()
        };
        let held = |xs: &[(i64, &str)]| Series::of(&taking(xs));
        let merge_held = |mut h: Series, t| {
            h.extend_sorted(t);
            h
        };
        let texts = |v: Series| {
            v.iter()
                .map(|v| (v.at(), v.text().to_string()))
                .collect::<Vec<_>>()
        };
        let want = |xs: &[(i64, &str)]| {
            xs.iter()
                .map(|(s, v)| (t(*s), v.to_string()))
                .collect::<Vec<_>>()
        };
        // In order: appended, a repeated time keeping its first reading.
        let got = merge_held(
            held(&[(0, "a"), (1, "b")]),
            taking(&[(2, "c"), (2, "d"), (3, "e")]),
        );
        assert_eq!(texts(got), want(&[(0, "a"), (1, "b"), (2, "c"), (3, "e")]));
        // Late readings: between held ones; at a held time the held one stays.
        let got = merge_held(
            held(&[(0, "a"), (2, "c"), (4, "e")]),
            taking(&[(1, "x"), (2, "y"), (3, "z"), (3, "w"), (5, "v")]),
        );
        assert_eq!(
            texts(got),
            want(&[(0, "a"), (1, "x"), (2, "c"), (3, "z"), (4, "e"), (5, "v")])
        );
        // Older than everything held.
        let got = merge_held(held(&[(5, "e")]), taking(&[(1, "a"), (5, "x")]));
        assert_eq!(texts(got), want(&[(1, "a"), (5, "e")]));
    }

    fn fhir() -> Arc<FhirMapping> {
        Arc::new(
            FhirMapping::from_file(std::path::Path::new(
                "templates/bedside-monitor/fhirmapping.json",
            ))
            .expect("mapping"),
        )
    }

    fn ms(t: &str) -> i64 {
        parse_timestamp(t).expect("time").timestamp_millis()
    }

    fn reading(device: &str, at: i64, v: &str, offset: i64) -> Measurement {
        Measurement {
            type_name: "heartRate".into(),
            device_id: device.into(),
            patient_id: Some(format!("P-{device}").into()),
            encounter_id: None,
            correlation_id: None,
            occurrence_time: chrono::DateTime::from_timestamp_millis(at).expect("time"),
            properties: vec![("hr".into(), v.into())],
            received_ms: None,
            source: Some(crate::model::SourcePos {
                topic: "vitals".into(),
                partition: 0,
                offset,
            }),
        }
    }

    fn hr(t: &str, v: &str) -> Measurement {
        reading("BM-1", ms(t), v, 0)
    }

    fn five_minutes() -> Windows {
        Windows::new(fhir(), Duration::from_secs(7200), Duration::from_secs(300))
    }

    fn values(u: &WindowUpdate) -> Vec<String> {
        u.group
            .get("hr")
            .into_iter()
            .flat_map(Series::iter)
            .map(|v| v.text().to_string())
            .collect()
    }

    /// The waiting list's room for one column of one window.
    fn room(w: &Windows) -> Vec<usize> {
        let cols = w.windows.values().flat_map(|w| &w.values);
        cols.map(|c| c.waiting.capacity()).collect()
    }

    #[test]
    fn a_column_makes_room_for_its_values_from_their_spacing() {
        let add = |w: &mut Windows, at: i64, offset: i64| {
            w.add(&reading("BM-1", at, "72", offset), at, 1);
        };
        let mut w = five_minutes();
        // 1 Hz from 10:00:30: 270 readings come before the 10:05 checkpoint.
        let start = ms("2026-11-21T10:00:30Z");
        for s in 0..3 {
            add(&mut w, start + s * 1000, s);
        }
        assert_eq!(room(&w), vec![270]);
        for s in 3..270 {
            add(&mut w, start + s * 1000, s);
        }
        assert_eq!(room(&w), vec![270], "the room made was enough: no doubling");
        // A reading a moment after the first (a resend) does not ask room for thousands.
        let mut w = five_minutes();
        for (o, at) in [start, start + 1, start + 1000].into_iter().enumerate() {
            add(&mut w, at, o as i64);
        }
        assert_eq!(room(&w), vec![271]);
        // Readings of one time say nothing of the spacing: the list grows as it must.
        let mut w = five_minutes();
        for o in 0..3 {
            add(&mut w, start, o);
        }
        assert!(room(&w)[0] < 270);
    }

    #[test]
    fn an_open_window_keeps_its_room_and_a_closed_one_lets_it_go() {
        let mut w = five_minutes();
        let start = ms("2026-11-21T10:50:00Z");
        for s in 0..300 {
            let at = start + s * 1000;
            w.add(&reading("BM-1", at, "72", s), at, 1);
        }
        assert_eq!(room(&w), vec![300]);
        assert_eq!(w.advance(ms("2026-11-21T10:55:00Z")).len(), 1);
        assert_eq!(room(&w), vec![300], "the 10:55-11:00 values come next");
        for s in 300..600 {
            let at = start + s * 1000;
            w.add(&reading("BM-1", at, "72", s), at, 1);
        }
        assert_eq!(room(&w), vec![300], "the room kept was enough");
        assert_eq!(w.advance(ms("2026-11-21T11:00:00Z")).len(), 1);
        assert_eq!(room(&w), vec![0], "closed: no values due");
    }

    #[test]
    fn a_version_at_each_checkpoint_holds_the_values_before_it() {
        let mut w = five_minutes();
        for (t, v) in [("10:00:05", "70"), ("10:03:00", "71"), ("10:07:00", "72")] {
            let m = hr(&format!("2026-11-21T{t}Z"), v);
            let at = m.occurrence_time.timestamp_millis();
            assert!(w.add(&m, at, 1));
        }
        assert!(
            w.advance(ms("2026-11-21T10:04:59Z")).is_empty(),
            "before 10:05"
        );
        let v = w.advance(ms("2026-11-21T10:06:00Z"));
        assert_eq!(v.len(), 1);
        assert_eq!(values(&v[0]), ["70", "71"], "10:07 is after the checkpoint");
        assert_eq!(
            w.oldest_held_epoch(),
            Some(1),
            "10:07 still holds its epoch"
        );
        let v = w.advance(ms("2026-11-21T11:30:00Z"));
        assert_eq!(v.len(), 1, "no version for checkpoints with nothing new");
        assert_eq!(values(&v[0]), ["70", "71", "72"]);
        assert_eq!(w.oldest_held_epoch(), None);
        assert!(w.advance(ms("2026-11-21T12:00:00Z")).is_empty());
    }

    #[test]
    fn an_epoch_is_held_until_every_value_read_in_it_is_taken() {
        let mut w = five_minutes();
        let add = |w: &mut Windows, device: &str, t: &str, effective: &str, epoch: u64| {
            let m = reading(device, ms(&format!("2026-11-21T{t}Z")), "70", 0);
            assert!(w.add(&m, ms(&format!("2026-11-21T{effective}Z")), epoch));
        };
        add(&mut w, "BM-1", "10:00:05", "10:00:05", 1);
        add(&mut w, "BM-1", "10:07:00", "10:07:00", 1);
        add(&mut w, "BM-2", "10:01:00", "10:01:00", 2);
        // Epochs entered out of order at one checkpoint, and one again after another's.
        add(&mut w, "BM-3", "10:02:00", "10:02:00", 4);
        add(&mut w, "BM-3", "10:02:01", "10:02:01", 1);
        add(&mut w, "BM-3", "10:08:00", "10:08:00", 4);
        add(&mut w, "BM-3", "10:02:02", "10:02:02", 4);
        assert_eq!(w.waiting(), 7);
        assert_eq!(w.advance(ms("2026-11-21T10:06:00Z")).len(), 3);
        assert_eq!(w.waiting(), 2);
        assert!(w.holds(1), "its 10:07 value waits");
        assert!(!w.holds(2), "its one value is taken");
        assert!(w.holds(4), "its 10:08 value waits");
        // A late value whose checkpoint the watermark has passed: held until the next
        // advance takes it.
        add(&mut w, "BM-2", "09:30:00", "10:04:00", 5);
        assert!(w.holds(5));
        assert_eq!(w.advance(ms("2026-11-21T10:06:00Z")).len(), 1);
        assert!(!w.holds(5));
        assert_eq!(w.oldest_held_epoch(), Some(1));
        assert_eq!(w.advance(ms("2026-11-21T10:11:00Z")).len(), 2);
        assert_eq!((w.oldest_held_epoch(), w.waiting()), (None, 0));
        add(&mut w, "BM-1", "10:12:00", "10:12:00", 6);
        assert!(w.holds(6));
        assert_eq!(w.flush().len(), 1);
        assert_eq!((w.oldest_held_epoch(), w.waiting()), (None, 0));
    }

    #[test]
    fn late_data_amends_a_closed_window_at_the_next_checkpoint() {
        let mut w = five_minutes();
        let m = hr("2026-11-21T10:58:00Z", "70");
        w.add(&m, ms("2026-11-21T10:58:00Z"), 1);
        let closed = w.advance(ms("2026-11-21T11:00:30Z"));
        assert_eq!(closed.len(), 1, "closed at 11:00");
        // Came when its partition's clock, less the lateness, stood at 11:01.
        w.add(
            &hr("2026-11-21T10:30:00Z", "65"),
            ms("2026-11-21T11:01:00Z"),
            2,
        );
        assert!(w.advance(ms("2026-11-21T11:04:00Z")).is_empty());
        let amended = w.advance(ms("2026-11-21T11:05:00Z"));
        assert_eq!(amended.len(), 1);
        assert_eq!(amended[0].id, closed[0].id);
        assert_eq!(values(&amended[0]), ["65", "70"]);
        assert_eq!(
            values(&closed[0]),
            ["70"],
            "the emitted version is untouched"
        );
    }

    /// The versions of a run: (id, values) in emission order per window.
    fn run(readings: &[(Measurement, i64)], steps: &[usize]) -> BTreeMap<String, Vec<Vec<String>>> {
        let mut w = five_minutes();
        let mut out: BTreeMap<String, Vec<Vec<String>>> = BTreeMap::new();
        let mut record = |us: Vec<WindowUpdate>| {
            for u in us {
                out.entry(u.id.clone()).or_default().push(values(&u));
            }
        };
        let mut i = 0;
        for (n, step) in steps.iter().cycle().enumerate() {
            if i >= readings.len() {
                break;
            }
            let end = (i + step).min(readings.len());
            for (m, eff) in &readings[i..end] {
                w.add(m, *eff, n as u64);
            }
            i = end;
            // The watermark a replay of this speed would publish: the slowest partition's
            // newest time read so far, less a lateness of 20 s.
            let newest = readings[..i]
                .iter()
                .map(|(m, _)| m.occurrence_time.timestamp_millis());
            record(w.advance(newest.max().expect("some") - 20_000));
        }
        record(w.flush());
        out
    }

    #[test]
    fn versions_depend_on_the_data_alone_not_on_how_it_was_batched() {
        // Two devices, two hours, a reading every 7 s, slightly out of order; two readings
        // of one time with different values; a late reading.
        let t0 = ms("2026-11-21T09:58:00Z");
        let mut readings = Vec::new();
        for i in 0..1100i64 {
            let jitter = if i % 5 == 0 { -3_000 } else { 0 };
            let at = t0 + i * 7_000 + jitter;
            for d in ["BM-1", "BM-2"] {
                readings.push((reading(d, at, &(60 + i % 40).to_string(), i), at));
            }
        }
        let dup = t0 + 70_000;
        readings.insert(30, (reading("BM-1", dup, "999", 5000), dup));
        let late_at = t0 + 600 * 7_000;
        readings.insert(700, (reading("BM-1", t0 + 1_000, "33", 5001), late_at));
        let a = run(&readings, &[1]);
        for steps in [&[3usize, 50, 7][..], &[500], &[10_000]] {
            assert_eq!(run(&readings, steps), a, "steps {steps:?}");
        }
        let versions: usize = a.values().map(Vec::len).sum();
        assert!(versions > 4 && versions < 60, "{versions} versions");
    }

    #[test]
    fn windows_past_the_horizon_are_evicted() {
        let mut w = Windows::new(fhir(), Duration::from_secs(3600), Duration::from_secs(300));
        w.add(
            &hr("2026-11-21T08:00:00Z", "70"),
            ms("2026-11-21T08:00:00Z"),
            1,
        );
        w.add(
            &hr("2026-11-21T10:30:00Z", "72"),
            ms("2026-11-21T10:30:00Z"),
            1,
        );
        assert_eq!(w.evict(ms("2026-11-21T10:31:00Z")), 0, "values wait in it");
        assert_eq!(w.advance(ms("2026-11-21T10:31:00Z")).len(), 1);
        assert_eq!(w.evict(ms("2026-11-21T10:31:00Z")), 1);
        assert_eq!(w.len(), 1);
    }

    #[test]
    fn unmapped_types_and_missing_patients_are_refused() {
        let mut w = five_minutes();
        let mut m = hr("2026-11-21T10:00:00Z", "70");
        m.patient_id = None;
        assert!(!w.add(&m, 0, 1));
        let mut m = hr("2026-11-21T10:00:00Z", "70");
        m.type_name = "unknown".into();
        assert!(!w.add(&m, 0, 1));
        assert!(w.is_empty());
        assert_eq!(w.oldest_held_epoch(), None);
    }
}
