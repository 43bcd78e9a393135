//! The FHIR sink end to end: the `vitalflow` binary reads from librdkafka's mock cluster and
//! writes to Helios FHIR Server (SQLite, 127.0.0.1), both started by each test.

mod common;

use common::fhir_server::{assert_valid, schema, Helios};
use common::*;
use rdkafka::mocking::MockCluster;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};
use vitalflow::fhir::observation::observation_id;
use vitalflow::sources::simulator::SimMessage;

type Cluster = MockCluster<'static, rdkafka::producer::DefaultProducerContext>;

fn cluster(topic: &str, partitions: i32) -> (Cluster, String) {
    let c = MockCluster::new(1).expect("mock cluster");
    c.create_topic(topic, partitions, 1).expect("topic");
    let b = c.bootstrap_servers();
    (c, b)
}

/// A job reading `vitals` and writing Observations to the FHIR server at `url` only; dead
/// letters go to files under `<dir>/out` (run it with `--output`).
fn fhir_job(dir: &Path, brokers: &str, group: &str, url: &str, fhir: &str) -> std::path::PathBuf {
    common::fhir_server::fhir_job(
        dir,
        brokers,
        group,
        &format!("url = \"{url}\"\nflush_interval = \"300ms\"\nstartup_timeout = \"20s\"\n{fhir}"),
    )
}

/// A Helios server, a mock Kafka cluster with `vitals`, and simulated messages: what every
/// test here starts from.
fn setup(
    partitions: i32,
    devices: u32,
    count: u64,
    seed: u64,
) -> (tempfile::TempDir, Helios, Cluster, String, Vec<SimMessage>) {
    let tmp = tempfile::tempdir().expect("tmp");
    let h = Helios::start(&tmp.path().join("hfs"));
    let (c, brokers) = cluster("vitals", partitions);
    let msgs = simulated(devices, count, seed, 30);
    (tmp, h, c, brokers, msgs)
}

/// Starts a job that runs until stopped; its log (retries while a server is down) goes to
/// `<dir>/job.log`, not the test output.
fn spawn_fhir_job(dir: &Path, job: &Path) -> Running {
    let log = std::fs::File::create(dir.join("job.log")).expect("log");
    Running::spawn(
        vitalflow()
            .args(["run", "--workers", "2", "--job"])
            .arg(job)
            .arg("--output")
            .arg(dir.join("out"))
            .stderr(log),
    )
}

fn run_fhir_job(dir: &Path, job: &Path) -> std::process::Output {
    run_ok(
        vitalflow()
            .args(["run", "--until-end", "--workers", "2", "--job"])
            .arg(job)
            .arg("--output")
            .arg(dir.join("out")),
    )
}

/// Identifier values of the patient and device of an expected (logical-reference)
/// Observation.
fn who(o: &Value) -> (String, String) {
    (
        o["subject"]["identifier"]["value"]
            .as_str()
            .expect("patient")
            .to_string(),
        o["device"]["identifier"]["value"]
            .as_str()
            .expect("device")
            .to_string(),
    )
}

/// The expected Observations as the server holds them: resolved references, and the
/// identifier and id built from the resource ids (`p-{patient}`, `d-{device}`).
fn resolved(
    expected: &BTreeMap<String, Value>,
    devices: &BTreeSet<String>,
    encounters: bool,
) -> BTreeMap<String, Value> {
    expected
        .values()
        .filter(|o| devices.contains(&who(o).1))
        .map(|o| {
            let (patient, device) = who(o);
            let mut o = o.clone();
            let ident = o["identifier"][0]["value"]
                .as_str()
                .expect("identifier")
                .to_string();
            let ident = ident.replacen(
                &format!("{patient}.{device}."),
                &format!("p-{patient}.d-{device}."),
                1,
            );
            o["identifier"][0]["value"] = ident.clone().into();
            let id = observation_id(&ident);
            o["id"] = id.clone().into();
            o["subject"] = json!({"reference": format!("Patient/p-{patient}")});
            o["device"] = json!({"reference": format!("Device/d-{device}")});
            let encounter = o["encounter"]["identifier"]["value"]
                .as_str()
                .map(str::to_string);
            let object = o.as_object_mut().expect("object");
            match encounter.filter(|_| encounters) {
                Some(e) => {
                    object.insert(
                        "encounter".into(),
                        json!({"reference": format!("Encounter/e-{e}")}),
                    );
                }
                None => {
                    object.remove("encounter");
                }
            }
            (id, o)
        })
        .collect()
}

/// The server's Observations by id, without `meta` (the server's) and `status`.
fn stored(h: &Helios) -> BTreeMap<String, Value> {
    let v = schema();
    h.all("Observation")
        .into_iter()
        .map(|mut o| {
            assert_valid(&v, &o);
            o.as_object_mut().expect("object").remove("meta");
            o
        })
        .collect::<Vec<_>>()
        .pipe(|l| latest(&l))
}

trait Pipe: Sized {
    fn pipe<T>(self, f: impl FnOnce(Self) -> T) -> T {
        f(self)
    }
}
impl<T> Pipe for T {}

fn patients_by_device(msgs: &[SimMessage]) -> BTreeMap<String, String> {
    msgs.iter()
        .map(|m| {
            let v: Value = serde_json::from_slice(&m.payload).expect("json");
            (
                v["deviceId"].as_str().expect("device").to_string(),
                v["patientId"].as_str().expect("patient").to_string(),
            )
        })
        .collect()
}

fn dead_letter_files(out: &Path) -> Vec<Value> {
    let dir = out.join("fhir/dead-letters");
    vitalflow::sinks::files::committed_parts(&dir)
        .iter()
        .flat_map(|p| {
            std::fs::read_to_string(p)
                .expect("read")
                .lines()
                .map(|l| serde_json::from_str::<Value>(l).expect("json"))
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn lookup_links_observations_to_registered_devices_and_dead_letters_the_rest() {
    let (tmp, h, _c, brokers, msgs) = setup(4, 6, 360, 11);
    let patients = patients_by_device(&msgs);
    let devices: Vec<&String> = patients.keys().collect();
    // Four devices registered; one unknown to the server; one registered with no patient.
    let registered: BTreeSet<String> = devices[..4].iter().map(|d| d.to_string()).collect();
    for d in &registered {
        h.register(&patients[d], d);
    }
    let unknown = devices[4].clone();
    let orphan = devices[5].clone();
    h.put(&json!({"resourceType": "Device", "id": "orphan", "identifier": [{"value": orphan}]}));
    produce_sim(&producer(&brokers), "vitals", &msgs);

    let job = fhir_job(
        tmp.path(),
        &brokers,
        "g1",
        &h.url(),
        "identity = \"Lookup\"",
    );
    run_fhir_job(tmp.path(), &job);

    let want = resolved(&expected(&msgs), &registered, false);
    assert_same(&stored(&h), &want, "Observations on the server");
    let committed = committed(&brokers, "g1", "vitals", 4);
    assert_eq!(
        committed,
        high_watermarks(&brokers, "vitals", 4),
        "offsets committed to the end"
    );

    let dead = dead_letter_files(&tmp.path().join("out"));
    let reasons: BTreeSet<(String, String)> = dead
        .iter()
        .map(|d| {
            let p: Value =
                serde_json::from_str(d["payload"].as_str().expect("payload")).expect("group");
            (
                p["deviceId"].as_str().expect("device").to_string(),
                d["error"].as_str().expect("error").to_string(),
            )
        })
        .collect();
    assert!(
        reasons
            .iter()
            .any(|(d, e)| *d == unknown && e.contains("no Device with identifier")),
        "unknown device dead-lettered with the reason: {reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|(d, e)| *d == orphan && e.contains("linked to no Patient")),
        "device without a patient dead-lettered with the reason: {reasons:?}"
    );
    assert!(
        reasons.iter().all(|(d, _)| *d == unknown || *d == orphan),
        "only the two unlinkable devices: {reasons:?}"
    );
    assert!(
        dead.iter().all(|d| d["stage"] == "identity"),
        "stage identity"
    );
}

#[test]
fn lookup_with_encounter_links_encounters_by_identifier() {
    let (tmp, h, _c, brokers, msgs) = setup(2, 3, 180, 14);
    let mut encounters = BTreeMap::new();
    for m in &msgs {
        let v: Value = serde_json::from_slice(&m.payload).expect("json");
        encounters.insert(
            v["deviceId"].as_str().expect("device").to_string(),
            v["encounterId"].as_str().expect("encounter").to_string(),
        );
    }
    let patients = patients_by_device(&msgs);
    let devices: Vec<&String> = patients.keys().collect();
    for d in &devices {
        h.register(&patients[*d], d);
    }
    // The last device's encounter is unknown to the server.
    for d in &devices[..2] {
        let e = &encounters[*d];
        h.put(&json!({"resourceType": "Encounter", "id": format!("e-{e}"), "status": "in-progress",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
            "identifier": [{"value": e}], "subject": {"reference": format!("Patient/p-{}", patients[*d])}}));
    }
    produce_sim(&producer(&brokers), "vitals", &msgs);
    let job = fhir_job(
        tmp.path(),
        &brokers,
        "g1",
        &h.url(),
        "identity = \"LookupWithEncounter\"",
    );
    run_fhir_job(tmp.path(), &job);

    let linked: BTreeSet<String> = devices[..2].iter().map(|d| d.to_string()).collect();
    assert_same(
        &stored(&h),
        &resolved(&expected(&msgs), &linked, true),
        "Observations with encounters",
    );
    let dead = dead_letter_files(&tmp.path().join("out"));
    assert!(!dead.is_empty());
    let want = format!(
        "no Encounter with identifier \"{}\"",
        encounters[devices[2]]
    );
    assert!(
        dead.iter()
            .all(|d| d["error"].as_str() == Some(want.as_str())),
        "{dead:?}"
    );
}

#[test]
fn create_makes_each_patient_and_device_once_and_a_rerun_changes_nothing() {
    let (tmp, h, _c, brokers, msgs) = setup(4, 5, 300, 12);
    produce_sim(&producer(&brokers), "vitals", &msgs);
    let job = fhir_job(
        tmp.path(),
        &brokers,
        "g1",
        &h.url(),
        "identity = \"Create\"",
    );
    run_fhir_job(tmp.path(), &job);

    let v = schema();
    let patients = h.all("Patient");
    let devices = h.all("Device");
    for r in patients.iter().chain(&devices) {
        assert_valid(&v, r);
    }
    let by_device = patients_by_device(&msgs);
    assert_eq!(
        patients.len(),
        by_device.len(),
        "one Patient per patient identifier"
    );
    assert_eq!(
        devices.len(),
        by_device.len(),
        "one Device per device identifier"
    );
    let patient_ids: BTreeMap<String, String> = patients
        .iter()
        .map(|p| {
            (
                p["identifier"][0]["value"]
                    .as_str()
                    .expect("id")
                    .to_string(),
                p["id"].as_str().expect("id").to_string(),
            )
        })
        .collect();
    let mut linked = BTreeMap::new();
    for d in &devices {
        let ident = d["identifier"][0]["value"]
            .as_str()
            .expect("identifier")
            .to_string();
        let patient = &patient_ids[&by_device[&ident]];
        assert_eq!(
            d["patient"]["reference"],
            format!("Patient/{patient}"),
            "{ident} linked"
        );
        linked.insert(
            ident,
            (patient.clone(), d["id"].as_str().expect("id").to_string()),
        );
    }
    let observations = h.all("Observation");
    let expected_count = expected(&msgs).len();
    assert_eq!(
        observations.len(),
        expected_count,
        "one Observation per window"
    );
    for o in &observations {
        assert_valid(&v, o);
        let device = o["device"]["reference"].as_str().expect("device ref");
        let (patient, _) = linked
            .values()
            .find(|(_, d)| device == format!("Device/{d}"))
            .expect("a created device");
        assert_eq!(o["subject"]["reference"], format!("Patient/{patient}"));
    }
    let versions: BTreeMap<String, Value> = observations
        .iter()
        .map(|o| {
            (
                o["id"].as_str().expect("id").to_string(),
                o["meta"]["versionId"].clone(),
            )
        })
        .collect();

    // A second job (another consumer group) replays everything: nothing new, nothing changed.
    let job = fhir_job(
        tmp.path(),
        &brokers,
        "g2",
        &h.url(),
        "identity = \"Create\"",
    );
    run_fhir_job(tmp.path(), &job);
    assert_eq!(
        h.all("Patient").len(),
        by_device.len(),
        "no Patient created twice"
    );
    assert_eq!(
        h.all("Device").len(),
        by_device.len(),
        "no Device created twice"
    );
    let again: BTreeMap<String, Value> = h
        .all("Observation")
        .iter()
        .map(|o| {
            (
                o["id"].as_str().expect("id").to_string(),
                o["meta"]["versionId"].clone(),
            )
        })
        .collect();
    assert_eq!(
        again, versions,
        "a replay merges to the same Observations and writes none"
    );
}

#[test]
fn a_fhir_server_outage_mid_stream_loses_nothing() {
    let tmp = tempfile::tempdir().expect("tmp");
    let hdir = tmp.path().join("hfs");
    let mut h = Helios::start(&hdir);
    let port = h.port;
    let (_c, brokers) = cluster("vitals", 2);
    let msgs = simulated(4, 480, 13, 30);
    let patients = patients_by_device(&msgs);
    for (d, p) in &patients {
        h.register(p, d);
    }
    let metrics = format!("127.0.0.1:{}", free_port());
    let job = fhir_job(
        tmp.path(),
        &brokers,
        "g1",
        &h.url(),
        &format!("identity = \"Lookup\"\nmax_retries = 1\n\n[metrics]\naddress = \"{metrics}\""),
    );
    let mut running = spawn_fhir_job(tmp.path(), &job);
    let p = producer(&brokers);
    let (first, rest) = msgs.split_at(msgs.len() / 3);
    produce_sim(&p, "vitals", first);
    wait_until(
        Duration::from_secs(60),
        "some Observations before the outage",
        || h.all("Observation").len() >= 4,
    );

    h.stop();
    let (second, third) = rest.split_at(rest.len() / 2);
    produce_sim(&p, "vitals", second);
    wait_until(
        Duration::from_secs(20),
        "/health reports the failing sink",
        || matches!(http_get(&metrics, "/health"), Some((503, _))),
    );
    std::thread::sleep(Duration::from_secs(30));
    assert!(
        running
            .0
            .as_mut()
            .expect("child")
            .try_wait()
            .expect("wait")
            .is_none(),
        "the job waits out the outage"
    );
    let h = Helios::start_on(&hdir, port);
    produce_sim(&p, "vitals", third);

    let want = resolved(&expected(&msgs), &patients.keys().cloned().collect(), false);
    wait_until(Duration::from_secs(90), "the job catches up", || {
        committed(&brokers, "g1", "vitals", 2) == high_watermarks(&brokers, "vitals", 2)
            && matches!(http_get(&metrics, "/health"), Some((200, _)))
    });
    running.terminate();
    assert!(running.wait().success(), "clean stop");
    assert_same(
        &stored(&h),
        &want,
        "Observations after the outage equal a run without one",
    );
}

fn wait_until(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn the_schema_check_refuses_what_the_server_would_accept() {
    let v = schema();
    let ok = json!({"resourceType": "Observation", "status": "final", "code": {"text": "hr"}});
    common::fhir_server::assert_valid(&v, &ok);
    let bad = json!({"resourceType": "Observation", "status": "bogus", "code": {"text": "hr"}});
    let errors = common::fhir_server::schema_errors(&v, &bad);
    assert!(
        errors.iter().any(|e| e.contains("/status")),
        "an unknown status code is invalid R4: {errors:?}"
    );
}

#[test]
fn kill_9_and_restart_merge_into_what_the_server_holds() {
    let (tmp, h, _c, brokers, msgs) = setup(2, 4, 480, 15);
    let patients = patients_by_device(&msgs);
    for (d, p) in &patients {
        h.register(p, d);
    }
    let job = fhir_job(
        tmp.path(),
        &brokers,
        "g1",
        &h.url(),
        "identity = \"Lookup\"",
    );
    let p = producer(&brokers);
    let (first, rest) = msgs.split_at(msgs.len() / 2);
    produce_sim(&p, "vitals", first);
    let mut running = spawn_fhir_job(tmp.path(), &job);
    wait_until(
        Duration::from_secs(60),
        "Observations before the kill",
        || h.all("Observation").len() >= 4,
    );
    running.kill();
    produce_sim(&p, "vitals", rest);
    // The restart reads what the server holds for each Observation it meets first, and
    // merges the replayed and new values into it.
    run_fhir_job(tmp.path(), &job);
    let want = resolved(&expected(&msgs), &patients.keys().cloned().collect(), false);
    assert_same(&stored(&h), &want, "Observations after kill -9 and restart");
}

#[test]
fn alerts_become_detected_issues_and_news2_scores_observations() {
    let tmp = tempfile::tempdir().expect("tmp");
    let h = Helios::start(&tmp.path().join("hfs"));
    let (_c, brokers) = cluster("vitals", 2);
    let spec =
        std::fs::read_to_string(root().join("datasets/scenarios/hypoxia.toml")).expect("spec");
    let start = chrono::Utc::now() - chrono::Duration::minutes(70);
    let start = vitalflow::time::parse_timestamp(&start.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .expect("time");
    let g = vitalflow::sources::scenario::generate(&spec, "hypoxia", start).expect("scenario");
    produce_sim(&producer(&brokers), "vitals", &g.messages);
    let rules = root().join("templates/alerts/adult-vitals.toml");
    let job = fhir_job(
        tmp.path(),
        &brokers,
        "g1",
        &h.url(),
        &format!(
            "identity = \"Create\"\n\n[anomaly]\nrules = \"{}\"\n",
            rules.display()
        ),
    );
    run_fhir_job(tmp.path(), &job);

    let v = schema();
    let issues = h.all("DetectedIssue");
    let patients = h.all("Patient");
    assert!(!issues.is_empty(), "alerts written to FHIR");
    for i in &issues {
        assert_valid(&v, i);
        let p = i["patient"]["reference"]
            .as_str()
            .expect("patient")
            .trim_start_matches("Patient/");
        assert!(
            patients.iter().any(|x| x["id"] == p),
            "linked to a Patient the job created"
        );
    }
    let hypoxia: Vec<&Value> = issues
        .iter()
        .filter(|i| i["code"]["coding"][0]["code"] == "hypoxia")
        .collect();
    assert_eq!(
        hypoxia.len(),
        g.events.len(),
        "one DetectedIssue per episode: {hypoxia:#?}"
    );
    for i in &hypoxia {
        assert_eq!(i["status"], "final", "each episode resolved: {i}");
        assert_eq!(i["severity"], "high", "SpO2 83 is critical");
    }
    let news2: Vec<Value> = h
        .all("Observation")
        .into_iter()
        .filter(|o| o["code"]["coding"][0]["code"] == "1104051000000101")
        .collect();
    assert!(!news2.is_empty(), "NEWS2 scores written");
    for o in &news2 {
        assert_valid(&v, o);
    }
    assert!(
        news2
            .iter()
            .any(|o| o["valueInteger"].as_i64().is_some_and(|s| s >= 3)),
        "the score that raised the NEWS2 alert (SpO2 scores 3): {news2:#?}"
    );
}

/// What `vitalflow normalize --format json` says of one message: its `devices`.
fn device_resources(dir: &Path, name: &str, payload: &[u8]) -> Vec<Value> {
    let file = dir.join(name);
    std::fs::write(&file, payload).expect("message");
    let out = run_ok(
        vitalflow()
            .args(["normalize", "--format", "json", "--device"])
            .arg(root().join("templates/ihe-pcd01/devicecontent.json"))
            .arg(&file),
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("report");
    report["devices"].as_array().cloned().unwrap_or_default()
}

#[test]
fn a_pcd01_device_tree_becomes_devices_and_metrics_the_server_stores_linked() {
    use vitalflow::config::SimulatorConfig;
    use vitalflow::sources::simulator::Simulator;
    let tmp = tempfile::tempdir().expect("tmp");
    let h = Helios::start(&tmp.path().join("hfs"));
    let schema = schema();
    // Three monitors for five minutes: monitor 0 has its software updated mid-run, monitor
    // 1 its NIBP channel calibrated.
    let cfg = SimulatorConfig {
        devices: 3,
        count: Some(3 * 301),
        profile: "ihe-pcd01".into(),
        ..SimulatorConfig::default()
    };
    let start = vitalflow::time::parse_timestamp("2026-12-05T10:00:00Z").expect("time");
    let msgs: Vec<SimMessage> = Simulator::new(&cfg, start, (0, 1)).collect();
    let at = |device: usize, second: i64| {
        let key = format!("0012A3FFFE{device:06X}");
        msgs.iter()
            .find(|m| m.key == key && m.event_time == start + chrono::Duration::seconds(second))
            .expect("message")
            .payload
            .clone()
    };
    let before = device_resources(tmp.path(), "m0-0.hl7", &at(0, 0));
    let kinds = |r: &[Value], t: &str| r.iter().filter(|v| v["resourceType"] == t).count();
    // MDS, five VMDs (one implied) and their channels; a metric per vital value.
    assert_eq!(
        (kinds(&before, "Device"), kinds(&before, "DeviceMetric")),
        (11, 7)
    );
    for r in &before {
        assert_valid(&schema, r);
        h.put(r);
    }
    // Every parent and source resolves on the server.
    for r in &before {
        for link in ["parent", "source"] {
            if let Some(reference) = r[link]["reference"].as_str() {
                let (status, body) = h.get(reference).expect("GET");
                assert_eq!(status, 200, "{reference} ({link} of {})", r["id"]);
                assert_eq!(body["resourceType"], "Device");
            }
        }
    }
    let mds = &before[0];
    assert_eq!(mds["identifier"][0]["value"], "0012A3FFFE000000");
    assert_eq!(mds["version"][0]["value"], "2.4.1");
    assert_eq!(mds["location"]["display"], "WARD / 1 / A");
    // After the software update: the same resources, ids and all, but the MDS's version.
    let after = device_resources(tmp.path(), "m0-300.hl7", &at(0, 300));
    assert_eq!(after.len(), before.len());
    let changed: Vec<&Value> = after.iter().filter(|r| !before.contains(r)).collect();
    assert_eq!(changed.len(), 1, "only the MDS changes: {changed:?}");
    assert_eq!(changed[0]["id"], mds["id"]);
    assert_eq!(changed[0]["version"][0]["value"], "2.5.0");
    h.put(changed[0]);
    let (_, stored) = h
        .get(&format!("Device/{}", mds["id"].as_str().expect("id")))
        .expect("GET");
    assert_eq!(stored["version"][0]["value"], "2.5.0");
    // After the calibration: only the NIBP systolic metric's calibration time moves.
    let (cal_before, cal_after) = (
        device_resources(tmp.path(), "m1-0.hl7", &at(1, 0)),
        device_resources(tmp.path(), "m1-300.hl7", &at(1, 300)),
    );
    let changed: Vec<&Value> = cal_after
        .iter()
        .filter(|r| !cal_before.contains(r))
        .collect();
    assert_eq!(changed.len(), 1, "only the calibrated metric: {changed:?}");
    assert_eq!(changed[0]["resourceType"], "DeviceMetric");
    assert_eq!(changed[0]["type"]["coding"][0]["code"], "150021");
    assert_eq!(
        changed[0]["calibration"][0]["time"], "2026-12-05T10:02:45Z",
        "monitor 1 is calibrated 165 s in"
    );
    assert_valid(&schema, changed[0]);
}

#[test]
fn a_pcd01_feed_leaves_each_monitor_once_on_the_server_with_its_tree_and_a_rerun_writes_nothing() {
    use vitalflow::config::SimulatorConfig;
    use vitalflow::sources::simulator::Simulator;
    let tmp = tempfile::tempdir().expect("tmp");
    let h = Helios::start(&tmp.path().join("hfs"));
    let (_c, brokers) = cluster("vitals", 3);
    // Three monitors for five minutes: monitor 0's software is updated 120 s in, monitor
    // 1's NIBP channel calibrated 165 s in, monitor 2's SpO2 sensor off from 200 s to 260 s.
    let cfg = SimulatorConfig {
        devices: 3,
        count: Some(3 * 301),
        profile: "ihe-pcd01".into(),
        ..SimulatorConfig::default()
    };
    let start = chrono::Utc::now() - chrono::Duration::minutes(30);
    let start = vitalflow::time::parse_timestamp(&start.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .expect("time");
    let msgs: Vec<SimMessage> = Simulator::new(&cfg, start, (0, 1)).collect();
    produce_sim(&producer(&brokers), "vitals", &msgs);
    let pcd01 = |group: &str| {
        let job = fhir_job(
            tmp.path(),
            &brokers,
            group,
            &h.url(),
            "identity = \"Create\"",
        );
        use_pcd01_templates(&job);
        job
    };
    run_fhir_job(tmp.path(), &pcd01("g1"));
    let v = schema();
    let devices = h.all("Device");
    let metrics = h.all("DeviceMetric");
    for r in devices.iter().chain(&metrics) {
        assert_valid(&v, r);
    }
    // One monitor Device per EUI-64 (identity's and the tree's are the same resource), its
    // VMDs and channels beside it, and a DeviceMetric per metric.
    assert_eq!(devices.len(), 3 * 11, "Devices");
    assert_eq!(metrics.len(), 3 * 7, "DeviceMetrics");
    let observations = h.all("Observation");
    assert!(!observations.is_empty());
    for n in 0..3 {
        let eui = format!("0012A3FFFE{n:06X}");
        let mine: Vec<&Value> = devices
            .iter()
            .filter(|d| d["identifier"][0]["value"] == eui.as_str())
            .collect();
        assert_eq!(mine.len(), 1, "{eui}: one monitor Device");
        let mds = mine[0];
        let id = mds["id"].as_str().expect("id");
        assert_eq!(mds["manufacturer"], "VitalFlow Simulated Devices");
        assert!(
            mds["patient"]["reference"]
                .as_str()
                .is_some_and(|p| p.starts_with("Patient/")),
            "{eui}: linked to its patient: {mds}"
        );
        let sw = if n == 0 { "2.5.0" } else { "2.4.1" };
        assert_eq!(mds["version"][0]["value"], sw, "{eui}");
        // Its Observations point at it, and so do its DeviceMetrics.
        let reference = format!("Device/{id}");
        assert!(
            observations
                .iter()
                .filter(|o| o["device"]["reference"] == reference.as_str())
                .count()
                > 0
        );
        let its: Vec<&Value> = metrics
            .iter()
            .filter(|m| m["source"]["reference"] == reference.as_str())
            .collect();
        assert_eq!(its.len(), 7, "{eui}: its DeviceMetrics");
        for m in &its {
            let (status, _) = h
                .get(m["parent"]["reference"].as_str().expect("parent"))
                .expect("GET");
            assert_eq!(status, 200, "{eui}: the parent of {}", m["id"]);
        }
        if n == 1 {
            let nibp = its
                .iter()
                .find(|m| m["type"]["coding"][0]["code"] == "150021")
                .expect("NIBP systolic");
            let cal = (start + chrono::Duration::seconds(165))
                .format("%Y-%m-%dT%H:%M:%SZ")
                .to_string();
            assert_eq!(nibp["calibration"][0]["time"], cal.as_str(), "{nibp}");
        }
        if n == 2 {
            let spo2 = its
                .iter()
                .find(|m| m["type"]["coding"][0]["code"] == "150456")
                .expect("SpO2");
            assert_eq!(spo2["operationalStatus"], "on", "back on at 260 s");
        }
    }
    // A second job over the same input (another consumer group): no Device, DeviceMetric
    // or version more.
    let version_ids = |h: &Helios, kind: &str| -> BTreeMap<String, String> {
        h.all(kind)
            .iter()
            .map(|r| {
                (
                    r["id"].as_str().unwrap_or("").to_string(),
                    r["meta"]["versionId"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    };
    let before = (version_ids(&h, "Device"), version_ids(&h, "DeviceMetric"));
    run_fhir_job(tmp.path(), &pcd01("g2"));
    let after = (version_ids(&h, "Device"), version_ids(&h, "DeviceMetric"));
    assert_eq!(after, before, "a rerun writes no device version");
}

#[test]
fn writers_racing_to_create_one_patient_and_device_meet_on_one_resource() {
    // Identity `Create` and the device-versions output create the same Patient and Device at
    // once, as does a killed job with its restart: each identifier must end as one resource.
    use std::sync::{Arc, Barrier};
    use vitalflow::config::FhirSinkConfig;
    use vitalflow::fhir::client::FhirClient;
    use vitalflow::fhir::identity::ensure;
    let dir = tempfile::tempdir().expect("tmp");
    let h = Helios::start(dir.path());
    let cfg = FhirSinkConfig::new(&h.url());
    const WRITERS: usize = 6;
    const IDENTIFIERS: usize = 25;
    let barrier = Arc::new(Barrier::new(WRITERS));
    // A writer that fails goes on, so that none is left waiting at the barrier.
    let ensure_pair = |client: &FhirClient, i: usize| -> Result<(String, String), String> {
        let p = format!("RACE-P-{i}");
        let patient = ensure(
            client,
            "Patient",
            None,
            &p,
            json!({"resourceType": "Patient", "identifier": [{"value": p}]}),
        )
        .map_err(|e| e.to_string())??;
        let pid = patient["id"]
            .as_str()
            .ok_or("Patient without id")?
            .to_string();
        let d = format!("RACE-D-{i}");
        let device = ensure(
            client,
            "Device",
            Some("urn:race"),
            &d,
            json!({"resourceType": "Device", "identifier": [{"system": "urn:race", "value": d}], "patient": {"reference": format!("Patient/{pid}")}}),
        )
        .map_err(|e| e.to_string())??;
        Ok((
            pid,
            device["id"]
                .as_str()
                .ok_or("Device without id")?
                .to_string(),
        ))
    };
    let ids: Vec<Vec<Result<(String, String), String>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..WRITERS)
            .map(|_| {
                let (cfg, barrier, ensure_pair) = (cfg.clone(), barrier.clone(), &ensure_pair);
                s.spawn(move || {
                    let client =
                        FhirClient::new(&cfg, vitalflow::metrics::Metrics::new()).expect("client");
                    (0..IDENTIFIERS)
                        .map(|i| {
                            barrier.wait();
                            ensure_pair(&client, i)
                        })
                        .collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("writer"))
            .collect()
    });
    for i in 0..IDENTIFIERS {
        let answers: BTreeSet<&Result<(String, String), String>> =
            ids.iter().map(|w| &w[i]).collect();
        assert_eq!(
            answers.len(),
            1,
            "identifier {i}: writers were given {answers:?}"
        );
    }
    let count = |t: &str, prefix: &str| {
        let mut by: BTreeMap<String, usize> = BTreeMap::new();
        for r in h.all(t) {
            let v = r["identifier"][0]["value"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            if v.starts_with(prefix) {
                *by.entry(v).or_default() += 1;
            }
        }
        by
    };
    let patients = count("Patient", "RACE-P-");
    let devices = count("Device", "RACE-D-");
    assert_eq!(patients.len(), IDENTIFIERS);
    assert_eq!(devices.len(), IDENTIFIERS);
    assert!(
        patients.values().all(|&n| n == 1),
        "duplicate Patients: {patients:?}"
    );
    assert!(
        devices.values().all(|&n| n == 1),
        "duplicate Devices: {devices:?}"
    );

    // The id a creation would take, held by a resource with another identifier: not
    // overwritten, and the refusal says why.
    let taken = vitalflow::fhir::device::resource_id("Patient", "RACE-TAKEN");
    h.put(
        &json!({"resourceType": "Patient", "id": taken, "identifier": [{"value": "SOMEONE-ELSE"}]}),
    );
    let client = FhirClient::new(&cfg, vitalflow::metrics::Metrics::new()).expect("client");
    let refused = ensure(
        &client,
        "Patient",
        None,
        "RACE-TAKEN",
        json!({"resourceType": "Patient", "identifier": [{"value": "RACE-TAKEN"}]}),
    )
    .expect("transport");
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.contains("exists with another identifier")),
        "{refused:?}"
    );
    let (_, held) = h.get(&format!("Patient/{taken}")).expect("read");
    assert_eq!(held["identifier"][0]["value"], "SOMEONE-ELSE");
}
