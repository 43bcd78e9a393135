//! `vitalflow gateway mllp`: HL7 v2 over MLLP (bedside-monitor gateways sending IHE PCD-01
//! `ORU^R01`) into a Kafka topic the job reads.
//!
//! Each connection has a thread of its own. A framed message is checked (HL7 v2, an MSH with
//! a message control id), produced with the idempotent producer (`acks=all`), and answered
//! `MSA|AA` only once Kafka has acknowledged it: a message the sender saw accepted is in
//! Kafka, and one it did not see accepted it sends again. A repeated control id from the
//! same sending application within the dedup window is answered `AA` without being produced
//! twice. A message that is not HL7 v2, or too large, is answered `AR` (`AE` when Kafka
//! failed) with the reason in ERR, and goes to the dead-letter topic when there is one; the
//! connection goes on serving.

use super::dedup::Seen;
use crate::config::KafkaConfig;
use crate::hl7;
use anyhow::Context as _;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{
    BaseRecord, DeliveryResult, Producer as _, ProducerContext, ThreadedProducer,
};
use rdkafka::ClientContext;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// MLLP start block (VT), end block (FS), and the carriage return after it.
const START: u8 = 0x0b;
const END: u8 = 0x1c;
const CR: u8 = 0x0d;

/// What the Kafka key of a message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyBy {
    /// The patient identifier (PID-3, first repetition's ID number).
    Patient,
    /// The device identifier (the first OBX-18).
    Device,
    /// No key (partitions round-robin).
    None,
}

/// Settings of the MLLP gateway.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Kafka connection (brokers, pass-through properties such as TLS and SASL).
    pub kafka: KafkaConfig,
    /// Topic the messages go to.
    pub topic: String,
    /// Topic refused messages go to, with their reason (None: refused and logged only).
    pub dead_letter_topic: Option<String>,
    /// The Kafka key.
    pub key: KeyBy,
    /// A control id seen again from the same sender within this is not produced again.
    pub dedup_window: Duration,
    /// Frames larger than this are refused.
    pub max_frame: usize,
    /// How long to wait for Kafka's acknowledgement before answering `AE`.
    pub ack_timeout: Duration,
    /// TLS for the listener (every connection), from [`server_tls`]; plain TCP when None.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// With client certificates required: the names one of which a certificate must carry
    /// (see [`ClientAuth`]; empty: any the CA signed).
    pub allow: Vec<String>,
}

/// Which devices may connect over TLS (mutual TLS): those presenting a certificate signed by
/// one of the CA certificates in `ca`, and, when `allow` is not empty, whose certificate
/// names one of `allow` (its subject's common name, or a DNS or URI subject alternative
/// name: a device identifier such as an EUI-64, or a host name).
#[derive(Debug, Clone)]
pub struct ClientAuth {
    /// CA certificates (PEM) client certificates must chain to.
    pub ca: std::path::PathBuf,
    /// Names a client certificate must carry one of (empty: any the CA signed).
    pub allow: Vec<String>,
}

/// The listener's TLS settings from a certificate chain and its private key (PEM files), and
/// with `clients` the certificates devices must present; the error names the file and what
/// is wrong with it.
pub fn server_tls(
    cert: &std::path::Path,
    key: &std::path::Path,
    clients: Option<&ClientAuth>,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    crate::fhir::client::install_crypto();
    let pem_certs = |path: &std::path::Path| -> anyhow::Result<Vec<CertificateDer<'static>>> {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|i| i.collect::<Result<Vec<_>, _>>())
            .map_err(|e| anyhow::anyhow!("{}: not a PEM certificate chain: {e}", path.display()))?;
        anyhow::ensure!(
            !certs.is_empty(),
            "{}: no certificate in it",
            path.display()
        );
        Ok(certs)
    };
    let certs = pem_certs(cert)?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| anyhow::anyhow!("{}: not a PEM private key: {e}", key.display()))?;
    let builder = rustls::ServerConfig::builder();
    let builder = match clients {
        Some(c) => {
            let mut roots = rustls::RootCertStore::empty();
            for ca in pem_certs(&c.ca)? {
                roots
                    .add(ca)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", c.ca.display()))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
                .build()
                .map_err(|e| anyhow::anyhow!("{}: {e}", c.ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder
        .with_single_cert(certs, key)
        .map_err(|e| anyhow::anyhow!("{}: {e}", cert.display()))?;
    Ok(Arc::new(config))
}

/// The names a client certificate carries: its subject's common names and its DNS and URI
/// subject alternative names.
pub fn certificate_names(der: &[u8]) -> Vec<String> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let Ok((_, cert)) = X509Certificate::from_der(der) else {
        return Vec::new();
    };
    let mut names: Vec<String> = cert
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok().map(String::from))
        .collect();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::DNSName(d) | GeneralName::URI(d) => names.push(d.to_string()),
                _ => {}
            }
        }
    }
    names
}

/// Counters of a running gateway.
#[derive(Debug, Default)]
pub struct Counters {
    /// Messages acknowledged `AA` after Kafka acknowledged them.
    pub accepted: AtomicU64,
    /// Messages answered `AA` as repeats of one already in Kafka.
    pub duplicates: AtomicU64,
    /// Messages refused (`AR`) or failed (`AE`).
    pub refused: AtomicU64,
    /// Connections refused: a TLS handshake that failed (no client certificate, one no CA
    /// here signed) or a certificate not on the allow-list.
    pub refused_clients: AtomicU64,
}

/// Delivery reports record a message as accepted (in the dedup window) themselves, so a
/// success that comes after the sender was told `AE` still counts; and they go back to the
/// connection thread, if it still waits.
struct Acks {
    dedup: Arc<Dedup>,
}

/// What a delivery report answers: the connection waiting, and the dedup key (None for
/// dead letters).
type Delivery = (SyncSender<Result<(), String>>, Option<(String, String)>);

impl ClientContext for Acks {}

impl ProducerContext for Acks {
    type DeliveryOpaque = Box<Delivery>;

    fn delivery(&self, result: &DeliveryResult<'_>, d: Self::DeliveryOpaque) {
        let (tx, key) = *d;
        if let Some(key) = key {
            self.dedup.settle(key, result.is_ok());
        }
        let _ = tx.send(result.as_ref().map(|_| ()).map_err(|(e, _)| e.to_string()));
    }
}

/// The dedup window and the messages being delivered, shared by every connection: checking
/// a message and claiming it is one step, so the same message sent on two connections at
/// once is produced once.
struct Dedup {
    state: Mutex<(Seen, std::collections::HashSet<(String, String)>)>,
    settled: std::sync::Condvar,
    window: Duration,
}

/// What the dedup says of a message.
enum Claim {
    /// Accepted within the window: a duplicate.
    Seen,
    /// This connection delivers it.
    Mine,
    /// Another connection is still delivering it after the wait.
    Busy,
}

impl Dedup {
    /// Claims `key` for delivery, or says it was accepted; waits up to `wait` while another
    /// connection delivers the same message.
    fn claim(&self, key: &(String, String), wait: Duration) -> Claim {
        let deadline = std::time::Instant::now() + wait;
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            st.0.expire(self.window);
            if st.0.contains(key) {
                return Claim::Seen;
            }
            if !st.1.contains(key) {
                st.1.insert(key.clone());
                return Claim::Mine;
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Claim::Busy;
            }
            st = self
                .settled
                .wait_timeout(st, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// A delivery of `key` ended: accepted into the window on success; either way no longer
    /// in flight.
    fn settle(&self, key: (String, String), delivered: bool) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.1.remove(&key);
        if delivered && !self.window.is_zero() {
            st.0.insert(key);
        }
        drop(st);
        self.settled.notify_all();
    }

    /// Gives a claim back without delivering (the message could not even be queued).
    fn release(&self, key: &(String, String)) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.1.remove(key);
        drop(st);
        self.settled.notify_all();
    }
}

/// A running gateway: its address, counters, and the flag that stops it.
pub struct Gateway {
    /// The address it listens on (the port the OS chose for port 0).
    pub addr: SocketAddr,
    /// What it has done so far.
    pub counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Gateway {
    /// Stops accepting connections and waits for the listener to end.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the blocking accept.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Shared {
    settings: Settings,
    producer: ThreadedProducer<Acks>,
    /// (sending application, control id) accepted, and in flight.
    dedup: Arc<Dedup>,
    counters: Arc<Counters>,
    sequence: AtomicU64,
}

/// Starts the gateway; it serves until [`Gateway::stop`] (or `stop` is set).
pub fn start(settings: Settings, stop: Arc<AtomicBool>) -> anyhow::Result<Gateway> {
    let dedup = Arc::new(Dedup {
        state: Mutex::new(Default::default()),
        settled: std::sync::Condvar::new(),
        window: settings.dedup_window,
    });
    let producer: ThreadedProducer<Acks> =
        crate::kafka::client_config(&settings.kafka, &settings.kafka.brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            // Every ACK waits on this write: send at once, without Nagle's delay.
            .set("linger.ms", "0")
            .set("socket.nagle.disable", "true")
            .create_with_context(Acks {
                dedup: dedup.clone(),
            })
            .with_context(|| {
                format!(
                    "cannot create a Kafka producer for {}",
                    settings.kafka.brokers
                )
            })?;
    let mut topics = vec![settings.topic.as_str()];
    topics.extend(settings.dead_letter_topic.as_deref());
    super::check_topics(
        producer.client(),
        &settings.kafka.brokers,
        &topics,
        settings.kafka.startup_timeout,
    )?;
    let seen = if settings.dedup_window.is_zero() {
        Seen::default()
    } else {
        Seen::from_kafka(
            &settings.kafka,
            &settings.topic,
            settings.dedup_window,
            ("hl7-sending-application", "hl7-message-control-id"),
        )
        .context("cannot read the dedup window back from Kafka")?
    };
    tracing::info!(messages = seen.len(), "dedup window read back from Kafka");
    dedup.state.lock().unwrap_or_else(|p| p.into_inner()).0 = seen;
    let listener = TcpListener::bind(settings.listen)
        .with_context(|| format!("cannot listen on {}", settings.listen))?;
    let addr = listener.local_addr()?;
    let counters = Arc::new(Counters::default());
    let shared = Arc::new(Shared {
        settings,
        producer,
        dedup,
        counters: counters.clone(),
        sequence: AtomicU64::new(0),
    });
    let flag = stop.clone();
    let thread = std::thread::Builder::new()
        .name("mllp-listener".into())
        .spawn(move || {
            for conn in listener.incoming() {
                if flag.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let shared = shared.clone();
                let stop = flag.clone();
                let _ = std::thread::Builder::new()
                    .name("mllp-connection".into())
                    .spawn(move || {
                        if let Err(e) = connection(conn, &shared, &stop) {
                            tracing::debug!("mllp connection ended: {e}");
                        }
                    });
            }
        })?;
    tracing::info!(%addr, "MLLP gateway listening");
    Ok(Gateway {
        addr,
        counters,
        stop,
        thread: Some(thread),
    })
}

/// Serves one accepted connection, in TLS when the listener has it.
fn connection(conn: TcpStream, shared: &Shared, stop: &AtomicBool) -> std::io::Result<()> {
    let peer = conn
        .peer_addr()
        .map_or_else(|_| "unknown".to_string(), |a| a.to_string());
    // Reads wake up to see the stop flag; a TLS read that timed out resumes where it was.
    conn.set_read_timeout(Some(Duration::from_millis(500)))?;
    conn.set_nodelay(true)?;
    match &shared.settings.tls {
        Some(tls) => {
            let mut session =
                rustls::ServerConnection::new(tls.clone()).map_err(std::io::Error::other)?;
            let mut conn = conn;
            // The handshake first: a device that presents no certificate, or one not
            // trusted or not listed, sends nothing that reaches Kafka.
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while session.is_handshaking() {
                match session.complete_io(&mut conn) {
                    Ok(_) => {}
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) && std::time::Instant::now() < deadline
                            && !stop.load(Ordering::Relaxed) => {}
                    Err(e) => {
                        shared
                            .counters
                            .refused_clients
                            .fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(%peer, "MLLP client refused: TLS handshake failed: {e}");
                        return Ok(());
                    }
                }
            }
            let allow = &shared.settings.allow;
            if !allow.is_empty() {
                let names = session
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|c| certificate_names(c))
                    .unwrap_or_default();
                if !names.iter().any(|n| allow.contains(n)) {
                    shared
                        .counters
                        .refused_clients
                        .fetch_add(1, Ordering::Relaxed);
                    // Device identifiers stay out of the log by default, as tags; the names
                    // themselves at debug level, for whoever keeps the allow-list.
                    let tags: Vec<String> = names.iter().map(|n| crate::privacy::tag(n)).collect();
                    tracing::warn!(%peer, names = ?tags, "MLLP client refused: its certificate is not on the allow-list");
                    tracing::debug!(%peer, names = ?names, "MLLP client refused: its certificate's names");
                    session.send_close_notify();
                    let _ = session.complete_io(&mut conn);
                    return Ok(());
                }
            }
            serve(rustls::StreamOwned::new(session, conn), shared, stop, &peer)
        }
        None => serve(conn, shared, stop, &peer),
    }
}

/// Reads frames from one connection and answers each.
fn serve(
    mut conn: impl Read + Write,
    shared: &Shared,
    stop: &AtomicBool,
    peer: &str,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 64 * 1024];
    // Inside a frame; and whether this frame grew past the limit (its bytes are dropped).
    let (mut inside, mut oversized) = (false, false);
    while !stop.load(Ordering::Relaxed) {
        let n = match conn.read(&mut chunk) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) => return Err(e),
        };
        for &b in &chunk[..n] {
            if !inside {
                // Bytes outside a frame (garbage, keep-alives) are skipped.
                if b == START {
                    inside = true;
                    oversized = false;
                    buf.clear();
                }
                continue;
            }
            if b == CR && buf.last() == Some(&END) {
                buf.pop();
                inside = false;
                let reply = if oversized {
                    shared.counters.refused.fetch_add(1, Ordering::Relaxed);
                    nak(
                        None,
                        "AR",
                        &format!(
                            "message larger than {} bytes: refused",
                            shared.settings.max_frame
                        ),
                    )
                } else {
                    handle(&buf, shared, peer)
                };
                conn.write_all(&frame(&reply))?;
                conn.flush()?;
                buf.clear();
                continue;
            }
            if buf.len() >= shared.settings.max_frame {
                oversized = true;
                // Keep the last byte: the end block may follow.
                buf.clear();
            }
            buf.push(b);
        }
    }
    Ok(())
}

/// An MLLP frame around `message`.
pub fn frame(message: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 3);
    out.push(START);
    out.extend_from_slice(message.as_bytes());
    out.extend_from_slice(&[END, CR]);
    out
}

/// What the sender's MSH says, for the acknowledgement and the dedup key.
struct Msh {
    sending_app: String,
    sending_facility: String,
    receiving_app: String,
    receiving_facility: String,
    control_id: String,
    version: String,
    message_type: String,
}

fn header(m: &hl7::Hl7<'_>) -> Option<Msh> {
    let msh = m.segment("MSH")?;
    let f = |n: usize| m.field(msh, n).to_string();
    Some(Msh {
        sending_app: f(3),
        sending_facility: f(4),
        receiving_app: f(5),
        receiving_facility: f(6),
        control_id: f(10),
        version: f(12),
        message_type: f(9),
    })
}

/// Checks, produces and acknowledges one message; returns the reply.
fn handle(bytes: &[u8], shared: &Shared, peer: &str) -> String {
    let refuse = |code: &str, reason: String, h: Option<&Msh>| {
        shared.counters.refused.fetch_add(1, Ordering::Relaxed);
        dead_letter(bytes, &reason, shared, peer);
        nak(h, code, &reason)
    };
    let Some(text) = hl7::text(bytes) else {
        return refuse(
            "AR",
            "not an HL7 v2 message: no MSH segment at its start".into(),
            None,
        );
    };
    let parsed = match hl7::parse(&text) {
        Ok(p) => p,
        Err(e) => return refuse("AR", e, None),
    };
    let Some(h) = header(&parsed) else {
        return refuse("AR", "no MSH segment".into(), None);
    };
    if h.control_id.is_empty() {
        return refuse(
            "AR",
            "MSH-10 (message control id) is empty".into(),
            Some(&h),
        );
    }
    let key = (h.sending_app.clone(), h.control_id.clone());
    match shared.dedup.claim(&key, shared.settings.ack_timeout) {
        Claim::Seen => {
            shared.counters.duplicates.fetch_add(1, Ordering::Relaxed);
            return ack(&h, "AA", None);
        }
        Claim::Busy => {
            shared.counters.refused.fetch_add(1, Ordering::Relaxed);
            return nak(
                Some(&h),
                "AE",
                "the same message is being delivered on another connection: send it again later",
            );
        }
        Claim::Mine => {}
    }
    let kafka_key = match shared.settings.key {
        KeyBy::Patient => (parsed.segment("PID")).map(|s| {
            parsed
                .decode(parsed.component(parsed.field(s, 3), 1))
                .into_owned()
        }),
        KeyBy::Device => (parsed.segments())
            .filter(|(name, _)| *name == "OBX")
            .map(|(_, s)| parsed.component(parsed.field(s, 18), 1))
            .find(|d| !d.is_empty())
            .map(|d| parsed.decode(d).into_owned()),
        KeyBy::None => None,
    }
    .filter(|k| !k.is_empty());
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: "hl7-sending-application",
            value: Some(h.sending_app.as_bytes()),
        })
        .insert(Header {
            key: "hl7-message-control-id",
            value: Some(h.control_id.as_bytes()),
        })
        .insert(Header {
            key: "hl7-message-type",
            value: Some(h.message_type.as_bytes()),
        });
    let payload = text.as_bytes();
    let (tx, rx) = sync_channel(1);
    let mut record =
        BaseRecord::with_opaque_to(&shared.settings.topic, Box::new((tx, Some(key.clone()))))
            .payload(payload)
            .headers(headers);
    if let Some(k) = &kafka_key {
        record = record.key(k.as_bytes());
    }
    if let Err((e, _)) = shared.producer.send(record) {
        shared.dedup.release(&key);
        return refuse("AE", format!("Kafka refused the message: {e}"), Some(&h));
    }
    match rx.recv_timeout(shared.settings.ack_timeout) {
        // The delivery report put it in the dedup window.
        Ok(Ok(())) => {
            shared.counters.accepted.fetch_add(1, Ordering::Relaxed);
            ack(&h, "AA", None)
        }
        // Not acknowledged: the sender sends it again. The claim stays until the delivery
        // report comes: a resend waits for it, and a late success answers it `AA` without
        // a second copy.
        Ok(Err(e)) => {
            shared.counters.refused.fetch_add(1, Ordering::Relaxed);
            nak(
                Some(&h),
                "AE",
                &format!("Kafka did not accept the message: {e}"),
            )
        }
        Err(_) => {
            shared.counters.refused.fetch_add(1, Ordering::Relaxed);
            nak(
                Some(&h),
                "AE",
                &format!(
                    "Kafka did not acknowledge the message within {:?}",
                    shared.settings.ack_timeout
                ),
            )
        }
    }
}

/// Sends a refused message to the dead-letter topic (fire and forget: the sender was told).
fn dead_letter(bytes: &[u8], reason: &str, shared: &Shared, peer: &str) {
    // The reason may quote the message (a segment's start): it goes to the sender and the
    // dead letter, not to the log.
    tracing::warn!("mllp: message refused (the reason is in the dead letter and the ACK)");
    let Some(topic) = &shared.settings.dead_letter_topic else {
        return;
    };
    let json = super::dead_letter_json(
        bytes,
        format!("mllp://{peer}"),
        shared.sequence.fetch_add(1, Ordering::Relaxed),
        Vec::new(),
        reason.to_string(),
    );
    let (tx, _rx) = sync_channel(1);
    let record: BaseRecord<'_, (), String, _> =
        BaseRecord::with_opaque_to(topic, Box::new((tx, None))).payload(&json);
    if let Err((e, _)) = shared.producer.send(record) {
        tracing::error!("mllp: cannot send a dead letter: {e}");
    }
}

/// An acknowledgement (`ACK`) of `h` with `code` (`AA`, `AE`, `AR`) and, for errors, an ERR
/// segment with the reason.
fn ack(h: &Msh, code: &str, reason: Option<&str>) -> String {
    let now = chrono::Utc::now().format("%Y%m%d%H%M%S%.3f+0000");
    let escape = |s: &str| {
        s.replace('\\', "\\E\\")
            .replace('|', "\\F\\")
            .replace('^', "\\S\\")
            .replace('~', "\\R\\")
            .replace('&', "\\T\\")
            .replace(['\r', '\n'], " ")
    };
    let mut out = format!(
        "MSH|^~\\&|{}|{}|{}|{}|{now}||ACK^{}^ACK|ACK-{}|P|{}\rMSA|{code}|{}\r",
        h.receiving_app,
        h.receiving_facility,
        h.sending_app,
        h.sending_facility,
        h.message_type.split('^').nth(1).unwrap_or(""),
        h.control_id,
        if h.version.is_empty() {
            "2.6"
        } else {
            &h.version
        },
        h.control_id,
    );
    if let Some(r) = reason {
        // ERR-3 HL70357 code (100 segment sequence error / 207 application internal error),
        // ERR-4 severity, ERR-8 the reason for people.
        let (c, text) = if code == "AR" {
            ("100", "Segment sequence error")
        } else {
            ("207", "Application internal error")
        };
        out.push_str(&format!("ERR|||{c}^{text}^HL70357|E||||{}\r", escape(r)));
    }
    out
}

/// A negative acknowledgement; without a readable MSH, the reply's header is empty.
fn nak(h: Option<&Msh>, code: &str, reason: &str) -> String {
    let empty = Msh {
        sending_app: String::new(),
        sending_facility: String::new(),
        receiving_app: String::new(),
        receiving_facility: String::new(),
        control_id: String::new(),
        version: String::new(),
        message_type: String::new(),
    };
    ack(h.unwrap_or(&empty), code, Some(reason))
}
