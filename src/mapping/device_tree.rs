//! The devices behind the measurements: the point-of-care containment tree of IEEE 11073
//! (MDS, VMD, channel, metric) that an IHE PCD-01 message carries in its OBX-4 sub-ids
//! (`<MDS>.<VMD>.<channel>.<metric>`, 0 where a level does not apply), with the attributes
//! clinical engineering answers for: manufacturer, model, serial number, versions, the
//! bed, and per metric its unit, category, operational status and calibration.
//!
//! How a PCD-01 message is read (docs/hl7.md has the table):
//! - a row without a value type (OBX-2) whose sub-id ends in a 0 metric level is a component
//!   header: `1.0.0.0` the MDS, `1.2.0.0` a VMD, `1.2.1.0` a channel; OBX-3 is its type;
//! - a row whose OBX-3 is an identification or status attribute (by MDC code or reference
//!   id) belongs to what its sub-id names without its last level when it has five
//!   (`1.2.1.1.1`: metric `1.2.1.1`), else to the component its first three levels name
//!   (`1.0.0.1`: the MDS);
//! - any other row with a four-level sub-id is a metric; OBX-17 (`AMEAS`, `ASET`, `ACALC`,
//!   and their manual `M` forms) gives its category;
//! - the equipment identifier is OBX-18, on the row or the nearest before it, as for the
//!   measurements; the bed is PV1-3.
//!
//! Components and metrics are keyed by the codes on their path with a per-parent ordinal
//! for repeated codes (two invasive-pressure channels: `69855#1`, `69855#2`), not by the
//! sub-id ordinals: PCD-01 lets a device renumber its tree between messages. A component
//! without a header row has only its ordinal (`@3`).

use crate::hl7::{timestamp, Hl7};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The system URI of IEEE 11073-10101 (MDC) codes.
pub const MDC: &str = "urn:iso:std:iso:11073:10101";

/// A coded concept as a message gives it.
#[derive(Debug, Clone, PartialEq, Hash, Eq, Serialize, Deserialize)]
pub struct Code {
    /// The code (`150456`).
    pub code: String,
    /// Its reference id or text (`MDC_PULS_OXIM_SAT_O2`), when given.
    pub display: Option<String>,
    /// Its system as a URI (`MDC` becomes [`MDC`], `LN` LOINC, `UCUM` UCUM), when given.
    pub system: Option<String>,
}

/// Where a component sits in the tree.
#[derive(Debug, Clone, Copy, PartialEq, Hash, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Medical device system: the monitor.
    Mds,
    /// Virtual medical device: a module (ECG, pulse oximeter, NIBP).
    Vmd,
    /// Channel: a group of metrics of one VMD.
    Channel,
}

/// An identification attribute of a component.
#[derive(Debug, Clone, Copy, PartialEq, Hash, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Attribute {
    /// `MDC_ID_MODEL_MANUFACTURER`.
    Manufacturer,
    /// `MDC_ID_MODEL_NUMBER`.
    Model,
    /// `MDC_ID_PROD_SPEC_SERIAL`.
    Serial,
    /// `MDC_ID_PROD_SPEC_HW`.
    HardwareVersion,
    /// `MDC_ID_PROD_SPEC_SW`.
    SoftwareVersion,
    /// `MDC_ID_PROD_SPEC_FW`.
    FirmwareVersion,
    /// Where the device is (PV1-3, or a JSON template's path).
    Location,
}

impl Attribute {
    /// The MDC code of a version attribute (FHIR `Device.version.type`).
    pub fn version_code(self) -> Option<(&'static str, &'static str)> {
        match self {
            Attribute::HardwareVersion => Some(("531974", "MDC_ID_PROD_SPEC_HW")),
            Attribute::SoftwareVersion => Some(("531975", "MDC_ID_PROD_SPEC_SW")),
            Attribute::FirmwareVersion => Some(("531976", "MDC_ID_PROD_SPEC_FW")),
            _ => None,
        }
    }
}

/// What an attribute row sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Row {
    Id(Attribute),
    /// Operational status (`MDC_ATTR_METRIC_STAT`, `MDC_ATTR_VMS_MDS_STAT`).
    Status,
    /// Calibration (`MDC_ATTR_METRIC_CALIB`).
    Calibration,
}

/// Attribute rows by MDC code and reference id (partition 1 attributes as 65536 + term).
const ROWS: &[(&str, &str, Row)] = &[
    (
        "531970",
        "MDC_ID_MODEL_MANUFACTURER",
        Row::Id(Attribute::Manufacturer),
    ),
    ("531969", "MDC_ID_MODEL_NUMBER", Row::Id(Attribute::Model)),
    (
        "531972",
        "MDC_ID_PROD_SPEC_SERIAL",
        Row::Id(Attribute::Serial),
    ),
    (
        "531974",
        "MDC_ID_PROD_SPEC_HW",
        Row::Id(Attribute::HardwareVersion),
    ),
    (
        "531975",
        "MDC_ID_PROD_SPEC_SW",
        Row::Id(Attribute::SoftwareVersion),
    ),
    (
        "531976",
        "MDC_ID_PROD_SPEC_FW",
        Row::Id(Attribute::FirmwareVersion),
    ),
    ("67904", "MDC_ATTR_METRIC_STAT", Row::Status),
    ("68007", "MDC_ATTR_VMS_MDS_STAT", Row::Status),
    ("67898", "MDC_ATTR_METRIC_CALIB", Row::Calibration),
];

fn row_kind(code: &str, name: &str) -> Option<Row> {
    ROWS.iter()
        .find(|(c, n, _)| *c == code || (!name.is_empty() && n.eq_ignore_ascii_case(name)))
        .map(|(_, _, r)| *r)
}

/// FHIR `DeviceMetric.operationalStatus`.
#[derive(Debug, Clone, Copy, PartialEq, Hash, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OperationalStatus {
    /// Operating.
    On,
    /// Off, or its transducer or hardware disconnected.
    Off,
    /// Standby, or not ready.
    Standby,
}

impl OperationalStatus {
    /// Reads FHIR's codes and IEEE 11073's metric and MDS status names.
    fn parse(text: &str) -> Option<Self> {
        let t = text.trim().to_ascii_lowercase();
        let t = t.strip_prefix("metric-").unwrap_or(&t);
        Some(match t {
            "on" | "operating" | "associated" => OperationalStatus::On,
            "off" | "transduc-discon" | "hw-discon" | "disconnected" | "unassociated" => {
                OperationalStatus::Off
            }
            "standby" | "not-ready" => OperationalStatus::Standby,
            _ => return None,
        })
    }

    /// As a reading's value: `operating`, `off`, `standby` (IEEE 11073's words; "on" would
    /// read as a true flag to a rules file, which a running channel is not).
    pub fn word(self) -> &'static str {
        match self {
            OperationalStatus::On => "operating",
            other => other.code(),
        }
    }

    /// The FHIR code.
    pub fn code(self) -> &'static str {
        match self {
            OperationalStatus::On => "on",
            OperationalStatus::Off => "off",
            OperationalStatus::Standby => "standby",
        }
    }
}

/// FHIR `DeviceMetric.calibration`.
#[derive(Debug, Clone, PartialEq, Hash, Eq, Serialize, Deserialize)]
pub struct Calibration {
    /// `not-calibrated`, `calibration-required`, `calibrated` or `unspecified`.
    pub state: String,
    /// `unspecified`, `offset`, `gain` or `two-point`, when given.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// When it was calibrated (the row's OBX-14), when given.
    pub time: Option<DateTime<Utc>>,
}

fn calibration_state(t: &str) -> Option<&'static str> {
    Some(match t.trim().to_ascii_lowercase().as_str() {
        "not-calibrated" => "not-calibrated",
        "calibration-required" | "cal-required" => "calibration-required",
        "calibrated" => "calibrated",
        "unspecified" => "unspecified",
        _ => return None,
    })
}

fn calibration_type(t: &str) -> Option<&'static str> {
    Some(match t.trim().to_ascii_lowercase().as_str() {
        "unspecified" | "cal-unspec" => "unspecified",
        "offset" | "cal-offset" => "offset",
        "gain" | "cal-gain" => "gain",
        "two-point" | "cal-two-point" => "two-point",
        _ => return None,
    })
}

/// FHIR `DeviceMetric.category`.
#[derive(Debug, Clone, Copy, PartialEq, Hash, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Category {
    /// A measured value.
    Measurement,
    /// A setting.
    Setting,
    /// A calculated value.
    Calculation,
}

impl Category {
    /// The FHIR code.
    pub fn code(self) -> &'static str {
        match self {
            Category::Measurement => "measurement",
            Category::Setting => "setting",
            Category::Calculation => "calculation",
        }
    }
}

/// An MDS, VMD or channel.
#[derive(Debug, Clone, PartialEq, Hash, Serialize, Deserialize)]
pub struct Component {
    /// Its level.
    pub level: Level,
    /// Stable key within its MDS: the codes on its path (`69798#1/69855#1`); empty for the MDS.
    pub key: String,
    /// Its type (the header row's OBX-3), when the message has a header row for it.
    #[serde(rename = "type")]
    pub kind: Option<Code>,
    /// Identification attributes.
    pub attributes: BTreeMap<Attribute, String>,
    /// Operational status, when a status row gives it.
    pub status: Option<OperationalStatus>,
    /// The key of the component it belongs to (None for the MDS).
    pub parent: Option<String>,
    /// Its OBX-4 ordinals (for the message at hand only).
    #[serde(skip)]
    ordinals: [u32; 3],
}

/// A metric: one kind of value a channel reports.
#[derive(Debug, Clone, PartialEq, Hash, Serialize, Deserialize)]
pub struct Metric {
    /// Stable key within its MDS: its parent's key and its code.
    pub key: String,
    /// Its type (OBX-3).
    #[serde(rename = "type")]
    pub kind: Code,
    /// OBX-3's alternate identifier (a LOINC code, as templates match it), when given.
    pub alternate: Option<Code>,
    /// Its unit (OBX-6), when given.
    pub unit: Option<Code>,
    /// Measurement, setting or calculation (OBX-17).
    pub category: Category,
    /// Operational status, when a status row (its own or its component's) gives it.
    pub status: Option<OperationalStatus>,
    /// Calibration, when a calibration row gives it.
    pub calibration: Option<Calibration>,
    /// The key of its component ("" for the MDS itself).
    pub parent: String,
    #[serde(skip)]
    ordinals: [u32; 4],
}

/// One MDS with what it contains, as one message reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceTree {
    /// The equipment identifier (OBX-18 component 1; an EUI-64 in PCD-01).
    pub identifier: String,
    /// What kind of identifier (OBX-18 component 2 or 4: `EUI-64`), when given.
    pub identifier_type: Option<String>,
    /// The patient (PID-3), when given.
    pub patient: Option<String>,
    /// When the message says it was (MSH-7), when given.
    pub time: Option<DateTime<Utc>>,
    /// The MDS first, then VMDs and channels in message order.
    pub components: Vec<Component>,
    /// Metrics in message order.
    pub metrics: Vec<Metric>,
}

impl DeviceTree {
    /// The MDS.
    pub fn mds(&self) -> &Component {
        &self.components[0]
    }

    /// A hash of what the tree says about its devices (not of when it says it): equal for
    /// the reports of a device whose attributes did not change.
    pub fn fingerprint(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = rustc_hash::FxHasher::default();
        self.identifier.hash(&mut h);
        self.identifier_type.hash(&mut h);
        self.patient.hash(&mut h);
        self.components.hash(&mut h);
        self.metrics.hash(&mut h);
        h.finish()
    }
}

/// An OBX-4 sub-id: up to five ordinals, None unless all are numbers.
fn sub_id(raw: &str) -> Option<Vec<u32>> {
    if raw.is_empty() {
        return None;
    }
    let v: Option<Vec<u32>> = raw.split('.').map(|p| p.trim().parse().ok()).collect();
    v.filter(|v| (1..=5).contains(&v.len()) && v[0] > 0)
}

/// A coding system as a URI: HL7 v2's names (`MDC`, `LN`, `UCUM`, `SCT`) mapped, others kept.
pub(super) fn system_uri(s: &str) -> Option<String> {
    match s.trim() {
        "" => None,
        "MDC" => Some(MDC.to_string()),
        "LN" => Some("http://loinc.org".to_string()),
        "UCUM" => Some("http://unitsofmeasure.org".to_string()),
        "SCT" => Some("http://snomed.info/sct".to_string()),
        other => Some(other.to_string()),
    }
}

/// Builds a tree per MDS while the message's OBX are read.
struct Builder {
    identifier: String,
    identifier_type: Option<String>,
    components: Vec<Component>,
    metrics: Vec<Metric>,
}

impl Builder {
    /// The component at `ord` (trailing zero levels cut), created (untyped) with its
    /// parents when absent; its index.
    fn component(&mut self, ord: [u32; 3]) -> usize {
        if let Some(i) = self.components.iter().position(|c| c.ordinals == ord) {
            return i;
        }
        let (level, parent_ord) = match ord {
            [m, 0, 0] => (Level::Mds, [m, 0, 0]),
            [m, _, 0] => (Level::Vmd, [m, 0, 0]),
            [m, 0, _] => (Level::Channel, [m, 0, 0]),
            [m, v, _] => (Level::Channel, [m, v, 0]),
        };
        let parent = (level != Level::Mds).then(|| self.component(parent_ord));
        self.components.push(Component {
            level,
            key: String::new(),
            kind: None,
            attributes: BTreeMap::new(),
            status: None,
            parent: parent.map(|p| p.to_string()),
            ordinals: ord,
        });
        self.components.len() - 1
    }

    /// Gives components and metrics their keys (codes on their path, an ordinal for repeats
    /// under one parent) and orders the MDS first.
    fn finish(mut self, patient: Option<String>, time: Option<DateTime<Utc>>) -> DeviceTree {
        // The MDS is created first, and every parent before its children: keys build in one
        // pass over creation order.
        let mut keys: Vec<String> = vec![String::new(); self.components.len()];
        let mut seen: BTreeMap<(String, String), u32> = BTreeMap::new();
        let mut label = |parent: &str, code: &str| {
            let n = seen
                .entry((parent.to_string(), code.to_string()))
                .or_insert(0);
            *n += 1;
            let own = format!("{code}#{n}");
            if parent.is_empty() {
                own
            } else {
                format!("{parent}/{own}")
            }
        };
        for i in 0..self.components.len() {
            let c = &self.components[i];
            if c.level == Level::Mds {
                continue;
            }
            let parent = c
                .parent
                .as_ref()
                .and_then(|p| p.parse::<usize>().ok())
                .expect("index");
            keys[i] = match &c.kind {
                Some(k) => label(&keys[parent].clone(), &k.code),
                // No header row: its OBX-4 ordinal is all that tells it from its siblings.
                None => {
                    let ord = c.ordinals[if c.level == Level::Vmd { 1 } else { 2 }];
                    let own = format!("@{ord}");
                    if keys[parent].is_empty() {
                        own
                    } else {
                        format!("{}/{own}", keys[parent])
                    }
                }
            };
        }
        for c in &mut self.components {
            c.parent = c
                .parent
                .as_ref()
                .and_then(|p| p.parse::<usize>().ok())
                .map(|p| keys[p].clone());
        }
        for (c, k) in self.components.iter_mut().zip(&keys) {
            c.key = k.clone();
        }
        let mut metric_seen: BTreeMap<(String, String), u32> = BTreeMap::new();
        for m in &mut self.metrics {
            let n = metric_seen
                .entry((m.parent.clone(), m.kind.code.clone()))
                .or_insert(0);
            *n += 1;
            let idx: usize = m.parent.parse().expect("index");
            m.parent = keys[idx].clone();
            let own = if *n == 1 {
                m.kind.code.clone()
            } else {
                format!("{}#{n}", m.kind.code)
            };
            m.key = if m.parent.is_empty() {
                own
            } else {
                format!("{}/{own}", m.parent)
            };
        }
        DeviceTree {
            identifier: self.identifier,
            identifier_type: self.identifier_type,
            patient,
            time,
            components: self.components,
            metrics: self.metrics,
        }
    }
}

/// The prefix of a device attribute among a measurement's properties, until the normalize
/// stage takes it out ([`take_json_attributes`]).
pub const DEVICE_ATTRIBUTE: &str = "device.";

/// The attributes a JSON template's `deviceAttributes` (a vitalflow extension) may name.
pub const DEVICE_ATTRIBUTES: &[&str] = &[
    "manufacturer",
    "model",
    "serialNumber",
    "softwareVersion",
    "hardwareVersion",
    "firmwareVersion",
    "location",
];

/// Takes the device attributes a JSON template's `deviceAttributes` put among the
/// measurements' properties out of them, as a tree of one MDS per device (what a JSON feed
/// says of its devices: no VMDs, channels or metrics). A later measurement's value of an
/// attribute wins.
pub fn take_json_attributes(ms: &mut [crate::model::Measurement]) -> Vec<DeviceTree> {
    let prefix = DEVICE_ATTRIBUTE;
    let mut trees: Vec<DeviceTree> = Vec::new();
    for m in ms.iter_mut() {
        if !m.properties.iter().any(|(k, _)| k.starts_with(prefix)) {
            continue;
        }
        let i = match trees.iter().position(|t| t.identifier == m.device_id) {
            Some(i) => i,
            None => {
                trees.push(DeviceTree {
                    identifier: m.device_id.to_string(),
                    identifier_type: None,
                    patient: m.patient_id.as_deref().map(str::to_string),
                    time: Some(m.occurrence_time),
                    components: vec![Component {
                        level: Level::Mds,
                        key: String::new(),
                        kind: None,
                        attributes: BTreeMap::new(),
                        status: None,
                        parent: None,
                        ordinals: [1, 0, 0],
                    }],
                    metrics: Vec::new(),
                });
                trees.len() - 1
            }
        };
        let attributes = &mut trees[i].components[0].attributes;
        m.properties.retain(|(k, v)| {
            let Some(name) = k.strip_prefix(prefix) else {
                return true;
            };
            let a = match name {
                "manufacturer" => Attribute::Manufacturer,
                "model" => Attribute::Model,
                "serialNumber" => Attribute::Serial,
                "softwareVersion" => Attribute::SoftwareVersion,
                "hardwareVersion" => Attribute::HardwareVersion,
                "firmwareVersion" => Attribute::FirmwareVersion,
                _ => Attribute::Location,
            };
            attributes.insert(a, v.to_string());
            false
        });
    }
    trees
}

/// A hash of everything in a message [`from_pcd01`] reads (patient, bed, and every OBX but
/// a metric's value and time), with the equipment identifier of its one MDS: equal hashes
/// mean equal trees. None when the message has no MDS or several (their trees are read
/// whole). A monitor repeats its tree with every message: this is what tells, for a few
/// hundred nanoseconds, that nothing changed.
pub fn raw_fingerprint<'m>(msg: &Hl7<'m>) -> Option<(String, u64)> {
    use std::hash::{Hash, Hasher};
    let mut h = rustc_hash::FxHasher::default();
    let f = |seg: &'m str, n: usize| msg.field(seg, n);
    msg.segment("PID")
        .map(|s| msg.component(f(s, 3), 1))
        .hash(&mut h);
    msg.segment("PV1").map(|s| f(s, 3)).hash(&mut h);
    let mut mds: Option<&'m str> = None;
    let mut identifier: Option<&'m str> = None;
    let mut any_identifier: Option<&'m str> = None;
    for (name, seg) in msg.segments() {
        if name != "OBX" {
            continue;
        }
        let fs: [&'m str; 19] = msg.fields(seg);
        let sub = msg.component(fs[4], 1);
        let eid = msg.component(fs[18], 1);
        if !eid.is_empty() {
            any_identifier.get_or_insert(eid);
        }
        if let Some(m) = sub.split('.').next().filter(|m| !m.is_empty()) {
            if mds.is_some_and(|x| x != m) {
                return None;
            }
            mds = Some(m);
            if !eid.is_empty() {
                identifier.get_or_insert(eid);
            }
        }
        let id: [&'m str; 2] = msg.components(fs[3]);
        for n in [2, 3, 4, 6, 17, 18] {
            fs[n].hash(&mut h);
        }
        if row_kind(id[0], id[1]).is_some() {
            fs[5].hash(&mut h);
            fs[14].hash(&mut h);
        }
    }
    mds?;
    let identifier = identifier.or(any_identifier)?;
    Some((msg.decode(identifier).into_owned(), h.finish()))
}

/// The device trees of an IHE PCD-01 message, one per MDS with an equipment identifier, in
/// message order; none when its OBX carry no sub-ids.
pub fn from_pcd01<'m>(msg: &Hl7<'m>) -> Vec<DeviceTree> {
    let f = |seg: &'m str, n: usize| msg.field(seg, n);
    let patient = msg
        .segment("PID")
        .map(|s| msg.decode(msg.component(f(s, 3), 1)).into_owned())
        .filter(|v| !v.is_empty());
    let location = msg
        .segment("PV1")
        .map(|s| f(s, 3))
        .filter(|l| !l.is_empty());
    let time = msg.segment("MSH").and_then(|s| timestamp(f(s, 7)));
    let obx: Vec<[&'m str; 19]> = msg
        .segments()
        .filter(|(name, _)| *name == "OBX")
        .map(|(_, seg)| msg.fields(seg))
        .collect();
    let equipment = |fs: &[&'m str; 19]| {
        let eid: [&str; 4] = msg.components(fs[18]);
        (!eid[0].is_empty()).then(|| {
            let kind = [eid[1], eid[3]]
                .into_iter()
                .find(|k| !k.is_empty())
                .map(|k| msg.decode(k).into_owned());
            (msg.decode(eid[0]).into_owned(), kind)
        })
    };
    // An MDS is the device of the first OBX-18 among its rows (gateways put it on the MDS
    // row, or only on the metric rows); rows of an MDS without one take the nearest before.
    let mut own: Vec<(u32, (String, Option<String>))> = Vec::new();
    for fs in &obx {
        if let (Some(sub), Some(e)) = (sub_id(msg.component(fs[4], 1)), equipment(fs)) {
            if !own.iter().any(|(m, _)| *m == sub[0]) {
                own.push((sub[0], e));
            }
        }
    }
    // (MDS ordinal, builder) in message order.
    let mut trees: Vec<(u32, Builder)> = Vec::new();
    let mut device: Option<(String, Option<String>)> = None;
    for fs in &obx {
        if let Some(e) = equipment(fs) {
            device = Some(e);
        }
        let Some(sub) = sub_id(msg.component(fs[4], 1)) else {
            continue;
        };
        let mine = own.iter().find(|(m, _)| *m == sub[0]).map(|(_, e)| e);
        let Some((identifier, identifier_type)) = mine.or(device.as_ref()).cloned() else {
            continue;
        };
        let t = match trees.iter().position(|(m, _)| *m == sub[0]) {
            Some(t) => t,
            None => {
                let mut b = Builder {
                    identifier,
                    identifier_type,
                    components: Vec::new(),
                    metrics: Vec::new(),
                };
                let mds = b.component([sub[0], 0, 0]);
                if let Some(l) = location {
                    // PV1-3 (point of care^room^bed^facility...) as people read it.
                    let parts: [&str; 4] = msg.components(l);
                    let place: Vec<String> = parts
                        .iter()
                        .filter(|p| !p.is_empty())
                        .map(|p| msg.decode(p).into_owned())
                        .collect();
                    b.components[mds]
                        .attributes
                        .insert(Attribute::Location, place.join(" / "));
                }
                trees.push((sub[0], b));
                trees.len() - 1
            }
        };
        let b = &mut trees[t].1;
        let id: [&str; 6] = msg.components(fs[3]);
        let code = |i: usize| Code {
            code: msg.decode(id[i]).into_owned(),
            display: Some(msg.decode(id[i + 1]).into_owned()).filter(|d| !d.is_empty()),
            system: system_uri(id[i + 2]),
        };
        let at3 = |s: &[u32]| {
            [
                s[0],
                s.get(1).copied().unwrap_or(0),
                s.get(2).copied().unwrap_or(0),
            ]
        };
        let value = msg.decode(msg.component(fs[5], 1)).trim().to_string();
        if let Some(row) = row_kind(id[0], id[1]) {
            // Five levels: an attribute of the metric the first four name.
            let metric = (sub.len() == 5 && sub[3] != 0).then(|| {
                let ord = [sub[0], sub[1], sub[2], sub[3]];
                b.metrics.iter().position(|m| m.ordinals == ord)
            });
            match (row, metric) {
                (Row::Status, Some(Some(m))) => {
                    b.metrics[m].status = OperationalStatus::parse(&value)
                }
                (Row::Calibration, Some(Some(m))) => {
                    let reps: Vec<&str> = fs[5].split(msg.separators.repetition).collect();
                    b.metrics[m].calibration = calibration_state(&value).map(|state| Calibration {
                        state: state.to_string(),
                        kind: reps
                            .get(1)
                            .and_then(|r| calibration_type(msg.component(r, 1)))
                            .map(str::to_string),
                        time: Some(fs[14]).filter(|t| !t.is_empty()).and_then(timestamp),
                    });
                }
                (_, Some(_)) => {}
                (Row::Id(a), None) => {
                    let c = b.component(at3(&sub));
                    if !value.is_empty() {
                        b.components[c].attributes.insert(a, value);
                    }
                }
                (Row::Status, None) => {
                    let c = b.component(at3(&sub));
                    b.components[c].status = OperationalStatus::parse(&value);
                }
                (Row::Calibration, None) => {}
            }
            continue;
        }
        let header = msg.component(fs[2], 1).is_empty() && sub.get(3).copied().unwrap_or(0) == 0;
        if header && sub.len() <= 4 {
            let c = b.component(at3(&sub));
            b.components[c].kind = Some(code(0)).filter(|k| !k.code.is_empty());
            continue;
        }
        if sub.len() != 4 || id[0].is_empty() {
            continue;
        }
        let ord = [sub[0], sub[1], sub[2], sub[3]];
        if b.metrics.iter().any(|m| m.ordinals == ord) {
            continue;
        }
        let parent = b.component(at3(&sub));
        let unit: [&str; 3] = msg.components(fs[6]);
        let category = match msg.component(fs[17], 1).get(1..) {
            Some(m) if m.eq_ignore_ascii_case("SET") => Category::Setting,
            Some(m) if m.eq_ignore_ascii_case("CALC") => Category::Calculation,
            _ => Category::Measurement,
        };
        b.metrics.push(Metric {
            key: String::new(),
            kind: code(0),
            alternate: Some(code(3)).filter(|k| !k.code.is_empty()),
            unit: (!unit[0].is_empty()).then(|| Code {
                code: msg.decode(unit[0]).into_owned(),
                display: Some(msg.decode(unit[1]).into_owned()).filter(|d| !d.is_empty()),
                system: system_uri(unit[2]),
            }),
            category,
            status: None,
            calibration: None,
            parent: parent.to_string(),
            ordinals: ord,
        });
    }
    trees
        .into_iter()
        .map(|(_, mut b)| {
            // A metric without a status of its own has its component's (or the MDS's).
            for i in 0..b.metrics.len() {
                if b.metrics[i].status.is_none() {
                    let mut at: Option<usize> = b.metrics[i].parent.parse().ok();
                    while let Some(c) = at {
                        if let Some(s) = b.components[c].status {
                            b.metrics[i].status = Some(s);
                            break;
                        }
                        at = b.components[c].parent.as_ref().and_then(|p| p.parse().ok());
                    }
                }
            }
            b.finish(patient.clone(), time)
        })
        .collect()
}

/// A PCD-01 message for the tests of the tree and of the resources made of it.
#[cfg(test)]
pub(crate) mod tests_support {
    /// An MDS with three VMDs (ECG, SpO2, NIBP), attribute rows, statuses and a calibration.
    pub const MONITOR: &str = "MSH|^~\\&|GW^0012A3FFFE4B5C6D^EUI-64|ICU|VF|HOSP|20261205101500+0000||ORU^R01^ORU_R01|M-1|P|2.6\r\
PID|||P-77^^^HOSP^MR\r\
PV1||I|ICU^12^B\r\
OBR|1|||182777000^monitoring of patient^SCT|||20261205101500+0000\r\
OBX|1||69965^MDC_DEV_MON_PHYSIO_MULTI_PARAM_MDS^MDC|1.0.0.0|||||||X|||||||0012A3FFFE4B5C6D^^0012A3^EUI-64\r\
OBX|2|ST|531970^MDC_ID_MODEL_MANUFACTURER^MDC|1.0.0.1|Acme Medical||||||R\r\
OBX|3|ST|531969^MDC_ID_MODEL_NUMBER^MDC|1.0.0.2|VitalView 5||||||R\r\
OBX|4|ST|531972^MDC_ID_PROD_SPEC_SERIAL^MDC|1.0.0.3|SN-0042||||||R\r\
OBX|5|ST|531975^MDC_ID_PROD_SPEC_SW^MDC|1.0.0.4|2.4.1||||||R\r\
OBX|6||69798^MDC_DEV_ECG_VMD^MDC|1.1.0.0|||||||X\r\
OBX|7||69799^MDC_DEV_ECG_CHAN^MDC|1.1.1.0|||||||X\r\
OBX|8|NM|147842^MDC_ECG_HEART_RATE^MDC^8867-4^Heart rate^LN|1.1.1.1|72|264864^MDC_DIM_BEAT_PER_MIN^MDC|||||R|||20261205101500+0000|||AMEAS\r\
OBX|9||69642^MDC_DEV_ANALY_SAT_O2_VMD^MDC|1.2.0.0|||||||X\r\
OBX|10||69643^MDC_DEV_ANALY_SAT_O2_CHAN^MDC|1.2.1.0|||||||X\r\
OBX|11|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC|1.2.1.1|97|262688^MDC_DIM_PERCENT^MDC|||||R|||20261205101500+0000\r\
OBX|12|CWE|67904^MDC_ATTR_METRIC_STAT^MDC|1.2.1.1.1|metric-transduc-discon||||||R\r\
OBX|13||69854^MDC_DEV_METER_PRESS_BLD_VMD^MDC|1.3.0.0|||||||X\r\
OBX|14||69855^MDC_DEV_METER_PRESS_BLD_CHAN^MDC|1.3.1.0|||||||X\r\
OBX|15|NM|150033^MDC_PRESS_BLD_ART_SYS^MDC|1.3.1.1|112|266016^MDC_DIM_MMHG^MDC|||||R\r\
OBX|16|CWE|67898^MDC_ATTR_METRIC_CALIB^MDC|1.3.1.1.1|calibrated~two-point||||||R|||20261205094500+0000\r\
OBX|17||69855^MDC_DEV_METER_PRESS_BLD_CHAN^MDC|1.3.2.0|||||||X\r\
OBX|18|NM|150033^MDC_PRESS_BLD_ART_SYS^MDC|1.3.2.1|24|266016^MDC_DIM_MMHG^MDC|||||R||||||MSET\r";
}

#[cfg(test)]
mod tests {
    use super::tests_support::MONITOR;
    use super::*;
    use crate::hl7::parse;

    fn tree(text: &str) -> Vec<DeviceTree> {
        from_pcd01(&parse(text).expect("hl7"))
    }

    #[test]
    fn a_monitor_gives_its_tree_with_attributes_keys_and_parents() {
        let t = tree(MONITOR);
        assert_eq!(t.len(), 1);
        let t = &t[0];
        assert_eq!(t.identifier, "0012A3FFFE4B5C6D");
        assert_eq!(t.identifier_type.as_deref(), Some("EUI-64"));
        assert_eq!(t.patient.as_deref(), Some("P-77"));
        let mds = t.mds();
        assert_eq!(mds.level, Level::Mds);
        assert_eq!(mds.kind.as_ref().map(|k| k.code.as_str()), Some("69965"));
        assert_eq!(mds.attributes[&Attribute::Manufacturer], "Acme Medical");
        assert_eq!(mds.attributes[&Attribute::Model], "VitalView 5");
        assert_eq!(mds.attributes[&Attribute::Serial], "SN-0042");
        assert_eq!(mds.attributes[&Attribute::SoftwareVersion], "2.4.1");
        assert_eq!(mds.attributes[&Attribute::Location], "ICU / 12 / B");
        let keys: Vec<(&str, Level, Option<&str>)> = t
            .components
            .iter()
            .map(|c| (c.key.as_str(), c.level, c.parent.as_deref()))
            .collect();
        assert_eq!(
            keys,
            vec![
                ("", Level::Mds, None),
                ("69798#1", Level::Vmd, Some("")),
                ("69798#1/69799#1", Level::Channel, Some("69798#1")),
                ("69642#1", Level::Vmd, Some("")),
                ("69642#1/69643#1", Level::Channel, Some("69642#1")),
                ("69854#1", Level::Vmd, Some("")),
                ("69854#1/69855#1", Level::Channel, Some("69854#1")),
                ("69854#1/69855#2", Level::Channel, Some("69854#1")),
            ]
        );
        let m: Vec<&str> = t.metrics.iter().map(|m| m.key.as_str()).collect();
        assert_eq!(
            m,
            vec![
                "69798#1/69799#1/147842",
                "69642#1/69643#1/150456",
                "69854#1/69855#1/150033",
                "69854#1/69855#2/150033",
            ]
        );
        let hr = &t.metrics[0];
        assert_eq!(
            hr.alternate.as_ref().map(|a| a.code.as_str()),
            Some("8867-4")
        );
        assert_eq!(hr.unit.as_ref().map(|u| u.code.as_str()), Some("264864"));
        assert_eq!(hr.category, Category::Measurement);
        assert_eq!(hr.status, None);
        assert_eq!(t.metrics[1].status, Some(OperationalStatus::Off));
        let cal = t.metrics[2].calibration.as_ref().expect("calibration");
        assert_eq!(
            (cal.state.as_str(), cal.kind.as_deref()),
            ("calibrated", Some("two-point"))
        );
        assert_eq!(
            cal.time.map(|t| crate::time::format_rfc3339(&t)),
            Some("2026-12-05T09:45:00Z".to_string())
        );
        assert_eq!(t.metrics[3].category, Category::Setting);
    }

    #[test]
    fn renumbered_trees_keep_their_keys_and_implied_levels_are_created() {
        // The same device with its VMDs in another order and numbered differently.
        let renumbered = MONITOR
            .replace("|1.1.", "|1.9.")
            .replace("|1.2.", "|1.1.")
            .replace("|1.9.", "|1.2.");
        let a = tree(MONITOR).remove(0);
        let b = tree(&renumbered).remove(0);
        let keys = |t: &DeviceTree| {
            let mut k: Vec<String> = t.metrics.iter().map(|m| m.key.clone()).collect();
            k.sort();
            k
        };
        assert_eq!(keys(&a), keys(&b));
        // No header rows at all: the levels exist, untyped, and a metric at 0 levels hangs
        // from the MDS (PCD's "flat" option).
        let flat = "MSH|^~\\&|GW|ICU|VF|HOSP|20261205101500\rPID|||P-1\r\
OBX|1|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC|1.0.0.1|97|262688^MDC_DIM_PERCENT^MDC|||||R|||||||DEV-1\r\
OBX|2|NM|147842^MDC_ECG_HEART_RATE^MDC|1.2.1.1|70|264864^MDC_DIM_BEAT_PER_MIN^MDC|||||R\r";
        let t = tree(flat).remove(0);
        assert_eq!(t.identifier, "DEV-1");
        assert_eq!(t.components.len(), 3, "MDS, implied VMD and channel");
        assert!(t.components.iter().all(|c| c.kind.is_none()));
        assert_eq!(t.metrics[0].parent, "");
        assert_eq!(t.metrics[1].parent, "@2/@1");
    }

    #[test]
    fn messages_without_sub_ids_or_a_device_give_no_tree() {
        let plain = "MSH|^~\\&|A|B|C|D|20261205101500\rOBX|1|NM|150456^X^MDC||97|||||||||||||DEV\r";
        assert!(tree(plain).is_empty());
        let anonymous = "MSH|^~\\&|A|B|C|D|20261205101500\rOBX|1|NM|150456^X^MDC|1.1.1.1|97\r";
        assert!(tree(anonymous).is_empty());
    }

    #[test]
    fn the_raw_fingerprint_follows_the_tree_not_the_readings() {
        let fp = |t: &str| raw_fingerprint(&parse(t).expect("hl7")).expect("one MDS");
        let (id, base) = fp(MONITOR);
        assert_eq!(id, "0012A3FFFE4B5C6D");
        // Other readings at another time: the same tree.
        let later = MONITOR
            .replace("|72|", "|75|")
            .replace("20261205101500", "20261205101501");
        assert_eq!(fp(&later).1, base);
        // Another software version, status or calibration time: another tree.
        for changed in [
            MONITOR.replace("|2.4.1|", "|2.5.0|"),
            MONITOR.replace("metric-transduc-discon", "operating"),
            MONITOR.replace("20261205094500", "20261205100000"),
            MONITOR.replace("ICU^12^B", "ICU^13^B"),
        ] {
            assert_ne!(fp(&changed).1, base);
            assert_ne!(tree(&changed), tree(MONITOR));
        }
        // Two MDSs: read whole.
        let two = format!("{MONITOR}OBX|19||69965^MDC_DEV_MON_PHYSIO_MULTI_PARAM_MDS^MDC|2.0.0.0|||||||X|||||||OTHER\r");
        assert!(raw_fingerprint(&parse(&two).expect("hl7")).is_none());
    }
}
