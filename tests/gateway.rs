//! The MLLP gateway against librdkafka's mock cluster: every message a client saw accepted
//! (`MSA|AA`) is in Kafka exactly once, repeats are not produced again (across a kill -9 and
//! restart too), bad input is refused with its reason and dead-lettered while the connection
//! goes on serving, TLS when given a certificate; and a client no one here wrote
//! (`mllp_send` of the PyPI package `hl7`) gets its messages through.

mod common;

use common::Record;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use vitalflow::config::{KafkaConfig, StartPosition};
use vitalflow::gateway::mllp::{self, Gateway, KeyBy};

struct Setup {
    _cluster: MockCluster<'static, DefaultProducerContext>,
    brokers: String,
    gateway: Gateway,
}

fn setup() -> Setup {
    setup_with(None)
}

fn setup_with(tls: Option<Arc<rustls::ServerConfig>>) -> Setup {
    setup_full(tls, Duration::from_secs(10), Vec::new())
}

fn setup_full(
    tls: Option<Arc<rustls::ServerConfig>>,
    ack_timeout: Duration,
    allow: Vec<String>,
) -> Setup {
    let cluster = MockCluster::new(1).expect("mock cluster");
    cluster.create_topic("hl7", 3, 1).expect("topic");
    cluster.create_topic("hl7-refused", 1, 1).expect("topic");
    let brokers = cluster.bootstrap_servers();
    let settings = mllp::Settings {
        listen: "127.0.0.1:0".parse().expect("addr"),
        kafka: KafkaConfig {
            brokers: brokers.clone(),
            topics: vec!["hl7".into()],
            group_id: "gateway-test".into(),
            start: StartPosition::Earliest,
            partitions: 3,
            startup_timeout: Duration::from_secs(10),
            properties: Default::default(),
        },
        topic: "hl7".into(),
        dead_letter_topic: Some("hl7-refused".into()),
        key: KeyBy::Patient,
        dedup_window: Duration::from_secs(600),
        max_frame: 1 << 20,
        ack_timeout,
        tls,
        allow,
    };
    let gateway = mllp::start(settings, Arc::new(AtomicBool::new(false))).expect("gateway");
    Setup {
        _cluster: cluster,
        brokers,
        gateway,
    }
}

/// A PCD-01 message of `patient` with control id `id`.
fn message(patient: &str, id: &str) -> String {
    format!(
        "MSH|^~\\&|CARESCAPE|ICU|VITALFLOW|HOSP|20261121100005+0000||ORU^R01^ORU_R01|{id}|P|2.6\r\
         PID|||{patient}^^^HOSP^MR\r\
         OBR|1|||182777000^monitoring of patient^SCT|||20261121100000+0000\r\
         OBX|1|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC|1.1.1.1|97|262688^MDC_DIM_PERCENT^MDC|||||R|||20261121100000+0000||||0012A3FFFE4B5C6D^EUI-64"
    )
}

/// Sends raw bytes and reads one framed reply.
fn exchange<S: Read + Write>(conn: &mut S, bytes: &[u8]) -> String {
    conn.write_all(bytes).expect("send");
    let mut reply = Vec::new();
    let mut b = [0u8; 1];
    while !reply.ends_with(&[0x1c, 0x0d]) {
        let n = conn.read(&mut b).expect("reply");
        assert!(n > 0, "the gateway closed the connection");
        reply.push(b[0]);
    }
    String::from_utf8_lossy(&reply[1..reply.len() - 2]).into_owned()
}

fn msa(reply: &str) -> (String, String) {
    let msa = reply
        .split('\r')
        .find(|s| s.starts_with("MSA|"))
        .unwrap_or_else(|| panic!("no MSA in {reply:?}"));
    let f: Vec<&str> = msa.split('|').collect();
    (f[1].to_string(), f.get(2).unwrap_or(&"").to_string())
}

/// Every record of `topic` (see [`common::records`]).
fn records(brokers: &str, topic: &str, expect: usize) -> Vec<Record> {
    common::records(brokers, topic, expect, Duration::from_secs(20))
}

/// A record's control id header.
fn id(r: &Record) -> &str {
    r.headers
        .get("hl7-message-control-id")
        .map_or("", String::as_str)
}

#[test]
fn every_accepted_message_is_in_kafka_once_and_repeats_are_not_produced_again() {
    let s = setup();
    let addr = s.gateway.addr;
    let clients: Vec<_> = (0..10)
        .map(|c| {
            std::thread::spawn(move || {
                let mut conn = TcpStream::connect(addr).expect("connect");
                for i in 0..20 {
                    let id = format!("C{c}-M{i}");
                    let reply = exchange(&mut conn, &mllp::frame(&message(&format!("P-{c}"), &id)));
                    assert_eq!(msa(&reply), ("AA".to_string(), id.clone()), "{reply:?}");
                }
            })
        })
        .collect();
    for c in clients {
        c.join().expect("client");
    }
    // A sender that did not see its acknowledgement sends again: accepted, not produced.
    let mut conn = TcpStream::connect(addr).expect("connect");
    for i in 0..5 {
        let id = format!("C3-M{i}");
        let reply = exchange(&mut conn, &mllp::frame(&message("P-3", &id)));
        assert_eq!(msa(&reply).0, "AA");
    }
    assert_eq!(s.gateway.counters.accepted.load(Ordering::Relaxed), 200);
    assert_eq!(s.gateway.counters.duplicates.load(Ordering::Relaxed), 5);
    let got = records(&s.brokers, "hl7", 200);
    let mut ids: BTreeMap<&str, usize> = BTreeMap::new();
    for r in &got {
        let (key, id, payload) = (&r.key, id(r), &r.payload);
        *ids.entry(id).or_default() += 1;
        let c = id
            .trim_start_matches('C')
            .split('-')
            .next()
            .expect("client");
        assert_eq!(key, &format!("P-{c}"), "keyed by the patient (PID-3)");
        assert!(payload.starts_with("MSH|") && payload.contains(id));
    }
    assert_eq!(ids.len(), 200, "every accepted message is in Kafka");
    assert!(ids.values().all(|n| *n == 1), "and only once");
    s.gateway.stop();
}

#[test]
fn one_message_on_two_connections_at_once_or_after_a_late_acknowledgement_is_produced_once() {
    // Kafka takes 1.5 s to answer; the gateway gives up waiting after 0.5 s.
    let s = setup_full(None, Duration::from_millis(500), Vec::new());
    s._cluster
        .broker_round_trip_time(1, Duration::from_millis(1500))
        .expect("rtt");
    let addr = s.gateway.addr;
    // The sender sees `AE` (no acknowledgement in time), though Kafka gets the message.
    let mut conn = TcpStream::connect(addr).expect("connect");
    let reply = exchange(&mut conn, &mllp::frame(&message("P-1", "LATE-1")));
    assert_eq!(msa(&reply).0, "AE", "{reply:?}");
    // It resends at once, on another connection, while the first is still in flight: the
    // resend waits for the first delivery and is answered without a second copy.
    let mut other = TcpStream::connect(addr).expect("connect");
    let reply = exchange(&mut other, &mllp::frame(&message("P-1", "LATE-1")));
    let first = msa(&reply).0;
    // And once more after Kafka's late success: a duplicate, accepted.
    std::thread::sleep(Duration::from_millis(2000));
    let reply = exchange(&mut conn, &mllp::frame(&message("P-1", "LATE-1")));
    assert_eq!(msa(&reply).0, "AA", "{reply:?}");
    // Two connections sending one new message at the same moment.
    let both: Vec<_> = (0..2)
        .map(|_| {
            std::thread::spawn(move || {
                let mut c = TcpStream::connect(addr).expect("connect");
                msa(&exchange(&mut c, &mllp::frame(&message("P-2", "TWICE-1")))).0
            })
        })
        .collect();
    let answers: Vec<String> = both
        .into_iter()
        .map(|t| t.join().expect("client"))
        .collect();
    std::thread::sleep(Duration::from_millis(2000));
    s._cluster
        .broker_round_trip_time(1, Duration::ZERO)
        .expect("rtt");
    let got = records(&s.brokers, "hl7", 2);
    let mut ids: BTreeMap<&str, usize> = BTreeMap::new();
    for r in &got {
        *ids.entry(id(r)).or_default() += 1;
    }
    assert_eq!(
        ids,
        [("LATE-1", 1), ("TWICE-1", 1)].into_iter().collect(),
        "each message once (resend answered {first}, simultaneous sends {answers:?})"
    );
    s.gateway.stop();
}

#[test]
fn fuzzed_frames_are_each_answered_with_an_ack_and_the_gateway_keeps_serving() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};
    let s = setup();
    let good = message("P-F", "FUZZ-SEED");
    let conn = std::cell::RefCell::new(TcpStream::connect(s.gateway.addr).expect("connect"));
    let cases: u32 = std::env::var("VITALFLOW_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .map_or(3_000, |c| (c / 30).max(100));
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let token = prop_oneof![
        Just(b"|".to_vec()),
        Just(b"^".to_vec()),
        Just(b"~".to_vec()),
        Just(b"\\".to_vec()),
        Just(b"&".to_vec()),
        Just(b"\r".to_vec()),
        Just(b"\\X0B1C\\".to_vec()),
        Just(b"MSH|".to_vec()),
        Just(vec![0x0b]),
        Just(vec![0x1c]),
        Just(vec![0xff, 0xfe]),
        prop::collection::vec(any::<u8>(), 0..12),
    ];
    let edits = prop::collection::vec((any::<usize>(), token, any::<bool>()), 1..5);
    let n = std::cell::Cell::new(0u32);
    runner
        .run(&edits, |edits| {
            n.set(n.get() + 1);
            let n = n.get();
            let mut b = good.clone().into_bytes();
            for (i, t, cut) in edits {
                let i = i % (b.len() + 1);
                if cut {
                    b.truncate(i);
                } else {
                    b.splice(i..i, t);
                }
            }
            // A frame's end bytes inside the body would end it early: the rest is garbage
            // outside a frame, which the gateway skips; one answer per frame either way.
            let body: Vec<u8> = b
                .windows(1)
                .enumerate()
                .filter(|(j, w)| !(w[0] == 0x1c && b.get(j + 1) == Some(&0x0d)) && w[0] != 0x0b)
                .map(|(_, w)| w[0])
                .collect();
            let mut framed = vec![0x0b];
            framed.extend_from_slice(&body);
            framed.extend_from_slice(&[0x1c, 0x0d]);
            let reply = exchange(&mut *conn.borrow_mut(), &framed);
            let (code, _) = msa(&reply);
            prop_assert!(
                ["AA", "AR", "AE"].contains(&code.as_str()),
                "case {n}: {reply:?}"
            );
            if code != "AA" {
                prop_assert!(
                    reply
                        .split('\r')
                        .any(|seg| seg.starts_with("ERR|") && seg.len() > 8),
                    "case {n}: a refusal says why: {reply:?}"
                );
            }
            Ok(())
        })
        .expect("every frame answered");
    // Still serving, on the same connection.
    let reply = exchange(
        &mut *conn.borrow_mut(),
        &mllp::frame(&message("P-F", "AFTER-FUZZ")),
    );
    assert_eq!(msa(&reply), ("AA".to_string(), "AFTER-FUZZ".to_string()));
    s.gateway.stop();
}

#[test]
fn bad_input_is_refused_with_its_reason_and_the_connection_goes_on() {
    let s = setup();
    let mut conn = TcpStream::connect(s.gateway.addr).expect("connect");
    // Bytes outside a frame are not a message; binary garbage inside one is refused.
    let mut garbage = b"noise".to_vec();
    garbage.extend([0x0b, 0xff, 0x00, 0x13, 0x37, 0xfe, 0x1c, 0x0d]);
    let reply = exchange(&mut conn, &garbage);
    assert_eq!(msa(&reply).0, "AR", "{reply:?}");
    assert!(
        reply.contains("ERR|") && reply.contains("no MSH segment"),
        "{reply:?}"
    );
    let reply = exchange(&mut conn, &mllp::frame("PID|||P-1\rOBX|1|NM|150456||97"));
    assert!(reply.contains("no MSH segment"), "missing MSH: {reply:?}");
    let reply = exchange(&mut conn, &mllp::frame("MSH|^~"));
    assert_eq!(msa(&reply).0, "AR", "truncated MSH: {reply:?}");
    let wrong_encoding = message("P-1", "ENC").replacen("MSH|^~\\&|", "MSH|^^\\&|", 1);
    let reply = exchange(&mut conn, &mllp::frame(&wrong_encoding));
    assert!(
        msa(&reply).0 == "AR" && reply.contains("MSH-2"),
        "wrong encoding characters: {reply:?}"
    );
    let no_id = message("P-1", "");
    let reply = exchange(&mut conn, &mllp::frame(&no_id));
    assert!(reply.contains("MSH-10"), "{reply:?}");
    let huge = message("P-1", "BIG") + &"X".repeat(10 << 20);
    let reply = exchange(&mut conn, &mllp::frame(&huge));
    assert!(reply.contains("larger than 1048576 bytes"), "{reply:?}");
    let reply = exchange(&mut conn, &mllp::frame(&message("P-1", "GOOD-1")));
    assert_eq!(msa(&reply), ("AA".to_string(), "GOOD-1".to_string()));
    let dead = records(&s.brokers, "hl7-refused", 5);
    assert_eq!(
        dead.len(),
        5,
        "refused messages are dead-lettered (the oversized one is not kept)"
    );
    for Record { payload, .. } in &dead {
        let v: serde_json::Value = serde_json::from_str(payload).expect("a dead letter");
        assert_eq!(v["stage"], "gateway", "{v}");
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
    }
    assert_eq!(records(&s.brokers, "hl7", 1).len(), 1);
    s.gateway.stop();
}

#[test]
fn the_listener_speaks_tls_when_given_a_certificate() {
    let dir = tempfile::tempdir().expect("dir");
    let (cert, cert_pem, key_pem) = common::server_certificate(dir.path());
    let e = mllp::server_tls(&key_pem, &key_pem, None).expect_err("a key is not a certificate");
    assert!(e.to_string().contains("key.pem"), "names the file: {e}");
    let s = setup_with(Some(
        mllp::server_tls(&cert_pem, &key_pem, None).expect("tls"),
    ));
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).expect("root");
    let client = Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let tcp = TcpStream::connect(s.gateway.addr).expect("connect");
    let session = rustls::ClientConnection::new(client, "127.0.0.1".try_into().expect("name"))
        .expect("session");
    let mut conn = rustls::StreamOwned::new(session, tcp);
    for i in 0..3 {
        let id = format!("TLS-{i}");
        let reply = exchange(&mut conn, &mllp::frame(&message("P-5", &id)));
        assert_eq!(msa(&reply), ("AA".to_string(), id), "{reply:?}");
    }
    assert_eq!(records(&s.brokers, "hl7", 3).len(), 3);
    // A plain-TCP sender gets no acknowledgement from a TLS listener, and nothing is produced.
    let mut plain = TcpStream::connect(s.gateway.addr).expect("connect");
    plain
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    plain
        .write_all(&mllp::frame(&message("P-5", "PLAIN")))
        .expect("send");
    let mut reply = Vec::new();
    let _ = plain.read_to_end(&mut reply);
    assert!(
        !String::from_utf8_lossy(&reply).contains("MSA|"),
        "{reply:?}"
    );
    assert_eq!(s.gateway.counters.accepted.load(Ordering::Relaxed), 3);
    s.gateway.stop();
}

/// A CA, and a client certificate it signs naming `name`, as PEM files in `dir`.
fn client_certificates(dir: &std::path::Path, ca_name: &str, name: &str) -> (PathBuf, ClientId) {
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, ca_name);
    let ca = rcgen::CertifiedIssuer::self_signed(ca, ca_key).expect("CA");
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let cert = params.signed_by(&key, &ca).expect("client certificate");
    let ca_file = dir.join(format!("{ca_name}.pem"));
    std::fs::write(&ca_file, ca.pem()).expect("CA file");
    (
        ca_file,
        ClientId {
            cert: cert.der().clone(),
            key: rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        },
    )
}

/// A client certificate and its key.
struct ClientId {
    cert: rustls::pki_types::CertificateDer<'static>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
}

/// Sends one message over TLS as `client` (None: no certificate); the reply, empty when the
/// gateway refused the connection.
fn send_as(
    server: &rcgen::CertifiedKey<rcgen::KeyPair>,
    addr: std::net::SocketAddr,
    client: Option<&ClientId>,
    id: &str,
) -> String {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(server.cert.der().clone()).expect("root");
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    let config = match client {
        Some(c) => builder
            .with_client_auth_cert(vec![c.cert.clone()], c.key.clone_key())
            .expect("client auth"),
        None => builder.with_no_client_auth(),
    };
    let tcp = TcpStream::connect(addr).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let session =
        rustls::ClientConnection::new(Arc::new(config), "127.0.0.1".try_into().expect("name"))
            .expect("session");
    let mut conn = rustls::StreamOwned::new(session, tcp);
    if conn.write_all(&mllp::frame(&message("P-9", id))).is_err() {
        return String::new();
    }
    let mut reply = Vec::new();
    let mut chunk = [0u8; 4096];
    while !reply.contains(&0x1c) {
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => reply.extend_from_slice(&chunk[..n]),
        }
    }
    String::from_utf8_lossy(&reply).into_owned()
}

#[test]
fn with_a_client_ca_only_devices_with_a_trusted_and_listed_certificate_get_through() {
    let dir = tempfile::tempdir().expect("dir");
    let (server, cert_pem, key_pem) = common::server_certificate(dir.path());
    let (ca_file, listed) = client_certificates(dir.path(), "ward-ca", "0012345678abcdef");
    let (_, other_ca) = client_certificates(dir.path(), "rogue-ca", "0012345678abcdef");
    // Signed by the ward's CA, but not on the list.
    let (_, unlisted) = client_certificates(dir.path(), "ward-ca-2", "feedfacefeedface");
    let auth = mllp::ClientAuth {
        ca: ca_file.clone(),
        allow: vec!["0012345678abcdef".into()],
    };
    let tls = mllp::server_tls(&cert_pem, &key_pem, Some(&auth)).expect("tls");
    let s = setup_full(Some(tls), Duration::from_secs(10), auth.allow.clone());
    let addr = s.gateway.addr;
    let reply = send_as(&server, addr, Some(&listed), "MTLS-OK");
    assert_eq!(
        msa(&reply),
        ("AA".to_string(), "MTLS-OK".to_string()),
        "{reply:?}"
    );
    for (who, client) in [("no certificate", None), ("another CA's", Some(&other_ca))] {
        let reply = send_as(&server, addr, client, "MTLS-REFUSED");
        assert!(!reply.contains("MSA|"), "{who}: {reply:?}");
    }
    // The gateway counts a refusal on its connection thread, after the client has seen it.
    let refused = |g: &mllp::Gateway, n: u64| {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while g.counters.refused_clients.load(Ordering::Relaxed) < n
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        g.counters.refused_clients.load(Ordering::Relaxed)
    };
    assert_eq!(refused(&s.gateway, 2), 2);
    // A certificate of the right CA naming a device not listed: refused after the handshake.
    let tls = mllp::server_tls(
        &cert_pem,
        &key_pem,
        Some(&mllp::ClientAuth {
            ca: dir.path().join("ward-ca-2.pem"),
            allow: vec!["0012345678abcdef".into()],
        }),
    )
    .expect("tls");
    let s2 = setup_full(
        Some(tls),
        Duration::from_secs(10),
        vec!["0012345678abcdef".into()],
    );
    let reply = send_as(&server, s2.gateway.addr, Some(&unlisted), "MTLS-UNLISTED");
    assert!(!reply.contains("MSA|"), "{reply:?}");
    assert_eq!(refused(&s2.gateway, 1), 1);
    // Only the listed device's message reached Kafka.
    let got = records(&s.brokers, "hl7", 1);
    assert_eq!(got.iter().map(id).collect::<Vec<_>>(), vec!["MTLS-OK"]);
    assert!(records(&s2.brokers, "hl7", 0).is_empty());
    assert_eq!(
        mllp::certificate_names(&listed.cert),
        vec!["0012345678abcdef".to_string()]
    );
    s.gateway.stop();
    s2.gateway.stop();
}

#[test]
fn a_client_no_one_here_wrote_gets_its_messages_through() {
    let s = setup();
    let python = std::env::var("VITALFLOW_PYTHON").unwrap_or_else(|_| "python3".into());
    let bin = std::path::Path::new(&python).with_file_name("mllp_send");
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("messages.hl7");
    let text: String = (0..3)
        .map(|i| message("P-7", &format!("PY-{i}")).replace('\r', "\n") + "\n")
        .collect();
    std::fs::write(&file, text).expect("write");
    let out = std::process::Command::new(&bin)
        .args(["--loose", "-p", &s.gateway.addr.port().to_string(), "-f"])
        .arg(&file)
        .arg("127.0.0.1")
        .output()
        .unwrap_or_else(|e| panic!("{} (pip install hl7; .ci/run does): {e}", bin.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.matches("MSA|AA|PY-").count(), 3, "{stdout}");
    let got = records(&s.brokers, "hl7", 3);
    let ids: Vec<&str> = got.iter().map(id).collect();
    assert_eq!(ids.len(), 3, "{ids:?}");
    s.gateway.stop();
}

#[test]
fn a_pcd01_message_sent_over_mllp_becomes_observations_alerts_and_lake_rows_through_the_job() {
    let s = setup();
    let example = std::fs::read_to_string(common::root().join("datasets/ihe-pcd01/oru-r01.hl7"))
        .expect("example")
        .trim_end()
        .replace('\n', "\r");
    let mut conn = TcpStream::connect(s.gateway.addr).expect("connect");
    for (id, patient) in [("MSG-000001", "PAT-1001"), ("MSG-000002", "PAT-1002")] {
        let m = example
            .replace("MSG-000001", id)
            .replace("PAT-1001", patient);
        let reply = exchange(&mut conn, &mllp::frame(&m));
        assert_eq!(msa(&reply).0, "AA", "{reply:?}");
    }
    // Then PAT-1001 desaturates: SpO2 84 every 10 s for 80 s of event time (the hypoxia
    // rule is critical below 85, sustained 30 s).
    for i in 1..=8 {
        let secs = i * 10;
        let at = format!("2026112110{:02}{:02}+0000", secs / 60, secs % 60);
        let m = example
            .replace("MSG-000001", &format!("DESAT-{i}"))
            .replace("|97|", "|84|")
            .replace("20261121100000+0000", &at);
        let reply = exchange(&mut conn, &mllp::frame(&m));
        assert_eq!(msa(&reply).0, "AA", "{reply:?}");
    }
    let dir = tempfile::tempdir().expect("dir");
    let root = common::root();
    let job = dir.path().join("job.toml");
    std::fs::write(
        &job,
        format!(
            "name = \"pcd01\"\nsource = \"kafka\"\n[kafka]\nbrokers = \"{}\"\ntopics = [\"hl7\"]\n\
             group_id = \"pcd01-job\"\n[mapping]\ndevice = \"{}\"\nfhir = \"{}\"\n\
             [window]\nupdate_every = \"5s\"\n[sinks.ndjson]\ndir = \"{}\"\nflush_interval = \"200ms\"\n\
             [anomaly]\nrules = \"{}\"\n[sinks.lake]\nlocation = \"{}\"\nflush_interval = \"1s\"\n",
            s.brokers,
            root.join("templates/ihe-pcd01/devicecontent.json").display(),
            root.join("templates/ihe-pcd01/fhirmapping.json").display(),
            dir.path().join("out").display(),
            root.join("templates/alerts/adult-vitals.toml").display(),
            dir.path().join("lake").display(),
        ),
    )
    .expect("job");
    common::run_ok(
        common::vitalflow()
            .args(["run", "--until-end", "--workers", "2", "--job"])
            .arg(&job),
    );
    let latest = common::latest(&common::observation_lines(&dir.path().join("out")));
    assert_eq!(
        latest.len(),
        12,
        "6 vitals of 2 patients: {:?}",
        latest.keys()
    );
    let subjects: std::collections::BTreeSet<String> = latest
        .values()
        .map(|o| {
            o["subject"]["identifier"]["value"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    assert_eq!(subjects.len(), 2, "{subjects:?}");
    let bp = latest
        .values()
        .find(|o| o["code"]["coding"][0]["code"] == "85354-9")
        .expect("a blood pressure Observation");
    assert_eq!(bp["component"].as_array().map(Vec::len), Some(3), "{bp}");
    // 1 + 8 SpO2 rows of PAT-1001 in the lakehouse's measurements table.
    common::assert_hypoxia_alert_and_spo2_rows(dir.path(), "PAT-1001", 9);
    s.gateway.stop();
}

#[test]
fn kill_9_of_the_gateway_loses_no_acknowledged_message_and_duplicates_none() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    cluster.create_topic("hl7", 3, 1).expect("topic");
    // Kafka answers after 5 ms: a kill likely lands between Kafka appending a message and
    // the gateway answering, the case the restarted gateway must not produce again.
    cluster
        .broker_round_trip_time(1, Duration::from_millis(5))
        .expect("rtt");
    let brokers = cluster.bootstrap_servers();
    let addr = format!("127.0.0.1:{}", common::free_port());
    let spawn = || {
        common::vitalflow()
            .args(["gateway", "mllp", "--listen", &addr, "--brokers", &brokers])
            .args(["--topic", "hl7"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("gateway process")
    };
    let mut gateway = spawn();
    let done = Arc::new(AtomicBool::new(false));
    let acked_count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // The client sends 1,000 messages one by one, as an MLLP sender does: a message whose ACK
    // it did not see (the gateway died) it sends again, on a new connection.
    let client = {
        let (addr, done, acked_count) = (addr.clone(), done.clone(), acked_count.clone());
        std::thread::spawn(move || {
            let mut acked = Vec::new();
            // Control id -> when the client first saw no ACK for it (Unix ms).
            let mut resent = BTreeMap::new();
            let mut conn: Option<TcpStream> = None;
            for i in 0..1000 {
                let id = format!("K-{i}");
                let frame = mllp::frame(&message(&format!("P-{}", i % 7), &id));
                loop {
                    let c = match conn.as_mut() {
                        Some(c) => c,
                        None => match TcpStream::connect(&addr) {
                            Ok(c) => conn.insert(c),
                            Err(_) => {
                                std::thread::sleep(Duration::from_millis(20));
                                continue;
                            }
                        },
                    };
                    c.set_read_timeout(Some(Duration::from_secs(5)))
                        .expect("timeout");
                    let mut reply = Vec::new();
                    let mut b = [0u8; 256];
                    let sent = c.write_all(&frame).is_ok();
                    while sent && !reply.ends_with(&[0x1c, 0x0d]) {
                        match c.read(&mut b) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => reply.extend_from_slice(&b[..n]),
                        }
                    }
                    if reply.ends_with(&[0x1c, 0x0d]) {
                        let text = String::from_utf8_lossy(&reply).into_owned();
                        assert!(text.contains(&format!("MSA|AA|{id}")), "{text:?}");
                        acked.push(id);
                        acked_count.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    resent
                        .entry(id.clone())
                        .or_insert_with(|| chrono::Utc::now().timestamp_millis());
                    conn = None;
                }
            }
            done.store(true, Ordering::Relaxed);
            (acked, resent)
        })
    };
    // Three kill -9 at random moments while the gateway serves (once it acknowledged 30
    // messages since its start), each followed by a restart.
    let mut rng_state = std::process::id() as u64;
    let mut kills = 0;
    while !done.load(Ordering::Relaxed) && kills < 3 {
        let from = acked_count.load(Ordering::Relaxed);
        while acked_count.load(Ordering::Relaxed) < from + 30 && !done.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(1));
        }
        rng_state = rng_state.wrapping_mul(6364136223846793005).wrapping_add(1);
        std::thread::sleep(Duration::from_millis((rng_state >> 33) % 100));
        if done.load(Ordering::Relaxed) {
            break;
        }
        gateway.kill().expect("kill -9");
        let _ = gateway.wait();
        kills += 1;
        std::thread::sleep(Duration::from_millis(100));
        gateway = spawn();
    }
    let (acked, resent) = client.join().expect("client");
    let _ = gateway.kill();
    let _ = gateway.wait();
    assert_eq!(
        acked.len(),
        1000,
        "every message was acknowledged in the end"
    );
    assert!(kills >= 1, "the gateway was killed while the client sent");
    assert!(
        !resent.is_empty(),
        "a kill hit a message in flight (the client had to send again)"
    );
    let got = records(&brokers, "hl7", 1000);
    let mut count: BTreeMap<String, usize> = BTreeMap::new();
    for r in &got {
        *count.entry(id(r).to_string()).or_default() += 1;
    }
    for id in &acked {
        assert!(
            count.contains_key(id),
            "{id} was acknowledged but is not in Kafka"
        );
    }
    // A message Kafka had when the gateway died before answering is sent again by the client;
    // the restarted gateway read the dedup window back from Kafka and does not produce it
    // again: every message is there exactly once.
    for (id, n) in &count {
        assert_eq!(*n, 1, "{id} is in Kafka {n} times");
    }
    // Resent messages whose one copy was produced before the client gave up on it: the
    // killed gateway wrote them, and the restarted one answered their resend from the window.
    let from_window = got
        .iter()
        .filter(|r| resent.get(id(r)).is_some_and(|gave_up| r.at_ms < *gave_up))
        .count();
    eprintln!(
        "{kills} kills, {} messages resent, {from_window} of them already in Kafka; each once",
        resent.len()
    );
    assert!(
        from_window > 0,
        "a kill hit a message Kafka had and the gateway had not acknowledged"
    );
}
