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
            .filter(|a| a["category"] == "physiological")
            .all(|a| a["rule"] == "hypoxia" || a["rule"] == "news2"),
        "nothing else alerts: {all:#?}"
    );
    // The patients start up to two minutes apart, so the first to end fall silent while
    // the others' readings carry the clock on: that, and nothing else, is technical.
    for a in all.iter().filter(|a| a["category"] == "technical") {
        let patient = a["patient"].as_str().expect("patient");
        let last = g
            .messages
            .iter()
            .filter(|m| String::from_utf8_lossy(&m.payload).contains(patient))
            .map(|m| m.event_time)
            .max()
            .expect("messages");
        assert!(
            a["rule"]
                .as_str()
                .is_some_and(|r| r.starts_with("device-silent/"))
                && vitalflow::time::parse_timestamp(a["since"].as_str().expect("since"))
                    == Some(last),
            "only a monitor that stopped at the end of its data: {a:#}"
        );
    }
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
            "probe-slip.toml",
            "monitor-unplugged.toml",
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
                    let category = e.category.as_str();
                    assert!(
                        alerts.iter().any(|a| a["patient"] == e.patient.as_str()
                            && a["category"] == category
                            && e.rules.iter().any(|r| a["rule"]
                                .as_str()
                                .is_some_and(|a| a == r || a.starts_with(&format!("{r}/"))))
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
                // The artifacts raise technical alerts and nothing physiological.
                let artifact = |p: &Value| {
                    let p = p.as_str().unwrap_or("");
                    ["P-PROBE-", "P-MONITOR-", "P-MOTION-"]
                        .iter()
                        .any(|s| p.starts_with(s))
                };
                assert!(
                    alerts
                        .iter()
                        .filter(|a| artifact(&a["patient"]))
                        .all(|a| a["category"] == "technical"),
                    "{alerts:#?}"
                );
                assert!(
                    alerts.iter().any(|a| a["rule"]
                        .as_str()
                        .is_some_and(|r| r.starts_with("device-silent/"))),
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
    assert_eq!(open["category"], "physiological");
    let resolved = find("P-A", "resolved");
    assert_eq!(resolved["id"], open["id"]);
    let delay = (at(resolved, "at") - recovery).num_seconds();
    assert!(
        (120..=125).contains(&delay),
        "resolved {delay} s after the recovery"
    );
    // P-S's monitor stops at the onset: one low reading and then nothing is no evidence
    // of hypoxia, but a monitor that stops is a technical alert, fired by the clock.
    assert!(
        !alerts
            .iter()
            .any(|a| a["patient"] == "P-S" && a["category"] == "physiological"),
        "a monitor that stops sustains nothing: {alerts:#?}"
    );
    let silent: Vec<&Value> = alerts
        .iter()
        .filter(|a| a["patient"] == "P-S" && a["state"] == "open")
        .collect();
    assert_eq!(silent.len(), 1, "one technical alert: {silent:#?}");
    assert_eq!(silent[0]["category"], "technical");
    assert_eq!(silent[0]["rule"], "device-silent/BM-S");
    assert_eq!(at(silent[0], "since"), onset, "since its last message");
    assert_eq!(
        at(silent[0], "at"),
        onset + s(30),
        "the clock, not the patient, fires it: signal_lost_after (30 s) later"
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
    // P-C's probe is off (the SpO2 key missing) from 12.5 to 20 minutes: its technical
    // alert opens before the kill and resolves after the restart.
    let (probe_off, probe_on) = (t0 + s(750), t0 + s(1200));
    let message = |i: i64, device: &str, patient: &str| {
        let at = t0 + s(5 * i);
        let spo2 = if patient == "P-A" && at >= onset && at < recovery {
            Some(84)
        } else if patient == "P-C" && at >= probe_off && at < probe_on {
            None
        } else {
            Some(97)
        };
        SimMessage {
            key: device.into(),
            payload: bedside(device, patient, at, 76, spo2).into_bytes(),
            event_time: at,
        }
    };
    let part = |from: i64, to: i64| -> Vec<SimMessage> {
        (from..to)
            .flat_map(|i| {
                [
                    message(i, "BM-A", "P-A"),
                    message(i, "BM-B", "P-B"),
                    message(i, "BM-C", "P-C"),
                ]
            })
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
    wait_for(
        Duration::from_secs(60),
        "the hypoxia and signal-lost alerts",
        || {
            let a = alerts(&brokers);
            a.iter()
                .any(|a| a["patient"] == "P-A" && a["rule"] == "hypoxia" && a["state"] == "open")
                && a.iter()
                    .any(|a| a["patient"] == "P-C" && a["category"] == "technical")
        },
    );
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
    let everything = alerts(&brokers);
    let mine: Vec<Value> = everything
        .iter()
        .filter(|a| a["patient"] == "P-A" && a["rule"] == "hypoxia")
        .cloned()
        .collect();
    let ids: std::collections::BTreeSet<&str> =
        mine.iter().filter_map(|a| a["id"].as_str()).collect();
    assert_eq!(ids.len(), 1, "one episode, one id: {mine:#?}");
    // Raw records, not distinct ones: a duplicate on the topic is a defect too.
    let states: Vec<&str> = mine.iter().filter_map(|a| a["state"].as_str()).collect();
    assert_eq!(
        states,
        vec!["open", "resolved"],
        "opened once before the kill, resolved once after: {mine:#?}"
    );
    let resolved: Vec<&Value> = mine.iter().filter(|a| a["state"] == "resolved").collect();
    // The technical alert's state survives the restart too.
    let lost: Vec<&Value> = everything
        .iter()
        .filter(|a| a["patient"] == "P-C")
        .collect();
    let states: Vec<(&str, &str)> = lost
        .iter()
        .map(|a| {
            (
                a["state"].as_str().unwrap_or(""),
                a["category"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        states,
        vec![("open", "technical"), ("resolved", "technical")],
        "{lost:#?}"
    );
    assert_eq!(lost[0]["id"], lost[1]["id"], "one episode, one id");
    assert_eq!(lost[0]["rule"], "signal-lost/59408-5");
    assert_eq!(
        vitalflow::time::parse_timestamp(lost[1]["at"].as_str().expect("at")).expect("at"),
        probe_on + s(10),
        "resolve_after (10 s) after the probe is back"
    );
    let at = vitalflow::time::parse_timestamp(resolved[0]["at"].as_str().expect("at")).expect("at");
    assert_eq!(
        at,
        recovery + s(120),
        "resolve_after (2 min) after the recovery"
    );
}

/// One bedside-monitor message; `spo2: None` leaves the key out (a probe the monitor no
/// longer reads).
fn bedside(
    device: &str,
    patient: &str,
    at: chrono::DateTime<chrono::Utc>,
    hr: u32,
    spo2: Option<u32>,
) -> String {
    let mut m = serde_json::json!({
        "deviceId": device, "patientId": patient, "timestamp": at.to_rfc3339(),
        "heartRate": hr, "respiratoryRate": 15,
    });
    if let Some(v) = spo2 {
        m["spo2"] = v.into();
    }
    m.to_string()
}

/// Replays `lines` through the bedside templates and the shipped rules (`workers`), and
/// returns the alert records.
fn replay(lines: &[String], workers: usize) -> Vec<Value> {
    let tmp = tempfile::tempdir().expect("tmp");
    let input = tmp.path().join("in.ndjson");
    std::fs::write(&input, lines.join("\n") + "\n").expect("write");
    let out = tmp.path().join("out");
    let job = replay_job(tmp.path(), "job.toml", &input, &out, None, "");
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
    alert_lines(&out)
        .iter()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect()
}

fn time_of(a: &Value, k: &str) -> chrono::DateTime<chrono::Utc> {
    vitalflow::time::parse_timestamp(a[k].as_str().expect(k)).expect("time")
}

#[test]
fn a_slipping_probe_raises_a_technical_alert_and_a_real_desaturation_a_physiological_one() {
    let t0 = vitalflow::time::parse_timestamp("2026-03-02T08:00:00Z").expect("t0");
    let s = chrono::Duration::seconds;
    let slip = t0 + s(300);
    let mut lines = Vec::new();
    for i in 0..900 {
        let at = t0 + s(i);
        let k = i - 300;
        // The probe reads falsely low for three seconds, then 0 (P-Z) or nothing at all
        // (P-M) for 60 s, then is put back.
        let probe = |gone: Option<u32>| match k {
            0 => Some(88),
            1 => Some(84),
            2 => Some(80),
            3..=62 => gone,
            _ => Some(97),
        };
        lines.push(bedside("BM-Z", "P-Z", at, 76, probe(Some(0))));
        lines.push(bedside("BM-M", "P-M", at, 76, probe(None)));
        // P-D truly desaturates to 84 % at the same moment and stays there, read every second.
        lines.push(bedside(
            "BM-D",
            "P-D",
            at,
            80,
            Some(if k >= 0 { 84 } else { 97 }),
        ));
    }
    let alerts = replay(&lines, 2);
    for p in ["P-Z", "P-M"] {
        let mine: Vec<&Value> = alerts.iter().filter(|a| a["patient"] == p).collect();
        assert!(
            mine.iter().all(|a| a["category"] == "technical"),
            "{p}: a lost probe is not a sick patient: {mine:#?}"
        );
        let opened: Vec<&&Value> = mine.iter().filter(|a| a["state"] == "open").collect();
        assert_eq!(opened.len(), 1, "{p}: one technical alert: {mine:#?}");
        let a = opened[0];
        assert_eq!(a["rule"], "signal-lost/59408-5", "{a}");
        assert_eq!(a["title"], "SpO2 signal lost", "{a}");
        assert_eq!(
            time_of(a, "since"),
            slip + s(1),
            "its last valid reading (84)"
        );
        assert_eq!(
            time_of(a, "at"),
            slip + s(31),
            "signal_lost_after (30 s) later"
        );
        assert!(
            mine.iter()
                .any(|x| x["state"] == "resolved" && x["id"] == a["id"]),
            "resolves once the probe is back: {mine:#?}"
        );
    }
    let d = alerts
        .iter()
        .find(|a| a["patient"] == "P-D" && a["rule"] == "hypoxia" && a["state"] == "open")
        .unwrap_or_else(|| panic!("P-D desaturates: {alerts:#?}"));
    assert_eq!(d["category"], "physiological");
    assert_eq!(time_of(d, "since"), slip);
    assert_eq!(time_of(d, "at"), slip + s(30), "onset + sustained");
}

#[test]
fn a_gap_longer_than_max_gap_in_a_low_run_restarts_the_sustained_timer() {
    let t0 = vitalflow::time::parse_timestamp("2026-03-02T08:00:00Z").expect("t0");
    let s = chrono::Duration::seconds;
    let (onset, gap_from, resume) = (t0 + s(300), t0 + s(320), t0 + s(328));
    let mut lines = Vec::new();
    for i in 0..600 {
        let at = t0 + s(i);
        // SpO2 84 from the onset, every second, but the key is missing for 8 s (more than
        // the 5 s max_gap of a 1 Hz vital) 20 s into the low run.
        let spo2 = if at < onset {
            Some(97)
        } else if at >= gap_from && at < resume {
            None
        } else {
            Some(84)
        };
        lines.push(bedside("BM-G", "P-G", at, 76, spo2));
        // Four seconds missing (within max_gap) do not restart it.
        let spo2 = if at < onset {
            Some(97)
        } else if at >= gap_from && at < gap_from + s(4) {
            None
        } else {
            Some(84)
        };
        lines.push(bedside("BM-H", "P-H", at, 76, spo2));
    }
    let alerts = replay(&lines, 1);
    let open = |p: &str| {
        alerts
            .iter()
            .find(|a| a["patient"] == p && a["rule"] == "hypoxia" && a["state"] == "open")
            .unwrap_or_else(|| panic!("{p}: {alerts:#?}"))
            .clone()
    };
    let g = open("P-G");
    assert_eq!(
        time_of(&g, "since"),
        resume,
        "the timer restarts at the resumption"
    );
    assert_eq!(time_of(&g, "at"), resume + s(30));
    let h = open("P-H");
    assert_eq!(time_of(&h, "since"), onset, "a gap within max_gap sustains");
    assert_eq!(time_of(&h, "at"), onset + s(30));
}

#[test]
fn a_slow_cadence_vital_with_sustained_zero_alerts_on_one_reading() {
    let t0 = vitalflow::time::parse_timestamp("2026-03-02T08:00:00Z").expect("t0");
    let s = chrono::Duration::seconds;
    let mut lines = Vec::new();
    // A ward patient: a cuff pressure every 15 minutes and nothing else; the third is low.
    for (i, sys) in [(0, 124), (900, 118), (1800, 78), (2700, 80)] {
        let at = t0 + s(i);
        lines.push(
            serde_json::json!({
                "deviceId": "CUFF-1", "patientId": "P-C", "timestamp": at.to_rfc3339(),
                "nibp": {"systolic": sys, "diastolic": 50, "mean": 60},
            })
            .to_string(),
        );
    }
    let alerts = replay(&lines, 1);
    let a = alerts
        .iter()
        .find(|a| a["rule"] == "hypotension" && a["state"] == "open")
        .unwrap_or_else(|| panic!("{alerts:#?}"));
    assert_eq!(time_of(a, "at"), t0 + s(1800), "one reading is a finding");
    assert_eq!(a["severity"], "critical");
    assert!(
        alerts.iter().all(|a| a["category"] != "technical"),
        "a cuff read every 15 minutes is not a continuous signal: {alerts:#?}"
    );
}

#[test]
fn an_acknowledgement_from_the_board_is_recorded_once_across_a_kill_and_a_restart() {
    use vitalflow::anomaly::ack::AckRequest;
    let tmp = tempfile::tempdir().expect("tmp");
    let c = MockCluster::new(1).expect("mock cluster");
    for (t, n) in [("vitals", 2), ("alerts", 1), ("acks", 1)] {
        c.create_topic(t, n, 1).expect("topic");
    }
    let brokers = c.bootstrap_servers();
    let job = alert_job(
        tmp.path(),
        &brokers,
        &root().join("templates/alerts/adult-vitals.toml"),
    );
    let t0 = chrono::Utc::now() - chrono::Duration::hours(3);
    let t0 = chrono::DateTime::from_timestamp(t0.timestamp(), 0).expect("whole seconds");
    let s = chrono::Duration::seconds;
    let (onset, recovery) = (t0 + s(600), t0 + s(1500));
    let part = |from: i64, to: i64| -> Vec<SimMessage> {
        (from..to)
            .map(|i| {
                let at = t0 + s(5 * i);
                let low = at >= onset && at < recovery;
                SimMessage {
                    key: "BM-A".into(),
                    payload: bedside("BM-A", "P-A", at, 76, Some(if low { 84 } else { 97 }))
                        .into_bytes(),
                    event_time: at,
                }
            })
            .collect()
    };
    // The nurse acknowledges five minutes into the desaturation, as the board writes it.
    let ack = AckRequest {
        alert: vitalflow::anomaly::lifecycle::alert_id("P-A", "hypoxia", onset.timestamp_millis()),
        patient: "P-A".into(),
        device: "BM-A".into(),
        rule: "hypoxia".into(),
        title: "SpO2 low".into(),
        severity: vitalflow::anomaly::rules::Severity::Critical,
        category: vitalflow::anomaly::lifecycle::Category::Physiological,
        since: vitalflow::anomaly::lifecycle::rfc3339(onset.timestamp_millis()),
        action: "acknowledge".into(),
        minutes: None,
        by: "Nurse Ada".into(),
        note: Some("re-sited the probe".into()),
        at_ms: (onset + s(300)).timestamp_millis(),
    };
    let p = producer(&brokers);
    produce_sim(&p, "vitals", &part(0, 180));
    let record = serde_json::to_vec(&ack).expect("JSON");
    produce(
        &p,
        "acks",
        &[(Some("P-A".as_bytes()), record.as_slice(), Vec::new())],
    );
    let flags = [
        "--workers",
        "2",
        "--board",
        "127.0.0.1:0",
        "--acks-topic",
        "acks",
    ];
    let mut running = Running::spawn(vitalflow().arg("run").args(flags).arg("--job").arg(&job));
    wait_for(Duration::from_secs(60), "the acknowledged event", || {
        alerts(&brokers)
            .iter()
            .any(|a| a["state"] == "acknowledged")
    });
    wait_for(
        Duration::from_secs(60),
        "the offsets to be committed",
        || {
            committed(&brokers, "g", "vitals", 2).values().sum::<i64>() == 180
                && committed(&brokers, "g", "acks", 1).values().sum::<i64>() == 1
        },
    );
    running.kill();
    produce_sim(&p, "vitals", &part(180, 420));
    run_ok(
        vitalflow()
            .args(["run", "--until-end"])
            .args(flags)
            .arg("--job")
            .arg(&job),
    );
    let mine: Vec<Value> = alerts(&brokers)
        .into_iter()
        .filter(|a| a["patient"] == "P-A" && a["rule"] == "hypoxia")
        .collect();
    // Raw records: the acknowledgement once, between the alert's own events, and the alert
    // as detected without it (it resolves on its values).
    let states: Vec<&str> = mine.iter().filter_map(|a| a["state"].as_str()).collect();
    assert_eq!(
        states,
        vec!["open", "acknowledged", "resolved"],
        "{mine:#?}"
    );
    let acked = &mine[1];
    assert_eq!(acked["id"], mine[0]["id"]);
    assert_eq!(acked["by"], "Nurse Ada");
    assert_eq!(acked["note"], "re-sited the probe");
    assert_eq!(
        acked["at"],
        vitalflow::anomaly::lifecycle::rfc3339(ack.at_ms).as_str()
    );
    assert_eq!(
        mine[2]["at"],
        vitalflow::anomaly::lifecycle::rfc3339((recovery + s(120)).timestamp_millis()).as_str(),
        "acknowledging changes nothing of what is detected"
    );
}

/// One second of an IHE PCD-01 monitor: heart rate, and SpO2 with its metric status row
/// (`spo2`: None sends the metric without a value, result status X).
fn pcd01_second(
    device: &str,
    patient: &str,
    at: chrono::DateTime<chrono::Utc>,
    spo2: Option<u32>,
    status: &str,
) -> String {
    let ts = at.format("%Y%m%d%H%M%S+0000");
    let spo2 = match spo2 {
        Some(v) => format!("{v}|262688^MDC_DIM_PERCENT^MDC|||||R"),
        None => "|262688^MDC_DIM_PERCENT^MDC|||||X".to_string(),
    };
    [
        format!("MSH|^~\\&|GW^{device}^EUI-64|ICU|VF|HOSP|{ts}||ORU^R01^ORU_R01|{device}-{ts}|P|2.6"),
        format!("PID|||{patient}^^^HOSP^MR"),
        format!("OBR|1|||182777000^monitoring of patient^SCT|||{ts}"),
        format!("OBX|1||69965^MDC_DEV_MON_PHYSIO_MULTI_PARAM_MDS^MDC|1.0.0.0|||||||X|||||||{device}^EUI-64"),
        format!("OBX|2|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC|1.1.1.1|{spo2}|||{ts}"),
        format!("OBX|3|CWE|67904^MDC_ATTR_METRIC_STAT^MDC|1.1.1.1.1|{status}||||||R"),
        format!("OBX|4|NM|147842^MDC_ECG_HEART_RATE^MDC|1.2.1.1|76|264864^MDC_DIM_BEAT_PER_MIN^MDC|||||R|||{ts}"),
        format!("OBX|5|NM|151562^MDC_RESP_RATE^MDC|1.3.1.1|15|264928^MDC_DIM_RESP_PER_MIN^MDC|||||R|||{ts}"),
    ]
    .join("\r")
}

#[test]
fn a_channel_whose_monitor_reports_it_off_raises_its_technical_alert_not_a_clinical_one() {
    let t0 = vitalflow::time::parse_timestamp("2026-03-02T08:00:00Z").expect("t0");
    let s = chrono::Duration::seconds;
    let off_at = t0 + s(300);
    let mut lines = Vec::new();
    for i in 0..700 {
        let at = t0 + s(i);
        let k = i - 300;
        // P-S: the probe reads falsely low for three seconds, then the monitor reports the
        // SpO2 sensor disconnected for 60 s; P-D truly desaturates at the same moment.
        let (value, status) = match k {
            0 => (Some(88), "operating"),
            1 => (Some(84), "operating"),
            2 => (Some(80), "operating"),
            3..=62 => (None, "metric-transduc-discon"),
            _ => (Some(97), "operating"),
        };
        lines.push(pcd01_second("0012A3FFFE00005A", "P-S", at, value, status));
        let d = if k >= 0 { 84 } else { 97 };
        lines.push(pcd01_second(
            "0012A3FFFE00005D",
            "P-D",
            at,
            Some(d),
            "operating",
        ));
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let input = tmp.path().join("in.hl7");
    std::fs::write(&input, lines.join("\n") + "\n").expect("write");
    let out = tmp.path().join("out");
    let job = replay_job(tmp.path(), "job.toml", &input, &out, None, "");
    use_pcd01_templates(&job);
    run_ok(
        vitalflow()
            .args(["run", "--until-end", "--workers", "2", "--job"])
            .arg(&job),
    );
    let alerts: Vec<Value> = alert_lines(&out)
        .iter()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    let mine: Vec<&Value> = alerts.iter().filter(|a| a["patient"] == "P-S").collect();
    let opened: Vec<&&Value> = mine.iter().filter(|a| a["state"] == "open").collect();
    assert_eq!(
        opened.len(),
        1,
        "one alert for the sensor, none for the patient: {mine:#?}"
    );
    let a = opened[0];
    assert_eq!(a["category"], "technical", "{a}");
    assert_eq!(a["rule"], "sensor-off/spo2.spo2Status", "{a}");
    assert_eq!(a["title"], "SpO2 sensor off", "{a}");
    assert_eq!(
        time_of(a, "at"),
        off_at + s(3),
        "at once: the monitor says so"
    );
    assert!(
        mine.iter()
            .any(|x| x["state"] == "resolved" && x["id"] == a["id"]),
        "resolves once the sensor is back: {mine:#?}"
    );
    let d = alerts
        .iter()
        .find(|a| a["patient"] == "P-D" && a["rule"] == "hypoxia" && a["state"] == "open")
        .unwrap_or_else(|| panic!("P-D desaturates: {alerts:#?}"));
    assert_eq!(time_of(d, "at"), off_at + s(30), "onset + sustained");
    // The device output has the SpO2 metric off and back on, as versions.
    let metric: Vec<Value> = device_lines(&out)
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).expect("json"))
        .filter(|r| {
            r["resourceType"] == "DeviceMetric"
                && r["identifier"][0]["value"]
                    .as_str()
                    .is_some_and(|v| v.starts_with("0012A3FFFE00005A/") && v.ends_with("/150456"))
        })
        .collect();
    let mut states: Vec<(String, String)> = metric
        .iter()
        .map(|r| {
            (
                r["meta"]["lastUpdated"].as_str().unwrap_or("").to_string(),
                r["operationalStatus"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    states.sort();
    let st: Vec<&str> = states.iter().map(|(_, s)| s.as_str()).collect();
    assert_eq!(st, ["on", "off", "on"], "{states:?}");
}
