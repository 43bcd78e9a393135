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
