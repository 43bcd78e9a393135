//! The validated configuration of a job: types that hold only valid settings.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The simulator's device profiles.
pub const SIMULATOR_PROFILES: [&str; 3] = ["bedside-monitor", "wearable", "ihe-pcd01"];

/// `kafka.brokers` value that starts librdkafka's in-process mock cluster.
pub const EMBEDDED_BROKERS: &str = "embedded";

/// Where device messages come from.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceConfig {
    /// Kafka topics, read by the workers partition by partition.
    Kafka(KafkaConfig),
    /// An NDJSON file of device messages (replays).
    File {
        /// The file.
        path: PathBuf,
        /// Messages per second to replay at (0: as fast as possible).
        rate: f64,
    },
    /// The built-in simulator, generating straight into the dataflow.
    Simulator(SimulatorConfig),
}

/// Where a stream of records (dead letters, alerts) goes.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// A Kafka topic, over the job's Kafka connection.
    Topic {
        /// The connection (`[kafka]`).
        kafka: KafkaConfig,
        /// The topic.
        topic: String,
    },
    /// NDJSON files under the job's output directory.
    Files,
}

impl Output {
    /// The topic, when the output is one.
    pub fn topic(&self) -> Option<&str> {
        match self {
            Self::Topic { topic, .. } => Some(topic),
            Self::Files => None,
        }
    }
}

/// Anomaly detection (`[anomaly]`).
#[derive(Debug, Clone, PartialEq)]
pub struct AnomalyConfig {
    /// The rules file.
    pub rules: PathBuf,
    /// Where alerts go.
    pub alerts: Output,
    /// How often alerting checkpoints its state (Kafka sources): offsets commit no sooner.
    pub checkpoint_every: Duration,
}

/// Where the offset of a partition without a committed offset starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartPosition {
    /// The oldest message the broker keeps.
    Earliest,
    /// Only messages produced after the job starts.
    Latest,
}

/// librdkafka properties vitalflow sets itself: a job file or the environment may not.
pub(super) const RESERVED_KAFKA_PROPERTIES: &[&str] =
    &["group.id", "bootstrap.servers", "enable.auto.commit"];

/// Pass-through settings as `Debug` prints them: the value of any key that names a secret
/// (password, secret, token, key, credential) shows as `***`, so a logged or panicking
/// configuration never carries one.
pub fn redacted<'a>(
    settings: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> BTreeMap<&'a str, &'a str> {
    settings
        .into_iter()
        .map(|(k, v)| {
            let lower = k.to_ascii_lowercase();
            let secret = [
                "password",
                "secret",
                "token",
                "key",
                "credential",
                "oauthbearer",
            ]
            .iter()
            .any(|s| lower.contains(s));
            (k.as_str(), if secret { "***" } else { v.as_str() })
        })
        .collect()
}

/// Kafka connection and consumption settings.
#[derive(Clone, PartialEq)]
pub struct KafkaConfig {
    /// `host:port,...`, or [`EMBEDDED_BROKERS`].
    pub brokers: String,
    /// Topics to read.
    pub topics: Vec<String>,
    /// Consumer group whose committed offsets record progress.
    pub group_id: String,
    /// Start for partitions without a committed offset.
    pub start: StartPosition,
    /// Partitions of the source topic when the embedded cluster creates it.
    pub partitions: i32,
    /// How long to wait for brokers and topics at start before giving up.
    pub startup_timeout: Duration,
    /// librdkafka properties passed through verbatim (TLS, SASL, tuning).
    pub properties: BTreeMap<String, String>,
}

impl fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("topics", &self.topics)
            .field("group_id", &self.group_id)
            .field("start", &self.start)
            .field("partitions", &self.partitions)
            .field("startup_timeout", &self.startup_timeout)
            .field("properties", &redacted(&self.properties))
            .finish()
    }
}

impl JobConfig {
    /// The job's Kafka connection, when anything uses one.
    pub fn kafka(&self) -> Option<&KafkaConfig> {
        fn topic(o: &Output) -> Option<&KafkaConfig> {
            match o {
                Output::Topic { kafka, .. } => Some(kafka),
                Output::Files => None,
            }
        }
        match &self.source {
            SourceConfig::Kafka(k) => Some(k),
            _ => topic(&self.dead_letters)
                .or_else(|| self.anomaly.as_ref().and_then(|a| topic(&a.alerts))),
        }
    }

    /// The topics the job writes to (dead letters, alerts).
    pub fn output_topics(&self) -> Vec<&str> {
        let mut out: Vec<&str> = self.dead_letters.topic().into_iter().collect();
        out.extend(self.anomaly.as_ref().and_then(|a| a.alerts.topic()));
        out
    }

    /// Moves the NDJSON output directory, and the lakehouse with it when it lies inside.
    pub fn set_output_dir(&mut self, dir: PathBuf) {
        if let Some(l) = &mut self.lake {
            if let Ok(rest) = Path::new(&l.location).strip_prefix(&self.output_dir) {
                l.location = dir.join(rest).display().to_string();
            }
        }
        self.output_dir = dir;
    }
}

impl KafkaConfig {
    /// True when the job runs against the in-process mock cluster.
    pub fn embedded(&self) -> bool {
        self.brokers == EMBEDDED_BROKERS
    }
}

/// Simulator settings (see [`crate::sources::simulator`]).
#[derive(Debug, Clone, PartialEq)]
pub struct SimulatorConfig {
    /// Number of simulated devices (one patient each).
    pub devices: u32,
    /// Total messages per second (0: as fast as possible).
    pub rate: f64,
    /// Random seed: the same seed gives the same messages.
    pub seed: u64,
    /// Device profile: `bedside-monitor` or `wearable`.
    pub profile: String,
    /// Stop after this many messages (None: run until stopped).
    pub count: Option<u64>,
    /// Fraction of messages delivered out of order.
    pub out_of_order: f64,
    /// Every this often one device that was offline syncs its backlog.
    pub late_burst: Option<Duration>,
    /// Probability per device-second of a dropout (device silent for a while).
    pub dropout: f64,
    /// Fraction of readings with sensor artifacts (implausible values, missing fields).
    pub artifacts: f64,
    /// Devices (the first ones) whose patient desaturates acutely 30 s into the simulation:
    /// an alert to see within the first minutes.
    pub acute: u32,
}

impl Default for SimulatorConfig {
    fn default() -> Self {
        Self {
            devices: 20,
            rate: 20.0,
            seed: 1,
            profile: "bedside-monitor".into(),
            count: None,
            out_of_order: 0.0,
            late_burst: None,
            dropout: 0.0,
            artifacts: 0.0,
            acute: 0,
        }
    }
}

impl SimulatorConfig {
    /// What is wrong with these settings, as (field, reason): the job file and the
    /// `simulate` command check the same rules.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if self.rate < 0.0 || self.rate.is_nan() {
            out.push((
                "rate",
                format!(
                    "must be zero (as fast as possible) or positive, found {}",
                    self.rate
                ),
            ));
        }
        let profiles = SIMULATOR_PROFILES;
        if !profiles.contains(&self.profile.as_str()) {
            out.push((
                "profile",
                format!(
                    "unknown profile \"{}\"; one of: {}",
                    self.profile,
                    profiles.join(", ")
                ),
            ));
        }
        for (field, v) in [
            ("out_of_order", self.out_of_order),
            ("dropout", self.dropout),
            ("artifacts", self.artifacts),
        ] {
            if !(0.0..=1.0).contains(&v) {
                out.push((field, format!("must be between 0 and 1, found {v}")));
            } else if field == "dropout" && v >= 1.0 {
                // A device that always drops out never sends: the simulation would never end.
                out.push((field, "must be below 1".to_string()));
            }
        }
        out
    }
}

/// How the FHIR sink authenticates. Secrets come from the environment only
/// (`VITALFLOW_FHIR_TOKEN`, `VITALFLOW_FHIR_CLIENT_SECRET`).
#[derive(Clone, PartialEq)]
pub enum FhirAuth {
    /// No `Authorization` header.
    None,
    /// A static bearer token.
    Bearer {
        /// The token (from `VITALFLOW_FHIR_TOKEN`).
        token: String,
    },
    /// OAuth2 client credentials (SMART Backend Services style, shared secret).
    OAuth2 {
        /// Token endpoint.
        token_url: String,
        /// Client id.
        client_id: String,
        /// Client secret (from `VITALFLOW_FHIR_CLIENT_SECRET`).
        client_secret: String,
        /// Requested scope, e.g. `system/Observation.write system/Device.read`.
        scope: Option<String>,
    },
}

impl fmt::Debug for FhirAuth {
    // Secrets never reach logs or panics.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::None => write!(f, "None"),
            Self::Bearer { .. } => write!(f, "Bearer {{ token: *** }}"),
            Self::OAuth2 {
                token_url,
                client_id,
                scope,
                ..
            } => write!(
                f,
                "OAuth2 {{ token_url: {token_url:?}, client_id: {client_id:?}, scope: {scope:?}, client_secret: *** }}"
            ),
        }
    }
}

/// How device and patient identifiers become FHIR resource ids, as the IoMT connector's
/// `ResourceIdentityServiceType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityMode {
    /// Device by identifier; its `patient` reference is the subject.
    Lookup,
    /// As `Lookup`, plus the Encounter by the measurement's encounter identifier.
    LookupWithEncounter,
    /// As `Lookup`, creating a missing Patient and Device at ids derived from their identifiers.
    Create,
}

impl IdentityMode {
    /// Parses the connector's spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "Lookup" => Some(Self::Lookup),
            "LookupWithEncounter" => Some(Self::LookupWithEncounter),
            "Create" => Some(Self::Create),
            _ => None,
        }
    }
}

/// FHIR server sink settings (`[sinks.fhir]`).
#[derive(Debug, Clone, PartialEq)]
pub struct FhirSinkConfig {
    /// Base URL of the FHIR R4 server.
    pub url: String,
    /// Authentication.
    pub auth: FhirAuth,
    /// Identity resolution mode.
    pub identity: IdentityMode,
    /// System of Device identifiers (none: match the value alone).
    pub device_identifier_system: Option<String>,
    /// Entries per batch Bundle.
    pub batch_size: usize,
    /// Batch Bundles in flight at once, per worker.
    pub concurrency: usize,
    /// Each open Observation is written at most this often.
    pub flush_interval: Duration,
    /// Timeout of one HTTP request.
    pub timeout: Duration,
    /// How long to wait for the server at start before giving up.
    pub startup_timeout: Duration,
    /// Retries of one request on 429, 5xx and network errors before the flush fails (and is
    /// retried whole later).
    pub max_retries: u32,
    /// Extra CA certificate (PEM) to trust, for servers with a private CA.
    pub ca_file: Option<PathBuf>,
    /// How long a resolved identity is cached.
    pub cache_ttl: Duration,
    /// How long "not found" is cached.
    pub negative_cache_ttl: Duration,
    /// Most identities cached per worker.
    pub cache_capacity: usize,
    /// Credentials may go to a plain `http://` URL (`[sinks.fhir.auth] allow_http = true`):
    /// off by default, since anyone on the path could read the token.
    pub allow_http_credentials: bool,
}

impl FhirSinkConfig {
    /// Defaults for a server at `url` (no auth, `Lookup`).
    pub fn new(url: &str) -> Self {
        Self {
            url: url.trim_end_matches('/').to_string(),
            auth: FhirAuth::None,
            identity: IdentityMode::Lookup,
            device_identifier_system: None,
            batch_size: 200,
            concurrency: 2,
            flush_interval: Duration::from_secs(1),
            timeout: Duration::from_secs(30),
            startup_timeout: Duration::from_secs(30),
            max_retries: 4,
            ca_file: None,
            cache_ttl: Duration::from_secs(3600),
            negative_cache_ttl: Duration::from_secs(60),
            cache_capacity: 100_000,
            allow_http_credentials: false,
        }
    }
}

/// A validated job.
#[derive(Debug, Clone, PartialEq)]
pub struct JobConfig {
    /// Job name (logs, metrics, default consumer group).
    pub name: String,
    /// The job file, for messages.
    pub file: String,
    /// Where messages come from.
    pub source: SourceConfig,
    /// The simulator that feeds an embedded Kafka source (`[simulator]` beside
    /// `kafka.brokers = "embedded"`).
    pub feed: Option<SimulatorConfig>,
    /// Device mapping file.
    pub device_mapping: PathBuf,
    /// FHIR mapping file.
    pub fhir_mapping: PathBuf,
    /// Windows older than this (event time, behind the newest) are evicted from memory.
    pub horizon: Duration,
    /// Measurements further than this ahead of the wall clock are dead-lettered.
    pub max_future_skew: Duration,
    /// How far behind its partition's newest event time a reading may arrive and still be
    /// judged in order (the event clock trails the input by this much).
    pub allowed_lateness: Duration,
    /// Wall time after which an input partition that delivers nothing stops holding the
    /// event clock back (live jobs only).
    pub idle_timeout: Duration,
    /// Event time between two versions of an open Observation window (it also gets one
    /// when it closes, and one when late data amends it).
    pub update_every: Duration,
    /// NDJSON output directory.
    pub output_dir: PathBuf,
    /// Observations go to NDJSON files under the output directory.
    pub ndjson_observations: bool,
    /// FHIR server sink.
    pub fhir: Option<FhirSinkConfig>,
    /// How often sinks commit what they buffered.
    pub flush_interval: Duration,
    /// Lakehouse tables (Delta Lake).
    pub lake: Option<LakeConfig>,
    /// Where messages no mapping accepts go, with their reason.
    pub dead_letters: Output,
    /// Anomaly detection and alerting.
    pub anomaly: Option<AnomalyConfig>,
    /// Length of an ingestion epoch (timely time).
    pub epoch: Duration,
    /// Messages a worker reads per activation.
    pub batch_size: usize,
    /// A worker stops reading while input it read this long ago is not yet durable in
    /// every output (a FHIR server or object store down): memory stays bounded by what
    /// this much input holds instead of growing with the outage.
    pub max_durable_lag: Duration,
    /// Prometheus `/metrics` and `/health` address.
    pub metrics_address: Option<String>,
}

/// Which tables a job writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tables {
    /// One row per normalized value.
    pub measurements: bool,
    /// One row per value of each Observation version.
    pub observations: bool,
    /// One row per alert event.
    pub alerts: bool,
    /// One row per Device or DeviceMetric version (jobs reading HL7 v2).
    pub devices: bool,
}

/// `[sinks.lake]`: where the tables live and how often they are committed.
#[derive(Clone, PartialEq)]
pub struct LakeConfig {
    /// Root: a local directory or an object-store URL (`s3://bucket/prefix`).
    pub location: String,
    /// The tables written.
    pub tables: Tables,
    /// How often each worker commits what it buffered (one Delta commit per table).
    pub flush_interval: Duration,
    /// The file size `vitalflow lake compact` aims for.
    pub target_file_size: u64,
    /// Compact files older than this, this often, while the job runs (None: only by
    /// `vitalflow lake compact`).
    pub compact_every: Option<Duration>,
    /// object_store options (endpoint, region, credentials), passed through.
    pub storage: HashMap<String, String>,
}

impl std::fmt::Debug for LakeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LakeConfig")
            .field("location", &self.location)
            .field("tables", &self.tables)
            .field("flush_interval", &self.flush_interval)
            .field("target_file_size", &self.target_file_size)
            .field("compact_every", &self.compact_every)
            .field("storage", &redacted(&self.storage))
            .finish()
    }
}

impl LakeConfig {
    /// The default layout under a root: all three tables, committed every 10 s.
    pub fn at(location: &str) -> Self {
        Self {
            location: location.to_string(),
            tables: Tables {
                measurements: true,
                observations: true,
                alerts: true,
                devices: true,
            },
            flush_interval: Duration::from_secs(10),
            target_file_size: 128 << 20,
            compact_every: None,
            storage: HashMap::new(),
        }
    }
}
