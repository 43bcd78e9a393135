//! Reading partitions back to their real end: what a restart does to learn what an earlier
//! run already wrote (alert events, dead letters, the MLLP gateway's dedup window).
//!
//! The end is the high-water mark of the broker's Fetch responses (librdkafka caches it per
//! partition with every fetched message set), never ListOffsets: a Kafka-compatible broker
//! may answer ListOffsets with something else (Tansu 0.6 gives the base offset of the last
//! record batch plus one), and a read-back that stopped there would miss what follows and
//! send it again. End-of-partition events are not relied on either: librdkafka may report
//! them as client-level errors rather than on the consumer's poll. Offsets without a record
//! (transaction markers) count as read once the consumer's position passes them.

use anyhow::{anyhow, Context as _};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Where to read one partition: from an offset (None: its start) to an offset (None: its
/// real end).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    /// Partition.
    pub partition: i32,
    /// First offset (None: the first the broker still holds).
    pub from: Option<i64>,
    /// Offset to stop before (None: the partition's end as the broker's Fetch reports it).
    pub to: Option<i64>,
}

/// Per partition, the offset the read reached (everything before it was read).
pub type Reached = BTreeMap<i32, i64>;

/// How many records before its start a read begins (librdkafka's largest batch).
pub const LOOKBACK: i64 = 10_000;

/// Reads `ranges` of `topic` with `consumer` (assigned to them here), handing every record
/// to `each`, until every range is read or `deadline` passes (an error).
pub fn read(
    consumer: &BaseConsumer,
    topic: &str,
    ranges: &[Range],
    deadline: Instant,
    mut each: impl FnMut(&BorrowedMessage<'_>),
) -> anyhow::Result<Reached> {
    let mut tpl = TopicPartitionList::new();
    // (partition) -> (next offset to read, stop before)
    let mut pending: BTreeMap<i32, (Option<i64>, Option<i64>)> = BTreeMap::new();
    let mut reached = Reached::new();
    // Where each range starts: records before it (read for the look-back) are not handed on.
    let mut start: BTreeMap<i32, i64> = BTreeMap::new();
    for r in ranges {
        if let (Some(f), Some(t)) = (r.from, r.to) {
            if f >= t {
                reached.insert(r.partition, f);
                continue;
            }
        }
        tpl.add_partition_offset(
            topic,
            r.partition,
            r.from
                .map_or(Offset::Beginning, |f| Offset::Offset((f - LOOKBACK).max(0))),
        )?;
        pending.insert(r.partition, (r.from, r.to));
        if let Some(f) = r.from {
            start.insert(r.partition, f);
        }
    }
    if pending.is_empty() {
        return Ok(reached);
    }
    consumer
        .assign(&tpl)
        .with_context(|| format!("cannot read {topic} back"))?;
    while !pending.is_empty() {
        if Instant::now() >= deadline {
            let left: Vec<String> = pending.keys().map(|p| p.to_string()).collect();
            return Err(anyhow!(
                "reading {topic} back took too long (partitions {} not read to their end)",
                left.join(", ")
            ));
        }
        match consumer.poll(Duration::from_millis(50)) {
            Some(Ok(m)) => {
                let p = m.partition();
                if let Some((next, to)) = pending.get_mut(&p) {
                    let from = start.get(&p).copied().unwrap_or(i64::MIN);
                    if m.offset() >= from && to.is_none_or(|t| m.offset() < t) {
                        each(&m);
                    }
                    *next = Some(next.map_or(m.offset() + 1, |n| n.max(m.offset() + 1)));
                }
            }
            Some(Err(KafkaError::PartitionEOF(_))) | None => {}
            Some(Err(e)) => return Err(anyhow!(e).context(format!("cannot read {topic} back"))),
        }
        // Transaction markers have offsets but no records: the consumer's position passes
        // them without a message.
        if let Ok(positions) = consumer.position() {
            for e in positions.elements_for_topic(topic) {
                if let (Offset::Offset(o), Some((next, _))) =
                    (e.offset(), pending.get_mut(&e.partition()))
                {
                    *next = Some(next.map_or(o, |n| n.max(o)));
                }
            }
        }
        let done: Vec<(i32, i64)> = pending
            .iter()
            .filter_map(|(p, (next, to))| {
                // The last Fetch response's watermarks (none before one arrived): a range
                // read from its start with nothing consumed yet stands at the first offset
                // the broker holds, and one without an end ends at the high-water mark.
                let fetched = fetched_watermarks(consumer, topic, *p);
                let next = next.or(fetched.map(|(low, _)| low))?;
                let end = to.or(fetched.map(|(_, high)| high))?;
                (next >= end).then_some((*p, next))
            })
            .collect();
        for (p, next) in done {
            pending.remove(&p);
            reached.insert(p, next);
        }
    }
    Ok(reached)
}

/// The (low, high) watermarks of a partition as the last Fetch response gave them (no
/// request): `rd_kafka_get_watermark_offsets`, which rust-rdkafka does not wrap. None until a
/// Fetch response for the partition arrived.
pub fn fetched_watermarks<C: rdkafka::consumer::ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    partition: i32,
) -> Option<(i64, i64)> {
    let topic = std::ffi::CString::new(topic).ok()?;
    let (mut low, mut high) = (-1i64, -1i64);
    // SAFETY: the client pointer is valid while `consumer` lives; the topic is a valid C
    // string for the call; librdkafka writes only the two offsets and reads nothing else.
    let err = unsafe {
        rdkafka::bindings::rd_kafka_get_watermark_offsets(
            consumer.client().native_ptr(),
            topic.as_ptr(),
            partition,
            &mut low,
            &mut high,
        )
    };
    if err != rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || high < 0 {
        return None;
    }
    Some((low, high))
}

/// Reads every partition of `topic` from its first record to its real end (see [`read`]).
pub fn read_all(
    consumer: &BaseConsumer,
    topic: &str,
    deadline: Instant,
    each: impl FnMut(&BorrowedMessage<'_>),
) -> anyhow::Result<Reached> {
    let timeout = deadline
        .saturating_duration_since(Instant::now())
        .min(Duration::from_secs(10));
    let ranges: Vec<Range> = partitions(consumer, topic, timeout)?
        .keys()
        .map(|p| Range {
            partition: *p,
            from: None,
            to: None,
        })
        .collect();
    read(consumer, topic, &ranges, deadline, each)
}

/// The partitions of `topic` and the first offset the broker still holds in each (records
/// before it were removed by retention or compaction), from the metadata and ListOffsets
/// (whose earliest offset brokers agree on).
pub fn partitions(
    consumer: &BaseConsumer,
    topic: &str,
    timeout: Duration,
) -> anyhow::Result<BTreeMap<i32, i64>> {
    let meta = consumer
        .fetch_metadata(Some(topic), timeout)
        .with_context(|| format!("cannot read the metadata of {topic}"))?;
    let t = meta
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .ok_or_else(|| anyhow!("no topic {topic}"))?;
    if let Some(e) = t.error() {
        return Err(anyhow!("topic {topic}: {e:?}"));
    }
    t.partitions()
        .iter()
        .map(|p| {
            consumer
                .fetch_watermarks(topic, p.id(), timeout)
                .map(|(low, _)| (p.id(), low))
                .with_context(|| format!("cannot read where {topic} [{}] starts", p.id()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

    fn produce(brokers: &str, topic: &str, partition: i32, n: usize) {
        let p: BaseProducer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .create()
            .expect("producer");
        for i in 0..n {
            let payload = format!("r{i}");
            p.send(
                BaseRecord::<(), _>::to(topic)
                    .partition(partition)
                    .payload(&payload),
            )
            .expect("send");
        }
        p.flush(Duration::from_secs(10)).expect("flush");
    }

    fn consumer(brokers: &str) -> BaseConsumer {
        rdkafka::ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", "t")
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer")
    }

    #[test]
    fn every_partition_is_read_to_its_fetched_end_from_any_start() {
        let cluster = rdkafka::mocking::MockCluster::new(1).expect("mock");
        cluster.create_topic("t", 3, 1).expect("topic");
        let b = cluster.bootstrap_servers();
        produce(&b, "t", 0, 5);
        produce(&b, "t", 0, 3);
        produce(&b, "t", 1, 2);
        let deadline = || Instant::now() + Duration::from_secs(30);
        let c = consumer(&b);
        let parts = partitions(&c, "t", Duration::from_secs(10)).expect("partitions");
        assert_eq!(parts.keys().copied().collect::<Vec<_>>(), vec![0, 1, 2]);
        let mut n = 0;
        let reached = read_all(&c, "t", deadline(), |_| n += 1).expect("read");
        assert_eq!(n, 10);
        assert_eq!(
            reached,
            [(0, 8), (1, 2), (2, 0)].into_iter().collect(),
            "the empty partition ends too"
        );
        // From the middle, from the end: what is left, and nothing.
        let c = consumer(&b);
        let mut seen = Vec::new();
        let from = |partition, from| Range {
            partition,
            from: Some(from),
            to: None,
        };
        read(&c, "t", &[from(0, 6), from(1, 2)], deadline(), |m| {
            seen.push((m.partition(), m.offset()))
        })
        .expect("read");
        assert_eq!(seen, vec![(0, 6), (0, 7)]);
        // A bounded range stops at its end.
        let c = consumer(&b);
        let mut seen = Vec::new();
        let bounded = Range {
            partition: 0,
            from: Some(2),
            to: Some(4),
        };
        read(&c, "t", &[bounded], deadline(), |m| seen.push(m.offset())).expect("read");
        assert_eq!(seen, vec![2, 3]);
    }
}
