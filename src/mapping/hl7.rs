//! HL7 v2 device messages (IHE PCD-01 `ORU^R01`, as bedside-monitor gateways send them) and
//! the `Hl7v2Content` device template type, a vitalflow extension of the IoMT device
//! mapping: a template selects OBX segments by observation identifier (OBX-3) and names the
//! value each becomes.
//!
//! ```json
//! { "templateType": "Hl7v2Content",
//!   "template": { "typeName": "bloodPressure",
//!                 "values": [ { "valueName": "systolic", "code": "150021", "system": "MDC", "required": true },
//!                             { "valueName": "diastolic", "code": "150022", "system": "MDC" } ] } }
//! ```
//!
//! Where PCD-01 puts things: the value in OBX-5 (NM as written; ST/TX decoded; CWE/CE/CNE:
//! the code, component 1), its time in OBX-14, else the OBR-7 of its order, else MSH-7; the
//! device in OBX-18 (entity identifier, e.g. an EUI-64), else the nearest OBX-18 before it
//! (the MDS segment that contains the channel); the patient in PID-3 (the first repetition's
//! ID number), the encounter in PV1-19. A code matches OBX-3's identifier or its alternate
//! identifier (components 4 and 6), with the coding system when the template gives one. An
//! OBX whose result status (OBX-11) is `X` (cannot be obtained) yields no value. The values
//! of one type, device and time in a message make one measurement; one `ORU^R01` becomes all
//! of its measurements.
//!
//! Messages are read with the wire format of `crate::hl7`.

use super::error::{child, Collector, NormalizeError};
use crate::hl7::{timestamp, Hl7};
use crate::model::Measurement;
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::sync::Arc;

/// The template type's name in a device mapping.
pub const TEMPLATE_TYPE: &str = "Hl7v2Content";

/// The `Hl7v2Content` templates of a mapping, with an index from observation identifier to
/// the template values that take it: each OBX is looked up once, instead of every template
/// comparing itself with every OBX.
#[derive(Debug, Default)]
pub(super) struct Templates {
    templates: Vec<Template>,
    /// OBX-3 identifier -> (template, value) of every value naming it.
    by_code: rustc_hash::FxHashMap<Box<str>, Vec<(usize, usize)>>,
}

impl Templates {
    pub(super) fn new(templates: Vec<Template>) -> Self {
        let mut by_code: rustc_hash::FxHashMap<Box<str>, Vec<(usize, usize)>> = Default::default();
        for (t, template) in templates.iter().enumerate() {
            for (v, value) in template.values.iter().enumerate() {
                by_code
                    .entry(value.code.as_str().into())
                    .or_default()
                    .push((t, v));
            }
        }
        Self { templates, by_code }
    }

    pub(super) fn len(&self) -> usize {
        self.templates.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.templates.is_empty()
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &Template> {
        self.templates.iter()
    }

    /// The (type, value name) of the first template value that takes OBX-3 `code` of
    /// `system` (a URI, or none).
    pub(super) fn value_for(
        &self,
        code: &str,
        system: Option<&str>,
    ) -> Option<(&Arc<str>, &Arc<str>)> {
        self.by_code.get(code)?.iter().find_map(|&(t, v)| {
            let template = &self.templates[t];
            let def = &template.values[v];
            let fits = match (&def.system, system) {
                (None, _) => true,
                (Some(d), Some(s)) => super::device_tree::system_uri(d).as_deref() == Some(s),
                (Some(_), None) => false,
            };
            fits.then_some((&template.type_name, &def.name))
        })
    }

    /// Normalizes one message, appending to `out` (left as it was on error). Measurements come
    /// in template order, then in the order of their first OBX.
    pub(super) fn normalize_into(
        &self,
        message: &Hl7<'_>,
        out: &mut Vec<Measurement>,
    ) -> Result<(), NormalizeError> {
        let obs = Observations::of(message);
        // (template, OBX, value) of every match, then in template order, OBX order kept.
        let mut matches: Vec<(usize, usize, usize)> = Vec::new();
        for (o, obx) in obs.obx.iter().enumerate() {
            for (code, system) in obx.ids {
                if code.is_empty() {
                    continue;
                }
                for &(t, v) in self.by_code.get(code).into_iter().flatten() {
                    let def = &self.templates[t].values[v];
                    if def
                        .system
                        .as_deref()
                        .is_none_or(|s| s.eq_ignore_ascii_case(system))
                    {
                        matches.push((t, o, v));
                    }
                }
            }
        }
        matches.sort_by_key(|&(t, o, _)| (t, o));
        let start = out.len();
        for (t, template) in self.templates.iter().enumerate() {
            let from = matches.partition_point(|m| m.0 < t);
            let to = matches.partition_point(|m| m.0 <= t);
            if let Err(e) = template.apply(&obs, &matches[from..to], out) {
                out.truncate(start);
                return Err(e);
            }
        }
        Ok(())
    }
}

/// One value of a template: the OBX it comes from, by observation identifier.
#[derive(Debug)]
struct ValueDef {
    name: Arc<str>,
    code: String,
    system: Option<String>,
    required: bool,
}

/// A compiled `Hl7v2Content` template.
#[derive(Debug)]
pub(super) struct Template {
    index: usize,
    type_name: Arc<str>,
    values: Vec<ValueDef>,
}

/// Compiles the `template` object of an `Hl7v2Content` entry; problems go to `c`.
pub(super) fn compile(
    index: usize,
    body: &Map<String, Value>,
    ptr: &str,
    c: &mut Collector,
) -> Option<Template> {
    for k in body.keys() {
        if k != "typeName" && k != "values" {
            c.push(
                child(ptr, k),
                format!("unknown member \"{k}\" for {TEMPLATE_TYPE} (typeName, values)"),
            );
        }
    }
    let type_name = match body.get("typeName") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => {
            c.push(
                child(ptr, "typeName"),
                "typeName must be a non-empty string",
            );
            String::new()
        }
    };
    let mut values = Vec::new();
    match body.get("values") {
        Some(Value::Array(vs)) if !vs.is_empty() => {
            for (i, v) in vs.iter().enumerate() {
                let vptr = child(&child(ptr, "values"), i);
                let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
                let (Some(name), Some(code)) = (text("valueName"), text("code")) else {
                    c.push(
                        vptr,
                        "each value needs valueName and code (the OBX-3 identifier, e.g. \"150456\"), and may give system (\"MDC\", \"LN\") and required",
                    );
                    continue;
                };
                if let Some(Value::Object(o)) = Some(v) {
                    for k in o.keys() {
                        if !["valueName", "code", "system", "required"].contains(&k.as_str()) {
                            c.push(child(&vptr, k), format!("unknown member \"{k}\""));
                        }
                    }
                }
                values.push(ValueDef {
                    name: name.into(),
                    code,
                    system: text("system"),
                    required: v.get("required").and_then(Value::as_bool).unwrap_or(false),
                });
            }
        }
        _ => c.push(
            child(ptr, "values"),
            "values must list one or more {valueName, code} to take from OBX segments",
        ),
    }
    Some(Template {
        index,
        type_name: type_name.into(),
        values,
    })
}

/// One OBX as every template sees it, read once per message.
struct Obx<'m> {
    /// Where it is: (its number among the OBX, its segment number).
    at: (usize, usize),
    /// (identifier, coding system) of OBX-3 and its alternate.
    ids: [(&'m str, &'m str); 2],
    /// Its value, or None when it has none (empty, or result status X).
    value: Option<Cow<'m, str>>,
    /// Its time (OBX-14, OBR-7, MSH-7), or the field at fault and why not.
    time: Result<DateTime<Utc>, (String, String)>,
    /// Its device (OBX-18 here or before), or None.
    device: Option<Cow<'m, str>>,
}

/// What a message says for every template: its subjects and its OBX segments.
pub(super) struct Observations<'m> {
    patient: Option<String>,
    encounter: Option<String>,
    obx: Vec<Obx<'m>>,
}

impl<'m> Observations<'m> {
    /// Reads the message's subjects and OBX segments.
    pub(super) fn of(msg: &Hl7<'m>) -> Self {
        let f = |seg: &'m str, n: usize| msg.field(seg, n);
        let c = |field: &'m str, n: usize| msg.component(field, n);
        let first = |name: &str, n: usize| {
            msg.segment(name)
                .map(|s| msg.decode(c(f(s, n), 1)).into_owned())
                .filter(|v| !v.is_empty())
        };
        let msh_time = msg
            .segment("MSH")
            .map(|s| f(s, 7))
            .filter(|t| !t.is_empty());
        let mut obr_time = None;
        let mut device: Option<Cow<'m, str>> = None;
        let mut last_time: Option<(&str, DateTime<Utc>)> = None;
        let mut obx = Vec::new();
        for (i, (name, seg)) in msg.segments().enumerate() {
            if name == "OBR" {
                obr_time = Some(f(seg, 7)).filter(|t| !t.is_empty());
                continue;
            }
            if name != "OBX" {
                continue;
            }
            let at = (obx.len() + 1, i + 1);
            let place = |n: usize| format!("OBX #{} (segment {}), OBX-{n}", at.0, at.1);
            // Every field an OBX is read for, split once (OBX-18 is the last).
            let fs: [&'m str; 19] = msg.fields(seg);
            let own = c(fs[18], 1);
            if !own.is_empty() {
                device = Some(msg.decode(own));
            }
            let id: [&'m str; 6] = msg.components(fs[3]);
            let ids = [(id[0], id[2]), (id[3], id[5])];
            let value = if c(fs[11], 1).eq_ignore_ascii_case("X") {
                None
            } else {
                let v = fs[5];
                match c(fs[2], 1) {
                    "NM" | "SN" => Some(Cow::Borrowed(v.trim())),
                    "CWE" | "CE" | "CNE" | "CF" => Some(msg.decode(c(v, 1))),
                    _ => Some(msg.decode(v.split(msg.separators.repetition).next().unwrap_or(""))),
                }
                .filter(|v| !v.is_empty())
            };
            let own_time = fs[14];
            let (when, field_at) = if !own_time.is_empty() {
                (Some(own_time), 14)
            } else if obr_time.is_some() {
                (obr_time, 0)
            } else {
                (msh_time, 7)
            };
            // The OBX of one message mostly share a time: parse each distinct one once.
            let parsed = match (when, last_time) {
                (Some(w), Some((raw, t))) if raw == w => Some(t),
                (Some(w), _) => timestamp(w),
                (None, _) => None,
            };
            if let (Some(w), Some(t)) = (when, parsed) {
                last_time = Some((w, t));
            }
            let time = match (when, parsed) {
                (_, Some(t)) => Ok(t),
                (None, _) => Err((
                    place(14),
                    "no observation time: OBX-14, OBR-7 and MSH-7 are all empty".to_string(),
                )),
                (Some(w), None) => Err((
                    match field_at {
                        14 => place(14),
                        0 => "OBR-7".to_string(),
                        _ => "MSH-7".to_string(),
                    },
                    format!("\"{w}\" is not an HL7 timestamp (YYYYMMDDHHMMSS[.SSSS][+/-ZZZZ])"),
                )),
            };
            obx.push(Obx {
                at,
                ids,
                value,
                time,
                device: device.clone(),
            });
        }
        Self {
            patient: first("PID", 3),
            encounter: first("PV1", 19),
            obx,
        }
    }
}

/// What one measurement of a message gathers.
struct Group {
    device: String,
    time: DateTime<Utc>,
    values: Vec<(Arc<str>, crate::model::Text)>,
}

impl Template {
    /// The template's `typeName`.
    pub(super) fn type_name(&self) -> &str {
        &self.type_name
    }

    fn error(&self, field: String, reason: String) -> NormalizeError {
        NormalizeError {
            template_index: self.index,
            template_type: TEMPLATE_TYPE,
            type_name: self.type_name.to_string(),
            field,
            reason,
        }
    }

    /// Appends this template's measurements of a message to `out`, from `matches`: (this
    /// template, OBX, value) in OBX order.
    fn apply(
        &self,
        obs: &Observations<'_>,
        matches: &[(usize, usize, usize)],
        out: &mut Vec<Measurement>,
    ) -> Result<(), NormalizeError> {
        let mut groups: Vec<Group> = Vec::new();
        for (i, &(_, o, _)) in matches.iter().enumerate() {
            // Each OBX once, with every value of this template it gives.
            if i > 0 && matches[i - 1].1 == o {
                continue;
            }
            let obx = &obs.obx[o];
            let Some(value) = &obx.value else { continue };
            let defs = matches[i..]
                .iter()
                .take_while(|m| m.1 == o)
                .map(|m| &self.values[m.2]);
            let time = match &obx.time {
                Ok(t) => *t,
                Err((field, reason)) => return Err(self.error(field.clone(), reason.clone())),
            };
            let Some(dev) = &obx.device else {
                return Err(self.error(
                    format!("OBX #{} (segment {}), OBX-18", obx.at.0, obx.at.1),
                    "no device identifier: neither this OBX nor one before it has OBX-18".into(),
                ));
            };
            let g = match groups
                .iter()
                .position(|g| g.device == *dev && g.time == time)
            {
                Some(p) => &mut groups[p],
                None => {
                    groups.push(Group {
                        device: dev.to_string(),
                        time,
                        values: Vec::new(),
                    });
                    groups.last_mut().expect("pushed")
                }
            };
            for d in defs {
                if !g.values.iter().any(|(n, _)| *n == d.name) {
                    g.values.push((d.name.clone(), value.as_ref().into()));
                }
            }
        }
        for g in groups {
            if let Some(missing) = self
                .values
                .iter()
                .find(|v| v.required && !g.values.iter().any(|(n, _)| *n == v.name))
            {
                return Err(self.error(
                    format!("values[{}]", missing.name),
                    format!(
                        "required value missing: no OBX with OBX-3 {} for device {} at {}",
                        missing.code,
                        crate::privacy::tag(&g.device),
                        crate::time::format_rfc3339(&g.time)
                    ),
                ));
            }
            out.push(Measurement {
                type_name: self.type_name.clone(),
                device_id: g.device.into(),
                patient_id: obs.patient.as_deref().map(Into::into),
                encounter_id: obs.encounter.as_deref().map(Into::into),
                correlation_id: None,
                occurrence_time: g.time,
                properties: g.values,
                received_ms: None,
                source: None,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hl7::{parse, text};
    use crate::mapping::DeviceMapping;
    use std::path::Path;

    fn pcd01() -> DeviceMapping {
        DeviceMapping::from_file(Path::new("templates/ihe-pcd01/devicecontent.json"))
            .expect("the PCD-01 templates load")
    }

    fn example() -> String {
        std::fs::read_to_string("datasets/ihe-pcd01/oru-r01.hl7").expect("example")
    }

    fn run(mapping: &DeviceMapping, text: &str) -> Result<Vec<Measurement>, NormalizeError> {
        let msg = parse(text).expect("parses");
        let mut out = Vec::new();
        mapping.normalize_hl7_into(&msg, &mut out).map(|()| out)
    }

    fn values(m: &Measurement) -> Vec<(&str, &str)> {
        m.properties
            .iter()
            .map(|(n, v)| (&**n, v.as_str()))
            .collect()
    }

    #[test]
    fn payloads_are_hl7_with_or_without_mllp_framing_and_json_is_not() {
        let framed = b"\x0bMSH|^~\\&|A\rPID|||1\r\x1c\r";
        assert_eq!(text(framed).as_deref(), Some("MSH|^~\\&|A\rPID|||1"));
        assert_eq!(text(b"  MSH|^~\\&|A\n").as_deref(), Some("MSH|^~\\&|A"));
        assert_eq!(text(b"{\"heartRate\": 72}"), None);
        assert_eq!(text(b"PID|||1"), None, "an HL7 message starts with MSH");
    }

    #[test]
    fn one_oru_r01_becomes_all_of_its_measurements() {
        let ms = run(&pcd01(), &example()).expect("normalizes");
        let at = |s: &str| crate::time::parse_timestamp(s).expect("time");
        let by_type: Vec<(&str, Vec<(&str, &str)>)> =
            ms.iter().map(|m| (&*m.type_name, values(m))).collect();
        assert_eq!(
            by_type,
            vec![
                ("heartRate", vec![("hr", "72")]),
                ("pulseRate", vec![("pr", "74")]),
                ("spo2", vec![("spo2", "97")]),
                ("respiratoryRate", vec![("rr", "16")]),
                (
                    "bloodPressure",
                    vec![("systolic", "118"), ("diastolic", "76"), ("mean", "90")]
                ),
                ("bodyTemperature", vec![("temp", "37.2")]),
            ],
            "the OBX with result status X (cannot be obtained) gives no second temperature"
        );
        for m in &ms {
            assert_eq!(m.device_id, "0012A3FFFE4B5C6D", "OBX-18 of the MDS above");
            assert_eq!(m.patient_id.as_deref(), Some("PAT-1001"));
            assert_eq!(m.encounter_id.as_deref(), Some("ENC-2001"));
        }
        assert_eq!(ms[0].occurrence_time, at("2026-11-21T10:00:00Z"));
        assert_eq!(ms[4].occurrence_time, at("2026-11-21T09:59:00Z"), "OBX-14");
    }

    #[test]
    fn custom_delimiters_escapes_repetitions_and_times_from_obr_or_msh() {
        let mapping = DeviceMapping::from_value(&serde_json::json!({
            "templateType": "CollectionContent",
            "template": [{"templateType": "Hl7v2Content", "template": {
                "typeName": "note", "values": [{"valueName": "text", "code": "X1"}]}},
                {"templateType": "Hl7v2Content", "template": {
                "typeName": "heartRate", "values": [{"valueName": "hr", "code": "8867-4", "system": "LN"}]}}]
        }))
        .expect("templates");
        // Fields by '#', components by '$', repetitions by '*', escape '@', subcomponents '%'.
        let text = "MSH#$*@%#GW####202611211000-0030\n\
                    PID###P-9*OTHER\n\
                    OBR#1######20261121103000+0100\n\
                    OBX#1#ST#X1$note$LOCAL##a@F@b@S@c#############DEV-7$EUI-64\n\
                    OBX#2#NM#147842$MDC_ECG_HEART_RATE$MDC$8867-4$Heart rate$LN##61";
        let ms = run(&mapping, text).expect("normalizes");
        assert_eq!(values(&ms[0]), vec![("text", "a#b$c")], "escapes decoded");
        let msg = parse("MSH|^~\\&|A\\X4F4B\\ \\H\\bold\\N\\ \\E\\").expect("parses");
        let msh = msg.segment("MSH").expect("MSH");
        assert_eq!(
            msg.decode(msg.field(msh, 3)),
            "AOK bold \\",
            "hex, formatting, escape"
        );
        assert_eq!(msg.field(msh, 1), "|");
        assert_eq!(msg.field(msh, 2), "^~\\&");
        assert_eq!(ms[0].patient_id.as_deref(), Some("P-9"), "first repetition");
        let t = |s: &str| crate::time::parse_timestamp(s).expect("time");
        assert_eq!(
            ms[0].occurrence_time,
            t("2026-11-21T09:30:00Z"),
            "OBR-7, +01:00"
        );
        assert_eq!(
            values(&ms[1]),
            vec![("hr", "61")],
            "matched by the alternate identifier"
        );
        assert_eq!(ms[1].device_id, "DEV-7", "the nearest OBX-18 before it");
        let no_obr = text.replace("OBR#1######20261121103000+0100\n", "");
        let ms = run(&mapping, &no_obr).expect("normalizes");
        assert_eq!(
            ms[0].occurrence_time,
            t("2026-11-21T10:30:00Z"),
            "MSH-7, -00:30"
        );
    }

    #[test]
    fn failures_name_the_segment_and_field() {
        let m = pcd01();
        let bad_time =
            example().replace("|R|||20261121100000+0000\nOBX|8", "|R|||2026-11-21\nOBX|8");
        let e = run(&m, &bad_time).expect_err("bad OBX-14");
        assert_eq!(e.field, "OBX #7 (segment 11), OBX-14");
        assert!(
            e.reason.contains("\"2026-11-21\" is not an HL7 timestamp"),
            "{e}"
        );
        let no_device = example().replace("|||||||0012A3FFFE4B5C6D^EUI-64", "");
        let e = run(&m, &no_device).expect_err("no OBX-18");
        assert!(
            e.field.ends_with("OBX-18") && e.reason.contains("no device identifier"),
            "{e}"
        );
        let no_systolic = example().replace("150021^MDC_PRESS_BLD_NONINV_SYS", "150099^OTHER");
        let e = run(&m, &no_systolic).expect_err("systolic is required");
        assert_eq!(
            (e.type_name.as_str(), e.field.as_str()),
            ("bloodPressure", "values[systolic]")
        );
        let e = parse("MSH|^~").expect_err("truncated MSH");
        assert!(e.contains("segment 1: MSH-2 \"^~\""), "{e}");
        let e = parse("MSH|^~\\&|A\r\u{1}\u{2}binary\rOBX|1").expect_err("garbage segment");
        assert!(
            e.contains("segment 2:") && e.contains("segment name"),
            "{e}"
        );
        let e = parse("MSH1^~\\&").expect_err("alphanumeric separator");
        assert!(e.contains("MSH-1"), "{e}");
    }

    #[test]
    fn templates_are_checked_with_pointers() {
        let e = DeviceMapping::from_value(&serde_json::json!({
            "templateType": "CollectionContent",
            "template": [{"templateType": "Hl7v2Content", "template": {
                "typeName": "x", "values": [{"valueName": "v"}], "deviceIdExpression": "$.id"}}]
        }))
        .expect_err("invalid");
        let text = e.to_string();
        assert!(
            text.contains("/template/0/template/values/0") && text.contains("code"),
            "{text}"
        );
        assert!(text.contains("deviceIdExpression"), "{text}");
    }

    #[test]
    fn timestamps_keep_the_sign_of_offsets_under_an_hour() {
        let t = |s: &str| timestamp(s).map(|t| crate::time::format_rfc3339(&t));
        assert_eq!(
            t("20261121100000-0030").as_deref(),
            Some("2026-11-21T10:30:00Z")
        );
        assert_eq!(
            t("20261121100000.25+0100").as_deref(),
            Some("2026-11-21T09:00:00.250Z")
        );
        assert_eq!(t("202611211000").as_deref(), Some("2026-11-21T10:00:00Z"));
        assert_eq!(t("2026112"), None);
        assert_eq!(t("20261321"), None, "month 13");
    }
}
