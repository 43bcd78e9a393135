//! `vitalflow gateway`: hospital device protocols into the Kafka topic a job reads.

use super::*;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;
use vitalflow::gateway::topic::TopicTemplate;
use vitalflow::gateway::{mllp, mqtt};

/// Help shown after `vitalflow gateway mllp --help`.
pub const MLLP_HELP: &str = "Listens for HL7 v2 messages over MLLP (bedside-monitor gateways \
sending IHE PCD-01 ORU^R01), produces each to a Kafka topic with the idempotent producer \
(acks=all) and answers MSA|AA only after Kafka acknowledged it. A message that is not HL7 v2 \
(or is larger than --max-frame) is answered AR with the reason in ERR and goes to \
--dead-letter-topic; a Kafka failure is answered AE, and the sender sends again. A control id \
repeated by the same sending application within --dedup-window is acknowledged without being \
produced twice; the window's control ids are read back from the topic at start-up, so a \
message a killed gateway wrote but did not acknowledge is not written again when resent. With --tls-cert and --tls-key every connection is TLS. Kafka properties (TLS, SASL) come from VITALFLOW_KAFKA__<PROPERTY>.

Example:
  vitalflow gateway mllp --listen 0.0.0.0:2575 --brokers kafka:9092 --topic vitals-hl7 \\
      --dead-letter-topic vitals-hl7-refused --key patient";

/// Help shown after `vitalflow gateway mqtt --help`.
pub const MQTT_HELP: &str = "Subscribes to MQTT topics (MQTT 5, QoS 1, a persistent session \
named by --client-id) and produces each message to a Kafka topic with the idempotent producer \
(acks=all); a message is acknowledged (PUBACK) only once Kafka has it, so what the gateway did \
not acknowledge - it stopped, crashed, lost the connection - the broker delivers again. A topic \
template such as devices/{device}/vitals subscribes to devices/+/vitals and sends the level as \
the Kafka header \"device\" (and, with --key device, as the key); mqtt-topic and MQTT 5 user \
properties are headers too. A payload that is not --content (json, hl7, any) goes to \
--dead-letter-topic with its topic and reason. Gateways with the same --share-group share the \
messages ($share/<group>/...). The password comes from VITALFLOW_MQTT_PASSWORD; Kafka \
properties (TLS, SASL) from VITALFLOW_KAFKA__<PROPERTY>.

Example:
  VITALFLOW_MQTT_PASSWORD=... vitalflow gateway mqtt --broker mqtts://mqtt.hospital:8883 \\
      --ca-file ca.pem --username vitalflow --subscribe 'devices/{device}/vitals' --key device \\
      --share-group vitalflow --brokers kafka:9092 --topic vitals --dead-letter-topic vitals-refused";

/// The gateways.
#[derive(clap::Subcommand)]
pub enum GatewayWhat {
    /// HL7 v2 over MLLP into Kafka.
    #[command(after_help = MLLP_HELP)]
    Mllp(MllpArgs),
    /// MQTT (wearables, home hubs, device bridges) into Kafka.
    #[command(after_help = MQTT_HELP)]
    Mqtt(MqttArgs),
}

/// Arguments of `vitalflow gateway mqtt`.
#[derive(clap::Args)]
pub struct MqttArgs {
    /// MQTT broker: mqtt://host:port or mqtts://host:port.
    #[arg(long, default_value = "mqtt://127.0.0.1:1883")]
    broker: String,
    /// Topic template to subscribe to; {name} levels become headers (repeatable).
    #[arg(long = "subscribe", required = true)]
    subscriptions: Vec<String>,
    /// Shared subscription group: gateways of one group share the messages.
    #[arg(long)]
    share_group: Option<String>,
    /// MQTT client id: names the session the broker keeps across restarts.
    #[arg(long, default_value = "vitalflow-gateway")]
    client_id: String,
    /// MQTT user name (the password comes from VITALFLOW_MQTT_PASSWORD).
    #[arg(long, env = "VITALFLOW_MQTT_USERNAME")]
    username: Option<String>,
    /// Send the password over plain mqtt:// (a trusted network only; mqtts:// otherwise).
    #[arg(long)]
    allow_plain_password: bool,
    /// CA certificates (PEM) for mqtts://; the system's otherwise.
    #[arg(long)]
    ca_file: Option<std::path::PathBuf>,
    /// Client certificate (PEM) for brokers that ask for one.
    #[arg(long, requires = "client_key")]
    client_cert: Option<std::path::PathBuf>,
    /// Client certificate's key (PEM).
    #[arg(long, requires = "client_cert")]
    client_key: Option<std::path::PathBuf>,
    /// Kafka brokers (host:port,...).
    #[arg(long, env = "VITALFLOW_KAFKA_BROKERS")]
    brokers: String,
    /// Topic the messages go to.
    #[arg(long)]
    topic: String,
    /// Topic refused messages go to, with their topic and reason.
    #[arg(long)]
    dead_letter_topic: String,
    /// Template level whose value is the Kafka key (e.g. device); none by default.
    #[arg(long)]
    key: Option<String>,
    /// What a payload must be.
    #[arg(long, value_enum, default_value_t = Content::Json)]
    content: Content,
    /// Most messages in flight from the broker (MQTT receive maximum).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u16).range(1..))]
    receive_maximum: u16,
    /// How long the broker keeps the session while the gateway is away.
    #[arg(long, default_value = "1day", value_parser = humantime::parse_duration)]
    session_expiry: Duration,
    /// Largest payload accepted, bytes.
    #[arg(long, default_value_t = 1 << 20)]
    max_payload: usize,
    /// A message (same topic, same bytes) already in Kafka within this is acknowledged
    /// without being produced again: the broker's redeliveries after a restart (0: off).
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    dedup_window: Duration,
}

/// What a payload must be.
#[derive(Clone, Copy, PartialEq, clap::ValueEnum)]
enum Content {
    Json,
    Hl7,
    Any,
}

/// Arguments of `vitalflow gateway mllp`.
#[derive(clap::Args)]
pub struct MllpArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:2575")]
    listen: std::net::SocketAddr,
    /// Kafka brokers (host:port,...).
    #[arg(long, env = "VITALFLOW_KAFKA_BROKERS")]
    brokers: String,
    /// Topic the messages go to.
    #[arg(long)]
    topic: String,
    /// Topic refused messages go to, with their reason.
    #[arg(long)]
    dead_letter_topic: Option<String>,
    /// Kafka key of a message: patient (PID-3), device (OBX-18) or none.
    #[arg(long, value_enum, default_value_t = Key::Patient)]
    key: Key,
    /// A control id repeated by the same sender within this is not produced again (0: off).
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    dedup_window: Duration,
    /// Largest message accepted, bytes.
    #[arg(long, default_value_t = 1 << 20)]
    max_frame: usize,
    /// Certificate chain (PEM): the listener speaks TLS (MLLP over TLS) with it.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    /// CA certificates (PEM): every device must present a client certificate they signed
    /// (mutual TLS); one with none, or another, is refused before it sends anything.
    #[arg(long, requires = "tls_cert")]
    client_ca: Option<std::path::PathBuf>,
    /// Only devices whose certificate names this (subject common name, or a DNS or URI
    /// alternative name: a device id such as an EUI-64); repeat for each, or give a file with
    /// one per line as @FILE.
    #[arg(long = "allow-client", value_name = "NAME", requires = "client_ca")]
    allow_client: Vec<String>,
}

/// What the Kafka key of a message is.
#[derive(Clone, Copy, PartialEq, clap::ValueEnum)]
enum Key {
    Patient,
    Device,
    None,
}

/// Runs a `vitalflow gateway` command.
pub fn run(what: GatewayWhat) -> ExitCode {
    init_logs(LogFormat::Text);
    match what {
        GatewayWhat::Mllp(args) => run_mllp(args),
        GatewayWhat::Mqtt(args) => run_mqtt(args),
    }
}

/// SIGINT and SIGTERM set the returned flag.
fn stop_on_signals() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let _ = signal_hook::flag::register(sig, stop.clone());
    }
    stop
}

fn run_mqtt(args: MqttArgs) -> ExitCode {
    let usage = |e: String| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    };
    let kafka = match config::kafka_from_flags(&args.brokers, &args.topic, &Overrides::from_env()) {
        Ok(k) => k,
        Err(e) => return usage(e.to_string()),
    };
    let mut broker = match mqtt::BrokerSettings::from_url(&args.broker) {
        Ok(b) => b,
        Err(e) => return usage(format!("--broker: {e}")),
    };
    if !broker.tls && (args.ca_file.is_some() || args.client_cert.is_some()) {
        return usage("--ca-file and --client-cert need an mqtts:// broker".into());
    }
    broker.ca_file = args.ca_file;
    broker.client_auth = args.client_cert.zip(args.client_key);
    let password = std::env::var("VITALFLOW_MQTT_PASSWORD").ok();
    if password.as_deref().is_some_and(|p| !p.is_empty())
        && !broker.tls
        && !args.allow_plain_password
    {
        return usage(format!(
            "VITALFLOW_MQTT_PASSWORD would go to {} over plain mqtt://, readable by anyone on \
             the path: use mqtts://, or --allow-plain-password (a trusted network only)",
            args.broker
        ));
    }
    broker.credentials = match (args.username, password) {
        (Some(u), p) => Some((u, p.unwrap_or_default())),
        (None, Some(_)) => {
            return usage("VITALFLOW_MQTT_PASSWORD is set but --username is not".into())
        }
        (None, None) => None,
    };
    let mut subscriptions = Vec::new();
    for s in &args.subscriptions {
        match TopicTemplate::parse(s) {
            Ok(t) => subscriptions.push(t),
            Err(e) => return usage(format!("--subscribe: {e}")),
        }
    }
    if let Some(k) = &args.key {
        if !subscriptions.iter().all(|t| t.names().any(|n| n == k)) {
            return usage(format!(
                "--key {k}: every --subscribe template needs a {{{k}}} level"
            ));
        }
    }
    if let Some(g) = &args.share_group {
        if g.is_empty() || g.contains(['/', '+', '#']) {
            return usage(format!("--share-group \"{g}\": a name without /, + or #"));
        }
    }
    let settings = mqtt::Settings {
        broker,
        client_id: args.client_id,
        subscriptions,
        share_group: args.share_group,
        kafka,
        topic: args.topic,
        dead_letter_topic: args.dead_letter_topic,
        key: args.key,
        content: match args.content {
            Content::Json => mqtt::Content::Json,
            Content::Hl7 => mqtt::Content::Hl7,
            Content::Any => mqtt::Content::Any,
        },
        receive_maximum: args.receive_maximum,
        session_expiry: args.session_expiry,
        max_payload: args.max_payload,
        dedup_window: args.dedup_window,
    };
    let stop = stop_on_signals();
    let gateway = match mqtt::start(settings) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!("subscribed (MQTT); Ctrl-C stops");
    while !stop.load(std::sync::atomic::Ordering::Relaxed) && !gateway.stopped() {
        std::thread::sleep(Duration::from_millis(100));
    }
    match gateway.stop(Duration::from_secs(30)) {
        Some(failure) => {
            eprintln!("error: {failure}");
            ExitCode::FAILURE
        }
        None => ExitCode::SUCCESS,
    }
}

fn run_mllp(args: MllpArgs) -> ExitCode {
    let kafka = match config::kafka_from_flags(&args.brokers, &args.topic, &Overrides::from_env()) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let mut allow = Vec::new();
    for a in &args.allow_client {
        match a.strip_prefix('@') {
            Some(file) => match std::fs::read_to_string(file) {
                Ok(t) => allow.extend(
                    t.lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty() && !l.starts_with('#'))
                        .map(String::from),
                ),
                Err(e) => {
                    eprintln!("error: --allow-client @{file}: {e}");
                    return ExitCode::from(2);
                }
            },
            None => allow.push(a.clone()),
        }
    }
    let clients = args.client_ca.clone().map(|ca| mllp::ClientAuth {
        ca,
        allow: allow.clone(),
    });
    let settings = mllp::Settings {
        listen: args.listen,
        kafka,
        topic: args.topic,
        dead_letter_topic: args.dead_letter_topic,
        key: match args.key {
            Key::Patient => mllp::KeyBy::Patient,
            Key::Device => mllp::KeyBy::Device,
            Key::None => mllp::KeyBy::None,
        },
        dedup_window: args.dedup_window,
        max_frame: args.max_frame,
        ack_timeout: Duration::from_secs(30),
        tls: match args.tls_cert.zip(args.tls_key) {
            Some((cert, key)) => match mllp::server_tls(&cert, &key, clients.as_ref()) {
                Ok(t) => Some(t),
                Err(e) => {
                    eprintln!("error: {e:#}");
                    return ExitCode::from(2);
                }
            },
            None => None,
        },
        allow,
    };
    let stop = stop_on_signals();
    let gateway = match mllp::start(settings, stop.clone()) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!("listening on {} (MLLP); Ctrl-C stops", gateway.addr);
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
    }
    gateway.stop();
    ExitCode::SUCCESS
}
