//! Gateways: hospital device protocols landed durably in Kafka, where the job reads them.
//! The job stays Kafka-first (sharding, offsets, replay and exactly-once rest on it); a
//! gateway acknowledges a message to its sender only once Kafka has it.

mod dedup;
pub mod mllp;
pub mod mqtt;
pub mod topic;

/// Checks that Kafka answers and knows `topics`, before a sender waits on them (a cold
/// producer would make the first messages wait for metadata).
fn check_topics<C: rdkafka::ClientContext>(
    client: &rdkafka::client::Client<C>,
    brokers: &str,
    topics: &[&str],
    timeout: std::time::Duration,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    for topic in topics {
        let metadata = client
            .fetch_metadata(Some(topic), timeout)
            .with_context(|| format!("Kafka at {brokers} did not answer"))?;
        if let Some(e) = metadata.topics().first().and_then(|t| t.error()) {
            anyhow::bail!(
                "Kafka topic \"{topic}\": {}",
                rdkafka::error::RDKafkaErrorCode::from(e)
            );
        }
    }
    Ok(())
}

/// The dead letter of a message a gateway refused, as the job writes its own: stage
/// `gateway`, the reason, where it came from (`source`, e.g. `mqtt://<topic>`, and the
/// gateway's running count of refused or received messages as its offset), the payload.
fn dead_letter_json(
    payload: &[u8],
    source: String,
    sequence: u64,
    headers: Vec<(String, Vec<u8>)>,
    reason: String,
) -> String {
    use crate::model::{Origin, RawMessage};
    crate::sinks::dead_letter::DeadLetter {
        message: RawMessage {
            payload: payload.to_vec(),
            key: None,
            headers,
            origin: Origin {
                topic: source.into(),
                partition: 0,
                offset: sequence as i64,
                timestamp_ms: Some(chrono::Utc::now().timestamp_millis()),
            },
        },
        stage: "gateway",
        error: reason,
        template: None,
    }
    .to_json()
    .to_string()
}
