//! Kafka source: each worker is assigned partitions `p mod total_workers == worker` of every
//! topic (static assignment, no rebalancing: timely's cluster is the unit of scale), reads
//! them in batches, and commits offsets to the consumer group only when told they are durable.

use super::{Origin, Poll, Positions, RawMessage, Source};
use crate::config::{KafkaConfig, StartPosition};
use crate::kafka::{client_config, headers_of};
use crate::metrics::Metrics;
use anyhow::{anyhow, Context as _};
use rdkafka::consumer::base_consumer::PartitionQueue;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

/// Records per-partition lag from librdkafka's statistics into the job metrics.
struct LagContext(Arc<Metrics>);

impl ClientContext for LagContext {
    fn error(&self, error: KafkaError, reason: &str) {
        // The end of a partition is how `--until-end` knows it is done, not a failure.
        if matches!(
            error,
            KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF)
        ) {
            tracing::debug!("kafka: {error}");
        } else {
            tracing::error!("kafka: {error}: {reason}");
        }
    }

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

/// A (topic, partition) and the queue it is read from.
type Queue = ((Arc<str>, i32), PartitionQueue<LagContext>);

/// One worker's partitions of the source topics.
pub struct KafkaSource {
    consumer: Arc<BaseConsumer<LagContext>>,
    /// One queue per partition, so that end-of-partition events name their topic.
    queues: Vec<Queue>,
    topics: HashMap<String, Arc<str>>,
    /// Partitions read to their end (and nothing read since).
    at_eof: HashSet<(Arc<str>, i32)>,
    /// `--until-end`: a partition at its end has ended.
    until_end: bool,
    next: BTreeMap<(Arc<str>, i32), i64>,
    /// Per partition, the committed offset the read resumes at: it starts up to
    /// `read_back::LOOKBACK` records earlier, and what comes before this is skipped. A broker
    /// may answer a Fetch in the middle of a record batch with the batches after it, or, in
    /// the last batch, with nothing (Tansu 0.6): a read resumed there lost the rest of the
    /// batch or never reached the end.
    resume_at: HashMap<(Arc<str>, i32), i64>,
    turn: usize,
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
            // Where each partition's end is: `--until-end` stops there, and a live job's
            // event clock lets only a partition with nothing left to read go idle.
            .set("enable.partition.eof", "true")
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
        // Vitals are latency-sensitive: a broker holding a fetch for librdkafka's default 500 ms
        // when a partition is quiet would dominate the latency of the next reading.
        if !k.properties.contains_key("fetch.wait.max.ms") {
            c.set("fetch.wait.max.ms", "10");
        }
        // librdkafka prefetches up to 64 MiB per consumer by default, one consumer per
        // worker: on the peer drain that was 140 MB of the job's peak. 16 MiB is still
        // about 60,000 bedside messages, a fraction of a second ahead of the worker.
        if !k.properties.contains_key("queued.max.messages.kbytes") {
            c.set("queued.max.messages.kbytes", "16384");
        }
        let consumer: Arc<BaseConsumer<LagContext>> = Arc::new(
            c.create_with_context(LagContext(metrics))
                .with_context(|| format!("cannot create a Kafka consumer for {brokers}"))?,
        );
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
        let mut next = BTreeMap::new();
        let mut resume_at = HashMap::new();
        let mut queues = Vec::new();
        if !mine.is_empty() {
            let committed = consumer
                .committed_offsets(tpl.clone(), k.startup_timeout)
                .context("cannot read the consumer group's committed offsets")?;
            let mut from = TopicPartitionList::new();
            for (topic, p) in &mine {
                match committed.find_partition(topic, *p).map(|e| e.offset()) {
                    Some(Offset::Offset(o)) => {
                        next.insert((topic.clone(), *p), o);
                        resume_at.insert((topic.clone(), *p), o);
                        // Never before the first offset the broker holds: an offset out of
                        // range would reset to `start` (latest: past everything unread).
                        let low = consumer
                            .fetch_watermarks(topic, *p, k.startup_timeout)
                            .with_context(|| format!("cannot read where {topic}/{p} starts"))?
                            .0;
                        let early = (o - crate::kafka::read_back::LOOKBACK).max(low).min(o);
                        from.add_partition_offset(topic, *p, Offset::Offset(early))?;
                    }
                    _ => {
                        from.add_partition_offset(topic, *p, Offset::Stored)?;
                    }
                }
            }
            consumer.assign(&from).context("cannot assign partitions")?;
            crate::failpoint::hit("kafka.assigned");
            for (topic, p) in &mine {
                let q = consumer
                    .split_partition_queue(topic, *p)
                    .ok_or_else(|| anyhow!("cannot read {topic}/{p} on its own queue"))?;
                queues.push(((topic.clone(), *p), q));
            }
        }
        tracing::info!(worker, partitions = mine.len(), "kafka source assigned");
        Ok(Self {
            consumer,
            queues,
            topics,
            at_eof: HashSet::new(),
            until_end,
            next,
            resume_at,
            turn: 0,
        })
    }

    fn at_end(&self) -> bool {
        self.until_end && self.queues.iter().all(|(k, _)| self.at_eof.contains(k))
    }

    fn commit_mode(&mut self, positions: &Positions, mode: CommitMode) -> anyhow::Result<()> {
        let mut tpl = TopicPartitionList::new();
        for ((topic, p), offset) in positions {
            tpl.add_partition_offset(topic, *p, Offset::Offset(*offset))?;
        }
        if tpl.count() > 0 {
            self.consumer
                .commit(&tpl, mode)
                .context("cannot commit offsets")?;
        }
        Ok(())
    }
}

/// Copies a message out of librdkafka's buffer and records its position; None for one
/// before where the run resumes on its partition (read for the look-back only: processed
/// before the restart).
fn take(
    topics: &HashMap<String, Arc<str>>,
    next: &mut BTreeMap<(Arc<str>, i32), i64>,
    at_eof: &mut HashSet<(Arc<str>, i32)>,
    resume_at: &mut HashMap<(Arc<str>, i32), i64>,
    m: &BorrowedMessage<'_>,
) -> anyhow::Result<Option<RawMessage>> {
    let topic = topics
        .get(m.topic())
        .cloned()
        .ok_or_else(|| anyhow!("message from unassigned topic {}", m.topic()))?;
    let key = (topic.clone(), m.partition());
    if resume_at.get(&key).is_some_and(|o| m.offset() < *o) {
        return Ok(None);
    }
    resume_at.remove(&key);
    let headers = headers_of(m);
    next.insert(key.clone(), m.offset() + 1);
    at_eof.remove(&key);
    Ok(Some(RawMessage {
        payload: m.payload().unwrap_or_default().to_vec(),
        key: m.key().map(<[u8]>::to_vec),
        headers,
        origin: Origin {
            topic,
            partition: m.partition(),
            offset: m.offset(),
            timestamp_ms: m.timestamp().to_millis(),
        },
    }))
}

impl Source for KafkaSource {
    fn poll(&mut self, max: usize, out: &mut Vec<RawMessage>) -> anyhow::Result<Poll> {
        // Serves statistics and commit callbacks. Messages arrive on the partition queues,
        // except those a Fetch brought between `assign` and the split of their partition's
        // queue: librdkafka forwarded them to this queue. They precede everything on their
        // partition's queue, so they are taken first, all of them before any partition
        // queue is read. (They were dropped here: under load a restart lost the messages
        // after its committed offsets, and `--until-end` finished without them.)
        let mut read = 0;
        loop {
            match self.consumer.poll(Duration::ZERO) {
                None => break,
                Some(Err(KafkaError::PartitionEOF(_))) => {}
                Some(Err(e)) => tracing::warn!("kafka: {e}"),
                Some(Ok(m)) => {
                    let mine = self.topics.get(m.topic()).is_some_and(|t| {
                        (self.queues.iter()).any(|((q, p), _)| q == t && *p == m.partition())
                    });
                    if !mine {
                        continue;
                    }
                    let (topics, next, at_eof) = (&self.topics, &mut self.next, &mut self.at_eof);
                    let Some(raw) = take(topics, next, at_eof, &mut self.resume_at, &m)? else {
                        continue;
                    };
                    out.push(raw);
                    read += 1;
                    if read >= max {
                        // More may wait here: the partition queues only once this is empty.
                        return Ok(Poll::Ready);
                    }
                }
            }
        }
        if self.queues.is_empty() || self.at_end() {
            return Ok(if read > 0 {
                Poll::Ready
            } else if self.until_end {
                Poll::Finished
            } else {
                Poll::Idle
            });
        }
        let n = self.queues.len();
        let Self {
            queues,
            topics,
            next,
            at_eof,
            consumer,
            resume_at,
            ..
        } = self;
        let share = max.div_ceil(n);
        // Round-robin over partitions, starting where the last poll stopped, so that a busy
        // partition cannot starve the others.
        for i in 0..n {
            let at = (self.turn + i) % n;
            for _ in 0..share {
                let polled = queues[at].1.poll(Duration::ZERO);
                match polled {
                    None => {
                        // The end of a partition may come as a client-level error instead of
                        // on its queue (librdkafka does so; a Tansu broker showed it): where
                        // the last Fetch's high-water mark says nothing is left, it is at
                        // its end all the same.
                        let key = &queues[at].0;
                        if !at_eof.contains(key) {
                            let fetched = crate::kafka::read_back::fetched_watermarks(
                                consumer, &key.0, key.1,
                            );
                            let ended = match (fetched, next.get(key)) {
                                (Some((_, high)), Some(n)) => *n >= high,
                                (Some((low, high)), None) => low >= high,
                                (None, _) => false,
                            };
                            if ended {
                                at_eof.insert(key.clone());
                            }
                        }
                        break;
                    }
                    Some(Err(KafkaError::PartitionEOF(_))) => {
                        at_eof.insert(queues[at].0.clone());
                        break;
                    }
                    Some(Err(e)) => {
                        // Broker and network errors are transient for librdkafka, which retries.
                        tracing::warn!("kafka: {e}");
                        break;
                    }
                    Some(Ok(m)) => {
                        if let Some(raw) = take(topics, next, at_eof, resume_at, &m)? {
                            out.push(raw);
                            read += 1;
                        }
                    }
                }
            }
        }
        self.turn = (self.turn + 1) % n;
        Ok(if read > 0 { Poll::Ready } else { Poll::Idle })
    }

    fn positions(&self) -> Positions {
        self.next.clone()
    }

    fn partitions(&self) -> Vec<((Arc<str>, i32), bool)> {
        self.queues
            .iter()
            .map(|(k, _)| (k.clone(), self.at_eof.contains(k)))
            .collect()
    }

    fn commit(&mut self, positions: &Positions) -> anyhow::Result<()> {
        // Synchronous: the commit log (dataflow::commit_log) forgets the previous commit's
        // record once this returns, so the broker must hold the offsets by then. An
        // asynchronous commit lost in a kill left offsets whose record was gone (the crash
        // trials found it: a restart judged lateness from an empty clock). At most one
        // commit per 500 ms, so the round trip costs little.
        self.commit_mode(positions, CommitMode::Sync)
    }

    fn commit_final(&mut self, positions: &Positions) -> anyhow::Result<()> {
        self.commit_mode(positions, CommitMode::Sync)
    }
}
