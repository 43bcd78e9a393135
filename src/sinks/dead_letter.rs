//! Dead letters: messages the job cannot process, kept whole with the reason.
//!
//! To Kafka, a dead letter is the original value and key with the original headers plus
//! `vitalflow-error`, `vitalflow-stage`, `vitalflow-template` and `vitalflow-source-topic`
//! / `-partition` / `-offset`, so it can be inspected, fixed and replayed. Without a topic
//! they are NDJSON part files under `<dir>/dead-letters/`.

use super::files::PartWriter;
use super::kafka::AckedProducer;
use super::Sink;
use crate::job::KafkaConfig;
use crate::sources::RawMessage;
use anyhow::anyhow;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::BaseRecord;
use serde_json::{json, Map, Value};
use std::path::Path;

/// A message that could not be processed, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// The message as read.
    pub message: RawMessage,
    /// The stage that refused it (`parse`, `normalize`, `validate`).
    pub stage: &'static str,
    /// What is wrong.
    pub error: String,
    /// The template at fault, when one is (index, type, typeName, field).
    pub template: Option<Value>,
}

impl DeadLetter {
    /// The NDJSON form: reason, source position, headers and the payload (as text when it is
    /// UTF-8, else hex).
    pub fn to_json(&self) -> Value {
        let m = &self.message;
        let mut o = Map::new();
        o.insert("error".into(), self.error.clone().into());
        o.insert("stage".into(), self.stage.into());
        if let Some(t) = &self.template {
            o.insert("template".into(), t.clone());
        }
        o.insert(
            "source".into(),
            json!({
                "topic": &*m.origin.topic,
                "partition": m.origin.partition,
                "offset": m.origin.offset,
                "timestamp_ms": m.origin.timestamp_ms,
            }),
        );
        if let Some(k) = &m.key {
            o.insert("key".into(), String::from_utf8_lossy(k).into_owned().into());
        }
        if !m.headers.is_empty() {
            o.insert("headers".into(), Value::Object(m.properties()));
        }
        match std::str::from_utf8(&m.payload) {
            Ok(s) => o.insert("payload".into(), s.into()),
            Err(_) => o.insert(
                "payload_hex".into(),
                m.payload
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>()
                    .into(),
            ),
        };
        Value::Object(o)
    }
}

/// Dead letters as NDJSON part files.
pub struct FileDeadLetters {
    writer: PartWriter,
    /// Lines kept until a flush commits them, so a failed flush loses none.
    pending: Vec<(u64, Vec<u8>)>,
}

impl FileDeadLetters {
    /// Opens `<dir>/dead-letters` for `worker`.
    pub fn new(dir: &Path, worker: usize) -> anyhow::Result<Self> {
        Ok(Self {
            writer: PartWriter::new(&dir.join("dead-letters"), worker)?,
            pending: Vec::new(),
        })
    }
}

impl Sink<DeadLetter> for FileDeadLetters {
    fn write(&mut self, epoch: u64, item: DeadLetter) -> anyhow::Result<()> {
        let line = serde_json::to_vec(&item.to_json()).expect("JSON");
        self.pending.push((epoch, line));
        Ok(())
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        let written = self
            .pending
            .iter()
            .try_for_each(|(epoch, line)| self.writer.write_line(*epoch, line))
            .and_then(|()| self.writer.commit());
        match written {
            Ok(_) => {
                self.pending.clear();
                Ok(())
            }
            Err(e) => {
                self.writer.abort();
                Err(e)
            }
        }
    }
}

/// Dead letters to a Kafka topic (idempotent producer, acknowledged by all replicas).
pub struct KafkaDeadLetters {
    producer: AckedProducer,
    topic: String,
    pending: Vec<DeadLetter>,
}

impl KafkaDeadLetters {
    /// A producer for `topic`.
    pub fn new(k: &KafkaConfig, brokers: &str, topic: &str) -> anyhow::Result<Self> {
        Ok(Self {
            producer: AckedProducer::new(k, brokers, "dead-letter")?,
            topic: topic.to_string(),
            pending: Vec::new(),
        })
    }

    fn send(&self, d: &DeadLetter) -> anyhow::Result<()> {
        let m = &d.message;
        let mut headers = OwnedHeaders::new_with_capacity(m.headers.len() + 6);
        for (k, v) in &m.headers {
            headers = headers.insert(Header {
                key: k,
                value: Some(v),
            });
        }
        let template = d.template.as_ref().map(Value::to_string);
        let partition = m.origin.partition.to_string();
        let offset = m.origin.offset.to_string();
        let extra: [(&str, Option<&str>); 6] = [
            ("vitalflow-error", Some(&d.error)),
            ("vitalflow-stage", Some(d.stage)),
            ("vitalflow-template", template.as_deref()),
            ("vitalflow-source-topic", Some(&m.origin.topic)),
            ("vitalflow-source-partition", Some(&partition)),
            ("vitalflow-source-offset", Some(&offset)),
        ];
        for (k, v) in extra {
            if let Some(v) = v {
                headers = headers.insert(Header {
                    key: k,
                    value: Some(v),
                });
            }
        }
        let mut record = BaseRecord::to(&self.topic)
            .payload(&m.payload)
            .headers(headers);
        if let Some(k) = &m.key {
            record = record.key(k);
        }
        self.producer
            .send(record)
            .map_err(|e| anyhow!("cannot send a dead letter to {}: {e}", self.topic))
    }
}

impl Sink<DeadLetter> for KafkaDeadLetters {
    fn write(&mut self, _epoch: u64, item: DeadLetter) -> anyhow::Result<()> {
        self.pending.push(item);
        Ok(())
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.producer.begin();
        for d in &self.pending {
            self.send(d)?;
        }
        self.producer
            .acknowledged(&format!("dead letters to {}", self.topic))?;
        self.pending.clear();
        Ok(())
    }
}
