//! The normalized measurement: what a device mapping produces from one device message.

use chrono::{DateTime, Utc};
use serde::Serialize;
use std::sync::Arc;

/// One normalized reading: a type (the template's `typeName`), ids and named values.
///
/// Type and value names are shared with the compiled template (`Arc<str>`), so producing a
/// measurement allocates only for the values read from the message.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Measurement {
    /// The template's `typeName`; selects the FHIR mapping.
    pub type_name: Arc<str>,
    /// Device identifier (always present).
    pub device_id: String,
    /// Patient identifier, when the template extracts one.
    pub patient_id: Option<String>,
    /// Encounter identifier, when the template extracts one.
    pub encounter_id: Option<String>,
    /// Correlation id, when the template defines `correlationIdExpression`.
    pub correlation_id: Option<String>,
    /// Event time of the reading (UTC).
    pub occurrence_time: DateTime<Utc>,
    /// `(valueName, value)` in template order; values are strings as in the connector.
    pub properties: Vec<(Arc<str>, String)>,
    /// When the message carrying it reached Kafka (ms since the Unix epoch), for latencies.
    pub received_ms: Option<i64>,
    /// The Kafka record (or file line) it was read from: the lakehouse's exactly-once key,
    /// and alerting's order among readings of the same time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourcePos>,
}

/// Where a measurement was read: topic (or file), partition and offset (or line).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct SourcePos {
    /// Kafka topic, file path or `simulator`.
    pub topic: Arc<str>,
    /// Kafka partition.
    pub partition: i32,
    /// Kafka offset.
    pub offset: i64,
}

/// JSON shape of a measurement as the IoMT conformance suite and `vitalflow normalize` print it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MeasurementJson<'a> {
    #[serde(rename = "type")]
    type_name: &'a str,
    device_id: &'a str,
    patient_id: Option<&'a str>,
    encounter_id: Option<&'a str>,
    correlation_id: Option<&'a str>,
    occurrence_time_utc: String,
    properties: Vec<PropertyJson<'a>>,
}

#[derive(Serialize)]
struct PropertyJson<'a> {
    name: &'a str,
    value: &'a str,
}

impl Measurement {
    /// The conformance-suite JSON view of this measurement.
    pub fn to_json(&self) -> MeasurementJson<'_> {
        MeasurementJson {
            type_name: &self.type_name,
            device_id: &self.device_id,
            patient_id: self.patient_id.as_deref(),
            encounter_id: self.encounter_id.as_deref(),
            correlation_id: self.correlation_id.as_deref(),
            occurrence_time_utc: crate::time::format_rfc3339(&self.occurrence_time),
            properties: self
                .properties
                .iter()
                .map(|(n, v)| PropertyJson { name: n, value: v })
                .collect(),
        }
    }

    /// Value of the named property, if present.
    pub fn property(&self, name: &str) -> Option<&str> {
        self.properties
            .iter()
            .find(|(n, _)| &**n == name)
            .map(|(_, v)| v.as_str())
    }
}
