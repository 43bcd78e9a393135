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
