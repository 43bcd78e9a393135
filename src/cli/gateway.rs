//! `vitalflow gateway`: hospital device protocols into the Kafka topic a job reads.

use super::*;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;
use vitalflow::gateway::mllp;

/// Help shown after `vitalflow gateway mllp --help`.
pub const MLLP_HELP: &str = "Listens for HL7 v2 messages over MLLP (bedside-monitor gateways \
sending IHE PCD-01 ORU^R01), produces each to a Kafka topic with the idempotent producer \
(acks=all) and answers MSA|AA only after Kafka acknowledged it. A message that is not HL7 v2 \
(or is larger than --max-frame) is answered AR with the reason in ERR and goes to \
--dead-letter-topic; a Kafka failure is answered AE, and the sender sends again. A control id \
repeated by the same sending application within --dedup-window is acknowledged without being \
produced twice. Kafka properties (TLS, SASL) come from VITALFLOW_KAFKA__<PROPERTY>.

Example:
  vitalflow gateway mllp --listen 0.0.0.0:2575 --brokers kafka:9092 --topic vitals-hl7 \\
      --dead-letter-topic vitals-hl7-refused --key patient";

/// The gateways.
#[derive(clap::Subcommand)]
pub enum GatewayWhat {
    /// HL7 v2 over MLLP into Kafka.
    #[command(after_help = MLLP_HELP)]
    Mllp(MllpArgs),
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
    /// A control id repeated by the same sender within this is not produced again.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    dedup_window: Duration,
    /// Largest message accepted, bytes.
    #[arg(long, default_value_t = 1 << 20)]
    max_frame: usize,
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
    let GatewayWhat::Mllp(args) = what;
    let kafka = match config::kafka_from_flags(&args.brokers, &args.topic, &Overrides::from_env()) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
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
    };
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let _ = signal_hook::flag::register(sig, stop.clone());
    }
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
