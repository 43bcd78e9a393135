//! Device versions to the FHIR server: each Device and DeviceMetric as of its newest
//! version (the server keeps the history of what it was sent).
//!
//! The monitor's `Device` is the one identity resolution links Observations to: found by
//! identifier, or created at an id derived from the identifier (as identity `Create` does,
//! so the two never make two Devices of one monitor), then updated with the tree's
//! attributes, keeping the `patient` link the server holds. Its VMDs, channels and metrics
//! are written by their own ids, with `parent` and `source` pointing at the monitor's
//! server id.
//!
//! Every resource carries the version it is (extension [`VERSION_URL`]: valid-from time and
//! content hash). A flush reads what the server holds first and writes only what is newer
//! in event time and different: a replay or a second job writes no version twice, and an
//! older version arriving late never replaces a newer one.

use super::Sink;
use crate::fhir::client::{FhirClient, FhirError};
use crate::fhir::device::{resource_id, version_of, DeviceVersion};
use crate::metrics::Metrics;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// The extension that says which version a resource on the server is: `{valid from}|{hash}`.
pub const VERSION_URL: &str = "urn:vitalflow:device-version";

/// One worker's writer of device versions to the FHIR server.
pub struct FhirDeviceSink {
    client: Arc<FhirClient>,
    system: Option<String>,
    pending: Vec<DeviceVersion>,
    /// MDS identifier → its Device's id on the server.
    monitors: HashMap<String, String>,
    /// Identity `Create`: a monitor created here is linked to its Patient, created as
    /// identity resolution creates it (so neither writer links the other's Device later).
    create_patients: bool,
    metrics: Arc<Metrics>,
}

impl FhirDeviceSink {
    /// Writes to `client`'s server; `system` is the job's device identifier system. `newest`:
    /// the newest version of each resource another device output holds, which the first
    /// flush brings the server up to (a kill may have left the server behind it, and the
    /// restart does not decide those versions again).
    pub fn new(
        client: Arc<FhirClient>,
        system: Option<String>,
        create_patients: bool,
        newest: Vec<DeviceVersion>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            client,
            system,
            pending: newest,
            monitors: HashMap::new(),
            create_patients,
            metrics,
        }
    }

    /// The server id of a monitor's Device, found or created (linked to `patient`, the
    /// PID-3 of its message, with identity `Create`).
    fn monitor(&mut self, v: &DeviceVersion, patient: Option<&str>) -> anyhow::Result<String> {
        if let Some(id) = self.monitors.get(&v.device) {
            return Ok(id.clone());
        }
        let mut stub = json!({"resourceType": "Device", "identifier": [{"value": v.device}]});
        if let Some(s) = &self.system {
            stub["identifier"][0]["system"] = json!(s);
        }
        if let (true, Some(p)) = (self.create_patients, patient) {
            let found = crate::fhir::identity::ensure(
                &self.client,
                "Patient",
                None,
                p,
                json!({"resourceType": "Patient", "identifier": [{"value": p}]}),
            )
            .map_err(super::fhir::sink_error)?
            .map_err(|e| anyhow::anyhow!("device output: {}", crate::privacy::tag(&e)))?;
            if let Some(id) = found["id"].as_str() {
                stub["patient"] = json!({ "reference": format!("Patient/{id}") });
            }
        }
        let found = crate::fhir::identity::ensure(
            &self.client,
            "Device",
            self.system.as_deref(),
            &v.device,
            stub,
        )
        .map_err(super::fhir::sink_error)?
        .map_err(|e| anyhow::anyhow!("device output: {}", crate::privacy::tag(&e)))?;
        let id = found["id"]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("the server created a Device without an id"))?
            .to_string();
        self.monitors.insert(v.device.clone(), id.clone());
        Ok(id)
    }

    /// The resource as the server gets it: the monitor's server id in place of the tree's,
    /// no `meta`, the version extension.
    fn outgoing(v: &DeviceVersion, tree_mds: &str, server_mds: &str, held: &Value) -> Value {
        let mut r = v.resource.clone();
        let (_, at, hash) = version_of(&v.resource)
            .map(|(k, _)| k)
            .unwrap_or(("", v.at, 0));
        if let Some(o) = r.as_object_mut() {
            o.remove("meta");
        }
        let from = format!("Device/{tree_mds}");
        let to = format!("Device/{server_mds}");
        for link in ["parent", "source"] {
            if r[link]["reference"].as_str() == Some(from.as_str()) {
                r[link]["reference"] = json!(to);
            }
        }
        if v.level == "mds" {
            r["id"] = json!(server_mds);
            // The link identity resolution made (or an operator set) is the server's.
            match held.get("patient") {
                Some(p) => r["patient"] = p.clone(),
                None => {
                    if let Some(o) = r.as_object_mut() {
                        o.remove("patient");
                    }
                }
            }
        }
        r["extension"] = json!([{ "url": VERSION_URL, "valueString": version_text(at, hash) }]);
        r
    }

    fn write_pending(&mut self, pending: &[DeviceVersion]) -> anyhow::Result<()> {
        // Per resource, its newest version in event time (a later one replaces it anyway).
        let mut newest: BTreeMap<&str, &DeviceVersion> = BTreeMap::new();
        for v in pending {
            let id = v.resource["id"].as_str().unwrap_or_default();
            match newest.get(id) {
                Some(n) if n.at > v.at => {}
                _ => {
                    newest.insert(id, v);
                }
            }
        }
        let versions: Vec<&DeviceVersion> = newest.into_values().collect();
        // Each monitor's patient, from its own version when the batch has it.
        let patients: HashMap<String, String> = versions
            .iter()
            .filter(|v| v.level == "mds")
            .filter_map(|v| {
                let p = v.resource.pointer("/patient/identifier/value")?.as_str()?;
                Some((v.device.clone(), p.to_string()))
            })
            .collect();
        let mut targets = Vec::with_capacity(versions.len());
        for v in &versions {
            let server_mds = self.monitor(v, patients.get(&v.device).map(String::as_str))?;
            // The tree's id of the monitor: the hash of its identifier.
            let tree_mds = resource_id("Device", &v.device);
            let path = if v.level == "mds" {
                format!("Device/{server_mds}")
            } else {
                format!(
                    "{}/{}",
                    v.resource["resourceType"].as_str().unwrap_or("Device"),
                    v.resource["id"].as_str().unwrap_or_default()
                )
            };
            targets.push((path, tree_mds, server_mds));
        }
        // What the server holds of each: read in one batch.
        let reads: Vec<Value> = targets
            .iter()
            .map(|(path, ..)| json!({"request": {"method": "GET", "url": path}}))
            .collect();
        let held = self.client.batch(reads).map_err(super::fhir::sink_error)?;
        let mut writes = Vec::new();
        for (v, ((path, tree_mds, server_mds), held)) in
            versions.iter().zip(targets.iter().zip(held))
        {
            let ours = version_of(&v.resource).map(|(k, _)| (k.1, k.2));
            let theirs = (held.status == 200)
                .then(|| held_version(&held.resource))
                .flatten();
            if let (Some((at, hash)), Some((t_at, t_hash))) = (ours, theirs) {
                // The server holds this content already, or a newer version: nothing to
                // write (a replay's first report of unchanged content is not a change).
                if t_hash == hash || t_at > at {
                    continue;
                }
            }
            let body = Self::outgoing(v, tree_mds, server_mds, &held.resource);
            writes.push(json!({"resource": body, "request": {"method": "PUT", "url": path}}));
        }
        if writes.is_empty() {
            return Ok(());
        }
        let n = writes.len();
        let answers = self.client.batch(writes).map_err(super::fhir::sink_error)?;
        if let Some(bad) = answers.iter().find(|a| !(200..300).contains(&a.status)) {
            return Err(super::fhir::sink_error(FhirError::Rejected {
                status: bad.status,
                diagnostics: format!(
                    "a device resource was refused: {}",
                    bad.diagnostics.clone().unwrap_or_default()
                ),
            }));
        }
        Metrics::add(&self.metrics.fhir_devices, n as u64);
        Ok(())
    }
}

fn version_text(at: i64, hash: u64) -> String {
    let t = chrono::DateTime::from_timestamp_millis(at).unwrap_or_default();
    format!("{}|{hash:016x}", crate::time::format_rfc3339(&t))
}

/// The (valid-from ms, hash) a resource on the server says it is.
fn held_version(r: &Value) -> Option<(i64, u64)> {
    let text = r["extension"]
        .as_array()?
        .iter()
        .find(|e| e["url"] == VERSION_URL)?["valueString"]
        .as_str()?;
    let (at, hash) = text.split_once('|')?;
    Some((
        crate::time::parse_timestamp(at)?.timestamp_millis(),
        u64::from_str_radix(hash, 16).ok()?,
    ))
}

impl Sink<DeviceVersion> for FhirDeviceSink {
    fn write(&mut self, _epoch: u64, item: DeviceVersion) -> anyhow::Result<()> {
        self.pending.push(item);
        Ok(())
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        let pending = std::mem::take(&mut self.pending);
        let result = self.write_pending(&pending);
        if result.is_err() {
            // Nothing is acknowledged: the retry sends them all again (the server's versions
            // say what it already has).
            self.pending = pending;
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_read_back_from_the_extension_they_were_written_with() {
        let text = version_text(1_764_000_000_123, 0xabc);
        let r = json!({"extension": [{"url": VERSION_URL, "valueString": text}]});
        assert_eq!(held_version(&r), Some((1_764_000_000_123, 0xabc)));
        assert_eq!(held_version(&json!({})), None);
    }
}
