//! Alert events out: a Kafka topic (JSON, keyed by patient, for the nurse-call or EHR inbox
//! system in front of clinicians), or NDJSON part files under `<dir>/alerts/`; and, with a
//! FHIR server, a `DetectedIssue` per alert (PUT by the alert id, so each event updates the
//! same resource) and an `Observation` of the NEWS2 score at each NEWS2 alert event.

use super::alert_events::{self, WrittenEvents};
use super::files::{days_index, parts_on_days, PartWriter};
use super::kafka::{AckedProducer, GROUP_HEADER};
use super::Sink;
use crate::anomaly::lifecycle::{Alert, State};
use crate::anomaly::rules::Severity;
use crate::config::FhirSinkConfig;
use crate::config::KafkaConfig;
use crate::fhir::client::FhirClient;
use crate::fhir::identity::{Identity, IdentityKey, Resolver};
use crate::metrics::{Latencies, Metrics};
use anyhow::Context as _;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::BaseRecord;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

enum Out {
    Kafka(KafkaAlerts),
    Files(FileAlerts),
}

/// Alert events to a Kafka topic. A restart does not send again the events an earlier run
/// of the same consumer group sent after its last alerting checkpoint: it reads the topic
/// back from where the checkpoints say it stood (every event raised again lies past it) and
/// skips those events (records carry the group in `vitalflow-group`).
struct KafkaAlerts {
    producer: AckedProducer,
    topic: String,
    group: String,
    positions: Positions,
    /// Events sent before the restart, past the checkpoints.
    sent: std::collections::HashSet<alert_events::EventKey>,
}

impl KafkaAlerts {
    fn new(
        k: &KafkaConfig,
        brokers: &str,
        topic: &str,
        resume: Option<&std::collections::BTreeMap<i32, i64>>,
    ) -> anyhow::Result<Self> {
        let producer = AckedProducer::new(k, brokers, "alerts")?;
        let acked = producer.track(topic)?;
        let mut sent = std::collections::HashSet::new();
        let mut read_from = std::collections::BTreeMap::new();
        if let Some(from) = resume {
            let (start, own) =
                super::kafka::read_back_own(k, brokers, topic, from, &acked, "alert events")?;
            read_from = start;
            for (_, payload) in own {
                if let Ok(v) = serde_json::from_slice::<Value>(&payload) {
                    sent.insert(alert_events::key_of_json(&v));
                }
            }
        }
        let positions = Positions {
            acked,
            from: read_from,
            sent_until_us: sent.iter().map(|k| k.2).max(),
        };
        Ok(Self {
            producer,
            topic: topic.to_string(),
            group: k.group_id.clone(),
            positions,
            sent,
        })
    }

    /// Sends the pending events; on failure, the ones the broker acknowledged are taken
    /// out of `pending`, so the retry sends only the others.
    fn send(&mut self, pending: &mut Vec<(u64, Alert)>) -> anyhow::Result<usize> {
        let result = self.send_all(pending);
        if result.is_err() {
            let delivered = self.producer.delivered();
            if !delivered.is_empty() {
                let mut i = 0;
                pending.retain(|_| {
                    let keep = delivered.binary_search(&i).is_err();
                    i += 1;
                    keep
                });
            }
        }
        result
    }

    fn send_all(&mut self, pending: &[(u64, Alert)]) -> anyhow::Result<usize> {
        self.producer.begin();
        let queued = self.queue(pending);
        // Waits for what was queued even when queueing failed part-way: the records in
        // flight must be known delivered or not before the retry.
        let flushed = self
            .producer
            .acknowledged(&format!("alerts to {}", self.topic));
        let n = queued?;
        flushed?;
        Ok(n)
    }

    fn queue(&mut self, pending: &[(u64, Alert)]) -> anyhow::Result<usize> {
        let topic = &self.topic;
        let mut n = 0;
        for (i, (_, a)) in pending.iter().enumerate() {
            if !self.sent.is_empty() && self.sent.contains(&alert_events::key(a)) {
                continue;
            }
            let payload = serde_json::to_vec(a).expect("JSON");
            let headers = OwnedHeaders::new().insert(Header {
                key: GROUP_HEADER,
                value: Some(self.group.as_bytes()),
            });
            self.producer
                .send(
                    i,
                    BaseRecord::to(topic)
                        .key(&a.patient)
                        .payload(&payload)
                        .headers(headers),
                )
                .map_err(|e| anyhow::anyhow!("cannot send an alert to {topic}: {e}"))?;
            n += 1;
        }
        Ok(n)
    }
}

/// Where the alert topic stands, for the alerting checkpoints: per partition, an offset
/// every event raised after the checkpoint lies at or past, whichever run sent it.
#[derive(Clone)]
pub struct Positions {
    acked: super::kafka::Acked,
    /// Where this run read back from (0: a partition's start).
    from: std::collections::BTreeMap<i32, i64>,
    /// The latest event time (µs) of the events earlier runs sent past their checkpoints.
    sent_until_us: Option<i64>,
}

impl Positions {
    /// The positions for a checkpoint of state applied through `applied` (event ms): this
    /// producer's own, or, while earlier runs sent events that late or later (a restart
    /// from this checkpoint could raise them again), no later than where this run read
    /// them back from.
    pub fn at(&self, applied: Option<i64>) -> std::collections::BTreeMap<i32, i64> {
        let mut at = self.acked.positions();
        let covered = match (self.sent_until_us, applied) {
            (None, _) => true,
            (Some(sent), Some(applied)) => sent < applied.saturating_mul(1000),
            (Some(_), None) => false,
        };
        if !covered {
            for (q, o) in at.iter_mut() {
                *o = (*o).min(self.from.get(q).copied().unwrap_or(0));
            }
        }
        at
    }
}

/// Alert events as NDJSON parts, each indexed by the event days it holds, so that the
/// events a restart's replay raises again are read back by day and not written twice.
struct FileAlerts {
    writer: PartWriter,
    dir: std::path::PathBuf,
    written: WrittenEvents,
}

impl FileAlerts {
    fn new(dir: &Path, worker: usize) -> anyhow::Result<Self> {
        let dir = dir.join("alerts");
        Ok(Self {
            writer: PartWriter::new(&dir, worker)?,
            dir,
            written: WrittenEvents::default(),
        })
    }

    fn load<'a>(&mut self, alerts: impl Iterator<Item = &'a Alert>) -> anyhow::Result<()> {
        let days = self.written.days_to_load(alerts);
        if days.is_empty() {
            return Ok(());
        }
        let mut held = Vec::new();
        for part in parts_on_days(&self.dir, &days) {
            let text = std::fs::read_to_string(&part)
                .with_context(|| format!("cannot read {}", part.display()))?;
            for line in text.lines() {
                let Ok(v) = serde_json::from_str::<Value>(line) else {
                    continue;
                };
                held.push(alert_events::key_of_json(&v));
            }
        }
        self.written.loaded(days, held);
        Ok(())
    }

    /// Writes the events not written before; returns how many were new.
    fn write(&mut self, pending: &[(u64, Alert)]) -> anyhow::Result<usize> {
        self.load(pending.iter().map(|(_, a)| a))?;
        let fresh = self.written.fresh(pending.iter().map(|(_, a)| a));
        let mut days = BTreeSet::new();
        let result = pending
            .iter()
            .zip(&fresh)
            .filter_map(|((epoch, a), k)| k.as_ref().map(|k| (epoch, a, k)))
            .try_for_each(|(epoch, a, k)| {
                days.insert(alert_events::day(k));
                self.writer
                    .write_line(*epoch, &serde_json::to_vec(a).expect("JSON"))
            });
        if let Err(e) = result.and_then(|()| {
            self.writer
                .commit_with_index(Some(&days_index(&days)))
                .map(|_| ())
        }) {
            self.writer.abort();
            return Err(e);
        }
        let keys: Vec<_> = fresh.into_iter().flatten().collect();
        let n = keys.len();
        self.written.written(keys);
        Ok(n)
    }
}

/// One worker's alert output.
pub struct AlertSink {
    out: Out,
    pending: Vec<(u64, Alert)>,
    fhir: Option<FhirAlerts>,
    metrics: Arc<Metrics>,
}

/// Alerts to a FHIR server: kept until the server acknowledged them, apart from the topic
/// or files (which may already have them).
struct FhirAlerts {
    client: Arc<FhirClient>,
    resolver: Resolver,
    pending: Vec<Alert>,
}

/// SNOMED CT: Royal College of Physicians NEWS2 total score.
const NEWS2_CODE: &str = "1104051000000101";

/// The DetectedIssue of an alert event.
pub fn detected_issue(a: &Alert, who: &Identity) -> Value {
    json!({
        "resourceType": "DetectedIssue",
        "id": a.id,
        "identifier": [{"system": "urn:vitalflow:alert", "value": a.id}],
        "status": if a.state == State::Resolved { "final" } else { "preliminary" },
        "code": {
            "coding": [
                {"system": "urn:vitalflow:alert-rule", "code": a.rule, "display": a.title},
                {"system": "urn:vitalflow:alert-category", "code": a.category.as_str()},
            ],
            "text": a.title,
        },
        // A technical alert is about the equipment: low, whatever its priority on the ward.
        "severity": match (a.category, a.severity) {
            (crate::anomaly::lifecycle::Category::Technical, _) => "low",
            (_, Severity::Critical) => "high",
            (_, Severity::Warning) => "moderate",
        },
        "patient": {"reference": format!("Patient/{}", who.patient)},
        "identifiedDateTime": a.since,
        "author": {"reference": format!("Device/{}", who.device)},
        "detail": a.text,
    })
}

/// Whether an event is a clinician's (acknowledged, silenced) rather than the alert's own.
fn is_human(a: &Alert) -> bool {
    matches!(a.state, State::Acknowledged | State::Silenced)
}

/// An acknowledgement or silence, as the FHIR record of who did what to which alert when:
/// an AuditEvent naming the alert's DetectedIssue (which it leaves as it is).
pub fn audit_event(a: &Alert) -> Value {
    let at_ms = crate::time::parse_timestamp(&a.at).map_or(0, |t| t.timestamp_millis());
    let what = if a.state == State::Silenced {
        "silenced"
    } else {
        "acknowledged"
    };
    let id = format!(
        "alert-{what}-{}",
        &crate::anomaly::lifecycle::alert_id(&a.id, a.by.as_deref().unwrap_or(""), at_ms)[..24]
    );
    let mut r = json!({
        "resourceType": "AuditEvent",
        "id": id,
        "type": {"system": "urn:vitalflow:audit", "code": format!("alert-{what}"), "display": format!("Alert {what}")},
        "action": "U",
        "recorded": a.at,
        "outcome": "0",
        "outcomeDesc": a.text,
        "agent": [{"who": {"display": a.by.clone().unwrap_or_default()}, "requestor": true}],
        "source": {"observer": {"display": "vitalflow ward board"}},
        "entity": [{
            "what": {"reference": format!("DetectedIssue/{}", a.id)},
            "description": a.note.clone().unwrap_or_else(|| a.title.clone()),
        }],
    });
    if let Some(until) = &a.until {
        r["period"] = json!({"start": a.at, "end": until});
    }
    r
}

/// The NEWS2 score of a NEWS2 alert event, as an Observation.
pub fn news2_observation(a: &Alert, who: &Identity) -> Option<Value> {
    if a.rule != "news2" {
        return None;
    }
    let score = a.values.first()?.1.round() as i64;
    // One score per patient and time: a replay writes the same resource again.
    let at_ms = crate::time::parse_timestamp(&a.at).map_or(0, |t| t.timestamp_millis());
    let id = format!(
        "news2-{}",
        crate::anomaly::lifecycle::alert_id(&a.patient, "news2-score", at_ms)
    );
    Some(json!({
        "resourceType": "Observation",
        "id": id,
        "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "survey", "display": "Survey"}]}],
        "code": {
            "coding": [{"system": "http://snomed.info/sct", "code": NEWS2_CODE, "display": "Royal College of Physicians NEWS2 (National Early Warning Score 2) total score"}],
            "text": "NEWS2",
        },
        "subject": {"reference": format!("Patient/{}", who.patient)},
        "device": {"reference": format!("Device/{}", who.device)},
        "effectiveDateTime": a.at,
        "valueInteger": score,
        "note": [{"text": a.text}],
    }))
}

impl AlertSink {
    /// Alerts to `topic`; with `resume`, first reads back from there (per partition; from
    /// its start where absent) what this group sent after its alerting checkpoints.
    pub fn kafka(
        k: &KafkaConfig,
        brokers: &str,
        topic: &str,
        resume: Option<&std::collections::BTreeMap<i32, i64>>,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            out: Out::Kafka(KafkaAlerts::new(k, brokers, topic, resume)?),
            pending: Vec::new(),
            fhir: None,
            metrics,
        })
    }

    /// Alerts to `<dir>/alerts/part-*.ndjson`.
    pub fn files(dir: &Path, worker: usize, metrics: Arc<Metrics>) -> anyhow::Result<Self> {
        Ok(Self {
            out: Out::Files(FileAlerts::new(dir, worker)?),
            pending: Vec::new(),
            fhir: None,
            metrics,
        })
    }

    /// Where the alert topic stands (Kafka alerts): recorded in each alerting checkpoint.
    pub fn positions(&self) -> Option<Positions> {
        match &self.out {
            Out::Kafka(k) => Some(k.positions.clone()),
            Out::Files(_) => None,
        }
    }

    /// Also writes each alert to a FHIR server.
    pub fn with_fhir(mut self, client: Arc<FhirClient>, cfg: &FhirSinkConfig) -> Self {
        self.fhir = Some(FhirAlerts {
            client,
            resolver: Resolver::new(cfg),
            pending: Vec::new(),
        });
        self
    }

    fn flush_fhir(&mut self) -> anyhow::Result<()> {
        let Some(f) = &mut self.fhir else {
            return Ok(());
        };
        if f.pending.is_empty() {
            return Ok(());
        }
        let keys: Vec<IdentityKey> = f
            .pending
            .iter()
            .map(|a| IdentityKey {
                device: a.device.clone(),
                patient: a.patient.clone(),
                encounter: None,
            })
            .collect();
        let who = f
            .resolver
            .resolve(&f.client, &keys)
            .map_err(super::fhir::sink_error)?;
        let mut entries = Vec::new();
        for (a, k) in f.pending.iter().zip(&keys) {
            match &who[k] {
                Ok(id) => {
                    let mut put = |r: Value| {
                        let url = format!(
                            "{}/{}",
                            r["resourceType"].as_str().unwrap_or(""),
                            r["id"].as_str().unwrap_or("")
                        );
                        entries
                            .push(json!({"resource": r, "request": {"method": "PUT", "url": url}}));
                    };
                    if is_human(a) {
                        put(audit_event(a));
                        continue;
                    }
                    // One entry per resource: a batch's entries may be applied in any
                    // order, so only an alert's latest event of this flush is sent.
                    let latest = f.pending.iter().rposition(|b| b.id == a.id && !is_human(b));
                    if latest.is_some_and(|i| std::ptr::eq(&f.pending[i], a)) {
                        put(detected_issue(a, id));
                    }
                    if let Some(o) = news2_observation(a, id) {
                        put(o);
                    }
                }
                // The same reason the Observations of this device are dead-lettered for: the
                // alert itself is on the topic or in the files already.
                Err(why) => {
                    tracing::warn!(alert = %crate::privacy::tag(&a.id), "alert not written to FHIR (its patient or device is not resolved)");
                    tracing::debug!(alert = %a.id, "alert not written to FHIR: {why}");
                }
            }
        }
        for chunk in entries.chunks(200) {
            let answers = f
                .client
                .batch(chunk.to_vec())
                .map_err(super::fhir::sink_error)?;
            if let Some(bad) = answers.iter().find(|a| !(200..300).contains(&a.status)) {
                if bad.status == 429 || bad.status >= 500 {
                    anyhow::bail!("FHIR server answered {} for an alert", bad.status);
                }
                tracing::error!(
                    status = bad.status,
                    "the FHIR server refused an alert resource"
                );
                tracing::debug!(
                    "the FHIR server refused an alert resource: {}",
                    bad.diagnostics.clone().unwrap_or_default()
                );
            }
        }
        f.pending.clear();
        Ok(())
    }
}

impl Sink<Alert> for AlertSink {
    fn write(&mut self, epoch: u64, item: Alert) -> anyhow::Result<()> {
        if let Some(f) = &mut self.fhir {
            f.pending.push(item.clone());
        }
        self.pending.push((epoch, item));
        Ok(())
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        if self.pending.is_empty() {
            return self.flush_fhir();
        }
        let delivered = match &mut self.out {
            Out::Kafka(k) => k.send(&mut self.pending)?,
            Out::Files(f) => f.write(&self.pending)?,
        };
        let now_us = chrono::Utc::now().timestamp_micros();
        let stamps: Vec<i64> = self
            .pending
            .iter()
            .map(|(_, a)| a.stamp_ms)
            .filter(|s| *s > 0)
            .collect();
        Latencies::record(&self.metrics.latency.alert, now_us, &stamps);
        Metrics::add(&self.metrics.alerts_out, delivered as u64);
        self.pending.clear();
        self.flush_fhir()
    }
}

#[cfg(test)]
mod file_tests {
    use super::*;
    use crate::sinks::observations::tests::test_dates;

    fn event(state: State, at: chrono::DateTime<chrono::Utc>) -> Alert {
        let t = crate::time::format_rfc3339(&at);
        Alert {
            id: "a1".into(),
            patient: "P-1".into(),
            device: "BM-1".into(),
            rule: "hypoxia".into(),
            title: "SpO2 low".into(),
            severity: Severity::Critical,
            category: crate::anomaly::lifecycle::Category::Physiological,
            state,
            since: t.clone(),
            at: t.clone(),
            values: vec![("59408-5".into(), 84.0, t)],
            text: "SpO2 84".into(),
            by: None,
            note: None,
            until: None,
            stamp_ms: 0,
        }
    }

    fn lines(dir: &Path) -> usize {
        crate::sinks::files::committed_parts(&dir.join("alerts"))
            .iter()
            .map(|p| std::fs::read_to_string(p).expect("read").lines().count())
            .sum()
    }

    #[test]
    fn a_replayed_alert_event_is_written_once_however_old_its_day() {
        for t0 in test_dates() {
            let dir = tempfile::tempdir().expect("tmp");
            let mut sink = AlertSink::files(dir.path(), 0, Metrics::new()).expect("sink");
            sink.write(1, event(State::Open, t0)).expect("write");
            sink.flush().expect("flush");
            // Restart: the replay raises the open again, twice, and then the resolution.
            let mut sink = AlertSink::files(dir.path(), 1, Metrics::new()).expect("sink");
            sink.write(2, event(State::Open, t0)).expect("write");
            sink.write(2, event(State::Open, t0)).expect("write");
            let later = t0 + chrono::Duration::minutes(5);
            sink.write(2, event(State::Resolved, later)).expect("write");
            sink.flush().expect("flush");
            assert_eq!(lines(dir.path()), 2, "open once, resolved once at {t0}");
        }
    }
}

#[cfg(test)]
mod kafka_tests {
    use super::*;
    use crate::anomaly::lifecycle::Category;
    use rdkafka::consumer::BaseConsumer;
    use rdkafka::Message;
    use std::time::Duration;

    fn event(patient: usize) -> Alert {
        Alert {
            id: format!("a{patient}"),
            patient: format!("P-{patient}"),
            device: "BM-1".into(),
            rule: "hypoxia".into(),
            title: "SpO2 low".into(),
            severity: Severity::Critical,
            category: Category::Physiological,
            state: State::Open,
            since: "2026-03-02T08:00:00Z".into(),
            at: "2026-03-02T08:00:30Z".into(),
            values: Vec::new(),
            text: String::new(),
            by: None,
            note: None,
            until: None,
            stamp_ms: 0,
        }
    }

    #[test]
    fn a_flush_that_times_out_is_retried_with_only_the_records_not_acknowledged() {
        let cluster = rdkafka::mocking::MockCluster::new(2).expect("mock");
        cluster.create_topic("alerts", 2, 1).expect("topic");
        cluster
            .partition_leader("alerts", 0, Some(1))
            .expect("leader");
        cluster
            .partition_leader("alerts", 1, Some(2))
            .expect("leader");
        let brokers = cluster.bootstrap_servers();
        let k = KafkaConfig {
            brokers: brokers.clone(),
            topics: vec!["vitals".into()],
            group_id: "g".into(),
            start: crate::config::StartPosition::Earliest,
            partitions: 1,
            startup_timeout: Duration::from_secs(10),
            // Short, so that the flush gives up on partition 1 within the test.
            properties: [("message.timeout.ms".to_string(), "3000".to_string())]
                .into_iter()
                .collect(),
        };
        let mut sink = AlertSink::kafka(&k, &brokers, "alerts", None, Arc::new(Metrics::default()))
            .expect("sink");
        // Partition 1's leader is down: its records time out, partition 0's are acknowledged.
        cluster.broker_down(2).expect("down");
        for p in 0..20 {
            sink.write(0, event(p)).expect("write");
        }
        let first = sink.flush();
        assert!(first.is_err(), "partition 1 cannot be written");
        let left = sink.pending.len();
        assert!(
            left > 0 && left < 20,
            "the acknowledged records left the batch: {left} of 20 remain"
        );
        cluster.broker_up(2).expect("up");
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while sink.flush().is_err() {
            assert!(std::time::Instant::now() < deadline, "never delivered");
            std::thread::sleep(Duration::from_millis(200));
        }
        let c: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", "check")
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer");
        let mut ids = Vec::new();
        crate::kafka::read_back::read_all(
            &c,
            "alerts",
            std::time::Instant::now() + Duration::from_secs(30),
            |m| {
                let v: Value =
                    serde_json::from_slice(m.payload().unwrap_or_default()).expect("json");
                ids.push(v["id"].as_str().unwrap_or("").to_string());
            },
        )
        .expect("read");
        ids.sort();
        let n = ids.len();
        ids.dedup();
        assert_eq!(n, 20, "each record once: {} distinct", ids.len());
        assert_eq!(ids.len(), 20);
        drop(c);
    }
}
