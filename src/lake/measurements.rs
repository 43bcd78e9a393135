//! The `measurements` table: one row per normalized value, exactly once per Kafka record.
//!
//! Every commit records, per Kafka partition, the highest offset it holds (a Delta `txn`
//! action, app id `<prefix>/<topic>/<partition>`). At start the sink reads those versions
//! and drops replayed records at or below them: a crash between the Delta commit and the
//! Kafka offset commit replays records the table already holds, and they are not written
//! twice. Offsets of one partition reach a worker in order, so the highest offset of a
//! flush is also the end of a contiguous run.

use super::rows::date_of;
use super::schema::{MeasurementColumns, MEASUREMENTS};
use super::table::Table;
use super::LakeConfig;
use crate::mapping::FhirMapping;
use crate::metrics::Metrics;
use crate::model::Measurement;
use crate::sinks::Sink;
use deltalake::arrow::array::RecordBatch;
use deltalake::kernel::Transaction;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// Rows a worker buffers before it commits without waiting for the flush interval.
const FLUSH_ROWS: usize = 1 << 20;

/// Column builders of one flush.
#[derive(Default)]
struct Builders {
    c: MeasurementColumns,
    rows: usize,
}

impl Builders {
    fn push(&mut self, m: &Measurement, mapping: &FhirMapping) {
        let template = mapping.get(&m.type_name);
        let event_us = m.occurrence_time.timestamp_micros();
        for (name, raw) in &m.properties {
            self.c.event_time.append_value(event_us);
            self.c
                .ingest_time
                .append_option(m.received_ms.map(|ms| ms * 1000));
            self.c.device_id.append_value(&m.device_id);
            self.c.patient_id.append_option(m.patient_id.as_deref());
            self.c.encounter_id.append_option(m.encounter_id.as_deref());
            self.c
                .correlation_id
                .append_option(m.correlation_id.as_deref());
            self.c.value_name.append_value(name);
            // Values are strings in the connector's model; a number goes to `value`, anything
            // else (a string where a number was too) to `value_string`, never lost.
            match raw.trim().parse::<f64>().ok().filter(|v| v.is_finite()) {
                Some(v) => {
                    self.c.value.append_value(v);
                    self.c.value_string.append_null();
                }
                None => {
                    self.c.value.append_null();
                    self.c.value_string.append_value(raw);
                }
            }
            self.c
                .unit
                .append_option(template.and_then(|t| t.unit_of(name)));
            let src = m.source.as_ref();
            self.c.source_topic.append_option(src.map(|s| &*s.topic));
            self.c
                .source_partition
                .append_option(src.map(|s| s.partition));
            self.c.source_offset.append_option(src.map(|s| s.offset));
            self.c.date.append_value(date_of(&m.occurrence_time));
            self.c.type_name.append_value(&m.type_name);
            self.rows += 1;
        }
    }

    fn finish(&mut self) -> RecordBatch {
        self.rows = 0;
        self.c.finish(MEASUREMENTS.arrow_schema())
    }
}

/// One worker's writer of the `measurements` table.
pub struct MeasurementTableSink {
    table: Table,
    mapping: Arc<FhirMapping>,
    /// `<prefix>` of the txn app ids; None when the source has no replayable offsets.
    app_prefix: Option<String>,
    /// Per (topic, partition): the highest offset the table held when this sink started.
    resume: HashMap<(Arc<str>, i32), i64>,
    /// Measurements whose partition's resume point could not be read yet.
    deferred: Vec<Arc<Measurement>>,
    builders: Builders,
    /// Batches finished but not yet committed (a failed flush keeps them for the retry).
    unflushed: Vec<RecordBatch>,
    /// Highest offset per partition in `unflushed` and the builders.
    covered: BTreeMap<(Arc<str>, i32), i64>,
    epochs: Option<(u64, u64)>,
    worker: usize,
    metrics: Arc<Metrics>,
}

impl MeasurementTableSink {
    /// Opens (or creates) the table for `worker`; `app_prefix` names this job's source for
    /// the exactly-once records (None: no replay filtering).
    pub fn new(
        config: &LakeConfig,
        mapping: Arc<FhirMapping>,
        app_prefix: Option<String>,
        worker: usize,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            table: Table::open(&config.location, &MEASUREMENTS, &config.storage)?,
            mapping,
            app_prefix,
            resume: HashMap::new(),
            deferred: Vec::new(),
            builders: Builders::default(),
            unflushed: Vec::new(),
            covered: BTreeMap::new(),
            epochs: None,
            worker,
            metrics,
        })
    }

    /// Whether `m` is already in the table; Err when the table cannot say yet.
    fn already_written(&mut self, m: &Measurement) -> anyhow::Result<bool> {
        let (Some(prefix), Some(src)) = (&self.app_prefix, &m.source) else {
            return Ok(false);
        };
        let key = (src.topic.clone(), src.partition);
        let upto = match self.resume.get(&key) {
            Some(v) => *v,
            None => {
                let app = format!("{prefix}/{}/{}", src.topic, src.partition);
                let v = self.table.txn_version(&app)?.unwrap_or(-1);
                if v >= 0 {
                    tracing::info!(table = %self.table.location, app, offset = v, "resuming after the offset the table holds");
                }
                self.resume.insert(key, v);
                v
            }
        };
        Ok(src.offset <= upto)
    }

    fn add(&mut self, m: Arc<Measurement>) -> anyhow::Result<()> {
        match self.already_written(&m) {
            Ok(true) => {
                Metrics::add(&self.metrics.lake_rows_skipped, m.properties.len() as u64);
                return Ok(());
            }
            Ok(false) => {}
            Err(e) => {
                self.deferred.push(m);
                return Err(e);
            }
        }
        if let Some(src) = &m.source {
            let e = self
                .covered
                .entry((src.topic.clone(), src.partition))
                .or_insert(src.offset);
            *e = (*e).max(src.offset);
        }
        self.builders.push(&m, &self.mapping);
        Ok(())
    }
}

impl Sink<Arc<Measurement>> for MeasurementTableSink {
    fn write(&mut self, epoch: u64, item: Arc<Measurement>) -> anyhow::Result<()> {
        self.epochs = Some(
            self.epochs
                .map_or((epoch, epoch), |(a, b)| (a.min(epoch), b.max(epoch))),
        );
        if !self.deferred.is_empty() {
            // Keep arrival order behind measurements still waiting for their resume point.
            self.deferred.push(item);
            return Ok(());
        }
        // A failed lookup keeps the item deferred: the flush retries it, nothing is lost.
        let _ = self.add(item);
        if self.builders.rows >= FLUSH_ROWS {
            // Flush by size as well as by interval: bounds the memory of a busy worker and
            // keeps files near row-group size. A failure keeps the rows for the next flush.
            if let Err(e) = self.flush() {
                tracing::warn!(table = %self.table.location, "early flush failed, kept for the next: {e:#}");
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        let mut waiting = std::mem::take(&mut self.deferred).into_iter();
        while let Some(m) = waiting.next() {
            if let Err(e) = self.add(m) {
                // `add` kept the failed one; the rest stay behind it, in order.
                self.deferred.extend(waiting);
                return Err(e.context("measurements: cannot read the table's resume points"));
            }
        }
        if self.builders.rows > 0 {
            self.unflushed.push(self.builders.finish());
        }
        let rows: usize = self.unflushed.iter().map(RecordBatch::num_rows).sum();
        if rows == 0 {
            return Ok(());
        }
        let txns = match &self.app_prefix {
            Some(prefix) => self
                .covered
                .iter()
                .map(|((topic, partition), offset)| {
                    Transaction::new(format!("{prefix}/{topic}/{partition}"), *offset)
                })
                .collect(),
            None => Vec::new(),
        };
        let (first, last) = self.epochs.unwrap_or_default();
        let info = HashMap::from([(
            "vitalflow".to_string(),
            serde_json::json!({
                "worker": self.worker,
                "epochs": [first, last],
                "offsets": self.covered.iter().map(|((t, p), o)| format!("{t}/{p}@{o}")).collect::<Vec<_>>(),
            }),
        )]);
        let started = std::time::Instant::now();
        let batches = self.unflushed.clone();
        self.table.append(batches, txns, info)?;
        self.metrics.lake_commit(rows as u64, started.elapsed());
        self.unflushed.clear();
        self.covered.clear();
        self.epochs = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::SourcePos;
    use deltalake::arrow::array::Array as _;
    use std::path::Path;
    use std::sync::atomic::Ordering;

    fn mapping() -> Arc<FhirMapping> {
        Arc::new(
            FhirMapping::from_file(Path::new("templates/bedside-monitor/fhirmapping.json"))
                .expect("fhir"),
        )
    }

    fn hr(partition: i32, offset: i64, value: &str) -> Measurement {
        Measurement {
            type_name: "heartRate".into(),
            device_id: format!("BM-{partition}").into(),
            patient_id: Some("P-1".into()),
            encounter_id: None,
            correlation_id: None,
            occurrence_time: crate::time::parse_timestamp("2026-11-21T10:00:00Z").expect("t"),
            properties: vec![("hr".into(), value.into())],
            received_ms: Some(1_795_000_000_000),
            source: Some(SourcePos {
                topic: "vitals".into(),
                partition,
                offset,
            }),
        }
    }

    fn rows(dir: &Path) -> usize {
        let cfg = LakeConfig::at(&dir.display().to_string());
        let t = Table::open(&cfg.location, &MEASUREMENTS, &cfg.storage).expect("table");
        t.files()
            .expect("files")
            .iter()
            .map(|f| f.rows.expect("stats"))
            .sum()
    }

    #[test]
    fn a_restart_does_not_write_the_records_the_table_holds_again() {
        let dir = tempfile::tempdir().expect("tmp");
        let cfg = LakeConfig::at(&dir.path().display().to_string());
        let open = |metrics: &Arc<Metrics>| {
            MeasurementTableSink::new(&cfg, mapping(), Some("vf/g".into()), 0, metrics.clone())
                .expect("sink")
        };
        let metrics = Metrics::new();
        let mut sink = open(&metrics);
        for o in 0..10 {
            sink.write(1, Arc::new(hr(0, o, "70"))).expect("write");
        }
        for o in 0..4 {
            sink.write(1, Arc::new(hr(1, o, "80"))).expect("write");
        }
        sink.flush().expect("flush");
        assert_eq!(
            sink.table.txn_version("vf/g/vitals/0").expect("txn"),
            Some(9)
        );
        assert_eq!(
            sink.table.txn_version("vf/g/vitals/1").expect("txn"),
            Some(3)
        );
        assert_eq!(rows(dir.path()), 14);

        // The Kafka offsets were not committed: the restart reads from 5 and from 0 again.
        let metrics = Metrics::new();
        let mut sink = open(&metrics);
        for o in 5..12 {
            sink.write(2, Arc::new(hr(0, o, "71"))).expect("write");
        }
        for o in 0..6 {
            sink.write(2, Arc::new(hr(1, o, "81"))).expect("write");
        }
        sink.flush().expect("flush");
        assert_eq!(rows(dir.path()), 14 + 2 + 2, "offsets 10-11 and 4-5 only");
        assert_eq!(metrics.lake_rows_skipped.load(Ordering::Relaxed), 5 + 4);
        assert_eq!(
            sink.table.txn_version("vf/g/vitals/0").expect("txn"),
            Some(11)
        );

        // Another source (no app prefix) is never filtered.
        let mut plain =
            MeasurementTableSink::new(&cfg, mapping(), None, 0, Metrics::new()).expect("sink");
        plain.write(3, Arc::new(hr(0, 0, "72"))).expect("write");
        plain.flush().expect("flush");
        assert_eq!(rows(dir.path()), 19);
    }

    #[test]
    fn numbers_and_strings_go_to_their_own_columns() {
        let mut b = Builders::default();
        b.push(&hr(0, 1, "72.5"), &mapping());
        b.push(&hr(0, 2, "n/a"), &mapping());
        let batch = b.finish();
        use crate::lake::rows::column;
        use deltalake::arrow::array::{Float64Array, StringArray};
        let value = column::<Float64Array>(&batch, "value").expect("f64");
        assert_eq!(value.value(0), 72.5);
        assert!(value.is_null(1));
        let text = column::<StringArray>(&batch, "value_string").expect("str");
        assert!(text.is_null(0));
        assert_eq!(text.value(1), "n/a");
        let unit = column::<StringArray>(&batch, "unit").expect("str");
        assert_eq!(unit.value(0), "/min");
        assert_eq!(b.rows, 0, "finish starts a new batch");
    }
}
