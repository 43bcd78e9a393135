//! The pages in a real browser: Debian's chromium, headless, driven over WebDriver by
//! tests/browser/pages.py (Python selenium, installed by .ci/run), against the `vitalflow`
//! binary. Screenshots land in target/screenshots/ (docs/board.md shows them).

mod common;

use common::{free_port, lake_query, root, vitalflow};
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

fn shots() -> PathBuf {
    root().join("target/screenshots")
}

/// A `vitalflow` process serving pages, stopped (kill -9) when dropped.
struct Served {
    child: Child,
    url: String,
    log: PathBuf,
}

impl Served {
    /// Starts `cmd` (in `dir`) and waits for it to print the pages' URL.
    fn start(mut cmd: Command, dir: &Path, marker: &str) -> Self {
        let log = dir.join(format!("served-{}.log", free_port()));
        let child = cmd
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("vitalflow");
        let mut s = Served {
            child,
            url: String::new(),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let text = std::fs::read_to_string(&s.log).unwrap_or_default();
            if let Some(line) = text.lines().find(|l| l.starts_with(marker)) {
                let url = line[marker.len()..].split_whitespace().next().unwrap_or("");
                s.url = url
                    .trim_end_matches('/')
                    .trim_end_matches("/debugger")
                    .to_string();
                return s;
            }
            if let Ok(Some(status)) = s.child.try_wait() {
                panic!("vitalflow exited ({status}) before serving:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "no \"{marker}\" line within 60 s:\n{}",
            std::fs::read_to_string(&s.log).unwrap_or_default()
        );
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The `vitalflow run` of a job (None: the embedded default) with its board on `port`.
fn job(job: Option<&Path>, port: u16) -> Command {
    let mut c = vitalflow();
    c.arg("run").arg("--no-status");
    if let Some(j) = job {
        c.arg("--job").arg(j);
    }
    c.arg("--board").arg(format!("127.0.0.1:{port}"));
    c
}

/// tests/browser/pages.py, one JSON line per step.
struct Browser {
    child: Child,
    input: ChildStdin,
    output: BufReader<ChildStdout>,
}

impl Browser {
    fn start(what: &str, url: &str, extra: &[&str]) -> Self {
        for (binary, var) in [
            ("/usr/bin/chromium", "VITALFLOW_CHROMIUM"),
            ("/usr/bin/chromedriver", "VITALFLOW_CHROMEDRIVER"),
        ] {
            let path = std::env::var(var).unwrap_or_else(|_| binary.into());
            assert!(
                Path::new(&path).exists(),
                "{path} is missing: .ci/run installs Debian's chromium and chromium-driver"
            );
        }
        let python = std::env::var("VITALFLOW_PYTHON").unwrap_or_else(|_| "python3".into());
        let mut child = Command::new(&python)
            .arg(root().join("tests/browser/pages.py"))
            .arg(what)
            .arg("--url")
            .arg(url)
            .arg("--shots")
            .arg(shots())
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{python}: {e} (.ci/run installs selenium)"));
        Browser {
            input: child.stdin.take().expect("stdin"),
            output: BufReader::new(child.stdout.take().expect("stdout")),
            child,
        }
    }

    /// The next step, which must be `step` and have gone well.
    fn step(&mut self, step: &str) -> Value {
        let mut line = String::new();
        self.output.read_line(&mut line).expect("browser output");
        assert!(
            !line.is_empty(),
            "the browser stopped before step \"{step}\" (see its stderr above)"
        );
        let v: Value = serde_json::from_str(&line).expect("step JSON");
        assert_eq!(v["step"], step, "{v}");
        assert_ne!(v["ok"], false, "step {step} failed: {v}");
        v
    }

    fn tell(&mut self) {
        writeln!(self.input).expect("browser input");
        self.input.flush().expect("flush");
    }
}

impl Drop for Browser {
    /// Asks the script to stop (SIGTERM: it quits its WebDriver session, which stops
    /// chromedriver and chromium), and kills it only if it has not within 10 s. A kill
    /// alone left a chromedriver and its chromium running after every test.
    fn drop(&mut self) {
        // SAFETY: signalling a child this struct owns and has not yet waited for.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls until `f` gives a value, for up to `secs`.
fn eventually<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {secs} s");
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn acknowledgements(out: &Path) -> Vec<Value> {
    common::alert_lines(out)
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|a| a["state"] == "acknowledged")
        .collect()
}

#[test]
fn the_embedded_default_shows_the_acute_patient_and_records_an_acknowledgement() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let mut served = Served::start(job(None, port), dir.path(), "ward board: ");
    let mut b = Browser::start("board", &served.url, &["--patients", "200"]);
    let tiles = b.step("tiles");
    assert!(tiles["count"].as_u64() >= Some(200), "{tiles}");
    let critical = b.step("critical");
    let text = critical["text"].as_str().unwrap_or("");
    assert!(
        text.starts_with("CRITICAL") && text.contains("SpO2 low"),
        "{critical}"
    );
    assert!(critical["seconds"].as_f64() < Some(120.0), "{critical}");
    let acked = b.step("acknowledged");
    // The opening, escalation and acknowledgement reached the page live, not by its poll.
    let live = acked["live_ms"].as_array().map_or(0, Vec::len);
    assert!(live >= 2, "{acked}");
    eprintln!("alert emitted → on the page (ms): {}", acked["live_ms"]);

    // The acknowledgement went through the job: an alert event with who and the note, in the
    // alert files and in the lake's alerts table.
    let out = dir.path().join("vitalflow-out");
    let acks = eventually(30, "the acknowledged event", || {
        Some(acknowledgements(&out)).filter(|a| !a.is_empty())
    });
    assert_eq!(acks.len(), 1, "{acks:?}");
    assert_eq!(acks[0]["by"], "Nurse Ada");
    assert_eq!(acks[0]["note"], "at the bedside");
    assert_eq!(acks[0]["patient"], "P-0000");
    let table = out.join("lake/alerts");
    let rows = eventually(40, "the acknowledgement in the lake", || {
        if !table.join("_delta_log").exists() {
            return None;
        }
        let v = lake_query(
            table.as_os_str(),
            None,
            &["SELECT state, \"by\", note, patient_id FROM t WHERE state = 'acknowledged'"],
        );
        let rows = v["results"][0].as_array().cloned().unwrap_or_default();
        (!rows.is_empty()).then_some(rows)
    });
    assert_eq!(
        rows[0],
        serde_json::json!({"state": "acknowledged", "by": "Nurse Ada", "note": "at the bedside", "patient_id": "P-0000"}),
        "{rows:?}"
    );

    // kill -9 and a restart: the page notices, reconnects by itself and shows the alert.
    b.step("waiting-kill");
    served.kill();
    b.tell();
    b.step("down");
    let _again = Served::start(job(None, port), dir.path(), "ward board: ");
    b.tell();
    b.step("reconnected");
    let again = b.step("critical-again");
    assert!(
        again["text"].as_str().unwrap_or("").contains("SpO2 low"),
        "{again}"
    );
}

#[test]
fn technical_alerts_show_apart_and_the_job_page_reports_the_job() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ward = root().join("tests/browser/ward.toml");
    let served = Served::start(job(Some(&ward), free_port()), dir.path(), "ward board: ");
    let mut b = Browser::start("ward", &served.url, &[]);
    let technical = b.step("technical");
    assert!(
        technical["text"]
            .as_str()
            .unwrap_or("")
            .starts_with("TECHNICAL"),
        "{technical}"
    );
    assert_eq!(technical["in_patient_list"], 0, "{technical}");
    let tile = b.step("technical-tile");
    assert!(
        tile["label"]
            .as_str()
            .unwrap_or("")
            .starts_with("TECHNICAL"),
        "{tile}"
    );
    let drill = b.step("drill-down");
    assert!(drill["charts"].as_u64() >= Some(5), "{drill}");
    let page = b.step("job");
    let read: u64 = page["cards"]["messages read"]
        .as_str()
        .unwrap_or("0")
        .replace(',', "")
        .parse()
        .unwrap_or(0);
    assert!(read > 0, "{page}");
    assert_eq!(page["cards"]["patients on the board"], "40", "{page}");
}

#[test]
fn the_debugger_in_the_browser_gives_what_the_cli_gives() {
    let dir = tempfile::tempdir().expect("tempdir");
    let device = root().join("templates/bedside-monitor/devicecontent.json");
    let fhir = root().join("templates/bedside-monitor/fhirmapping.json");
    let message = root().join("datasets/bedside-monitor/reading.json");
    let mut cmd = vitalflow();
    cmd.arg("debugger")
        .arg("--device")
        .arg(&device)
        .arg("--fhir")
        .arg(&fhir)
        .arg("--address")
        .arg(format!("127.0.0.1:{}", free_port()));
    let served = Served::start(cmd, dir.path(), "mapping debugger: ");
    let mut b = Browser::start(
        "debugger",
        &served.url,
        &[
            "--message",
            message.to_str().expect("path"),
            "--break-from",
            "\"valueExpression\": \"$.spo2\"",
            "--break-to",
            "\"valueExpression\": \"$.spo2[?(@\"",
        ],
    );
    let shown = b.step("normalized");
    let cli = common::run_ok(
        vitalflow()
            .arg("normalize")
            .arg("--device")
            .arg(&device)
            .arg("--fhir")
            .arg(&fhir)
            .arg("--format")
            .arg("json")
            .arg(&message),
    );
    let cli: Value = serde_json::from_slice(&cli.stdout).expect("CLI JSON");
    assert_eq!(shown["observations"], cli["observations"]);
    let types: Vec<&str> = shown["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| r[1].as_str().unwrap_or(""))
        .collect();
    let want: Vec<&str> = cli["measurements"]
        .as_array()
        .expect("measurements")
        .iter()
        .map(|m| m["type"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(types, want);
    let problem = b.step("problem");
    let text = problem["text"].as_str().unwrap_or("");
    assert!(text.contains("invalid JSONPath"), "{problem}");
    assert!(text.contains("template #1"), "{problem}");
    assert!(
        text.contains("/template/1/template/values/0/valueExpression"),
        "{problem}"
    );
}

#[test]
fn beyond_loopback_the_pages_need_credentials() {
    let dir = tempfile::tempdir().expect("tempdir");
    let device = root().join("templates/bedside-monitor/devicecontent.json");
    let debugger = |token: Option<&str>| {
        let mut c = vitalflow();
        c.arg("debugger")
            .arg("--device")
            .arg(&device)
            .arg("--address")
            .arg("0.0.0.0:0")
            .env_remove("VITALFLOW_BOARD_TOKEN")
            .env_remove("VITALFLOW_BOARD_USERS");
        if let Some(t) = token {
            c.env("VITALFLOW_BOARD_TOKEN", t);
        }
        c
    };
    let refused = debugger(None).output().expect("vitalflow");
    assert_eq!(refused.status.code(), Some(2));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("without authentication"), "{err}");
    assert!(err.contains("VITALFLOW_BOARD_TOKEN"), "{err}");

    let token = "a-long-enough-test-token";
    let served = Served::start(debugger(Some(token)), dir.path(), "mapping debugger: ");
    let port = served.url.rsplit(':').next().expect("port");
    let addr = format!("127.0.0.1:{port}");
    let (status, _) = common::http_get(&addr, "/debugger").expect("answer");
    assert_eq!(status, 401);
    let client = common::http_client();
    let ok = client
        .get(format!("http://{addr}/api/templates"))
        .bearer_auth(token)
        .send()
        .expect("request");
    assert_eq!(ok.status().as_u16(), 200);
    // Browsers get JSON gzipped (the board's reads are most of a page's weight).
    let zipped = client
        .get(format!("http://{addr}/api/templates"))
        .bearer_auth(token)
        .header("Accept-Encoding", "gzip")
        .send()
        .expect("request");
    assert_eq!(
        zipped
            .headers()
            .get("content-encoding")
            .and_then(|v| v.to_str().ok()),
        Some("gzip")
    );
    let mut text = String::new();
    std::io::Read::read_to_string(
        &mut flate2::read::GzDecoder::new(zipped.bytes().expect("body").as_ref()),
        &mut text,
    )
    .expect("gzip");
    let templates: Value = serde_json::from_str(&text).expect("JSON");
    assert!(templates["device"]
        .as_str()
        .is_some_and(|d| d.contains("CollectionContent")));
    let wrong = client
        .get(format!("http://{addr}/api/templates"))
        .bearer_auth("not-the-token-at-all")
        .send()
        .expect("request");
    assert_eq!(wrong.status().as_u16(), 401);
}

#[test]
fn with_a_certificate_the_pages_are_served_over_tls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, cert_file, key_file) = common::server_certificate(dir.path());
    let port = free_port();
    let mut cmd = vitalflow();
    cmd.arg("debugger")
        .arg("--device")
        .arg(root().join("templates/bedside-monitor/devicecontent.json"))
        .arg("--address")
        .arg(format!("127.0.0.1:{port}"))
        .env("VITALFLOW_BOARD_TLS_CERT", &cert_file)
        .env("VITALFLOW_BOARD_TLS_KEY", &key_file);
    let _served = Served::start(cmd, dir.path(), "mapping debugger: ");
    vitalflow::fhir::client::install_crypto();
    let client = reqwest::blocking::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).expect("PEM"),
        )
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let page = client
        .get(format!("https://127.0.0.1:{port}/debugger"))
        .send()
        .expect("HTTPS");
    assert_eq!(page.status().as_u16(), 200);
    assert!(page.text().expect("body").contains("mapping debugger"));
    // Plain HTTP on the same port gets no page.
    let plain = common::http_get(&format!("127.0.0.1:{port}"), "/debugger");
    assert!(
        plain.as_ref().is_none_or(|(status, _)| *status != 200),
        "{plain:?}"
    );
}

#[test]
fn the_debugger_draws_a_pcd01_device_tree_as_the_cli_reports_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let device = root().join("templates/ihe-pcd01/devicecontent.json");
    let message = root().join("datasets/ihe-pcd01/oru-r01.hl7");
    let mut cmd = vitalflow();
    cmd.arg("debugger")
        .arg("--device")
        .arg(&device)
        .arg("--address")
        .arg(format!("127.0.0.1:{}", free_port()));
    let served = Served::start(cmd, dir.path(), "mapping debugger: ");
    let mut b = Browser::start(
        "devices",
        &served.url,
        &["--message", message.to_str().expect("path")],
    );
    let shown = b.step("devices");
    let rows = shown["rows"].as_array().expect("rows");
    let cli = common::run_ok(
        vitalflow()
            .args(["normalize", "--format", "json", "--device"])
            .arg(&device)
            .arg(&message),
    );
    let cli: Value = serde_json::from_slice(&cli.stdout).expect("CLI JSON");
    let resources = cli["devices"].as_array().expect("devices");
    assert_eq!(rows.len(), resources.len(), "a row per resource");
    let cell = |r: &Value, i: usize| r["cells"][i].as_str().unwrap_or("").to_string();
    let indent = |r: &Value| r["indent"].as_f64().unwrap_or(0.0);
    // The MDS first with what identifies it, every other row indented under it.
    assert_eq!(cell(&rows[0], 1), "MDC_DEV_MON_PHYSIO_MULTI_PARAM_MDS");
    assert_eq!(cell(&rows[0], 2), "0012A3FFFE4B5C6D");
    let said = cell(&rows[0], 3);
    assert!(
        said.contains("Example Medical Systems") && said.contains("3.2.1"),
        "{said}"
    );
    assert!(
        rows[1..].iter().all(|r| indent(r) > indent(&rows[0])),
        "{rows:?}"
    );
    // Each metric right under its channel: one step deeper than the row its parent is.
    for (i, r) in rows.iter().enumerate() {
        if cell(r, 0) == "DeviceMetric" {
            let parent = rows[..i]
                .iter()
                .rev()
                .find(|p| cell(p, 0) == "Device")
                .expect("a Device above");
            assert!(indent(r) > indent(parent), "{r} under {parent}");
        }
    }
    let sat = rows
        .iter()
        .find(|r| cell(r, 1) == "MDC_PULS_OXIM_SAT_O2")
        .expect("the SpO2 metric");
    assert!(cell(sat, 3).contains("MDC_DIM_PERCENT"), "{sat}");
}
