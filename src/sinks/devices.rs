//! NDJSON device output: `<dir>/devices/part-*.ndjson`, one Device or DeviceMetric version
//! per line, FHIR bulk-data style, each with `meta.versionId` (its content hash) and
//! `meta.lastUpdated` (the event time from which it holds). A resource gets a line only
//! when it changes (`fhir::device::Versions`), so the output grows with attribute changes,
//! not with messages.
//!
//! A restart reads the committed parts back ([`read_back`]) before it reads any input: the job
//! decides again only what comes after the versions every device output holds, and this
//! sink writes none of the lines it holds.

use super::files::{committed_parts, PartWriter};
use super::Sink;
use crate::fhir::device::{version_of, DeviceVersion, Held};
use anyhow::Context as _;
use serde_json::Value;
use std::collections::HashSet;
use std::io::BufRead;
use std::path::{Path, PathBuf};

/// The directory of the device output under the job's output directory.
pub fn dir(output: &Path) -> PathBuf {
    output.join("devices")
}

/// One worker's device output.
pub struct DeviceSink {
    writer: PartWriter,
    /// (id, content hash, event time) of the versions the output holds.
    written: HashSet<(String, u64, i64)>,
    /// Versions not yet durable, with their epochs: a failed flush writes them all again.
    pending: Vec<(u64, Vec<u8>)>,
}

impl DeviceSink {
    /// The output of worker `worker` under the job's output directory; `held` is what it
    /// holds of the worker's devices.
    pub fn new(output: &Path, worker: usize, held: &[Held]) -> anyhow::Result<Self> {
        Ok(Self {
            writer: PartWriter::new(&dir(output), worker)?,
            written: held.iter().map(|h| (h.id.clone(), h.hash, h.at)).collect(),
            pending: Vec::new(),
        })
    }
}

impl Sink<DeviceVersion> for DeviceSink {
    fn write(&mut self, epoch: u64, item: DeviceVersion) -> anyhow::Result<()> {
        if let Some(((id, at, hash), _)) = version_of(&item.resource) {
            // Another output lagged behind this one before a restart: what it gets again,
            // this one has.
            if !self.written.insert((id.to_string(), hash, at)) {
                return Ok(());
            }
        }
        self.pending
            .push((epoch, serde_json::to_vec(&item.resource).expect("JSON")));
        Ok(())
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        let written = (|| {
            for (epoch, line) in &self.pending {
                self.writer.write_line(*epoch, line)?;
            }
            self.writer.commit()
        })();
        match written {
            Ok(_) => {
                self.pending.clear();
                Ok(())
            }
            Err(e) => {
                self.writer.abort();
                Err(e)
            }
        }
    }
}

/// What the committed parts under the job's output directory hold of the devices `owns`
/// takes (by MDS identifier: a worker resumes the devices routed to it, whatever the worker
/// count that wrote them): every version ([`Held`], what the sink and the version decisions
/// resume from) and the newest of each resource (what a FHIR device output starts from).
/// One pass: the two were read apart, every part twice at start-up.
pub struct ReadBack {
    /// Every version held.
    pub held: Vec<Held>,
    /// The newest version of each resource.
    pub newest: Vec<DeviceVersion>,
}

/// Reads the committed parts back ([`ReadBack`]); a line that is no resource this output
/// wrote stops start-up with its part and line.
pub fn read_back(output: &Path, owns: impl Fn(&str) -> bool) -> anyhow::Result<ReadBack> {
    let mut held = Vec::new();
    let mut by_id: std::collections::BTreeMap<String, DeviceVersion> = Default::default();
    for part in committed_parts(&dir(output)) {
        let f = std::fs::File::open(&part)
            .with_context(|| format!("cannot read {}", part.display()))?;
        for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
            let line = line.with_context(|| format!("cannot read {}", part.display()))?;
            let r: Value = serde_json::from_str(&line)
                .with_context(|| format!("{}:{}: not a device resource", part.display(), i + 1))?;
            let device = mds_identifier(&r).unwrap_or_default();
            let Some(h) = Held::of(device, &r) else {
                anyhow::bail!(
                    "{}:{}: a device resource without id, meta.versionId or meta.lastUpdated",
                    part.display(),
                    i + 1
                );
            };
            if !owns(device) {
                continue;
            }
            let newer = by_id.get(&h.id).is_none_or(|v| v.at <= h.at);
            let (id, at, device) = (h.id.clone(), h.at, h.device.clone());
            held.push(h);
            if !newer {
                continue;
            }
            let component = r.pointer("/identifier/0/system").and_then(Value::as_str)
                == Some(crate::fhir::device::COMPONENT_SYSTEM);
            let level = match (r["resourceType"].as_str(), component) {
                (Some("DeviceMetric"), _) => "metric",
                (_, false) => "mds",
                _ => "component",
            };
            by_id.insert(
                id,
                DeviceVersion {
                    resource: r,
                    device,
                    key: String::new(),
                    level,
                    at,
                },
            );
        }
    }
    Ok(ReadBack {
        held,
        newest: by_id.into_values().collect(),
    })
}

/// The MDS identifier a written resource belongs to: an MDS's own identifier, or the part
/// of a component's before its key (`{identifier}/{key}`).
fn mds_identifier(r: &Value) -> Option<&str> {
    let value = r.pointer("/identifier/0/value")?.as_str()?;
    let system = r.pointer("/identifier/0/system").and_then(Value::as_str);
    if system == Some(crate::fhir::device::COMPONENT_SYSTEM) {
        value.split('/').next()
    } else {
        Some(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::device::{DeviceReport, Versions};
    use crate::mapping::device_tree::{from_pcd01, tests_support::MONITOR};

    fn report(text: &str, at: i64) -> DeviceReport {
        let tree = from_pcd01(&crate::hl7::parse(text).expect("hl7")).remove(0);
        DeviceReport {
            tree,
            at,
            source: None,
        }
    }

    #[test]
    fn versions_written_are_read_back_and_not_written_again() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut versions = Versions::default();
        let mut sink = DeviceSink::new(dir.path(), 0, &[]).expect("sink");
        let first = versions.admit_report(&report(MONITOR, 1_000), None);
        assert_eq!(first.len(), 12, "every resource once");
        for v in first {
            sink.write(7, v).expect("write");
        }
        assert!(versions
            .admit_report(&report(MONITOR, 2_000), None)
            .is_empty());
        let updated = MONITOR.replace("|2.4.1|", "|2.5.0|");
        let second = versions.admit_report(&report(&updated, 3_000), None);
        assert_eq!(second.len(), 1, "the MDS only");
        sink.write(8, second[0].clone()).expect("write");
        sink.flush().expect("flush");
        // A restart: what the parts hold is known, the replay writes nothing.
        let held = read_back(dir.path(), |_| true).expect("read back").held;
        assert_eq!(held.len(), 13);
        let mut back = Versions::held_by_all(std::slice::from_ref(&held));
        assert_eq!(back.len(), 12);
        assert!(back.admit_report(&report(MONITOR, 1_500), None).is_empty());
        assert!(back.admit_report(&report(&updated, 3_500), None).is_empty());
        // A sink given what it holds passes over a version it holds.
        let mut sink = DeviceSink::new(dir.path(), 0, &held).expect("sink");
        sink.write(9, second[0].clone()).expect("write");
        sink.flush().expect("flush");
        // Another worker's devices are not its own.
        let none = read_back(dir.path(), |d| d != "0012A3FFFE4B5C6D").expect("read");
        assert!(none.held.is_empty() && none.newest.is_empty());
        let lines = std::fs::read_dir(dir.path().join("devices"))
            .expect("dir")
            .flatten()
            .map(|e| {
                std::fs::read_to_string(e.path())
                    .expect("part")
                    .lines()
                    .count()
            })
            .sum::<usize>();
        assert_eq!(lines, 13);
    }
}
