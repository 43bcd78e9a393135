//! Reading a topic back from any offset against a Tansu broker process: Tansu 0.6 answers a
//! Fetch in the middle of a record batch with the batches after it (and, in the last batch,
//! with nothing), so a read-back that started where it must skipped records or never ended
//! (src/kafka/read_back.rs starts earlier and skips what it does not need).

mod common;

use rdkafka::consumer::BaseConsumer;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use std::time::{Duration, Instant};
use vitalflow::kafka::read_back::{read, Range};

#[test]
fn every_record_from_any_offset_to_the_end_even_mid_batch() {
    let t = common::tansu::Broker::start();
    t.create_topic("a", 2);
    let b = t.brokers();
    let p: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &b)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .create()
        .expect("producer");
    // Four batches of 3, 4, 5 and 6 records: offsets 0-2, 3-6, 7-11, 12-17.
    for round in 0..4 {
        for i in 0..(3 + round) {
            let payload = format!("r{round}-{i}");
            p.send(
                BaseRecord::<str, _>::to("a")
                    .partition(1)
                    .key("k")
                    .payload(&payload),
            )
            .expect("send");
        }
        p.flush(Duration::from_secs(10)).expect("flush");
    }
    for from in [
        None,
        Some(0),
        Some(5),
        Some(10),
        Some(13),
        Some(17),
        Some(18),
    ] {
        let c: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &b)
            .set("group.id", "read-back")
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "10")
            .create()
            .expect("consumer");
        let mut offsets = Vec::new();
        let reached = read(
            &c,
            "a",
            &[Range {
                partition: 1,
                from,
                to: None,
            }],
            Instant::now() + Duration::from_secs(30),
            |m| {
                use rdkafka::Message;
                offsets.push(m.offset())
            },
        )
        .unwrap_or_else(|e| panic!("from {from:?}: {e:#}"));
        let want: Vec<i64> = (from.unwrap_or(0)..18).collect();
        assert_eq!(offsets, want, "from {from:?}");
        assert_eq!(reached.get(&1), Some(&18), "from {from:?}");
    }
}
