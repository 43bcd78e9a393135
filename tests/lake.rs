//! The lakehouse end to end: the `vitalflow` binary writes Delta tables from librdkafka's
//! mock cluster (a real Kafka protocol peer on 127.0.0.1), and the analysts' readers, the
//! `deltalake` Python package and DuckDB, read them back (tests/readers/lake_query.py).

mod common;

use common::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A job writing NDJSON to `<dir>/out` and the lakehouse to `<dir>/lake`, committing the
/// lake every 300 ms.
fn lake_job(dir: &Path, brokers: &str, group: &str, extra: &str) -> PathBuf {
    let lake = format!(
        "[sinks.lake]\nlocation = \"{}\"\nflush_interval = \"300ms\"\n\n{extra}",
        dir.join("lake").display()
    );
    kafka_job(dir, brokers, "vitals", group, &lake)
}

/// The Python with the readers (and moto): .ci/run's virtualenv, or python3.
fn python() -> String {
    std::env::var("VITALFLOW_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// What the readers see of a table: deltalake's version, file and row counts, DuckDB's
/// column types and the rows of each query (over the view `t`).
fn query(table: &Path, sql: &[&str]) -> Value {
    query_at(table.as_os_str(), None, sql)
}

fn query_at(table: &std::ffi::OsStr, s3: Option<&str>, sql: &[&str]) -> Value {
    lake_query(table, s3, sql)
}

/// The first row of the `i`th query's result.
fn first(v: &Value, i: usize) -> &Value {
    &v["results"][i][0]
}

/// Values the device mapping extracts from `msgs`, per measurement type.
fn values_sent(msgs: &[vitalflow::sources::simulator::SimMessage]) -> BTreeMap<String, u64> {
    let device = vitalflow::mapping::DeviceMapping::from_file(
        &root().join("templates/bedside-monitor/devicecontent.json"),
    )
    .expect("device");
    let mut n = BTreeMap::new();
    for m in msgs {
        let body: Value = serde_json::from_slice(&m.payload).expect("json");
        let ev = vitalflow::event::wrap(body, Default::default(), Default::default());
        for x in device.normalize(&ev).expect("normalizes") {
            *n.entry(x.type_name.to_string()).or_default() += x.properties.len() as u64;
        }
    }
    n
}

fn per_type(v: &Value, i: usize) -> BTreeMap<String, u64> {
    v["results"][i]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            (
                r["type"].as_str().expect("type").to_string(),
                r["n"].as_u64().expect("n"),
            )
        })
        .collect()
}

const PER_TYPE: &str = "SELECT type, count(*) AS n FROM t GROUP BY 1 ORDER BY 1";
const DUPLICATES: &str = "SELECT count(*) AS rows, count(*) - count(DISTINCT (source_partition, source_offset, value_name)) AS duplicates, count(DISTINCT (source_partition, source_offset)) AS records FROM t";
const LATEST: &str =
    "SELECT resource FROM t QUALIFY row_number() OVER (PARTITION BY id ORDER BY version DESC) = 1";
const VERSIONS: &str =
    "SELECT count(DISTINCT (id, version, value_name)) - count(*) AS duplicates FROM t";

fn latest_observations(v: &Value, i: usize) -> BTreeMap<String, Value> {
    let lines: Vec<Value> = v["results"][i]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| serde_json::from_str(r["resource"].as_str().expect("resource")).expect("json"))
        .collect();
    latest(&lines)
}

#[test]
fn kill_9_mid_write_and_restart_writes_every_value_once() {
    let (_c, brokers) = mock_cluster(&[("vitals", 3)]);
    let msgs = simulated(10, 1200, 11, 40);
    let crash = tempfile::tempdir().expect("tmp");
    let job = lake_job(crash.path(), &brokers, "crashy", "");
    // Killed once the measurements table has a few commits: some flush is usually mid-write.
    let log = crash.path().join("lake/measurements/_delta_log");
    crash_and_resume(
        &brokers,
        "crashy",
        &job,
        &msgs,
        || log.join("00000000000000000004.json").exists(),
        "the job committed nothing",
    );

    let clean = tempfile::tempdir().expect("tmp");
    let job = lake_job(clean.path(), &brokers, "clean", "");
    run_ok(
        vitalflow()
            .args(["run", "--until-end", "--workers", "2", "--job"])
            .arg(&job),
    );

    let sent = values_sent(&msgs);
    let total: u64 = sent.values().sum();
    for dir in [crash.path(), clean.path()] {
        let m = query(&dir.join("lake/measurements"), &[PER_TYPE, DUPLICATES]);
        assert_eq!(
            per_type(&m, 0),
            sent,
            "every value, per type ({})",
            dir.display()
        );
        let d = first(&m, 1);
        assert_eq!(d["rows"], total, "{}", dir.display());
        assert_eq!(
            d["duplicates"], 0,
            "no (partition, offset, value name) twice"
        );
        assert_eq!(d["records"], 1200, "every Kafka record");
        assert_eq!(m["delta_rows"], total, "the deltalake reader agrees");

        let o = query(&dir.join("lake/observations"), &[LATEST, VERSIONS]);
        assert_same(
            &latest_observations(&o, 0),
            &expected(&msgs),
            "the latest version of each Observation",
        );
        assert_eq!(first(&o, 1)["duplicates"], 0, "no (id, version) twice");
    }
}

#[test]
fn analysts_query_typed_columns_and_the_values_sent() {
    let (_c, brokers) = mock_cluster(&[("vitals", 2)]);
    let mut msgs = simulated(3, 90, 5, 10);
    // Schema drift: a string where a number was. The row keeps it; nothing is lost.
    let drifted = String::from_utf8(msgs[7].payload.clone())
        .expect("utf8")
        .replacen("\"heartRate\":", "\"heartRate\":\"n/a\",\"was\":", 1);
    assert_ne!(
        drifted.as_bytes(),
        msgs[7].payload,
        "the payload has a heartRate"
    );
    msgs[7].payload = drifted.into_bytes();
    let p = producer(&brokers);
    produce_sim(&p, "vitals", &msgs);
    let tmp = tempfile::tempdir().expect("tmp");
    let job = lake_job(tmp.path(), &brokers, "typed", "");
    run_ok(vitalflow().args(["run", "--until-end", "--job"]).arg(&job));

    let day = msgs[0].event_time.format("%Y-%m-%d").to_string();
    let hr_sum: f64 = msgs
        .iter()
        .filter_map(|m| {
            let v: Value = serde_json::from_slice(&m.payload).ok()?;
            v["heartRate"].as_f64()
        })
        .sum();
    let by_date = format!(
        "SELECT count(*) AS n, sum(value) AS total, count(DISTINCT device_id) AS devices, \
         min(unit) AS unit FROM t WHERE type = 'heartRate' AND date = '{day}'"
    );
    let drift = "SELECT value, value_string, event_time FROM t \
                 WHERE type = 'heartRate' AND value_string IS NOT NULL";
    let m = query(&tmp.path().join("lake/measurements"), &[&by_date, drift]);
    let types = &m["types"];
    for (col, ty) in [
        ("event_time", "TIMESTAMP WITH TIME ZONE"),
        ("ingest_time", "TIMESTAMP WITH TIME ZONE"),
        ("value", "DOUBLE"),
        ("source_offset", "BIGINT"),
        ("date", "DATE"),
    ] {
        assert_eq!(types[col], ty, "{col}");
    }
    let r = first(&m, 0);
    assert_eq!(r["n"], 90, "one heart rate per message");
    assert_eq!(r["devices"], 3);
    assert!(
        (r["total"].as_f64().expect("sum") - hr_sum).abs() < 1e-6,
        "values as sent: {} vs {hr_sum}",
        r["total"]
    );
    assert_eq!(r["unit"], "/min", "unit from the FHIR mapping");
    let d = first(&m, 1);
    assert_eq!(d["value"], Value::Null);
    assert_eq!(d["value_string"], "n/a");
    let at = msgs[7].event_time.format("%Y-%m-%d %H:%M:%S").to_string();
    assert!(
        d["event_time"]
            .as_str()
            .is_some_and(|t| t.starts_with(&at) && t.ends_with("+00:00")),
        "event time as a UTC timestamp ({at}): {}",
        d["event_time"]
    );
    // One Delta commit per flush: the log is the table's history.
    let history = m["history"].as_array().expect("history");
    assert_eq!(history.last(), Some(&Value::from("CREATE TABLE")));
    assert!(history[..history.len() - 1].iter().all(|h| h == "WRITE"));
}

#[test]
fn compaction_keeps_the_rows_and_vacuum_deletes_the_small_files() {
    let (_c, brokers) = mock_cluster(&[("vitals", 2)]);
    let msgs = simulated(4, 400, 9, 20);
    let p = producer(&brokers);
    let tmp = tempfile::tempdir().expect("tmp");
    let job = lake_job(tmp.path(), &brokers, "compact", "");
    // Four runs: each commits files of its own to every partition.
    for part in msgs.chunks(100) {
        produce_sim(&p, "vitals", part);
        run_ok(vitalflow().args(["run", "--until-end", "--job"]).arg(&job));
    }
    let table = tmp.path().join("lake/measurements");
    // Rounded: a float sum depends on the order of the rows, which compaction changes.
    let count = "SELECT count(*) AS n, round(sum(value), 6) AS total FROM t";
    let before = query(&table, &[count, PER_TYPE]);
    let partitions = per_type(&before, 1).len() as u64;
    assert!(before["files"].as_u64().expect("files") > partitions);

    let out = run_ok(
        vitalflow()
            .args([
                "lake",
                "compact",
                "--older-than",
                "0s",
                "--format",
                "json",
                "--job",
            ])
            .arg(&job),
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("report");
    let m = &report[0];
    assert_eq!(m["table"], "measurements");
    // Partitions with one file already are left as they are.
    let compacted = m["partitions"].as_u64().expect("partitions");
    assert!(compacted > 0 && compacted <= partitions, "{m}");
    assert_eq!(m["files_out"], compacted, "one file per partition");
    let after = query(&table, &[count, PER_TYPE]);
    assert_eq!(after["files"], partitions);
    assert_eq!(
        first(&after, 0),
        first(&before, 0),
        "same rows, same values"
    );
    assert_eq!(after["results"][1], before["results"][1]);
    assert_eq!(after["history"][0], "OPTIMIZE");

    let parquet_files = |dir: &Path| {
        let mut n = 0;
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).expect("dir").flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|x| x == "parquet") {
                    n += 1;
                }
            }
        }
        n
    };
    assert!(parquet_files(&table) > partitions);
    let out = run_ok(
        vitalflow()
            .args([
                "lake",
                "vacuum",
                "--retention",
                "0s",
                "--table",
                "measurements",
                "--format",
                "json",
                "--job",
            ])
            .arg(&job),
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("report");
    assert_eq!(
        report[0]["files_deleted"], m["files_in"],
        "the compacted files"
    );
    assert_eq!(parquet_files(&table), partitions);
    assert_eq!(first(&query(&table, &[count]), 0), first(&before, 0));
}

#[test]
fn an_unwritable_location_stops_start_up_naming_it() {
    let tmp = tempfile::tempdir().expect("tmp");
    let blocker = tmp.path().join("not-a-dir");
    std::fs::write(&blocker, b"a file").expect("file");
    let (_c, brokers) = mock_cluster(&[("vitals", 1)]);
    let extra = format!(
        "[sinks.lake]\nlocation = \"{}\"\n",
        blocker.join("lake").display()
    );
    let job = kafka_job(tmp.path(), &brokers, "vitals", "g", &extra);
    let out = vitalflow()
        .args(["run", "--until-end", "--job"])
        .arg(&job)
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&blocker.join("lake/measurements").display().to_string())
            && err.contains("Not a directory"),
        "names the location and why: {err}"
    );
}

#[test]
fn a_full_disk_holds_offsets_and_the_next_start_resumes() {
    let (_c, brokers) = mock_cluster(&[("vitals", 2)]);
    let msgs = simulated(4, 240, 21, 15);
    let p = producer(&brokers);
    produce_sim(&p, "vitals", &msgs[..120]);
    let tmp = tempfile::tempdir().expect("tmp");
    let job = lake_job(tmp.path(), &brokers, "full", "");
    run_ok(vitalflow().args(["run", "--until-end", "--job"]).arg(&job));
    let committed_sum = || {
        committed(&brokers, "full", "vitals", 2)
            .values()
            .sum::<i64>()
    };
    assert_eq!(committed_sum(), 120);

    // The disk fills up: no file may grow beyond 2 KiB (RLIMIT_FSIZE, with SIGXFSZ ignored,
    // so writes fail with EFBIG as they would with ENOSPC), while the next messages arrive.
    produce_sim(&p, "vitals", &msgs[120..]);
    let addr = format!("127.0.0.1:{}", free_port());
    let mut child = Running::spawn(
        Command::new("sh")
            .args(["-c", "trap '' XFSZ; ulimit -f 2; exec \"$0\" \"$@\""])
            .arg(env!("CARGO_BIN_EXE_vitalflow"))
            .args(["run", "--no-status", "--job"])
            .arg(&job)
            .env("VITALFLOW_METRICS_ADDRESS", &addr)
            .stderr(std::process::Stdio::piped()),
    );
    // Drained by a thread: the log is a pipe, which the file size limit does not cover.
    let stderr = child
        .0
        .as_mut()
        .and_then(|c| c.stderr.take())
        .expect("stderr");
    let log = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut { stderr }, &mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    while http_get(&addr, "/health").is_none_or(|(s, _)| s != 503) {
        // A job whose output fails stops: it may exit between two polls, and then its exit
        // status is the report.
        if let Some(status) = child.try_wait() {
            assert!(!status.success(), "the job exited as if nothing failed");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/health never reported the failing sink"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        committed_sum(),
        120,
        "nothing committed past what is written"
    );
    child.kill();
    let stderr = log.join().expect("log");
    assert!(
        stderr.contains("File too large"),
        "the reason is logged: {stderr}"
    );

    // Space again: the next start resumes, and the table was never corrupted.
    run_ok(vitalflow().args(["run", "--until-end", "--job"]).arg(&job));
    assert_eq!(committed_sum(), 240);
    let m = query(&tmp.path().join("lake/measurements"), &[DUPLICATES]);
    let total: u64 = values_sent(&msgs).values().sum();
    assert_eq!(first(&m, 0)["rows"], total);
    assert_eq!(first(&m, 0)["duplicates"], 0);
    assert_eq!(first(&m, 0)["records"], 240);
}

/// moto's S3 server on a loopback port, stopped when dropped.
struct Moto {
    _server: Running,
    endpoint: String,
}

fn moto() -> Moto {
    let port = free_port();
    let server = Running::spawn(
        Command::new(python())
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null()),
    );
    let endpoint = format!("http://127.0.0.1:{port}");
    let client = http_client();
    let deadline = Instant::now() + Duration::from_secs(30);
    // A PUT on a bucket name creates the bucket (moto takes unsigned requests).
    while client
        .put(format!("{endpoint}/lake"))
        .send()
        .map_or(true, |r| !r.status().is_success())
    {
        assert!(
            Instant::now() < deadline,
            "moto did not start on {endpoint}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    Moto {
        _server: server,
        endpoint,
    }
}

#[test]
fn s3_locations_take_the_same_path_against_a_local_s3_server() {
    let s3 = moto();
    let (_c, brokers) = mock_cluster(&[("vitals", 2)]);
    let msgs = simulated(5, 200, 13, 10);
    let p = producer(&brokers);
    produce_sim(&p, "vitals", &msgs);
    let tmp = tempfile::tempdir().expect("tmp");
    let lake = format!(
        "[sinks.lake]\nlocation = \"s3://lake/icu\"\nflush_interval = \"300ms\"\n\n\
         [sinks.lake.storage]\naws_endpoint = \"{}\"\naws_region = \"us-east-1\"\n\
         aws_allow_http = \"true\"\naws_access_key_id = \"test\"\naws_secret_access_key = \"test\"\n",
        s3.endpoint
    );
    let job = kafka_job(tmp.path(), &brokers, "vitals", "s3", &lake);
    run_ok(
        vitalflow()
            .args(["run", "--until-end", "--workers", "2", "--job"])
            .arg(&job),
    );
    let m = query_at(
        std::ffi::OsStr::new("s3://lake/icu/measurements"),
        Some(&s3.endpoint),
        &[PER_TYPE, DUPLICATES],
    );
    assert_eq!(per_type(&m, 0), values_sent(&msgs));
    assert_eq!(first(&m, 1)["duplicates"], 0);
    assert_eq!(first(&m, 1)["records"], 200);
    assert_eq!(m["types"]["event_time"], "TIMESTAMP WITH TIME ZONE");
    let o = query_at(
        std::ffi::OsStr::new("s3://lake/icu/observations"),
        Some(&s3.endpoint),
        &[LATEST],
    );
    assert_same(
        &latest_observations(&o, 0),
        &expected(&msgs),
        "Observations on S3",
    );
    // Nothing went to the local disk.
    assert!(!tmp.path().join("lake").exists());
}

#[test]
fn the_job_compacts_its_tables_while_it_runs() {
    let (_c, brokers) = mock_cluster(&[("vitals", 2)]);
    let msgs = simulated(4, 600, 23, 20);
    let p = producer(&brokers);
    let tmp = tempfile::tempdir().expect("tmp");
    let job = lake_job(tmp.path(), &brokers, "auto", "");
    let text = std::fs::read_to_string(&job).expect("job");
    let text = text.replace(
        "flush_interval = \"300ms\"\n",
        "flush_interval = \"300ms\"\ncompact_every = \"2s\"\n",
    );
    std::fs::write(&job, text).expect("job");
    let mut child = Running::spawn(
        vitalflow()
            .args(["run", "--workers", "2", "--job"])
            .arg(&job),
    );
    let log = tmp.path().join("lake/measurements/_delta_log");
    let compacted = || {
        std::fs::read_dir(&log)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| std::fs::read_to_string(e.path()).is_ok_and(|t| t.contains("\"OPTIMIZE\"")))
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut sent = 0;
    while sent < msgs.len() || !compacted() {
        assert!(Instant::now() < deadline, "no compaction while the job ran");
        if sent < msgs.len() {
            produce_sim(&p, "vitals", &msgs[sent..sent + 50]);
            sent += 50;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let total: u64 = values_sent(&msgs).values().sum();
    let deadline = Instant::now() + Duration::from_secs(60);
    while committed(&brokers, "auto", "vitals", 2)
        .values()
        .sum::<i64>()
        < 600
    {
        assert!(Instant::now() < deadline, "the job did not catch up");
        std::thread::sleep(Duration::from_millis(100));
    }
    child.terminate();
    assert!(child.wait().success());
    let m = query(&tmp.path().join("lake/measurements"), &[DUPLICATES]);
    assert_eq!(first(&m, 0)["rows"], total, "compaction kept every row");
    assert_eq!(first(&m, 0)["duplicates"], 0);
    assert!(
        m["history"]
            .as_array()
            .expect("history")
            .contains(&Value::from("OPTIMIZE")),
        "{}",
        m["history"]
    );
}

#[test]
fn device_versions_land_in_the_devices_table_and_join_to_the_measurements_they_were_taken_under() {
    use vitalflow::config::SimulatorConfig;
    use vitalflow::sources::simulator::Simulator;
    let (_c, brokers) = mock_cluster(&[("vitals", 3)]);
    // Four PCD-01 monitors for six minutes: monitor 0's software is updated 120 s in.
    let cfg = SimulatorConfig {
        devices: 4,
        count: Some(4 * 361),
        profile: "ihe-pcd01".into(),
        ..SimulatorConfig::default()
    };
    let start = vitalflow::time::parse_timestamp("2026-11-20T10:00:00Z").expect("start");
    let msgs: Vec<vitalflow::sources::simulator::SimMessage> =
        Simulator::new(&cfg, start, (0, 1)).collect();
    produce_sim(&producer(&brokers), "vitals", &msgs);
    let dir = tempfile::tempdir().expect("tmp");
    let job = lake_job(dir.path(), &brokers, "devices", "");
    use_pcd01_templates(&job);
    run_ok(
        vitalflow()
            .args(["run", "--until-end", "--workers", "2", "--job"])
            .arg(&job),
    );
    let lake = dir.path().join("lake");
    // The same versions as the NDJSON output, one row each.
    let ndjson = device_lines(&dir.path().join("out")).len();
    // 18 resources a monitor; software updates (0, 3), a calibration (1), SpO2 off and on (2).
    assert_eq!(ndjson, 4 * 18 + 2 + 1 + 2);
    let v = query(
        &lake.join("devices"),
        &[
            "SELECT count(*) AS n, count(DISTINCT id) AS ids FROM t",
            "SELECT software_version, CAST(valid_from AS VARCHAR) AS valid_from FROM t \
             WHERE level = 'mds' AND device_id = '0012A3FFFE000000' ORDER BY valid_from",
            "SELECT level, count(*) AS n FROM t GROUP BY level ORDER BY level",
        ],
    );
    assert_eq!(first(&v, 0)["n"], ndjson as u64, "{v}");
    assert_eq!(first(&v, 0)["ids"], 4 * 18, "{v}");
    assert_eq!(v["types"]["valid_from"], "TIMESTAMP WITH TIME ZONE", "{v}");
    assert_eq!(
        v["types"]["calibration_time"], "TIMESTAMP WITH TIME ZONE",
        "{v}"
    );
    let mds: Vec<(String, String)> = v["results"][1]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            (
                r["software_version"].as_str().unwrap_or("").to_string(),
                r["valid_from"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(mds.len(), 2, "{mds:?}");
    assert_eq!(mds[0].0, "2.4.1");
    assert_eq!(mds[1].0, "2.5.0");
    assert!(mds[1].1.starts_with("2026-11-20 10:02:00"), "{mds:?}");
    // An analyst's question: under which software was each reading of monitor 0 taken?
    // (DuckDB's ASOF join: the device version in force at each measurement's time.)
    let joined = Command::new(python())
        .env(
            "VITALFLOW_LAKE_VIEWS",
            format!("m={}", lake.join("measurements").display()),
        )
        .arg(root().join("tests/readers/lake_query.py"))
        .arg(lake.join("devices"))
        .arg(
            "SELECT d.software_version AS sw, count(*) AS n, \
             CAST(max(m.event_time) AS VARCHAR) AS last FROM m ASOF JOIN \
             (SELECT * FROM t WHERE level = 'mds') d \
             ON m.device_id = d.device_id AND m.event_time >= d.valid_from \
             WHERE m.device_id = '0012A3FFFE000000' AND m.value_name = 'hr' \
             GROUP BY 1 ORDER BY 1",
        )
        .output()
        .expect("reader");
    assert!(
        joined.status.success(),
        "{}",
        String::from_utf8_lossy(&joined.stderr)
    );
    let joined: Value = serde_json::from_slice(&joined.stdout).expect("JSON");
    let rows = joined["results"][0].as_array().expect("rows");
    assert_eq!(rows.len(), 2, "{joined}");
    assert_eq!(rows[0]["sw"], "2.4.1");
    assert_eq!(rows[0]["n"], 120, "the first 120 s: {joined}");
    assert!(
        rows[0]["last"]
            .as_str()
            .is_some_and(|t| t.starts_with("2026-11-20 10:01:59")),
        "{joined}"
    );
    assert_eq!(rows[1]["sw"], "2.5.0");
    assert_eq!(rows[1]["n"], 241, "{joined}");
}
