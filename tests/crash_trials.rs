//! Randomized kill -9 trials of the whole pipeline: nothing lost, nothing duplicated.
//!
//! One trial: seeded bedside vitals (with acute episodes that alert) and malformed messages
//! on a Kafka topic (librdkafka's mock cluster, or a Tansu broker process: the promise must
//! hold against a real broker, whose answers differ from the mock's); an uncrashed reference
//! run drains them once;
//! then a job with every output (NDJSON Observations, FHIR Observations and DetectedIssues on
//! Helios, the three lakehouse tables, alerts and dead letters to Kafka topics) is killed with
//! SIGKILL several times, at uniformly random moments or at named crash points
//! (`VITALFLOW_FAILPOINT`, src/failpoint.rs), and finally run to the end of the input. Every
//! output is then compared with the reference: multisets of lake rows, alert events and dead
//! letters; the latest version of every Observation in NDJSON, the lake and the server.
//!
//! Each kill records whether it hit uncommitted work: lakehouse rows already written for
//! messages whose offsets the job had not committed. A trial where no kill did proves
//! little, and the report says how many did. Until a kill of the trial has found such rows,
//! the next comes from outside as soon as the lakehouse holds them, and the rows are counted
//! again once the process is dead: a commit can land between the look and the kill, so the
//! look only arms the kill, and the trial fails when none of its kills found uncommitted
//! rows. A kill armed at a named crash point must end
//! the process there (unless an earlier run had drained the input), and every output of the
//! reference run must hold something: a comparison of empty outputs proves nothing.
//!
//! CI runs `VITALFLOW_CRASH_TRIALS` trials (default 2); the documented long run is
//! `VITALFLOW_CRASH_TRIALS=100 cargo test --test crash_trials -- --nocapture`
//! (`VITALFLOW_CRASH_SEED` picks another series).

mod common;

use common::fhir_server::Helios;
use common::*;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use rdkafka::consumer::BaseConsumer;
use rdkafka::message::Message;
use rdkafka::ClientConfig;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};
use vitalflow::config::SimulatorConfig;
use vitalflow::sources::simulator::{SimMessage, Simulator};

/// The crash points a kill may be armed at.
const POINTS: &[&str] = &[
    "sink.flushed",
    "offsets.before_commit",
    "offsets.committed",
    "files.part_synced",
    "files.index_written",
    "lake.committed",
    "alerts.checkpoint_synced",
    "alerts.checkpoint_written",
    "kafka.acknowledged",
    "fhir.bundles_answered",
];

const PARTITIONS: i32 = 3;

/// A multiset: each item and how many times it was written.
type Multiset = BTreeMap<String, usize>;

fn multiset(items: impl IntoIterator<Item = String>) -> Multiset {
    let mut m = Multiset::new();
    for i in items {
        *m.entry(i).or_default() += 1;
    }
    m
}

/// What differs between two multisets: items missing from `got`, items written too often.
fn differences(got: &Multiset, want: &Multiset) -> (Vec<String>, Vec<String>) {
    let mut lost = Vec::new();
    let mut extra = Vec::new();
    for (k, n) in want {
        let g = got.get(k).copied().unwrap_or(0);
        if g < *n {
            lost.push(format!("{k} ×{}", n - g));
        }
    }
    for (k, n) in got {
        let w = want.get(k).copied().unwrap_or(0);
        if *n > w {
            extra.push(format!("{k} ×{}", n - w));
        }
    }
    (lost, extra)
}

/// The input of a trial: simulated bedside monitors, a few acute, and malformed messages.
fn input(seed: u64, count: u64) -> Vec<SimMessage> {
    let cfg = SimulatorConfig {
        devices: 16,
        count: Some(count),
        seed,
        out_of_order: 0.05,
        late_burst: Some(Duration::from_secs(20)),
        acute: 3,
        ..SimulatorConfig::default()
    };
    let start = chrono::Utc::now() - chrono::Duration::minutes(90);
    let start = vitalflow::time::parse_timestamp(&start.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .expect("time");
    let json: Vec<SimMessage> = Simulator::new(&cfg, start, (0, 1)).collect();
    // Three IHE PCD-01 monitors beside them (patients Q-...), each with a device change
    // mid-run (a software update, an NIBP calibration, an SpO2 sensor off for a minute):
    // the device output has versions to lose or write twice.
    let pcd01 = SimulatorConfig {
        devices: 3,
        count: Some(3 * (count / u64::from(cfg.devices))),
        profile: "ihe-pcd01".into(),
        ..cfg.clone()
    };
    let pcd01: Vec<SimMessage> = Simulator::new(&pcd01, start, (0, 1))
        .map(|mut m| {
            let text = String::from_utf8(m.payload).expect("HL7 text");
            m.payload = text.replace("PID|||P-", "PID|||Q-").into_bytes();
            m
        })
        .collect();
    // Interleaved by event time, each stream's own order kept.
    let mut msgs = Vec::with_capacity(json.len() + pcd01.len());
    let (mut a, mut b) = (json.into_iter().peekable(), pcd01.into_iter().peekable());
    while let (Some(x), Some(y)) = (a.peek(), b.peek()) {
        let next = if y.event_time < x.event_time {
            b.next()
        } else {
            a.next()
        };
        msgs.extend(next);
    }
    msgs.extend(a);
    msgs.extend(b);
    let mut rng = StdRng::seed_from_u64(seed ^ 0xbad);
    let malformed: [&[u8]; 4] = [
        b"{\"deviceId\": \"truncated\", \"heartRate\": ",
        b"not json at all",
        b"{\"unknown\": {\"shape\": true}}",
        b"\xff\xfe invalid utf-8 \xc3\x28",
    ];
    for i in 0..(count / 100).max(4) {
        let at = rng.random_range(0..msgs.len());
        let mut m = msgs[at].clone();
        m.payload = malformed[i as usize % malformed.len()].to_vec();
        msgs.insert(at, m);
    }
    msgs
}

/// A job reading `vitals` as group `tag`, writing every output under `dir` and to topics
/// named after `tag`; Observations and alerts also to `fhir` when given.
fn job(dir: &Path, brokers: &str, tag: &str, fhir: Option<(&str, &str)>) -> std::path::PathBuf {
    let rules = root().join("templates/alerts/adult-vitals.toml");
    // A killed run may drain the input: it must not let the wall clock advance event time
    // as an idle live job does (the reference is a replay), so idleness waits 10 minutes.
    let mut tables = format!(
        r#"[window]
idle_timeout = "10m"
update_every = "1m"

[sinks.ndjson]
dir = "{out}"
flush_interval = "300ms"

[sinks.dead_letter]
topic = "dead-letters-{tag}"

[sinks.lake]
location = "{lake}"
flush_interval = "400ms"

[anomaly]
rules = "{rules}"
topic = "alerts-{tag}"
checkpoint_every = "700ms"
"#,
        out = dir.join("out").display(),
        lake = dir.join("lake").display(),
        rules = rules.display(),
    );
    if let Some((url, identity)) = fhir {
        tables.push_str(&format!(
            "\n[sinks.fhir]\nurl = \"{url}\"\nidentity = \"{identity}\"\nbatch_size = 20\nflush_interval = \"500ms\"\n"
        ));
    }
    let path = job_file(dir, &format!("{tag}.toml"), brokers, "vitals", tag, &tables);
    // One device mapping for both kinds of input: the bedside JSON templates and the PCD-01
    // ones.
    let templates = |set: &str| -> Vec<Value> {
        let text =
            std::fs::read_to_string(root().join(format!("templates/{set}/devicecontent.json")))
                .expect("templates");
        let v: Value = serde_json::from_str(&text).expect("JSON");
        v["template"].as_array().expect("collection").clone()
    };
    let mut all = templates("bedside-monitor");
    all.extend(templates("ihe-pcd01"));
    let mapping = dir.join(format!("{tag}-devicecontent.json"));
    let collection = serde_json::json!({"templateType": "CollectionContent", "template": all});
    std::fs::write(&mapping, collection.to_string()).expect("mapping");
    let text = std::fs::read_to_string(&path).expect("job").replace(
        &root()
            .join("templates/bedside-monitor/devicecontent.json")
            .display()
            .to_string(),
        &mapping.display().to_string(),
    );
    std::fs::write(&path, text).expect("job");
    path
}

/// A consumer of the trial's broker.
fn consumer(brokers: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "trial-reader")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer")
}

/// Every record of `topic` to its real end (the Fetch high-water mark: brokers differ in
/// what ListOffsets answers): (value, headers with "at" = partition@offset).
fn read_topic(brokers: &str, topic: &str) -> Vec<(Vec<u8>, BTreeMap<String, String>)> {
    let mut out = Vec::new();
    vitalflow::kafka::read_back::read_all(
        &consumer(brokers),
        topic,
        Instant::now() + Duration::from_secs(60),
        |m| {
            let mut headers = text_headers(m);
            headers.insert("at".into(), format!("{}@{}", m.partition(), m.offset()));
            out.push((m.payload().unwrap_or_default().to_vec(), headers));
        },
    )
    .expect("read the topic to its end");
    out
}

/// The broker a trial runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Broker {
    /// librdkafka's mock cluster, in the test process.
    Mock,
    /// A Tansu broker process.
    Tansu,
}

/// A running broker of either kind with the trial's topics; stopped on drop (held, never
/// read).
#[allow(dead_code)]
enum Held {
    Mock(rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext>),
    Tansu(common::tansu::Broker),
}

fn broker(kind: Broker, topics: &[(&str, i32)]) -> (Held, String) {
    match kind {
        Broker::Mock => {
            let (c, b) = mock_cluster(topics);
            (Held::Mock(c), b)
        }
        Broker::Tansu => {
            let t = common::tansu::Broker::start();
            for (name, n) in topics {
                t.create_topic(name, *n);
            }
            let b = t.brokers();
            (Held::Tansu(t), b)
        }
    }
}

/// The rows of each query over the lake table `table` (DuckDB over the Delta log's files).
fn lake(table: &Path, sql: &[&str]) -> Vec<Vec<Value>> {
    if !table.join("_delta_log").is_dir() {
        return sql.iter().map(|_| Vec::new()).collect();
    }
    let v = lake_query(table.as_os_str(), None, sql);
    v["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| r.as_array().expect("rows").clone())
        .collect()
}

/// A row's columns joined: one multiset item.
fn row_key(r: &Value) -> String {
    r.as_object()
        .expect("row")
        .values()
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .join("|")
}

/// Everything a run wrote, in comparable form.
struct Outputs {
    observations: BTreeMap<String, Value>,
    lake_measurements: Multiset,
    lake_observations: BTreeMap<String, Value>,
    lake_observation_versions: Multiset,
    lake_alerts: Multiset,
    alerts: Multiset,
    dead_letters: Multiset,
    devices: Multiset,
    lake_devices: Multiset,
}

const MEASUREMENTS: &str = "SELECT source_partition, source_offset, value_name, CAST(value AS VARCHAR) AS value, CAST(event_time AS VARCHAR) AS t FROM t";
const OBSERVATIONS: &str =
    "SELECT resource FROM t QUALIFY row_number() OVER (PARTITION BY id ORDER BY version DESC) = 1";
const OBSERVATION_VERSIONS: &str = "SELECT id, version, value_name FROM t";
const ALERTS: &str = "SELECT alert_id, state, CAST(\"at\" AS VARCHAR) AS event_at FROM t";
const DEVICES: &str = "SELECT id, version_id, CAST(valid_from AS VARCHAR) AS valid_from FROM t";

fn outputs(dir: &Path, brokers: &str, tag: &str) -> Outputs {
    let m = lake(&dir.join("lake/measurements"), &[MEASUREMENTS]);
    let o = lake(
        &dir.join("lake/observations"),
        &[OBSERVATIONS, OBSERVATION_VERSIONS],
    );
    let a = lake(&dir.join("lake/alerts"), &[ALERTS]);
    let d = lake(&dir.join("lake/devices"), &[DEVICES]);
    let lake_observations = latest(
        &o[0]
            .iter()
            .map(|r| serde_json::from_str(r["resource"].as_str().expect("resource")).expect("json"))
            .collect::<Vec<Value>>(),
    );
    let alert_key = |a: &Value| format!("{}|{}|{}", a["id"], a["state"], a["at"]);
    Outputs {
        observations: latest(&observation_lines(&dir.join("out"))),
        lake_measurements: multiset(m[0].iter().map(row_key)),
        lake_observations,
        lake_observation_versions: multiset(o[1].iter().map(row_key)),
        lake_alerts: multiset(a[0].iter().map(row_key)),
        lake_devices: multiset(d[0].iter().map(row_key)),
        devices: multiset(device_lines(&dir.join("out"))),
        alerts: multiset(
            read_topic(brokers, &format!("alerts-{tag}"))
                .iter()
                .map(|(v, _)| alert_key(&serde_json::from_slice(v).expect("alert JSON"))),
        ),
        dead_letters: multiset(
            read_topic(brokers, &format!("dead-letters-{tag}"))
                .iter()
                .map(|(_, h)| {
                    format!(
                        "{}/{}/{}",
                        h["vitalflow-source-partition"],
                        h["vitalflow-source-offset"],
                        h["vitalflow-stage"]
                    )
                }),
        ),
    }
}

/// Where two JSON values first differ: the path, and both values there.
fn first_difference(got: &Value, want: &Value, path: &str) -> Option<String> {
    match (got, want) {
        (Value::Object(g), Value::Object(w)) => {
            for k in g.keys().chain(w.keys()) {
                let (a, b) = (
                    g.get(k).unwrap_or(&Value::Null),
                    w.get(k).unwrap_or(&Value::Null),
                );
                if let Some(d) = first_difference(a, b, &format!("{path}/{k}")) {
                    return Some(d);
                }
            }
            None
        }
        (Value::Array(g), Value::Array(w)) if g.len() == w.len() => g
            .iter()
            .zip(w)
            .enumerate()
            .find_map(|(i, (a, b))| first_difference(a, b, &format!("{path}/{i}"))),
        (a, b) if a == b => None,
        (a, b) => Some(format!("at {path}: got {a:.300} want {b:.300}")),
    }
}

/// Lake rows written for messages at or past the committed offsets: output the kill left
/// uncommitted, which a restart must not write again.
fn uncommitted_rows(dir: &Path, brokers: &str, tag: &str) -> u64 {
    let committed = committed(brokers, tag, "vitals", PARTITIONS);
    let cond: Vec<String> = committed
        .iter()
        .map(|(p, o)| format!("(source_partition = {p} AND source_offset >= {o})"))
        .collect();
    let q = format!("SELECT count(*) AS n FROM t WHERE {}", cond.join(" OR "));
    lake(&dir.join("lake/measurements"), &[&q])[0]
        .first()
        .and_then(|r| r["n"].as_u64())
        .unwrap_or(0)
}

/// The crash points the trial's runs passed, from the traces in their logs under `dir`.
fn points_passed(dir: &Path) -> BTreeSet<String> {
    let mut passed = BTreeSet::new();
    for entry in std::fs::read_dir(dir).expect("dir").flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !(name.starts_with("run-") && name.ends_with(".log")) {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).expect("log");
        passed.extend(text.lines().filter_map(|l| {
            l.strip_prefix("failpoint ")?
                .strip_suffix(" passed")
                .map(str::to_string)
        }));
    }
    passed
}

/// How a run ends before the final one.
#[derive(Debug, Clone)]
enum Kill {
    /// SIGKILL from outside, this long after the start.
    After(Duration),
    /// SIGKILL from inside, the nth time the process passes the point.
    At(&'static str, u64),
    /// SIGKILL from outside as soon as the lakehouse holds rows past the committed offsets.
    Uncommitted,
}

/// One trial's report: each kill (how, whether the process ended at its crash point, lake
/// rows written past the committed offsets), and what differed from the reference.
struct Report {
    kills: Vec<(Kill, bool, u64)>,
    failures: Vec<String>,
}

fn trial(seed: u64, kills: usize, identity: &str, kind: Broker) -> Report {
    let mut rng = StdRng::seed_from_u64(seed);
    let tmp = tempfile::tempdir().expect("tmp");
    if std::env::var_os("VITALFLOW_TRIAL_KEEP").is_some() {
        eprintln!(
            "trial seed {seed}: outputs kept in {}",
            tmp.path().display()
        );
    }
    let (_broker, brokers) = broker(
        kind,
        &[
            ("vitals", PARTITIONS),
            ("alerts-ref", 2),
            ("alerts-crash", 2),
            ("dead-letters-ref", 2),
            ("dead-letters-crash", 2),
        ],
    );
    let msgs = input(seed, 6000);
    produce_sim(&producer(&brokers), "vitals", &msgs);

    let reference = tmp.path().join("reference");
    std::fs::create_dir_all(&reference).expect("dir");
    let ref_job = job(&reference, &brokers, "ref", None);
    run_ok(
        vitalflow()
            .args(["run", "--until-end", "--workers", "2", "--job"])
            .arg(&ref_job),
    );
    let want = outputs(&reference, &brokers, "ref");
    // Every output holds something: equal empty outputs would prove nothing.
    for (what, n) in [
        ("alerts topic", want.alerts.len()),
        ("dead-letter topic", want.dead_letters.len()),
        ("NDJSON Observations", want.observations.len()),
        ("lake measurements", want.lake_measurements.len()),
        ("lake observations", want.lake_observations.len()),
        (
            "lake observation versions",
            want.lake_observation_versions.len(),
        ),
        ("lake alerts", want.lake_alerts.len()),
        ("NDJSON devices", want.devices.len()),
        ("lake devices", want.lake_devices.len()),
    ] {
        assert!(n > 0, "the reference run's {what} is empty ({kind:?})");
    }

    let crashed = tmp.path().join("crashed");
    std::fs::create_dir_all(&crashed).expect("dir");
    let h = Helios::start(&tmp.path().join("hfs"));
    if identity == "Lookup" {
        let mut seen = std::collections::BTreeSet::new();
        for m in &msgs {
            // A PCD-01 monitor: its key is its EUI-64, PID-3 its patient.
            let text = String::from_utf8_lossy(&m.payload);
            if let Some(pid) = text.split("PID|||").nth(1) {
                let patient = pid.split('^').next().unwrap_or_default();
                if seen.insert(m.key.clone()) {
                    h.register(patient, &m.key);
                }
                continue;
            }
            let v: Value = match serde_json::from_slice(&m.payload) {
                Ok(v) => v,
                Err(_) => continue,
            };
            if let (Some(d), Some(p)) = (v["deviceId"].as_str(), v["patientId"].as_str()) {
                if seen.insert(d.to_string()) {
                    h.register(p, d);
                }
            }
        }
    }
    let crash_job = job(&crashed, &brokers, "crash", Some((&h.url(), identity)));
    let mut report = Report {
        kills: Vec::new(),
        failures: Vec::new(),
    };
    for _ in 0..kills {
        let kill = if report.kills.iter().all(|(_, _, u)| *u == 0) {
            // Once uncommitted work is seen, until a kill has hit some: a trial proves
            // something however fast the job drains (random moments can all fall before the
            // first write or after the last commit, and no crash point is sure to follow a
            // lakehouse write: the first commit once came before the first measurements were
            // in the lake). Again after a miss: the job may commit between the look and the
            // kill.
            Kill::Uncommitted
        } else if rng.random_bool(0.5) {
            Kill::After(Duration::from_millis(rng.random_range(500..4500)))
        } else {
            // The first or second pass, when the run has something to commit (a fifth
            // alerting checkpoint may not come in 8 s: their spacing grows with the time
            // encoding them takes).
            Kill::At(
                POINTS[rng.random_range(0..POINTS.len())],
                rng.random_range(1..3),
            )
        };
        let mut cmd = vitalflow();
        let log = std::fs::File::create(crashed.join(format!("run-{}.log", report.kills.len())))
            .expect("log");
        cmd.args(["run", "--workers", "2", "--job"])
            .arg(&crash_job)
            .env("VITALFLOW_LOG", "warn,vitalflow=debug")
            .env("VITALFLOW_FAILPOINT_TRACE", "1")
            .stderr(log);
        if let Kill::At(point, n) = &kill {
            cmd.env("VITALFLOW_FAILPOINT", format!("{point}:{n}"));
        }
        let started = Instant::now();
        let mut running = Running::spawn(&mut cmd);
        let limit = match &kill {
            Kill::After(d) => *d,
            // The first lakehouse rows may take a while on a loaded machine's debug build
            // (creating each patient on the server first).
            Kill::Uncommitted => Duration::from_secs(60),
            // A point not reached in 8 s: killed from outside then. That is no failure: a run
            // restarted after the input was read has nothing to commit until its windows
            // close, which a live job's event clock never makes them do. That every point is
            // still on the job's path is checked from the trace instead.
            Kill::At(..) => Duration::from_secs(8),
        };
        let mut ended_itself = None;
        let mut looked = Instant::now();
        while started.elapsed() < limit && ended_itself.is_none() {
            std::thread::sleep(Duration::from_millis(20));
            ended_itself = running.try_wait();
            if matches!(kill, Kill::Uncommitted) && looked.elapsed() > Duration::from_millis(250) {
                if uncommitted_rows(&crashed, &brokers, "crash") > 0 {
                    break;
                }
                looked = Instant::now();
            }
        }
        running.kill();
        if let Some(status) = ended_itself {
            assert!(
                status.code().is_none(),
                "the job exited on its own ({status}) before its kill: {kill:?}"
            );
        }
        let uncommitted = uncommitted_rows(&crashed, &brokers, "crash");
        report
            .kills
            .push((kill, ended_itself.is_some(), uncommitted));
    }
    if report.kills.iter().all(|(_, _, u)| *u == 0) {
        report.failures.push(format!(
            "none of the {kills} kills left lake rows past the committed offsets"
        ));
    }
    let last = run_ok(
        vitalflow()
            .args(["run", "--until-end", "--workers", "2", "--job"])
            .arg(&crash_job)
            .env("VITALFLOW_LOG", "warn,vitalflow=debug")
            .env("VITALFLOW_FAILPOINT_TRACE", "1"),
    );
    std::fs::write(crashed.join("run-final.log"), &last.stderr).expect("log");
    // Every point a kill may be armed at was passed by some run of the trial: a point renamed
    // or moved off the job's path would otherwise only ever be killed from outside.
    let passed = points_passed(&crashed);
    for point in POINTS {
        if !passed.contains(*point) {
            report.failures.push(format!(
                "no run of the trial passed the crash point {point}"
            ));
        }
    }
    if std::env::var_os("VITALFLOW_TRIAL_KEEP").is_some() {
        let dl: Vec<String> = read_topic(&brokers, "dead-letters-crash")
            .iter()
            .map(|(_, h)| {
                format!(
                    "{} {}/{}",
                    h["at"], h["vitalflow-source-partition"], h["vitalflow-source-offset"]
                )
            })
            .collect();
        std::fs::write(crashed.join("dead-letters.txt"), dl.join("\n")).expect("write");
    }
    let got = outputs(&crashed, &brokers, "crash");

    let mut failures = std::mem::take(&mut report.failures);
    for (what, n) in [
        ("NDJSON Observations", got.observations.len()),
        ("FHIR Observations", h.all("Observation").len()),
    ] {
        if n == 0 {
            failures.push(format!("the crashed run's {what} is empty"));
        }
    }
    let mut compare = |what: &str, got: &Multiset, want: &Multiset| {
        let (lost, extra) = differences(got, want);
        if !lost.is_empty() || !extra.is_empty() {
            failures.push(format!(
                "{what}: {} lost, {} duplicated (e.g. lost {:?}, duplicated {:?})",
                lost.len(),
                extra.len(),
                lost.iter().take(3).collect::<Vec<_>>(),
                extra.iter().take(3).collect::<Vec<_>>()
            ));
        }
    };
    compare(
        "lake measurements",
        &got.lake_measurements,
        &want.lake_measurements,
    );
    compare("lake alerts", &got.lake_alerts, &want.lake_alerts);
    compare("alerts topic", &got.alerts, &want.alerts);
    compare("dead-letter topic", &got.dead_letters, &want.dead_letters);
    compare("NDJSON devices", &got.devices, &want.devices);
    compare("lake devices", &got.lake_devices, &want.lake_devices);
    let dup_versions: Vec<&String> = got
        .lake_observation_versions
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(k, _)| k)
        .collect();
    if !dup_versions.is_empty() {
        failures.push(format!(
            "lake observations: {} (id, version, value) written twice, e.g. {:?}",
            dup_versions.len(),
            &dup_versions[..dup_versions.len().min(3)]
        ));
    }
    let mut same = |what: &str, got: &BTreeMap<String, Value>, want: &BTreeMap<String, Value>| {
        let differ: Vec<&String> = want
            .iter()
            .filter(|(id, w)| got.get(*id) != Some(*w))
            .map(|(id, _)| id)
            .chain(got.keys().filter(|id| !want.contains_key(*id)))
            .collect();
        if let Some(first) = differ.first() {
            failures.push(format!(
                "{what}: {} of {} latest Observations differ, e.g. {:?}: {}",
                differ.len(),
                want.len(),
                &differ[..differ.len().min(3)],
                first_difference(
                    got.get(*first).unwrap_or(&Value::Null),
                    want.get(*first).unwrap_or(&Value::Null),
                    ""
                )
                .unwrap_or_default(),
            ));
        }
    };
    same("NDJSON Observations", &got.observations, &want.observations);
    same(
        "lake observations",
        &got.lake_observations,
        &want.lake_observations,
    );
    // The server's Observations carry the server's Patient and Device ids (in their
    // references, identifier and id): compared by device identifier and window, value for value.
    let body = |o: &Value| {
        let mut o = o.clone();
        if let Some(m) = o.as_object_mut() {
            for k in [
                "id",
                "identifier",
                "subject",
                "device",
                "encounter",
                "meta",
                "text",
                "status",
            ] {
                m.remove(k);
            }
        }
        o
    };
    let idents = |kind: &str| -> BTreeMap<String, String> {
        h.all(kind)
            .iter()
            .map(|r| {
                (
                    format!("{kind}/{}", r["id"].as_str().expect("id")),
                    r["identifier"][0]["value"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                )
            })
            .collect()
    };
    let devices_on_server = idents("Device");
    // `{patient}.{device}.{window…}`: the window part, after the two resource ids.
    let window = |ident: &str, patient: &str, device: &str| {
        ident
            .strip_prefix(&format!("{patient}.{device}."))
            .unwrap_or(ident)
            .to_string()
    };
    let on_server: BTreeMap<String, Value> = h
        .all("Observation")
        .iter()
        .filter(|o| o["code"]["coding"][0]["code"] != "1104051000000101")
        .map(|o| {
            let p = o["subject"]["reference"].as_str().unwrap_or_default();
            let d = o["device"]["reference"].as_str().unwrap_or_default();
            let ident = o["identifier"][0]["value"].as_str().unwrap_or_default();
            let key = format!(
                "{}|{}",
                devices_on_server.get(d).map_or("?", String::as_str),
                window(
                    ident,
                    p.trim_start_matches("Patient/"),
                    d.trim_start_matches("Device/")
                )
            );
            (key, body(o))
        })
        .collect();
    let want_server: BTreeMap<String, Value> = want
        .observations
        .values()
        .map(|o| {
            let p = o["subject"]["identifier"]["value"]
                .as_str()
                .unwrap_or_default();
            let d = o["device"]["identifier"]["value"]
                .as_str()
                .unwrap_or_default();
            let ident = o["identifier"][0]["value"].as_str().unwrap_or_default();
            (format!("{d}|{}", window(ident, p, d)), body(o))
        })
        .collect();
    same("FHIR Observations", &on_server, &want_server);
    // One Patient and one Device per monitor, however often the job was killed mid-create.
    // (JSON monitors by their deviceId, PCD-01 ones by their key, the EUI-64.)
    let devices = msgs
        .iter()
        .filter_map(|m| match serde_json::from_slice::<Value>(&m.payload) {
            Ok(v) => v["deviceId"].as_str().map(String::from),
            Err(_) => m.payload.starts_with(b"MSH").then(|| m.key.clone()),
        })
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    for kind in ["Patient", "Device"] {
        // (A PCD-01 monitor's VMDs and channels are Devices of their own.)
        let n = h
            .all(kind)
            .iter()
            .filter(|r| {
                r.pointer("/identifier/0/system").and_then(Value::as_str)
                    != Some(vitalflow::fhir::device::COMPONENT_SYSTEM)
            })
            .count();
        if n != devices {
            failures.push(format!("{n} {kind} resources for {devices} monitors"));
        }
    }
    // A DetectedIssue per alert, in the state its last event left it.
    let mut last_state: BTreeMap<String, (String, String)> = BTreeMap::new();
    for k in want.alerts.keys() {
        let mut parts = k.split('|');
        let id = parts.next().expect("id").trim_matches('"').to_string();
        let state = parts.next().expect("state").trim_matches('"').to_string();
        let at = parts.next().expect("at").to_string();
        let e = last_state.entry(id).or_insert((at.clone(), state.clone()));
        if at > e.0 {
            *e = (at, state);
        }
    }
    let issues: BTreeMap<String, String> = h
        .all("DetectedIssue")
        .iter()
        .map(|i| {
            (
                i["id"].as_str().expect("id").to_string(),
                i["status"].as_str().expect("status").to_string(),
            )
        })
        .collect();
    for (id, (_, state)) in &last_state {
        let want_status = if state == "resolved" {
            "final"
        } else {
            "preliminary"
        };
        if issues.get(id).map(String::as_str) != Some(want_status) {
            failures.push(format!(
                "DetectedIssue {id}: {:?}, its last alert event is {state}",
                issues.get(id)
            ));
        }
    }
    if issues.len() != last_state.len() {
        failures.push(format!(
            "{} DetectedIssues for {} alerts",
            issues.len(),
            last_state.len()
        ));
    }
    let hit = report.kills.iter().filter(|(_, _, u)| *u > 0).count();
    let line = report
        .kills
        .iter()
        .map(|(k, itself, u)| {
            let how = match k {
                Kill::After(d) => format!("after {} ms", d.as_millis()),
                Kill::Uncommitted => "once uncommitted rows were in the lake".to_string(),
                Kill::At(p, n) if *itself => format!("at {p} #{n}"),
                Kill::At(p, n) => format!("at {p} #{n} (not reached; killed from outside)"),
            };
            format!("{how}: {u} uncommitted rows")
        })
        .collect::<Vec<_>>()
        .join("; ");
    eprintln!(
        "trial seed {seed} ({identity}, {kind:?}): {} kills, {hit} hit uncommitted output [{line}]",
        report.kills.len()
    );
    if std::env::var_os("VITALFLOW_TRIAL_KEEP").is_some() {
        let _ = tmp.keep();
    }
    if !failures.is_empty() {
        eprintln!(
            "trial seed {seed}: outputs differ from the uncrashed run:\n{}",
            failures.join("\n")
        );
    }
    report.failures = failures;
    report
}

/// Runs `count` trials (default `default`) against `kind` from seed `base` (both from the
/// environment when set) and fails on any difference or when no kill hit uncommitted output.
fn trials(kind: Broker, count_var: &str, default: u64, base: u64) {
    let trials: u64 = std::env::var(count_var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    let base: u64 = std::env::var("VITALFLOW_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(base);
    let mut hit = 0;
    let mut failed = Vec::new();
    for i in 0..trials {
        // The mock trials alternate identity modes; the broker process trial creates.
        let identity = if kind == Broker::Tansu || i % 2 == 0 {
            "Create"
        } else {
            "Lookup"
        };
        let r = trial(base + i, 4, identity, kind);
        if r.kills.iter().any(|(_, _, u)| *u > 0) {
            hit += 1;
        }
        if !r.failures.is_empty() {
            failed.push(format!("seed {}: {}", base + i, r.failures.join("; ")));
        }
    }
    eprintln!(
        "{trials} trials ({kind:?}), {hit} with a kill that hit uncommitted output, {} with outputs that differ",
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "outputs differ from the uncrashed run ({kind:?}):\n{}",
        failed.join("\n")
    );
    assert!(
        hit > 0,
        "no kill hit uncommitted output: the trials proved nothing"
    );
}

#[test]
fn randomized_kill_9_trials_lose_and_duplicate_nothing() {
    trials(Broker::Mock, "VITALFLOW_CRASH_TRIALS", 2, 20261129);
}

/// The same trial against a Tansu broker process: what a real broker answers (its
/// ListOffsets, its Fetch, its produce acknowledgements) is what the read-backs and the
/// commit protocol must work with. `VITALFLOW_TANSU_TRIALS` trials (default 1).
#[test]
fn kill_9_trials_against_a_tansu_broker_process_lose_and_duplicate_nothing() {
    trials(Broker::Tansu, "VITALFLOW_TANSU_TRIALS", 1, 20261205);
}
