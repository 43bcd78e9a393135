//! Helpers for tests that run the `vitalflow` binary against a real Kafka protocol peer.
#![allow(dead_code)]

pub mod fhir_server;
pub mod mosquitto;
pub mod tansu;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;
use vitalflow::config::SimulatorConfig;
use vitalflow::sources::simulator::{SimMessage, Simulator};

/// A blocking HTTP client for tests (TLS through rustls' ring provider, as the job).
pub fn http_client() -> reqwest::blocking::Client {
    vitalflow::fhir::client::install_crypto();
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("HTTP client")
}

/// The project root (templates/ and datasets/ live there).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The built `vitalflow` binary.
pub fn vitalflow() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vitalflow"));
    c.env("VITALFLOW_LOG", "warn");
    c
}

/// Runs a command to completion, failing the test with its output if it does not succeed, or
/// killing it if it runs longer than 3 minutes (a hung job must fail the test, not hang CI).
pub fn run_ok(cmd: &mut Command) -> Output {
    use std::io::Read;
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run vitalflow");
    let reader = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    };
    let out = reader(Box::new(child.stdout.take().expect("stdout")));
    let err = reader(Box::new(child.stderr.take().expect("stderr")));
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let err = err.join().unwrap_or_default();
            let tail = String::from_utf8_lossy(&err[err.len().saturating_sub(4000)..]).into_owned();
            panic!("vitalflow ran over 3 minutes and was killed; the end of its log:\n{tail}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = Output {
        status,
        stdout: out.join().expect("stdout"),
        stderr: err.join().expect("stderr"),
    };
    assert!(
        out.status.success(),
        "vitalflow failed: {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A job file `<dir>/<file>` for the bedside-monitor mapping reading `topic` from `brokers`
/// (consumer group `group`), followed by `tables` (sinks and the rest).
pub fn job_file(
    dir: &Path,
    file: &str,
    brokers: &str,
    topic: &str,
    group: &str,
    tables: &str,
) -> PathBuf {
    let root = root();
    // Observation versions every 5 s of event time: a live test whose input has gone idle
    // sees its last versions within seconds, not the default's minutes.
    let window = if tables.contains("[window]") {
        ""
    } else {
        "[window]\nupdate_every = \"5s\"\n"
    };
    let text = format!(
        r#"name = "test"
source = "kafka"

[kafka]
brokers = "{brokers}"
topics = ["{topic}"]
group_id = "{group}"
startup_timeout = "20s"

[mapping]
device = "{device}"
fhir = "{fhir}"

[performance]
epoch = "20ms"
batch_size = 50

{window}
{tables}
"#,
        device = root
            .join("templates/bedside-monitor/devicecontent.json")
            .display(),
        fhir = root
            .join("templates/bedside-monitor/fhirmapping.json")
            .display(),
    );
    let path = dir.join(file);
    std::fs::write(&path, text).expect("write job");
    path
}

/// A job writing NDJSON to `<dir>/out`, with `extra` tables.
pub fn kafka_job(dir: &Path, brokers: &str, topic: &str, group: &str, extra: &str) -> PathBuf {
    let out = dir.join("out");
    let tables = format!(
        "[sinks.ndjson]\ndir = \"{}\"\nflush_interval = \"200ms\"\n\n{extra}",
        out.display()
    );
    job_file(dir, "job.toml", brokers, topic, group, &tables)
}

/// Seeded bedside-monitor messages for `devices` devices, starting `minutes_ago` minutes ago.
pub fn simulated(devices: u32, count: u64, seed: u64, minutes_ago: i64) -> Vec<SimMessage> {
    let cfg = SimulatorConfig {
        devices,
        count: Some(count),
        seed,
        out_of_order: 0.05,
        // A device goes offline every 20 s of readings and syncs its backlog late.
        late_burst: Some(Duration::from_secs(20)),
        ..SimulatorConfig::default()
    };
    let start = chrono::Utc::now() - chrono::Duration::minutes(minutes_ago);
    // Whole seconds keep the expected SampledData independent of sub-second offsets.
    let start = vitalflow::time::parse_timestamp(&start.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .expect("time");
    Simulator::new(&cfg, start, (0, 1)).collect()
}

/// librdkafka's mock cluster (a Kafka protocol peer on 127.0.0.1) with `topics`, and its
/// bootstrap address; the cluster stops when dropped.
pub fn mock_cluster(
    topics: &[(&str, i32)],
) -> (
    rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    String,
) {
    let c = rdkafka::mocking::MockCluster::new(1).expect("mock cluster");
    for (t, n) in topics {
        c.create_topic(t, *n, 1).expect("topic");
    }
    let b = c.bootstrap_servers();
    (c, b)
}

/// The crash drill of the restart tests, on topic `vitals` (3 partitions) of `brokers`: runs
/// `job` (consumer group `group`, 2 workers) while producing `msgs` in steps, kills it with
/// SIGKILL once `ready()` (or fails after 60 s with `what`), checks it died mid-stream, then
/// produces the rest and runs the job again to the end of the input.
pub fn crash_and_resume(
    brokers: &str,
    group: &str,
    job: &Path,
    msgs: &[SimMessage],
    ready: impl Fn() -> bool,
    what: &str,
) {
    let p = producer(brokers);
    let first = msgs.len() / 4;
    produce_sim(&p, "vitals", &msgs[..first]);
    let mut child = Running::spawn(
        vitalflow()
            .args(["run", "--workers", "2", "--job"])
            .arg(job),
    );
    // Keep producing while the job runs, and kill it mid-stream once it has output.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut sent = first;
    while sent < msgs.len() * 3 / 4 {
        let next = (sent + 50).min(msgs.len());
        produce_sim(&p, "vitals", &msgs[sent..next]);
        sent = next;
        std::thread::sleep(Duration::from_millis(60));
    }
    while !ready() {
        assert!(std::time::Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill(); // SIGKILL
    let before: i64 = committed(brokers, group, "vitals", 3)
        .values()
        .map(|o| (*o).max(0))
        .sum();
    assert!(
        before < msgs.len() as i64,
        "the kill came before the end of the stream"
    );
    produce_sim(&p, "vitals", &msgs[sent..]);
    run_ok(
        vitalflow()
            .args(["run", "--until-end", "--workers", "2", "--job"])
            .arg(job),
    );
}

/// An idempotent producer.
pub fn producer(brokers: &str) -> BaseProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .create()
        .expect("producer")
}

/// A message to produce: key, value, headers.
pub type Outgoing<'a> = (Option<&'a [u8]>, &'a [u8], Vec<(&'a str, &'a str)>);

/// Produces `(key, payload, headers)` and waits until every message is acknowledged.
pub fn produce(p: &BaseProducer, topic: &str, messages: &[Outgoing<'_>]) {
    for (key, payload, headers) in messages {
        let mut h = rdkafka::message::OwnedHeaders::new();
        for (k, v) in headers {
            h = h.insert(rdkafka::message::Header {
                key: k,
                value: Some(*v),
            });
        }
        let mut r = BaseRecord::to(topic).payload(*payload).headers(h);
        if let Some(k) = key {
            r = r.key(*k);
        }
        p.send(r).map_err(|(e, _)| e).expect("send");
        p.poll(Duration::ZERO);
    }
    p.flush(Duration::from_secs(30)).expect("acknowledged");
}

/// Produces simulated messages, keyed by device.
pub fn produce_sim(p: &BaseProducer, topic: &str, msgs: &[SimMessage]) {
    let m: Vec<_> = msgs
        .iter()
        .map(|m| (Some(m.key.as_bytes()), m.payload.as_slice(), Vec::new()))
        .collect();
    produce(p, topic, &m);
}

/// Committed offsets of a consumer group, per partition; a partition without a commit counts
/// as 0 (an empty partition has nothing to commit).
pub fn committed(brokers: &str, group: &str, topic: &str, partitions: i32) -> BTreeMap<i32, i64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .create()
        .expect("consumer");
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let got = c
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed");
    got.elements()
        .iter()
        .map(|e| (e.partition(), e.offset().to_raw().unwrap_or(0).max(0)))
        .collect()
}

/// High watermark of each partition.
pub fn high_watermarks(brokers: &str, topic: &str, partitions: i32) -> BTreeMap<i32, i64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("consumer");
    (0..partitions)
        .map(|p| {
            (
                p,
                c.fetch_watermarks(topic, p, Duration::from_secs(10))
                    .expect("watermarks")
                    .1,
            )
        })
        .collect()
}

/// A record's headers as text.
pub fn text_headers(m: &impl rdkafka::message::Message) -> BTreeMap<String, String> {
    use rdkafka::message::Headers;
    m.headers()
        .map(|h| {
            h.iter()
                .map(|h| {
                    (
                        h.key.to_string(),
                        String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A record of a topic as the gateway tests look at it.
#[derive(Debug, Clone)]
pub struct Record {
    /// The key, as text.
    pub key: String,
    /// The headers, as text.
    pub headers: BTreeMap<String, String>,
    /// The payload, as text.
    pub payload: String,
    /// Its Kafka timestamp (when it was produced), Unix ms.
    pub at_ms: i64,
}

/// Every record of `topic` from the start, once at least `expect` came and 2 s passed without
/// another (so a duplicate that comes late is seen), or at `wait`.
pub fn records(brokers: &str, topic: &str, expect: usize, wait: Duration) -> Vec<Record> {
    use rdkafka::message::Message;
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("check-{topic}-{}", std::process::id()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    c.subscribe(&[topic]).expect("subscribe");
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + wait;
    let mut quiet_since = std::time::Instant::now();
    while std::time::Instant::now() < deadline {
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                out.push(Record {
                    key: String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                    headers: text_headers(&m),
                    payload: String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
                    at_ms: m.timestamp().to_millis().unwrap_or(0),
                });
                quiet_since = std::time::Instant::now();
            }
            _ if out.len() >= expect && quiet_since.elapsed() > Duration::from_secs(2) => break,
            _ => {}
        }
    }
    out
}

/// What a device desaturating (SpO2 84 for 80 s of event time) must leave after a job run
/// with `templates/alerts/adult-vitals.toml` and a lake: a critical hypoxia alert of `patient`
/// under `<dir>/out`, and `rows` SpO2 rows of it in `<dir>/lake/measurements` as DuckDB reads it.
pub fn assert_hypoxia_alert_and_spo2_rows(dir: &Path, patient: &str, rows: u64) {
    let alerts = alert_lines(&dir.join("out"));
    assert!(
        alerts
            .iter()
            .any(|a| a.contains("\"hypoxia\"") && a.contains(patient) && a.contains("critical")),
        "the desaturation raised a critical hypoxia alert: {alerts:#?}"
    );
    let sql = format!(
        "select count(*) as n from t where patient_id = '{patient}' and value_name = 'spo2'"
    );
    let v = lake_query(dir.join("lake/measurements").as_os_str(), None, &[&sql]);
    assert_eq!(v["results"][0][0]["n"], rows, "SpO2 rows of {patient}: {v}");
}

/// Every message of a topic (value, headers), read from the start.
pub fn consume_all(
    brokers: &str,
    topic: &str,
    expected: usize,
) -> Vec<(Vec<u8>, BTreeMap<String, String>)> {
    use rdkafka::message::Message;
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "test-reader")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    c.subscribe(&[topic]).expect("subscribe");
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while out.len() < expected && std::time::Instant::now() < deadline {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
            out.push((m.payload().unwrap_or_default().to_vec(), text_headers(&m)));
        }
    }
    out
}

/// The results of each query over the lake table `table` (`t` in the SQL), as the analysts'
/// readers see it: DuckDB over the Delta log (tests/readers/lake_query.py, in the Python
/// `VITALFLOW_PYTHON` names; .ci/run installs them). `s3` is an S3 endpoint for s3:// tables.
pub fn lake_query(table: &std::ffi::OsStr, s3: Option<&str>, sql: &[&str]) -> Value {
    let python = std::env::var("VITALFLOW_PYTHON").unwrap_or_else(|_| "python3".into());
    let mut cmd = Command::new(&python);
    if let Some(endpoint) = s3 {
        cmd.env("VITALFLOW_S3_ENDPOINT", endpoint);
    }
    let out = cmd
        .arg(root().join("tests/readers/lake_query.py"))
        .arg(table)
        .args(sql)
        .output()
        .unwrap_or_else(|e| panic!("{python}: {e} (.ci/run installs the readers)"));
    assert!(
        out.status.success(),
        "reading {} failed (.ci/run installs the readers: duckdb deltalake pyarrow pytz):\n{}",
        table.to_string_lossy(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("reader JSON")
}

/// Every alert record written under `out/alerts`, sorted: runs that raised the same
/// alerts give equal lists, byte for byte.
pub fn alert_lines(out: &Path) -> Vec<String> {
    let mut lines: Vec<String> = vitalflow::sinks::files::committed_parts(&out.join("alerts"))
        .iter()
        .flat_map(|p| {
            std::fs::read_to_string(p)
                .expect("read")
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    lines.sort();
    lines
}

/// Every Observation line of an output directory, in commit order.
pub fn observation_lines(out: &Path) -> Vec<Value> {
    vitalflow::sinks::files::committed_parts(&out.join("observations"))
        .iter()
        .flat_map(|p| {
            std::fs::read_to_string(p)
                .expect("read part")
                .lines()
                .map(|l| serde_json::from_str::<Value>(l).expect("JSON line"))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The latest version of each Observation, by id, without `status` (which records whether an
/// Observation was updated after its first write, and so depends on flush timing).
pub fn latest(lines: &[Value]) -> BTreeMap<String, Value> {
    let mut m = BTreeMap::new();
    for l in lines {
        let mut o = l.clone();
        let status = o.as_object_mut().and_then(|o| o.remove("status"));
        assert!(
            matches!(
                status.as_ref().and_then(Value::as_str),
                Some("final" | "amended")
            ),
            "status: {status:?}"
        );
        m.insert(o["id"].as_str().expect("id").to_string(), o);
    }
    m
}

/// The Observations the mapping debugger builds from all good messages at once: what the
/// job's output must converge to.
pub fn expected(msgs: &[SimMessage]) -> BTreeMap<String, Value> {
    let root = root();
    let device = vitalflow::mapping::DeviceMapping::from_file(
        &root.join("templates/bedside-monitor/devicecontent.json"),
    )
    .expect("device");
    let fhir = vitalflow::mapping::FhirMapping::from_file(
        &root.join("templates/bedside-monitor/fhirmapping.json"),
    )
    .expect("fhir");
    let mut all = Vec::new();
    for m in msgs {
        let body: Value = serde_json::from_slice(&m.payload).expect("json");
        let ev = vitalflow::event::wrap(body, Default::default(), Default::default());
        all.extend(device.normalize(&ev).expect("normalizes"));
    }
    let obs = vitalflow::debugger::observations(&fhir, &all).expect("observations");
    latest(&obs)
}

/// A child process killed when the test ends, passed or not: a leftover job would hold the
/// test harness's output pipe open.
pub struct Running(pub Option<std::process::Child>);

impl Running {
    /// Spawns `cmd`.
    pub fn spawn(cmd: &mut Command) -> Self {
        Self(Some(cmd.spawn().expect("start vitalflow")))
    }

    /// The child's pid.
    pub fn id(&self) -> u32 {
        self.0.as_ref().expect("running").id()
    }

    /// Its exit status if it has exited (then reaped), None while it runs.
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        let s = self.0.as_mut()?.try_wait().expect("wait")?;
        self.0 = None;
        Some(s)
    }

    /// Sends SIGTERM, as an init system stopping the job would.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "SIGTERM sent");
    }

    /// Kills it (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits for it to exit, at most 3 minutes (then kills it and fails the test).
    pub fn wait(&mut self) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + Duration::from_secs(180);
        let child = self.0.as_mut().expect("running");
        loop {
            if let Some(s) = child.try_wait().expect("wait") {
                self.0 = None;
                return s;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "vitalflow ran over 3 minutes"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A plain HTTP GET on loopback: (status, body).
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|x| x.1.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// Asserts two Observation sets are equal, reporting ids missing, extra or different (the
/// sets are too large for a readable `assert_eq!`).
pub fn assert_same(got: &BTreeMap<String, Value>, want: &BTreeMap<String, Value>, what: &str) {
    let missing: Vec<&String> = want.keys().filter(|k| !got.contains_key(*k)).collect();
    let extra: Vec<&String> = got.keys().filter(|k| !want.contains_key(*k)).collect();
    let differ: Vec<&String> = want
        .keys()
        .filter(|k| got.get(*k).is_some_and(|g| g != &want[*k]))
        .collect();
    let ident = |m: &BTreeMap<String, Value>, k: &str| {
        m[k]["identifier"][0]["value"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    if !missing.is_empty() || !extra.is_empty() || !differ.is_empty() {
        let first_diff = differ.first().map(|k| {
            let (g, w) = (got[*k].to_string(), want[*k].to_string());
            let at = g.bytes().zip(w.bytes()).take_while(|(a, b)| a == b).count();
            let from = at.saturating_sub(80);
            format!(
                "{}: got …{}… want …{}…",
                ident(want, k),
                &g[from..(at + 120).min(g.len())],
                &w[from..(at + 120).min(w.len())]
            )
        });
        panic!(
            "{what}: {} expected, {} got; missing {:?}; extra {:?}; {} differ, first: {:?}",
            want.len(),
            got.len(),
            missing
                .iter()
                .take(5)
                .map(|k| ident(want, k))
                .collect::<Vec<_>>(),
            extra
                .iter()
                .take(5)
                .map(|k| ident(got, k))
                .collect::<Vec<_>>(),
            differ.len(),
            first_diff
        );
    }
}

/// A self-signed certificate for 127.0.0.1, written to `dir` as `cert.pem` and `key.pem`.
pub fn server_certificate(dir: &Path) -> (rcgen::CertifiedKey<rcgen::KeyPair>, PathBuf, PathBuf) {
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).expect("cert");
    let (cert_pem, key_pem) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_pem, cert.cert.pem()).expect("cert");
    std::fs::write(&key_pem, cert.signing_key.serialize_pem()).expect("key");
    (cert, cert_pem, key_pem)
}

/// Every line of a job's device output (`<out>/devices`), as written.
pub fn device_lines(out: &Path) -> Vec<String> {
    vitalflow::sinks::files::committed_parts(&out.join("devices"))
        .iter()
        .flat_map(|p| {
            std::fs::read_to_string(p)
                .expect("part")
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Rewrites a job file written with the bedside-monitor templates to the IHE PCD-01 ones.
pub fn use_pcd01_templates(job: &Path) {
    let text = std::fs::read_to_string(job)
        .expect("job")
        .replace("templates/bedside-monitor/", "templates/ihe-pcd01/");
    std::fs::write(job, text).expect("job");
}
