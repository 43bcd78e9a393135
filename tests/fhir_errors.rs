//! How the FHIR sink meets a misbehaving server: refusals with an OperationOutcome, refused
//! credentials, OAuth2 token refresh, 429/5xx and malformed answers, TLS failures.
//!
//! The server here is a scripted FHIR peer on 127.0.0.1 (tiny_http): it answers the requests
//! the job really sends (metadata, batch Bundles of Device searches, Observation reads and
//! PUTs, the token endpoint) the way a faulty production server would.

mod common;

use common::*;
use rdkafka::mocking::MockCluster;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

type Cluster = MockCluster<'static, rdkafka::producer::DefaultProducerContext>;

/// One request as the peer saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    url: String,
    authorization: Option<String>,
    body: Value,
}

/// What the script answers to one request: status, body, headers. None: the default FHIR
/// behaviour.
type Script = dyn Fn(&Seen, usize) -> Option<(u16, String, Vec<(String, String)>)> + Send + Sync;

struct Peer {
    url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// PUT Observations by id, as acknowledged.
    stored: Arc<Mutex<BTreeMap<String, Value>>>,
    server: Arc<tiny_http::Server>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn bundle_entry(status: &str, resource: Option<Value>, extra: Value) -> Value {
    let mut e = json!({"response": {"status": status}});
    if let Some(r) = resource {
        e["resource"] = r;
    }
    if let Some(o) = extra.as_object() {
        for (k, v) in o {
            e["response"][k] = v.clone();
        }
    }
    e
}

/// Refuses a PUT resource with an OperationOutcome diagnostic, or accepts it (None).
type Refuse = fn(&Value) -> Option<String>;

/// A FHIR peer knowing `patients` (device identifier → patient identifier) as Devices
/// `d-{device}` linked to `Patient/p-{patient}`, with `script` answering first.
fn peer(patients: BTreeMap<String, String>, script: Box<Script>) -> Peer {
    refusing_peer(patients, script, |_| None)
}

/// As [`peer`], refusing the Observations `refuse` names.
fn refusing_peer(patients: BTreeMap<String, String>, script: Box<Script>, refuse: Refuse) -> Peer {
    let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").expect("bind"));
    let url = format!("http://{}", server.server_addr().to_ip().expect("ip"));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let stored = Arc::new(Mutex::new(BTreeMap::new()));
    let (s, seen2, stored2) = (server.clone(), seen.clone(), stored.clone());
    let thread = std::thread::spawn(move || {
        for mut req in s.incoming_requests() {
            let mut text = String::new();
            let _ = req.as_reader().read_to_string(&mut text);
            let body = if text.trim_start().starts_with('{') {
                serde_json::from_str(&text).unwrap_or(Value::Null)
            } else {
                Value::String(text)
            };
            let one = Seen {
                method: req.method().to_string(),
                url: req.url().to_string(),
                authorization: req
                    .headers()
                    .iter()
                    .find(|h| h.field.equiv("Authorization"))
                    .map(|h| h.value.to_string()),
                body,
            };
            let n = {
                let mut l = seen2.lock().expect("lock");
                l.push(one.clone());
                l.len()
            };
            let (status, text, headers) = script(&one, n).unwrap_or_else(|| {
                let v = default_answer(&one, &patients, &stored2, refuse);
                (200, v.to_string(), Vec::new())
            });
            let mut resp = tiny_http::Response::from_string(text).with_status_code(status);
            for (k, v) in headers {
                resp.add_header(tiny_http::Header::from_bytes(k, v).expect("header"));
            }
            resp.add_header(
                tiny_http::Header::from_bytes("Content-Type", "application/fhir+json").expect("h"),
            );
            let _ = req.respond(resp);
        }
    });
    Peer {
        url,
        seen,
        stored,
        server,
        thread: Some(thread),
    }
}

/// What a working FHIR server answers.
fn default_answer(
    req: &Seen,
    patients: &BTreeMap<String, String>,
    stored: &Mutex<BTreeMap<String, Value>>,
    refuse: Refuse,
) -> Value {
    if req.url.starts_with("/metadata") {
        return json!({"resourceType": "CapabilityStatement", "fhirVersion": "4.0.1", "status": "active", "kind": "instance", "format": ["json"]});
    }
    let entries = req.body["entry"].as_array().cloned().unwrap_or_default();
    let answers: Vec<Value> = entries
        .iter()
        .map(|e| {
            let method = e["request"]["method"].as_str().unwrap_or("");
            let url = e["request"]["url"].as_str().unwrap_or("");
            if let Some(ident) = url.strip_prefix("Device?identifier=") {
                let ident = ident.replace("%2D", "-");
                let hits: Vec<Value> = patients
                    .get(&ident)
                    .map(|p| json!({"resource": {"resourceType": "Device", "id": format!("d-{ident}"), "identifier": [{"value": ident}], "patient": {"reference": format!("Patient/p-{p}")}}}))
                    .into_iter()
                    .collect();
                return bundle_entry("200 OK", Some(json!({"resourceType": "Bundle", "type": "searchset", "entry": hits})), json!({}));
            }
            if let Some(id) = url.strip_prefix("Observation/") {
                let mut s = stored.lock().expect("lock");
                if method == "GET" {
                    return match s.get(id) {
                        Some(o) => bundle_entry("200 OK", Some(o.clone()), json!({"etag": "W/\"1\""})),
                        None => bundle_entry("404 Not Found", None, json!({})),
                    };
                }
                if let Some(why) = refuse(&e["resource"]) {
                    return json!({"response": {"status": "400 Bad Request", "outcome": {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "invalid", "diagnostics": why}]}}});
                }
                s.insert(id.to_string(), e["resource"].clone());
                return bundle_entry("201 Created", None, json!({"etag": "W/\"1\"", "location": format!("Observation/{id}/_history/1")}));
            }
            bundle_entry("400 Bad Request", None, json!({}))
        })
        .collect();
    json!({"resourceType": "Bundle", "type": "batch-response", "entry": answers})
}

fn setup(
    devices: u32,
    seed: u64,
) -> (
    Cluster,
    String,
    Vec<vitalflow::sources::simulator::SimMessage>,
    BTreeMap<String, String>,
) {
    let c = MockCluster::new(1).expect("mock cluster");
    c.create_topic("vitals", 2, 1).expect("topic");
    let brokers = c.bootstrap_servers();
    let msgs = simulated(devices, 120, seed, 20);
    produce_sim(&producer(&brokers), "vitals", &msgs);
    let patients = msgs
        .iter()
        .map(|m| {
            let v: Value = serde_json::from_slice(&m.payload).expect("json");
            (
                v["deviceId"].as_str().expect("d").to_string(),
                v["patientId"].as_str().expect("p").to_string(),
            )
        })
        .collect();
    (c, brokers, msgs, patients)
}

fn job(dir: &Path, brokers: &str, url: &str, extra: &str) -> PathBuf {
    common::fhir_server::fhir_job(
        dir,
        brokers,
        "g",
        &format!("url = \"{url}\"\nflush_interval = \"200ms\"\nstartup_timeout = \"5s\"\nmax_retries = 2\n{extra}"),
    )
}

fn run(dir: &Path, job: &Path, env: &[(&str, &str)]) -> std::process::Output {
    let mut c = vitalflow();
    c.args(["run", "--until-end", "--workers", "1", "--job"])
        .arg(job)
        .arg("--output")
        .arg(dir.join("out"));
    for (k, v) in env {
        c.env(k, v);
    }
    let mut child = c
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while child.try_wait().expect("wait").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "vitalflow ran over 2 minutes: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.wait_with_output().expect("output")
}

/// The job's log at the default filter names no patient, device or Observation of the
/// input: identifiers stay in the data, never in a log line (src/privacy.rs).
fn assert_no_identifiers(
    stderr: &str,
    patients: &BTreeMap<String, String>,
    msgs: &[vitalflow::sources::simulator::SimMessage],
) {
    let observations: Vec<String> = expected(msgs).keys().cloned().collect();
    for id in patients
        .keys()
        .chain(patients.values())
        .chain(observations.iter())
    {
        assert!(
            !stderr.contains(id.as_str()),
            "the log names {id}: {stderr}"
        );
    }
}

fn observations_expected(msgs: &[vitalflow::sources::simulator::SimMessage]) -> usize {
    expected(msgs).len()
}

#[test]
fn a_refused_observation_goes_to_the_dead_letters_with_the_servers_diagnostics() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (_c, brokers, msgs, patients) = setup(3, 21);
    let ids = patients.clone();
    // The server refuses every heart-rate Observation, as a profile-validating server would.
    let p = refusing_peer(patients, Box::new(|_, _| None), |o| {
        (o["code"]["text"] == "heartRate")
            .then(|| "Observation.code: heart rate is not allowed on this server".to_string())
    });
    let job = job(tmp.path(), &brokers, &p.url, "");
    let out = run(tmp.path(), &job, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the job goes on: {stderr}");
    assert!(
        stderr.contains("the FHIR server refused an Observation")
            && !stderr.contains("heart rate is not allowed"),
        "the refusal is logged, its diagnostics go to the dead letter (they may echo data): {stderr}"
    );
    assert_no_identifiers(&stderr, &ids, &msgs);
    assert_eq!(
        committed(&brokers, "g", "vitals", 2),
        high_watermarks(&brokers, "vitals", 2),
        "offsets committed: every group is written or dead-lettered"
    );
    let dead: Vec<Value> =
        vitalflow::sinks::files::committed_parts(&tmp.path().join("out/fhir/dead-letters"))
            .iter()
            .flat_map(|f| {
                std::fs::read_to_string(f)
                    .expect("read")
                    .lines()
                    .map(|l| serde_json::from_str::<Value>(l).expect("json"))
                    .collect::<Vec<_>>()
            })
            .collect();
    assert!(!dead.is_empty(), "refused groups are dead letters");
    for d in &dead {
        assert_eq!(d["stage"], "fhir");
        assert!(
            d["error"]
                .as_str()
                .expect("error")
                .contains("400: invalid: Observation.code: heart rate is not allowed"),
            "{d}"
        );
        let group: Value =
            serde_json::from_str(d["payload"].as_str().expect("payload")).expect("group");
        assert_eq!(group["type"], "heartRate");
        assert!(
            !group["values"]["hr"].as_array().expect("values").is_empty(),
            "{group}"
        );
    }
    let stored = p.stored.lock().expect("lock");
    let heart_rate = expected(&msgs)
        .values()
        .filter(|o| o["code"]["text"] == "heartRate")
        .count();
    assert_eq!(
        stored.len(),
        observations_expected(&msgs) - heart_rate,
        "every other Observation written"
    );
}

#[test]
fn a_refused_bearer_token_stops_the_job_and_commits_nothing() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (_c, brokers, msgs, patients) = setup(2, 22);
    let ids = patients.clone();
    let p = peer(
        patients,
        Box::new(|req, _| {
            (req.method == "POST" && req.authorization.as_deref() != Some("Bearer right"))
                .then(|| (401, r#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"login","diagnostics":"invalid token"}]}"#.to_string(), vec![]))
        }),
    );
    // Credentials over plain http:// are refused unless the job file allows them.
    let refused = job(
        tmp.path(),
        &brokers,
        &p.url,
        "[sinks.fhir.auth]\ntype = \"bearer\"",
    );
    let out = run(
        tmp.path(),
        &refused,
        &[("VITALFLOW_FHIR_TOKEN", "tok-XYZZY")],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "refused: {stderr}");
    assert!(
        stderr.contains("over plain http://") && stderr.contains("allow_http = true"),
        "says why and how: {stderr}"
    );
    assert!(
        !stderr.contains("XYZZY"),
        "never prints the secret: {stderr}"
    );
    assert!(p.stored.lock().expect("lock").is_empty(), "nothing sent");
    let job = job(
        tmp.path(),
        &brokers,
        &p.url,
        "[sinks.fhir.auth]\ntype = \"bearer\"\nallow_http = true",
    );
    let out = run(tmp.path(), &job, &[("VITALFLOW_FHIR_TOKEN", "tok-XYZZY")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "fatal: {stderr}");
    assert!(
        stderr.contains("VITALFLOW_FHIR_TOKEN was refused"),
        "says which credential: {stderr}"
    );
    assert!(
        !stderr.contains("XYZZY"),
        "never prints the secret: {stderr}"
    );
    assert_no_identifiers(&stderr, &ids, &msgs);
    let c = committed(&brokers, "g", "vitals", 2);
    assert!(c.values().all(|o| *o == 0), "no offset committed: {c:?}");

    // The right token: everything written.
    let out = run(tmp.path(), &job, &[("VITALFLOW_FHIR_TOKEN", "right")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!p.stored.lock().expect("lock").is_empty());
}

#[test]
fn oauth2_tokens_are_refreshed_on_401_and_a_wrong_secret_is_fatal() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (_c, brokers, msgs, patients) = setup(2, 23);
    let issued = Arc::new(Mutex::new(0u32));
    let issued2 = issued.clone();
    let p = peer(
        patients,
        Box::new(move |req, _| {
            if req.url == "/token" {
                let form = req.body.as_str().unwrap_or("");
                if !form.contains("client_secret=s3cret")
                    || !form.contains("grant_type=client_credentials")
                    || !form.contains("client_id=vitalflow")
                {
                    return Some((
                        401,
                        r#"{"error":"invalid_client","error_description":"bad secret"}"#.into(),
                        vec![],
                    ));
                }
                let mut n = issued2.lock().expect("lock");
                *n += 1;
                return Some((200, json!({"access_token": format!("t{n}"), "token_type": "bearer", "expires_in": 3600}).to_string(), vec![]));
            }
            // The server revokes the first token: only the latest one works.
            let latest = format!("Bearer t{}", issued2.lock().expect("lock"));
            (req.method == "POST"
                && (req.authorization.as_deref() == Some("Bearer t1")
                    || req.authorization.as_deref() != Some(latest.as_str())))
            .then(|| (401, String::new(), vec![]))
        }),
    );
    let auth = format!(
        "[sinks.fhir.auth]\ntype = \"oauth2\"\ntoken_url = \"{}/token\"\nclient_id = \"vitalflow\"\nscope = \"system/Observation.write\"\nallow_http = true",
        p.url
    );
    let job = job(tmp.path(), &brokers, &p.url, &auth);
    let out = run(
        tmp.path(),
        &job,
        &[("VITALFLOW_FHIR_CLIENT_SECRET", "s3cret")],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        *issued.lock().expect("lock") >= 2,
        "a 401 fetched a fresh token"
    );
    assert_eq!(
        p.stored.lock().expect("lock").len(),
        observations_expected(&msgs)
    );
    let scoped = p.seen.lock().expect("lock").iter().any(|s| {
        s.url == "/token"
            && s.body
                .as_str()
                .unwrap_or("")
                .contains("scope=system%2FObservation.write")
    });
    assert!(scoped, "the scope is requested");

    let tmp2 = tempfile::tempdir().expect("tmp");
    let job = self::job(tmp2.path(), &brokers, &p.url, &auth);
    let out = run(
        tmp2.path(),
        &job,
        &[
            ("VITALFLOW_FHIR_CLIENT_SECRET", "wrong"),
            ("VITALFLOW_KAFKA_GROUP_ID", "g2"),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("refused client \"vitalflow\"") && stderr.contains("invalid_client"),
        "{stderr}"
    );
}

#[test]
fn busy_failing_and_malformed_answers_are_retried_until_everything_is_written() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (_c, brokers, msgs, patients) = setup(3, 24);
    let ids = patients.clone();
    let p = peer(
        patients,
        Box::new(|req, n| {
            if req.method != "POST" {
                return None;
            }
            // The first batches meet a busy, then a broken, then a confused server.
            match n {
                2 => Some((429, String::new(), vec![("Retry-After".into(), "1".into())])),
                3 => Some((503, "upstream down".into(), vec![])),
                4..=6 => Some((200, "<html>maintenance</html>".into(), vec![])),
                7 => Some((
                    200,
                    json!({"resourceType": "Bundle", "type": "batch-response", "entry": []})
                        .to_string(),
                    vec![],
                )),
                _ => None,
            }
        }),
    );
    let job = job(tmp.path(), &brokers, &p.url, "");
    let out = run(tmp.path(), &job, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_no_identifiers(&stderr, &ids, &msgs);
    assert!(
        stderr.contains("malformed FHIR response"),
        "says what was wrong: {stderr}"
    );
    assert_eq!(
        p.stored.lock().expect("lock").len(),
        observations_expected(&msgs),
        "nothing lost"
    );
    assert_eq!(
        committed(&brokers, "g", "vitals", 2),
        high_watermarks(&brokers, "vitals", 2)
    );
}

/// The peer behind TLS with a self-signed certificate: each connection is read as one
/// HTTP/1.1 request, forwarded to `peer` in plain HTTP, and its answer relayed back.
struct TlsFront {
    url: String,
    /// The certificate, PEM: trusted only where a job names it as `ca_file`.
    cert_pem: String,
}

fn tls_front(peer: &Peer) -> TlsFront {
    use std::io::{BufRead, BufReader, Read, Write};
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).expect("cert");
    let cert_pem = cert.cert.pem();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(vec![cert.cert.der().clone()], key)
    .expect("server config");
    let config = Arc::new(config);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("https://{}", listener.local_addr().expect("addr"));
    let backend = peer.url.clone();
    std::thread::spawn(move || {
        for sock in listener.incoming().flatten() {
            let config = config.clone();
            let backend = backend.clone();
            std::thread::spawn(move || {
                let conn = rustls::ServerConnection::new(config).expect("conn");
                let mut tls = BufReader::new(rustls::StreamOwned::new(conn, sock));
                let mut head = Vec::new();
                loop {
                    let mut line = String::new();
                    // A failed handshake (an untrusting client) ends the connection here.
                    if tls.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    if line == "\r\n" {
                        break;
                    }
                    head.push(line);
                }
                let (method, path) = {
                    let mut it = head[0].split_whitespace();
                    (
                        it.next().unwrap_or("GET").to_string(),
                        it.next().unwrap_or("/").to_string(),
                    )
                };
                let header = |name: &str| {
                    head.iter().find_map(|h| {
                        let (k, v) = h.split_once(':')?;
                        k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
                    })
                };
                let len: usize = header("content-length")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let mut body = vec![0; len];
                tls.read_exact(&mut body).expect("body");
                let mut req = http_client()
                    .request(method.parse().expect("method"), format!("{backend}{path}"))
                    .body(body);
                for name in ["content-type", "authorization", "accept"] {
                    if let Some(v) = header(name) {
                        req = req.header(name, v);
                    }
                }
                let resp = req.send().expect("backend");
                let status = resp.status().as_u16();
                let bytes = resp.bytes().expect("bytes");
                let stream = tls.get_mut();
                let _ = write!(stream, "HTTP/1.1 {status} X\r\nContent-Type: application/fhir+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", bytes.len());
                let _ = stream.write_all(&bytes);
                let _ = stream.flush();
                stream.conn.send_close_notify();
                let _ = stream.flush();
            });
        }
    });
    TlsFront { url, cert_pem }
}

#[test]
fn tls_needs_a_trusted_certificate_and_a_failure_stops_start_up_naming_the_server() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (_c, brokers, msgs, patients) = setup(2, 25);
    let p = peer(patients, Box::new(|_, _| None));
    let front = tls_front(&p);
    let job = job(tmp.path(), &brokers, &front.url, "");
    let out = run(tmp.path(), &job, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("TLS error") && stderr.contains(&front.url),
        "{stderr}"
    );
    assert!(stderr.contains("UnknownIssuer"), "says why: {stderr}");
    assert!(p.stored.lock().expect("lock").is_empty());

    // Trusting the server's CA (ca_file), the same job writes everything over TLS.
    let ca = tmp.path().join("ca.pem");
    std::fs::write(&ca, &front.cert_pem).expect("ca");
    let job = self::job(
        tmp.path(),
        &brokers,
        &front.url,
        &format!("ca_file = \"{}\"", ca.display()),
    );
    let out = run(tmp.path(), &job, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        p.stored.lock().expect("lock").len(),
        observations_expected(&msgs)
    );
}

#[test]
fn a_fhir_outage_pauses_reading_at_the_durable_lag_bound_and_loses_nothing() {
    let tmp = tempfile::tempdir().expect("tmp");
    let c = MockCluster::new(1).expect("mock cluster");
    c.create_topic("vitals", 2, 1).expect("topic");
    let brokers = c.bootstrap_servers();
    let msgs = simulated(8, 30_000, 31, 600);
    produce_sim(&producer(&brokers), "vitals", &msgs);
    let patients: BTreeMap<String, String> = msgs
        .iter()
        .map(|m| {
            let v: Value = serde_json::from_slice(&m.payload).expect("json");
            (
                v["deviceId"].as_str().expect("d").to_string(),
                v["patientId"].as_str().expect("p").to_string(),
            )
        })
        .collect();
    // The server is down (503) for its first 8 seconds of writes.
    let down_since: Arc<Mutex<Option<std::time::Instant>>> = Arc::new(Mutex::new(None));
    let down = down_since.clone();
    let p = peer(
        patients,
        Box::new(move |req, _| {
            if req.method != "POST" {
                return None;
            }
            let mut d = down.lock().expect("lock");
            let since = *d.get_or_insert_with(std::time::Instant::now);
            (since.elapsed() < Duration::from_secs(8))
                .then(|| (503, "maintenance".to_string(), vec![]))
        }),
    );
    let metrics = format!("127.0.0.1:{}", free_port());
    let job = job(tmp.path(), &brokers, &p.url, "");
    let text = std::fs::read_to_string(&job).expect("job").replace(
        "batch_size = 50\n",
        "batch_size = 50\nmax_durable_lag = \"2s\"\n",
    ) + &format!("\n[metrics]\naddress = \"{metrics}\"\n");
    std::fs::write(&job, text).expect("job");
    let mut running = Running::spawn(
        vitalflow()
            .args(["run", "--workers", "1", "--job"])
            .arg(&job)
            .arg("--output")
            .arg(tmp.path().join("out"))
            .stderr(std::process::Stdio::null()),
    );
    let gauge = |name: &str| -> Option<u64> {
        let (_, body) = http_get(&metrics, "/metrics")?;
        body.lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while gauge("vitalflow_reading_paused") != Some(1) {
        assert!(
            std::time::Instant::now() < deadline,
            "reading never paused during the outage"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let read = gauge("vitalflow_messages_in_total").expect("metrics");
    std::thread::sleep(Duration::from_millis(1500));
    let later = gauge("vitalflow_messages_in_total").expect("metrics");
    if gauge("vitalflow_reading_paused") == Some(1) {
        assert_eq!(read, later, "nothing read while paused");
    }
    assert!(
        (read as usize) < msgs.len(),
        "paused before the input was all read: {read} of {}",
        msgs.len()
    );
    // The server recovers: reading resumes, and everything is written and committed.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while committed(&brokers, "g", "vitals", 2) != high_watermarks(&brokers, "vitals", 2) {
        assert!(
            std::time::Instant::now() < deadline,
            "not everything committed after the outage"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        gauge("vitalflow_reading_paused"),
        Some(0),
        "reading resumed"
    );
    running.terminate();
    running.wait();
    assert_eq!(
        p.stored.lock().expect("lock").len(),
        observations_expected(&msgs),
        "every Observation written after the outage"
    );
}

#[test]
fn a_whole_batch_refused_with_diagnostics_that_echo_the_patient_logs_no_patient_data() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (_c, brokers, msgs, patients) = setup(2, 23);
    let ids = patients.clone();
    // Every Observation batch is refused as a whole, the diagnostics quoting the batch (as
    // servers that echo the offending resource do).
    let p = peer(
        patients,
        Box::new(|req, _| {
            let puts = req.body["entry"]
                .as_array()
                .is_some_and(|e| e.iter().any(|x| x["request"]["method"] == "PUT"));
            puts.then(|| {
                let outcome = json!({"resourceType": "OperationOutcome", "issue": [{
                    "severity": "error", "code": "invalid",
                    "diagnostics": format!("batch refused: {}", req.body)}]});
                (400, outcome.to_string(), Vec::new())
            })
        }),
    );
    let job = job(tmp.path(), &brokers, &p.url, "");
    let mut child = vitalflow()
        .args(["run", "--workers", "1", "--job"])
        .arg(&job)
        .arg("--output")
        .arg(tmp.path().join("out"))
        // The default filter, as an operator runs it.
        .env_remove("VITALFLOW_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::time::Instant::now() < deadline
        && p.seen
            .lock()
            .expect("lock")
            .iter()
            .filter(|s| {
                s.body["entry"]
                    .as_array()
                    .is_some_and(|e| e.iter().any(|x| x["request"]["method"] == "PUT"))
            })
            .count()
            < 3
    {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = child.kill();
    let out = child.wait_with_output().expect("output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("flush failed") && stderr.contains("FHIR server answered 400"),
        "the refusal is logged by its status: {stderr}"
    );
    assert!(
        !stderr.contains("batch refused"),
        "not the server's text: {stderr}"
    );
    assert_no_identifiers(&stderr, &ids, &msgs);
}
