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
//! Parsing (delimiters from MSH-1/2, repetitions, components, escape sequences, segments
//! ended by CR or LF) is `hl7-parser`'s; timestamps are read here, because its conversion
//! drops the sign of a negative offset under one hour (`-0030`).

use super::device::NormalizeError;
use super::error::{child, Collector};
use crate::model::Measurement;
use chrono::{DateTime, FixedOffset, NaiveDate, TimeZone, Utc};
use hl7_parser::message::{Field, Segment, Separators};
use hl7_parser::Message;
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::sync::Arc;

/// The template type's name in a device mapping.
pub const TEMPLATE_TYPE: &str = "Hl7v2Content";

/// MLLP framing: start block (VT), end block (FS) and the carriage return after it.
const START_BLOCK: u8 = 0x0b;
const END_BLOCK: u8 = 0x1c;

/// The HL7 text of a payload when it is an HL7 v2 message (it starts with `MSH`, with or
/// without MLLP framing); None for anything else (JSON).
pub fn text(payload: &[u8]) -> Option<Cow<'_, str>> {
    let mut p = payload.trim_ascii_start();
    if p.first() == Some(&START_BLOCK) {
        p = &p[1..];
    }
    if !p.starts_with(b"MSH") {
        return None;
    }
    let end = p.iter().position(|b| *b == END_BLOCK).unwrap_or(p.len());
    let p = p[..end].trim_ascii_end();
    // HL7 v2 defaults to ASCII; 8-bit bytes of other charsets survive as replacement
    // characters rather than failing the message.
    Some(String::from_utf8_lossy(p))
}

/// Parses HL7 v2 text; an error names the segment and where in it parsing stopped.
pub fn parse(text: &str) -> Result<Message<'_>, String> {
    Message::parse_with_lenient_newlines(text, true).map_err(|e| match e {
        hl7_parser::parser::ParseError::FailedToParse { position, .. } => {
            let before = &text[..position.min(text.len())];
            let segment = before.split(['\r', '\n']).filter(|s| !s.is_empty()).count().max(1);
            let line = text.split(['\r', '\n']).filter(|s| !s.is_empty()).nth(segment - 1);
            let name = line.and_then(|l| l.get(..3)).unwrap_or("?");
            format!("not an HL7 v2 message: segment {segment} ({name}) cannot be parsed near character {position}")
        }
        e => format!("not an HL7 v2 message: {e}"),
    })
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

/// A field's first repetition, component `n`, escape sequences decoded.
fn component(f: Option<&Field<'_>>, n: usize, seps: &Separators) -> String {
    f.and_then(|f| f.component(n))
        .map(|c| c.display(seps).to_string())
        .unwrap_or_default()
}

/// Field `n` of a segment, when present and not empty.
fn field<'a, 'm>(s: &'a Segment<'m>, n: usize) -> Option<&'a Field<'m>> {
    s.field(n).filter(|f| !f.raw_value().is_empty())
}

/// An HL7 DTM (`YYYY[MM[DD[HH[MM[SS[.S...]]]]]][+/-ZZZZ]`); without an offset it is UTC.
pub fn timestamp(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    let (body, offset) = match s.find(['+', '-']) {
        Some(i) => (&s[..i], Some(&s[i..])),
        None => (s, None),
    };
    let (digits, fraction) = body.split_once('.').unwrap_or((body, ""));
    if digits.len() < 4 || digits.len() % 2 != 0 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let num = |a: usize, b: usize, default: u32| -> u32 {
        digits
            .get(a..b)
            .and_then(|d| d.parse().ok())
            .unwrap_or(default)
    };
    let date = NaiveDate::from_ymd_opt(num(0, 4, 0) as i32, num(4, 6, 1), num(6, 8, 1))?;
    let mut micros = 0u32;
    if !fraction.is_empty() {
        if fraction.len() > 6 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        micros = format!("{fraction:0<6}").parse().ok()?;
    }
    let time = date.and_hms_micro_opt(num(8, 10, 0), num(10, 12, 0), num(12, 14, 0), micros)?;
    let seconds = match offset {
        None => 0,
        Some(o) if o.len() == 5 && o[1..].bytes().all(|b| b.is_ascii_digit()) => {
            let v = o[1..3].parse::<i32>().ok()? * 3600 + o[3..5].parse::<i32>().ok()? * 60;
            if o.starts_with('-') {
                -v
            } else {
                v
            }
        }
        Some(_) => return None,
    };
    let tz = FixedOffset::east_opt(seconds)?;
    tz.from_local_datetime(&time)
        .single()
        .map(|t| t.with_timezone(&Utc))
}

/// What one measurement of a message gathers.
struct Group {
    device: String,
    time: DateTime<Utc>,
    values: Vec<(Arc<str>, String)>,
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

    /// The values of `obx` this template takes, by value name.
    fn matches<'t>(&'t self, obx: &Segment<'_>, seps: &Separators) -> Vec<&'t ValueDef> {
        let id = field(obx, 3);
        let pairs = [
            (component(id, 1, seps), component(id, 3, seps)),
            (component(id, 4, seps), component(id, 6, seps)),
        ];
        self.values
            .iter()
            .filter(|v| {
                pairs.iter().any(|(code, system)| {
                    !code.is_empty()
                        && *code == v.code
                        && v.system
                            .as_deref()
                            .is_none_or(|s| s.eq_ignore_ascii_case(system))
                })
            })
            .collect()
    }

    /// Appends this template's measurements of `msg` to `out`.
    pub(super) fn apply(
        &self,
        msg: &Message<'_>,
        out: &mut Vec<Measurement>,
    ) -> Result<(), NormalizeError> {
        let seps = &msg.separators;
        let first = |name: &str, n: usize| {
            msg.segment(name)
                .and_then(|s| field(s, n))
                .map(|f| component(Some(f), 1, seps))
                .filter(|v| !v.is_empty())
        };
        let patient = first("PID", 3);
        let encounter = first("PV1", 19);
        let msh_time = msg
            .segment("MSH")
            .and_then(|s| field(s, 7))
            .map(|f| f.raw_value());
        let mut obr_time = None;
        let mut device: Option<String> = None;
        let mut groups: Vec<Group> = Vec::new();
        let mut nth_obx = 0;
        for (i, seg) in msg.segments().enumerate() {
            match seg.name {
                "OBR" => obr_time = field(seg, 7).map(|f| f.raw_value()),
                "OBX" => nth_obx += 1,
                _ => continue,
            }
            if seg.name != "OBX" {
                continue;
            }
            let at = |n: usize| format!("OBX #{nth_obx} (segment {}), OBX-{n}", i + 1);
            let own = component(field(seg, 18), 1, seps);
            if !own.is_empty() {
                device = Some(own);
            }
            if component(field(seg, 11), 1, seps).eq_ignore_ascii_case("X") {
                continue;
            }
            let defs = self.matches(seg, seps);
            if defs.is_empty() {
                continue;
            }
            let value = match component(field(seg, 2), 1, seps)
                .to_ascii_uppercase()
                .as_str()
            {
                "NM" | "SN" => field(seg, 5).map(|f| f.raw_value().trim().to_string()),
                "CWE" | "CE" | "CNE" | "CF" => Some(component(field(seg, 5), 1, seps)),
                _ => field(seg, 5)
                    .and_then(|f| f.repeat(1))
                    .map(|r| r.display(seps).to_string()),
            }
            .unwrap_or_default();
            if value.is_empty() {
                continue;
            }
            let (raw_time, n) = match field(seg, 14) {
                Some(f) => (Some(f.raw_value()), 14),
                None => match obr_time {
                    Some(t) => (Some(t), 0),
                    None => (msh_time, 7),
                },
            };
            let where_time = match n {
                14 => at(14),
                0 => "OBR-7".to_string(),
                _ => "MSH-7".to_string(),
            };
            let Some(raw_time) = raw_time else {
                return Err(self.error(
                    at(14),
                    "no observation time: OBX-14, OBR-7 and MSH-7 are all empty".into(),
                ));
            };
            let Some(time) = timestamp(raw_time) else {
                return Err(self.error(
                    where_time,
                    format!(
                        "\"{raw_time}\" is not an HL7 timestamp (YYYYMMDDHHMMSS[.SSSS][+/-ZZZZ])"
                    ),
                ));
            };
            let Some(dev) = device.clone() else {
                return Err(self.error(
                    at(18),
                    "no device identifier: neither this OBX nor one before it has OBX-18".into(),
                ));
            };
            let g = match groups
                .iter_mut()
                .position(|g| g.device == dev && g.time == time)
            {
                Some(p) => &mut groups[p],
                None => {
                    groups.push(Group {
                        device: dev,
                        time,
                        values: Vec::new(),
                    });
                    groups.last_mut().expect("pushed")
                }
            };
            for d in defs {
                if !g.values.iter().any(|(n, _)| *n == d.name) {
                    g.values.push((d.name.clone(), value.clone()));
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
                device_id: g.device,
                patient_id: patient.clone(),
                encounter_id: encounter.clone(),
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
            example().replace("|R|||20261121100000+0000\nOBX|4", "|R|||2026-11-21\nOBX|4");
        let e = run(&m, &bad_time).expect_err("bad OBX-14");
        assert_eq!(e.field, "OBX #3 (segment 7), OBX-14");
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
        assert!(
            e.contains("segment 1 (MSH)") || e.contains("incomplete"),
            "{e}"
        );
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
