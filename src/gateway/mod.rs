//! Gateways: hospital device protocols landed durably in Kafka, where the job reads them.
//! The job stays Kafka-first (sharding, offsets, replay and exactly-once rest on it); a
//! gateway acknowledges a message to its sender only once Kafka has it.

mod dedup;
pub mod mllp;
pub mod mqtt;
pub mod topic;
