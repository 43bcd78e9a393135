//! The event object templates see: a device payload wrapped as the IoMT connector wraps an
//! Event Hubs / IoT Hub message (`Body`, `Properties`, `SystemProperties`).

use serde_json::{Map, Value};

/// Wraps a parsed payload with message properties (headers) and system properties
/// (broker metadata: partition, offset, enqueued time, device id).
pub fn wrap(
    body: Value,
    properties: Map<String, Value>,
    system_properties: Map<String, Value>,
) -> Value {
    let mut event = Map::with_capacity(3);
    event.insert("Body".into(), body);
    event.insert("Properties".into(), Value::Object(properties));
    event.insert("SystemProperties".into(), Value::Object(system_properties));
    Value::Object(event)
}

/// Parses `key=value` pairs (CLI `--property`) into a property map; values stay strings.
pub fn parse_pairs(pairs: &[String]) -> Result<Map<String, Value>, String> {
    pairs
        .iter()
        .map(|p| match p.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), Value::String(v.to_string()))),
            _ => Err(format!("expected key=value, found \"{p}\"")),
        })
        .collect()
}
