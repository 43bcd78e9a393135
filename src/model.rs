//! The data every stage passes on: device messages as read, and the normalized measurements
//! a device mapping makes of them.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value};
use std::sync::Arc;

/// A measurement's identifier or value, inline up to 24 bytes: ids like `BM-0042` and values
/// like `98.6` take no allocation of their own. A `String` each was five or more allocations
/// per measurement, most of them freed on another worker's thread; the peer drain took about
/// 9 % less CPU without them (docs/performance.md), though a replay's instruction count
/// barely moves: the cost was the allocator's cross-thread frees and fresh pages, not
/// instructions.
pub type Text = compact_str::CompactString;

/// One normalized reading: a type (the template's `typeName`), ids and named values.
///
/// Type and value names are shared with the compiled template (`Arc<str>`) and ids and values
/// are [`Text`], so producing a measurement allocates its property list and little else.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Measurement {
    /// The template's `typeName`; selects the FHIR mapping.
    pub type_name: Arc<str>,
    /// Device identifier (always present).
    pub device_id: Text,
    /// Patient identifier, when the template extracts one.
    pub patient_id: Option<Text>,
    /// Encounter identifier, when the template extracts one.
    pub encounter_id: Option<Text>,
    /// Correlation id, when the template defines `correlationIdExpression`.
    pub correlation_id: Option<Text>,
    /// Event time of the reading (UTC).
    pub occurrence_time: DateTime<Utc>,
    /// `(valueName, value)` in template order; values are strings as in the connector.
    pub properties: Vec<(Arc<str>, Text)>,
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

/// Where a message came from: enough to dead-letter it, commit past it, or find it again.
#[derive(Debug, Clone, PartialEq)]
pub struct Origin {
    /// Kafka topic, file path, or `simulator`.
    pub topic: Arc<str>,
    /// Kafka partition (0 for files and the simulator).
    pub partition: i32,
    /// Kafka offset, line number, or sequence number.
    pub offset: i64,
    /// Broker (or producer) timestamp, milliseconds since the Unix epoch.
    pub timestamp_ms: Option<i64>,
}

/// One device message as read, before normalization.
#[derive(Debug, Clone, PartialEq)]
pub struct RawMessage {
    /// The message value (device JSON), untouched.
    pub payload: Vec<u8>,
    /// The message key (often the device id).
    pub key: Option<Vec<u8>>,
    /// Message headers.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Position in the input.
    pub origin: Origin,
}

impl RawMessage {
    /// Headers as the IoMT `Properties` map (values as strings, lossy UTF-8).
    pub fn properties(&self) -> Map<String, Value> {
        self.headers
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    Value::String(String::from_utf8_lossy(v).into_owned()),
                )
            })
            .collect()
    }

    /// Kafka metadata as the IoMT `SystemProperties` map. Names follow Event Hubs
    /// (`x-opt-*`); the key doubles as `iothub-connection-device-id` and the broker time as
    /// `iothub-enqueuedtime`, as IoT Hub's built-in endpoint sets them, so
    /// `IotJsonPathContent` templates work unchanged.
    pub fn system_properties(&self) -> Map<String, Value> {
        let mut m = Map::new();
        let o = &self.origin;
        m.insert(
            "x-opt-kafka-topic".into(),
            Value::String(o.topic.to_string()),
        );
        m.insert("x-opt-partition".into(), o.partition.into());
        m.insert("x-opt-offset".into(), Value::String(o.offset.to_string()));
        m.insert("x-opt-sequence-number".into(), o.offset.into());
        if let Some(t) = o
            .timestamp_ms
            .and_then(chrono::DateTime::from_timestamp_millis)
        {
            let t = crate::time::format_rfc3339(&t);
            m.insert("x-opt-enqueued-time".into(), Value::String(t.clone()));
            m.insert("iothub-enqueuedtime".into(), Value::String(t));
        }
        if let Some(k) = &self.key {
            let k = String::from_utf8_lossy(k).into_owned();
            m.insert("x-opt-partition-key".into(), Value::String(k.clone()));
            m.insert("iothub-connection-device-id".into(), Value::String(k));
        }
        m
    }
}
