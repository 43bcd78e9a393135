//! The `devices` table: one row per Device or DeviceMetric version, partitioned by the date
//! it holds from, for clinical engineering's questions (which monitors run which software,
//! which channels were off, when each was calibrated) and for joining measurements to the
//! device state they were taken under (`device_id` and `valid_from`).
//!
//! A version is identified by (id, content hash, event time). A restart reads the table's
//! versions back once, before any input ([`held`]): the job decides again only what comes
//! after the versions every device output holds, and this sink writes none it holds.

use super::rows::{column, date_of};
use super::schema::{DeviceColumns, DEVICES};
use super::table::Table;
use super::LakeConfig;
use crate::fhir::device::{version_of, DeviceVersion, Held};
use crate::metrics::Metrics;
use crate::sinks::Sink;
use deltalake::arrow::array::{
    Array, Int32Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// One worker's writer of the `devices` table.
pub struct DeviceTableSink {
    table: Table,
    /// (id, content hash, event time) of every version the table holds.
    written: HashSet<(String, u64, i64)>,
    pending: Vec<DeviceVersion>,
    metrics: Arc<Metrics>,
}

/// The versions the table holds of the devices `owns` takes.
pub fn held(config: &LakeConfig, owns: impl Fn(&str) -> bool) -> anyhow::Result<Vec<Held>> {
    let table = Table::open(&config.location, &DEVICES, &config.storage)?;
    let files = table.files()?;
    let mut out = Vec::new();
    let cols = [
        "device_id",
        "id",
        "version_id",
        "valid_from",
        "source_topic",
        "source_partition",
        "source_offset",
    ];
    for b in table.read(&files, &cols)? {
        let (Some(device), Some(id), Some(version), Some(from)) = (
            column::<StringArray>(&b, "device_id"),
            column::<StringArray>(&b, "id"),
            column::<StringArray>(&b, "version_id"),
            column::<TimestampMicrosecondArray>(&b, "valid_from"),
        ) else {
            continue;
        };
        let topic = column::<StringArray>(&b, "source_topic");
        let partition = column::<Int32Array>(&b, "source_partition");
        let offset = column::<Int64Array>(&b, "source_offset");
        for i in 0..b.num_rows() {
            if !owns(device.value(i)) {
                continue;
            }
            let Ok(hash) = u64::from_str_radix(version.value(i), 16) else {
                continue;
            };
            let source = match (topic, partition, offset) {
                (Some(t), Some(p), Some(o)) if !t.is_null(i) => {
                    Some((t.value(i).to_string(), p.value(i), o.value(i)))
                }
                _ => None,
            };
            out.push(Held {
                device: device.value(i).to_string(),
                id: id.value(i).to_string(),
                at: from.value(i) / 1000,
                hash,
                source,
            });
        }
    }
    Ok(out)
}

impl DeviceTableSink {
    /// Opens (or creates) the table; `held` is what it holds of this worker's devices.
    pub fn new(config: &LakeConfig, held: &[Held], metrics: Arc<Metrics>) -> anyhow::Result<Self> {
        Ok(Self {
            table: Table::open(&config.location, &DEVICES, &config.storage)?,
            written: held.iter().map(|h| (h.id.clone(), h.hash, h.at)).collect(),
            pending: Vec::new(),
            metrics,
        })
    }

    fn batch(versions: &[DeviceVersion]) -> RecordBatch {
        let mut c = DeviceColumns::default();
        let text =
            |r: &Value, ptr: &str| r.pointer(ptr).and_then(Value::as_str).map(str::to_string);
        for v in versions {
            let r = &v.resource;
            let version = |code: &str| {
                r["version"].as_array().and_then(|vs| {
                    vs.iter()
                        .find(|x| {
                            x.pointer("/type/coding/0/code").and_then(Value::as_str) == Some(code)
                        })
                        .and_then(|x| x["value"].as_str())
                })
            };
            c.device_id.append_value(&v.device);
            c.resource_type
                .append_value(r["resourceType"].as_str().unwrap_or_default());
            c.id.append_value(r["id"].as_str().unwrap_or_default());
            c.component.append_value(&v.key);
            c.level.append_value(v.level);
            c.code.append_option(text(r, "/type/coding/0/code"));
            c.code_display
                .append_option(text(r, "/type/coding/0/display"));
            c.manufacturer.append_option(text(r, "/manufacturer"));
            c.model.append_option(text(r, "/modelNumber"));
            c.serial.append_option(text(r, "/serialNumber"));
            c.software_version.append_option(version("531975"));
            c.hardware_version.append_option(version("531974"));
            c.firmware_version.append_option(version("531976"));
            c.location.append_option(text(r, "/location/display"));
            c.unit.append_option(
                text(r, "/unit/coding/0/display").or_else(|| text(r, "/unit/coding/0/code")),
            );
            c.operational_status
                .append_option(text(r, "/operationalStatus"));
            c.calibration_state
                .append_option(text(r, "/calibration/0/state"));
            c.calibration_time.append_option(
                text(r, "/calibration/0/time").and_then(|t| super::rows::micros(&t)),
            );
            let ((_, _, hash), source) = version_of(r).unwrap_or((("", v.at, 0), None));
            c.version_id.append_value(format!("{hash:016x}"));
            c.valid_from.append_value(v.at * 1000);
            c.source_topic
                .append_option(source.as_ref().map(|s| s.0.as_str()));
            c.source_partition
                .append_option(source.as_ref().map(|s| s.1));
            c.source_offset.append_option(source.as_ref().map(|s| s.2));
            c.resource.append_value(r.to_string());
            let day = chrono::DateTime::from_timestamp_millis(v.at).unwrap_or_default();
            c.date.append_value(date_of(&day));
        }
        c.finish(DEVICES.arrow_schema())
    }
}

impl Sink<DeviceVersion> for DeviceTableSink {
    fn write(&mut self, _epoch: u64, item: DeviceVersion) -> anyhow::Result<()> {
        self.pending.push(item);
        Ok(())
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        let before = self.pending.len();
        let written = &self.written;
        self.pending.retain(|v| {
            version_of(&v.resource)
                .is_none_or(|((id, at, hash), _)| !written.contains(&(id.to_string(), hash, at)))
        });
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
        for v in self.pending.drain(..) {
            if let Some(((id, at, hash), _)) = version_of(&v.resource) {
                self.written.insert((id.to_string(), hash, at));
            }
        }
        Ok(())
    }
}
