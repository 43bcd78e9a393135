//! Sources: where device messages enter the dataflow.
//!
//! A source is owned by one timely worker and reads only that worker's share of the input
//! (Kafka partitions `p mod total_workers`, lines of a file, simulated devices). It hands out
//! [`RawMessage`]s with their position, and commits positions once the dataflow reports that
//! every output of every message up to them is durable.

pub mod file;
pub mod kafka;
pub mod scenario;
pub mod simulator;

use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::sync::Arc;

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

/// Next position to read, per (topic, partition): what a commit records.
pub type Positions = BTreeMap<(Arc<str>, i32), i64>;

/// What a poll found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Poll {
    /// Messages may follow at once.
    Ready,
    /// Nothing to read now; poll again a little later.
    Idle,
    /// The input ended (`--until-end`, end of file, simulator count reached).
    Finished,
}

/// A worker's share of an input.
pub trait Source {
    /// Appends up to `max` messages to `out`.
    fn poll(&mut self, max: usize, out: &mut Vec<RawMessage>) -> anyhow::Result<Poll>;
    /// The next position to read, per partition.
    fn positions(&self) -> Positions;
    /// Records that outputs of everything before `positions` are durable.
    fn commit(&mut self, positions: &Positions) -> anyhow::Result<()>;
    /// The partitions this source reads, each with whether it stands at its end (nothing
    /// left to read now): with `--until-end` it has ended and the event clock waits for the
    /// others; in a live job it may go idle. Empty when the source does not know.
    fn partitions(&self) -> Vec<((Arc<str>, i32), bool)> {
        Vec::new()
    }
    /// Last commit at shutdown, once every output is durable: may block.
    fn commit_final(&mut self, positions: &Positions) -> anyhow::Result<()> {
        self.commit(positions)
    }
}
