//! NDJSON Observation sink, FHIR bulk-data style: `<dir>/observations/part-*.ndjson`, one
//! Observation per line; a later line for the same id supersedes an earlier one.
//!
//! The sink keeps the last Observation it wrote per id (its "store", as a FHIR server would)
//! and merges each window update into it exactly as the IoMT connector merges into a stored
//! Observation. At start the store is rebuilt from the committed files, so a restart that
//! replays uncommitted messages merges into what was already written: nothing is lost, and an
//! update that changes nothing is not written again.

use super::files::{committed_parts, PartWriter};
use super::Sink;
use crate::dataflow::window::WindowUpdate;
use crate::fhir::observation::{self, period_end};
use crate::metrics::Metrics;
use anyhow::Context as _;
use chrono::{DateTime, Utc};
use serde_json::Value;
use std::collections::HashMap;
use std::io::BufRead;
use std::path::Path;
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

/// The last Observation written per id, and the window updates waiting for the next flush:
/// what every Observation output (NDJSON, the lakehouse) merges into, as the IoMT
/// connector merges into a stored Observation.
pub struct ObservationStore {
    store: HashMap<String, Stored>,
    pending: HashMap<String, (u64, WindowUpdate)>,
    horizon: chrono::Duration,
    newest: Option<DateTime<Utc>>,
    metrics: Arc<Metrics>,
    /// Whether committed versions count as `observations_out` (the NDJSON output's metric;
    /// the lakehouse counts rows of its own).
    counts_out: bool,
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
    /// The window update it was built from.
    pub update: WindowUpdate,
    end: DateTime<Utc>,
    instance: Option<u64>,
}

impl ObservationStore {
    /// An empty store keeping Observations whose period ends within `horizon` of the newest.
    pub fn new(horizon: Duration, metrics: Arc<Metrics>) -> Self {
        Self {
            store: HashMap::new(),
            pending: HashMap::new(),
            horizon: chrono::Duration::from_std(horizon).unwrap_or(chrono::Duration::MAX),
            newest: None,
            metrics,
            counts_out: true,
        }
    }

    /// The same store, not counting its versions as NDJSON output.
    pub fn not_counting_output(mut self) -> Self {
        self.counts_out = false;
        self
    }

    /// Takes back one Observation read from committed output (later calls supersede).
    pub fn restore(&mut self, resource: Value, version: i64) {
        let (Some(id), Some(end)) = (
            resource.get("id").and_then(Value::as_str),
            period_end(&resource),
        ) else {
            return;
        };
        if self.store.get(id).is_some_and(|s| s.version > version) {
            return;
        }
        self.newest = Some(self.newest.map_or(end, |n| n.max(end)));
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

    /// Ends a restore: drops what is beyond the horizon and says what was resumed.
    pub fn restored(&mut self, output: &str, worker: usize) {
        self.evict();
        if !self.store.is_empty() {
            tracing::info!(
                worker,
                output,
                observations = self.store.len(),
                "resumed from committed output"
            );
        }
    }

    fn evict(&mut self) {
        if let Some(cutoff) = self.newest.and_then(|n| n.checked_sub_signed(self.horizon)) {
            self.store.retain(|_, s| s.end >= cutoff);
        }
    }

    /// Queues a window update; only the latest state of each Observation per flush counts.
    pub fn add(&mut self, epoch: u64, item: WindowUpdate) {
        self.pending.insert(item.id.clone(), (epoch, item));
    }

    /// The versions the pending updates make, in id order; unchanged merges are left out.
    /// Nothing changes until [`Self::committed`]: a failed write computes them again.
    pub fn changes(&self) -> Vec<Change> {
        let mut ids: Vec<&String> = self.pending.keys().collect();
        ids.sort();
        let mut out = Vec::new();
        for id in ids {
            let (epoch, u) = &self.pending[id];
            let stored = self.store.get(id);
            // A group of the same window instance holds every value already written: building
            // it afresh gives what merging would, without re-reading the stored SampledData.
            let same_window = stored.is_some_and(|s| s.instance == Some(u.instance));
            let result = match stored {
                Some(s) if !same_window => observation::merge(&u.template, &u.group, &s.resource),
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
                    tracing::error!(observation = %id, r#type = %u.type_name, "cannot build the Observation: {e}");
                    Metrics::add(&self.metrics.observation_errors, 1);
                    continue;
                }
            };
            if !same_window && stored.is_some_and(|s| s.resource == resource) {
                Metrics::add(&self.metrics.observations_unchanged, 1);
                continue;
            }
            // Only a version built from the group alone is all the group holds: after a merge
            // (values read back at start, or from an evicted window) the next update must
            // merge again, or it would drop what only the stored version had.
            let built_from_group = stored.is_none() || same_window;
            let end = period_end(&resource).unwrap_or(u.group.end);
            out.push(Change {
                epoch: *epoch,
                id: id.clone(),
                version: stored.map_or(1, |s| s.version + 1),
                resource,
                update: u.clone(),
                end,
                instance: built_from_group.then_some(u.instance),
            });
        }
        out
    }

    /// Records that `changes` were written and drops the pending updates.
    pub fn committed(&mut self, changes: Vec<Change>) {
        self.pending.clear();
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
}

/// The last epoch in a part file's name (`part-w{worker}-{first}-{last}.ndjson`).
fn part_last_epoch(p: &Path) -> Option<u64> {
    p.file_name()?
        .to_str()?
        .strip_suffix(".ndjson")?
        .rsplit('-')
        .next()?
        .parse()
        .ok()
}

impl ObservationSink {
    /// Opens `<dir>/observations` for `worker`; `owns(device)` tells which stored
    /// Observations this worker is responsible for (the window exchange's routing).
    pub fn new(
        dir: &Path,
        worker: usize,
        owns: impl Fn(&str) -> bool,
        horizon: Duration,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let dir = dir.join("observations");
        let writer = PartWriter::new(&dir, worker)?;
        let mut store = ObservationStore::new(horizon, metrics);
        // Files last written more than twice the horizon ago (by ingestion time, in the name)
        // hold nothing the store would keep: skipping them bounds the start-up of long runs.
        let since = chrono::Utc::now().timestamp_millis().max(0) as u64;
        let since =
            since.saturating_sub(2 * horizon.as_millis().min(u128::from(u64::MAX / 4)) as u64);
        for part in committed_parts(&dir) {
            if part_last_epoch(&part).is_some_and(|e| e < since) {
                continue;
            }
            let f = std::fs::File::open(&part)
                .with_context(|| format!("cannot read {}", part.display()))?;
            for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
                let line = line.with_context(|| format!("cannot read {}", part.display()))?;
                let o: Value = serde_json::from_str(&line).with_context(|| {
                    format!("{}:{}: not a JSON Observation", part.display(), i + 1)
                })?;
                let device = o
                    .pointer("/device/identifier/value")
                    .and_then(Value::as_str);
                if device.is_some_and(&owns) {
                    // Later lines supersede earlier ones (NDJSON numbers no versions).
                    store.restore(o, 0);
                }
            }
        }
        store.restored("ndjson", worker);
        Ok(Self { writer, store })
    }
}

impl Sink<WindowUpdate> for ObservationSink {
    fn write(&mut self, epoch: u64, item: WindowUpdate) -> anyhow::Result<()> {
        self.store.add(epoch, item);
        Ok(())
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
        let changes = self.store.changes();
        for c in &changes {
            let line = serde_json::to_vec(&c.resource).expect("JSON");
            self.writer.write_line(c.epoch, &line)?;
        }
        self.writer.commit()?;
        self.store.committed(changes);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataflow::window::Windows;
    use crate::mapping::FhirMapping;
    use crate::model::Measurement;
    use crate::time::parse_timestamp;

    fn hr(w: &mut Windows, second: u32, v: &str) -> WindowUpdate {
        let t = format!("2026-11-21T10:00:{second:02}Z");
        w.add(&Measurement {
            type_name: "heartRate".into(),
            device_id: "BM-1".into(),
            patient_id: Some("P-1".into()),
            encounter_id: None,
            correlation_id: None,
            occurrence_time: parse_timestamp(&t).expect("time"),
            properties: vec![("hr".into(), v.into())],
            received_ms: None,
            source: None,
        });
        w.take_dirty().pop().expect("one window")
    }

    fn last_data(dir: &Path) -> String {
        let parts = committed_parts(&dir.join("observations"));
        let text = std::fs::read_to_string(parts.last().expect("a part")).expect("read");
        let o: Value = serde_json::from_str(text.lines().last().expect("a line")).expect("json");
        o["valueSampledData"]["data"]
            .as_str()
            .expect("data")
            .split(' ')
            .filter(|v| *v != "E")
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn after_a_restart_every_update_keeps_what_was_written_before() {
        let dir = tempfile::tempdir().expect("tmp");
        let fhir = Arc::new(
            FhirMapping::from_file(Path::new("templates/bedside-monitor/fhirmapping.json"))
                .expect("fhir"),
        );
        let open = |dir: &Path| {
            ObservationSink::new(dir, 0, |_| true, Duration::from_secs(7200), Metrics::new())
                .expect("sink")
        };
        // Epochs are ingestion times: start-up reads only recent part files.
        let now = chrono::Utc::now().timestamp_millis() as u64;
        let mut sink = open(dir.path());
        let mut w = Windows::new(fhir.clone(), Duration::from_secs(7200));
        hr(&mut w, 0, "70");
        sink.write(now, hr(&mut w, 1, "71")).expect("write");
        sink.flush().expect("flush");
        assert_eq!(last_data(dir.path()), "70 71");

        // Restart: the window state is gone, the sink reads its store back.
        let mut sink = open(dir.path());
        let mut w = Windows::new(fhir, Duration::from_secs(7200));
        sink.write(now + 1, hr(&mut w, 2, "72")).expect("write");
        sink.flush().expect("flush");
        assert_eq!(
            last_data(dir.path()),
            "70 71 72",
            "merged into the stored version"
        );
        sink.write(now + 2, hr(&mut w, 3, "73")).expect("write");
        sink.flush().expect("flush");
        assert_eq!(
            last_data(dir.path()),
            "70 71 72 73",
            "the next update merges again"
        );
    }

    #[test]
    fn the_last_epoch_comes_from_the_part_name() {
        let p =
            Path::new("out/observations/part-w001-0000001795248794650-0000001795248795169.ndjson");
        assert_eq!(part_last_epoch(p), Some(1_795_248_795_169));
        assert_eq!(
            part_last_epoch(Path::new("out/observations/notes.txt")),
            None
        );
    }
}
