//! `vitalflow gateway mqtt`: device readings published over MQTT into a Kafka topic the job
//! reads.
//!
//! The gateway is an MQTT 5 client with a persistent session (clean start off, a session
//! expiry) and manual acknowledgements: each QoS 1 message is produced with the idempotent
//! producer (`acks=all`) and PUBACKed only once Kafka has it, in the order the messages came
//! (MQTT asks for that order). A message the gateway did not acknowledge — it stopped, crashed
//! or lost the connection — is delivered again by the broker when the session resumes, so
//! nothing the broker accepted is lost; one that Kafka had when the gateway died may be in
//! Kafka twice, which the job's Observations take once (a version keeps the first value of
//! one time). The broker's receive maximum bounds the messages waiting for Kafka.
//!
//! Topic templates (`devices/{device}/vitals`) name levels: each becomes a Kafka header, and
//! one of them may be the key. A payload that is not the expected content (JSON, HL7 v2) is
//! dead-lettered with its topic and reason, then acknowledged: it is kept, not lost, and
//! not redelivered forever. Several gateways share the load with a shared subscription
//! (`$share/<group>/<filter>`).

use super::topic::TopicTemplate;
use crate::config::KafkaConfig;
use crate::hl7;
use anyhow::Context as _;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;
use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, Filter, Packet, Publish, SubscribeReasonCode};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{Client, ConnectionError, Event, MqttOptions};
use rumqttc::{TlsConfiguration, Transport};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What a payload must be to be produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Content {
    /// A JSON document (the device templates' input).
    Json,
    /// An HL7 v2 message (MSH first).
    Hl7,
    /// Anything: the job's normalization decides.
    Any,
}

/// Where the MQTT broker is and how to log in. Its `Debug` shows no password.
#[derive(Clone)]
pub struct BrokerSettings {
    /// Host name or address.
    pub host: String,
    /// Port (1883, 8883 with TLS).
    pub port: u16,
    /// TLS (`mqtts://`).
    pub tls: bool,
    /// CA certificates (PEM) the broker's certificate must chain to; the system's otherwise.
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM) for brokers that ask for one.
    pub client_auth: Option<(PathBuf, PathBuf)>,
    /// User name and password.
    pub credentials: Option<(String, String)>,
}

impl std::fmt::Debug for BrokerSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerSettings")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("ca_file", &self.ca_file)
            .field("client_auth", &self.client_auth)
            .field(
                "credentials",
                &self.credentials.as_ref().map(|(user, _)| (user, "***")),
            )
            .finish()
    }
}

impl BrokerSettings {
    /// Parses `mqtt://host:port` or `mqtts://host:port` (port defaults 1883 / 8883).
    pub fn from_url(url: &str) -> Result<Self, String> {
        let u = url::Url::parse(url).map_err(|e| format!("MQTT broker \"{url}\": {e}"))?;
        let tls = match u.scheme() {
            "mqtt" | "tcp" => false,
            "mqtts" | "ssl" => true,
            s => {
                return Err(format!(
                    "MQTT broker \"{url}\": scheme \"{s}\" (use mqtt:// or mqtts://)"
                ))
            }
        };
        let host = u
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| format!("MQTT broker \"{url}\": no host"))?;
        if !u.username().is_empty() || u.password().is_some() {
            return Err(format!(
                "MQTT broker \"{url}\": give the user with --username and the password in \
                 VITALFLOW_MQTT_PASSWORD, not in the URL (it would show in process lists)"
            ));
        }
        Ok(Self {
            host: host.trim_matches(['[', ']']).to_string(),
            port: u.port().unwrap_or(if tls { 8883 } else { 1883 }),
            tls,
            ca_file: None,
            client_auth: None,
            credentials: None,
        })
    }
}

/// Settings of the MQTT gateway.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The broker.
    pub broker: BrokerSettings,
    /// MQTT client id: the session the broker keeps (and redelivers from) across restarts.
    pub client_id: String,
    /// Topic templates subscribed to.
    pub subscriptions: Vec<TopicTemplate>,
    /// Shared subscription group: gateways of one group share the messages.
    pub share_group: Option<String>,
    /// Kafka connection.
    pub kafka: KafkaConfig,
    /// Topic the messages go to.
    pub topic: String,
    /// Topic refused messages go to, with their reason: the publisher never learns that a
    /// message was refused, so it is kept there, not dropped.
    pub dead_letter_topic: String,
    /// Name of the template level whose value is the Kafka key (None: no key).
    pub key: Option<String>,
    /// What a payload must be.
    pub content: Content,
    /// Most messages the broker may have in flight to the gateway (MQTT receive maximum).
    pub receive_maximum: u16,
    /// How long the broker keeps the session (and queues messages) while the gateway is away.
    pub session_expiry: Duration,
    /// Largest message accepted from the broker, bytes.
    pub max_payload: usize,
    /// A message (topic and payload) already in Kafka within this is acknowledged without
    /// being produced again: what the broker redelivers after a gateway restart (0: off).
    pub dedup_window: Duration,
}

/// Counters of a running gateway.
#[derive(Debug, Default)]
pub struct Counters {
    /// Messages PUBACKed after Kafka acknowledged them.
    pub accepted: AtomicU64,
    /// Messages dead-lettered (then acknowledged).
    pub refused: AtomicU64,
    /// Connections (re)established.
    pub connects: AtomicU64,
    /// Messages received (redeliveries included).
    pub received: AtomicU64,
    /// Redelivered messages Kafka already had: acknowledged, not produced again.
    pub duplicates: AtomicU64,
}

/// The digests of messages in Kafka within the dedup window, and of those on their way:
/// a redelivery of one on its way is acknowledged with it.
#[derive(Default)]
struct Digests {
    seen: super::dedup::Seen,
    /// Digest → the sequence numbers of its redeliveries waiting for its delivery.
    in_flight: std::collections::HashMap<(String, String), Vec<u64>>,
}

/// The dedup key of a message: its topic and a digest of its payload (MQTT 5 gives a
/// message no id of its own; a redelivery is the same bytes on the same topic).
fn digest(topic: &str, payload: &[u8]) -> (String, String) {
    use sha2::{Digest as _, Sha256};
    let mut h = Sha256::new();
    h.update(topic.as_bytes());
    h.update([0]);
    h.update(payload);
    (
        topic.to_string(),
        h.finalize()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
    )
}

/// Messages received and not yet acknowledged, in the order they came.
#[derive(Default)]
struct Pending {
    /// Sequence number of the front entry.
    front: u64,
    /// (the message, whether Kafka has it).
    queue: VecDeque<(Publish, bool)>,
}

/// Shared between the MQTT loop and librdkafka's delivery thread.
struct State {
    client: Client,
    pending: Mutex<Pending>,
    acking: Mutex<()>,
    counters: Arc<Counters>,
    failure: Mutex<Option<String>>,
    stop: AtomicBool,
    digests: Mutex<Digests>,
    window: Duration,
}

impl State {
    /// Marks message `seq` as in Kafka and acknowledges every message before the first one
    /// still waiting. Called on librdkafka's threads only, never on the MQTT loop's: an
    /// acknowledgement waits when the request channel is full, and the MQTT loop drains it
    /// (a slower acknowledgement holds the broker back).
    fn delivered(&self, seq: u64, refused: bool) {
        let counter = if refused {
            &self.counters.refused
        } else {
            &self.counters.accepted
        };
        self.delivered_as(seq, counter);
    }

    /// Acknowledges (in order) a redelivered message Kafka already has: counted as a
    /// duplicate, not as accepted.
    fn delivered_again(&self, seq: u64) {
        self.delivered_as(seq, &self.counters.duplicates);
        let n = self.counters.duplicates.load(Ordering::Relaxed);
        if n == 1 || n % 100 == 0 {
            tracing::info!(
                duplicates = n,
                "redelivered messages Kafka already had: acknowledged without a second copy"
            );
        }
    }

    fn delivered_as(&self, seq: u64, counter: &AtomicU64) {
        // Held while popping and sending, so acknowledgements leave in the order messages came
        // even when a flush serves delivery reports on a second thread.
        let _order = self.acking.lock().unwrap_or_else(|e| e.into_inner());
        let ready: Vec<Publish> = {
            let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            let Some(i) = seq.checked_sub(p.front) else {
                return;
            };
            if let Some(e) = p.queue.get_mut(i as usize) {
                e.1 = true;
            }
            let mut ready = Vec::new();
            while p.queue.front().is_some_and(|e| e.1) {
                ready.push(p.queue.pop_front().expect("front").0);
                p.front += 1;
            }
            ready
        };
        counter.fetch_add(1, Ordering::Relaxed);
        for publish in ready {
            if let Err(e) = self.client.ack(&publish) {
                self.fail(format!("cannot acknowledge a message to the broker: {e}"));
            }
        }
    }

    fn fail(&self, reason: String) {
        let mut f = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        if f.is_none() {
            tracing::error!("mqtt gateway: {reason}");
            *f = Some(reason);
        }
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Delivery reports: the sequence number, and whether the record was a dead letter.
struct Deliveries(Arc<State>);

impl ClientContext for Deliveries {}

/// What a delivery report carries: the sequence number, whether the record is a dead
/// letter, and the message's dedup key.
type Opaque = (u64, bool, Option<(String, String)>);

impl ProducerContext for Deliveries {
    type DeliveryOpaque = Box<Opaque>;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: Self::DeliveryOpaque) {
        let (seq, dead_letter, key) = *opaque;
        match result {
            Ok(_) => {
                // In the window from now on, and its redeliveries waiting for it go with it.
                let waiting = key
                    .map(|k| {
                        let mut d = self.0.digests.lock().unwrap_or_else(|e| e.into_inner());
                        let waiting = d.in_flight.remove(&k).unwrap_or_default();
                        if !self.0.window.is_zero() {
                            d.seen.insert(k);
                        }
                        waiting
                    })
                    .unwrap_or_default();
                self.0.delivered(seq, dead_letter);
                for w in waiting {
                    self.0.delivered_again(w);
                }
            }
            // librdkafka retried until message.timeout.ms: stop without acknowledging, so the
            // broker delivers this message (and every later one) again when the gateway is
            // back; acknowledging later ones would not be in order.
            Err((e, _)) => self.0.fail(format!(
                "Kafka did not take a message: {e}; stopping, the broker redelivers what was not acknowledged"
            )),
        }
    }
}

/// A running gateway.
pub struct Gateway {
    /// What it has done so far.
    pub counters: Arc<Counters>,
    state: Arc<State>,
    thread: Option<std::thread::JoinHandle<()>>,
    producer: Arc<ThreadedProducer<Deliveries>>,
}

impl Gateway {
    /// Why the gateway stopped on its own (Kafka failed), if it did.
    pub fn failure(&self) -> Option<String> {
        self.state
            .failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether the gateway stopped (asked to, or failed).
    pub fn stopped(&self) -> bool {
        self.state.stop.load(Ordering::Relaxed)
    }

    /// Stops taking messages, waits (up to `drain`) for Kafka to acknowledge those taken and
    /// acknowledges them to the broker, then disconnects. Messages not acknowledged by then
    /// are redelivered by the broker to the next gateway of the session.
    pub fn stop(mut self, drain: Duration) -> Option<String> {
        self.state.stop.store(true, Ordering::Relaxed);
        let _ = self.producer.flush(drain);
        let _ = self.state.client.try_disconnect();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.failure()
    }
}

fn options(s: &Settings) -> anyhow::Result<MqttOptions> {
    let b = &s.broker;
    let mut o = MqttOptions::new(&s.client_id, &b.host, b.port);
    o.set_clean_start(false)
        .set_session_expiry_interval(Some(s.session_expiry.as_secs().min(u32::MAX as u64) as u32))
        .set_manual_acks(true)
        .set_keep_alive(Duration::from_secs(30))
        .set_receive_maximum(Some(s.receive_maximum))
        .set_max_packet_size(Some(s.max_payload.saturating_add(64 * 1024) as u32))
        .set_connection_timeout(10);
    if let Some((user, password)) = &b.credentials {
        o.set_credentials(user, password);
    }
    if b.tls {
        crate::fhir::client::install_crypto();
        let read = |p: &PathBuf, what: &str| {
            std::fs::read(p).with_context(|| format!("cannot read the {what} {}", p.display()))
        };
        let tls = match &b.ca_file {
            Some(ca) => TlsConfiguration::Simple {
                ca: read(ca, "CA file")?,
                alpn: None,
                client_auth: match &b.client_auth {
                    Some((cert, key)) => {
                        Some((read(cert, "client certificate")?, read(key, "client key")?))
                    }
                    None => None,
                },
            },
            None => {
                anyhow::ensure!(
                    b.client_auth.is_none(),
                    "a client certificate needs --ca-file too"
                );
                let mut roots = rustls::RootCertStore::empty();
                let found = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(found.certs);
                anyhow::ensure!(
                    !roots.is_empty(),
                    "no system CA certificates found: give the broker's CA with --ca-file"
                );
                TlsConfiguration::Rustls(Arc::new(
                    rustls::ClientConfig::builder()
                        .with_root_certificates(roots)
                        .with_no_client_auth(),
                ))
            }
        };
        o.set_transport(Transport::tls_with_config(tls));
    }
    Ok(o)
}

/// Connects, subscribes, and serves until [`Gateway::stop`] or a Kafka failure. Start-up
/// fails with the broker's reason when the first connection or a subscription is refused.
pub fn start(settings: Settings) -> anyhow::Result<Gateway> {
    // Room for the acknowledgements of every message the broker may have in flight.
    let requests = settings.receive_maximum as usize + 64;
    let (client, mut connection) = Client::new(options(&settings)?, requests);
    let counters = Arc::new(Counters::default());
    let state = Arc::new(State {
        client,
        pending: Mutex::new(Pending::default()),
        acking: Mutex::new(()),
        counters: counters.clone(),
        failure: Mutex::new(None),
        stop: AtomicBool::new(false),
        digests: Mutex::new(Digests::default()),
        window: settings.dedup_window,
    });
    let producer: Arc<ThreadedProducer<Deliveries>> = Arc::new(
        crate::kafka::client_config(&settings.kafka, &settings.kafka.brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            // Many messages are in flight at once (the receive maximum): batch them briefly.
            .set("linger.ms", "2")
            .create_with_context(Deliveries(state.clone()))
            .with_context(|| {
                format!(
                    "cannot create a Kafka producer for {}",
                    settings.kafka.brokers
                )
            })?,
    );
    super::check_topics(
        producer.client(),
        &settings.kafka.brokers,
        &[&settings.topic, &settings.dead_letter_topic],
        settings.kafka.startup_timeout,
    )?;
    if !settings.dedup_window.is_zero() {
        let seen = super::dedup::Seen::from_kafka(
            &settings.kafka,
            &settings.topic,
            settings.dedup_window,
            ("mqtt-topic", DIGEST_HEADER),
        )
        .context("cannot read the dedup window back from Kafka")?;
        tracing::info!(messages = seen.len(), "dedup window read back from Kafka");
        state.digests.lock().unwrap_or_else(|e| e.into_inner()).seen = seen;
    }
    let filters: Vec<Filter> = settings
        .subscriptions
        .iter()
        .map(|t| {
            let f = t.filter();
            Filter::new(
                match &settings.share_group {
                    Some(g) => format!("$share/{g}/{f}"),
                    None => f,
                },
                QoS::AtLeastOnce,
            )
        })
        .collect();
    // The first connection and subscription, here: a refusal stops start-up with its reason.
    let mut subscribed = false;
    while !subscribed {
        match connection.recv() {
            Ok(Ok(Event::Incoming(Packet::ConnAck(ack)))) => {
                anyhow::ensure!(
                    ack.code == ConnectReturnCode::Success,
                    "the MQTT broker refused the connection: {:?}",
                    ack.code
                );
                counters.connects.fetch_add(1, Ordering::Relaxed);
                state
                    .client
                    .try_subscribe_many(filters.clone())
                    .context("cannot subscribe")?;
            }
            Ok(Ok(Event::Incoming(Packet::SubAck(ack)))) => {
                check_suback(&ack.return_codes, &filters)?;
                subscribed = true;
            }
            // A session the broker kept may deliver before the SUBACK: served after start-up
            // like any other (the loop below sees it first thing).
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                handle(p, &settings, &state, &producer);
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                return Err(anyhow::anyhow!(
                    "cannot connect to the MQTT broker {}:{}: {}",
                    settings.broker.host,
                    settings.broker.port,
                    connection_reason(&e)
                ))
            }
            Err(_) => anyhow::bail!("the MQTT connection closed during start-up"),
        }
    }
    tracing::info!(
        broker = %format!("{}:{}", settings.broker.host, settings.broker.port),
        "MQTT gateway subscribed"
    );
    let thread = {
        let (state, producer) = (state.clone(), producer.clone());
        std::thread::Builder::new()
            .name("mqtt-gateway".into())
            .spawn(move || serve(connection, &settings, &filters, &state, &producer))?
    };
    Ok(Gateway {
        counters,
        state,
        thread: Some(thread),
        producer,
    })
}

fn check_suback(codes: &[SubscribeReasonCode], filters: &[Filter]) -> anyhow::Result<()> {
    for (code, filter) in codes.iter().zip(filters) {
        match code {
            SubscribeReasonCode::Success(QoS::AtLeastOnce | QoS::ExactlyOnce) => {}
            SubscribeReasonCode::Success(QoS::AtMostOnce) => anyhow::bail!(
                "the MQTT broker granted only QoS 0 for \"{}\": messages could be lost",
                filter.path
            ),
            other => anyhow::bail!(
                "the MQTT broker refused the subscription \"{}\": {other:?}",
                filter.path
            ),
        }
    }
    Ok(())
}

fn connection_reason(e: &ConnectionError) -> String {
    match e {
        ConnectionError::ConnectionRefused(code) => format!("refused: {code:?}"),
        other => other.to_string(),
    }
}

/// The MQTT loop after start-up: takes messages until stopped, reconnecting (the broker
/// redelivers what was not acknowledged) when the connection drops.
fn serve(
    mut connection: rumqttc::v5::Connection,
    settings: &Settings,
    filters: &[Filter],
    state: &Arc<State>,
    producer: &ThreadedProducer<Deliveries>,
) {
    let mut backoff = Duration::from_millis(100);
    for event in connection.iter() {
        match event {
            Ok(Event::Incoming(Packet::Publish(p))) => {
                // Stopping: not produced, not acknowledged; the session keeps it.
                if !state.stop.load(Ordering::Relaxed) {
                    handle(p, settings, state, producer);
                }
            }
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                backoff = Duration::from_millis(100);
                state.counters.connects.fetch_add(1, Ordering::Relaxed);
                if !ack.session_present {
                    // The broker lost the session (expired): subscribe again.
                    if let Err(e) = state.client.try_subscribe_many(filters.to_vec()) {
                        state.fail(format!("cannot subscribe again: {e}"));
                    }
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                if let Err(e) = check_suback(&ack.return_codes, filters) {
                    state.fail(e.to_string());
                }
            }
            Ok(Event::Incoming(Packet::Disconnect(d))) => {
                tracing::warn!(
                    "the MQTT broker disconnected the gateway: {:?}",
                    d.reason_code
                );
            }
            Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => break,
            Ok(_) => {}
            Err(e) => {
                if state.stop.load(Ordering::Relaxed) {
                    break;
                }
                tracing::warn!(
                    "MQTT connection lost ({}); reconnecting in {backoff:?}",
                    connection_reason(&e)
                );
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// The header carrying a message's payload digest (its dedup key with `mqtt-topic`).
const DIGEST_HEADER: &str = "mqtt-digest";

/// Checks one message and produces it (or its dead letter); the delivery report acknowledges.
/// A redelivery of a message Kafka already has (within the dedup window) is acknowledged
/// without a second copy; one of a message still on its way, with it.
fn handle(p: Publish, s: &Settings, state: &Arc<State>, producer: &ThreadedProducer<Deliveries>) {
    let received = state.counters.received.fetch_add(1, Ordering::Relaxed);
    let topic = String::from_utf8_lossy(&p.topic).into_owned();
    let problem = problem(&p, s);
    let key = problem.is_none().then(|| digest(&topic, &p.payload));
    let out = match problem {
        Some(reason) => {
            // The reason may quote the payload: it goes to the dead letter, not to the log.
            tracing::warn!("mqtt: message refused (the reason is in the dead letter)");
            dead_letter(&s.dead_letter_topic, &p, &topic, reason, received)
        }
        None => record(&p, s, &topic, key.as_ref().map(|k| k.1.as_str())),
    };
    // Under the digests' lock: a delivery report cannot settle the original between the
    // check and the queueing of its redelivery.
    let mut digests = state.digests.lock().unwrap_or_else(|e| e.into_inner());
    if key.is_some() {
        digests.seen.expire(s.dedup_window);
    }
    let seq = {
        let mut pending = state.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.queue.push_back((p, false));
        pending.front + pending.queue.len() as u64 - 1
    };
    if let Some(k) = &key {
        if digests.seen.contains(k) {
            drop(digests);
            // Acknowledgements are sent off the MQTT loop's thread (see State::delivered).
            let state = state.clone();
            std::thread::spawn(move || state.delivered_again(seq));
            return;
        }
        if let Some(waiting) = digests.in_flight.get_mut(k) {
            waiting.push(seq);
            return;
        }
        digests.in_flight.insert(k.clone(), Vec::new());
    }
    drop(digests);
    produce(producer, state, seq, out, key);
}

/// What is wrong with a message, if anything.
fn problem(p: &Publish, s: &Settings) -> Option<String> {
    if p.payload.len() > s.max_payload {
        return Some(format!(
            "payload of {} bytes is larger than {} bytes",
            p.payload.len(),
            s.max_payload
        ));
    }
    match s.content {
        Content::Json => serde_json::from_slice::<serde::de::IgnoredAny>(&p.payload)
            .err()
            .map(|e| format!("payload is not JSON: {e}")),
        Content::Hl7 => match hl7::text(&p.payload) {
            None => Some("payload is not an HL7 v2 message: no MSH segment at its start".into()),
            Some(text) => hl7::parse(&text).err(),
        },
        Content::Any => None,
    }
}

/// The Kafka record of an accepted message: the template's levels and the MQTT 5 user
/// properties as headers, the key level as key.
fn record<'a>(p: &Publish, s: &'a Settings, topic: &str, digest: Option<&str>) -> Outgoing<'a> {
    let mut headers = OwnedHeaders::new().insert(Header {
        key: "mqtt-topic",
        value: Some(topic.as_bytes()),
    });
    if let Some(d) = digest {
        headers = headers.insert(Header {
            key: DIGEST_HEADER,
            value: Some(d.as_bytes()),
        });
    }
    let mut key = None;
    let captures = s.subscriptions.iter().find_map(|t| t.captures(topic));
    for (name, value) in captures.iter().flatten() {
        headers = headers.insert(Header {
            key: name,
            value: Some(value.as_bytes()),
        });
        if s.key.as_deref() == Some(*name) && !value.is_empty() {
            key = Some(value.as_bytes().to_vec());
        }
    }
    for (k, v) in p.properties.iter().flat_map(|p| &p.user_properties) {
        headers = headers.insert(Header {
            key: k,
            value: Some(v.as_bytes()),
        });
    }
    Outgoing {
        topic: &s.topic,
        key,
        payload: p.payload.to_vec(),
        headers,
        dead_letter: false,
    }
}

/// The dead letter of a refused message: its topic, the reason, the payload.
fn dead_letter<'a>(
    dl_topic: &'a str,
    p: &Publish,
    topic: &str,
    reason: String,
    received: u64,
) -> Outgoing<'a> {
    let json = super::dead_letter_json(
        &p.payload,
        format!("mqtt://{topic}"),
        received,
        vec![("mqtt-topic".into(), topic.as_bytes().to_vec())],
        reason,
    );
    Outgoing {
        topic: dl_topic,
        key: None,
        payload: json.into_bytes(),
        headers: OwnedHeaders::new(),
        dead_letter: true,
    }
}

/// A record on its way to Kafka.
struct Outgoing<'a> {
    topic: &'a str,
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
    headers: OwnedHeaders,
    dead_letter: bool,
}

fn produce(
    producer: &ThreadedProducer<Deliveries>,
    state: &State,
    seq: u64,
    out: Outgoing<'_>,
    key: Option<(String, String)>,
) {
    let mut record = BaseRecord::with_opaque_to(out.topic, Box::new((seq, out.dead_letter, key)))
        .payload(&out.payload)
        .headers(out.headers);
    if let Some(k) = &out.key {
        record = record.key(k);
    }
    loop {
        match producer.send(record) {
            Ok(()) => return,
            // The local queue is full (Kafka slower than the broker): wait for room.
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                std::thread::sleep(Duration::from_millis(5));
                record = r;
            }
            Err((e, _)) => {
                state.fail(format!("Kafka refused a message: {e}"));
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_settings_never_show_the_password() {
        let mut b = BrokerSettings::from_url("mqtts://broker.example.org").expect("url");
        b.credentials = Some(("gateway".into(), "hunter2".into()));
        let shown = format!("{b:?}");
        assert!(
            shown.contains("gateway") && !shown.contains("hunter2"),
            "{shown}"
        );
        assert_eq!(b.port, 8883);
    }
}
