//! The gateways' dedup window: the keys of the messages accepted within it (MLLP: sending
//! application and control id; MQTT: topic and payload digest), kept in acceptance order so
//! expiry costs what expires, and read back from the topic's headers at start-up so the
//! window survives a restart.

use crate::config::KafkaConfig;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Records the first backward step reads per partition (where the broker has no time index).
const FIRST_STEP: i64 = 1000;

/// The (sending application, control id) of accepted messages within the dedup window.
#[derive(Default)]
pub(super) struct Seen {
    /// Key → when it was accepted last.
    keys: HashMap<(String, String), Instant>,
    /// Keys in acceptance order: expiry takes only what is due from the front, so its cost
    /// follows the messages, not the size of the window.
    order: VecDeque<(Instant, (String, String))>,
}

impl Seen {
    /// Whether `key` was accepted within the window.
    pub(super) fn contains(&self, key: &(String, String)) -> bool {
        self.keys.contains_key(key)
    }

    /// How many keys the window holds.
    pub(super) fn len(&self) -> usize {
        self.keys.len()
    }

    /// Records `key` as accepted now.
    pub(super) fn insert(&mut self, key: (String, String)) {
        self.insert_at(key, Instant::now());
    }

    /// Records `key` as accepted at `at` (not before the newest entry: the queue stays in
    /// acceptance order).
    fn insert_at(&mut self, key: (String, String), at: Instant) {
        let at = self.order.back().map_or(at, |(last, _)| at.max(*last));
        self.keys.insert(key.clone(), at);
        self.order.push_back((at, key));
    }

    /// The keys Kafka already holds from the last `window`, read back from the records'
    /// `headers` (the two making a key): a sender resending what a previous gateway wrote to
    /// Kafka but did not acknowledge (it was killed) is acknowledged without a second copy.
    /// Reads the window's records once at start-up: from the offset Kafka gives for the
    /// window's start, or, where it gives none (brokers without time indexes), backwards from
    /// the end in growing steps until a step reaches records older than the window.
    pub(super) fn from_kafka(
        kafka: &KafkaConfig,
        topic: &str,
        window: Duration,
        headers: (&str, &str),
    ) -> anyhow::Result<Self> {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        use rdkafka::{Offset, TopicPartitionList};
        let timeout = kafka.startup_timeout;
        let consumer: BaseConsumer = crate::kafka::client_config(kafka, &kafka.brokers)
            .set("group.id", "vitalflow-gateway-dedup")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            // A read-back ends on a Fetch answer at the end: the broker must not hold it.
            .set("fetch.wait.max.ms", "10")
            .create()?;
        let partitions = crate::kafka::read_back::partitions(&consumer, topic, timeout)?;
        let now_ms = chrono::Utc::now().timestamp_millis();
        let since = now_ms - window.as_millis() as i64;
        let mut query = TopicPartitionList::new();
        for p in partitions.keys() {
            query.add_partition_offset(topic, *p, Offset::Offset(since))?;
        }
        let starts = consumer.offsets_for_times(query, timeout)?;
        let deadline = Instant::now() + timeout.max(Duration::from_secs(60));
        let mut found = Vec::new();
        let range = |partition, from, to| crate::kafka::read_back::Range {
            partition,
            from: Some(from),
            to,
        };
        // Partitions with a time index: the window's records, all partitions in one read.
        let mut direct = Vec::new();
        let mut stepping = Vec::new();
        for e in starts.elements() {
            let p = e.partition();
            let low = partitions.get(&p).copied().unwrap_or(0);
            match e.offset() {
                Offset::Offset(start) if start >= low => direct.push(range(p, start, None)),
                _ => stepping.push((p, low)),
            }
        }
        read_back(&consumer, headers, topic, &direct, deadline, &mut found)?;
        // No time index: backwards from the end in growing steps, every such partition in
        // the same read (one partition after another took seconds per restart on a broker
        // that answers a Fetch with one record batch). The first step runs to the real end:
        // ListOffsets' end may lie before it (see crate::kafka::read_back).
        let mut open: Vec<(i32, i64, i64)> = Vec::new(); // (partition, low, step start)
        let mut ranges = Vec::new();
        for (p, low) in stepping {
            let (_, listed) = consumer.fetch_watermarks(topic, p, timeout)?;
            let from = (listed - FIRST_STEP).max(low);
            ranges.push(range(p, from, None));
            open.push((p, low, from));
        }
        let mut step = FIRST_STEP;
        while !ranges.is_empty() {
            let oldest = read_back(&consumer, headers, topic, &ranges, deadline, &mut found)?;
            step *= 2;
            ranges.clear();
            open.retain(|(p, low, from)| from > low && oldest.get(p).is_none_or(|t| *t >= since));
            for (p, low, from) in &mut open {
                let to = *from;
                *from = (to - step).max(*low);
                ranges.push(range(*p, *from, Some(to)));
            }
        }
        found.retain(|(at, _)| *at >= since);
        found.sort_by_key(|(at, _)| *at);
        let (now, mut seen) = (Instant::now(), Self::default());
        for (at, key) in found {
            let age = Duration::from_millis(now_ms.saturating_sub(at).max(0) as u64);
            seen.insert_at(key, now.checked_sub(age).unwrap_or(now));
        }
        Ok(seen)
    }

    /// Forgets what was accepted longer than `window` ago.
    pub(super) fn expire(&mut self, window: Duration) {
        while let Some((at, _)) = self.order.front() {
            if at.elapsed() < window {
                break;
            }
            let (at, key) = self.order.pop_front().expect("front");
            // A key accepted again later stays until its newest acceptance expires.
            if self.keys.get(&key) == Some(&at) {
                self.keys.remove(&key);
            }
        }
    }
}

/// Reads `ranges` (to a partition's real end where a range gives none) into `found` as
/// (timestamp, (first, second) header values); returns the oldest timestamp read per
/// partition.
fn read_back(
    consumer: &rdkafka::consumer::BaseConsumer,
    (first, second): (&str, &str),
    topic: &str,
    ranges: &[crate::kafka::read_back::Range],
    deadline: Instant,
    found: &mut Vec<(i64, (String, String))>,
) -> anyhow::Result<HashMap<i32, i64>> {
    use rdkafka::Message;
    let mut oldest: HashMap<i32, i64> = HashMap::new();
    if ranges.is_empty() {
        return Ok(oldest);
    }
    crate::kafka::read_back::read(consumer, topic, ranges, deadline, |m| {
        let at = m.timestamp().to_millis().unwrap_or(i64::MAX);
        oldest
            .entry(m.partition())
            .and_modify(|o| *o = (*o).min(at))
            .or_insert(at);
        let headers: HashMap<String, Vec<u8>> = crate::kafka::headers_of(m);
        let text = |k: &str| {
            headers
                .get(k)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        if let (Some(a), Some(b)) = (text(first), text(second)) {
            found.push((at, (a, b)));
        }
    })
    .map_err(|e| e.context("reading the dedup window back"))?;
    Ok(oldest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str) -> (String, String) {
        ("MONITOR".into(), id.into())
    }

    #[test]
    fn keys_expire_by_their_newest_acceptance_and_read_back_ages_count() {
        let now = Instant::now();
        let mut seen = Seen::default();
        // Read back from Kafka: one 90 s old, one 10 s old.
        seen.insert_at(key("old"), now - Duration::from_secs(90));
        seen.insert_at(key("recent"), now - Duration::from_secs(10));
        seen.insert(key("again"));
        seen.insert(key("old"));
        seen.expire(Duration::from_secs(60));
        // "old" was accepted again now: its first acceptance expiring does not forget it.
        assert!(seen.contains(&key("old")));
        assert!(seen.contains(&key("recent")));
        seen.expire(Duration::from_secs(5));
        assert!(!seen.contains(&key("recent")), "10 s old, window 5 s");
        assert!(seen.contains(&key("again")) && seen.contains(&key("old")));
        assert_eq!(seen.len(), 2);
    }
}
