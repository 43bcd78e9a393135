//! The `validate` and `normalize` commands as a user runs them: exit codes and JSON output.

use serde_json::Value;
use std::io::Write;
use std::process::{Command, Stdio};

fn vitalflow(args: &[&str], stdin: Option<&str>) -> (i32, Value, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_vitalflow"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run vitalflow");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let json = serde_json::from_str(stdout.trim()).unwrap_or(Value::Null);
    (
        out.status.code().unwrap_or(-1),
        json,
        stdout + &String::from_utf8_lossy(&out.stderr),
    )
}

const SETS: &[&str] = &["basic", "iot-hub", "calculated", "bedside-monitor"];

#[test]
fn every_template_set_validates() {
    for set in SETS {
        let d = format!("templates/{set}/devicecontent.json");
        let f = format!("templates/{set}/fhirmapping.json");
        let (code, json, all) = vitalflow(
            &["validate", "--device", &d, "--fhir", &f, "--format", "json"],
            None,
        );
        assert_eq!(code, 0, "{set}: {all}");
        assert_eq!(json["valid"], true, "{set}: {all}");
        assert_eq!(
            json["warnings"],
            serde_json::json!([]),
            "{set}: every device type has a FHIR template"
        );
    }
}

#[test]
fn validate_reports_every_problem_with_file_line_and_template() {
    let dir = std::env::temp_dir().join(format!("vf-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("devicecontent.json");
    std::fs::write(
        &bad,
        "{\n  \"templateType\": \"CollectionContent\",\n  \"template\": [\n    {\n      \"templateType\": \"JsonPathContent\",\n      \"template\": {\n        \"typeName\": \"hr\",\n        \"typeMatchExpression\": \"$..[?(@hr)]\",\n        \"deviceIdExpression\": \"$.a[?(@.b ==\",\n        \"timestampExpression\": \"$.t\",\n        \"valuesx\": []\n      }\n    }\n  ]\n}\n",
    )
    .unwrap();
    let (code, json, all) = vitalflow(
        &[
            "validate",
            "--device",
            bad.to_str().unwrap(),
            "--format",
            "json",
        ],
        None,
    );
    assert_eq!(code, 1, "{all}");
    let errors = json["error"]["errors"].as_array().expect("errors listed");
    assert_eq!(json["error"]["kind"], "template");
    assert_eq!(errors.len(), 2, "{errors:?}");
    let expr = errors
        .iter()
        .find(|e| e["pointer"] == "/template/0/template/deviceIdExpression")
        .expect("bad JSONPath reported");
    assert_eq!(expr["line"], 9);
    assert_eq!(expr["template_index"], 0);
    assert_eq!(expr["template_type"], "JsonPathContent");
    assert!(
        expr["reason"]
            .as_str()
            .unwrap()
            .contains("invalid JSONPath"),
        "{expr}"
    );
    let unknown = errors
        .iter()
        .find(|e| e["pointer"] == "/template/0/template/valuesx")
        .expect("unknown member reported");
    assert_eq!(unknown["line"], 11);
    assert!(
        json["error"]["reason"]
            .as_str()
            .unwrap()
            .contains("devicecontent.json:"),
        "{json}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn normalize_wraps_payload_and_prints_observations() {
    let (code, json, all) = vitalflow(
        &[
            "normalize",
            "--device",
            "templates/bedside-monitor/devicecontent.json",
            "--fhir",
            "templates/bedside-monitor/fhirmapping.json",
            "--format",
            "json",
            "datasets/bedside-monitor/reading.json",
        ],
        None,
    );
    assert_eq!(code, 0, "{all}");
    let m = json["measurements"].as_array().unwrap();
    assert_eq!(m.len(), 7);
    assert_eq!(m[0]["type"], "heartRate");
    assert_eq!(
        m[0]["properties"],
        serde_json::json!([{"name": "hr", "value": "72"}])
    );
    assert_eq!(
        m[3]["properties"][2],
        serde_json::json!({"name": "mean", "value": "90"})
    );
    let obs = json["observations"].as_array().unwrap();
    assert_eq!(obs.len(), 7);
    assert_eq!(
        obs[0]["identifier"][0]["value"],
        "P-0001.BM-0001.heartRate.20261121100000Z.20261121105959Z"
    );
    assert_eq!(obs[0]["subject"]["identifier"]["value"], "P-0001");
    assert_eq!(obs[3]["component"][0]["valueQuantity"]["value"], 118);
}

#[test]
fn normalize_takes_properties_and_stdin() {
    // An IotJsonPathContent template reads the device id and time from the wrapper.
    let (code, json, all) = vitalflow(
        &[
            "normalize",
            "--device",
            "templates/iot-hub/devicecontent.json",
            "--format",
            "json",
            "--system-property",
            "iothub-connection-device-id=dev-9",
            "--property",
            "iothub-creation-time-utc=2026-11-21T10:00:00Z",
            "-",
        ],
        Some(r#"{"heartRate": 61, "patientId": "p-9"}"#),
    );
    assert_eq!(code, 0, "{all}");
    assert_eq!(json["measurements"][0]["deviceId"], "dev-9");
    assert_eq!(
        json["measurements"][0]["occurrenceTimeUtc"],
        "2026-11-21T10:00:00Z"
    );
}

#[test]
fn normalize_reads_hl7_v2_pcd01_messages_framed_or_not() {
    let pcd01 = [
        "normalize",
        "--device",
        "templates/ihe-pcd01/devicecontent.json",
        "--fhir",
        "templates/ihe-pcd01/fhirmapping.json",
        "--format",
        "json",
    ];
    let (code, json, all) = vitalflow(
        &[&pcd01[..], &["datasets/ihe-pcd01/oru-r01.hl7"]].concat(),
        None,
    );
    assert_eq!(code, 0, "{all}");
    assert_eq!(
        json["measurements"].as_array().map(Vec::len),
        Some(6),
        "{all}"
    );
    assert_eq!(
        json["observations"][4]["code"]["coding"][0]["code"],
        "85354-9"
    );
    // The device tree: the MDS with its identification rows, then VMDs, channels, metrics.
    let devices = json["devices"].as_array().expect("devices");
    assert_eq!(devices[0]["resourceType"], "Device");
    assert_eq!(devices[0]["identifier"][0]["value"], "0012A3FFFE4B5C6D");
    assert_eq!(devices[0]["manufacturer"], "Example Medical Systems");
    assert_eq!(devices[0]["version"][0]["value"], "3.2.1");
    assert_eq!(devices[0]["location"]["display"], "ICU / Bed 4 / 1");
    let metrics: Vec<&str> = devices
        .iter()
        .filter(|d| d["resourceType"] == "DeviceMetric")
        .map(|d| d["type"]["coding"][0]["code"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        metrics,
        [
            "150456", "149530", "147842", "151562", "150021", "150022", "150023", "150364",
            "150344"
        ]
    );
    // As a gateway sends it: MLLP framing, CR between segments.
    let text = std::fs::read_to_string("datasets/ihe-pcd01/oru-r01.hl7").expect("example");
    let framed = format!("\x0b{}\x1c\r", text.trim_end().replace('\n', "\r"));
    let (code, framed_json, all) = vitalflow(&[&pcd01[..], &["-"]].concat(), Some(&framed));
    assert_eq!(code, 0, "{all}");
    assert_eq!(framed_json, json);
    let (code, json, all) = vitalflow(
        &[&pcd01[..], &["-"]].concat(),
        Some("MSH|^~\\&|GW\rOBX|1|NM|150456^^MDC||97|||||R|||2026-11-21"),
    );
    assert_eq!(code, 1, "{all}");
    assert_eq!(
        json["error"]["template"]["field"],
        "OBX #1 (segment 2), OBX-14"
    );
}

#[test]
fn normalize_failure_names_template_and_reason() {
    let (code, json, all) = vitalflow(
        &[
            "normalize",
            "--device",
            "templates/basic/devicecontent.json",
            "--format",
            "json",
            "--event",
            "-",
        ],
        Some(r#"{"heartRate": "70", "endDate": "2026-11-21T10:00:00Z"}"#),
    );
    assert_eq!(code, 1, "{all}");
    assert_eq!(json["error"]["kind"], "message");
    assert_eq!(json["error"]["template"]["typeName"], "heartrate");
    assert_eq!(json["error"]["template"]["field"], "deviceIdExpression");
    let (code, json, _) = vitalflow(
        &[
            "normalize",
            "--device",
            "templates/basic/devicecontent.json",
            "--format",
            "json",
            "-",
        ],
        Some("{not json"),
    );
    assert_eq!(code, 1);
    assert!(
        json["error"]["reason"]
            .as_str()
            .unwrap()
            .contains("invalid JSON at line 1"),
        "{json}"
    );
}

#[test]
fn simulate_is_reproducible_and_maps_with_the_templates() {
    let run = |seed: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_vitalflow"))
            .args([
                "simulate",
                "--devices",
                "3",
                "--count",
                "90",
                "--seed",
                seed,
            ])
            .args([
                "--start",
                "2026-11-21T08:00:00Z",
                "--late-burst",
                "10s",
                "--out-of-order",
                "0.1",
            ])
            .output()
            .expect("run");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8")
    };
    let a = run("4");
    assert_eq!(a, run("4"), "same seed, same messages");
    assert_ne!(a, run("5"));
    assert_eq!(a.lines().count(), 90);
    let first: serde_json::Value =
        serde_json::from_str(a.lines().next().expect("a line")).expect("JSON");
    assert_eq!(first["timestamp"], "2026-11-21T08:00:00Z");
    assert_eq!(first["deviceId"], "BM-0000");

    let out = Command::new(env!("CARGO_BIN_EXE_vitalflow"))
        .args([
            "simulate",
            "--profile",
            "wearable",
            "--devices",
            "2",
            "--count",
            "4",
            "--start",
            "2026-11-21T08:00:00Z",
        ])
        .output()
        .expect("run");
    let line = String::from_utf8(out.stdout).expect("utf-8");
    let first = line.lines().next().expect("a line").to_string();
    let dir = tempfile::tempdir().expect("tmp");
    let msg = dir.path().join("w.json");
    std::fs::write(&msg, first).expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_vitalflow"))
        .args([
            "normalize",
            "--format",
            "json",
            "--device",
            "templates/basic/devicecontent.json",
        ])
        .arg(&msg)
        .output()
        .expect("run");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let types: Vec<&str> = v["measurements"]
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|m| m["type"].as_str())
        .collect();
    assert_eq!(
        types,
        vec!["heartrate", "steps"],
        "wearable messages map with templates/basic"
    );
}

#[test]
fn simulate_rejects_bad_options() {
    let out = Command::new(env!("CARGO_BIN_EXE_vitalflow"))
        .args(["simulate", "--profile", "pager", "--count", "1"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("unknown profile \"pager\"; one of: bedside-monitor, wearable"));
}

/// The peer bench drains one input with every contender and reports each: it asserts the
/// report and what each contender wrote, never timings.
#[test]
fn bench_peer_runs_every_contender_on_the_same_input() {
    let dir = tempfile::tempdir().expect("tmp");
    let out = Command::new(env!("CARGO_BIN_EXE_vitalflow"))
        .current_dir(dir.path())
        .args(["bench", "peer", "--messages", "3000", "--devices", "30"])
        .args(["--format", "json", "--out", "peer"])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    let rows = v["contenders"].as_array().expect("contenders");
    let get = |name: &str| {
        rows.iter()
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("{name} in {v}"))
    };
    for r in rows {
        assert!(r["msgs_per_s"].as_f64().is_some_and(|x| x > 0.0), "{r}");
        assert!(r["cpu_s"].as_f64().is_some_and(|x| x > 0.0), "{r}");
        assert!(r["peak_rss_mib"].as_f64().is_some_and(|x| x > 1.0), "{r}");
    }
    let bytes = |name: &str| get(name)["bytes_written"].as_u64().expect("bytes");
    assert!(
        bytes("loop-aggregates") > bytes("loop-alerts"),
        "every aggregate update is written"
    );
    assert!(
        bytes("vitalflow") > 100 * bytes("vitalflow-alerts").max(1),
        "only the job with [sinks.ndjson] writes Observations: {v}"
    );
    assert!(dir.path().join("peer/vitalflow/out/observations").is_dir());
    assert!(!dir
        .path()
        .join("peer/vitalflow-alerts/out/observations")
        .exists());
}

/// A smoke run proving the bench harness works; it asserts the report, never timings.
#[test]
fn bench_smoke_run_writes_summary_histograms_and_plot() {
    let dir = tempfile::tempdir().expect("tmp");
    let out = Command::new(env!("CARGO_BIN_EXE_vitalflow"))
        .current_dir(dir.path())
        .args([
            "bench",
            "--rate",
            "200",
            "--duration",
            "2s",
            "--warmup",
            "1s",
            "--workers",
            "2",
        ])
        .args(["--format", "json", "--out", "b"])
        .output()
        .expect("run");
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON summary on stdout");
    let run = &v["runs"][0];
    assert_eq!(run["rate"], 200.0);
    assert!(run["messages"].as_u64().is_some_and(|n| n > 0), "{run}");
    let paths: Vec<&str> = run["paths"]
        .as_array()
        .expect("paths")
        .iter()
        .filter_map(|p| p["path"].as_str())
        .collect();
    assert_eq!(
        paths,
        vec!["normalize", "version", "lake", "durable", "alert", "board"]
    );
    assert!(run["paths"][0]["p99_ms"].as_f64().is_some());
    assert_eq!(
        v["pass"].as_bool(),
        Some(out.status.code() == Some(0)),
        "exit code follows the verdict"
    );
    for f in [
        "summary.json",
        "normalize.hlog",
        "version.hlog",
        "lake.hlog",
        "durable.hlog",
        "latency.svg",
    ] {
        assert!(dir.path().join("b").join(f).is_file(), "{f} written");
    }
    let hlog = std::fs::read_to_string(dir.path().join("b/normalize.hlog")).expect("hlog");
    assert!(
        hlog.lines().any(|l| l.starts_with("Tag=normalize,")),
        "{hlog}"
    );
    let svg = std::fs::read_to_string(dir.path().join("b/latency.svg")).expect("svg");
    assert!(svg.starts_with("<svg") && svg.contains("normalize"));
}

#[test]
fn bench_alerts_scores_scenarios_against_their_ground_truth_and_the_naive_baseline() {
    let tmp = tempfile::tempdir().expect("tmp");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for s in [
        "hypoxia.toml",
        "probe-off.toml",
        "slow-cadence-bleed.toml",
        "ward-gateway.toml",
        "strings-delirium.toml",
        "probe-off-missing.toml",
        "probe-slip.toml",
        "ward-probe-off.toml",
    ] {
        std::fs::copy(root.join("datasets/scenarios").join(s), tmp.path().join(s)).expect("copy");
    }
    let dir = tmp.path().display().to_string();
    let (code, v, err) = vitalflow(
        &["bench", "alerts", "--scenarios", &dir, "--format", "json"],
        None,
    );
    assert_eq!(code, 0, "{err}");
    let by_name = |n: &str| {
        v["scenarios"]
            .as_array()
            .expect("scenarios")
            .iter()
            .find(|s| s["name"] == n)
            .cloned()
            .unwrap_or_else(|| panic!("no {n}: {v}"))
    };
    let hypoxia = by_name("hypoxia");
    assert_eq!(hypoxia["vitalflow"]["events"], 4);
    assert_eq!(hypoxia["vitalflow"]["recall"], 1.0, "{hypoxia}");
    let ttd = hypoxia["vitalflow"]["ttd_median_s"].as_f64().expect("ttd");
    assert!(ttd <= 60.0, "acute hypoxia found within a minute: {ttd}");
    let probe = by_name("probe-off");
    assert_eq!(
        probe["vitalflow"]["alerts"], 0,
        "a probe off is not a patient: {probe}"
    );
    // Scenarios written from physiology: cuff readings 15 minutes apart, six beds in one
    // gateway message, oxygen and consciousness charted as words, sensors whose keys go
    // missing.
    for n in ["slow-cadence-bleed", "ward-gateway", "strings-delirium"] {
        let s = by_name(n);
        assert_eq!(s["vitalflow"]["recall"], 1.0, "{s}");
        assert_eq!(s["vitalflow"]["precision"], 1.0, "{s}");
    }
    let missing = by_name("probe-off-missing");
    assert_eq!(missing["vitalflow"]["alerts"], 0, "{missing}");
    // Lost signals are technical alerts, each labelled loss found, nothing else raised; a
    // slipping probe's falsely low readings open nothing physiological.
    for n in [
        "probe-off",
        "probe-off-missing",
        "probe-slip",
        "ward-probe-off",
    ] {
        let s = by_name(n);
        assert_eq!(s["technical"]["recall"], 1.0, "{s}");
        assert_eq!(s["technical"]["precision"], 1.0, "{s}");
        assert_eq!(s["vitalflow"]["precision"], 1.0, "{s}");
    }
    assert_eq!(by_name("probe-slip")["vitalflow"]["alerts"], 0);
    assert_eq!(by_name("ward-probe-off")["vitalflow"]["recall"], 1.0);
    // No alert comes later than its condition's start plus the longest `sustained` of the
    // shipped rules (tachycardia's 90 s).
    let max = v["total"]["vitalflow"]["max_open_delay_s"]
        .as_f64()
        .expect("max");
    assert!(max <= 90.0, "{max}");
    assert!(
        probe["naive"]["false_per_patient_hour"]
            .as_f64()
            .expect("naive")
            > 10.0,
        "the naive detector alarms on every zero: {probe}"
    );
    assert!(v["total"]["vitalflow"]["precision"].as_f64().is_some());
}

#[test]
fn a_scenario_with_a_syntax_error_is_named_with_its_line() {
    let tmp = tempfile::tempdir().expect("tmp");
    std::fs::write(tmp.path().join("bad.toml"), "name = \"x\"\nduration = \n").expect("write");
    let dir = tmp.path().display().to_string();
    let (code, _, err) = vitalflow(
        &["bench", "alerts", "--scenarios", &dir, "--format", "json"],
        None,
    );
    assert_ne!(code, 0);
    assert!(err.contains("bad.toml:2"), "{err}");
}

#[test]
fn an_mqtt_password_is_refused_over_plain_mqtt_unless_allowed() {
    let out = Command::new(env!("CARGO_BIN_EXE_vitalflow"))
        .args([
            "gateway",
            "mqtt",
            "--broker",
            "mqtt://127.0.0.1:1",
            "--subscribe",
            "devices/{device}/vitals",
            "--brokers",
            "127.0.0.1:1",
            "--topic",
            "vitals",
            "--dead-letter-topic",
            "refused",
            "--username",
            "gw",
        ])
        .env("VITALFLOW_MQTT_PASSWORD", "hunter2")
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("over plain mqtt://") && stderr.contains("--allow-plain-password"),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"), "{stderr}");
}

/// A JSON device mapping whose template names device attributes (`deviceAttributes`).
const JSON_WITH_ATTRIBUTES: &str = r#"{
  "templateType": "CollectionContent",
  "template": [{
    "templateType": "JsonPathContent",
    "template": {
      "typeName": "heartRate",
      "typeMatchExpression": "$..[?(@heartRate)]",
      "deviceIdExpression": "$.deviceId",
      "patientIdExpression": "$.patientId",
      "timestampExpression": "$.timestamp",
      "values": [{ "valueName": "hr", "valueExpression": "$.heartRate", "required": true }],
      "deviceAttributes": {
        "manufacturer": "$.device.make",
        "model": "$.device.model",
        "serialNumber": "$.device.serial",
        "softwareVersion": "$.device.firmware",
        "location": "$.bed"
      }
    }
  }]
}"#;

#[test]
fn a_json_template_naming_device_attributes_gives_the_device_a_pcd01_monitor_gives() {
    let dir = tempfile::tempdir().expect("tmp");
    let mapping = dir.path().join("devicecontent.json");
    std::fs::write(&mapping, JSON_WITH_ATTRIBUTES).expect("mapping");
    let message = r#"{"deviceId": "WB-7", "patientId": "P-7", "timestamp": "2026-12-05T10:00:00Z",
        "heartRate": 71, "bed": "Ward 3 / 12",
        "device": {"make": "Example Wearables", "model": "HB-2", "serial": "SN-77", "firmware": "4.1"}}"#;
    let (code, json, all) = vitalflow(
        &[
            "normalize",
            "--device",
            mapping.to_str().expect("path"),
            "--format",
            "json",
            "-",
        ],
        Some(message),
    );
    assert_eq!(code, 0, "{all}");
    let props = &json["measurements"][0]["properties"];
    assert_eq!(
        props.as_array().map(Vec::len),
        Some(1),
        "device attributes are not readings: {props}"
    );
    let device = &json["devices"][0];
    assert_eq!(device["resourceType"], "Device");
    assert_eq!(device["identifier"][0]["value"], "WB-7");
    assert_eq!(device["manufacturer"], "Example Wearables");
    assert_eq!(device["modelNumber"], "HB-2");
    assert_eq!(device["serialNumber"], "SN-77");
    assert_eq!(device["version"][0]["type"]["coding"][0]["code"], "531975");
    assert_eq!(device["version"][0]["value"], "4.1");
    assert_eq!(device["location"]["display"], "Ward 3 / 12");
    assert_eq!(device["patient"]["identifier"]["value"], "P-7");
    // The same shape as a PCD-01 monitor's Device (which adds its MDC type).
    let (_, pcd01, _) = vitalflow(
        &[
            "normalize",
            "--device",
            "templates/ihe-pcd01/devicecontent.json",
            "--format",
            "json",
            "datasets/ihe-pcd01/oru-r01.hl7",
        ],
        None,
    );
    let keys = |v: &Value| {
        let mut k: Vec<String> = v.as_object().expect("object").keys().cloned().collect();
        k.retain(|k| k != "type");
        k.sort();
        k
    };
    assert_eq!(keys(device), keys(&pcd01["devices"][0]));
    // An attribute the template cannot name: the file, and where in it.
    let bad = JSON_WITH_ATTRIBUTES.replace("\"location\"", "\"colour\"");
    std::fs::write(&mapping, bad).expect("mapping");
    let (code, json, all) = vitalflow(
        &[
            "normalize",
            "--device",
            mapping.to_str().expect("path"),
            "--format",
            "json",
            "-",
        ],
        Some(message),
    );
    assert_ne!(code, 0, "{all}");
    let text = json.to_string();
    assert!(
        text.contains("unknown device attribute \\\"colour\\\"")
            && text.contains("/template/0/template/deviceAttributes/colour"),
        "{text}"
    );
}
