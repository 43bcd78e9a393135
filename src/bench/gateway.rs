//! `vitalflow bench mllp` and `bench mqtt`: the gateways' throughput on loopback against
//! librdkafka's in-process mock cluster. MLLP: each client waits for its ACK before sending
//! the next message (as MLLP senders do), with the send-to-ACK latency. MQTT: publishers at
//! QoS 1 into Mosquitto, drained by a plain subscriber (the baseline) and by the gateway.

use crate::config::{KafkaConfig, StartPosition};
use crate::gateway::mllp::{self, KeyBy};
use crate::gateway::mqtt::{self, BrokerSettings};
use crate::gateway::topic::TopicTemplate;
use anyhow::{anyhow, Context as _};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What `vitalflow bench mllp` measured: the same clients against an MLLP loop that answers
/// at once (no Kafka: the loopback and framing cost) and against the gateway.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    /// Concurrent connections.
    pub connections: usize,
    /// Messages acknowledged `AA`.
    pub messages: u64,
    /// Kafka the gateway wrote to ("mock" for the in-process cluster).
    pub kafka: String,
    /// The gateway: messages/s and send-to-ACK latency.
    pub gateway: Side,
    /// The plain loop answering without Kafka.
    pub baseline: Side,
}

/// One contender's figures.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Side {
    /// Acknowledged messages per second of wall time.
    pub msgs_per_s: f64,
    /// Send-to-ACK latency percentiles, milliseconds.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Maximum.
    pub max_ms: f64,
}

/// Sends `messages` PCD-01 messages over `connections` connections to the baseline loop and
/// then to the gateway writing to `brokers` (the in-process mock cluster when None).
pub fn mllp(connections: usize, messages: u64, brokers: Option<&str>) -> anyhow::Result<Report> {
    let cluster = match brokers {
        Some(_) => None,
        None => {
            let c = rdkafka::mocking::MockCluster::new(1).context("mock cluster")?;
            c.create_topic("hl7", 6, 1)?;
            Some(c)
        }
    };
    let bootstrap = match (&cluster, brokers) {
        (Some(c), _) => c.bootstrap_servers(),
        (None, Some(b)) => b.to_string(),
        (None, None) => unreachable!("a cluster or brokers"),
    };
    let echo = echo_loop()?;
    drive(echo, connections, connections as u64 * 10)?;
    let baseline = drive(echo, connections, messages)?;
    let settings = mllp::Settings {
        listen: "127.0.0.1:0".parse()?,
        kafka: KafkaConfig {
            brokers: bootstrap,
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
        tls: None,
        allow: Vec::new(),
    };
    let gateway = mllp::start(settings, Arc::new(AtomicBool::new(false)))?;
    // Warm-up, not measured: the idempotent producer's first messages wait for its producer
    // id (about 0.5 s after start-up against the mock cluster), once per gateway start.
    let measured = drive(gateway.addr, connections, connections as u64 * 10)
        .and_then(|_| drive(gateway.addr, connections, messages));
    gateway.stop();
    let (gateway_side, n) = measured?;
    Ok(Report {
        connections,
        messages: n,
        kafka: brokers.unwrap_or("mock").to_string(),
        gateway: gateway_side,
        baseline: baseline.0,
    })
}

/// The baseline: an MLLP listener that answers every frame with a fixed `MSA|AA` at once.
fn echo_loop() -> anyhow::Result<std::net::SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let _ = conn.set_nodelay(true);
                let ack = mllp::frame("MSH|^~\\&|B|B|B|B|20261129000000||ACK|1|P|2.6\rMSA|AA|1\r");
                let mut buf = [0u8; 64 * 1024];
                let mut last = 0u8;
                loop {
                    let n = match conn.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    for &b in &buf[..n] {
                        if last == 0x1c && b == 0x0d && conn.write_all(&ack).is_err() {
                            return;
                        }
                        last = b;
                    }
                }
            });
        }
    });
    Ok(addr)
}

/// The clients: `connections` threads, each sending its share one message at a time.
fn drive(
    addr: std::net::SocketAddr,
    connections: usize,
    messages: u64,
) -> anyhow::Result<(Side, u64)> {
    let example = include_str!("../../datasets/ihe-pcd01/oru-r01.hl7")
        .trim_end()
        .replace('\n', "\r");
    let per = messages / connections as u64;
    // Each run's control ids are new: the gateway would not produce a repeat again.
    static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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
                        .replace("MSG-000001", &format!("B{run}-{c}-{i}"))
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
    let ms = |q: f64| all.value_at_quantile(q) as f64 / 1000.0;
    Ok((
        Side {
            msgs_per_s: all.len() as f64 / wall,
            p50_ms: ms(0.5),
            p99_ms: ms(0.99),
            max_ms: all.max() as f64 / 1000.0,
        },
        all.len(),
    ))
}

/// What `vitalflow bench mqtt` measured: the same publishers and broker, drained by a plain
/// subscriber (auto-acknowledging, no Kafka) and then by the gateway.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MqttReport {
    /// Publishing connections.
    pub publishers: usize,
    /// Messages each contender received.
    pub messages: u64,
    /// The plain subscriber's messages/s (QoS 1, PUBACK at once): the broker's own pace.
    pub baseline_msgs_per_s: f64,
    /// The gateway's messages/s (QoS 1, PUBACK after Kafka's acknowledgement).
    pub gateway_msgs_per_s: f64,
    /// gateway / baseline.
    pub ratio: f64,
}

/// A Mosquitto started for the bench (killed when dropped).
struct Broker {
    child: Option<std::process::Child>,
    url: String,
    /// Its config directory, removed with it.
    dir: Option<std::path::PathBuf>,
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(d) = &self.dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// Starts `mosquitto` on a free loopback port, letting 1,000 QoS 1 messages be in flight per
/// client (its default of 20 would bound any subscriber, not the gateway).
fn start_mosquitto() -> anyhow::Result<Broker> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let dir = std::env::temp_dir().join(format!("vitalflow-bench-mqtt-{port}"));
    std::fs::create_dir_all(&dir)?;
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
             max_inflight_messages 1000\nmax_queued_messages 1000000\n"
        ),
    )?;
    let bin = ["/usr/sbin/mosquitto", "mosquitto"]
        .into_iter()
        .find(|b| !b.starts_with('/') || std::path::Path::new(b).exists())
        .unwrap_or("mosquitto");
    let child = std::process::Command::new(bin)
        .arg("-c")
        .arg(&conf)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("cannot start mosquitto (apt install mosquitto), or give --broker")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        anyhow::ensure!(Instant::now() < deadline, "mosquitto did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(Broker {
        child: Some(child),
        url: format!("mqtt://127.0.0.1:{port}"),
        dir: Some(dir),
    })
}

/// Publishes `messages` bedside readings at QoS 1 over `publishers` connections, each waiting
/// for its PUBACKs at the end.
fn publish(broker: &BrokerSettings, publishers: usize, messages: u64) -> anyhow::Result<()> {
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::{Client, Event, MqttOptions};
    let reading = include_str!("../../datasets/bedside-monitor/reading.json");
    let reading: serde_json::Value = serde_json::from_str(reading)?;
    let per = messages / publishers as u64;
    let threads: Vec<_> = (0..publishers)
        .map(|p| {
            let (host, port) = (broker.host.clone(), broker.port);
            let mut reading = reading.clone();
            std::thread::spawn(move || -> anyhow::Result<()> {
                let mut o = MqttOptions::new(format!("bench-pub-{p}"), host, port);
                o.set_max_packet_size(Some(1 << 20));
                let (client, mut connection) = Client::new(o, 1000);
                let device = format!("BM-{p:04}");
                reading["deviceId"] = device.clone().into();
                let acks = std::thread::spawn(move || -> anyhow::Result<()> {
                    let mut acked = 0;
                    for e in connection.iter() {
                        if let Event::Incoming(Packet::PubAck(_)) = e? {
                            acked += 1;
                            if acked == per {
                                return Ok(());
                            }
                        }
                    }
                    Err(anyhow!("publisher connection ended"))
                });
                for i in 0..per {
                    reading["sequence"] = i.into();
                    client.publish(
                        format!("devices/{device}/vitals"),
                        QoS::AtLeastOnce,
                        false,
                        reading.to_string(),
                    )?;
                }
                acks.join().map_err(|_| anyhow!("publisher panicked"))??;
                let _ = client.disconnect();
                Ok(())
            })
        })
        .collect();
    for t in threads {
        t.join().map_err(|_| anyhow!("a publisher panicked"))??;
    }
    Ok(())
}

/// The plain subscriber: counts messages, PUBACKs each at once; returns messages/s from its
/// subscription to the last message.
fn baseline(broker: &BrokerSettings, publishers: usize, messages: u64) -> anyhow::Result<f64> {
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::{Client, Event, MqttOptions};
    let mut o = MqttOptions::new("bench-baseline", broker.host.clone(), broker.port);
    o.set_receive_maximum(Some(1000))
        .set_max_packet_size(Some(1 << 20));
    let (client, mut connection) = Client::new(o, 1064);
    client.subscribe("devices/+/vitals", QoS::AtLeastOnce)?;
    let want = messages / publishers as u64 * publishers as u64;
    let counter = std::thread::spawn(move || -> anyhow::Result<Instant> {
        let mut got = 0;
        for e in connection.iter() {
            if let Event::Incoming(Packet::Publish(_)) = e? {
                got += 1;
                if got == want {
                    return Ok(Instant::now());
                }
            }
        }
        Err(anyhow!("baseline connection ended"))
    });
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    publish(broker, publishers, messages)?;
    let done = counter.join().map_err(|_| anyhow!("baseline panicked"))??;
    let _ = client.disconnect();
    Ok(want as f64 / (done - started).as_secs_f64())
}

/// Runs the MQTT bench against `broker` (a Mosquitto of its own when None) and the mock Kafka
/// cluster in process.
pub fn mqtt(broker: Option<&str>, publishers: usize, messages: u64) -> anyhow::Result<MqttReport> {
    let started_broker = match broker {
        Some(url) => Broker {
            child: None,
            url: url.to_string(),
            dir: None,
        },
        None => start_mosquitto()?,
    };
    let settings_broker = BrokerSettings::from_url(&started_broker.url).map_err(|e| anyhow!(e))?;
    let want = messages / publishers as u64 * publishers as u64;
    let baseline_rate = baseline(&settings_broker, publishers, messages)?;
    let cluster = rdkafka::mocking::MockCluster::new(1).context("mock cluster")?;
    cluster.create_topic("vitals", 6, 1)?;
    cluster.create_topic("vitals-refused", 1, 1)?;
    let gateway = mqtt::start(mqtt::Settings {
        broker: settings_broker.clone(),
        client_id: format!("bench-gateway-{}", std::process::id()),
        subscriptions: vec![
            TopicTemplate::parse("devices/{device}/vitals").map_err(|e| anyhow!(e))?
        ],
        share_group: None,
        kafka: KafkaConfig {
            brokers: cluster.bootstrap_servers(),
            topics: vec!["vitals".into()],
            group_id: "bench".into(),
            start: StartPosition::Earliest,
            partitions: 6,
            startup_timeout: Duration::from_secs(10),
            properties: Default::default(),
        },
        topic: "vitals".into(),
        dead_letter_topic: "vitals-refused".into(),
        key: Some("device".into()),
        content: mqtt::Content::Json,
        receive_maximum: 1000,
        session_expiry: Duration::from_secs(60),
        max_payload: 1 << 20,
        dedup_window: Duration::from_secs(600),
    })?;
    let started = Instant::now();
    publish(&settings_broker, publishers, messages)?;
    let deadline = Instant::now() + Duration::from_secs(600);
    while gateway
        .counters
        .accepted
        .load(std::sync::atomic::Ordering::Relaxed)
        < want
    {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the gateway did not drain in 10 min"
        );
        if let Some(f) = gateway.failure() {
            anyhow::bail!("the gateway failed: {f}");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let gateway_rate = want as f64 / started.elapsed().as_secs_f64();
    gateway.stop(Duration::from_secs(10));
    Ok(MqttReport {
        publishers,
        messages: want,
        baseline_msgs_per_s: baseline_rate,
        gateway_msgs_per_s: gateway_rate,
        ratio: gateway_rate / baseline_rate,
    })
}
