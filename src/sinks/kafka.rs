//! A Kafka producer whose flush tells whether every record was acknowledged: what makes a
//! Kafka sink durable (dead letters, alerts).

use crate::job::KafkaConfig;
use anyhow::{anyhow, Context as _};
use rdkafka::error::KafkaError;
use rdkafka::message::ToBytes;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::ClientContext;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Counts failed deliveries: a flush with failures is not durable and is retried.
#[derive(Default)]
struct Deliveries {
    failed: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            self.failed.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut l) = self.last_error.lock() {
                *l = Some(e.to_string());
            }
        }
    }
}

/// An idempotent producer (acks from all replicas) counting failed deliveries.
pub struct AckedProducer {
    producer: BaseProducer<Deliveries>,
}

impl AckedProducer {
    /// A producer to `brokers`; `what` names it in errors.
    pub fn new(k: &KafkaConfig, brokers: &str, what: &str) -> anyhow::Result<Self> {
        let producer = crate::sources::kafka::client_config(k, brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .create_with_context(Deliveries::default())
            .with_context(|| format!("cannot create the {what} producer for {brokers}"))?;
        Ok(Self { producer })
    }

    /// Starts a batch: failures are counted from here.
    pub fn begin(&self) {
        self.producer.context().failed.store(0, Ordering::Relaxed);
    }

    /// Queues a record, waiting while the local queue is full.
    pub fn send<K, P>(&self, record: BaseRecord<'_, K, P, ()>) -> Result<(), KafkaError>
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
    {
        crate::sources::kafka::send(&self.producer, record)
    }

    /// Waits until every record since [`AckedProducer::begin`] is delivered; Err when any
    /// failed (the caller keeps them and retries).
    pub fn acknowledged(&self, what: &str) -> anyhow::Result<()> {
        // rdkafka's flush polls in 100 ms steps, a floor under every delivery: poll in 1 ms
        // steps instead (measured: 100 ms → 6 ms per acknowledged batch on loopback).
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while let Err(e) = self.producer.flush(Duration::ZERO) {
            if std::time::Instant::now() >= deadline {
                return Err(anyhow::Error::new(e).context(format!("{what} not acknowledged")));
            }
            self.producer.poll(Duration::from_millis(1));
        }
        let ctx = self.producer.context();
        let failed = ctx.failed.load(Ordering::Relaxed);
        if failed > 0 {
            let last = ctx
                .last_error
                .lock()
                .ok()
                .and_then(|l| l.clone())
                .unwrap_or_default();
            return Err(anyhow!("{failed} of the {what} failed: {last}"));
        }
        crate::failpoint::hit("kafka.acknowledged");
        Ok(())
    }
}
