//! The `alerts` table: one row per alert event, partitioned by event date and rule.
//!
//! Alert ids are stable across replays, so an event is identified by (id, state, time). A
//! restart replays uncommitted readings and raises the same events again; the sink reads
//! the events of the last days back at start and does not write those again.

use super::rows::{column, date_of, micros, Columns};
use super::schema::{alert_value_fields, ALERTS};
use super::table::Table;
use super::LakeConfig;
use crate::anomaly::lifecycle::Alert;
use crate::metrics::Metrics;
use crate::sinks::Sink;
use deltalake::arrow::array::{
    Date32Builder, Float64Builder, ListBuilder, RecordBatch, StringArray, StringBuilder,
    StructBuilder, TimestampMicrosecondArray, TimestampMicrosecondBuilder,
};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// (alert id, state, event time µs).
type EventKey = (String, String, i64);

fn text_of<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// One worker's writer of the `alerts` table.
pub struct AlertTableSink {
    table: Table,
    written: HashSet<EventKey>,
    pending: Vec<Alert>,
    metrics: Arc<Metrics>,
}

/// Days of events read back at start: alerts replayed after a restart are recent.
const RECENT_DAYS: i32 = 2;

impl AlertTableSink {
    /// Opens (or creates) the table and reads back the recent events.
    pub fn new(config: &LakeConfig, metrics: Arc<Metrics>) -> anyhow::Result<Self> {
        let table = Table::open(&config.location, &ALERTS, &config.storage)?;
        let since = date_of(&chrono::Utc::now()) - RECENT_DAYS;
        let files = table.files_since(since)?;
        let mut written = HashSet::new();
        for b in table.read(&files, &["alert_id", "state", "at"])? {
            let (Some(id), Some(state), Some(at)) = (
                column::<StringArray>(&b, "alert_id"),
                column::<StringArray>(&b, "state"),
                column::<TimestampMicrosecondArray>(&b, "at"),
            ) else {
                continue;
            };
            for i in 0..b.num_rows() {
                written.insert((id.value(i).into(), state.value(i).into(), at.value(i)));
            }
        }
        Ok(Self {
            table,
            written,
            pending: Vec::new(),
            metrics,
        })
    }

    fn key(a: &Alert) -> EventKey {
        (a.id.clone(), text_of(&a.state), micros(&a.at).unwrap_or(0))
    }

    fn batch(alerts: &[Alert]) -> RecordBatch {
        let mut ids = StringBuilder::new();
        let mut patients = StringBuilder::new();
        let mut devices = StringBuilder::new();
        let mut rules = StringBuilder::new();
        let mut titles = StringBuilder::new();
        let mut severities = StringBuilder::new();
        let mut states = StringBuilder::new();
        let mut since = TimestampMicrosecondBuilder::new();
        let mut at = TimestampMicrosecondBuilder::new();
        let fields = alert_value_fields();
        let mut values = ListBuilder::new(StructBuilder::new(
            fields.clone(),
            vec![
                Box::new(StringBuilder::new()),
                Box::new(Float64Builder::new()),
                Box::new(TimestampMicrosecondBuilder::new().with_timezone("UTC")),
            ],
        ))
        .with_field(Arc::new(deltalake::arrow::datatypes::Field::new(
            "item",
            deltalake::arrow::datatypes::DataType::Struct(fields),
            true,
        )));
        let mut texts = StringBuilder::new();
        let mut dates = Date32Builder::new();
        let mut types = StringBuilder::new();
        for a in alerts {
            let at_us = micros(&a.at).unwrap_or(0);
            ids.append_value(&a.id);
            patients.append_value(&a.patient);
            devices.append_value(&a.device);
            rules.append_value(&a.rule);
            titles.append_value(&a.title);
            severities.append_value(text_of(&a.severity));
            states.append_value(text_of(&a.state));
            since.append_value(micros(&a.since).unwrap_or(at_us));
            at.append_value(at_us);
            let item = values.values();
            for (vital, value, time) in &a.values {
                item.field_builder::<StringBuilder>(0)
                    .expect("vital")
                    .append_value(vital);
                item.field_builder::<Float64Builder>(1)
                    .expect("value")
                    .append_value(*value);
                item.field_builder::<TimestampMicrosecondBuilder>(2)
                    .expect("time")
                    .append_option(micros(time));
                item.append(true);
            }
            values.append(true);
            texts.append_value(&a.text);
            let day = chrono::DateTime::from_timestamp_micros(at_us).unwrap_or_default();
            dates.append_value(date_of(&day));
            types.append_value(&a.rule);
        }
        Columns::new(ALERTS.arrow_schema())
            .col(ids.finish())
            .col(patients.finish())
            .col(devices.finish())
            .col(rules.finish())
            .col(titles.finish())
            .col(severities.finish())
            .col(states.finish())
            .col(since.finish().with_timezone("UTC"))
            .col(at.finish().with_timezone("UTC"))
            .col(values.finish())
            .col(texts.finish())
            .col(dates.finish())
            .col(types.finish())
            .batch()
    }
}

impl Sink<Alert> for AlertTableSink {
    fn write(&mut self, _epoch: u64, item: Alert) -> anyhow::Result<()> {
        if self.written.contains(&Self::key(&item)) {
            Metrics::add(&self.metrics.lake_rows_skipped, 1);
        } else {
            self.pending.push(item);
        }
        Ok(())
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        // One event per key, even when a replay raised it twice within a flush.
        let mut seen = HashSet::new();
        self.pending.retain(|a| seen.insert(Self::key(a)));
        if self.pending.is_empty() {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let batch = Self::batch(&self.pending);
        self.table.append(vec![batch], Vec::new(), HashMap::new())?;
        self.metrics
            .lake_commit(self.pending.len() as u64, started.elapsed());
        self.written.extend(seen);
        self.pending.clear();
        if self.written.len() > 100_000 {
            // Replays reach back a few minutes, not days: older keys cannot come again.
            let cutoff =
                chrono::Utc::now().timestamp_micros() - i64::from(RECENT_DAYS) * 86_400_000_000;
            self.written.retain(|k| k.2 >= cutoff);
        }
        Ok(())
    }
}
