//! Dead letters: messages the job cannot process, kept whole with the reason.
//!
//! To Kafka, a dead letter is the original value and key with the original headers plus
//! `vitalflow-error`, `vitalflow-stage`, `vitalflow-template` and `vitalflow-source-topic`
//! / `-partition` / `-offset`, so it can be inspected, fixed and replayed. Without a topic
//! they are NDJSON part files under `<dir>/dead-letters/`.

use super::files::{committed_parts, PartWriter};
use super::kafka::{AckedProducer, GROUP_HEADER};
use super::Sink;
use crate::config::KafkaConfig;
use crate::model::RawMessage;
use anyhow::{anyhow, Context as _};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::BaseRecord;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

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
    /// For a dead letter without a source position of its own (a measurement group the
    /// FHIR server refused), a stable id: the hash of its stage, template and payload, the
    /// same when a restart's replay refuses the same group again, so that it is written once.
    pub fn id(&self) -> Option<String> {
        use sha2::{Digest, Sha256};
        if !self.message.origin.topic.starts_with(SYNTHETIC) {
            return None;
        }
        let mut h = Sha256::new();
        h.update(self.message.origin.topic.as_bytes());
        h.update([0]);
        h.update(self.stage.as_bytes());
        h.update([0]);
        if let Some(t) = &self.template {
            h.update(t.to_string().as_bytes());
        }
        h.update([0]);
        h.update(&self.message.payload);
        Some(
            h.finalize()[..16]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
        )
    }

    /// The NDJSON form: reason, source position, headers and the payload (as text when it is
    /// UTF-8, else hex).
    pub fn to_json(&self) -> Value {
        let m = &self.message;
        let mut o = Map::new();
        if let Some(id) = self.id() {
            o.insert("id".into(), id.into());
        }
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
///
/// A restart replays messages whose dead letters were committed but whose offsets were
/// not: the sink reads back, per source partition, the highest offset its directory holds
/// and does not write those again (a partition is read by one worker, in order, so every
/// dead letter at or below it is there). Dead letters without a source position of their
/// own (FHIR measurement groups) are recognised by their [`DeadLetter::id`].
pub struct FileDeadLetters {
    writer: PartWriter,
    /// Lines kept until a flush commits them, so a failed flush loses none, with their
    /// source position or id.
    pending: Vec<(u64, Vec<u8>, Written)>,
    /// Per source (topic, partition), the highest offset committed.
    written: HashMap<(String, i32), i64>,
    /// Ids of the dead letters without a position committed.
    written_ids: HashSet<String>,
}

/// What identifies a written dead letter: its source position, or its id.
enum Written {
    Position(Position),
    Id(String),
}

/// A source message's (topic, partition, offset).
type Position = (String, i32, i64);

/// Topics of dead letters that are not source messages (no position to replay from).
const SYNTHETIC: &str = "vitalflow:";

/// The header carrying [`DeadLetter::id`].
const ID_HEADER: &str = "vitalflow-dead-letter-id";

impl FileDeadLetters {
    /// Opens `<dir>/dead-letters` for `worker`, reading back what it holds.
    pub fn new(dir: &Path, worker: usize) -> anyhow::Result<Self> {
        let dir = dir.join("dead-letters");
        let writer = PartWriter::new(&dir, worker)?;
        let mut written: HashMap<(String, i32), i64> = HashMap::new();
        let mut written_ids = HashSet::new();
        for part in committed_parts(&dir) {
            let text = std::fs::read_to_string(&part)
                .with_context(|| format!("cannot read {}", part.display()))?;
            for line in text.lines() {
                let Ok(v) = serde_json::from_str::<Value>(line) else {
                    continue;
                };
                if let Some(id) = v["id"].as_str() {
                    written_ids.insert(id.to_string());
                }
                let s = &v["source"];
                if let (Some(t), Some(p), Some(o)) = (
                    s["topic"].as_str(),
                    s["partition"].as_i64(),
                    s["offset"].as_i64(),
                ) {
                    if !t.starts_with(SYNTHETIC) {
                        let e = written.entry((t.to_string(), p as i32)).or_insert(o);
                        *e = (*e).max(o);
                    }
                }
            }
        }
        Ok(Self {
            writer,
            pending: Vec::new(),
            written,
            written_ids,
        })
    }
}

impl Sink<DeadLetter> for FileDeadLetters {
    fn write(&mut self, epoch: u64, item: DeadLetter) -> anyhow::Result<()> {
        let o = &item.message.origin;
        let written = match item.id() {
            Some(id) if self.written_ids.contains(&id) => return Ok(()),
            Some(id) => Written::Id(id),
            None => {
                if self
                    .written
                    .get(&(o.topic.to_string(), o.partition))
                    .is_some_and(|w| o.offset <= *w)
                {
                    // Replayed after a restart: already written.
                    return Ok(());
                }
                Written::Position((o.topic.to_string(), o.partition, o.offset))
            }
        };
        let line = serde_json::to_vec(&item.to_json()).expect("JSON");
        self.pending.push((epoch, line, written));
        Ok(())
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        let written = self
            .pending
            .iter()
            .try_for_each(|(epoch, line, _)| self.writer.write_line(*epoch, line))
            .and_then(|()| self.writer.commit());
        match written {
            Ok(_) => {
                for (_, _, written) in self.pending.drain(..) {
                    match written {
                        Written::Position((t, p, o)) => {
                            let e = self.written.entry((t, p)).or_insert(o);
                            *e = (*e).max(o);
                        }
                        Written::Id(id) => {
                            self.written_ids.insert(id);
                        }
                    }
                }
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
///
/// Like the files, a restart does not send again what an earlier run of the same consumer
/// group sent: it reads the topic back from where the commit log says it stood when the
/// job had read up to its committed offsets (dataflow::commit_log), and skips, per source
/// partition, every offset up to the highest found. Records carry the group
/// (`vitalflow-group`), so several jobs may share a dead-letter topic.
pub struct KafkaDeadLetters {
    producer: AckedProducer,
    topic: String,
    group: String,
    pending: Vec<DeadLetter>,
    /// Per source (topic, partition), the highest offset sent.
    written: HashMap<(String, i32), i64>,
    /// Ids of the dead letters without a position sent (see [`DeadLetter::id`]).
    written_ids: HashSet<String>,
    positions: Positions,
    /// The largest record to send (payload, key and headers): the producer's
    /// `message.max.bytes`, lowered when the broker refuses a record as too large.
    max_record: usize,
}

/// Where the dead-letter topic stands, for the commit log: per topic partition, an offset
/// that every dead letter of a later message lies at or past, whichever run sent it.
#[derive(Clone)]
pub struct Positions {
    acked: super::kafka::Acked,
    /// Where this run read back from (0: a partition's start).
    from: BTreeMap<i32, i64>,
    /// Per source partition, the highest offset earlier runs sent a dead letter for.
    sent_before: Arc<HashMap<(String, i32), i64>>,
}

impl Positions {
    /// The positions for a commit of `partition` of `topic` at `offset`: this producer's
    /// own, or, while earlier runs sent dead letters of messages at or past the offset,
    /// no later than where this run read them back from.
    pub fn at(&self, topic: &str, partition: i32, offset: i64) -> BTreeMap<i32, i64> {
        let mut at = self.acked.positions();
        let earlier = self
            .sent_before
            .get(&(topic.to_string(), partition))
            .is_some_and(|h| *h >= offset);
        if earlier {
            for (q, o) in at.iter_mut() {
                *o = (*o).min(self.from.get(q).copied().unwrap_or(0));
            }
        }
        at
    }
}

impl KafkaDeadLetters {
    /// A producer for `topic`; with `resume`, first reads back from there (per partition;
    /// from its start where absent) what this group sent before.
    pub fn new(
        k: &KafkaConfig,
        brokers: &str,
        topic: &str,
        resume: Option<&BTreeMap<i32, i64>>,
    ) -> anyhow::Result<Self> {
        let producer = AckedProducer::new(k, brokers, "dead-letter")?;
        let acked = producer.track(topic)?;
        let mut from_partitions = BTreeMap::new();
        let mut written: HashMap<(String, i32), i64> = HashMap::new();
        let mut written_ids = HashSet::new();
        if let Some(from) = resume {
            let text = |h: &BTreeMap<String, Vec<u8>>, k: &str| {
                h.get(k).map(|v| String::from_utf8_lossy(v).into_owned())
            };
            let (start, own) =
                super::kafka::read_back_own(k, brokers, topic, from, &acked, "dead letters")?;
            from_partitions = start;
            for (h, _) in own {
                if let Some(id) = text(&h, ID_HEADER) {
                    written_ids.insert(id);
                    continue;
                }
                let (Some(t), Some(p), Some(o)) = (
                    text(&h, "vitalflow-source-topic"),
                    text(&h, "vitalflow-source-partition").and_then(|p| p.parse().ok()),
                    text(&h, "vitalflow-source-offset").and_then(|o| o.parse().ok()),
                ) else {
                    continue;
                };
                if !t.starts_with(SYNTHETIC) {
                    let e = written.entry((t, p)).or_insert(o);
                    *e = (*e).max(o);
                }
            }
        }
        let positions = Positions {
            acked,
            from: from_partitions,
            sent_before: Arc::new(written.clone()),
        };
        let max_record = k
            .properties
            .get("message.max.bytes")
            .and_then(|v| v.parse().ok())
            .unwrap_or(1_000_000);
        Ok(Self {
            producer,
            topic: topic.to_string(),
            group: k.group_id.clone(),
            pending: Vec::new(),
            written,
            written_ids,
            positions,
            max_record,
        })
    }

    /// Where the topic stands, for the commit log.
    pub fn positions(&self) -> Positions {
        self.positions.clone()
    }

    fn send(&self, index: usize, d: &DeadLetter) -> anyhow::Result<()> {
        let m = &d.message;
        // A message too large for the topic would fail its delivery on every retry and hold
        // every later commit: its payload is cut to fit, and the record says so.
        let headers_len: usize = m
            .headers
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>()
            + d.error.len()
            + d.template.as_ref().map_or(0, |t| t.to_string().len())
            + m.key.as_ref().map_or(0, Vec::len)
            + 512;
        let room = self.max_record.saturating_sub(headers_len);
        let (payload, cut) = if m.payload.len() > room {
            (&m.payload[..room], Some(m.payload.len().to_string()))
        } else {
            (&m.payload[..], None)
        };
        let mut headers = OwnedHeaders::new_with_capacity(m.headers.len() + 8);
        for (k, v) in &m.headers {
            headers = headers.insert(Header {
                key: k,
                value: Some(v),
            });
        }
        let template = d.template.as_ref().map(Value::to_string);
        let partition = m.origin.partition.to_string();
        let offset = m.origin.offset.to_string();
        let id = d.id();
        let extra: [(&str, Option<&str>); 9] = [
            (GROUP_HEADER, Some(&self.group)),
            (ID_HEADER, id.as_deref()),
            ("vitalflow-truncated-from", cut.as_deref()),
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
            .payload(payload)
            .headers(headers);
        if let Some(k) = &m.key {
            record = record.key(k);
        }
        self.producer
            .send(index, record)
            .map_err(|e| anyhow!("cannot send a dead letter to {}: {e}", self.topic))
    }
}

impl Sink<DeadLetter> for KafkaDeadLetters {
    fn write(&mut self, _epoch: u64, item: DeadLetter) -> anyhow::Result<()> {
        let o = &item.message.origin;
        if item.id().is_some_and(|id| self.written_ids.contains(&id)) {
            // Refused again by the replay after a restart: sent already.
            return Ok(());
        }
        if !o.topic.starts_with(SYNTHETIC)
            && self
                .written
                .get(&(o.topic.to_string(), o.partition))
                .is_some_and(|w| o.offset <= *w)
        {
            // Replayed after a restart: sent already.
            return Ok(());
        }
        self.pending.push(item);
        Ok(())
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.producer.begin();
        let sent = self
            .pending
            .iter()
            .enumerate()
            .try_for_each(|(i, d)| self.send(i, d));
        // Waits for what was queued even when queueing failed part-way: the records in
        // flight must be known delivered or not before the retry.
        let flushed = self
            .producer
            .acknowledged(&format!("dead letters to {}", self.topic));
        let acked = sent.and(flushed);
        if acked.is_err() {
            // What the broker acknowledged is not sent again by the retry.
            let delivered = self.producer.delivered();
            let mut i = 0;
            self.pending.retain(|_| {
                let keep = delivered.binary_search(&i).is_err();
                i += 1;
                keep
            });
        }
        if let Err(e) = &acked {
            let e = format!("{e:#}");
            if e.contains("too large") || e.contains("TooLarge") {
                // The broker's limit for the topic is below the producer's: cut harder on
                // the retry, down to 1 KiB of payload.
                self.max_record = (self.max_record / 2).max(4096);
                tracing::warn!(
                    max_record = self.max_record,
                    "a dead letter is larger than the topic accepts: payloads are cut to fit"
                );
            }
        }
        acked?;
        for d in self.pending.drain(..) {
            if let Some(id) = d.id() {
                self.written_ids.insert(id);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Origin;

    fn letter(topic: &str, offset: i64) -> DeadLetter {
        DeadLetter {
            message: RawMessage {
                payload: format!("{{bad {offset}").into_bytes(),
                key: None,
                headers: Vec::new(),
                origin: Origin {
                    topic: topic.into(),
                    partition: 1,
                    offset,
                    timestamp_ms: None,
                },
            },
            stage: "parse",
            error: "malformed JSON".into(),
            template: None,
        }
    }

    fn offsets(dir: &Path) -> Vec<(String, i64)> {
        let mut out: Vec<(String, i64)> = committed_parts(&dir.join("dead-letters"))
            .iter()
            .flat_map(|p| {
                std::fs::read_to_string(p)
                    .expect("read")
                    .lines()
                    .map(|l| {
                        let v: Value = serde_json::from_str(l).expect("json");
                        let s = &v["source"];
                        (
                            s["topic"].as_str().expect("topic").to_string(),
                            s["offset"].as_i64().expect("offset"),
                        )
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        out.sort();
        out
    }

    #[test]
    fn a_replay_after_a_restart_writes_no_dead_letter_twice() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut sink = FileDeadLetters::new(dir.path(), 0).expect("sink");
        for o in 1..=3 {
            sink.write(1, letter("vitals", o)).expect("write");
        }
        sink.write(1, letter("vitalflow:measurement-group", 0))
            .expect("write");
        sink.flush().expect("flush");
        // Restart (another worker index: partitions may move): the replay from the last
        // committed offset repeats 2 and 3.
        let mut sink = FileDeadLetters::new(dir.path(), 1).expect("sink");
        for o in 2..=5 {
            sink.write(2, letter("vitals", o)).expect("write");
        }
        sink.write(2, letter("vitalflow:measurement-group", 0))
            .expect("write");
        // A group the server refuses for the first time after the restart.
        sink.write(2, letter("vitalflow:measurement-group", 1))
            .expect("write");
        sink.flush().expect("flush");
        let want: Vec<(String, i64)> = [
            ("vitalflow:measurement-group", 0),
            ("vitalflow:measurement-group", 1),
            ("vitals", 1),
            ("vitals", 2),
            ("vitals", 3),
            ("vitals", 4),
            ("vitals", 5),
        ]
        .iter()
        .map(|(t, o)| (t.to_string(), *o))
        .collect();
        assert_eq!(
            offsets(dir.path()),
            want,
            "a group refused again by the replay is recognised by its id, a new one is kept"
        );
    }
}
