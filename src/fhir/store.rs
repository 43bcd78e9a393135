//! What an Observation output has written: the versions the window operator emits
//! ([`WindowUpdate`]), and the store that merges each into the Observation last written for
//! its id, as the IoMT connector merges into a stored Observation.
//!
//! Every Observation output (NDJSON, the lakehouse) keeps one store; what the store does not
//! hold (after a restart, or for a window evicted long ago) it reads back through
//! [`StoredObservations`] by the event day the window starts on, so a replay or a days-old
//! backlog merges into what was already written, and an update that changes nothing is not
//! written again.

use crate::fhir::groups::ObservationGroup;
use crate::fhir::observation::{self, period_end, period_start, Subjects};
use crate::mapping::fhir::CodeValueTemplate;
use crate::metrics::Metrics;
use crate::time::{format_dotnet, parse_timestamp};
use chrono::{DateTime, Utc};
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

/// The current state of one Observation's window, as emitted to the sinks.
#[derive(Debug, Clone)]
pub struct WindowUpdate {
    /// Deterministic Observation id.
    pub id: String,
    /// Measurement type, as the device mapping spells it.
    pub type_name: Arc<str>,
    /// Patient identifier.
    pub patient: String,
    /// Device identifier.
    pub device: String,
    /// Encounter identifier.
    pub encounter: Option<String>,
    /// The FHIR template of the type.
    pub template: Arc<CodeValueTemplate>,
    /// The values of this version: every value whose checkpoint is at or before its own.
    pub group: Arc<ObservationGroup>,
    /// Which life of the window this is (windows evicted and opened again get a new one): a
    /// sink that wrote this same instance knows the group holds every value it wrote.
    pub instance: u64,
    /// When (wall ms) the window operator emitted this version: the version latency's start.
    pub emitted_ms: i64,
}

impl WindowUpdate {
    /// Who the Observation is about, as logical references by identifier.
    pub fn subjects(&self) -> Subjects<'_> {
        Subjects {
            patient: &self.patient,
            device: &self.device,
            encounter: self.encounter.as_deref(),
            resolved: false,
        }
    }
}

struct Stored {
    /// The resource as written (compact JSON): a third of its size as a `Value`, and
    /// parsed again only to merge a version of another window instance into it. Empty
    /// while `instance` is set: that window holds every value of it, and its next version
    /// is built from the group alone; only a version of another instance (the window was
    /// evicted and opened again) needs the bytes, and reads them back from the output
    /// ([`ObservationStore::build`]). An hourly SampledData Observation is 7 KB or more
    /// per output, most of what a store held.
    json: Box<[u8]>,
    end: DateTime<Utc>,
    /// The window instance whose group holds every value of it; None when it also holds
    /// values from elsewhere (read back from committed output, or merged into).
    instance: Option<u64>,
    /// How many versions of it were written (1 for the first).
    version: i64,
}

/// Where an Observation output reads back what it wrote: the newest stored version of each
/// Observation, found by the UTC day its period starts on (the lakehouse's `date`
/// partition, the NDJSON part index).
pub trait StoredObservations {
    /// The newest stored version, with its version number (0 where the output numbers none),
    /// of every Observation this worker owns whose period starts on one of `days` and which
    /// `keep(id, period end)` wants.
    fn read_days(
        &mut self,
        days: &BTreeSet<i32>,
        keep: &dyn Fn(&str, Option<DateTime<Utc>>) -> bool,
    ) -> anyhow::Result<Vec<(Value, i64)>>;
}

/// The last Observation written per id, and the versions built since the last flush: what
/// every Observation output (NDJSON, the lakehouse) merges into, as the IoMT connector
/// merges into a stored Observation.
///
/// Each window version is built (or merged) into its Observation as it arrives and its
/// group dropped, so a sink holds built versions, not copies of windows, however many
/// checkpoints one flush spans. What the store does not hold it reads back from the output
/// by event-time day when a version needs it ([`Self::add`]): a restart, late data for a
/// window evicted long ago, or a backlog of readings days old all merge into what was
/// written, whatever today's date is.
pub struct ObservationStore {
    store: HashMap<String, Stored>,
    /// Versions not built yet (a read-back failed): built, in order, before anything else.
    queued: std::collections::VecDeque<(u64, WindowUpdate)>,
    /// Versions built since the last flush, in the order emitted: each is written, so what
    /// an output holds does not depend on how often it flushes.
    pending: Vec<Change>,
    /// Per Observation, its newest version in `pending`.
    newest_pending: HashMap<String, usize>,
    /// Days whose stored Observations were read back: from then on every version of them
    /// went through this store, so for windows not evicted it knows all there is.
    loaded: BTreeSet<i32>,
    horizon: chrono::Duration,
    newest: Option<DateTime<Utc>>,
    metrics: Arc<Metrics>,
    /// Whether the output is the lakehouse: its versions' latency is a path of its own,
    /// and they do not count as `observations_out` (the NDJSON output's metric; the
    /// lakehouse counts rows of its own).
    lake: bool,
    output: &'static str,
    worker: usize,
    /// Where resources are serialized before they are boxed at their exact length.
    scratch: Vec<u8>,
}

/// An Observation version to write: the merged resource and where it came from.
pub struct Change {
    /// Ingestion epoch of the update.
    pub epoch: u64,
    /// Observation id.
    pub id: String,
    /// The version number it becomes.
    pub version: i64,
    /// The window update it comes from: with its values while they are to be built
    /// (`json` None), without them once they are in `json`.
    pub update: WindowUpdate,
    end: DateTime<Utc>,
    instance: Option<u64>,
    /// The resource as compact JSON when it was built as it came (a merge, or a template
    /// whose values can fail to build); None when it is built from `update`'s group as it
    /// is written. Every hourly window reaches a checkpoint at the same watermark, and
    /// the flush's resources held at once (as `Value`s, then as JSON) were the job's peak
    /// memory each minute; the group is shared with the window, and costs nothing to hold.
    json: Option<Box<[u8]>>,
    /// Whether an Observation of this window was written before (status `amended`).
    amended: bool,
    /// The UTC day its period starts on.
    day: i32,
}

impl Change {
    /// The resource as compact JSON (built now from the window's values when it was not
    /// built as it came).
    #[cfg(test)]
    pub(crate) fn json(&self) -> std::borrow::Cow<'_, [u8]> {
        match &self.json {
            Some(json) => std::borrow::Cow::Borrowed(json),
            None => {
                let mut out = Vec::new();
                self.write_json(&mut out);
                std::borrow::Cow::Owned(out)
            }
        }
    }

    /// Whether the resource is held built (as JSON) rather than as its window's values.
    #[cfg(test)]
    pub(crate) fn holds_resource(&self) -> bool {
        self.json.is_some()
    }

    /// Appends the resource as compact JSON to `out`.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        match &self.json {
            Some(json) => out.extend_from_slice(json),
            None => write_from_window(out, &self.update, self.amended)
                .expect("an Observation whose values always build"),
        }
    }

    /// The resource, and its compact JSON: an output that reads its members (the
    /// lakehouse) parses the JSON only of a version built as it came.
    pub fn resource(&self) -> (Value, std::borrow::Cow<'_, [u8]>) {
        let o = self.value();
        let json = match &self.json {
            Some(json) => std::borrow::Cow::Borrowed(&json[..]),
            None => std::borrow::Cow::Owned(super::compact_json::to_vec(&o)),
        };
        (o, json)
    }

    /// The resource (parsed back, or built from its window's values).
    fn value(&self) -> Value {
        match &self.json {
            Some(json) => serde_json::from_slice(json).expect("the store's own JSON"),
            None => self.built(),
        }
    }

    /// The resource of a version taken unbuilt, built from its window's values.
    fn built(&self) -> Value {
        // Taken unbuilt only for templates whose every value builds.
        build_from_window(&self.update, self.amended)
            .expect("an Observation whose values always build")
    }

    /// The UTC day its period starts on: where outputs file it.
    pub fn day(&self) -> i32 {
        self.day
    }
}

/// The Observation of a window's version built from its values alone, `amended` when the
/// same window wrote one before.
fn build_from_window(u: &WindowUpdate, amended: bool) -> Result<Value, super::FhirDataError> {
    let mut o = observation::build_with_id(
        &u.template,
        &u.type_name,
        &u.group,
        &u.subjects(),
        u.id.clone(),
    )?;
    if amended {
        o["status"] = "amended".into();
    }
    Ok(o)
}

/// [`build_from_window`]'s resource appended to `out` as compact JSON, written without
/// building it.
fn write_from_window(
    out: &mut Vec<u8>,
    u: &WindowUpdate,
    amended: bool,
) -> Result<(), super::FhirDataError> {
    let subjects = u.subjects();
    super::observation_json::write(
        out,
        &u.template,
        &u.type_name,
        &u.group,
        &subjects,
        &u.id,
        amended,
    )
}

/// Where a resource built from `u`'s group alone ends and which day files it: what
/// `period_end` and `observation_day` read from it (its period written to the tick).
fn written_end_and_day(u: &WindowUpdate) -> (DateTime<Utc>, i32) {
    let end = parse_timestamp(&format_dotnet(&u.group.end)).unwrap_or(u.group.end);
    (end, crate::time::day_of(&u.group.start))
}

/// The UTC day an Observation's period starts on: where outputs file it.
pub fn observation_day(resource: &Value, update: &WindowUpdate) -> i32 {
    crate::time::day_of(&period_start(resource).unwrap_or(update.group.start))
}

impl ObservationStore {
    /// An empty store of `output` for `worker`, keeping Observations whose period ends
    /// within `horizon` of the newest.
    pub fn new(
        output: &'static str,
        worker: usize,
        horizon: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            store: HashMap::new(),
            queued: Default::default(),
            pending: Vec::new(),
            newest_pending: HashMap::new(),
            loaded: BTreeSet::new(),
            horizon: chrono::Duration::from_std(horizon).unwrap_or(chrono::Duration::MAX),
            newest: None,
            metrics,
            lake: false,
            output,
            worker,
            scratch: Vec::new(),
        }
    }

    /// The same store, for the lakehouse: its versions are not counted as NDJSON output,
    /// and their latency is the `lake` path.
    pub fn for_lakehouse(mut self) -> Self {
        self.lake = true;
        self
    }

    fn cutoff(&self) -> Option<DateTime<Utc>> {
        self.newest.and_then(|n| n.checked_sub_signed(self.horizon))
    }

    /// The days to read back before `u` can merge: none when the store or this flush holds
    /// its Observation, else its days unless read already and the window is recent enough
    /// that it would still be held. A window's stored version starts on its group's start
    /// day, or the day before where a correlation-id group was widened by an earlier value.
    fn days_to_load(&self, u: &WindowUpdate, dropped: bool) -> BTreeSet<i32> {
        if self.store.contains_key(&u.id) || self.newest_pending.contains_key(&u.id) {
            return BTreeSet::new();
        }
        let evicted = dropped || self.cutoff().is_some_and(|c| u.group.end < c);
        let first = crate::time::day_of(&u.group.start) - 1;
        let last = crate::time::day_of(&u.group.end.max(u.group.start));
        (first..=last)
            .filter(|d| evicted || !self.loaded.contains(d))
            .collect()
    }

    /// Reads back from `stored` what `wanted` must merge into and the store does not hold.
    /// Only what the store would keep is taken: `wanted`, and those within the horizon.
    fn load(
        &mut self,
        stored: &mut dyn StoredObservations,
        days: BTreeSet<i32>,
        wanted: &str,
    ) -> anyhow::Result<()> {
        let cutoff = self.cutoff();
        let found = {
            let (store, pending) = (&self.store, &self.newest_pending);
            let keep = |id: &str, end: Option<DateTime<Utc>>| {
                !store.contains_key(id)
                    && !pending.contains_key(id)
                    && (id == wanted || cutoff.is_none_or(|c| end.is_none_or(|e| e >= c)))
            };
            stored.read_days(&days, &keep)?
        };
        let mut restored = 0;
        for (resource, version) in found {
            let (Some(id), Some(end)) = (
                resource.get("id").and_then(Value::as_str),
                period_end(&resource),
            ) else {
                continue;
            };
            if self.store.contains_key(id) {
                continue;
            }
            restored += 1;
            let json = super::compact_json::to_vec(&resource).into_boxed_slice();
            self.store.insert(
                id.to_string(),
                Stored {
                    json,
                    end,
                    instance: None,
                    version,
                },
            );
        }
        self.loaded.extend(&days);
        Metrics::add(&self.metrics.observations_restored, restored);
        tracing::debug!(
            worker = self.worker,
            output = self.output,
            days = days.len(),
            observations = restored,
            "read back stored Observations"
        );
        Ok(())
    }

    fn evict(&mut self) {
        if let Some(cutoff) = self.cutoff() {
            self.store.retain(|_, s| s.end >= cutoff);
        }
    }

    /// Takes a window version: builds it into its Observation now (reading back from
    /// `stored` what it merges into, when needed). A version that cannot be built yet (the
    /// read-back failed) waits, with those after it, for the next call or [`Self::build`].
    pub fn add(
        &mut self,
        epoch: u64,
        item: WindowUpdate,
        stored: &mut dyn StoredObservations,
    ) -> anyhow::Result<()> {
        let end = item.group.end;
        self.newest = Some(self.newest.map_or(end, |n| n.max(end)));
        self.queued.push_back((epoch, item));
        self.build(stored)
    }

    /// Builds the versions waiting to be.
    pub fn build(&mut self, stored: &mut dyn StoredObservations) -> anyhow::Result<()> {
        while let Some((_, u)) = self.queued.front() {
            // Bytes dropped for a window instance that is gone: its version must merge into
            // what was written, read back as after a restart. The version count goes on.
            let dropped = self.bytes_dropped(u).then(|| u.id.clone());
            let dropped = dropped.and_then(|id| Some((self.store.remove(&id)?.version, id)));
            let u = &self.queued.front().expect("front").1;
            let days = self.days_to_load(u, dropped.is_some());
            if !days.is_empty() {
                let id = u.id.clone();
                self.load(stored, days, &id)?;
            }
            if let Some((version, id)) = dropped {
                if let Some(s) = self.store.get_mut(&id) {
                    s.version = s.version.max(version);
                }
            }
            let (epoch, u) = self.queued.pop_front().expect("front");
            self.build_one(epoch, u);
        }
        Ok(())
    }

    /// Whether the store kept no bytes of `u`'s Observation (its window instance held
    /// every value) and `u` comes from another instance, so must merge into what the output
    /// holds.
    fn bytes_dropped(&self, u: &WindowUpdate) -> bool {
        !self.newest_pending.contains_key(&u.id)
            && self
                .store
                .get(&u.id)
                .is_some_and(|s| s.json.is_empty() && s.instance != Some(u.instance))
    }

    fn build_one(&mut self, epoch: u64, u: WindowUpdate) {
        let id = &u.id;
        // What the output holds before this version: the version before it in this flush,
        // or the stored one (its window instance and version count).
        let pending = self.newest_pending.get(id).map(|i| &self.pending[*i]);
        let prev: Option<(Option<u64>, i64)> = match pending {
            Some(c) => Some((c.instance, c.version)),
            None => self.store.get(id).map(|s| (s.instance, s.version)),
        };
        // A group of the same window instance holds every value already written: building
        // it afresh gives what merging would, without re-reading the stored SampledData.
        let same_window = prev.is_some_and(|p| p.0 == Some(u.instance));
        // A pending version taken unbuilt is built here, not serialized and parsed back.
        let parsed: Option<Value> = match (prev, pending) {
            (Some(_), Some(c)) if !same_window => Some(c.value()),
            (Some(_), None) if !same_window => {
                Some(serde_json::from_slice(&self.store[id].json).expect("the store's own JSON"))
            }
            _ => None,
        };
        let prev_resource = parsed.as_ref();
        let version = prev.map_or(1, |p| p.1 + 1);
        if prev_resource.is_none() && observation::always_builds(&u.template) {
            // Built from the group when written: nothing of it is held until then.
            let (end, day) = written_end_and_day(&u);
            self.push(Change {
                epoch,
                id: u.id.clone(),
                version,
                instance: Some(u.instance),
                end,
                day,
                json: None,
                amended: same_window,
                update: u,
            });
            return;
        }
        // A new resource (no version before it to merge into) is written straight to
        // `scratch`, never built as a `Value`.
        let result = match prev_resource {
            Some(resource) => observation::merge(&u.template, &u.group, resource).map(Some),
            None => {
                self.scratch.clear();
                write_from_window(&mut self.scratch, &u, same_window).map(|()| None)
            }
        };
        let resource = match result {
            Ok(r) => r,
            Err(e) => {
                // A value the FHIR template cannot represent: count it and go on.
                tracing::error!(observation = %crate::privacy::tag(id), r#type = %u.type_name, "cannot build the Observation");
                tracing::debug!(observation = %id, "cannot build the Observation: {e}");
                Metrics::add(&self.metrics.observation_errors, 1);
                return;
            }
        };
        if prev_resource.is_some_and(|p| Some(p) == resource.as_ref()) {
            Metrics::add(&self.metrics.observations_unchanged, 1);
            return;
        }
        // Only a version built from the group alone is all the group holds: after a merge
        // (values read back at start, or from an evicted window) the next version must merge
        // again, or it would drop what only the stored version had.
        let built_from_group = prev.is_none() || same_window;
        let (end, day) = match &resource {
            Some(r) => (period_end(r).unwrap_or(u.group.end), observation_day(r, &u)),
            None => written_end_and_day(&u),
        };
        // The values are in the resource now: keep the window's description only.
        let mut update = u;
        update.group = Arc::new(ObservationGroup {
            start: update.group.start,
            end: update.group.end,
            id_segment: String::new(),
            values: Vec::new(),
        });
        // Exactly its length: serializing grows the buffer by doubling.
        let json = match &resource {
            Some(r) => super::compact_json::to_boxed(r, &mut self.scratch),
            None => self.scratch.as_slice().into(),
        };
        self.push(Change {
            epoch,
            id: update.id.clone(),
            version,
            instance: built_from_group.then_some(update.instance),
            end,
            day,
            json: Some(json),
            amended: false,
            update,
        });
    }

    /// Adds a version to the pending ones: the newest of its Observation.
    fn push(&mut self, change: Change) {
        if let Some(s) = self.store.get_mut(&change.id) {
            // The version before is built on and never read again: versions to come build
            // on this one (`newest_pending`), which replaces it at the commit.
            s.json = Box::default();
        }
        self.newest_pending
            .insert(change.id.clone(), self.pending.len());
        self.pending.push(change);
    }

    /// The versions built since the last flush, in the order emitted.
    pub fn changes(&self) -> &[Change] {
        &self.pending
    }

    /// Records that the pending versions were written.
    pub fn committed(&mut self) {
        let changes = std::mem::take(&mut self.pending);
        self.newest_pending.clear();
        self.metrics
            .record_versions(self.lake, changes.iter().map(|c| c.update.emitted_ms));
        if !self.lake {
            Metrics::add(&self.metrics.observations_out, changes.len() as u64);
        }
        for c in changes {
            self.newest = Some(self.newest.map_or(c.end, |n| n.max(c.end)));
            // A window instance's next version is built from its group alone: no bytes
            // kept for it (see `Stored::json`).
            let json = match (c.instance, c.json) {
                (None, Some(json)) => json,
                _ => Box::default(),
            };
            self.store.insert(
                c.id,
                Stored {
                    json,
                    end: c.end,
                    instance: c.instance,
                    version: c.version,
                },
            );
        }
        self.evict();
    }
}
