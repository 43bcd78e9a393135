//! FHIR R4 `Device` and `DeviceMetric` resources from a device tree, as HL7's Point-of-Care
//! Device guide (PoCD) profiles an IEEE 11073 containment tree: a `Device` for the MDS
//! (identifier, manufacturer, model, serial, versions, type, bed), one for each VMD and
//! channel with a `parent` link, and a `DeviceMetric` per metric with its `source` (the MDS)
//! and `parent` (its channel).
//!
//! Every resource's id is a hash of what identifies it (the equipment identifier and the
//! codes on its path), and every one carries that identity as an identifier, so writing the
//! same device twice, from a restart or from a second job, updates one resource.

use crate::mapping::device_tree::{Attribute, Code, Component, DeviceTree, Level, Metric, MDC};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

/// Identifier system of VMDs, channels and metrics: `{equipment identifier}/{key}`.
pub const COMPONENT_SYSTEM: &str = "urn:vitalflow:device-component";

/// The deterministic id of a resource: lower-case hex SHA-256 of its type and identity.
pub fn resource_id(resource_type: &str, identity: &str) -> String {
    let mut h = Sha256::new();
    h.update(resource_type.as_bytes());
    h.update(b"|");
    h.update(identity.as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// A component's or metric's identity within the tree's MDS (the MDS's is its identifier).
fn identity(tree: &DeviceTree, key: &str) -> String {
    if key.is_empty() {
        tree.identifier.clone()
    } else {
        format!("{}/{key}", tree.identifier)
    }
}

/// The `Device` id of the component with `key` in `tree`.
pub fn device_id(tree: &DeviceTree, key: &str) -> String {
    resource_id("Device", &identity(tree, key))
}

/// The `DeviceMetric` id of `metric` in `tree`.
pub fn metric_id(tree: &DeviceTree, metric: &Metric) -> String {
    resource_id("DeviceMetric", &identity(tree, &metric.key))
}

fn coding(c: &Code) -> Value {
    let mut o = Map::new();
    if let Some(s) = &c.system {
        o.insert("system".into(), json!(s));
    }
    o.insert("code".into(), json!(c.code));
    if let Some(d) = &c.display {
        o.insert("display".into(), json!(d));
    }
    Value::Object(o)
}

fn concept(codes: &[&Code]) -> Value {
    json!({ "coding": codes.iter().map(|c| coding(c)).collect::<Vec<_>>() })
}

fn reference(resource_type: &str, id: &str) -> Value {
    json!({ "reference": format!("{resource_type}/{id}") })
}

/// The resources of `tree`: its `Device`s (MDS first, parents before children), then its
/// `DeviceMetric`s. `system` is the job's device identifier system (the MDS's identifier
/// is the one its Observations are linked by).
pub fn resources(tree: &DeviceTree, system: Option<&str>) -> Vec<Value> {
    let mut out: Vec<Value> = tree
        .components
        .iter()
        .map(|c| device(tree, c, system))
        .collect();
    out.extend(tree.metrics.iter().map(|m| device_metric(tree, m)));
    out
}

fn device(tree: &DeviceTree, c: &Component, system: Option<&str>) -> Value {
    let mut d = Map::new();
    d.insert("resourceType".into(), json!("Device"));
    d.insert("id".into(), json!(device_id(tree, &c.key)));
    let identifier = if c.level == Level::Mds {
        let mut i = Map::new();
        if let Some(s) = system {
            i.insert("system".into(), json!(s));
        }
        if let Some(t) = &tree.identifier_type {
            i.insert("type".into(), json!({ "text": t }));
        }
        i.insert("value".into(), json!(tree.identifier));
        Value::Object(i)
    } else {
        json!({ "system": COMPONENT_SYSTEM, "value": identity(tree, &c.key) })
    };
    d.insert("identifier".into(), json!([identifier]));
    d.insert("status".into(), json!("active"));
    let attr = |a: Attribute| c.attributes.get(&a);
    if let Some(m) = attr(Attribute::Manufacturer) {
        d.insert("manufacturer".into(), json!(m));
    }
    if let Some(s) = attr(Attribute::Serial) {
        d.insert("serialNumber".into(), json!(s));
    }
    if let Some(m) = attr(Attribute::Model) {
        d.insert(
            "deviceName".into(),
            json!([{ "name": m, "type": "model-name" }]),
        );
        d.insert("modelNumber".into(), json!(m));
    }
    if let Some(k) = &c.kind {
        d.insert("type".into(), concept(&[k]));
    }
    let versions: Vec<Value> = c
        .attributes
        .iter()
        .filter_map(|(a, v)| {
            a.version_code().map(|(code, name)| {
                json!({
                    "type": { "coding": [{ "system": MDC, "code": code, "display": name }] },
                    "value": v,
                })
            })
        })
        .collect();
    if !versions.is_empty() {
        d.insert("version".into(), json!(versions));
    }
    if c.level == Level::Mds {
        if let Some(p) = &tree.patient {
            d.insert(
                "patient".into(),
                json!({ "type": "Patient", "identifier": { "value": p } }),
            );
        }
        if let Some(l) = attr(Attribute::Location) {
            d.insert("location".into(), json!({ "display": l }));
        }
    }
    if let Some(p) = &c.parent {
        d.insert("parent".into(), reference("Device", &device_id(tree, p)));
    }
    Value::Object(d)
}

fn device_metric(tree: &DeviceTree, m: &Metric) -> Value {
    let mut d = Map::new();
    d.insert("resourceType".into(), json!("DeviceMetric"));
    d.insert("id".into(), json!(metric_id(tree, m)));
    d.insert(
        "identifier".into(),
        json!([{ "system": COMPONENT_SYSTEM, "value": identity(tree, &m.key) }]),
    );
    let mut types = vec![&m.kind];
    types.extend(&m.alternate);
    d.insert("type".into(), concept(&types));
    if let Some(u) = &m.unit {
        d.insert("unit".into(), concept(&[u]));
    }
    d.insert("source".into(), reference("Device", &device_id(tree, "")));
    d.insert(
        "parent".into(),
        reference("Device", &device_id(tree, &m.parent)),
    );
    if let Some(s) = m.status {
        d.insert("operationalStatus".into(), json!(s.code()));
    }
    d.insert("category".into(), json!(m.category.code()));
    if let Some(c) = &m.calibration {
        let mut cal = Map::new();
        if let Some(k) = &c.kind {
            cal.insert("type".into(), json!(k));
        }
        cal.insert("state".into(), json!(c.state));
        if let Some(t) = c.time {
            cal.insert("time".into(), json!(crate::time::format_rfc3339(&t)));
        }
        d.insert("calibration".into(), json!([Value::Object(cal)]));
    }
    Value::Object(d)
}

/// A tree as one message reported it, for [`Versions::admit_report`] (the job sends
/// `dataflow::devices::DeviceNews`, which carries a tree only when it changed).
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceReport {
    /// The tree of one MDS.
    pub tree: DeviceTree,
    /// When it was so (ms since the Unix epoch): the message's time (MSH-7), else its
    /// newest reading's.
    pub at: i64,
    /// The message it came from: (topic or file, partition, offset).
    pub source: Option<(String, i32, i64)>,
}

/// A new version of a Device or DeviceMetric: the resource as of `at`, with `meta`
/// (`versionId`: its content hash; `lastUpdated`: `at`).
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceVersion {
    /// The resource, with its meta.
    pub resource: Value,
    /// The MDS identifier it belongs to (outputs are routed by it).
    pub device: String,
    /// Its key in the MDS's tree ("" for the MDS).
    pub key: String,
    /// `mds`, `vmd`, `channel` or `metric`.
    pub level: &'static str,
    /// Event time from which it holds (ms since the Unix epoch).
    pub at: i64,
}

/// A version a device output holds.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Held {
    /// The MDS identifier.
    pub device: String,
    /// The resource id.
    pub id: String,
    /// Event time from which it holds (ms since the Unix epoch).
    pub at: i64,
    /// Content hash (`meta.versionId`).
    pub hash: u64,
    /// The record it came from.
    pub source: Option<(String, i32, i64)>,
}

impl Held {
    /// What an output holds, read from a written resource (None: not one this job wrote).
    pub fn of(device: &str, resource: &Value) -> Option<Self> {
        let ((id, at, hash), source) = version_of(resource)?;
        Some(Held {
            device: device.to_string(),
            id: id.to_string(),
            at,
            hash,
            source,
        })
    }
}

/// The hash of a resource's content (its JSON, keys in order, without `meta`).
pub fn content_hash(resource: &Value) -> u64 {
    let mut h = Sha256::new();
    let bare = match resource {
        Value::Object(o) if o.contains_key("meta") => {
            let mut o = o.clone();
            o.remove("meta");
            Value::Object(o)
        }
        v => v.clone(),
    };
    h.update(bare.to_string().as_bytes());
    let d = h.finalize();
    u64::from_be_bytes(d[..8].try_into().expect("8 bytes"))
}

/// The versions of every device resource written so far, per resource id: (event time,
/// content hash), in time order. A resource seen with some content at some time is a new
/// version only when the version in force then (the last at or before it) has other
/// content and the next one does not begin with the same content. So replaying messages
/// already written writes nothing, a device sending the same attributes every second is
/// written once, and the same input read in any split gives the same versions.
///
/// Reports are decided in the order of their device's partition (gateways key a device's
/// messages to one), so a restart must not decide again what a written version already
/// followed: per device and partition, the last message a written version came from (its
/// `meta.source`) is known, and the device's reports from it or before it are passed over.
/// (Per device: one worker writes all of a device's versions, in order, so a version on
/// disk means every earlier one of that device is; another device's worker may lag.)
#[derive(Debug, Default)]
pub struct Versions {
    by_id: std::collections::HashMap<String, std::collections::BTreeSet<(i64, u64)>>,
    /// Per (MDS identifier, topic, partition), the offset of the last message a written
    /// version came from.
    reached: std::collections::HashMap<(String, String, i32), i64>,
    /// Per MDS: its newest version's time, and (fingerprint, time) of its last report. A
    /// report that says what the last one said, no earlier than it, while the last one was
    /// no earlier than any version, finds every resource's version in force with its
    /// content: it is passed over without building its resources (most reports are).
    devices: std::collections::HashMap<String, DeviceSeen>,
}

/// What [`Versions`] knows of one MDS to pass over reports that change nothing.
#[derive(Debug, Default)]
struct DeviceSeen {
    newest: i64,
    last: Option<(u64, i64)>,
}

/// The `meta.source` of a version from a message: `urn:vitalflow:source:{topic}:{partition}:{offset}`.
fn source_uri((topic, partition, offset): &(String, i32, i64)) -> String {
    format!("{SOURCE_PREFIX}{topic}:{partition}:{offset}")
}

const SOURCE_PREFIX: &str = "urn:vitalflow:source:";

/// The (topic, partition, offset) of a `meta.source` this job wrote.
fn parse_source(uri: &str) -> Option<(String, i32, i64)> {
    let rest = uri.strip_prefix(SOURCE_PREFIX)?;
    let (rest, offset) = rest.rsplit_once(':')?;
    let (topic, partition) = rest.rsplit_once(':')?;
    Some((
        topic.to_string(),
        partition.parse().ok()?,
        offset.parse().ok()?,
    ))
}

impl Versions {
    /// The versions every one of `outputs` holds: a restart decides again from there, so
    /// an output that made less durable than another before a kill gets what it lacks (and
    /// each output passes over what it holds already).
    pub fn held_by_all(outputs: &[Vec<Held>]) -> Self {
        let mut v = Versions::default();
        let Some((first, rest)) = outputs.split_first() else {
            return v;
        };
        let others: Vec<std::collections::HashSet<&Held>> =
            rest.iter().map(|o| o.iter().collect()).collect();
        for h in first
            .iter()
            .filter(|h| others.iter().all(|o| o.contains(h)))
        {
            v.record(&h.device, &h.id, h.at, h.hash);
            if let Some(s) = &h.source {
                v.reached(&h.device, s.clone());
            }
        }
        v
    }

    /// Records where a written version of the device `device` came from.
    pub fn reached(&mut self, device: &str, (topic, partition, offset): (String, i32, i64)) {
        let r = self
            .reached
            .entry((device.to_string(), topic, partition))
            .or_insert(offset);
        *r = (*r).max(offset);
    }

    /// Records a version already written (of a resource of the MDS `device`).
    pub fn record(&mut self, device: &str, id: &str, at: i64, hash: u64) {
        self.by_id
            .entry(id.to_string())
            .or_default()
            .insert((at, hash));
        let d = self.devices.entry(device.to_string()).or_default();
        d.newest = d.newest.max(at);
    }

    /// Whether `hash` at `at` is a new version of `id` (of the MDS `device`); records it
    /// when it is.
    pub fn admit(&mut self, device: &str, id: &str, at: i64, hash: u64) -> bool {
        let known = self.by_id.get(id);
        let prev = known.and_then(|v| v.range(..=(at, u64::MAX)).next_back().copied());
        let next = known.and_then(|v| v.range((at, u64::MAX)..).next().copied());
        let new = prev.is_none_or(|(_, h)| h != hash) && next.is_none_or(|(_, h)| h != hash);
        if new {
            self.record(device, id, at, hash);
        }
        new
    }

    /// How many resources it knows.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether it knows none.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// The new versions among a report's resources (`system`: the job's device identifier
    /// system), each recorded.
    pub fn admit_report(
        &mut self,
        report: &DeviceReport,
        system: Option<&str>,
    ) -> Vec<DeviceVersion> {
        self.admit_tree(&report.tree, report.at, report.source.as_ref(), system)
    }

    /// As [`Versions::admit_report`], for a tree reported at `at` from `source`.
    pub fn admit_tree(
        &mut self,
        tree: &DeviceTree,
        at: i64,
        source: Option<&(String, i32, i64)>,
        system: Option<&str>,
    ) -> Vec<DeviceVersion> {
        let mut out = Vec::new();
        if let (Some((topic, partition, offset)), false) = (source, self.reached.is_empty()) {
            // Decided before the restart: what it led to is written already.
            if self
                .reached
                .get(&(tree.identifier.clone(), topic.clone(), *partition))
                .is_some_and(|r| offset <= r)
            {
                return out;
            }
        }
        let fingerprint = tree.fingerprint();
        let seen = self.devices.entry(tree.identifier.clone()).or_default();
        let unchanged = seen
            .last
            .is_some_and(|(fp, t)| fp == fingerprint && at >= t && t >= seen.newest);
        seen.last = Some((fingerprint, at));
        if unchanged {
            return out;
        }
        let levels = tree
            .components
            .iter()
            .map(|c| {
                let level = match c.level {
                    crate::mapping::device_tree::Level::Mds => "mds",
                    crate::mapping::device_tree::Level::Vmd => "vmd",
                    crate::mapping::device_tree::Level::Channel => "channel",
                };
                (c.key.as_str(), level)
            })
            .chain(tree.metrics.iter().map(|m| (m.key.as_str(), "metric")));
        for (mut r, (key, level)) in resources(tree, system).into_iter().zip(levels) {
            let hash = content_hash(&r);
            let id = r["id"].as_str().unwrap_or_default().to_string();
            if !self.admit(&tree.identifier, &id, at, hash) {
                continue;
            }
            let from = chrono::DateTime::from_timestamp_millis(at).unwrap_or_default();
            r["meta"] = json!({
                "versionId": format!("{hash:016x}"),
                "lastUpdated": crate::time::format_rfc3339(&from),
            });
            if let Some(source) = source {
                r["meta"]["source"] = json!(source_uri(source));
            }
            out.push(DeviceVersion {
                resource: r,
                device: tree.identifier.clone(),
                key: key.to_string(),
                level,
                at,
            });
        }
        out
    }
}

/// A written version's (id, event time, content hash), read from its `meta`, and the
/// message it came from when it says.
#[allow(clippy::type_complexity)]
pub fn version_of(resource: &Value) -> Option<((&str, i64, u64), Option<(String, i32, i64)>)> {
    let id = resource["id"].as_str()?;
    let hash = u64::from_str_radix(resource.pointer("/meta/versionId")?.as_str()?, 16).ok()?;
    let at = crate::time::parse_timestamp(resource.pointer("/meta/lastUpdated")?.as_str()?)?;
    let source = resource
        .pointer("/meta/source")
        .and_then(Value::as_str)
        .and_then(parse_source);
    Some(((id, at.timestamp_millis(), hash), source))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::device_tree::from_pcd01;

    fn monitor() -> DeviceTree {
        let text = crate::mapping::device_tree::tests_support::MONITOR;
        from_pcd01(&crate::hl7::parse(text).expect("hl7")).remove(0)
    }

    #[test]
    fn the_tree_becomes_linked_devices_and_metrics() {
        let t = monitor();
        let r = resources(&t, Some("urn:oid:1.2.3"));
        let devices: Vec<&Value> = r.iter().filter(|v| v["resourceType"] == "Device").collect();
        let metrics: Vec<&Value> = r
            .iter()
            .filter(|v| v["resourceType"] == "DeviceMetric")
            .collect();
        assert_eq!((devices.len(), metrics.len()), (8, 4));
        let mds = devices[0];
        assert_eq!(mds["identifier"][0]["system"], "urn:oid:1.2.3");
        assert_eq!(mds["identifier"][0]["value"], "0012A3FFFE4B5C6D");
        assert_eq!(mds["manufacturer"], "Acme Medical");
        assert_eq!(mds["serialNumber"], "SN-0042");
        assert_eq!(mds["version"][0]["type"]["coding"][0]["code"], "531975");
        assert_eq!(mds["version"][0]["value"], "2.4.1");
        assert_eq!(mds["type"]["coding"][0]["system"], MDC);
        assert_eq!(mds["location"]["display"], "ICU / 12 / B");
        assert!(mds.get("parent").is_none());
        // Every parent and source points at a Device of the same tree.
        let ids: Vec<String> = devices
            .iter()
            .map(|d| format!("Device/{}", d["id"].as_str().expect("id")))
            .collect();
        for v in devices.iter().skip(1).chain(&metrics) {
            let p = v["parent"]["reference"].as_str().expect("parent");
            assert!(
                ids.iter().any(|i| i == p),
                "{p} is one of the tree's Devices"
            );
        }
        let spo2 = metrics[1];
        assert_eq!(spo2["source"]["reference"], ids[0].as_str());
        assert_eq!(spo2["parent"]["reference"], ids[4].as_str(), "SpO2 channel");
        assert_eq!(spo2["operationalStatus"], "off");
        assert_eq!(spo2["unit"]["coding"][0]["code"], "262688");
        let hr = metrics[0];
        assert_eq!(hr["type"]["coding"][1]["system"], "http://loinc.org");
        assert_eq!(hr["category"], "measurement");
        assert_eq!(metrics[2]["calibration"][0]["state"], "calibrated");
        assert_eq!(metrics[2]["calibration"][0]["type"], "two-point");
        assert_eq!(metrics[3]["category"], "setting");
        // The same device from another message (renumbered) keeps its ids.
        let again = resources(&t, Some("urn:oid:1.2.3"));
        assert_eq!(r, again);
    }

    #[test]
    fn versions_follow_changes_in_event_time_whatever_the_order_or_replay() {
        // (time, content) as a device reports them; content 2 from t=30 to t=50.
        let reports = [(10, 1), (20, 1), (30, 2), (40, 2), (50, 1), (60, 1)];
        let run = |order: &[usize], seed: &[(i64, u64)]| {
            let mut v = Versions::default();
            for (at, h) in seed {
                v.record("m", "d", *at, *h);
            }
            let mut out: Vec<(i64, u64)> = order
                .iter()
                .map(|i| reports[*i])
                .filter(|(at, h)| v.admit("m", "d", *at, *h))
                .collect();
            out.sort();
            out
        };
        let want = vec![(10, 1), (30, 2), (50, 1)];
        assert_eq!(run(&[0, 1, 2, 3, 4, 5], &[]), want);
        // Replayed after a restart that had written all three: nothing new.
        assert!(run(&[0, 1, 2, 3, 4, 5], &want).is_empty());
        // A restart in the middle: what was written before stays, the rest follows.
        assert_eq!(run(&[2, 3, 4, 5], &want[..1]), want[1..]);
        // A late report of content 2 within its span changes nothing.
        assert_eq!(run(&[0, 1, 2, 4, 5, 3], &[]), want);
    }

    #[test]
    fn a_restart_from_any_commit_writes_what_one_run_writes_and_nothing_twice() {
        use crate::mapping::device_tree::tests_support::MONITOR;
        // (offset, event time, software version) in partition order, some out of time order.
        let input = [
            (0, 10, "2.4.1"),
            (1, 20, "2.4.1"),
            (2, 50, "2.4.1"),
            (3, 40, "2.5.0"),
            (4, 60, "2.4.1"),
            (5, 70, "2.5.0"),
            (6, 80, "2.5.0"),
        ];
        let report = |(offset, at, sw): (i64, i64, &str)| {
            let text = MONITOR.replace("|2.4.1|", &format!("|{sw}|"));
            let tree = from_pcd01(&crate::hl7::parse(&text).expect("hl7")).remove(0);
            DeviceReport {
                tree,
                at,
                source: Some(("vitals".into(), 0, offset)),
            }
        };
        // (offset of the message, line) of everything written reading from `from`.
        let run = |v: &mut Versions, from: usize| -> Vec<(i64, Value)> {
            input[from..]
                .iter()
                .flat_map(|r| {
                    v.admit_report(&report(*r), None)
                        .into_iter()
                        .map(|x| (r.0, x.resource))
                })
                .collect()
        };
        let whole = run(&mut Versions::default(), 0);
        // 50 came before 40 changed the software: in partition order it changed back at 60.
        assert_eq!(
            whole.len(),
            12 + 3,
            "every resource, then the MDS at 40, 60 and 70"
        );
        // A kill after the versions of the messages before `written` were durable, with
        // offsets committed up to `committed` (never past what is durable).
        for written in 0..=input.len() as i64 {
            for committed in 0..=written as usize {
                let mut seed = Versions::default();
                let durable: Vec<&(i64, Value)> =
                    whole.iter().filter(|(o, _)| *o < written).collect();
                for (_, r) in &durable {
                    let ((id, at, hash), source) = version_of(r).expect("version");
                    seed.record("0012A3FFFE4B5C6D", id, at, hash);
                    seed.reached("0012A3FFFE4B5C6D", source.expect("source"));
                }
                let again = run(&mut seed, committed);
                // (id, from, content) of each line: enough to tell lines apart.
                let short = |r: &Value| {
                    let ((id, at, hash), _) = version_of(r).expect("version");
                    (id[..8].to_string(), at, hash)
                };
                let mut all: Vec<_> = durable.iter().map(|(_, r)| short(r)).collect();
                all.extend(again.iter().map(|(_, r)| short(r)));
                let want: Vec<_> = whole.iter().map(|(_, r)| short(r)).collect();
                assert_eq!(all, want, "written before {written}, committed {committed}");
            }
        }
    }

    #[test]
    fn outputs_that_made_different_amounts_durable_each_get_what_they_lack() {
        use crate::mapping::device_tree::tests_support::MONITOR;
        let report = |offset: i64, sw: &str| {
            let text = MONITOR.replace("|2.4.1|", &format!("|{sw}|"));
            DeviceReport {
                tree: from_pcd01(&crate::hl7::parse(&text).expect("hl7")).remove(0),
                at: offset * 10,
                source: Some(("vitals".into(), 0, offset)),
            }
        };
        let input = [(0, "1"), (1, "2"), (2, "3"), (3, "3"), (4, "4")];
        let mut one = Versions::default();
        let all: Vec<DeviceVersion> = input
            .iter()
            .flat_map(|(o, sw)| one.admit_report(&report(*o, sw), None))
            .collect();
        let held = |v: &[DeviceVersion]| -> Vec<Held> {
            v.iter()
                .map(|x| Held::of(&x.device, &x.resource).expect("held"))
                .collect()
        };
        // Before the kill the NDJSON output made everything up to the third software
        // version durable, the lake only the first version of every resource.
        let ndjson = held(&all[..14]);
        let lake = held(&all[..12]);
        let mut seed = Versions::held_by_all(&[ndjson.clone(), lake.clone()]);
        let again: Vec<Held> = input
            .iter()
            .flat_map(|(o, sw)| seed.admit_report(&report(*o, sw), None))
            .map(|x| Held::of(&x.device, &x.resource).expect("held"))
            .collect();
        let want = held(&all);
        assert_eq!(again, want[12..], "decided again from what both hold");
        for (output, had) in [("NDJSON", &ndjson), ("lake", &lake)] {
            let mut got = had.clone();
            got.extend(again.iter().filter(|h| !had.contains(h)).cloned());
            assert_eq!(got, want, "{output}: what it held and what it lacked");
        }
    }
}
