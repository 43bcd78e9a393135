//! NDJSON Observation sink, FHIR bulk-data style: `<dir>/observations/part-*.ndjson`, one
//! Observation per line; a later line for the same id supersedes an earlier one.
//!
//! The sink keeps the last Observation it wrote per id (its "store", as a FHIR server would)
//! and merges each window update into it exactly as the IoMT connector merges into a stored
//! Observation. What the store does not hold (after a restart, or for a window evicted long
//! ago) it reads back from the committed files by the event day the window starts on, so a
//! replay or a days-old backlog merges into what was already written: nothing is lost, and
//! an update that changes nothing is not written again.

use super::files::{days_index, parts_on_days, PartWriter};
use super::Sink;
use crate::dataflow::window::WindowUpdate;
use crate::fhir::groups::ObservationGroup;
use crate::fhir::observation::{self, period_end, period_start};
use crate::metrics::Metrics;
use crate::time::parse_timestamp;
use anyhow::Context as _;
use chrono::{DateTime, Utc};
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

struct Stored {
    resource: Value,
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
    /// Whether committed versions count as `observations_out` (the NDJSON output's metric;
    /// the lakehouse counts rows of its own).
    counts_out: bool,
    output: &'static str,
    worker: usize,
}

/// An Observation version to write: the merged resource and where it came from.
pub struct Change {
    /// Ingestion epoch of the update.
    pub epoch: u64,
    /// Observation id.
    pub id: String,
    /// The resource to write.
    pub resource: Value,
    /// The version number it becomes.
    pub version: i64,
    /// The window update it was built from, without its values (in `resource` now).
    pub update: WindowUpdate,
    end: DateTime<Utc>,
    instance: Option<u64>,
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
            counts_out: true,
            output,
            worker,
        }
    }

    /// The same store, not counting its versions as NDJSON output.
    pub fn not_counting_output(mut self) -> Self {
        self.counts_out = false;
        self
    }

    fn cutoff(&self) -> Option<DateTime<Utc>> {
        self.newest.and_then(|n| n.checked_sub_signed(self.horizon))
    }

    /// The days to read back before `u` can merge: none when the store or this flush holds
    /// its Observation, else its days unless read already and the window is recent enough
    /// that it would still be held. A window's stored version starts on its group's start
    /// day, or the day before where a correlation-id group was widened by an earlier value.
    fn days_to_load(&self, u: &WindowUpdate) -> BTreeSet<i32> {
        if self.store.contains_key(&u.id) || self.newest_pending.contains_key(&u.id) {
            return BTreeSet::new();
        }
        let evicted = self.cutoff().is_some_and(|c| u.group.end < c);
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
            self.store.insert(
                id.to_string(),
                Stored {
                    resource,
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
            let days = self.days_to_load(u);
            if !days.is_empty() {
                let id = u.id.clone();
                self.load(stored, days, &id)?;
            }
            let (epoch, u) = self.queued.pop_front().expect("front");
            self.build_one(epoch, u);
        }
        Ok(())
    }

    fn build_one(&mut self, epoch: u64, u: WindowUpdate) {
        let id = &u.id;
        // What the output holds before this version: the version before it in this flush,
        // or the stored one.
        let prev: Option<(&Value, Option<u64>, i64)> = match self.newest_pending.get(id) {
            Some(i) => {
                let c = &self.pending[*i];
                Some((&c.resource, c.instance, c.version))
            }
            None => self
                .store
                .get(id)
                .map(|s| (&s.resource, s.instance, s.version)),
        };
        // A group of the same window instance holds every value already written: building
        // it afresh gives what merging would, without re-reading the stored SampledData.
        let same_window = prev.is_some_and(|p| p.1 == Some(u.instance));
        let result = match prev {
            Some((resource, ..)) if !same_window => {
                observation::merge(&u.template, &u.group, resource)
            }
            _ => observation::build(&u.template, &u.type_name, &u.group, &u.subjects()).map(
                |mut o| {
                    if same_window {
                        o["status"] = "amended".into();
                    }
                    o
                },
            ),
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
        if !same_window && prev.is_some_and(|p| *p.0 == resource) {
            Metrics::add(&self.metrics.observations_unchanged, 1);
            return;
        }
        // Only a version built from the group alone is all the group holds: after a merge
        // (values read back at start, or from an evicted window) the next version must merge
        // again, or it would drop what only the stored version had.
        let built_from_group = prev.is_none() || same_window;
        let instance = u.instance;
        let end = period_end(&resource).unwrap_or(u.group.end);
        let version = prev.map_or(1, |p| p.2 + 1);
        // The values are in the resource now: keep the window's description only.
        let mut update = u;
        update.group = Arc::new(ObservationGroup {
            start: update.group.start,
            end: update.group.end,
            id_segment: String::new(),
            values: Vec::new(),
        });
        self.newest_pending
            .insert(update.id.clone(), self.pending.len());
        self.pending.push(Change {
            epoch,
            id: update.id.clone(),
            version,
            resource,
            update,
            end,
            instance: built_from_group.then_some(instance),
        });
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
            .record_versions(changes.iter().map(|c| c.update.emitted_ms));
        if self.counts_out {
            Metrics::add(&self.metrics.observations_out, changes.len() as u64);
        }
        for c in changes {
            self.newest = Some(self.newest.map_or(c.end, |n| n.max(c.end)));
            self.store.insert(
                c.id,
                Stored {
                    resource: c.resource,
                    end: c.end,
                    instance: c.instance,
                    version: c.version,
                },
            );
        }
        self.evict();
    }
}

/// One worker's Observation output.
pub struct ObservationSink {
    writer: PartWriter,
    store: ObservationStore,
    parts: CommittedParts,
}

/// The committed Observation parts, read back by event day through their indexes.
struct CommittedParts {
    dir: PathBuf,
    owns: Box<dyn Fn(&str) -> bool + Send>,
}

/// What a stored line must be read for before it is parsed whole.
#[derive(serde::Deserialize)]
struct Head<'a> {
    #[serde(borrow)]
    id: Option<std::borrow::Cow<'a, str>>,
    #[serde(rename = "effectivePeriod")]
    period: Option<HeadPeriod<'a>>,
    #[serde(rename = "effectiveDateTime", borrow)]
    instant: Option<std::borrow::Cow<'a, str>>,
    device: Option<HeadDevice<'a>>,
}

#[derive(serde::Deserialize)]
struct HeadPeriod<'a> {
    #[serde(borrow)]
    start: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    end: Option<std::borrow::Cow<'a, str>>,
}

#[derive(serde::Deserialize)]
struct HeadDevice<'a> {
    #[serde(borrow)]
    identifier: Option<HeadIdentifier<'a>>,
}

#[derive(serde::Deserialize)]
struct HeadIdentifier<'a> {
    #[serde(borrow)]
    value: Option<std::borrow::Cow<'a, str>>,
}

impl StoredObservations for CommittedParts {
    fn read_days(
        &mut self,
        days: &BTreeSet<i32>,
        keep: &dyn Fn(&str, Option<DateTime<Utc>>) -> bool,
    ) -> anyhow::Result<Vec<(Value, i64)>> {
        // Later lines supersede earlier ones (NDJSON numbers no versions): the newest line
        // of each wanted Observation, parsed whole at the end.
        let mut newest: HashMap<String, String> = HashMap::new();
        for part in parts_on_days(&self.dir, days) {
            let f = std::fs::File::open(&part)
                .with_context(|| format!("cannot read {}", part.display()))?;
            for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
                let line = line.with_context(|| format!("cannot read {}", part.display()))?;
                // A damaged committed part is not something a retry mends: the job stops,
                // naming the line, rather than write a version that forgets what it held.
                let head: Head = serde_json::from_str(&line).map_err(|e| {
                    anyhow::Error::new(super::fhir::Fatal(format!(
                        "{}:{}: not a JSON Observation ({e})",
                        part.display(),
                        i + 1
                    )))
                })?;
                let time =
                    |t: &Option<std::borrow::Cow<str>>| t.as_deref().and_then(parse_timestamp);
                let start = head.period.as_ref().and_then(|p| time(&p.start));
                let end = head.period.as_ref().and_then(|p| time(&p.end));
                let (start, end) = (start.or(time(&head.instant)), end.or(time(&head.instant)));
                let device = head
                    .device
                    .as_ref()
                    .and_then(|d| d.identifier.as_ref())
                    .and_then(|i| i.value.as_deref());
                let (Some(id), Some(start)) = (head.id.as_deref(), start) else {
                    continue;
                };
                if days.contains(&crate::time::day_of(&start))
                    && device.is_some_and(&self.owns)
                    && keep(id, end)
                {
                    newest.insert(id.to_string(), line);
                }
            }
        }
        newest
            .into_values()
            .map(|line| Ok((serde_json::from_str(&line)?, 0)))
            .collect()
    }
}

impl ObservationSink {
    /// Opens `<dir>/observations` for `worker`; `owns(device)` tells which stored
    /// Observations this worker is responsible for (the window exchange's routing). What
    /// was written before is read back when an update needs it, not at start.
    pub fn new(
        dir: &Path,
        worker: usize,
        owns: impl Fn(&str) -> bool + Send + 'static,
        horizon: Duration,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let dir = dir.join("observations");
        let writer = PartWriter::new(&dir, worker)?;
        Ok(Self {
            writer,
            store: ObservationStore::new("ndjson", worker, horizon, metrics),
            parts: CommittedParts {
                dir,
                owns: Box::new(owns),
            },
        })
    }
}

impl Sink<WindowUpdate> for ObservationSink {
    fn write(&mut self, epoch: u64, item: WindowUpdate) -> anyhow::Result<()> {
        self.store.add(epoch, item, &mut self.parts)
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        let result = self.write_pending();
        if result.is_err() {
            // Nothing of a failed flush is kept: the retry writes every pending update again.
            self.writer.abort();
        }
        result
    }
}

impl ObservationSink {
    fn write_pending(&mut self) -> anyhow::Result<()> {
        self.store.build(&mut self.parts)?;
        let mut days = BTreeSet::new();
        for c in self.store.changes() {
            let line = serde_json::to_vec(&c.resource).expect("JSON");
            self.writer.write_line(c.epoch, &line)?;
            days.insert(observation_day(&c.resource, &c.update));
        }
        self.writer.commit_with_index(Some(&days_index(&days)))?;
        self.store.committed();
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::dataflow::window::Windows;
    use crate::mapping::FhirMapping;
    use crate::model::Measurement;
    use crate::sinks::files::{committed_parts, parse_days_index};
    use chrono::DurationRound as _;

    /// A heart-rate reading `at`, and the window update it makes.
    pub(crate) fn hr_at(w: &mut Windows, at: DateTime<Utc>, v: &str) -> WindowUpdate {
        w.add(
            Measurement {
                type_name: "heartRate".into(),
                device_id: "BM-1".into(),
                patient_id: Some("P-1".into()),
                encounter_id: None,
                correlation_id: None,
                occurrence_time: at,
                properties: vec![("hr".into(), v.into())],
                received_ms: None,
                source: None,
            },
            at.timestamp_millis(),
            0,
        );
        w.flush().pop().expect("one window")
    }

    /// The bedside-monitor FHIR mapping the restore tests build Observations with.
    pub(crate) fn bedside_fhir() -> Arc<FhirMapping> {
        Arc::new(
            FhirMapping::from_file(Path::new("templates/bedside-monitor/fhirmapping.json"))
                .expect("fhir"),
        )
    }

    /// The dates the restore tests run at: ten days before today, and years either side of
    /// it, so that no test holds only while the calendar is near its data.
    pub(crate) fn test_dates() -> Vec<DateTime<Utc>> {
        let ten_days_ago = (Utc::now() - chrono::Duration::days(10))
            .duration_trunc(chrono::Duration::hours(1))
            .expect("hour");
        vec![
            ten_days_ago,
            parse_timestamp("2019-03-01T10:00:00Z").expect("time"),
            parse_timestamp("2036-05-01T10:00:00Z").expect("time"),
        ]
    }

    /// Values (no E) of the newest line for the window starting `start`.
    fn data_of(dir: &Path, start: DateTime<Utc>) -> String {
        let mut found = None;
        for part in committed_parts(&dir.join("observations")) {
            let text = std::fs::read_to_string(part).expect("read");
            for line in text.lines() {
                let o: Value = serde_json::from_str(line).expect("json");
                if period_start(&o) == Some(start) {
                    found = Some(o);
                }
            }
        }
        found.expect("an Observation of the window")["valueSampledData"]["data"]
            .as_str()
            .expect("data")
            .split(' ')
            .filter(|v| *v != "E")
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn after_a_restart_every_update_keeps_what_was_written_before_at_any_date() {
        let fhir = bedside_fhir();
        let horizon = Duration::from_secs(7200);
        let s = chrono::Duration::seconds;
        for t0 in test_dates() {
            let dir = tempfile::tempdir().expect("tmp");
            let open = || {
                ObservationSink::new(dir.path(), 0, |_| true, horizon, Metrics::new())
                    .expect("sink")
            };
            let mut sink = open();
            let mut w = Windows::new(fhir.clone(), horizon, Duration::from_secs(300));
            hr_at(&mut w, t0, "70");
            sink.write(1, hr_at(&mut w, t0 + s(1), "71"))
                .expect("write");
            sink.flush().expect("flush");
            assert_eq!(data_of(dir.path(), t0), "70 71", "{t0}");

            // Restart: the window state is gone, the sink reads its store back; a part
            // whose index is lost (or an older writer's, without one) is read all the same.
            for e in std::fs::read_dir(dir.path().join("observations")).expect("dir") {
                let p = e.expect("entry").path();
                if p.extension().is_some_and(|x| x == "index") {
                    std::fs::remove_file(p).expect("rm");
                }
            }
            let mut sink = open();
            let mut w = Windows::new(fhir.clone(), horizon, Duration::from_secs(300));
            sink.write(2, hr_at(&mut w, t0 + s(2), "72"))
                .expect("write");
            sink.flush().expect("flush");
            assert_eq!(
                data_of(dir.path(), t0),
                "70 71 72",
                "merged after restart at {t0}"
            );
            sink.write(3, hr_at(&mut w, t0 + s(3), "73"))
                .expect("write");
            sink.flush().expect("flush");
            assert_eq!(
                data_of(dir.path(), t0),
                "70 71 72 73",
                "merged again at {t0}"
            );

            // Three days later by event time, a late reading of the first window: the
            // store and the windows evicted it long ago; it merges into the stored version.
            let later = t0 + chrono::Duration::days(3);
            sink.write(4, hr_at(&mut w, later, "90")).expect("write");
            sink.flush().expect("flush");
            assert_eq!(
                w.evict(later.timestamp_millis()),
                1,
                "the first window is gone from the job"
            );
            sink.write(5, hr_at(&mut w, t0 + s(4), "74"))
                .expect("write");
            sink.flush().expect("flush");
            assert_eq!(
                data_of(dir.path(), t0),
                "70 71 72 73 74",
                "late data at {t0}"
            );
            assert_eq!(data_of(dir.path(), later), "90");
        }
    }

    #[test]
    fn a_damaged_part_stops_the_job_naming_its_line() {
        let dir = tempfile::tempdir().expect("tmp");
        let fhir = bedside_fhir();
        let horizon = Duration::from_secs(7200);
        let t0 = test_dates()[1];
        let mut sink =
            ObservationSink::new(dir.path(), 0, |_| true, horizon, Metrics::new()).expect("sink");
        let mut w = Windows::new(fhir.clone(), horizon, Duration::from_secs(300));
        sink.write(1, hr_at(&mut w, t0, "70")).expect("write");
        sink.flush().expect("flush");
        let part = committed_parts(&dir.path().join("observations"))
            .pop()
            .expect("a part");
        std::fs::write(&part, "{\"id\": \"x\"}\n{not json\n").expect("damage");
        let mut sink =
            ObservationSink::new(dir.path(), 0, |_| true, horizon, Metrics::new()).expect("sink");
        let mut w = Windows::new(fhir, horizon, Duration::from_secs(300));
        // Read back when the version is built (write), or retried at the flush.
        let e = sink
            .write(2, hr_at(&mut w, t0, "71"))
            .and_then(|()| sink.flush())
            .expect_err("a damaged part");
        assert!(
            e.downcast_ref::<super::super::fhir::Fatal>().is_some(),
            "{e:#}"
        );
        assert!(
            format!("{e:#}").contains(&format!("{}:2:", part.display())),
            "{e:#}"
        );
    }

    #[test]
    fn a_part_index_lists_days_and_an_empty_one_counts_as_none() {
        let days: BTreeSet<i32> = [20_778, 20_779].into();
        let text = days_index(&days);
        assert_eq!(text, "2026-11-21\n2026-11-22\n");
        assert_eq!(parse_days_index(&text), Some(days));
        assert_eq!(parse_days_index(""), None, "an empty index is no index");
        assert_eq!(parse_days_index("21/11/2026\n"), None);
    }
}
