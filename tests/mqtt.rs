//! The MQTT gateway against a real Mosquitto (started here on 127.0.0.1) and librdkafka's mock
//! cluster, published to with `mosquitto_pub`: every message is in Kafka with its topic levels
//! as headers and key, a payload that is not JSON is dead-lettered with its topic and reason,
//! a shared subscription splits the messages between gateways without losing any, TLS and
//! passwords work (and a wrong password stops start-up with the reason), a kill -9 of the
//! gateway loses nothing and duplicates nothing downstream, and readings published over MQTT
//! become Observations, an alert and lake rows through the job.

mod common;

use common::mosquitto::Mosquitto;
use common::Record;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};
use vitalflow::config::{KafkaConfig, StartPosition};
use vitalflow::gateway::mqtt::{self, BrokerSettings, Content};
use vitalflow::gateway::topic::TopicTemplate;

/// Every record of `topic` (see [`common::records`]).
fn records(brokers: &str, topic: &str, expect: usize) -> Vec<Record> {
    common::records(brokers, topic, expect, Duration::from_secs(60))
}

fn kafka(brokers: &str) -> KafkaConfig {
    KafkaConfig {
        brokers: brokers.to_string(),
        topics: vec!["vitals".into()],
        group_id: "mqtt-test".into(),
        start: StartPosition::Earliest,
        partitions: 3,
        startup_timeout: Duration::from_secs(10),
        properties: Default::default(),
    }
}

fn settings(broker: &Mosquitto, brokers: &str, client_id: &str) -> mqtt::Settings {
    mqtt::Settings {
        broker: BrokerSettings::from_url(&format!("mqtt://127.0.0.1:{}", broker.port))
            .expect("url"),
        client_id: client_id.into(),
        subscriptions: vec![TopicTemplate::parse("devices/{device}/vitals").expect("template")],
        share_group: None,
        kafka: kafka(brokers),
        topic: "vitals".into(),
        dead_letter_topic: "vitals-refused".into(),
        key: Some("device".into()),
        content: Content::Json,
        receive_maximum: 100,
        session_expiry: Duration::from_secs(600),
        max_payload: 1 << 20,
        dedup_window: Duration::from_secs(600),
    }
}

/// A JSON reading of `device`, number `i`.
fn reading(device: &str, i: usize) -> String {
    format!(
        r#"{{"deviceId":"{device}","patientId":"P-{device}","timestamp":"2026-11-21T10:{:02}:{:02}Z","heartRate":{}}}"#,
        (i / 60) % 60,
        i % 60,
        60 + i % 40
    )
}

/// Waits until the gateway has accepted `n` messages (or fails after 30 s).
fn wait_accepted(g: &mqtt::Gateway, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while g
        .counters
        .accepted
        .load(std::sync::atomic::Ordering::Relaxed)
        < n
    {
        assert!(
            Instant::now() < deadline,
            "{} of {n} accepted",
            g.counters
                .accepted
                .load(std::sync::atomic::Ordering::Relaxed)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn readings_are_in_kafka_with_their_topic_levels_and_bad_payloads_are_dead_lettered() {
    let broker = Mosquitto::start();
    let (_cluster, brokers) = common::mock_cluster(&[("vitals", 3), ("vitals-refused", 1)]);
    let gateway = mqtt::start(settings(&broker, &brokers, "levels")).expect("gateway");
    for d in ["dev-1", "dev-2", "dev-3"] {
        let lines: Vec<String> = (0..50).map(|i| reading(d, i)).collect();
        broker.publish_lines(&format!("devices/{d}/vitals"), &lines, None);
    }
    // An MQTT 5 user property travels as a header.
    let status = broker
        .publisher(None)
        .args(["-t", "devices/dev-4/vitals", "-m", &reading("dev-4", 0)])
        .args(["-D", "publish", "user-property", "ward", "icu-3"])
        .status()
        .expect("mosquitto_pub");
    assert!(status.success());
    let status = broker
        .publisher(None)
        .args(["-t", "devices/dev-9/vitals", "-m", "HR=72;SPO2=97"])
        .status()
        .expect("mosquitto_pub");
    assert!(status.success());
    wait_accepted(&gateway, 151);
    let got = records(&brokers, "vitals", 151);
    assert_eq!(got.len(), 151, "every reading once");
    for r in &got {
        let body: serde_json::Value = serde_json::from_str(&r.payload).expect("JSON as sent");
        assert_eq!(r.key, body["deviceId"], "keyed by the {{device}} level");
        assert_eq!(r.headers["device"], r.key);
        assert_eq!(r.headers["mqtt-topic"], format!("devices/{}/vitals", r.key));
    }
    let dev4 = got.iter().find(|r| r.key == "dev-4").expect("dev-4");
    assert_eq!(dev4.headers.get("ward").map(String::as_str), Some("icu-3"));
    let refused = records(&brokers, "vitals-refused", 1);
    assert_eq!(refused.len(), 1, "{refused:?}");
    let dl: serde_json::Value = serde_json::from_str(&refused[0].payload).expect("dead letter");
    assert_eq!(dl["stage"], "gateway");
    assert_eq!(dl["source"]["topic"], "mqtt://devices/dev-9/vitals");
    assert!(
        dl["error"].as_str().unwrap_or("").contains("not JSON"),
        "{dl}"
    );
    assert_eq!(dl["payload"], "HR=72;SPO2=97", "{dl}");
    assert_eq!(gateway.stop(Duration::from_secs(5)), None);
}

#[test]
fn with_content_hl7_pcd01_messages_pass_and_json_is_dead_lettered() {
    let broker = Mosquitto::start();
    let (_cluster, brokers) = common::mock_cluster(&[("vitals", 3), ("vitals-refused", 1)]);
    let mut s = settings(&broker, &brokers, "hl7");
    s.subscriptions = vec![TopicTemplate::parse("gateways/{gateway}/oru").expect("template")];
    s.key = Some("gateway".into());
    s.content = Content::Hl7;
    let gateway = mqtt::start(s).expect("gateway");
    // A file with CR-ended segments, as a device bridge would publish it.
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("oru.hl7");
    let example = std::fs::read_to_string(common::root().join("datasets/ihe-pcd01/oru-r01.hl7"))
        .expect("example");
    std::fs::write(&file, example.trim_end().replace('\n', "\r")).expect("write");
    let status = broker
        .publisher(None)
        .args(["-t", "gateways/icu-7/oru", "-f"])
        .arg(&file)
        .status()
        .expect("mosquitto_pub");
    assert!(status.success());
    broker.publish_lines("gateways/icu-7/oru", &[reading("dev-1", 0)], None);
    let deadline = Instant::now() + Duration::from_secs(30);
    while gateway
        .counters
        .accepted
        .load(std::sync::atomic::Ordering::Relaxed)
        + gateway
            .counters
            .refused
            .load(std::sync::atomic::Ordering::Relaxed)
        < 2
    {
        assert!(Instant::now() < deadline, "both messages handled");
        std::thread::sleep(Duration::from_millis(20));
    }
    let got = records(&brokers, "vitals", 1);
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].payload.starts_with("MSH|"), "{:?}", got[0].payload);
    assert_eq!(got[0].key, "icu-7");
    let dead = records(&brokers, "vitals-refused", 1);
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(
        dead[0].payload.contains("not an HL7 v2 message"),
        "{}",
        dead[0].payload
    );
    assert_eq!(gateway.stop(Duration::from_secs(5)), None);
}

#[test]
fn a_shared_subscription_splits_the_messages_between_gateways_and_loses_none() {
    let broker = Mosquitto::start();
    let (_cluster, brokers) = common::mock_cluster(&[("vitals", 3), ("vitals-refused", 1)]);
    let shared = |id: &str| {
        let mut s = settings(&broker, &brokers, id);
        s.share_group = Some("vitalflow".into());
        mqtt::start(s).expect("gateway")
    };
    let (a, b) = (shared("gw-a"), shared("gw-b"));
    let lines: Vec<String> = (0..400).map(|i| reading("dev-1", i)).collect();
    broker.publish_lines("devices/dev-1/vitals", &lines, None);
    let deadline = Instant::now() + Duration::from_secs(30);
    let count = |g: &mqtt::Gateway| {
        g.counters
            .accepted
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    while count(&a) + count(&b) < 400 {
        assert!(Instant::now() < deadline, "{} + {}", count(&a), count(&b));
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        count(&a) > 0 && count(&b) > 0,
        "both gateways took a share: {} and {}",
        count(&a),
        count(&b)
    );
    let got = records(&brokers, "vitals", 400);
    let distinct: std::collections::BTreeSet<&str> =
        got.iter().map(|r| r.payload.as_str()).collect();
    assert_eq!((got.len(), distinct.len()), (400, 400), "each message once");
    assert_eq!(a.stop(Duration::from_secs(5)), None);
    assert_eq!(b.stop(Duration::from_secs(5)), None);
}

#[test]
fn tls_and_a_password_are_used_and_a_wrong_password_stops_start_up_with_the_reason() {
    let broker = Mosquitto::tls_with_password("vitalflow", "s3cret");
    let (_cluster, brokers) = common::mock_cluster(&[("vitals", 3), ("vitals-refused", 1)]);
    let tls = |password: &str| {
        let mut s = settings(&broker, &brokers, "tls");
        s.broker =
            BrokerSettings::from_url(&format!("mqtts://127.0.0.1:{}", broker.port)).expect("url");
        s.broker.ca_file = broker.ca.clone();
        s.broker.credentials = Some(("vitalflow".into(), password.into()));
        s
    };
    let e = mqtt::start(tls("wrong"))
        .err()
        .expect("a wrong password is refused");
    let text = format!("{e:#}");
    assert!(
        text.contains("refused")
            && (text.contains("BadUserNamePassword") || text.contains("NotAuthorized")),
        "{text}"
    );
    // Without the CA, the broker's certificate is not trusted.
    let mut untrusted = tls("s3cret");
    untrusted.broker.ca_file = None;
    let e = mqtt::start(untrusted)
        .err()
        .expect("an untrusted certificate is refused");
    assert!(
        format!("{e:#}").to_lowercase().contains("certificate"),
        "{e:#}"
    );
    let gateway = mqtt::start(tls("s3cret")).expect("gateway");
    let lines: Vec<String> = (0..20).map(|i| reading("dev-1", i)).collect();
    broker.publish_lines(
        "devices/dev-1/vitals",
        &lines,
        Some(("vitalflow", "s3cret")),
    );
    wait_accepted(&gateway, 20);
    assert_eq!(records(&brokers, "vitals", 20).len(), 20);
    assert_eq!(gateway.stop(Duration::from_secs(5)), None);
}

/// `vitalflow gateway mqtt` as a process, its stderr read until it has subscribed.
/// Counting in `duplicates` the redeliveries the gateway reports having recognised
/// (messages Kafka already had).
fn spawn_counting(
    broker: &Mosquitto,
    brokers: &str,
    duplicates: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
) -> common::Running {
    let mut child = common::Running::spawn(
        common::vitalflow()
            .args(["gateway", "mqtt", "--broker"])
            .arg(format!("mqtt://127.0.0.1:{}", broker.port))
            .args(["--subscribe", "devices/{device}/vitals", "--key", "device"])
            .args(["--client-id", "kill-trial", "--receive-maximum", "200"])
            .args(["--brokers", brokers, "--topic", "vitals"])
            .args(["--dead-letter-topic", "vitals-refused"])
            // Its report of recognised redeliveries is at info.
            .env("VITALFLOW_LOG", "warn,vitalflow::gateway=info")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped()),
    );
    let stderr = child
        .0
        .as_mut()
        .expect("child")
        .stderr
        .take()
        .expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    // The count in "duplicates=N" (field colours aside); counts restart with each gateway,
    // so what this one reported beyond its last report is added.
    let mut reported = 0u64;
    let mut count = move |l: &str| {
        let (Some(d), Some(i)) = (&duplicates, l.find("duplicates")) else {
            return;
        };
        let n: u64 = l[i + 10..]
            .chars()
            .skip_while(|c| !c.is_ascii_digit())
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .unwrap_or(0);
        d.fetch_add(
            n.saturating_sub(reported),
            std::sync::atomic::Ordering::Relaxed,
        );
        reported = reported.max(n);
    };
    loop {
        match lines.next() {
            Some(Ok(l)) if l.contains("subscribed") => break,
            // A session the broker kept is redelivered before the subscription's answer.
            Some(Ok(l)) => {
                count(&l);
                eprintln!("gateway: {l}");
            }
            other => panic!("the gateway ended before subscribing: {other:?}"),
        }
    }
    // Keep draining so the gateway never blocks on a full pipe.
    std::thread::spawn(move || {
        for l in lines.map_while(Result::ok) {
            count(&l);
            eprintln!("gateway: {l}");
        }
    });
    child
}

#[test]
fn kill_9_of_the_gateway_loses_nothing_and_duplicates_nothing_downstream() {
    let broker = Mosquitto::start();
    let (cluster, brokers) = common::mock_cluster(&[("vitals", 3), ("vitals-refused", 1)]);
    // Kafka answers after 50 ms: at any moment some messages are in Kafka and not yet
    // acknowledged to the broker, which is what a kill must hit.
    cluster
        .broker_round_trip_time(1, Duration::from_millis(50))
        .expect("rtt");
    let msgs = common::simulated(4, 2400, 77, 30);
    let recognised = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut gateway = spawn_counting(&broker, &brokers, Some(recognised.clone()));
    let finished = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // Publishers hold their last quarter until the three kills are done: how long a restart
    // takes varies with the machine's load, and the kills must land while messages remain.
    let killed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let held = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // One publisher per device, paced so the kills land while messages flow.
    let publishers: Vec<_> = {
        let mut by_device: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for m in &msgs {
            by_device
                .entry(m.key.clone())
                .or_default()
                .push(String::from_utf8(m.payload.clone()).expect("utf-8"));
        }
        by_device
            .into_iter()
            .map(|(device, lines)| {
                let mut child = broker
                    .publisher(None)
                    .args(["-t", &format!("devices/{device}/vitals"), "-l"])
                    .stdin(std::process::Stdio::piped())
                    .spawn()
                    .expect("mosquitto_pub");
                let mut stdin = child.stdin.take().expect("stdin");
                let (finished, killed, held) = (finished.clone(), killed.clone(), held.clone());
                std::thread::spawn(move || {
                    use std::io::Write;
                    use std::sync::atomic::Ordering::Relaxed;
                    let gate = lines.len() * 3 / 4;
                    for (i, l) in lines.iter().enumerate() {
                        if i == gate {
                            held.fetch_add(1, Relaxed);
                            while !killed.load(Relaxed) {
                                std::thread::sleep(Duration::from_millis(20));
                            }
                        }
                        writeln!(stdin, "{l}").expect("publish");
                        // Paced (about 15 s in all): a restart reads the dedup window back
                        // from Kafka first, and the kills must land while messages flow.
                        if i % 2 == 0 {
                            std::thread::sleep(Duration::from_millis(50));
                        }
                    }
                    drop(stdin);
                    assert!(child.wait().expect("mosquitto_pub").success());
                    finished.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                })
            })
            .collect()
    };
    // Three kill -9 at random moments while the gateway serves (once Kafka got 30 more
    // records from it since its start), each followed by a restart.
    let in_kafka = || -> i64 {
        common::high_watermarks(&brokers, "vitals", 3)
            .values()
            .sum()
    };
    let publishing = || finished.load(std::sync::atomic::Ordering::Relaxed) < 4;
    // Every publisher waits at its gate: no more records come until the kills are done.
    let all_held = || held.load(std::sync::atomic::Ordering::Relaxed) == 4;
    let mut rng = std::process::id() as u64;
    let mut kills = 0;
    while kills < 3 && publishing() {
        let from = in_kafka();
        while in_kafka() < from + 30 && publishing() && !all_held() {
            std::thread::sleep(Duration::from_millis(5));
        }
        rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1);
        std::thread::sleep(Duration::from_millis((rng >> 33) % 100));
        if !publishing() {
            break;
        }
        gateway.kill();
        kills += 1;
        std::thread::sleep(Duration::from_millis(200));
        let t = std::time::Instant::now();
        gateway = spawn_counting(&broker, &brokers, Some(recognised.clone()));
        // The restart reads the dedup window back first: how long that takes, reported.
        eprintln!(
            "restart {kills}: subscribed again after {:?} ({} records in Kafka)",
            t.elapsed(),
            in_kafka()
        );
    }
    killed.store(true, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(kills, 3, "three kills while the publishers sent");
    for p in publishers {
        p.join().expect("publisher");
    }
    let got = records(&brokers, "vitals", msgs.len());
    gateway.terminate();
    assert!(
        gateway.wait().success(),
        "the gateway stops cleanly on SIGTERM"
    );
    let mut count: BTreeMap<&str, usize> = BTreeMap::new();
    for r in &got {
        *count.entry(r.payload.as_str()).or_default() += 1;
    }
    for m in &msgs {
        let p = std::str::from_utf8(&m.payload).expect("utf-8");
        assert!(count.contains_key(p), "a published message is not in Kafka");
    }
    let twice = count.values().filter(|n| **n > 1).count();
    let recognised = recognised.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!(
        "{kills} kills; {} messages, {} records in Kafka, {twice} twice; {recognised} redeliveries recognised",
        msgs.len(),
        got.len()
    );
    assert_eq!(twice, 0, "a redelivered message was produced again");
    assert!(
        recognised > 0,
        "a kill hit messages Kafka had and the broker had not seen acknowledged (the broker \
         redelivered them and the gateway recognised them)"
    );
    // Downstream, the job takes each reading once: its Observations are those of the
    // messages as published.
    let dir = tempfile::tempdir().expect("dir");
    let lake = dir.path().join("lake");
    let job = common::kafka_job(
        dir.path(),
        &brokers,
        "vitals",
        "after-kills",
        &format!(
            "[sinks.lake]\nlocation = \"{}\"\nflush_interval = \"500ms\"\n",
            lake.display()
        ),
    );
    common::run_ok(
        common::vitalflow()
            .args(["run", "--until-end", "--workers", "2", "--job"])
            .arg(&job),
    );
    let got = common::latest(&common::observation_lines(&dir.path().join("out")));
    common::assert_same(
        &got,
        &common::expected(&msgs),
        "after kill -9 of the gateway",
    );
    // A duplicate cannot change a latest Observation; the measurement rows show one: each
    // (device, value, time) of the published messages is there once.
    let v = common::lake_query(
        lake.join("measurements").as_os_str(),
        None,
        &["SELECT count(*) AS n, count(DISTINCT (device_id, value_name, event_time)) AS d FROM t"],
    );
    let row = &v["results"][0][0];
    let (n, distinct) = (row["n"].as_u64(), row["d"].as_u64());
    assert!(n.is_some_and(|n| n > 0), "{row}");
    assert_eq!(
        n, distinct,
        "one measurement row per published value, none twice: {row}"
    );
}

#[test]
fn a_json_reading_published_over_mqtt_becomes_observations_an_alert_and_lake_rows() {
    let broker = Mosquitto::start();
    let (_cluster, brokers) = common::mock_cluster(&[("vitals", 3), ("vitals-refused", 1)]);
    let gateway = mqtt::start(settings(&broker, &brokers, "e2e")).expect("gateway");
    let example =
        std::fs::read_to_string(common::root().join("datasets/bedside-monitor/reading.json"))
            .expect("example");
    let mut example: serde_json::Value = serde_json::from_str(&example).expect("json");
    // One reading a patient; then P-0001 desaturates: SpO2 84 every 10 s for 80 s of event
    // time (the hypoxia rule is critical below 85, sustained 30 s).
    let mut lines = Vec::new();
    for i in 0..=8 {
        example["timestamp"] =
            format!("2026-11-21T10:{:02}:{:02}.000Z", i * 10 / 60, i * 10 % 60).into();
        example["spo2"] = if i == 0 { 97 } else { 84 }.into();
        lines.push(example.to_string());
    }
    broker.publish_lines("devices/BM-0001/vitals", &lines, None);
    wait_accepted(&gateway, 9);
    let dir = tempfile::tempdir().expect("dir");
    let root = common::root();
    let job = common::kafka_job(
        dir.path(),
        &brokers,
        "vitals",
        "mqtt-e2e",
        &format!(
            "[anomaly]\nrules = \"{}\"\n[sinks.lake]\nlocation = \"{}\"\nflush_interval = \"1s\"\n",
            root.join("templates/alerts/adult-vitals.toml").display(),
            dir.path().join("lake").display(),
        ),
    );
    common::run_ok(
        common::vitalflow()
            .args(["run", "--until-end", "--workers", "2", "--job"])
            .arg(&job),
    );
    let latest = common::latest(&common::observation_lines(&dir.path().join("out")));
    let spo2 = latest
        .values()
        .find(|o| {
            o["code"]["coding"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["code"] == "59408-5"))
        })
        .unwrap_or_else(|| panic!("an SpO2 Observation among {:?}", latest.keys()));
    assert_eq!(spo2["subject"]["identifier"]["value"], "P-0001", "{spo2}");
    common::assert_hypoxia_alert_and_spo2_rows(dir.path(), "P-0001", 9);
    assert_eq!(gateway.stop(Duration::from_secs(5)), None);
}
