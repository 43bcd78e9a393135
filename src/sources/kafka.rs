//! Kafka source: each worker is assigned partitions `p mod total_workers == worker` of every
//! topic (static assignment, no rebalancing: timely's cluster is the unit of scale), reads
//! them in batches, and commits offsets to the consumer group only when told they are durable.

use super::{Origin, Poll, Positions, RawMessage, Source};
use crate::job::{KafkaConfig, StartPosition};
use crate::metrics::Metrics;
use anyhow::{anyhow, bail, Context as _};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::message::{Headers, Message};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
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

/// Records per-partition lag from librdkafka's statistics into the job metrics.
struct LagContext(Arc<Metrics>);

impl ClientContext for LagContext {
    fn stats(&self, stats: Statistics) {
        if let Ok(mut lag) = self.0.lag.lock() {
            for (topic, t) in &stats.topics {
                for (p, s) in &t.partitions {
                    if *p >= 0 && s.app_offset >= 0 && s.hi_offset >= 0 {
                        lag.insert((topic.clone(), *p), s.hi_offset - s.app_offset);
                    }
                }
            }
        }
    }
}

impl ConsumerContext for LagContext {}

/// One worker's partitions of the source topics.
pub struct KafkaSource {
    consumer: BaseConsumer<LagContext>,
    topics: HashMap<String, Arc<str>>,
    /// For `--until-end`: the high watermark of each partition at start.
    end: Option<BTreeMap<(Arc<str>, i32), i64>>,
    next: BTreeMap<(Arc<str>, i32), i64>,
}

impl KafkaSource {
    /// Assigns this worker's partitions; `partitions` is each topic's partition count.
    pub fn new(
        k: &KafkaConfig,
        brokers: &str,
        partitions: &BTreeMap<String, i32>,
        worker: usize,
        peers: usize,
        until_end: bool,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let mut c = client_config(k, brokers);
        c.set("group.id", &k.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set(
                "auto.offset.reset",
                match k.start {
                    StartPosition::Earliest => "earliest",
                    StartPosition::Latest => "latest",
                },
            );
        if !k.properties.contains_key("statistics.interval.ms") {
            c.set("statistics.interval.ms", "1000");
        }
        let consumer: BaseConsumer<LagContext> = c
            .create_with_context(LagContext(metrics))
            .with_context(|| format!("cannot create a Kafka consumer for {brokers}"))?;
        let mut tpl = TopicPartitionList::new();
        let mut topics = HashMap::new();
        let mut mine = Vec::new();
        for (topic, n) in partitions {
            let name: Arc<str> = topic.as_str().into();
            topics.insert(topic.clone(), name.clone());
            for p in (0..*n).filter(|p| *p as usize % peers == worker) {
                tpl.add_partition_offset(topic, p, Offset::Stored)?;
                mine.push((name.clone(), p));
            }
        }
        let timeout = k.startup_timeout;
        let mut next = BTreeMap::new();
        let mut end = BTreeMap::new();
        if !mine.is_empty() {
            let committed = consumer
                .committed_offsets(tpl.clone(), timeout)
                .context("cannot read the consumer group's committed offsets")?;
            for (topic, p) in &mine {
                let (low, high) = consumer
                    .fetch_watermarks(topic, *p, timeout)
                    .with_context(|| format!("cannot read watermarks of {topic}/{p}"))?;
                let start = match committed.find_partition(topic, *p).map(|e| e.offset()) {
                    Some(Offset::Offset(o)) => o,
                    _ => match k.start {
                        StartPosition::Earliest => low,
                        StartPosition::Latest => high,
                    },
                };
                next.insert((topic.clone(), *p), start);
                end.insert((topic.clone(), *p), high);
            }
            consumer.assign(&tpl).context("cannot assign partitions")?;
        }
        tracing::info!(worker, partitions = mine.len(), "kafka source assigned");
        Ok(Self {
            consumer,
            topics,
            end: until_end.then_some(end),
            next,
        })
    }

    fn at_end(&self) -> bool {
        self.end.as_ref().is_some_and(|end| {
            end.iter()
                .all(|(k, high)| self.next.get(k).is_some_and(|n| n >= high))
        })
    }

    fn commit_mode(&mut self, positions: &Positions, mode: CommitMode) -> anyhow::Result<()> {
        let mut tpl = TopicPartitionList::new();
        for ((topic, p), offset) in positions {
            if self.next.contains_key(&(topic.clone(), *p)) {
                tpl.add_partition_offset(topic, *p, Offset::Offset(*offset))?;
            }
        }
        if tpl.count() > 0 {
            self.consumer
                .commit(&tpl, mode)
                .context("cannot commit offsets")?;
        }
        Ok(())
    }
}

impl Source for KafkaSource {
    fn poll(&mut self, max: usize, out: &mut Vec<RawMessage>) -> anyhow::Result<Poll> {
        if self.next.is_empty() || self.at_end() {
            return Ok(if self.end.is_some() {
                Poll::Finished
            } else {
                Poll::Idle
            });
        }
        for _ in 0..max {
            match self.consumer.poll(Duration::ZERO) {
                None => return Ok(Poll::Idle),
                Some(Err(e)) => {
                    // Broker and network errors are transient for librdkafka, which retries.
                    tracing::warn!("kafka: {e}");
                    return Ok(Poll::Idle);
                }
                Some(Ok(m)) => {
                    let topic =
                        self.topics.get(m.topic()).cloned().ok_or_else(|| {
                            anyhow!("message from unassigned topic {}", m.topic())
                        })?;
                    let headers = m
                        .headers()
                        .map(|h| {
                            h.iter()
                                .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                                .collect()
                        })
                        .unwrap_or_default();
                    self.next
                        .insert((topic.clone(), m.partition()), m.offset() + 1);
                    out.push(RawMessage {
                        payload: m.payload().unwrap_or_default().to_vec(),
                        key: m.key().map(<[u8]>::to_vec),
                        headers,
                        origin: Origin {
                            topic,
                            partition: m.partition(),
                            offset: m.offset(),
                            timestamp_ms: m.timestamp().to_millis(),
                        },
                    });
                    if self.at_end() {
                        return Ok(Poll::Ready);
                    }
                }
            }
        }
        Ok(Poll::Ready)
    }

    fn positions(&self) -> Positions {
        self.next.clone()
    }

    fn commit(&mut self, positions: &Positions) -> anyhow::Result<()> {
        self.commit_mode(positions, CommitMode::Async)
    }

    fn commit_final(&mut self, positions: &Positions) -> anyhow::Result<()> {
        self.commit_mode(positions, CommitMode::Sync)
    }
}
