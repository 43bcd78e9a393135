//! The `observations` table: every version of every Observation the job wrote, one row per
//! value (the main value or a component), with a numeric summary and the resource itself.
//!
//! It merges through the same [`ObservationStore`] as the NDJSON output: what the store does
//! not hold it reads back from the table's `date` partition of the window (the newest
//! version of each Observation there), so a restart or a days-old backlog merges into what
//! was written instead of writing a partial window, and an update that changes nothing
//! writes no version. `(id, version)` is unique.

use super::rows::{column, micros};
use super::schema::{ObservationColumns, OBSERVATIONS};
use super::table::Table;
use super::LakeConfig;
use crate::fhir::store::{Change, ObservationStore, StoredObservations, WindowUpdate};
use crate::fhir::SERVICE_URI;
use crate::metrics::Metrics;
use crate::sinks::Sink;
use chrono::{DateTime, Utc};
use deltalake::arrow::array::{Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

/// Count, min, max, mean and last of the numbers of one value (SampledData slots in order).
#[derive(Debug, Default, PartialEq)]
pub struct Summary {
    /// Values present.
    pub count: i64,
    /// Smallest.
    pub min: Option<f64>,
    /// Largest.
    pub max: Option<f64>,
    /// Mean.
    pub mean: Option<f64>,
    /// The latest in time.
    pub last: Option<f64>,
    /// A non-numeric value (valueString, a CodeableConcept's text).
    pub text: Option<String>,
}

impl Summary {
    fn of(numbers: impl Iterator<Item = f64>) -> Self {
        let mut s = Summary::default();
        let mut sum = 0.0;
        for v in numbers {
            s.count += 1;
            sum += v;
            s.min = Some(s.min.map_or(v, |m| m.min(v)));
            s.max = Some(s.max.map_or(v, |m| m.max(v)));
            s.last = Some(v);
        }
        if s.count > 0 {
            s.mean = Some(sum / s.count as f64);
        }
        s
    }

    /// The summary of whichever `value[x]` the holder (Observation or component) has.
    pub fn of_value(holder: &Value) -> Self {
        if let Some(data) = holder
            .pointer("/valueSampledData/data")
            .and_then(Value::as_str)
        {
            let origin = holder
                .pointer("/valueSampledData/origin/value")
                .and_then(Value::as_f64)
                .unwrap_or(0.0);
            let factor = holder
                .pointer("/valueSampledData/factor")
                .and_then(Value::as_f64)
                .unwrap_or(1.0);
            return Self::of(
                data.split_whitespace()
                    .filter_map(|t| t.parse::<f64>().ok())
                    .map(|v| origin + v * factor),
            );
        }
        if let Some(v) = holder
            .pointer("/valueQuantity/value")
            .and_then(Value::as_f64)
        {
            return Self::of(std::iter::once(v));
        }
        let text = holder
            .get("valueString")
            .and_then(Value::as_str)
            .or_else(|| {
                holder
                    .pointer("/valueCodeableConcept/text")
                    .and_then(Value::as_str)
            });
        Summary {
            count: i64::from(text.is_some()),
            text: text.map(str::to_string),
            ..Default::default()
        }
    }
}

/// The component of `o` carrying `value_name` (the connector codes it with its service URI).
fn component<'a>(o: &'a Value, value_name: &str) -> Option<&'a Value> {
    o.get("component")?.as_array()?.iter().find(|c| {
        c.pointer("/code/coding")
            .and_then(Value::as_array)
            .is_some_and(|codings| {
                codings.iter().any(|cd| {
                    cd.get("system").and_then(Value::as_str) == Some(SERVICE_URI)
                        && cd.get("code").and_then(Value::as_str) == Some(value_name)
                })
            })
    })
}

/// Column builders of one flush.
#[derive(Default)]
struct Builders {
    c: ObservationColumns,
    rows: usize,
}

impl Builders {
    fn push(&mut self, c: &Change, written_at: i64) {
        // One at a time (built, or parsed back): the store holds no flush's worth of
        // resources.
        let (o, resource) = c.resource();
        let o = &o;
        let u: &WindowUpdate = &c.update;
        let text = |p: &str| o.pointer(p).and_then(Value::as_str);
        let start = text("/effectivePeriod/start")
            .and_then(micros)
            .unwrap_or(u.group.start.timestamp_micros());
        let end = text("/effectivePeriod/end")
            .and_then(micros)
            .unwrap_or(u.group.end.timestamp_micros());
        let json = std::str::from_utf8(&resource).expect("serde_json writes UTF-8");
        let values = u.template.value.iter().map(|v| (v, Some(o))).chain(
            u.template
                .components
                .iter()
                .map(|t| (&t.value, component(o, &t.value.value_name))),
        );
        for (tpl, holder) in values {
            let Some(holder) = holder else { continue };
            let s = Summary::of_value(holder);
            if s.count == 0 {
                continue;
            }
            self.c.id.append_value(&c.id);
            self.c.identifier.append_option(text("/identifier/0/value"));
            self.c.patient_id.append_value(&u.patient);
            self.c.device_id.append_value(&u.device);
            self.c.encounter_id.append_option(u.encounter.as_deref());
            self.c.window_start.append_value(start);
            self.c.window_end.append_value(end);
            self.c
                .status
                .append_value(text("/status").unwrap_or("final"));
            self.c.value_name.append_value(&tpl.value_name);
            self.c.unit.append_option(tpl.unit());
            self.c.count.append_value(s.count);
            self.c.min.append_option(s.min);
            self.c.max.append_option(s.max);
            self.c.mean.append_option(s.mean);
            self.c.last.append_option(s.last);
            self.c.value_string.append_option(s.text.as_deref());
            self.c.version.append_value(c.version);
            self.c.written_at.append_value(written_at);
            self.c.resource.append_value(json);
            self.c.date.append_value(c.day());
            self.c.type_name.append_value(&u.type_name);
            self.rows += 1;
        }
    }

    fn finish(&mut self) -> RecordBatch {
        self.rows = 0;
        self.c.finish(OBSERVATIONS.arrow_schema())
    }
}

/// One worker's writer of the `observations` table.
pub struct ObservationTableSink {
    table: TableVersions,
    store: ObservationStore,
    metrics: Arc<Metrics>,
}

/// The table, read back by `date` partition for the Observations a worker owns.
struct TableVersions {
    table: Table,
    owns: Box<dyn Fn(&str) -> bool + Send>,
}

impl StoredObservations for TableVersions {
    fn read_days(
        &mut self,
        days: &BTreeSet<i32>,
        keep: &dyn Fn(&str, Option<DateTime<Utc>>) -> bool,
    ) -> anyhow::Result<Vec<(Value, i64)>> {
        let files = self.table.files_on_days(days)?;
        // Every version is in the table (one row per value): only the newest of each wanted
        // Observation is parsed.
        let batches = self.table.read(
            &files,
            &["id", "device_id", "window_end", "version", "resource"],
        )?;
        let mut newest: HashMap<&str, (i64, &str)> = HashMap::new();
        for b in &batches {
            let (Some(ids), Some(devices), Some(ends), Some(versions), Some(resources)) = (
                column::<StringArray>(b, "id"),
                column::<StringArray>(b, "device_id"),
                column::<TimestampMicrosecondArray>(b, "window_end"),
                column::<Int64Array>(b, "version"),
                column::<StringArray>(b, "resource"),
            ) else {
                continue;
            };
            for i in 0..b.num_rows() {
                let id = ids.value(i);
                let end = DateTime::from_timestamp_micros(ends.value(i));
                if !(self.owns)(devices.value(i)) || !keep(id, end) {
                    continue;
                }
                let (version, resource) = (versions.value(i), resources.value(i));
                let slot = newest.entry(id).or_insert((version, resource));
                if version > slot.0 {
                    *slot = (version, resource);
                }
            }
        }
        newest
            .into_values()
            .map(|(version, resource)| {
                // Not mended by a retry: the job stops rather than forget what the table held.
                let parsed = serde_json::from_str(resource).map_err(|e| {
                    anyhow::Error::new(crate::sinks::Fatal(format!(
                        "{}: version {version} of an Observation is not JSON ({e})",
                        self.table.location
                    )))
                })?;
                Ok((parsed, version))
            })
            .collect()
    }
}

impl ObservationTableSink {
    /// Opens (or creates) the table for the Observations this worker owns
    /// (`owns(device)`). What it holds is read back when an update needs it, not at start.
    pub fn new(
        config: &LakeConfig,
        worker: usize,
        owns: impl Fn(&str) -> bool + Send + 'static,
        horizon: Duration,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let table = Table::open(&config.location, &OBSERVATIONS, &config.storage)?;
        let store =
            ObservationStore::new("lakehouse", worker, horizon, metrics.clone()).for_lakehouse();
        Ok(Self {
            table: TableVersions {
                table,
                owns: Box::new(owns),
            },
            store,
            metrics,
        })
    }
}

/// Observation versions per record batch a flush builds.
const BATCH_VERSIONS: usize = 2048;

impl Sink<WindowUpdate> for ObservationTableSink {
    fn write(&mut self, epoch: u64, item: WindowUpdate) -> anyhow::Result<()> {
        self.store.add(epoch, item, &mut self.table)
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        self.store.build(&mut self.table)?;
        let changes = self.store.changes();
        if changes.is_empty() {
            self.store.committed();
            return Ok(());
        }
        let now = chrono::Utc::now().timestamp_micros();
        let rows = std::cell::Cell::new(0);
        // Versions of every window come at once at a checkpoint, each with its resource:
        // built into batches of a bounded number, the flush holds one batch of them as
        // columns, not all (at 5,000 msgs/s, 200 MB at the hour's second minute).
        let batches = changes.chunks(BATCH_VERSIONS).map(|chunk| {
            let mut b = Builders::default();
            for c in chunk {
                b.push(c, now);
            }
            rows.set(rows.get() + b.rows);
            b.finish()
        });
        let started = std::time::Instant::now();
        self.table
            .table
            .append(batches, Vec::new(), HashMap::new())?;
        self.metrics
            .lake_commit(rows.get() as u64, started.elapsed());
        self.store.committed();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataflow::window::Windows;
    use crate::sinks::observations::tests::{bedside_fhir, hr_at, test_dates};
    use deltalake::arrow::array::Float64Array;
    use serde_json::json;

    /// (version, count, last, resource data) of the newest row of the window starting `start`.
    fn newest(cfg: &LakeConfig, start: DateTime<Utc>) -> (i64, i64, f64, String) {
        let t = Table::open(&cfg.location, &OBSERVATIONS, &cfg.storage).expect("table");
        let files = t.files().expect("files");
        let mut best = (0, 0, 0.0, String::new());
        for b in t
            .read(
                &files,
                &["version", "count", "last", "resource", "window_start"],
            )
            .expect("read")
        {
            let v = column::<Int64Array>(&b, "version").expect("version");
            let c = column::<Int64Array>(&b, "count").expect("count");
            let l = column::<Float64Array>(&b, "last").expect("last");
            let r = column::<StringArray>(&b, "resource").expect("resource");
            let s = column::<TimestampMicrosecondArray>(&b, "window_start").expect("start");
            for i in 0..b.num_rows() {
                if s.value(i) == start.timestamp_micros() && v.value(i) > best.0 {
                    let o: Value = serde_json::from_str(r.value(i)).expect("json");
                    let data = o["valueSampledData"]["data"].as_str().expect("data");
                    let data = data.split(' ').filter(|x| *x != "E").collect::<Vec<_>>();
                    best = (v.value(i), c.value(i), l.value(i), data.join(" "));
                }
            }
        }
        best
    }

    #[test]
    fn after_a_restart_versions_merge_into_what_the_table_holds_at_any_date() {
        let fhir = bedside_fhir();
        let horizon = Duration::from_secs(7200);
        let s = chrono::Duration::seconds;
        for t0 in test_dates() {
            let dir = tempfile::tempdir().expect("tmp");
            let cfg = LakeConfig::at(&dir.path().display().to_string());
            let open = || {
                ObservationTableSink::new(&cfg, 0, |_| true, horizon, Metrics::new()).expect("sink")
            };
            let mut sink = open();
            let mut w = Windows::new(fhir.clone(), horizon, Duration::from_secs(300));
            hr_at(&mut w, t0, "70");
            sink.write(1, hr_at(&mut w, t0 + s(1), "71"))
                .expect("write");
            sink.flush().expect("flush");
            assert_eq!(newest(&cfg, t0), (1, 2, 71.0, "70 71".into()), "{t0}");

            // Restart: the window state is gone; the table gives the store back.
            let mut sink = open();
            let mut w = Windows::new(fhir.clone(), horizon, Duration::from_secs(300));
            sink.write(2, hr_at(&mut w, t0 + s(2), "72"))
                .expect("write");
            sink.flush().expect("flush");
            assert_eq!(newest(&cfg, t0), (2, 3, 72.0, "70 71 72".into()), "{t0}");

            // A replay that changes nothing writes no version.
            let mut sink = open();
            let mut w = Windows::new(fhir.clone(), horizon, Duration::from_secs(300));
            sink.write(3, hr_at(&mut w, t0 + s(1), "71"))
                .expect("write");
            sink.flush().expect("flush");
            assert_eq!(newest(&cfg, t0).0, 2, "{t0}");

            // Three days later by event time, a late reading of the first window, which the
            // job and the store evicted long ago, merges into the table's version.
            let later = t0 + chrono::Duration::days(3);
            sink.write(4, hr_at(&mut w, later, "90")).expect("write");
            sink.flush().expect("flush");
            assert_eq!(
                w.evict(later.timestamp_millis()),
                1,
                "the first window is gone from the job"
            );
            sink.write(5, hr_at(&mut w, t0 + s(3), "73"))
                .expect("write");
            sink.flush().expect("flush");
            assert_eq!(newest(&cfg, t0), (3, 4, 73.0, "70 71 72 73".into()), "{t0}");
            assert_eq!(newest(&cfg, later), (1, 1, 90.0, "90".into()));
        }
    }

    #[test]
    fn a_flush_of_more_versions_than_one_batch_writes_every_row_in_one_commit() {
        let dir = tempfile::tempdir().expect("tmp");
        let cfg = LakeConfig::at(&dir.path().display().to_string());
        let horizon = Duration::from_secs(7200);
        let mut sink =
            ObservationTableSink::new(&cfg, 0, |_| true, horizon, Metrics::new()).expect("sink");
        let mut w = Windows::new(bedside_fhir(), horizon, Duration::from_secs(300));
        let t0 = test_dates()[0];
        let devices = BATCH_VERSIONS + 5;
        for d in 0..devices {
            let mut m = crate::sinks::observations::tests::heart_rate(t0, "70");
            m.device_id = format!("BM-{d}").into();
            m.patient_id = Some(format!("P-{d}").into());
            w.add(&m, t0.timestamp_millis(), 1);
        }
        for u in w.flush() {
            sink.write(1, u).expect("write");
        }
        let version = || {
            let mut t = Table::open(&cfg.location, &OBSERVATIONS, &cfg.storage).expect("table");
            t.parts().1.version()
        };
        let before = version().expect("created");
        sink.flush().expect("flush");
        assert_eq!(version(), Some(before + 1), "one commit");
        let t = Table::open(&cfg.location, &OBSERVATIONS, &cfg.storage).expect("table");
        let files = t.files().expect("files");
        let rows: usize = t
            .read(&files, &["id"])
            .expect("read")
            .iter()
            .map(|b| b.num_rows())
            .sum();
        assert_eq!(rows, devices);
    }

    #[test]
    fn summaries_read_sampled_data_quantities_and_text() {
        let sd = json!({"valueSampledData": {"origin": {"value": 0}, "data": "E 70 E 74 72"}});
        let s = Summary::of_value(&sd);
        assert_eq!(
            (s.count, s.min, s.max, s.mean, s.last),
            (3, Some(70.0), Some(74.0), Some(72.0), Some(72.0))
        );
        let q = Summary::of_value(&json!({"valueQuantity": {"value": 36.6}}));
        assert_eq!((q.count, q.last), (1, Some(36.6)));
        let t = Summary::of_value(&json!({"valueString": "A"}));
        assert_eq!((t.count, t.text.as_deref(), t.mean), (1, Some("A"), None));
        assert_eq!(Summary::of_value(&json!({})).count, 0);
    }
}
