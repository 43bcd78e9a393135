//! Kafka client code the sources, sinks and tools share: client settings from a job's
//! `[kafka]`, a producer send that waits out a full queue, topic discovery, headers, and
//! reading a topic's partitions back to their real end ([`read_back`]).

pub mod read_back;

use crate::config::KafkaConfig;
use anyhow::{bail, Context as _};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers, Message, ToBytes};
use rdkafka::producer::{BaseProducer, BaseRecord, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Base librdkafka settings of the job's clients: brokers plus pass-through properties.
pub fn client_config(k: &KafkaConfig, brokers: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers);
    for (key, value) in &k.properties {
        c.set(key, value);
    }
    c
}

/// Enqueues a record for delivery, serving callbacks while librdkafka's local queue is full
/// (a producer faster than the brokers waits instead of failing).
pub fn send<C, K, P, D>(
    producer: &BaseProducer<C>,
    mut record: BaseRecord<'_, K, P, D>,
) -> Result<(), KafkaError>
where
    C: ProducerContext<DeliveryOpaque = D>,
    K: ToBytes + ?Sized,
    P: ToBytes + ?Sized,
    D: rdkafka::util::IntoOpaque,
{
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                producer.poll(Duration::from_millis(20));
                record = r;
            }
            Err((e, _)) => return Err(e),
        }
    }
}

/// Waits until the brokers answer and every topic exists, with backoff, up to the startup
/// timeout. Returns the partition count of each topic.
pub fn wait_for_topics(k: &KafkaConfig, brokers: &str) -> anyhow::Result<BTreeMap<String, i32>> {
    let consumer: BaseConsumer = client_config(k, brokers)
        .create()
        .with_context(|| format!("cannot create a Kafka client for {brokers}"))?;
    let deadline = Instant::now() + k.startup_timeout;
    let mut backoff = Duration::from_millis(100);
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let last_error = match consumer.fetch_metadata(None, remaining.min(Duration::from_secs(5)))
        {
            Ok(md) => {
                let mut found = BTreeMap::new();
                let mut missing = Vec::new();
                for t in &k.topics {
                    match md.topics().iter().find(|mt| mt.name() == t) {
                        Some(mt) if mt.error().is_none() && !mt.partitions().is_empty() => {
                            found.insert(t.clone(), mt.partitions().len() as i32);
                        }
                        _ => missing.push(t.clone()),
                    }
                }
                if missing.is_empty() {
                    return Ok(found);
                }
                let existing: Vec<&str> = md
                    .topics()
                    .iter()
                    .map(|t| t.name())
                    .filter(|n| !n.starts_with("__"))
                    .collect();
                format!(
                    "topic(s) {} not found on {brokers} (existing: {})",
                    missing.join(", "),
                    if existing.is_empty() {
                        "none".to_string()
                    } else {
                        existing.join(", ")
                    }
                )
            }
            Err(e) => format!("brokers {brokers} unreachable: {e}"),
        };
        if Instant::now() + backoff >= deadline {
            bail!(
                "{last_error}; gave up after {} (kafka.startup_timeout)",
                humantime::format_duration(k.startup_timeout)
            );
        }
        tracing::warn!(
            retry_in_ms = backoff.as_millis() as u64,
            "{last_error}; retrying"
        );
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// A record's headers, copied out of librdkafka's buffer (a header without a value: empty).
pub fn headers_of<C: FromIterator<(String, Vec<u8>)> + Default>(m: &BorrowedMessage<'_>) -> C {
    m.headers()
        .map(|h| {
            h.iter()
                .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                .collect()
        })
        .unwrap_or_default()
}
