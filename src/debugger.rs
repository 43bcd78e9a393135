//! The mapping debugger behind `vitalflow normalize` and `vitalflow validate`: pure functions
//! from inputs to a report, so the CLI only does I/O and the tests can call them directly.

use crate::fhir::groups::build_groups;
use crate::fhir::observation::{self, Subjects};
use crate::mapping::{DeviceMapping, FhirMapping, NormalizeError, TemplateErrors};
use crate::model::Measurement;
use serde_json::{json, Value};

/// Outcome of `normalize` for one message.
#[derive(Debug)]
pub struct Normalized {
    /// Measurements in template, then match order.
    pub measurements: Vec<Measurement>,
    /// Observations the measurements become (with a FHIR mapping).
    pub observations: Option<Vec<Value>>,
    /// The Device and DeviceMetric resources of the devices the message describes (an IHE
    /// PCD-01 containment tree), parents first.
    pub devices: Vec<Value>,
}

/// Why `normalize` produced no result.
#[derive(Debug)]
pub enum DebugError {
    /// A mapping file is invalid.
    Template(TemplateErrors),
    /// The message cannot be normalized or mapped.
    Message {
        /// What is wrong.
        reason: String,
        /// The template at fault, when one is.
        template: Option<Value>,
    },
}

impl DebugError {
    /// The `{"error": {...}}` object of `--format json`.
    pub fn to_json(&self) -> Value {
        match self {
            DebugError::Template(errors) => json!({"error": {
                "kind": "template",
                "reason": errors.0.first().map(|e| e.to_string()).unwrap_or_default(),
                "template": errors.0.first().map(template_of),
                "errors": errors.0,
            }}),
            DebugError::Message { reason, template } => json!({"error": {
                "kind": "message",
                "reason": reason,
                "template": template,
            }}),
        }
    }
}

impl std::fmt::Display for DebugError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DebugError::Template(e) => write!(f, "{e}"),
            DebugError::Message { reason, .. } => write!(f, "{reason}"),
        }
    }
}

fn template_of(e: &crate::mapping::TemplateError) -> Value {
    json!({
        "file": e.file,
        "line": e.line,
        "pointer": e.pointer,
        "index": e.template_index,
        "templateType": e.template_type,
        "typeName": e.type_name,
    })
}

impl From<NormalizeError> for DebugError {
    fn from(e: NormalizeError) -> Self {
        DebugError::Message {
            reason: e.to_string(),
            template: Some(json!({
                "index": e.template_index,
                "templateType": e.template_type,
                "typeName": e.type_name,
                "field": e.field,
            })),
        }
    }
}

/// Normalizes one event and, with a FHIR mapping, builds the Observations the job would write
/// (subject and device as logical references by identifier: no FHIR server resolves them here).
pub fn normalize(
    device: &DeviceMapping,
    fhir: Option<&FhirMapping>,
    event: &Value,
) -> Result<Normalized, DebugError> {
    let mut measurements = device.normalize(event)?;
    // Device attributes a template names (`deviceAttributes`) describe the device, not a
    // reading: shown as its Device, as the job writes it.
    let devices = crate::mapping::device_tree::take_json_attributes(&mut measurements)
        .iter()
        .flat_map(|t| crate::fhir::device::resources(t, None))
        .collect();
    let observations = fhir.map(|f| observations(f, &measurements)).transpose()?;
    Ok(Normalized {
        measurements,
        observations,
        devices,
    })
}

/// As [`normalize`], for an HL7 v2 message (IHE PCD-01 `ORU^R01`) and the device mapping's
/// `Hl7v2Content` templates.
pub fn normalize_hl7(
    device: &DeviceMapping,
    fhir: Option<&FhirMapping>,
    text: &str,
) -> Result<Normalized, DebugError> {
    let mut measurements = Vec::new();
    device
        .normalize_hl7_text(text, &mut measurements)
        .map_err(|e| match e {
            crate::mapping::Hl7Error::Template(e) => DebugError::from(e),
            e => DebugError::Message {
                reason: e.to_string(),
                template: None,
            },
        })?;
    let observations = fhir.map(|f| observations(f, &measurements)).transpose()?;
    let devices = crate::hl7::parse(text)
        .map(|msg| {
            crate::mapping::device_tree::from_pcd01(&msg)
                .iter()
                .flat_map(|t| crate::fhir::device::resources(t, None))
                .collect()
        })
        .unwrap_or_default();
    Ok(Normalized {
        measurements,
        observations,
        devices,
    })
}

/// One line per Device or DeviceMetric resource, for a table: (resource, type, identifier,
/// what it says, parent).
pub fn device_rows(resources: &[Value]) -> Vec<[String; 5]> {
    let text = |v: &Value| v.as_str().map(str::to_string);
    let concept = |v: &Value| {
        v.pointer("/coding/0/display")
            .or_else(|| v.pointer("/coding/0/code"))
            .and_then(Value::as_str)
            .unwrap_or("-")
            .to_string()
    };
    let short = |r: &Value| {
        r.as_str()
            .and_then(|r| r.split('/').nth(1))
            .map(|id| format!("{}…", &id[..id.len().min(8)]))
    };
    resources
        .iter()
        .map(|r| {
            let kind = r["resourceType"].as_str().unwrap_or("-");
            let id = r["id"].as_str().unwrap_or("-");
            let mut said = Vec::new();
            for (label, ptr) in [
                ("manufacturer", "/manufacturer"),
                ("model", "/modelNumber"),
                ("serial", "/serialNumber"),
                ("bed", "/location/display"),
                ("unit", "/unit/coding/0/display"),
                ("status", "/operationalStatus"),
                ("category", "/category"),
                ("calibration", "/calibration/0/state"),
                ("calibrated", "/calibration/0/time"),
            ] {
                if let Some(v) = r.pointer(ptr).and_then(text) {
                    said.push(format!("{label} {v}"));
                }
            }
            for v in r["version"].as_array().into_iter().flatten() {
                let label = match v.pointer("/type/coding/0/code").and_then(Value::as_str) {
                    Some("531974") => "hardware".to_string(),
                    Some("531975") => "software".to_string(),
                    Some("531976") => "firmware".to_string(),
                    _ => concept(&v["type"]),
                };
                said.push(format!("{label} {}", v["value"].as_str().unwrap_or("")));
            }
            [
                format!("{kind}/{}…", &id[..id.len().min(8)]),
                concept(&r["type"]),
                r.pointer("/identifier/0/value")
                    .and_then(text)
                    .unwrap_or_else(|| "-".into()),
                said.join(", "),
                short(&r["parent"]["reference"]).unwrap_or_else(|| "-".into()),
            ]
        })
        .collect()
}

/// Groups measurements by (type, patient, device, encounter) as the job does, then builds one
/// Observation per observation group.
pub fn observations(
    fhir: &FhirMapping,
    measurements: &[Measurement],
) -> Result<Vec<Value>, DebugError> {
    let mut keys: Vec<(&str, Option<&str>, &str, Option<&str>)> = Vec::new();
    for m in measurements {
        let k = (
            &*m.type_name,
            m.patient_id.as_deref(),
            m.device_id.as_str(),
            m.encounter_id.as_deref(),
        );
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    let mut out = Vec::new();
    for (type_name, patient, device, encounter) in keys {
        let tpl = fhir.get(type_name).ok_or_else(|| DebugError::Message {
            reason: format!("no FHIR template for measurement type \"{type_name}\""),
            template: Some(json!({"typeName": type_name})),
        })?;
        let members: Vec<Measurement> = measurements
            .iter()
            .filter(|m| {
                &*m.type_name == type_name
                    && m.patient_id.as_deref() == patient
                    && m.device_id == device
                    && m.encounter_id.as_deref() == encounter
            })
            .cloned()
            .collect();
        let fhir_error = |e: crate::fhir::FhirDataError| DebugError::Message {
            reason: format!("FHIR mapping for \"{type_name}\": {e}"),
            template: Some(json!({"typeName": tpl.type_name})),
        };
        let subjects = Subjects {
            patient: patient.unwrap_or(""),
            device,
            encounter,
            resolved: false,
        };
        for g in build_groups(tpl.period, &members).map_err(fhir_error)? {
            out.push(observation::build(tpl, type_name, &g, &subjects).map_err(fhir_error)?);
        }
    }
    Ok(out)
}

/// What the browser debugger shows for pasted templates and a message: the JSON of
/// `vitalflow normalize --format json` (`measurements` and `observations`, or `error`).
/// `fhir_text` may be empty (no FHIR mapping). The message is HL7 v2 when it reads as one,
/// otherwise a JSON device message wrapped as the job wraps Kafka records.
pub fn debug_texts(device_text: &str, fhir_text: &str, message: &[u8]) -> Value {
    let outcome = (|| {
        let device = DeviceMapping::from_text(device_text, Some("device template"))
            .map_err(DebugError::Template)?;
        let fhir = (!fhir_text.trim().is_empty())
            .then(|| FhirMapping::from_text(fhir_text, Some("FHIR template")))
            .transpose()
            .map_err(DebugError::Template)?;
        if let Some(text) = crate::hl7::text(message) {
            return normalize_hl7(&device, fhir.as_ref(), &text);
        }
        let text = String::from_utf8_lossy(message);
        let body: Value = serde_json::from_str(&text).map_err(|e| DebugError::Message {
            reason: format!(
                "message: invalid JSON at line {}, column {}: {e}",
                e.line(),
                e.column()
            ),
            template: None,
        })?;
        let event = crate::event::wrap(body, Default::default(), Default::default());
        normalize(&device, fhir.as_ref(), &event)
    })();
    match outcome {
        Ok(n) => report_json(&n),
        Err(e) => e.to_json(),
    }
}

/// The `--format json` report of a normalized message.
pub fn report_json(n: &Normalized) -> Value {
    let mut out = json!({
        "measurements": n.measurements.iter().map(|m| m.to_json()).collect::<Vec<_>>()
    });
    if let Some(obs) = &n.observations {
        out["observations"] = Value::Array(obs.clone());
    }
    if !n.devices.is_empty() {
        out["devices"] = Value::Array(n.devices.clone());
    }
    out
}
