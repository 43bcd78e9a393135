//! The normalize stage: raw message → measurements, or a dead letter saying why not.
//!
//! A message is taken whole or not at all: when any of its measurements cannot become an
//! Observation (no FHIR template for its type, no patient, a timestamp far in the future),
//! the whole message is dead-lettered, so that fixing and replaying it cannot duplicate the
//! part that went through.

use crate::mapping::{DeviceMapping, FhirMapping};
use crate::mapping::{Hl7Error, MessageError};
use crate::model::Measurement;
use crate::model::RawMessage;
use crate::sinks::dead_letter::DeadLetter;
use chrono::{DateTime, Utc};
use serde_json::json;

/// Normalizes one message into `out`, or says why it cannot be.
pub fn normalize(
    device: &DeviceMapping,
    fhir: &FhirMapping,
    max_future: chrono::Duration,
    now: DateTime<Utc>,
    message: RawMessage,
    out: &mut Vec<Measurement>,
) -> Result<(), Box<DeadLetter>> {
    normalize_seeing(device, fhir, max_future, now, message, out, &mut |_| {})
}

/// As [`normalize`], showing `seen` an HL7 v2 message once parsed (what else the job reads
/// of it, its device tree, is read from the same parse).
pub fn normalize_seeing(
    device: &DeviceMapping,
    fhir: &FhirMapping,
    max_future: chrono::Duration,
    now: DateTime<Utc>,
    message: RawMessage,
    out: &mut Vec<Measurement>,
    seen: &mut dyn FnMut(&crate::hl7::Hl7<'_>),
) -> Result<(), Box<DeadLetter>> {
    let dead = |message: RawMessage, stage, error: String, template| {
        Box::new(DeadLetter {
            message,
            stage,
            error,
            template,
        })
    };
    let start = out.len();
    let template_of = |e: &crate::mapping::NormalizeError| {
        Some(json!({
            "index": e.template_index,
            "templateType": e.template_type,
            "typeName": e.type_name,
            "field": e.field,
        }))
    };
    // HL7 v2 (a gateway's PCD-01 message) or JSON: each has templates of its own.
    let mapped = match crate::hl7::text(&message.payload) {
        Some(text) => (|| {
            if !device.reads_hl7() {
                return device.normalize_hl7_text(&text, out);
            }
            let parsed = crate::hl7::parse(&text).map_err(Hl7Error::Parse)?;
            seen(&parsed);
            device.normalize_hl7(&parsed, out)
        })()
        .map_err(|e| match e {
            Hl7Error::Parse(e) => ("parse", e, None),
            Hl7Error::Template(e) => ("normalize", e.to_string(), template_of(&e)),
            Hl7Error::Unmatched(e) => ("normalize", e.to_string(), None),
        }),
        None => device.normalize_raw(&message, out).map_err(|e| match e {
            MessageError::Template(e) => ("normalize", e.to_string(), template_of(&e)),
            MessageError::Parse(e) => (
                "parse",
                format!(
                    "malformed JSON at line {} column {}: {e}",
                    e.line(),
                    e.column()
                ),
                None,
            ),
        }),
    };
    if let Err((stage, error, template)) = mapped {
        out.truncate(start);
        return Err(dead(message, stage, error, template));
    }
    if out.len() == start {
        return Err(dead(
            message,
            "normalize",
            "no template of the device mapping matches the message (typeMatchExpression)".into(),
            None,
        ));
    }
    let limit = now + max_future;
    let problem = out[start..].iter().find_map(|m| {
        let tpl = || Some(json!({"typeName": &*m.type_name}));
        if fhir.get(&m.type_name).is_none() {
            return Some((format!("no FHIR template for measurement type \"{}\"", m.type_name), tpl()));
        }
        if m.patient_id.is_none() {
            return Some((
                format!("measurement of type \"{}\" has no patient id (patientIdExpression, or PID-3 for HL7 v2): the Observation needs a subject", m.type_name),
                tpl(),
            ));
        }
        if m.occurrence_time > limit {
            let ahead = (m.occurrence_time - now).to_std().unwrap_or_default();
            return Some((
                format!(
                    "timestamp {} is {} ahead of the wall clock (window.max_future_skew = {})",
                    crate::time::format_rfc3339(&m.occurrence_time),
                    humantime::format_duration(std::time::Duration::from_secs(ahead.as_secs())),
                    humantime::format_duration(max_future.to_std().unwrap_or_default()),
                ),
                tpl(),
            ));
        }
        None
    });
    if let Some((error, template)) = problem {
        out.truncate(start);
        return Err(dead(message, "validate", error, template));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Origin;
    use std::path::Path;

    fn mappings() -> (DeviceMapping, FhirMapping) {
        (
            DeviceMapping::from_file(Path::new("templates/bedside-monitor/devicecontent.json"))
                .expect("device"),
            FhirMapping::from_file(Path::new("templates/bedside-monitor/fhirmapping.json"))
                .expect("fhir"),
        )
    }

    fn msg(payload: &str) -> RawMessage {
        RawMessage {
            payload: payload.as_bytes().to_vec(),
            key: None,
            headers: vec![("source".into(), b"ward-3".to_vec())],
            origin: Origin {
                topic: "vitals".into(),
                partition: 2,
                offset: 41,
                timestamp_ms: None,
            },
        }
    }

    fn run(payload: &str) -> Result<Vec<Measurement>, Box<DeadLetter>> {
        let (d, f) = mappings();
        let now = crate::time::parse_timestamp("2026-11-21T10:00:00Z").expect("now");
        let mut out = Vec::new();
        normalize(
            &d,
            &f,
            chrono::Duration::minutes(5),
            now,
            msg(payload),
            &mut out,
        )
        .map(|_| out)
    }

    #[test]
    fn a_reading_becomes_measurements() {
        let ms = run(r#"{"deviceId":"BM-1","patientId":"P-1","timestamp":"2026-11-21T09:59:00Z","heartRate":71,"spo2":97}"#).expect("ok");
        assert_eq!(ms.len(), 2);
    }

    #[test]
    fn bad_messages_are_dead_lettered_with_the_reason() {
        let e = run(r#"{"deviceId":"BM-1","heartRate":"#).expect_err("malformed");
        assert_eq!(e.stage, "parse");
        assert!(
            e.error.starts_with("malformed JSON at line 1 column"),
            "{}",
            e.error
        );
        assert_eq!(
            e.message.payload,
            br#"{"deviceId":"BM-1","heartRate":"#.to_vec(),
            "original bytes kept"
        );

        let e = run(r#"{"deviceId":"BM-1","patientId":"P-1","heartRate":71}"#)
            .expect_err("no timestamp");
        assert_eq!(e.stage, "normalize");
        assert!(e.error.contains("timestampExpression"), "{}", e.error);
        assert_eq!(
            e.template.as_ref().and_then(|t| t["typeName"].as_str()),
            Some("heartRate")
        );

        let e = run(r#"{"deviceId":"BM-1","patientId":"P-1","timestamp":"2026-11-21T13:00:00Z","heartRate":71}"#).expect_err("future");
        assert_eq!(e.stage, "validate");
        assert!(
            e.error
                .contains("is 3h ahead of the wall clock (window.max_future_skew = 5m)"),
            "{}",
            e.error
        );

        let e = run(r#"{"deviceId":"BM-1","timestamp":"2026-11-21T09:00:00Z","heartRate":71}"#)
            .expect_err("no patient");
        assert!(e.error.contains("no patient id"), "{}", e.error);

        let e = run(r#"{"deviceId":"BM-1","note":"hello"}"#).expect_err("no template");
        assert!(
            e.error
                .contains("no template of the device mapping matches"),
            "{}",
            e.error
        );
    }

    #[test]
    fn an_hl7_v2_message_goes_through_its_own_templates_and_is_dead_lettered_without_them() {
        let pcd01 = |f: &str| Path::new("templates/ihe-pcd01").join(f);
        let d = DeviceMapping::from_file(&pcd01("devicecontent.json")).expect("device");
        let f = FhirMapping::from_file(&pcd01("fhirmapping.json")).expect("fhir");
        let text = std::fs::read_to_string("datasets/ihe-pcd01/oru-r01.hl7").expect("example");
        // As a monitor gateway sends it: MLLP framing, segments ended by CR.
        let framed = format!("\x0b{}\x1c\r", text.trim_end().replace('\n', "\r"));
        let now = crate::time::parse_timestamp("2026-11-21T10:00:00Z").expect("now");
        let mut out = Vec::new();
        let skew = chrono::Duration::minutes(5);
        normalize(&d, &f, skew, now, msg(&framed), &mut out).expect("normalizes");
        assert_eq!(out.len(), 6, "every vital of the ORU^R01");
        let e = run(&framed).expect_err("a JSON-only mapping");
        assert_eq!(e.stage, "normalize");
        assert!(e.error.contains("no Hl7v2Content template"), "{}", e.error);
        let garbled = "MSH|^~\\&|GW|||||||\rOBX|1|NM|150456^^MDC||97";
        let mut out = Vec::new();
        let e = normalize(&d, &f, skew, now, msg(garbled), &mut out).expect_err("no time");
        assert!(
            e.error.contains("OBX-14") && e.error.contains("no observation time"),
            "{}",
            e.error
        );
    }
}
