//! `vitalflow bench mllp`: the MLLP gateway's throughput and acknowledgement latency on
//! loopback, each client waiting for its ACK before sending the next message (as MLLP
//! senders do), against librdkafka's in-process mock cluster.

use crate::config::{KafkaConfig, StartPosition};
use crate::gateway::mllp::{self, KeyBy};
use anyhow::{anyhow, Context as _};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What one run measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    /// Concurrent connections.
    pub connections: usize,
    /// Messages acknowledged `AA`.
    pub messages: u64,
    /// Acknowledged messages per second of wall time.
    pub msgs_per_s: f64,
    /// Send-to-ACK latency percentiles, milliseconds.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Maximum.
    pub max_ms: f64,
}

/// Sends `messages` PCD-01 messages over `connections` connections and measures.
pub fn run(connections: usize, messages: u64) -> anyhow::Result<Report> {
    let cluster = rdkafka::mocking::MockCluster::new(1).context("mock cluster")?;
    cluster.create_topic("hl7", 6, 1)?;
    let settings = mllp::Settings {
        listen: "127.0.0.1:0".parse()?,
        kafka: KafkaConfig {
            brokers: cluster.bootstrap_servers(),
            topics: vec!["hl7".into()],
            group_id: "bench".into(),
            start: StartPosition::Earliest,
            partitions: 6,
            startup_timeout: Duration::from_secs(10),
            properties: Default::default(),
        },
        topic: "hl7".into(),
        dead_letter_topic: None,
        key: KeyBy::Patient,
        dedup_window: Duration::from_secs(600),
        max_frame: 1 << 20,
        ack_timeout: Duration::from_secs(30),
    };
    let gateway = mllp::start(settings, Arc::new(AtomicBool::new(false)))?;
    let example = include_str!("../datasets/ihe-pcd01/oru-r01.hl7")
        .trim_end()
        .replace('\n', "\r");
    let per = messages / connections as u64;
    let addr = gateway.addr;
    let started = Instant::now();
    let threads: Vec<_> = (0..connections)
        .map(|c| {
            let example = example.clone();
            std::thread::spawn(move || -> anyhow::Result<hdrhistogram::Histogram<u64>> {
                let mut h = hdrhistogram::Histogram::<u64>::new(3)?;
                let mut conn = TcpStream::connect(addr)?;
                conn.set_nodelay(true)?;
                let mut reply = Vec::with_capacity(512);
                let mut buf = [0u8; 512];
                for i in 0..per {
                    let m = example
                        .replace("MSG-000001", &format!("B{c}-{i}"))
                        .replace("PAT-1001", &format!("PAT-{c}"));
                    let t = Instant::now();
                    conn.write_all(&mllp::frame(&m))?;
                    reply.clear();
                    while !reply.ends_with(&[0x1c, 0x0d]) {
                        let n = conn.read(&mut buf)?;
                        if n == 0 {
                            return Err(anyhow!("the gateway closed the connection"));
                        }
                        reply.extend_from_slice(&buf[..n]);
                    }
                    h.record(t.elapsed().as_micros() as u64)?;
                    if !reply.windows(7).any(|w| w == b"MSA|AA|") {
                        return Err(anyhow!("not accepted: {}", String::from_utf8_lossy(&reply)));
                    }
                }
                Ok(h)
            })
        })
        .collect();
    let mut all = hdrhistogram::Histogram::<u64>::new(3)?;
    for t in threads {
        all.add(t.join().map_err(|_| anyhow!("a client panicked"))??)?;
    }
    let wall = started.elapsed().as_secs_f64();
    gateway.stop();
    let ms = |q: f64| all.value_at_quantile(q) as f64 / 1000.0;
    Ok(Report {
        connections,
        messages: all.len(),
        msgs_per_s: all.len() as f64 / wall,
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
        max_ms: all.max() as f64 / 1000.0,
    })
}
