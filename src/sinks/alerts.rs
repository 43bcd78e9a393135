//! Alert events out: a Kafka topic (JSON, keyed by patient, for the nurse-call or EHR inbox
//! system in front of clinicians), or NDJSON part files under `<dir>/alerts/`.

use super::files::PartWriter;
use super::kafka::AckedProducer;
use super::Sink;
use crate::anomaly::lifecycle::Alert;
use crate::job::KafkaConfig;
use crate::metrics::{Latencies, Metrics};
use rdkafka::producer::BaseRecord;
use std::path::Path;
use std::sync::Arc;

enum Out {
    Kafka(AckedProducer, String),
    Files(PartWriter),
}

/// One worker's alert output.
pub struct AlertSink {
    out: Out,
    pending: Vec<(u64, Alert)>,
    metrics: Arc<Metrics>,
}

impl AlertSink {
    /// Alerts to `topic`.
    pub fn kafka(
        k: &KafkaConfig,
        brokers: &str,
        topic: &str,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            out: Out::Kafka(AckedProducer::new(k, brokers, "alerts")?, topic.to_string()),
            pending: Vec::new(),
            metrics,
        })
    }

    /// Alerts to `<dir>/alerts/part-*.ndjson`.
    pub fn files(dir: &Path, worker: usize, metrics: Arc<Metrics>) -> anyhow::Result<Self> {
        Ok(Self {
            out: Out::Files(PartWriter::new(&dir.join("alerts"), worker)?),
            pending: Vec::new(),
            metrics,
        })
    }
}

impl Sink<Alert> for AlertSink {
    fn write(&mut self, epoch: u64, item: Alert) -> anyhow::Result<()> {
        self.pending.push((epoch, item));
        Ok(())
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        match &mut self.out {
            Out::Kafka(p, topic) => {
                p.begin();
                for (_, a) in &self.pending {
                    let payload = serde_json::to_vec(a).expect("JSON");
                    p.send(BaseRecord::to(topic).key(&a.patient).payload(&payload))
                        .map_err(|e| anyhow::anyhow!("cannot send an alert to {topic}: {e}"))?;
                }
                p.acknowledged(&format!("alerts to {topic}"))?;
            }
            Out::Files(w) => {
                let written = self.pending.iter().try_for_each(|(epoch, a)| {
                    w.write_line(*epoch, &serde_json::to_vec(a).expect("JSON"))
                });
                if let Err(e) = written.and_then(|()| w.commit().map(|_| ())) {
                    w.abort();
                    return Err(e);
                }
            }
        }
        let now_us = chrono::Utc::now().timestamp_micros();
        let stamps: Vec<i64> = self
            .pending
            .iter()
            .map(|(_, a)| a.stamp_ms)
            .filter(|s| *s > 0)
            .collect();
        Latencies::record(&self.metrics.latency.alert, now_us, &stamps);
        Metrics::add(&self.metrics.alerts_out, self.pending.len() as u64);
        self.pending.clear();
        Ok(())
    }
}
