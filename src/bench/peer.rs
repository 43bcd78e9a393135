//! `vitalflow bench peer`: the job against plain loops on the same Kafka input, each timed
//! as a whole process, so every figure is a ratio measured side by side.
//!
//! The input is the simulator's bedside-monitor messages (heart rate, SpO2, respiratory rate
//! every second; blood pressure every 5 minutes and temperature every minute), produced once
//! into a topic of librdkafka's in-process mock cluster (or given brokers). The contenders
//! read it from the beginning to its end:
//!
//! - `loop-alerts`: rdkafka + serde_json on N threads, a HashMap of count / min / max / sum
//!   per (device, vital, hour), and threshold alerts (on crossing) to a topic;
//! - `loop-aggregates`: the same, also writing every aggregate update (one JSON line per
//!   vital per message) to a file;
//! - `vitalflow`: `vitalflow run --until-end` with the bedside templates, hourly SampledData
//!   Observations to NDJSON flushed every second, threshold alerts to a topic;
//! - `vitalflow-alerts`: the same job without `[sinks.ndjson]`.
//!
//! Per contender: messages/s, CPU seconds (user + system, from `wait4`), peak RSS, and bytes
//! written (files under its output directory plus the records of its alert topic).

use crate::config::SimulatorConfig;
use anyhow::{anyhow, Context as _};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde::Serialize;
use serde_json::Value;
use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The input topic.
const TOPIC: &str = "peer-vitals";

/// What `vitalflow bench peer` runs.
#[derive(Debug, Clone)]
pub struct PeerOptions {
    /// Messages produced and read.
    pub messages: u64,
    /// Simulated monitors.
    pub devices: u32,
    /// Partitions of the input topic.
    pub partitions: i32,
    /// Worker threads of every contender.
    pub threads: usize,
    /// Where each contender writes.
    pub out: PathBuf,
    /// Contenders to run (all when empty).
    pub only: Vec<String>,
    /// External brokers (e.g. Tansu with in-memory storage); None: librdkafka's mock
    /// cluster, which keeps about 5 MB per partition (some 80 000 of these messages on 4).
    pub brokers: Option<String>,
}

/// One contender's figures.
#[derive(Debug, Clone, Serialize)]
pub struct Contender {
    /// Name.
    pub name: String,
    /// Wall time, seconds.
    pub seconds: f64,
    /// Messages per second of wall time.
    pub msgs_per_s: f64,
    /// User + system CPU seconds.
    pub cpu_s: f64,
    /// Peak resident set, MiB.
    pub peak_rss_mib: f64,
    /// Bytes written: files under its output directory and its alert topic's records.
    pub bytes_written: u64,
    /// Bytes written per million messages read.
    pub bytes_per_million: f64,
    /// Alert records it produced.
    pub alerts: u64,
}

fn mock() -> anyhow::Result<(
    rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    String,
)> {
    let c = rdkafka::mocking::MockCluster::new(1).context("cannot start the mock cluster")?;
    let b = c.bootstrap_servers();
    Ok((c, b))
}

/// Produces the seeded input.
fn produce_input(brokers: &str, opts: &PeerOptions) -> anyhow::Result<u64> {
    let cfg = SimulatorConfig {
        devices: opts.devices,
        count: Some(opts.messages),
        rate: 0.0,
        seed: 7,
        // Pulse-oximeter artifacts and a few acute desaturations: alerts to raise.
        artifacts: 0.002,
        acute: (opts.devices / 100).max(1),
        ..SimulatorConfig::default()
    };
    let start = crate::time::parse_timestamp("2026-11-01T08:00:00Z").expect("time");
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("linger.ms", "20")
        .create()?;
    let mut bytes = 0u64;
    for m in crate::sources::simulator::Simulator::new(&cfg, start, (0, 1)) {
        bytes += m.payload.len() as u64;
        crate::kafka::send(
            &producer,
            BaseRecord::to(TOPIC).key(&m.key).payload(&m.payload),
        )
        .map_err(|e| anyhow!("cannot produce the input: {e}"))?;
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(120))?;
    Ok(bytes)
}

/// Runs every contender; prints nothing.
pub fn run(opts: &PeerOptions) -> anyhow::Result<(u64, Vec<Contender>)> {
    let names = [
        "loop-alerts",
        "loop-aggregates",
        "vitalflow",
        "vitalflow-alerts",
    ];
    let mut topics = vec![(TOPIC.to_string(), opts.partitions)];
    topics.extend(names.iter().map(|n| (format!("alerts-{n}"), 1)));
    let (cluster, brokers) = match &opts.brokers {
        Some(b) => {
            create_topics(b, &topics)?;
            (None, b.clone())
        }
        None => {
            let (c, b) = mock()?;
            for (t, n) in &topics {
                c.create_topic(t, *n, 1)?;
            }
            (Some(c), b)
        }
    };
    let input_bytes = produce_input(&brokers, opts)?;
    let exe = std::env::current_exe().context("cannot find the vitalflow binary")?;
    let mut out = Vec::new();
    for name in names {
        if !opts.only.is_empty() && !opts.only.iter().any(|o| o == name) {
            continue;
        }
        let dir = opts.out.join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let mut cmd = std::process::Command::new(&exe);
        let alerts_topic = format!("alerts-{name}");
        if let Some(mode) = name.strip_prefix("loop-") {
            cmd.args(["bench-loop", "--brokers", &brokers, "--topic", TOPIC])
                .args(["--alerts-topic", &alerts_topic, "--mode", mode])
                .args(["--threads", &opts.threads.to_string(), "--out"])
                .arg(&dir);
        } else {
            let job = write_job(&dir, &brokers, name, name == "vitalflow")?;
            cmd.args(["run", "--until-end", "--workers", &opts.threads.to_string()])
                .arg("--job")
                .arg(&job)
                .arg("--output")
                .arg(dir.join("out"));
        }
        cmd.stdout(std::process::Stdio::null());
        let (seconds, cpu_s, rss_kib) = timed(&mut cmd).with_context(|| name.to_string())?;
        let read = committed(&brokers, &group_of(name), opts.partitions)?;
        if read != opts.messages as i64 {
            return Err(anyhow!(
                "{name} committed {read} of the {} messages",
                opts.messages
            ));
        }
        let (alerts, topic_bytes) = topic_bytes(&brokers, &alerts_topic)?;
        let bytes = dir_bytes(&dir) + topic_bytes;
        out.push(Contender {
            name: name.to_string(),
            seconds,
            msgs_per_s: opts.messages as f64 / seconds,
            cpu_s,
            peak_rss_mib: rss_kib as f64 / 1024.0,
            bytes_written: bytes,
            bytes_per_million: bytes as f64 * 1e6 / opts.messages as f64,
            alerts,
        });
    }
    drop(cluster);
    Ok((input_bytes, out))
}

/// The consumer group of a contender.
fn group_of(name: &str) -> String {
    format!("peer-{name}")
}

/// Creates the topics on external brokers (those already there are kept).
fn create_topics(brokers: &str, topics: &[(String, i32)]) -> anyhow::Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|(t, n)| NewTopic::new(t, *n, TopicReplication::Fixed(1)))
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    for r in rt.block_on(admin.create_topics(&new, &AdminOptions::new()))? {
        match r {
            Ok(_) | Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, e)) => return Err(anyhow!("cannot create topic {t}: {e}")),
        }
    }
    Ok(())
}

/// The sum of a group's committed offsets on the input topic.
fn committed(brokers: &str, group: &str, partitions: i32) -> anyhow::Result<i64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(TOPIC, p);
    }
    let got = c.committed_offsets(tpl, Duration::from_secs(30))?;
    Ok(got
        .elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) => o,
            _ => 0,
        })
        .sum())
}

/// The job the vitalflow contenders run, and its threshold rules.
fn write_job(dir: &Path, brokers: &str, name: &str, ndjson: bool) -> anyhow::Result<PathBuf> {
    let (alerts, group) = (format!("alerts-{name}"), group_of(name));
    let rules = dir.join("thresholds.toml");
    std::fs::write(&rules, THRESHOLDS)?;
    let ndjson = if ndjson {
        format!(
            "[sinks.ndjson]\ndir = \"{}\"\nflush_interval = \"1s\"\n",
            dir.join("out").display()
        )
    } else {
        String::new()
    };
    let text = format!(
        "name = \"peer\"\nsource = \"kafka\"\n\n[kafka]\nbrokers = \"{brokers}\"\ntopics = [\"{TOPIC}\"]\ngroup_id = \"{group}\"\n\n[mapping]\ndevice = \"templates/bedside-monitor/devicecontent.json\"\nfhir = \"templates/bedside-monitor/fhirmapping.json\"\n\n{ndjson}\n[anomaly]\nrules = \"{rules}\"\ntopic = \"{alerts}\"\n",
        rules = rules.display(),
    );
    let job = dir.join("job.toml");
    std::fs::write(&job, text)?;
    Ok(job)
}

/// Threshold rules on the vitals the loops watch, alerting on the first reading across.
const THRESHOLDS: &str = r#"[defaults]
sustained = "0s"
resolve_after = "0s"
suppress = "0s"

[[rule]]
id = "hr-high"
title = "Heart rate high"
vital = "8867-4"
above = { warning = 120 }

[[rule]]
id = "spo2-low"
title = "SpO2 low"
vital = "59408-5"
below = { warning = 90 }

[[rule]]
id = "rr-high"
title = "Respiratory rate high"
vital = "9279-1"
above = { warning = 25 }
"#;

/// Runs a child to its end: (wall s, CPU s, peak RSS KiB).
fn timed(cmd: &mut std::process::Command) -> anyhow::Result<(f64, f64, i64)> {
    let started = Instant::now();
    let child = cmd.spawn().context("cannot start")?;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to fill.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child, with valid pointers.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    let seconds = started.elapsed().as_secs_f64();
    if pid < 0 {
        return Err(anyhow!("wait4: {}", std::io::Error::last_os_error()));
    }
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        return Err(anyhow!("exited with status {status}"));
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok((
        seconds,
        tv(usage.ru_utime) + tv(usage.ru_stime),
        usage.ru_maxrss,
    ))
}

fn dir_bytes(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            Ok(_) => e.metadata().map_or(0, |m| m.len()),
            Err(_) => 0,
        })
        .sum()
}

/// Records and key + value bytes of a one-partition topic.
fn topic_bytes(brokers: &str, topic: &str) -> anyhow::Result<(u64, u64)> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "peer-count")
        .set("enable.partition.eof", "true")
        .set("enable.auto.commit", "false")
        .create()?;
    // To an end-of-partition event at or past the end the broker states once the contender
    // has ended: that event stands for the end a fetch saw, which may be older. (Stopping
    // at the stated end alone counted short against Tansu, whose stated end can be behind
    // the records it serves.)
    let (_, end) = c.fetch_watermarks(topic, 0, Duration::from_secs(10))?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)?;
    c.assign(&tpl)?;
    let (mut n, mut bytes, mut next) = (0u64, 0u64, 0i64);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        anyhow::ensure!(
            Instant::now() < deadline,
            "reading {topic}: at offset {next} of {end} after 60 s"
        );
        match c.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => {
                n += 1;
                next = m.offset() + 1;
                bytes +=
                    (m.key().map_or(0, <[u8]>::len) + m.payload().map_or(0, <[u8]>::len)) as u64;
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) if next >= end => break,
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) | None => {}
            Some(Err(e)) => return Err(anyhow!("reading {topic}: {e}")),
        }
    }
    Ok((n, bytes))
}

/// The vitals the loops read, with their threshold (above, below).
const VITALS: [(&str, Option<f64>, Option<f64>); 7] = [
    ("heartRate", Some(120.0), None),
    ("spo2", None, Some(90.0)),
    ("respiratoryRate", Some(25.0), None),
    ("nibp.systolic", None, None),
    ("nibp.diastolic", None, None),
    ("nibp.mean", None, None),
    ("temperature", None, None),
];

#[derive(Default, Clone, Copy)]
struct Agg {
    count: u64,
    min: f64,
    max: f64,
    sum: f64,
}

/// `vitalflow bench-loop`: the plain-loop baseline (one process, `threads` consumers).
pub fn plain_loop(
    brokers: &str,
    topic: &str,
    alerts_topic: &str,
    every_update: bool,
    threads: usize,
    out: &Path,
) -> anyhow::Result<u64> {
    let meta: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let partitions = meta
        .fetch_metadata(Some(topic), Duration::from_secs(30))?
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map(|t| t.partitions().len() as i32)
        .filter(|n| *n > 0)
        .ok_or_else(|| anyhow!("no topic {topic}"))?;
    let handles: Vec<_> = (0..threads)
        .map(|i| {
            let (brokers, topic, alerts_topic) = (
                brokers.to_string(),
                topic.to_string(),
                alerts_topic.to_string(),
            );
            let file = out.join(format!("aggregates-{i}.ndjson"));
            std::thread::spawn(move || -> anyhow::Result<u64> {
                let mine: Vec<i32> = (0..partitions)
                    .filter(|p| *p as usize % threads == i)
                    .collect();
                let group = group_of(if every_update {
                    "loop-aggregates"
                } else {
                    "loop-alerts"
                });
                consume(
                    &brokers,
                    &group,
                    &topic,
                    &alerts_topic,
                    &mine,
                    every_update.then_some(&file),
                )
            })
        })
        .collect();
    let mut total = 0;
    for h in handles {
        total += h.join().map_err(|_| anyhow!("a loop thread panicked"))??;
    }
    Ok(total)
}

fn consume(
    brokers: &str,
    group: &str,
    topic: &str,
    alerts_topic: &str,
    partitions: &[i32],
    file: Option<&PathBuf>,
) -> anyhow::Result<u64> {
    if partitions.is_empty() {
        return Ok(0);
    }
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.partition.eof", "true")
        .set("enable.auto.commit", "false")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in partitions {
        tpl.add_partition_offset(topic, *p, Offset::Beginning)?;
    }
    c.assign(&tpl)?;
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .create()?;
    let mut writer = match file {
        Some(f) => Some(std::io::BufWriter::with_capacity(
            1 << 20,
            std::fs::File::create(f)?,
        )),
        None => None,
    };
    let mut aggs: HashMap<(String, &'static str, i64), Agg> = HashMap::new();
    let mut abnormal: HashMap<(String, &'static str), bool> = HashMap::new();
    let mut ended = 0;
    let mut n = 0u64;
    while ended < partitions.len() {
        let m = match c.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => m,
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => {
                ended += 1;
                continue;
            }
            Some(Err(e)) => return Err(anyhow!("{e}")),
            None => continue,
        };
        n += 1;
        let Some(v) = m
            .payload()
            .and_then(|p| serde_json::from_slice::<Value>(p).ok())
        else {
            continue;
        };
        let (Some(device), Some(t)) = (
            v["deviceId"].as_str(),
            v["timestamp"]
                .as_str()
                .and_then(crate::time::parse_timestamp),
        ) else {
            continue;
        };
        let hour = t.timestamp().div_euclid(3600);
        for (name, above, below) in VITALS {
            let x = match name.split_once('.') {
                Some((a, b)) => v[a][b].as_f64(),
                None => v[name].as_f64(),
            };
            let Some(x) = x else { continue };
            let a = aggs.entry((device.to_string(), name, hour)).or_insert(Agg {
                min: f64::MAX,
                max: f64::MIN,
                ..Agg::default()
            });
            a.count += 1;
            a.min = a.min.min(x);
            a.max = a.max.max(x);
            a.sum += x;
            if let Some(w) = &mut writer {
                writeln!(
                    w,
                    "{{\"device\":\"{device}\",\"vital\":\"{name}\",\"hour\":{hour},\"count\":{},\"min\":{},\"max\":{},\"mean\":{}}}",
                    a.count,
                    a.min,
                    a.max,
                    a.sum / a.count as f64
                )?;
            }
            let out = above.is_some_and(|h| x > h) || below.is_some_and(|l| x < l);
            let state = abnormal.entry((device.to_string(), name)).or_default();
            if out != *state {
                *state = out;
                let alert = format!(
                    "{{\"device\":\"{device}\",\"vital\":\"{name}\",\"value\":{x},\"at\":\"{}\",\"state\":\"{}\"}}",
                    crate::time::format_rfc3339(&t),
                    if out { "open" } else { "resolved" }
                );
                crate::kafka::send(
                    &producer,
                    BaseRecord::to(alerts_topic).key(device).payload(&alert),
                )
                .map_err(|e| anyhow!("{e}"))?;
                producer.poll(Duration::ZERO);
            }
        }
    }
    if let Some(mut w) = writer {
        w.flush()?;
        w.get_ref().sync_all()?;
    }
    producer.flush(Duration::from_secs(60))?;
    // Where it stands, so that the bench can check it read everything.
    c.commit_consumer_state(rdkafka::consumer::CommitMode::Sync)?;
    Ok(n)
}

/// The figures as a table, with each vitalflow contender's ratios to the loops.
pub fn table(messages: u64, input_bytes: u64, rows: &[Contender]) -> String {
    let mut s = format!(
        "{messages} messages ({:.0} MB of JSON)\n\n| contender | msgs/s | CPU s | peak RSS MiB | written MB | MB per 1M msgs | alerts |\n|---|---|---|---|---|---|---|\n",
        input_bytes as f64 / 1e6
    );
    for r in rows {
        s.push_str(&format!(
            "| {} | {:.0} | {:.1} | {:.0} | {:.1} | {:.1} | {} |\n",
            r.name,
            r.msgs_per_s,
            r.cpu_s,
            r.peak_rss_mib,
            r.bytes_written as f64 / 1e6,
            r.bytes_per_million / 1e6,
            r.alerts
        ));
    }
    let rate = |n: &str| rows.iter().find(|r| r.name == n).map(|r| r.msgs_per_s);
    for job in ["vitalflow", "vitalflow-alerts"] {
        let Some(j) = rate(job) else { continue };
        for base in ["loop-aggregates", "loop-alerts"] {
            if let Some(b) = rate(base) {
                s.push_str(&format!("\n{job} / {base}: {:.2}×", j / b));
            }
        }
    }
    s.push('\n');
    s
}
