//! Job files (`dataflows/*.toml`): parsed, validated and resolved into a [`JobConfig`].
//!
//! Every problem is reported with the file, line and column of the value at fault, so a bad job
//! file stops start-up with a message a data engineer can act on. Secrets come from the
//! environment (`VITALFLOW_...`, see [`apply_env`]) rather than from files in a repository.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

/// The embedded default job: librdkafka's in-process mock cluster fed by the simulator.
pub const EMBEDDED_DEFAULT: &str = include_str!("../dataflows/default.toml");

/// The name the embedded default job goes by in messages.
pub const EMBEDDED_FILE: &str = "<embedded default job>";

/// `kafka.brokers` value that starts librdkafka's in-process mock cluster.
pub const EMBEDDED_BROKERS: &str = "embedded";

/// Mapping files shipped inside the binary, so the embedded default runs from any directory.
pub const EMBEDDED_TEMPLATES: [(&str, &str); 3] = [
    (
        "templates/bedside-monitor/devicecontent.json",
        include_str!("../templates/bedside-monitor/devicecontent.json"),
    ),
    (
        "templates/bedside-monitor/fhirmapping.json",
        include_str!("../templates/bedside-monitor/fhirmapping.json"),
    ),
    (
        "templates/alerts/adult-vitals.toml",
        include_str!("../templates/alerts/adult-vitals.toml"),
    ),
];

/// One problem in a job file, with where it is.
#[derive(Debug, Clone, PartialEq)]
pub struct JobError {
    /// The job file (or `<embedded default>`).
    pub file: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// 1-based column, when known.
    pub column: Option<usize>,
    /// The field, as a dotted path (`kafka.topics`).
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(l) = self.line {
            write!(f, ":{l}")?;
            if let Some(c) = self.column {
                write!(f, ":{c}")?;
            }
        }
        if self.field.is_empty() {
            write!(f, ": {}", self.reason)
        } else {
            write!(f, ": {}: {}", self.field, self.reason)
        }
    }
}

/// All problems found in a job file.
#[derive(Debug, Clone, PartialEq)]
pub struct JobErrors(pub Vec<JobError>);

impl fmt::Display for JobErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        writeln!(
            f,
            "invalid job file ({n} problem{})",
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.0 {
            writeln!(f, "  {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for JobErrors {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJob {
    name: Option<Spanned<String>>,
    source: Spanned<String>,
    kafka: Option<RawKafka>,
    file: Option<RawFile>,
    simulator: Option<RawSimulator>,
    mapping: RawMapping,
    #[serde(default)]
    window: RawWindow,
    #[serde(default)]
    sinks: RawSinks,
    anomaly: Option<RawAnomaly>,
    #[serde(default)]
    performance: RawPerformance,
    metrics: Option<RawMetrics>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKafka {
    brokers: Spanned<String>,
    topics: Spanned<Vec<String>>,
    group_id: Option<Spanned<String>>,
    start: Option<Spanned<String>>,
    partitions: Option<Spanned<i64>>,
    startup_timeout: Option<Spanned<String>>,
    #[serde(default)]
    properties: BTreeMap<String, Spanned<toml::Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    path: Spanned<String>,
    rate: Option<Spanned<f64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSimulator {
    devices: Option<Spanned<i64>>,
    rate: Option<Spanned<f64>>,
    seed: Option<Spanned<i64>>,
    profile: Option<Spanned<String>>,
    count: Option<Spanned<i64>>,
    out_of_order: Option<Spanned<f64>>,
    late_burst: Option<Spanned<String>>,
    dropout: Option<Spanned<f64>>,
    artifacts: Option<Spanned<f64>>,
    acute: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMapping {
    device: Spanned<String>,
    fhir: Spanned<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawWindow {
    horizon: Option<Spanned<String>>,
    max_future_skew: Option<Spanned<String>>,
    allowed_lateness: Option<Spanned<String>>,
    idle_timeout: Option<Spanned<String>>,
    update_every: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSinks {
    ndjson: Option<RawNdjson>,
    dead_letter: Option<RawDeadLetter>,
    fhir: Option<RawFhir>,
    lake: Option<RawLake>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLake {
    location: Spanned<String>,
    tables: Option<Spanned<Vec<String>>>,
    flush_interval: Option<Spanned<String>>,
    target_file_size_mib: Option<Spanned<i64>>,
    compact_every: Option<Spanned<String>>,
    #[serde(default)]
    storage: BTreeMap<String, Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFhir {
    url: Spanned<String>,
    identity: Option<Spanned<String>>,
    device_identifier_system: Option<Spanned<String>>,
    batch_size: Option<Spanned<i64>>,
    concurrency: Option<Spanned<i64>>,
    flush_interval: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    startup_timeout: Option<Spanned<String>>,
    max_retries: Option<Spanned<i64>>,
    ca_file: Option<Spanned<String>>,
    auth: Option<RawFhirAuth>,
    cache: Option<RawFhirCache>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFhirAuth {
    #[serde(rename = "type")]
    kind: Spanned<String>,
    token_url: Option<Spanned<String>>,
    client_id: Option<Spanned<String>>,
    scope: Option<Spanned<String>>,
    allow_http: Option<Spanned<bool>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFhirCache {
    ttl: Option<Spanned<String>>,
    negative_ttl: Option<Spanned<String>>,
    capacity: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNdjson {
    dir: Spanned<String>,
    flush_interval: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDeadLetter {
    topic: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAnomaly {
    rules: Spanned<String>,
    topic: Option<Spanned<String>>,
    checkpoint_every: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPerformance {
    epoch: Option<Spanned<String>>,
    batch_size: Option<Spanned<i64>>,
    max_durable_lag: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    address: Spanned<String>,
}

/// Where device messages come from.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceConfig {
    /// Kafka topics, read by the workers partition by partition.
    Kafka,
    /// An NDJSON file of device messages (replays), and the rate to replay it at (messages
    /// per second, 0: as fast as possible).
    File(PathBuf, f64),
    /// The built-in simulator, generating straight into the dataflow.
    Simulator,
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
const RESERVED_KAFKA_PROPERTIES: &[&str] = &["group.id", "bootstrap.servers", "enable.auto.commit"];

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
        let profiles = crate::sources::simulator::PROFILES;
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
    /// As `Lookup`, creating a missing Patient and Device (conditional create).
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
    /// Kafka settings (source and dead-letter topic).
    pub kafka: Option<KafkaConfig>,
    /// Simulator settings (simulator source, or feeding the embedded cluster).
    pub simulator: Option<SimulatorConfig>,
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
    pub lake: Option<crate::lake::LakeConfig>,
    /// Dead-letter topic (Kafka); None: NDJSON files under the output directory.
    pub dead_letter_topic: Option<String>,
    /// Anomaly rules file (anomaly detection).
    pub anomaly_rules: Option<PathBuf>,
    /// Kafka topic alerts go to; None: NDJSON files under the output directory.
    pub alerts_topic: Option<String>,
    /// How often alerting checkpoints its state (Kafka sources): offsets commit no sooner.
    pub alert_checkpoint_every: Duration,
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

struct Ctx<'a> {
    file: &'a str,
    text: &'a str,
    errors: Vec<JobError>,
}

impl Ctx<'_> {
    fn at(&mut self, span: std::ops::Range<usize>, field: &str, reason: impl Into<String>) {
        let (line, column) = line_col(self.text, span.start);
        self.errors.push(JobError {
            file: self.file.to_string(),
            line: Some(line),
            column: Some(column),
            field: field.to_string(),
            reason: reason.into(),
        });
    }

    fn duration(
        &mut self,
        v: &Option<Spanned<String>>,
        field: &str,
        default: Duration,
    ) -> Duration {
        let Some(v) = v else { return default };
        match humantime::parse_duration(v.get_ref()) {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                self.at(v.span(), field, "must be greater than zero");
                default
            }
            Err(e) => {
                self.at(
                    v.span(),
                    field,
                    format!(
                        "\"{}\" is not a duration ({e}); write e.g. \"500ms\", \"30s\", \"24h\"",
                        v.get_ref()
                    ),
                );
                default
            }
        }
    }

    fn positive(&mut self, v: &Option<Spanned<i64>>, field: &str, default: u64) -> u64 {
        match v {
            None => default,
            Some(v) if *v.get_ref() > 0 => *v.get_ref() as u64,
            Some(v) => {
                self.at(
                    v.span(),
                    field,
                    format!("must be a positive integer, found {}", v.get_ref()),
                );
                default
            }
        }
    }

    fn existing_file(&mut self, base: &Path, v: &Spanned<String>, field: &str) -> PathBuf {
        let p = resolve_path(base, v.get_ref());
        let embedded = EMBEDDED_TEMPLATES.iter().any(|(e, _)| Path::new(e) == p);
        if !p.is_file() && !embedded {
            self.at(v.span(), field, format!("file not found: {}", p.display()));
        }
        p
    }
}

/// 1-based line and column of a byte offset.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Paths in a job file are relative to the working directory when they exist there (jobs run
/// from the project root), else to the job file's directory.
fn resolve_path(base: &Path, p: &str) -> PathBuf {
    let p = PathBuf::from(p);
    if p.is_absolute() || p.exists() {
        p
    } else {
        let beside = base.join(&p);
        if beside.exists() {
            beside
        } else {
            p
        }
    }
}

/// Reads and validates a job file.
pub fn load(path: &Path) -> Result<JobConfig, JobErrors> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        JobErrors(vec![JobError {
            file: file.clone(),
            line: None,
            column: None,
            field: String::new(),
            reason: format!("cannot read the job file: {e}"),
        }])
    })?;
    parse(&text, &file, path.parent().unwrap_or(Path::new(".")))
}

/// The embedded default job.
pub fn embedded_default() -> JobConfig {
    parse(EMBEDDED_DEFAULT, EMBEDDED_FILE, Path::new("."))
        .expect("the embedded default job is valid (tested)")
}

/// Parses and validates job text; `base` resolves relative paths.
pub fn parse(text: &str, file: &str, base: &Path) -> Result<JobConfig, JobErrors> {
    let raw: RawJob = toml::from_str(text).map_err(|e| {
        let (line, column) = e
            .span()
            .map(|s| line_col(text, s.start))
            .map_or((None, None), |(l, c)| (Some(l), Some(c)));
        JobErrors(vec![JobError {
            file: file.to_string(),
            line,
            column,
            field: String::new(),
            reason: e.message().trim().to_string(),
        }])
    })?;
    let mut cx = Ctx {
        file,
        text,
        errors: Vec::new(),
    };
    let name = raw
        .name
        .as_ref()
        .map_or_else(|| "vitalflow".to_string(), |n| n.get_ref().clone());

    let kafka = raw.kafka.as_ref().map(|k| {
        let brokers = k.brokers.get_ref().trim().to_string();
        if brokers.is_empty() {
            cx.at(k.brokers.span(), "kafka.brokers", "must name at least one broker (host:port), or \"embedded\"");
        }
        let topics = k.topics.get_ref().clone();
        if topics.is_empty() || topics.iter().any(|t| t.trim().is_empty()) {
            cx.at(k.topics.span(), "kafka.topics", "must list one or more non-empty topic names");
        }
        let start = match k.start.as_ref().map(|s| s.get_ref().as_str()) {
            None | Some("earliest") => StartPosition::Earliest,
            Some("latest") => StartPosition::Latest,
            Some(other) => {
                let span = k.start.as_ref().expect("some").span();
                cx.at(span, "kafka.start", format!("expected \"earliest\" or \"latest\", found \"{other}\""));
                StartPosition::Earliest
            }
        };
        let partitions = cx.positive(&k.partitions, "kafka.partitions", 4) as i32;
        let startup_timeout =
            cx.duration(&k.startup_timeout, "kafka.startup_timeout", Duration::from_secs(30));
        let mut properties = BTreeMap::new();
        for (key, v) in &k.properties {
            let value = match v.get_ref() {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                _ => {
                    cx.at(v.span(), &format!("kafka.properties.{key}"), "librdkafka properties are strings, numbers or booleans");
                    continue;
                }
            };
            if RESERVED_KAFKA_PROPERTIES.contains(&key.as_str()) {
                cx.at(v.span(), &format!("kafka.properties.{key}"), "set by vitalflow: use kafka.group_id / kafka.brokers (offsets are committed by the job, never automatically)");
                continue;
            }
            properties.insert(key.clone(), value);
        }
        KafkaConfig {
            brokers,
            topics,
            group_id: k
                .group_id
                .as_ref()
                .map_or_else(|| format!("{name}-job"), |g| g.get_ref().clone()),
            start,
            partitions,
            startup_timeout,
            properties,
        }
    });

    let simulator = raw.simulator.as_ref().map(|s| {
        let d = SimulatorConfig::default();
        let devices = cx.positive(&s.devices, "simulator.devices", d.devices as u64) as u32;
        let rate = s.rate.as_ref().map_or(devices as f64, |r| *r.get_ref());
        let profile = s
            .profile
            .as_ref()
            .map_or_else(|| d.profile.clone(), |p| p.get_ref().clone());
        let fraction = |v: &Option<Spanned<f64>>| v.as_ref().map_or(0.0, |v| *v.get_ref());
        let cfg = SimulatorConfig {
            devices,
            rate,
            seed: s.seed.as_ref().map_or(d.seed, |v| *v.get_ref() as u64),
            profile,
            count: s
                .count
                .as_ref()
                .map(|_| cx.positive(&s.count, "simulator.count", 1)),
            out_of_order: fraction(&s.out_of_order),
            late_burst: s.late_burst.as_ref().map(|_| {
                cx.duration(
                    &s.late_burst,
                    "simulator.late_burst",
                    Duration::from_secs(60),
                )
            }),
            dropout: fraction(&s.dropout),
            artifacts: fraction(&s.artifacts),
            acute: match &s.acute {
                Some(a) if *a.get_ref() < 0 || *a.get_ref() > i64::from(devices) => {
                    cx.at(
                        a.span(),
                        "simulator.acute",
                        format!("must be between 0 and simulator.devices ({devices})"),
                    );
                    0
                }
                Some(a) => *a.get_ref() as u32,
                None => 0,
            },
        };
        for (field, reason) in cfg.problems() {
            // Defaults are valid: a problem is always in a value the file gives.
            let span = match field {
                "rate" => s.rate.as_ref().map(Spanned::span),
                "profile" => s.profile.as_ref().map(Spanned::span),
                "out_of_order" => s.out_of_order.as_ref().map(Spanned::span),
                "dropout" => s.dropout.as_ref().map(Spanned::span),
                _ => s.artifacts.as_ref().map(Spanned::span),
            };
            cx.at(span.unwrap_or(0..0), &format!("simulator.{field}"), reason);
        }
        cfg
    });

    let source = match raw.source.get_ref().as_str() {
        "kafka" => {
            if kafka.is_none() {
                cx.at(
                    raw.source.span(),
                    "source",
                    "source \"kafka\" needs a [kafka] table (brokers, topics)",
                );
            }
            SourceConfig::Kafka
        }
        "file" => match &raw.file {
            Some(f) => {
                let rate = f.rate.as_ref().map_or(0.0, |r| *r.get_ref());
                if rate < 0.0 || rate.is_nan() {
                    let span = f.rate.as_ref().map_or(0..0, Spanned::span);
                    cx.at(
                        span,
                        "file.rate",
                        "must be zero (as fast as possible) or positive",
                    );
                }
                SourceConfig::File(cx.existing_file(base, &f.path, "file.path"), rate)
            }
            None => {
                cx.at(
                    raw.source.span(),
                    "source",
                    "source \"file\" needs a [file] table with path",
                );
                SourceConfig::File(PathBuf::new(), 0.0)
            }
        },
        "simulator" => {
            if simulator.is_none() {
                cx.at(
                    raw.source.span(),
                    "source",
                    "source \"simulator\" needs a [simulator] table",
                );
            }
            SourceConfig::Simulator
        }
        other => {
            cx.at(
                raw.source.span(),
                "source",
                format!("expected \"kafka\", \"file\" or \"simulator\", found \"{other}\""),
            );
            SourceConfig::Simulator
        }
    };

    let device_mapping = cx.existing_file(base, &raw.mapping.device, "mapping.device");
    let fhir_mapping = cx.existing_file(base, &raw.mapping.fhir, "mapping.fhir");
    let horizon = cx.duration(
        &raw.window.horizon,
        "window.horizon",
        Duration::from_secs(2 * 3600),
    );
    let max_future_skew = cx.duration(
        &raw.window.max_future_skew,
        "window.max_future_skew",
        Duration::from_secs(300),
    );
    let allowed_lateness = cx.duration(
        &raw.window.allowed_lateness,
        "window.allowed_lateness",
        Duration::from_secs(5),
    );
    let idle_timeout = cx.duration(
        &raw.window.idle_timeout,
        "window.idle_timeout",
        Duration::from_secs(5),
    );
    let update_every = cx.duration(
        &raw.window.update_every,
        "window.update_every",
        Duration::from_secs(300),
    );
    let (output_dir, flush_interval) = match &raw.sinks.ndjson {
        Some(n) => {
            if n.dir.get_ref().trim().is_empty() {
                cx.at(n.dir.span(), "sinks.ndjson.dir", "must name a directory");
            }
            (
                PathBuf::from(n.dir.get_ref()),
                cx.duration(
                    &n.flush_interval,
                    "sinks.ndjson.flush_interval",
                    Duration::from_secs(1),
                ),
            )
        }
        None => (PathBuf::from("vitalflow-out"), Duration::from_secs(1)),
    };
    let dead_letter_topic = raw
        .sinks
        .dead_letter
        .as_ref()
        .and_then(|d| d.topic.as_ref())
        .map(|t| {
            if kafka.is_none() {
                cx.at(
                    t.span(),
                    "sinks.dead_letter.topic",
                    "a dead-letter topic needs a [kafka] table (brokers)",
                );
            }
            t.get_ref().clone()
        });
    let anomaly_rules = raw
        .anomaly
        .as_ref()
        .map(|a| cx.existing_file(base, &a.rules, "anomaly.rules"));
    let alerts_topic = raw
        .anomaly
        .as_ref()
        .and_then(|a| a.topic.as_ref())
        .map(|t| {
            if kafka.is_none() {
                cx.at(
                    t.span(),
                    "anomaly.topic",
                    "an alerts topic needs a [kafka] table (brokers)",
                );
            }
            t.get_ref().clone()
        });
    let alert_checkpoint_every = cx.duration(
        &raw.anomaly
            .as_ref()
            .and_then(|a| a.checkpoint_every.clone()),
        "anomaly.checkpoint_every",
        Duration::from_secs(5),
    );
    let epoch = cx.duration(
        &raw.performance.epoch,
        "performance.epoch",
        Duration::from_millis(50),
    );
    let batch_size =
        cx.positive(&raw.performance.batch_size, "performance.batch_size", 1000) as usize;
    let max_durable_lag = cx.duration(
        &raw.performance.max_durable_lag,
        "performance.max_durable_lag",
        Duration::from_secs(60),
    );
    let fhir = raw
        .sinks
        .fhir
        .as_ref()
        .map(|f| fhir_config(&mut cx, base, f));
    // Only the outputs the job names: a job of alerts alone writes no Observations.
    let ndjson_observations = raw.sinks.ndjson.is_some();
    if !ndjson_observations && fhir.is_none() && raw.sinks.lake.is_none() && raw.anomaly.is_none() {
        cx.at(
            raw.source.span(),
            "sinks",
            "the job names no output: add [sinks.ndjson], [sinks.fhir], [sinks.lake] or [anomaly]",
        );
    }
    let lake = raw.sinks.lake.as_ref().map(|l| lake_config(&mut cx, l));
    let metrics_address = raw.metrics.as_ref().map(|m| {
        if m.address.get_ref().parse::<std::net::SocketAddr>().is_err() {
            cx.at(
                m.address.span(),
                "metrics.address",
                format!(
                    "\"{}\" is not an address (ip:port, e.g. 127.0.0.1:9464)",
                    m.address.get_ref()
                ),
            );
        }
        m.address.get_ref().clone()
    });

    if !cx.errors.is_empty() {
        return Err(JobErrors(cx.errors));
    }
    Ok(JobConfig {
        name,
        file: file.to_string(),
        source,
        kafka,
        simulator,
        device_mapping,
        fhir_mapping,
        horizon,
        max_future_skew,
        allowed_lateness,
        idle_timeout,
        update_every,
        output_dir,
        ndjson_observations,
        fhir,
        flush_interval,
        lake,
        dead_letter_topic,
        anomaly_rules,
        alerts_topic,
        alert_checkpoint_every,
        epoch,
        batch_size,
        max_durable_lag,
        metrics_address,
    })
}

fn lake_config(cx: &mut Ctx<'_>, l: &RawLake) -> crate::lake::LakeConfig {
    let mut c = crate::lake::LakeConfig::at(l.location.get_ref().trim());
    if c.location.is_empty() {
        cx.at(
            l.location.span(),
            "sinks.lake.location",
            "must name a directory or an object-store URL (s3://bucket/prefix)",
        );
    } else if let Some((scheme, _)) = c.location.split_once("://") {
        if !["s3", "s3a", "file", "memory"].contains(&scheme) {
            cx.at(
                l.location.span(),
                "sinks.lake.location",
                format!("unsupported scheme \"{scheme}\" (a local path, file://, or s3://)"),
            );
        }
    }
    if let Some(t) = &l.tables {
        c.tables = crate::lake::Tables {
            measurements: false,
            observations: false,
            alerts: false,
        };
        for name in t.get_ref() {
            match name.as_str() {
                "measurements" => c.tables.measurements = true,
                "observations" => c.tables.observations = true,
                "alerts" => c.tables.alerts = true,
                other => cx.at(
                    t.span(),
                    "sinks.lake.tables",
                    format!("no table \"{other}\" (measurements, observations, alerts)"),
                ),
            }
        }
    }
    c.flush_interval = cx.duration(
        &l.flush_interval,
        "sinks.lake.flush_interval",
        c.flush_interval,
    );
    c.target_file_size = cx.positive(
        &l.target_file_size_mib,
        "sinks.lake.target_file_size_mib",
        c.target_file_size >> 20,
    ) << 20;
    if l.compact_every.is_some() {
        c.compact_every = Some(cx.duration(
            &l.compact_every,
            "sinks.lake.compact_every",
            Duration::from_secs(3600),
        ));
    }
    c.storage = l
        .storage
        .iter()
        .map(|(k, v)| (k.clone(), v.get_ref().clone()))
        .collect();
    c
}

fn fhir_config(cx: &mut Ctx<'_>, base: &Path, f: &RawFhir) -> FhirSinkConfig {
    let url = f.url.get_ref().trim();
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        cx.at(
            f.url.span(),
            "sinks.fhir.url",
            format!("\"{url}\" is not an http(s) URL (e.g. https://fhir.example.org/r4)"),
        );
    }
    let mut c = FhirSinkConfig::new(url);
    if let Some(m) = &f.identity {
        match IdentityMode::parse(m.get_ref()) {
            Some(mode) => c.identity = mode,
            None => cx.at(
                m.span(),
                "sinks.fhir.identity",
                format!(
                    "expected \"Lookup\", \"LookupWithEncounter\" or \"Create\", found \"{}\"",
                    m.get_ref()
                ),
            ),
        }
    }
    c.device_identifier_system = f
        .device_identifier_system
        .as_ref()
        .map(|s| s.get_ref().clone());
    c.batch_size =
        cx.positive(&f.batch_size, "sinks.fhir.batch_size", c.batch_size as u64) as usize;
    c.concurrency = cx.positive(
        &f.concurrency,
        "sinks.fhir.concurrency",
        c.concurrency as u64,
    ) as usize;
    c.flush_interval = cx.duration(
        &f.flush_interval,
        "sinks.fhir.flush_interval",
        c.flush_interval,
    );
    c.timeout = cx.duration(&f.timeout, "sinks.fhir.timeout", c.timeout);
    c.startup_timeout = cx.duration(
        &f.startup_timeout,
        "sinks.fhir.startup_timeout",
        c.startup_timeout,
    );
    if let Some(r) = &f.max_retries {
        match u32::try_from(*r.get_ref()) {
            Ok(n) => c.max_retries = n,
            Err(_) => cx.at(
                r.span(),
                "sinks.fhir.max_retries",
                format!("must be zero or a positive integer, found {}", r.get_ref()),
            ),
        }
    }
    c.ca_file = f
        .ca_file
        .as_ref()
        .map(|p| cx.existing_file(base, p, "sinks.fhir.ca_file"));
    if let Some(cache) = &f.cache {
        c.cache_ttl = cx.duration(&cache.ttl, "sinks.fhir.cache.ttl", c.cache_ttl);
        c.negative_cache_ttl = cx.duration(
            &cache.negative_ttl,
            "sinks.fhir.cache.negative_ttl",
            c.negative_cache_ttl,
        );
        c.cache_capacity = cx.positive(
            &cache.capacity,
            "sinks.fhir.cache.capacity",
            c.cache_capacity as u64,
        ) as usize;
    }
    if let Some(a) = &f.auth {
        c.allow_http_credentials = a.allow_http.as_ref().is_some_and(|b| *b.get_ref());
        c.auth = match a.kind.get_ref().as_str() {
            "none" => FhirAuth::None,
            // The token arrives from the environment (apply_env); empty means "not given".
            "bearer" => FhirAuth::Bearer {
                token: String::new(),
            },
            "oauth2" => {
                let mut need = |v: &Option<Spanned<String>>, field: &str| match v {
                    Some(v) if !v.get_ref().trim().is_empty() => v.get_ref().clone(),
                    _ => {
                        cx.at(
                            a.kind.span(),
                            &format!("sinks.fhir.auth.{field}"),
                            "auth type \"oauth2\" needs token_url and client_id (the secret comes from VITALFLOW_FHIR_CLIENT_SECRET)",
                        );
                        String::new()
                    }
                };
                let token_url = need(&a.token_url, "token_url");
                let client_id = need(&a.client_id, "client_id");
                FhirAuth::OAuth2 {
                    token_url,
                    client_id,
                    client_secret: String::new(),
                    scope: a.scope.as_ref().map(|s| s.get_ref().clone()),
                }
            }
            other => {
                cx.at(
                    a.kind.span(),
                    "sinks.fhir.auth.type",
                    format!("expected \"none\", \"bearer\" or \"oauth2\", found \"{other}\""),
                );
                FhirAuth::None
            }
        };
    }
    c
}

/// Applies `VITALFLOW_...` environment overrides, so secrets and per-host settings stay out of
/// job files: `VITALFLOW_KAFKA_BROKERS`, `VITALFLOW_KAFKA_GROUP_ID`, `VITALFLOW_OUTPUT_DIR`,
/// `VITALFLOW_METRICS_ADDRESS`, `VITALFLOW_KAFKA__<PROPERTY>` for any librdkafka property
/// (`VITALFLOW_KAFKA__SASL_PASSWORD` sets `sasl.password`), and for the FHIR sink
/// `VITALFLOW_FHIR_URL`, `VITALFLOW_FHIR_IDENTITY`, `VITALFLOW_FHIR_TOKEN`,
/// `VITALFLOW_FHIR_CLIENT_SECRET`.
pub fn apply_env(
    job: &mut JobConfig,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<(), Vec<String>> {
    let vars: Vec<(String, String)> = vars.into_iter().collect();
    let mut errors = Vec::new();
    if let Some(k) = &mut job.kafka {
        if let Err(e) = apply_env_kafka(k, vars.iter().cloned()) {
            errors.extend(e);
        }
    }
    // The URL first: it may create the [sinks.fhir] the other FHIR variables refine.
    if let Some((_, url)) = vars.iter().find(|(k, _)| k == "VITALFLOW_FHIR_URL") {
        match check_fhir_url(url) {
            Ok(()) => set_fhir_url(job, url),
            Err(e) => errors.push(format!("VITALFLOW_FHIR_URL: {e}")),
        }
    }
    for (key, value) in vars {
        match key.as_str() {
            "VITALFLOW_OUTPUT_DIR" if value.trim().is_empty() => {
                errors.push("VITALFLOW_OUTPUT_DIR: empty".into())
            }
            "VITALFLOW_OUTPUT_DIR" => job.set_output_dir(PathBuf::from(value)),
            "VITALFLOW_LAKE" if value.trim().is_empty() => {
                errors.push("VITALFLOW_LAKE: empty (a directory or s3://bucket/prefix)".into())
            }
            "VITALFLOW_LAKE" => match &mut job.lake {
                Some(l) => l.location = value,
                None => job.lake = Some(crate::lake::LakeConfig::at(&value)),
            },
            "VITALFLOW_METRICS_ADDRESS" => match value.parse::<std::net::SocketAddr>() {
                Ok(_) => job.metrics_address = Some(value),
                Err(_) => errors.push(format!(
                    "VITALFLOW_METRICS_ADDRESS: \"{value}\" is not an ip:port address (e.g. 127.0.0.1:9464)"
                )),
            },
            "VITALFLOW_FHIR_IDENTITY" => match IdentityMode::parse(&value) {
                Some(m) => {
                    if let Some(f) = &mut job.fhir {
                        f.identity = m;
                    }
                }
                None => errors.push(format!(
                    "VITALFLOW_FHIR_IDENTITY: expected \"Lookup\", \"LookupWithEncounter\" or \"Create\", found \"{value}\""
                )),
            },
            "VITALFLOW_FHIR_TOKEN" => {
                if let Some(f) = &mut job.fhir {
                    if matches!(f.auth, FhirAuth::None | FhirAuth::Bearer { .. }) {
                        f.auth = FhirAuth::Bearer { token: value };
                    }
                }
            }
            "VITALFLOW_FHIR_CLIENT_SECRET" => {
                if let Some(FhirSinkConfig {
                    auth: FhirAuth::OAuth2 { client_secret, .. },
                    ..
                }) = &mut job.fhir
                {
                    *client_secret = value;
                }
            }
            _ => {}
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// Whether `url` is an http(s) URL.
fn check_fhir_url(url: &str) -> Result<(), String> {
    let url = url.trim();
    if url.starts_with("http://") || url.starts_with("https://") {
        Ok(())
    } else {
        Err(format!(
            "\"{url}\" is not an http(s) URL (e.g. https://fhir.example.org/r4)"
        ))
    }
}

pub fn set_fhir_url(job: &mut JobConfig, url: &str) {
    match &mut job.fhir {
        Some(f) => f.url = url.trim_end_matches('/').to_string(),
        None => {
            job.fhir = Some(FhirSinkConfig::new(url));
            job.ndjson_observations = false;
        }
    }
}

/// The Kafka part of [`apply_env`], also used by `vitalflow simulate`.
pub fn apply_env_kafka(
    k: &mut KafkaConfig,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<(), Vec<String>> {
    let mut errors = Vec::new();
    for (key, value) in vars {
        match key.as_str() {
            "VITALFLOW_KAFKA_BROKERS" | "VITALFLOW_KAFKA_GROUP_ID" if value.trim().is_empty() => {
                errors.push(format!("{key}: empty"))
            }
            "VITALFLOW_KAFKA_BROKERS" => k.brokers = value,
            "VITALFLOW_KAFKA_GROUP_ID" => k.group_id = value,
            _ => {
                if let Some(prop) = key.strip_prefix("VITALFLOW_KAFKA__") {
                    let prop = prop.to_ascii_lowercase().replace('_', ".");
                    if RESERVED_KAFKA_PROPERTIES.contains(&prop.as_str()) {
                        errors.push(format!(
                            "{key}: {prop} is set by vitalflow (use VITALFLOW_KAFKA_BROKERS / VITALFLOW_KAFKA_GROUP_ID; offsets are committed by the job)"
                        ));
                        continue;
                    }
                    k.properties.insert(prop, value);
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<String> {
        parse(text, "job.toml", Path::new("."))
            .expect_err("invalid")
            .0
            .iter()
            .map(|e| e.to_string())
            .collect()
    }

    const MAPPING: &str = "[mapping]\ndevice = \"templates/bedside-monitor/devicecontent.json\"\nfhir = \"templates/bedside-monitor/fhirmapping.json\"\n";
    const OUTPUT: &str = "[sinks.ndjson]\ndir = \"out\"\n";

    #[test]
    fn a_job_writes_only_the_outputs_it_names() {
        let base = Path::new(".");
        let rules = "[anomaly]\nrules = \"templates/alerts/adult-vitals.toml\"\n";
        let job = parse(
            &format!("source = \"simulator\"\n{MAPPING}[simulator]\n{rules}"),
            "job.toml",
            base,
        )
        .expect("valid");
        assert!(!job.ndjson_observations, "alerts alone write no NDJSON");
        assert!(job.fhir.is_none() && job.lake.is_none());
        let e = errors(&format!("source = \"simulator\"\n{MAPPING}[simulator]\n"));
        assert_eq!(
            e,
            ["job.toml:1:10: sinks: the job names no output: add [sinks.ndjson], [sinks.fhir], [sinks.lake] or [anomaly]"]
        );
    }

    #[test]
    fn embedded_default_is_valid() {
        let job = embedded_default();
        assert_eq!(job.source, SourceConfig::Kafka);
        assert!(job.kafka.as_ref().is_some_and(KafkaConfig::embedded));
        assert!(job.simulator.is_some());
    }

    #[test]
    fn errors_name_line_column_and_field() {
        let text = format!("source = \"kafka\"\n{MAPPING}[kafka]\nbrokers = \"\"\ntopics = []\nstart = \"beginning\"\n[window]\nhorizon = \"a day\"\n{OUTPUT}");
        let e = errors(&text);
        assert_eq!(e.len(), 4, "{e:?}");
        assert!(
            e[0].starts_with("job.toml:6:11: kafka.brokers: must name"),
            "{e:?}"
        );
        assert!(e[1].starts_with("job.toml:7:10: kafka.topics"), "{e:?}");
        assert!(
            e[2].contains(
                ":8:9: kafka.start: expected \"earliest\" or \"latest\", found \"beginning\""
            ),
            "{e:?}"
        );
        assert!(
            e[3].contains(":10:11: window.horizon: \"a day\" is not a duration"),
            "{e:?}"
        );
    }

    #[test]
    fn unknown_fields_and_syntax_errors_have_lines() {
        let e = errors(&format!(
            "source = \"simulator\"\n{MAPPING}[simulator]\ndevcies = 3\n"
        ));
        assert!(
            e[0].starts_with("job.toml:6:1:") && e[0].contains("devcies"),
            "{e:?}"
        );
        let e = errors("source = \"kafka\n");
        assert!(e[0].starts_with("job.toml:1:"), "{e:?}");
    }

    #[test]
    fn lakehouse_settings_are_checked_with_their_lines() {
        let e = errors(&format!(
            "source = \"simulator\"\n{MAPPING}[simulator]\n[sinks.lake]\nlocation = \"gs://b/x\"\ntables = [\"measurements\", \"vitals\"]\n"
        ));
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(
            e[0].starts_with("job.toml:7:") && e[0].contains("\"gs\""),
            "{e:?}"
        );
        assert!(
            e[1].starts_with("job.toml:8:") && e[1].contains("no table \"vitals\""),
            "{e:?}"
        );
        let base = Path::new(".");
        let text = format!(
            "source = \"simulator\"\n{MAPPING}[simulator]\n[sinks.lake]\nlocation = \"out/lake\"\n"
        );
        let mut job = parse(&text, "job.toml", base).expect("valid");
        assert!(
            !job.ndjson_observations,
            "a lakehouse alone writes no NDJSON"
        );
        job.output_dir = PathBuf::from("out");
        job.set_output_dir(PathBuf::from("/tmp/run-1"));
        assert_eq!(job.lake.as_ref().expect("lake").location, "/tmp/run-1/lake");
    }

    #[test]
    fn simulator_settings_are_checked_with_their_lines() {
        let e = errors(&format!("source = \"simulator\"\n{MAPPING}[simulator]\nprofile = \"pager\"\ndropout = 1.0\nartifacts = 2.0\n{OUTPUT}"));
        assert_eq!(e.len(), 3, "{e:?}");
        assert!(
            e[0].starts_with("job.toml:6:11: simulator.profile: unknown profile \"pager\""),
            "{e:?}"
        );
        assert_eq!(e[1], "job.toml:7:11: simulator.dropout: must be below 1");
        assert_eq!(
            e[2],
            "job.toml:8:13: simulator.artifacts: must be between 0 and 1, found 2"
        );
    }

    #[test]
    fn missing_mapping_file_is_reported() {
        let e = errors(&format!("source = \"simulator\"\n[simulator]\n[mapping]\ndevice = \"nope.json\"\nfhir = \"templates/basic/fhirmapping.json\"\n{OUTPUT}"));
        assert_eq!(
            e,
            vec!["job.toml:4:10: mapping.device: file not found: nope.json"]
        );
    }

    #[test]
    fn environment_overrides_secrets_and_brokers() {
        let mut job = embedded_default();
        apply_env(
            &mut job,
            [
                (
                    "VITALFLOW_KAFKA_BROKERS".to_string(),
                    "10.0.0.1:9093".to_string(),
                ),
                (
                    "VITALFLOW_KAFKA__SASL_PASSWORD".to_string(),
                    "s3cret".to_string(),
                ),
                ("HOME".to_string(), "/root".to_string()),
            ],
        )
        .expect("valid overrides");
        let k = job.kafka.expect("kafka");
        assert_eq!(k.brokers, "10.0.0.1:9093");
        assert_eq!(
            k.properties.get("sasl.password").map(String::as_str),
            Some("s3cret")
        );
    }

    #[test]
    fn environment_overrides_are_checked_like_the_job_file() {
        let mut job = embedded_default();
        let e = apply_env(
            &mut job,
            [
                ("VITALFLOW_METRICS_ADDRESS", "not-an-address"),
                ("VITALFLOW_FHIR_URL", "ftp://x"),
                ("VITALFLOW_FHIR_IDENTITY", "Maybe"),
                ("VITALFLOW_LAKE", " "),
                ("VITALFLOW_KAFKA__ENABLE_AUTO_COMMIT", "true"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string())),
        )
        .expect_err("invalid overrides");
        let all = e.join("\n");
        for var in [
            "VITALFLOW_METRICS_ADDRESS",
            "VITALFLOW_FHIR_URL",
            "VITALFLOW_FHIR_IDENTITY",
            "VITALFLOW_LAKE",
            "VITALFLOW_KAFKA__ENABLE_AUTO_COMMIT",
        ] {
            assert!(all.contains(var), "names {var}: {all}");
        }
        assert_eq!(job.metrics_address, None, "an invalid value is not applied");
    }

    #[test]
    fn secrets_never_print_in_debug() {
        let mut job = embedded_default();
        apply_env(
            &mut job,
            [(
                "VITALFLOW_KAFKA__SASL_PASSWORD".to_string(),
                "hunter2".to_string(),
            )],
        )
        .expect("valid");
        let mut lake = crate::lake::LakeConfig::at("s3://b/p");
        lake.storage
            .insert("aws_secret_access_key".into(), "wJalrXUtnFEMI".into());
        job.lake = Some(lake);
        let printed = format!("{job:?}");
        assert!(
            !printed.contains("hunter2") && !printed.contains("wJalrXUtnFEMI"),
            "{printed}"
        );
        assert!(
            printed.contains("sasl.password"),
            "the key is shown: {printed}"
        );
    }

    #[test]
    fn reserved_librdkafka_properties_are_refused() {
        let e = errors(&format!("source = \"kafka\"\n{MAPPING}[kafka]\nbrokers = \"b:9092\"\ntopics = [\"t\"]\nproperties = {{ \"enable.auto.commit\" = true }}\n"));
        assert!(
            e[0].contains("kafka.properties.enable.auto.commit: set by vitalflow"),
            "{e:?}"
        );
    }
}
