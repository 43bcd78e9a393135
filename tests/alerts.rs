//! Alerting end to end: the `vitalflow` binary reads device messages from librdkafka's mock
//! cluster (127.0.0.1) and delivers alerts to a Kafka topic; rules reload while it runs.

mod common;

use common::*;
use rdkafka::mocking::MockCluster;
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};
use vitalflow::sources::simulator::SimMessage;

type Cluster = MockCluster<'static, rdkafka::producer::DefaultProducerContext>;

fn cluster() -> (Cluster, String) {
    let c = MockCluster::new(1).expect("mock cluster");
    c.create_topic("vitals", 2, 1).expect("topic");
    c.create_topic("alerts", 1, 1).expect("topic");
    let b = c.bootstrap_servers();
    (c, b)
}

fn alert_job(dir: &Path, brokers: &str, rules: &Path) -> std::path::PathBuf {
    let job = kafka_job(
        dir,
        brokers,
        "vitals",
        "g",
        &format!(
            "[anomaly]\nrules = \"{}\"\ntopic = \"alerts\"\n",
            rules.display()
        ),
    );
    job
}

fn scenario(name: &str, minutes_ago: i64) -> vitalflow::sources::scenario::Generated {
    let path = root().join("datasets/scenarios").join(name);
    let text = std::fs::read_to_string(&path).expect("spec");
    let start = chrono::Utc::now() - chrono::Duration::minutes(minutes_ago);
    let start = vitalflow::time::parse_timestamp(&start.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .expect("time");
    vitalflow::sources::scenario::generate(&text, name, start).expect("scenario")
}

/// Every alert on the topic so far, read from the beginning each time.
fn alerts(brokers: &str) -> Vec<Value> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::Message;
    let n = high_watermarks(brokers, "alerts", 1)[&0];
    let c: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "alerts-test")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset("alerts", 0, rdkafka::Offset::Beginning)
        .expect("offset");
    c.assign(&tpl).expect("assign");
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while (out.len() as i64) < n && Instant::now() < deadline {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
            out.push(serde_json::from_slice(m.payload().unwrap_or_default()).expect("alert JSON"));
        }
    }
    out
}

#[test]
fn an_acute_desaturation_alerts_on_the_topic_and_resolves() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (_c, brokers) = cluster();
    let g = scenario("hypoxia.toml", 70);
    produce_sim(&producer(&brokers), "vitals", &g.messages);
    let job = alert_job(
        tmp.path(),
        &brokers,
        &root().join("templates/alerts/adult-vitals.toml"),
    );
    run_ok(
        vitalflow()
            .args(["run", "--until-end", "--workers", "2", "--job"])
            .arg(&job),
    );

    let all = alerts(&brokers);
    for e in &g.events {
        let mine: Vec<&Value> = all
            .iter()
            .filter(|a| a["patient"] == e.patient.as_str() && a["rule"] == "hypoxia")
            .collect();
        let open = mine
            .iter()
            .find(|a| a["state"] == "open")
            .unwrap_or_else(|| panic!("{} has a hypoxia alert: {all:#?}", e.patient));
        let at = vitalflow::time::parse_timestamp(open["at"].as_str().expect("at")).expect("t");
        let ttd = (at - e.onset).num_seconds();
        assert!((-30..=90).contains(&ttd), "detected {ttd} s after onset");
        assert!(open["text"].as_str().expect("text").contains(&e.patient));
        assert_eq!(open["values"][0][0], "59408-5", "the vital judged: {open}");
        let escalated_or_critical = mine.iter().any(|a| a["severity"] == "critical");
        assert!(escalated_or_critical, "SpO2 83 is critical: {mine:#?}");
        let resolved = mine
            .iter()
            .find(|a| a["state"] == "resolved")
            .expect("resolves once SpO2 recovers");
        assert_eq!(resolved["id"], open["id"], "one episode, one id");
        assert!(
            mine.iter().filter(|a| a["state"] == "open").count() == 1,
            "no flapping: {mine:#?}"
        );
    }
    assert!(
        all.iter()
            .all(|a| a["rule"] == "hypoxia" || a["rule"] == "news2"),
        "nothing else alerts: {all:#?}"
    );
}

/// Produces one patient's readings, one message every 20 ms of wall time, each a second of
/// event time later, until told to stop.
fn steady_patient(
    brokers: String,
    hr: std::sync::Arc<std::sync::atomic::AtomicI64>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let p = producer(&brokers);
        let mut t = chrono::Utc::now() - chrono::Duration::hours(2);
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let payload = serde_json::json!({
                "deviceId": "BM-RELOAD", "patientId": "P-RELOAD", "encounterId": "E-1",
                "timestamp": t.to_rfc3339(),
                "heartRate": hr.load(std::sync::atomic::Ordering::Relaxed),
                "spo2": 97, "respiratoryRate": 15,
            });
            let m = SimMessage {
                key: "BM-RELOAD".into(),
                payload: serde_json::to_vec(&payload).expect("json"),
                event_time: t,
            };
            produce_sim(&p, "vitals", std::slice::from_ref(&m));
            t += chrono::Duration::seconds(1);
            std::thread::sleep(Duration::from_millis(20));
        }
    })
}

fn wait_for(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn changing_a_threshold_while_running_updates_alerts_and_a_bad_edit_keeps_the_rules() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (_c, brokers) = cluster();
    let rules = tmp.path().join("rules.toml");
    let text = |warning: u32| {
        format!(
            "[defaults]\nsustained = \"10s\"\nresolve_after = \"30s\"\n\n[[rule]]\nid = \"tachycardia\"\ntitle = \"Heart rate high\"\nvital = \"heartRate\"\nabove = {{ warning = {warning} }}\n\n[quality]\nheartRate = {{ min = 20, max = 300 }}\n"
        )
    };
    std::fs::write(&rules, text(130)).expect("rules");
    let job = alert_job(tmp.path(), &brokers, &rules);
    let metrics = format!("127.0.0.1:{}", free_port());
    let job_text = std::fs::read_to_string(&job).expect("job")
        + &format!("\n[metrics]\naddress = \"{metrics}\"\n");
    std::fs::write(&job, job_text).expect("job");
    let log = std::fs::File::create(tmp.path().join("job.log")).expect("log");
    let mut running = Running::spawn(
        vitalflow()
            .env("VITALFLOW_LOG", "info")
            .args(["run", "--workers", "2", "--job"])
            .arg(&job)
            .stderr(log),
    );
    let hr = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(112));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let feeder = steady_patient(brokers.clone(), hr.clone(), stop.clone());
    // A minute of event time at 112 /min under a 130 threshold: nothing.
    std::thread::sleep(Duration::from_secs(3));
    assert!(alerts(&brokers).is_empty(), "112 is below 130");

    // The threshold drops to 100 while the job runs: the same readings now alert.
    std::fs::write(&rules, text(100)).expect("rules");
    wait_for(
        Duration::from_secs(30),
        "an alert under the new rule",
        || {
            alerts(&brokers).iter().any(|a| {
                a["rule"] == "tachycardia" && a["state"] == "open" && a["patient"] == "P-RELOAD"
            })
        },
    );

    // An edit that does not validate keeps the rules in force and is counted.
    std::fs::write(
        &rules,
        "[[rule]]\nid = \"x\"\nvital = \"glucose\"\nbelow = { warning = 3 }\n",
    )
    .expect("rules");
    wait_for(
        Duration::from_secs(20),
        "the refused reload to be counted",
        || {
            http_get(&metrics, "/metrics")
                .is_some_and(|(_, body)| body.contains("vitalflow_rule_reload_errors_total 1"))
        },
    );
    // Back to normal values: the alert resolves (the rules in force still watch heart rate).
    hr.store(80, std::sync::atomic::Ordering::Relaxed);
    wait_for(Duration::from_secs(30), "the alert to resolve", || {
        alerts(&brokers)
            .iter()
            .any(|a| a["rule"] == "tachycardia" && a["state"] == "resolved")
    });
    // A probe off (heart rate 0) is dropped with its reason, not judged.
    hr.store(0, std::sync::atomic::Ordering::Relaxed);
    wait_for(
        Duration::from_secs(20),
        "the implausible reading to be counted",
        || {
            http_get(&metrics, "/metrics").is_some_and(|(_, body)| {
            body.contains("vitalflow_alert_inputs_rejected{vital=\"8867-4\",reason=\"below the plausible minimum\"}")
        })
        },
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = feeder.join();
    running.terminate();
    assert!(running.wait().success());
    let log = std::fs::read_to_string(tmp.path().join("job.log")).expect("log");
    assert!(
        log.contains("unknown vital \"glucose\"") && log.contains("previous rules stay"),
        "{log}"
    );
}

#[test]
fn invalid_rules_stop_start_up_with_file_and_line() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (_c, brokers) = cluster();
    let rules = tmp.path().join("rules.toml");
    std::fs::write(
        &rules,
        "[[rule]]\nid = \"hr\"\nvital = \"heartRate\"\nabove = { warning = 150, critical = 130 }\n",
    )
    .expect("rules");
    let job = alert_job(tmp.path(), &brokers, &rules);
    let out = vitalflow()
        .args(["run", "--until-end", "--job"])
        .arg(&job)
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("{}:4:", rules.display())) && stderr.contains("less severe"),
        "{stderr}"
    );
}

/// A replay job: `input` (NDJSON) through the bedside-monitor templates and the adult
/// rules, alerts as NDJSON under `out/alerts`; `extra` is appended (epochs, rate).
fn replay_job(
    dir: &Path,
    name: &str,
    input: &Path,
    out: &Path,
    rate: Option<f64>,
    extra: &str,
) -> std::path::PathBuf {
    let root = root();
    let job = dir.join(name);
    std::fs::write(
        &job,
        format!(
            "source = \"file\"\n[file]\npath = \"{}\"\n{}[mapping]\ndevice = \"{}\"\nfhir = \"{}\"\n[sinks.ndjson]\ndir = \"{}\"\nflush_interval = \"1h\"\n[anomaly]\nrules = \"{}\"\n{extra}",
            input.display(),
            rate.map(|r| format!("rate = {r}\n")).unwrap_or_default(),
            root.join("templates/bedside-monitor/devicecontent.json").display(),
            root.join("templates/bedside-monitor/fhirmapping.json").display(),
            out.display(),
            root.join("templates/alerts/adult-vitals.toml").display(),
        ),
    )
    .expect("job");
    job
}

/// Messages of several labelled scenarios, merged in event-time order, written as NDJSON.
fn scenario_file(
    path: &Path,
    names: &[&str],
    start: &str,
) -> Vec<vitalflow::sources::scenario::Event> {
    let start = vitalflow::time::parse_timestamp(start).expect("start");
    let mut messages = Vec::new();
    let mut events = Vec::new();
    for name in names {
        let text =
            std::fs::read_to_string(root().join("datasets/scenarios").join(name)).expect("spec");
        let g = vitalflow::sources::scenario::generate(&text, name, start).expect("scenario");
        messages.extend(g.messages);
        events.extend(g.events);
    }
    messages.sort_by_key(|m| m.event_time);
    let text: String = messages
        .iter()
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned() + "\n")
        .collect();
    std::fs::write(path, text).expect("write");
    events
}

#[test]
fn the_same_input_raises_the_same_alerts_whatever_the_workers_epochs_and_speed() {
    let tmp = tempfile::tempdir().expect("tmp");
    let input = tmp.path().join("ward.ndjson");
    let events = scenario_file(
        &input,
        &[
            "hypoxia.toml",
            "bradycardia.toml",
            "motion.toml",
            "probe-off.toml",
        ],
        "2026-03-02T08:00:00Z",
    );
    let messages = std::fs::read_to_string(&input)
        .expect("read")
        .lines()
        .count();
    // (workers, epoch, batch, messages per second or full speed)
    let runs: [(usize, &str, usize, Option<f64>); 4] = [
        (1, "500ms", 10_000, None),
        (2, "5ms", 16, None),
        (4, "5ms", 1_000, None),
        (2, "50ms", 256, Some(messages as f64 / 4.0)),
    ];
    let mut first: Option<Vec<String>> = None;
    for (i, (workers, epoch, batch, rate)) in runs.iter().enumerate() {
        let out = tmp.path().join(format!("out-{i}"));
        let job = replay_job(
            tmp.path(),
            &format!("job-{i}.toml"),
            &input,
            &out,
            *rate,
            &format!("[performance]\nepoch = \"{epoch}\"\nbatch_size = {batch}\n"),
        );
        run_ok(
            vitalflow()
                .args([
                    "run",
                    "--until-end",
                    "--workers",
                    &workers.to_string(),
                    "--job",
                ])
                .arg(&job),
        );
        let lines = alert_lines(&out);
        match &first {
            None => {
                // Not vacuous: every labelled event alerted, and the episodes resolved.
                let alerts: Vec<Value> = lines
                    .iter()
                    .map(|l| serde_json::from_str(l).expect("json"))
                    .collect();
                for e in &events {
                    assert!(
                        alerts.iter().any(|a| a["patient"] == e.patient.as_str()
                            && e.rules.iter().any(|r| a["rule"] == r.as_str())
                            && a["state"] == "open"),
                        "{} ({}) alerted: {alerts:#?}",
                        e.patient,
                        e.kind
                    );
                }
                assert!(
                    alerts.iter().any(|a| a["state"] == "resolved"),
                    "{alerts:#?}"
                );
                first = Some(lines);
            }
            Some(want) => assert_eq!(
                &lines, want,
                "run {i}: {workers} workers, epochs of {epoch}, batches of {batch}, rate {rate:?}"
            ),
        }
    }
}

/// One bedside-monitor message.
fn reading(
    device: &str,
    patient: &str,
    at: chrono::DateTime<chrono::Utc>,
    hr: u32,
    spo2: u32,
) -> String {
    serde_json::json!({
        "deviceId": device, "patientId": patient, "timestamp": at.to_rfc3339(),
        "heartRate": hr, "spo2": spo2, "respiratoryRate": 15,
    })
    .to_string()
}

#[test]
fn a_sustained_condition_alerts_at_onset_plus_sustained_whatever_else_arrives() {
    let tmp = tempfile::tempdir().expect("tmp");
    let t0 = vitalflow::time::parse_timestamp("2026-03-02T08:00:00Z").expect("t0");
    let s = chrono::Duration::seconds;
    let onset = t0 + s(600);
    let recovery = t0 + s(1500);
    let mut lines = Vec::new();
    for i in 0..720 {
        let at = t0 + s(5 * i);
        // P-A: a reading every 5 s; SpO2 84 from the onset to the recovery, all else constant.
        let spo2 = if at >= onset && at < recovery { 84 } else { 97 };
        lines.push(reading("BM-A", "P-A", at, 76, spo2));
        // P-S: desaturates at the onset and then sends nothing more (a device that stops);
        // the other patients' readings carry the event clock past its deadline.
        if at <= onset {
            lines.push(reading(
                "BM-S",
                "P-S",
                at,
                76,
                if at == onset { 84 } else { 97 },
            ));
        }
        lines.push(reading("BM-B", "P-B", at, 70, 98));
    }
    let input = tmp.path().join("in.ndjson");
    std::fs::write(&input, lines.join("\n") + "\n").expect("write");
    let out = tmp.path().join("out");
    let job = replay_job(tmp.path(), "job.toml", &input, &out, None, "");
    run_ok(
        vitalflow()
            .args(["run", "--until-end", "--workers", "2", "--job"])
            .arg(&job),
    );
    let alerts: Vec<Value> = alert_lines(&out)
        .iter()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    let at = |a: &Value, k: &str| {
        vitalflow::time::parse_timestamp(a[k].as_str().expect(k)).expect("time")
    };
    let find = |patient: &str, state: &str| {
        alerts
            .iter()
            .find(|a| a["patient"] == patient && a["rule"] == "hypoxia" && a["state"] == state)
            .unwrap_or_else(|| panic!("{patient} hypoxia {state}: {alerts:#?}"))
    };
    // sustained = 30 s, resolve_after = 2 m, one reading every 5 s.
    let open = find("P-A", "open");
    assert_eq!(at(open, "since"), onset);
    let delay = (at(open, "at") - onset).num_seconds();
    assert!(
        (30..=35).contains(&delay),
        "opened {delay} s after the onset"
    );
    assert_eq!(
        open["severity"], "critical",
        "84 % is below the critical 85 %"
    );
    let resolved = find("P-A", "resolved");
    assert_eq!(resolved["id"], open["id"]);
    let delay = (at(resolved, "at") - recovery).num_seconds();
    assert!(
        (120..=125).contains(&delay),
        "resolved {delay} s after the recovery"
    );
    let silent = find("P-S", "open");
    assert_eq!(
        at(silent, "at"),
        onset + s(30),
        "the clock, not the patient, fires it"
    );
    assert!(
        alerts.iter().all(|a| a["patient"] != "P-B"),
        "a steady patient never alerts: {alerts:#?}"
    );
}

#[test]
fn the_demos_acute_patient_alerts_within_its_first_two_minutes() {
    let tmp = tempfile::tempdir().expect("tmp");
    let start = vitalflow::time::parse_timestamp("2026-03-02T08:00:00Z").expect("start");
    // The embedded default's simulator: one acute patient among the devices, 1 Hz each.
    let cfg = vitalflow::config::SimulatorConfig {
        devices: 4,
        count: Some(4 * 150),
        acute: 1,
        ..Default::default()
    };
    let msgs: Vec<SimMessage> =
        vitalflow::sources::simulator::Simulator::new(&cfg, start, (0, 1)).collect();
    let input = tmp.path().join("demo.ndjson");
    let text: String = msgs
        .iter()
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned() + "\n")
        .collect();
    std::fs::write(&input, text).expect("write");
    let out = tmp.path().join("out");
    let job = replay_job(tmp.path(), "job.toml", &input, &out, None, "");
    run_ok(vitalflow().args(["run", "--until-end", "--job"]).arg(&job));
    let alerts: Vec<Value> = alert_lines(&out)
        .iter()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    let open = alerts
        .iter()
        .find(|a| a["patient"] == "P-0000" && a["rule"] == "hypoxia" && a["state"] == "open")
        .unwrap_or_else(|| panic!("the acute patient alerts: {alerts:#?}"));
    let at = vitalflow::time::parse_timestamp(open["at"].as_str().expect("at")).expect("at");
    assert!((at - start).num_seconds() <= 120, "{open}");
}

#[test]
fn killed_mid_episode_and_restarted_the_alert_continues_under_its_id() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (_c, brokers) = cluster();
    let job = alert_job(
        tmp.path(),
        &brokers,
        &root().join("templates/alerts/adult-vitals.toml"),
    );
    let t0 = chrono::Utc::now() - chrono::Duration::hours(3);
    let t0 = chrono::DateTime::from_timestamp(t0.timestamp(), 0).expect("whole seconds");
    let s = chrono::Duration::seconds;
    let (onset, recovery) = (t0 + s(600), t0 + s(1500));
    let message = |i: i64, device: &str, patient: &str| {
        let at = t0 + s(5 * i);
        let spo2 = if patient == "P-A" && at >= onset && at < recovery {
            84
        } else {
            97
        };
        SimMessage {
            key: device.into(),
            payload: reading(device, patient, at, 76, spo2).into_bytes(),
            event_time: at,
        }
    };
    let part = |from: i64, to: i64| -> Vec<SimMessage> {
        (from..to)
            .flat_map(|i| [message(i, "BM-A", "P-A"), message(i, "BM-B", "P-B")])
            .collect()
    };
    // Up to 15 minutes in: P-A has been desaturated for five, its alert is open.
    let first = part(0, 180);
    produce_sim(&producer(&brokers), "vitals", &first);
    let mut running = Running::spawn(
        vitalflow()
            .args(["run", "--workers", "2", "--job"])
            .arg(&job),
    );
    wait_for(Duration::from_secs(60), "the hypoxia alert", || {
        alerts(&brokers)
            .iter()
            .any(|a| a["patient"] == "P-A" && a["rule"] == "hypoxia" && a["state"] == "open")
    });
    // Everything read is committed: a restart replays nothing of the episode's start.
    wait_for(
        Duration::from_secs(60),
        "the offsets to be committed",
        || committed(&brokers, "g", "vitals", 2).values().sum::<i64>() == first.len() as i64,
    );
    running.kill();

    produce_sim(&producer(&brokers), "vitals", &part(180, 420));
    run_ok(
        vitalflow()
            .args(["run", "--until-end", "--workers", "2", "--job"])
            .arg(&job),
    );
    let mine: Vec<Value> = alerts(&brokers)
        .into_iter()
        .filter(|a| a["patient"] == "P-A" && a["rule"] == "hypoxia")
        .collect();
    let ids: std::collections::BTreeSet<&str> =
        mine.iter().filter_map(|a| a["id"].as_str()).collect();
    assert_eq!(ids.len(), 1, "one episode, one id: {mine:#?}");
    let distinct: std::collections::BTreeSet<(String, String)> = mine
        .iter()
        .map(|a| (a["state"].to_string(), a["at"].to_string()))
        .collect();
    let opens = distinct.iter().filter(|(s, _)| s == "\"open\"").count();
    let resolved: Vec<&Value> = mine.iter().filter(|a| a["state"] == "resolved").collect();
    assert_eq!(opens, 1, "no second open: {mine:#?}");
    assert!(
        !resolved.is_empty(),
        "the episode resolves after the restart: {mine:#?}"
    );
    let at = vitalflow::time::parse_timestamp(resolved[0]["at"].as_str().expect("at")).expect("at");
    assert_eq!(
        at,
        recovery + s(120),
        "resolve_after (2 min) after the recovery"
    );
}
