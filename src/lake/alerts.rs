//! The `alerts` table: one row per alert event, partitioned by event date and rule.
//!
//! Alert ids are stable across replays, so an event is identified by (id, state, time). A
//! restart replays uncommitted readings and raises the same events again; before writing an
//! event the sink reads back the events of its event day's partition (once per day it
//! touches) and does not write those again, however old the day is.

use super::rows::{column, date_of, micros};
use super::schema::{AlertColumns, ALERTS};
use super::table::Table;
use super::LakeConfig;
use crate::anomaly::lifecycle::Alert;
use crate::metrics::Metrics;
use crate::sinks::alert_events::WrittenEvents;
use crate::sinks::Sink;
use deltalake::arrow::array::{
    Float64Builder, RecordBatch, StringArray, StringBuilder, TimestampMicrosecondArray,
    TimestampMicrosecondBuilder,
};
use std::collections::HashMap;
use std::sync::Arc;

fn text_of<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// One worker's writer of the `alerts` table.
pub struct AlertTableSink {
    table: Table,
    written: WrittenEvents,
    pending: Vec<Alert>,
    metrics: Arc<Metrics>,
}

impl AlertTableSink {
    /// Opens (or creates) the table.
    pub fn new(config: &LakeConfig, metrics: Arc<Metrics>) -> anyhow::Result<Self> {
        let table = Table::open(&config.location, &ALERTS, &config.storage)?;
        Ok(Self {
            table,
            written: WrittenEvents::default(),
            pending: Vec::new(),
            metrics,
        })
    }

    /// Reads back the events of the days the pending events fall on, once per day.
    fn load_days(&mut self) -> anyhow::Result<()> {
        let days = self.written.days_to_load(self.pending.iter());
        if days.is_empty() {
            return Ok(());
        }
        let files = self.table.files_on_days(&days)?;
        let mut held = Vec::new();
        for b in self.table.read(&files, &["alert_id", "state", "at"])? {
            let (Some(id), Some(state), Some(at)) = (
                column::<StringArray>(&b, "alert_id"),
                column::<StringArray>(&b, "state"),
                column::<TimestampMicrosecondArray>(&b, "at"),
            ) else {
                continue;
            };
            for i in 0..b.num_rows() {
                held.push((id.value(i).into(), state.value(i).into(), at.value(i)));
            }
        }
        self.written.loaded(days, held);
        Ok(())
    }

    fn batch(alerts: &[Alert]) -> RecordBatch {
        let mut c = AlertColumns::default();
        for a in alerts {
            let at_us = micros(&a.at).unwrap_or(0);
            c.alert_id.append_value(&a.id);
            c.patient_id.append_value(&a.patient);
            c.device_id.append_value(&a.device);
            c.rule.append_value(&a.rule);
            c.title.append_value(&a.title);
            c.severity.append_value(text_of(&a.severity));
            c.state.append_value(text_of(&a.state));
            c.since.append_value(micros(&a.since).unwrap_or(at_us));
            c.at.append_value(at_us);
            let item = c.values.0.values();
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
            c.values.0.append(true);
            c.text.append_value(&a.text);
            let day = chrono::DateTime::from_timestamp_micros(at_us).unwrap_or_default();
            c.date.append_value(date_of(&day));
            c.type_name.append_value(&a.rule);
            c.category.append_value(a.category.as_str());
            c.by_user.append_option(a.by.as_deref());
            c.note.append_option(a.note.as_deref());
            c.until.append_option(a.until.as_deref().and_then(micros));
        }
        c.finish(ALERTS.arrow_schema())
    }
}

impl Sink<Alert> for AlertTableSink {
    fn write(&mut self, _epoch: u64, item: Alert) -> anyhow::Result<()> {
        self.pending.push(item);
        Ok(())
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        self.load_days()?;
        let fresh = self.written.fresh(self.pending.iter());
        let before = self.pending.len();
        let mut keep = fresh.iter().map(Option::is_some);
        self.pending.retain(|_| keep.next().unwrap_or(false));
        Metrics::add(
            &self.metrics.lake_rows_skipped,
            (before - self.pending.len()) as u64,
        );
        if self.pending.is_empty() {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let batch = Self::batch(&self.pending);
        self.table.append(vec![batch], Vec::new(), HashMap::new())?;
        self.metrics
            .lake_commit(self.pending.len() as u64, started.elapsed());
        self.written.written(fresh.into_iter().flatten());
        self.pending.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::anomaly::lifecycle::State;
    use crate::anomaly::rules::Severity;
    use crate::sinks::observations::tests::test_dates;

    fn event(state: State, at: chrono::DateTime<chrono::Utc>) -> Alert {
        Alert {
            id: "a1".into(),
            patient: "P-1".into(),
            device: "BM-1".into(),
            rule: "hypoxia".into(),
            title: "Hypoxia".into(),
            severity: Severity::Critical,
            category: crate::anomaly::lifecycle::Category::Physiological,
            state,
            since: crate::time::format_rfc3339(&at),
            at: crate::time::format_rfc3339(&at),
            values: vec![("spo2".into(), 84.0, crate::time::format_rfc3339(&at))],
            text: "SpO2 84".into(),
            by: None,
            note: None,
            until: None,
            stamp_ms: 0,
        }
    }

    fn rows(cfg: &LakeConfig) -> usize {
        let t = Table::open(&cfg.location, &ALERTS, &cfg.storage).expect("table");
        let files = t.files().expect("files");
        t.read(&files, &["alert_id"])
            .expect("read")
            .iter()
            .map(RecordBatch::num_rows)
            .sum()
    }

    #[test]
    fn events_of_a_rule_id_with_a_slash_are_read_back() {
        // Technical rule ids name their vital or flag after a slash: a partition value the
        // Delta log writes percent-encoded.
        let dir = tempfile::tempdir().expect("tmp");
        let cfg = LakeConfig::at(&dir.path().display().to_string());
        let t0 = crate::time::parse_timestamp("2026-12-05T10:00:00Z").expect("t0");
        let mut a = event(State::Open, t0);
        a.rule = "sensor-off/spo2.spo2Status".into();
        let mut sink = AlertTableSink::new(&cfg, Metrics::new()).expect("sink");
        sink.write(1, a.clone()).expect("write");
        sink.flush().expect("flush");
        let mut sink = AlertTableSink::new(&cfg, Metrics::new()).expect("sink");
        sink.write(2, a).expect("write");
        sink.flush().expect("a restart reads the day back");
        assert_eq!(rows(&cfg), 1);
    }

    #[test]
    fn a_replayed_event_is_written_once_however_old_its_day() {
        for t0 in test_dates() {
            let dir = tempfile::tempdir().expect("tmp");
            let cfg = LakeConfig::at(&dir.path().display().to_string());
            let mut sink = AlertTableSink::new(&cfg, Metrics::new()).expect("sink");
            sink.write(1, event(State::Open, t0)).expect("write");
            sink.flush().expect("flush");
            assert_eq!(rows(&cfg), 1, "{t0}");

            // Restart: the replay raises the open again, and then the resolution.
            let mut sink = AlertTableSink::new(&cfg, Metrics::new()).expect("sink");
            sink.write(2, event(State::Open, t0)).expect("write");
            sink.write(2, event(State::Open, t0)).expect("write");
            let resolved = t0 + chrono::Duration::minutes(5);
            sink.write(2, event(State::Resolved, resolved))
                .expect("write");
            sink.flush().expect("flush");
            assert_eq!(rows(&cfg), 2, "open once, resolved once at {t0}");
        }
    }
}
