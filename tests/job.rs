//! The streaming job end to end: the `vitalflow` binary against librdkafka's mock cluster
//! (a real Kafka protocol peer on 127.0.0.1, started in this test process).

mod common;

use common::*;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};
use vitalflow::sources::simulator::SimMessage;

#[test]
fn kafka_job_writes_observations_dead_letters_and_commits_offsets() {
    let (_c, brokers) = mock_cluster(&[("vitals", 4), ("vitals.dlq", 1)]);
    let tmp = tempfile::tempdir().expect("tmp");
    let good = simulated(12, 360, 7, 30);
    let p = producer(&brokers);
    produce_sim(&p, "vitals", &good);
    let future = (chrono::Utc::now() + chrono::Duration::hours(3)).to_rfc3339();
    let future_msg =
        format!(r#"{{"deviceId":"BM-9","patientId":"P-9","timestamp":"{future}","heartRate":80}}"#);
    let bad: Vec<Outgoing<'_>> = vec![
        (
            Some(b"BM-7"),
            br#"{"deviceId":"BM-7","heartRate":"#,
            vec![("ward", "3B")],
        ),
        (
            None,
            br#"{"deviceId":"BM-8","patientId":"P-8","heartRate":71}"#,
            vec![],
        ),
        (None, future_msg.as_bytes(), vec![]),
    ];
    produce(&p, "vitals", &bad);
    let job = kafka_job(
        tmp.path(),
        &brokers,
        "vitals",
        "icu",
        "[sinks.dead_letter]\ntopic = \"vitals.dlq\"\n",
    );
    run_ok(
        vitalflow()
            .args(["run", "--until-end", "--workers", "2", "--job"])
            .arg(&job),
    );

    let lines = observation_lines(&tmp.path().join("out"));
    assert_same(
        &latest(&lines),
        &expected(&good),
        "the output converges to the Observations of all messages",
    );

    let dead = consume_all(&brokers, "vitals.dlq", 3);
    assert_eq!(dead.len(), 3, "every bad message is dead-lettered");
    let find = |needle: &str| {
        dead.iter()
            .find(|(_, h)| h.get("vitalflow-error").is_some_and(|e| e.contains(needle)))
            .unwrap_or_else(|| panic!("no dead letter for {needle}: {dead:?}"))
    };
    let (payload, h) = find("malformed JSON");
    assert_eq!(
        payload.as_slice(),
        br#"{"deviceId":"BM-7","heartRate":"#,
        "original bytes"
    );
    assert_eq!(
        h.get("ward").map(String::as_str),
        Some("3B"),
        "original headers kept"
    );
    assert_eq!(h.get("vitalflow-stage").map(String::as_str), Some("parse"));
    assert_eq!(
        h.get("vitalflow-source-topic").map(String::as_str),
        Some("vitals")
    );
    assert!(h.contains_key("vitalflow-source-offset"));
    let (_, h) = find("timestampExpression");
    assert!(
        h.get("vitalflow-template")
            .is_some_and(|t| t.contains("\"typeName\":\"heartRate\"")),
        "{h:?}"
    );
    find("ahead of the wall clock");

    assert_eq!(
        committed(&brokers, "icu", "vitals", 4),
        high_watermarks(&brokers, "vitals", 4),
        "every partition committed to its end"
    );
    // A second run with the same group has nothing left to do and writes nothing.
    run_ok(
        vitalflow()
            .args(["run", "--until-end", "--workers", "2", "--job"])
            .arg(&job),
    );
    assert_eq!(
        observation_lines(&tmp.path().join("out")).len(),
        lines.len()
    );
}

#[test]
fn kill_9_and_restart_loses_and_duplicates_nothing() {
    let (_c, brokers) = mock_cluster(&[("vitals", 3)]);
    let msgs = simulated(10, 1200, 11, 40);
    let crash = tempfile::tempdir().expect("tmp");
    let job = kafka_job(crash.path(), &brokers, "vitals", "crashy", "");
    let out = crash.path().join("out");
    crash_and_resume(
        &brokers,
        "crashy",
        &job,
        &msgs,
        || !observation_lines(&out).is_empty(),
        "the job wrote nothing",
    );

    let clean = tempfile::tempdir().expect("tmp");
    let job = kafka_job(clean.path(), &brokers, "vitals", "clean", "");
    run_ok(
        vitalflow()
            .args(["run", "--until-end", "--workers", "2", "--job"])
            .arg(&job),
    );

    let crashed = observation_lines(&crash.path().join("out"));
    let reference = observation_lines(&clean.path().join("out"));
    assert_same(
        &latest(&crashed),
        &latest(&reference),
        "same Observations as a run without the crash",
    );
    assert_same(
        &latest(&crashed),
        &expected(&msgs),
        "the Observations of all messages",
    );
    // No version is written twice: a replayed update that changes nothing is skipped.
    let mut last: BTreeMap<String, &serde_json::Value> = BTreeMap::new();
    for l in &crashed {
        let id = l["id"].as_str().expect("id").to_string();
        assert_ne!(last.get(&id), Some(&l), "duplicate line for {id}");
        last.insert(id, l);
    }
}

#[test]
fn messages_fetched_before_their_partition_queue_is_split_off_are_read() {
    // A loaded machine stalls the worker between `assign` and the split of the partition
    // queues: the first Fetch then lands on the consumer's own queue. Those messages were
    // dropped, and a run lost them (the kill test saw it once in a while after a restart).
    let (_c, brokers) = mock_cluster(&[("vitals", 3)]);
    let msgs = simulated(10, 300, 11, 40);
    produce_sim(&producer(&brokers), "vitals", &msgs);
    let tmp = tempfile::tempdir().expect("tmp");
    let job = kafka_job(tmp.path(), &brokers, "vitals", "stalled", "");
    run_ok(
        vitalflow()
            .env("VITALFLOW_FAILPOINT", "kafka.assigned:pause")
            .args(["run", "--until-end", "--workers", "1", "--job"])
            .arg(&job),
    );
    assert_same(
        &latest(&observation_lines(&tmp.path().join("out"))),
        &expected(&msgs),
        "the Observations of all messages",
    );
}

/// Runs a job reading `topic` from `brokers` that must fail to start within `timeout`:
/// returns its standard error.
fn start_failure(brokers: &str, topic: &str, timeout: &str) -> String {
    let tmp = tempfile::tempdir().expect("tmp");
    let job = kafka_job(tmp.path(), brokers, topic, "g", "");
    let text = std::fs::read_to_string(&job).expect("job").replace(
        "startup_timeout = \"20s\"",
        &format!("startup_timeout = \"{timeout}\""),
    );
    std::fs::write(&job, text).expect("job");
    let out = vitalflow()
        .args(["run", "--job"])
        .arg(&job)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1), "exit code 1: the job failed");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn unreachable_brokers_fail_with_a_clear_error_after_the_deadline() {
    let port = free_port();
    let started = Instant::now();
    let err = start_failure(&format!("127.0.0.1:{port}"), "vitals", "2s");
    assert!(
        err.contains(&format!("brokers 127.0.0.1:{port} unreachable")),
        "{err}"
    );
    assert!(
        err.contains("gave up after 2s (kafka.startup_timeout)"),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[test]
fn a_missing_topic_is_named_with_the_topics_that_exist() {
    let (_c, brokers) = mock_cluster(&[("vitals", 1)]);
    let err = start_failure(&brokers, "vitlas", "1s");
    assert!(err.contains("topic(s) vitlas not found on"), "{err}");
    assert!(err.contains("(existing: vitals)"), "{err}");
}

#[test]
fn an_invalid_job_file_stops_start_up_with_file_and_line() {
    let tmp = tempfile::tempdir().expect("tmp");
    let job = tmp.path().join("bad.toml");
    std::fs::write(
        &job,
        "source = \"kafka\"\n[mapping]\ndevice = \"missing.json\"\nfhir = \"also-missing.json\"\n",
    )
    .expect("write");
    let out = vitalflow()
        .args(["run", "--job"])
        .arg(&job)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let file = job.display().to_string();
    assert!(
        err.contains(&format!(
            "{file}:1:10: source: source \"kafka\" needs a [kafka] table"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{file}:3:10: mapping.device: file not found: missing.json"
        )),
        "{err}"
    );
}

#[test]
fn file_replay_writes_observations_and_dead_letter_files() {
    let tmp = tempfile::tempdir().expect("tmp");
    let msgs = simulated(5, 100, 3, 20);
    let mut text: String = msgs
        .iter()
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned() + "\n")
        .collect();
    text.push_str("{not json\n");
    let input = tmp.path().join("replay.ndjson");
    std::fs::write(&input, text).expect("write");
    let root = root();
    let job = tmp.path().join("replay.toml");
    std::fs::write(
        &job,
        format!(
            "source = \"file\"\n[file]\npath = \"{}\"\n[mapping]\ndevice = \"{}\"\nfhir = \"{}\"\n[sinks.ndjson]\ndir = \"{}\"\n",
            input.display(),
            root.join("templates/bedside-monitor/devicecontent.json").display(),
            root.join("templates/bedside-monitor/fhirmapping.json").display(),
            tmp.path().join("out").display()
        ),
    )
    .expect("write job");
    let out = run_ok(
        vitalflow()
            .env("VITALFLOW_LOG", "info")
            .args([
                "run",
                "--until-end",
                "--workers",
                "2",
                "--log-format",
                "json",
                "--job",
            ])
            .arg(&job),
    );
    // JSON logs, one object a line, and no patient identifier at info level.
    let logs = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {l}"))
        })
        .collect();
    assert!(lines.iter().any(|l| l["fields"]["message"]
        .as_str()
        .is_some_and(|m| m.starts_with("stopped cleanly"))));
    assert!(
        !logs.contains("P-000") && !logs.contains("BM-000"),
        "{logs}"
    );
    assert_same(
        &latest(&observation_lines(&tmp.path().join("out"))),
        &expected(&msgs),
        "the Observations of all messages",
    );
    let dead: Vec<serde_json::Value> =
        vitalflow::sinks::files::committed_parts(&tmp.path().join("out/dead-letters"))
            .iter()
            .flat_map(|p| {
                std::fs::read_to_string(p)
                    .expect("read")
                    .lines()
                    .map(|l| serde_json::from_str(l).expect("json"))
                    .collect::<Vec<_>>()
            })
            .collect();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["payload"], "{not json");
    assert_eq!(dead[0]["source"]["offset"], 101, "the line number");
    assert_eq!(dead[0]["stage"], "parse");
}

#[test]
fn embedded_default_runs_anywhere_and_serves_metrics() {
    let tmp = tempfile::tempdir().expect("tmp");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut child = Running::spawn(
        vitalflow()
            .current_dir(tmp.path())
            .env("VITALFLOW_METRICS_ADDRESS", &addr)
            .args(["run", "--duration", "6s", "--workers", "2"]),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = None;
    while Instant::now() < deadline {
        if let Some((200, body)) = http_get(&addr, "/metrics") {
            let n = body
                .lines()
                .find_map(|l| l.strip_prefix("vitalflow_messages_in_total "))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            if n > 0 {
                seen = Some(body);
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let body = seen.expect("metrics show messages flowing");
    assert!(
        body.contains("# TYPE vitalflow_epoch_latency_seconds histogram"),
        "{body}"
    );
    assert_eq!(http_get(&addr, "/health").map(|x| x.0), Some(200));
    assert!(child.wait().success(), "clean stop after --duration");
    let lines = observation_lines(&tmp.path().join("vitalflow-out"));
    assert!(!lines.is_empty(), "Observations under ./vitalflow-out");
    assert!(lines.iter().all(|o| o["resourceType"] == "Observation"));
}

#[test]
fn sigterm_stops_cleanly_and_commits() {
    let (_c, brokers) = mock_cluster(&[("vitals", 2)]);
    let msgs = simulated(4, 80, 5, 10);
    let p = producer(&brokers);
    produce_sim(&p, "vitals", &msgs);
    let tmp = tempfile::tempdir().expect("tmp");
    let job = kafka_job(tmp.path(), &brokers, "vitals", "term", "");
    let mut child = Running::spawn(vitalflow().args(["run", "--job"]).arg(&job));
    let deadline = Instant::now() + Duration::from_secs(20);
    while committed(&brokers, "term", "vitals", 2) != high_watermarks(&brokers, "vitals", 2) {
        assert!(
            Instant::now() < deadline,
            "offsets reach the end while running"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    child.terminate();
    let status = child.wait();
    assert!(status.success(), "SIGTERM is a clean stop: {status:?}");
    assert_same(
        &latest(&observation_lines(&tmp.path().join("out"))),
        &expected(&msgs),
        "the Observations of all messages",
    );
}

#[test]
fn a_kafka_outage_mid_stream_loses_nothing() {
    let (c, brokers) = mock_cluster(&[("vitals", 2), ("vitals.dlq", 1)]);
    let msgs = simulated(6, 360, 13, 20);
    let p = producer(&brokers);
    produce_sim(&p, "vitals", &msgs[..180]);
    produce(&p, "vitals", &[(None, b"{not json".as_slice(), vec![])]);
    let tmp = tempfile::tempdir().expect("tmp");
    let job = kafka_job(
        tmp.path(),
        &brokers,
        "vitals",
        "outage",
        "[sinks.dead_letter]\ntopic = \"vitals.dlq\"\n",
    );
    let mut child = Running::spawn(vitalflow().args(["run", "--job"]).arg(&job));
    let deadline = Instant::now() + Duration::from_secs(30);
    while committed(&brokers, "outage", "vitals", 2)
        .values()
        .sum::<i64>()
        == 0
    {
        assert!(
            Instant::now() < deadline,
            "the job commits before the outage"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    c.broker_down(1).expect("broker down");
    std::thread::sleep(Duration::from_secs(3));
    c.broker_up(1).expect("broker up");
    // A fresh producer: the outage is the job's to survive, not the test's.
    produce_sim(&producer(&brokers), "vitals", &msgs[180..]);
    let total: i64 = high_watermarks(&brokers, "vitals", 2).values().sum();
    assert_eq!(total, msgs.len() as i64 + 1);
    while committed(&brokers, "outage", "vitals", 2)
        .values()
        .sum::<i64>()
        < total
    {
        assert!(
            Instant::now() < deadline + Duration::from_secs(30),
            "the job catches up after the outage"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    child.terminate();
    assert!(child.wait().success());
    assert_same(
        &latest(&observation_lines(&tmp.path().join("out"))),
        &expected(&msgs),
        "every Observation despite the outage",
    );
    let dead = consume_all(&brokers, "vitals.dlq", 1);
    assert!(!dead.is_empty() && dead.iter().all(|(p, _)| p.as_slice() == b"{not json"));
}

#[test]
fn until_end_finishes_with_empty_partitions() {
    let (_c, brokers) = mock_cluster(&[("vitals", 4)]);
    let msgs = simulated(1, 30, 2, 5);
    produce_sim(&producer(&brokers), "vitals", &msgs);
    let tmp = tempfile::tempdir().expect("tmp");
    let job = kafka_job(tmp.path(), &brokers, "vitals", "one-device", "");
    let started = Instant::now();
    let out = run_ok(
        vitalflow()
            .args(["run", "--until-end", "--workers", "3", "--job"])
            .arg(&job),
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    // Reaching the end of a partition is how --until-end finishes, not an error.
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        !log.lines()
            .any(|l| l.contains("ERROR") || l.contains("WARN")),
        "{log}"
    );
    assert_same(
        &latest(&observation_lines(&tmp.path().join("out"))),
        &expected(&msgs),
        "one device's Observations",
    );
}

#[test]
fn a_failing_sink_keeps_everything_holds_offsets_and_reports_unhealthy() {
    let (_c, brokers) = mock_cluster(&[("vitals", 2)]);
    let msgs = simulated(4, 240, 17, 15);
    let p = producer(&brokers);
    produce_sim(&p, "vitals", &msgs[..120]);
    let tmp = tempfile::tempdir().expect("tmp");
    let job = kafka_job(tmp.path(), &brokers, "vitals", "failing", "");
    let addr = format!("127.0.0.1:{}", free_port());
    let mut child = Running::spawn(
        vitalflow()
            .env("VITALFLOW_METRICS_ADDRESS", &addr)
            .args(["run", "--job"])
            .arg(&job),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let wait_for = |what: &str, ok: &dyn Fn() -> bool| {
        while !ok() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let committed_sum = || {
        committed(&brokers, "failing", "vitals", 2)
            .values()
            .sum::<i64>()
    };
    wait_for("the first half committed", &|| committed_sum() == 120);
    // The sink's directory becomes a file: every flush fails until it is a directory again.
    let dir = tmp.path().join("out/observations");
    let aside = tmp.path().join("out/observations.aside");
    std::fs::rename(&dir, &aside).expect("move the output aside");
    std::fs::write(&dir, b"not a directory").expect("block the output");
    produce_sim(&p, "vitals", &msgs[120..]);
    wait_for("/health to report the failing sink", &|| {
        http_get(&addr, "/health").is_some_and(|(s, _)| s == 503)
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(committed_sum(), 120, "offsets wait for the sink");
    std::fs::remove_file(&dir).expect("unblock");
    std::fs::rename(&aside, &dir).expect("restore the output");
    wait_for("the second half committed", &|| committed_sum() == 240);
    wait_for("/health back to 200", &|| {
        http_get(&addr, "/health").is_some_and(|(s, _)| s == 200)
    });
    child.terminate();
    assert!(child.wait().success());
    assert_same(
        &latest(&observation_lines(&tmp.path().join("out"))),
        &expected(&msgs),
        "every Observation once the sink recovered",
    );
}

#[test]
fn a_dead_letter_larger_than_the_topic_accepts_is_cut_to_fit_and_commits_go_on() {
    let (_c, brokers) = mock_cluster(&[("vitals", 1), ("vitals.dlq", 1)]);
    let tmp = tempfile::tempdir().expect("tmp");
    // A 1.5 MB message that is not JSON, produced by a client allowed records that large.
    let huge = format!(
        "{{\"deviceId\":\"BM-1\",\"blob\":\"{}",
        "x".repeat(1_500_000)
    );
    let p: rdkafka::producer::BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("message.max.bytes", "4000000")
        .create()
        .expect("producer");
    produce(&p, "vitals", &[(Some(b"BM-1"), huge.as_bytes(), vec![])]);
    let good = simulated(2, 20, 3, 10);
    produce_sim(&producer(&brokers), "vitals", &good);
    let job = kafka_job(
        tmp.path(),
        &brokers,
        "vitals",
        "big",
        "[sinks.dead_letter]\ntopic = \"vitals.dlq\"\n",
    );
    run_ok(
        vitalflow()
            .args(["run", "--until-end", "--workers", "1", "--job"])
            .arg(&job),
    );
    let dead = consume_all(&brokers, "vitals.dlq", 1);
    assert_eq!(dead.len(), 1, "the message is dead-lettered");
    let (payload, headers) = &dead[0];
    assert_eq!(
        headers.get("vitalflow-truncated-from").map(String::as_str),
        Some(huge.len().to_string().as_str()),
        "the record says it was cut, and from what size"
    );
    assert!(
        payload.len() < 1_000_000,
        "cut to fit: {} bytes",
        payload.len()
    );
    assert!(
        huge.as_bytes().starts_with(payload),
        "the start of the message is kept"
    );
    assert_eq!(
        committed(&brokers, "big", "vitals", 1),
        high_watermarks(&brokers, "vitals", 1),
        "every offset committed: the oversized dead letter did not stall the job"
    );
}

/// The rows of a lake `devices` table as (id, version, valid from), sorted.
fn lake_device_rows(dir: &Path) -> Vec<String> {
    let v = lake_query(
        dir.join("lake/devices").as_os_str(),
        None,
        &["SELECT id || '|' || version_id || '|' || CAST(valid_from AS VARCHAR) AS k FROM t"],
    );
    let mut rows: Vec<String> = v["results"][0]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| r["k"].as_str().expect("key").to_string())
        .collect();
    rows.sort();
    rows
}

/// Panics with the first lines only one side has (sorted multisets of lines).
fn same_lines(got: &[String], want: &[String], what: &str) {
    let extra: Vec<&String> = got.iter().filter(|l| !want.contains(l)).take(2).collect();
    let missing: Vec<&String> = want.iter().filter(|l| !got.contains(l)).take(2).collect();
    assert!(
        got == want,
        "{what}: {} lines, want {}; only got {extra:?}; only wanted {missing:?}",
        got.len(),
        want.len()
    );
}

/// A job as `kafka_job` writes it, reading IHE PCD-01 messages, with a lakehouse under
/// `<dir>/lake`.
fn pcd01_job(dir: &Path, brokers: &str, group: &str) -> std::path::PathBuf {
    let lake = format!(
        "[sinks.lake]\nlocation = \"{}\"\nflush_interval = \"450ms\"\ntables = [\"devices\"]\n",
        dir.join("lake").display()
    );
    let job = kafka_job(dir, brokers, "vitals", group, &lake);
    use_pcd01_templates(&job);
    job
}

#[test]
fn device_versions_follow_attribute_changes_once_across_kill_9_and_worker_counts() {
    use vitalflow::config::SimulatorConfig;
    use vitalflow::sources::simulator::Simulator;
    let (_c, brokers) = mock_cluster(&[("vitals", 3)]);
    // Eight monitors for six minutes, some readings out of order and late: monitors 0, 3
    // and 6 get a software update mid-run, the NIBP channels of 1, 4 and 7 a calibration.
    let cfg = SimulatorConfig {
        devices: 8,
        count: Some(8 * 361),
        profile: "ihe-pcd01".into(),
        out_of_order: 0.05,
        late_burst: Some(Duration::from_secs(45)),
        ..SimulatorConfig::default()
    };
    let start = chrono::Utc::now() - chrono::Duration::minutes(30);
    let start = vitalflow::time::parse_timestamp(&start.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .expect("time");
    let msgs: Vec<SimMessage> = Simulator::new(&cfg, start, (0, 1)).collect();
    let crash = tempfile::tempdir().expect("tmp");
    let job = pcd01_job(crash.path(), &brokers, "devices-crashy");
    let out = crash.path().join("out");
    crash_and_resume(
        &brokers,
        "devices-crashy",
        &job,
        &msgs,
        || device_lines(&out).iter().any(|l| l.contains("\"2.5.0\"")),
        "no software update was written",
    );
    let mut lake_runs = Vec::new();
    let runs: Vec<Vec<String>> = [1, 3]
        .iter()
        .map(|workers| {
            let dir = tempfile::tempdir().expect("tmp");
            let group = format!("devices-clean-{workers}");
            let job = pcd01_job(dir.path(), &brokers, &group);
            run_ok(
                vitalflow()
                    .args(["run", "--until-end", "--workers", &workers.to_string()])
                    .arg("--job")
                    .arg(&job),
            );
            lake_runs.push(lake_device_rows(dir.path()));
            let mut lines = device_lines(&dir.path().join("out"));
            lines.sort();
            lines
        })
        .collect();
    let mut crashed = device_lines(&out);
    crashed.sort();
    // 18 resources per monitor, then one version per change: 3 software updates, 3
    // calibrations, and the SpO2 sensors of monitors 2 and 7 off and back on.
    assert_eq!(
        runs[0].len(),
        8 * 18 + 3 + 3 + 2 * 2,
        "versions only on change"
    );
    same_lines(&runs[1], &runs[0], "3 workers against 1");
    same_lines(&crashed, &runs[0], "kill -9 and restart against one run");
    // The lake's devices table: a row per version, whatever the kill left it with.
    assert_eq!(lake_runs[0].len(), runs[0].len());
    same_lines(&lake_runs[1], &lake_runs[0], "lake: 3 workers against 1");
    same_lines(
        &lake_device_rows(crash.path()),
        &lake_runs[0],
        "lake: kill -9 and restart against one run",
    );
    let updated: Vec<&String> = crashed.iter().filter(|l| l.contains("\"2.5.0\"")).collect();
    assert_eq!(updated.len(), 3, "{updated:?}");
}

#[test]
fn a_json_feed_naming_device_attributes_writes_its_devices_once_per_change() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mapping = tmp.path().join("devicecontent.json");
    let template =
        std::fs::read_to_string(root().join("templates/bedside-monitor/devicecontent.json"))
            .expect("templates");
    // The bedside monitor's templates, the heart rate's naming the device's make and firmware.
    let mut v: serde_json::Value = serde_json::from_str(&template).expect("JSON");
    let hr = v["template"]
        .as_array_mut()
        .expect("collection")
        .iter_mut()
        .find(|t| t["template"]["typeName"] == "heartRate")
        .expect("heart rate template");
    hr["template"]["deviceAttributes"] =
        serde_json::json!({"manufacturer": "$.make", "softwareVersion": "$.firmware"});
    std::fs::write(&mapping, v.to_string()).expect("mapping");
    let line = |device: &str, s: u32, fw: &str| {
        format!(
            r#"{{"deviceId": "{device}", "patientId": "P-{device}", "timestamp": "2026-12-05T10:00:0{s}Z", "heartRate": 70, "make": "Example", "firmware": "{fw}"}}"#
        )
    };
    let input = tmp.path().join("in.ndjson");
    let lines = [
        line("WB-7", 0, "4.1"),
        line("WB-7", 1, "4.1"),
        line("WB-7", 2, "4.2"),
        line("WB-8", 0, "1.0"),
        line("WB-8", 3, "1.0"),
    ];
    std::fs::write(&input, lines.join("\n") + "\n").expect("input");
    let job = tmp.path().join("job.toml");
    std::fs::write(
        &job,
        format!(
            "source = \"file\"\n[file]\npath = \"{}\"\n[mapping]\ndevice = \"{}\"\nfhir = \"{}\"\n[sinks.ndjson]\ndir = \"{}\"\n[sinks.lake]\nlocation = \"{}\"\ntables = [\"measurements\", \"devices\"]\n",
            input.display(),
            mapping.display(),
            root().join("templates/bedside-monitor/fhirmapping.json").display(),
            tmp.path().join("out").display(),
            tmp.path().join("lake").display()
        ),
    )
    .expect("job");
    run_ok(
        vitalflow()
            .args(["run", "--until-end", "--workers", "2", "--job"])
            .arg(&job),
    );
    let out = tmp.path().join("out");
    let devices: Vec<serde_json::Value> = device_lines(&out)
        .iter()
        .map(|l| serde_json::from_str(l).expect("JSON"))
        .collect();
    let mut seen: Vec<(String, String)> = devices
        .iter()
        .map(|d| {
            (
                d["identifier"][0]["value"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
                d["version"][0]["value"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("WB-7".to_string(), "4.1".to_string()),
            ("WB-7".to_string(), "4.2".to_string()),
            ("WB-8".to_string(), "1.0".to_string()),
        ],
        "a version per device and change"
    );
    assert!(devices.iter().all(|d| d["manufacturer"] == "Example"));
    // The attributes are the device's, not readings: the measurements table has the five
    // heart rates and nothing of the devices; the devices table has the three versions.
    let m = lake_query(
        tmp.path().join("lake/measurements").as_os_str(),
        None,
        &["SELECT value_name, count(*) AS n FROM t GROUP BY value_name ORDER BY value_name"],
    );
    assert_eq!(
        m["results"][0],
        serde_json::json!([{"value_name": "hr", "n": 5}]),
        "{m}"
    );
    let d = lake_query(
        tmp.path().join("lake/devices").as_os_str(),
        None,
        &["SELECT count(*) AS n FROM t"],
    );
    assert_eq!(d["results"][0][0]["n"], 3, "{d}");
}
