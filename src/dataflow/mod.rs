//! The job's dataflow: source → normalize → exchange by device → windows → sinks, and the
//! progress loop that commits source offsets once every output up to them is durable.
//!
//! Timely time is the ingestion epoch (milliseconds since the Unix epoch at which a worker
//! opened it), never event time. Each sink holds an epoch open until it has flushed that
//! epoch's outputs; a probe on the sinks' outputs therefore tells, across all workers and
//! processes, which epochs are durable, and each source commits the positions it recorded at
//! the end of those epochs.

mod alert_state;
mod alerting;
mod board_feed;
pub mod commit_log;
mod committer;
mod control;
mod devices;
mod epoch_gate;
pub mod event_clock;
mod graph;
pub mod normalize;
pub mod operators;
pub mod patient_alerts;
mod sink_thread;
mod time_queue;
pub mod window;

use crate::anomaly::lifecycle::Alert;
use crate::anomaly::reload::Rules;
use crate::anomaly::rules::Vitals;
use crate::config::{JobConfig, KafkaConfig, Output, SourceConfig, EMBEDDED_BROKERS};
use crate::fhir::client::FhirClient;
use crate::fhir::store::WindowUpdate;
use crate::lake::alerts::AlertTableSink;
use crate::lake::measurements::MeasurementTableSink;
use crate::lake::observations::ObservationTableSink;
use crate::mapping::{DeviceMapping, FhirMapping};
use crate::metrics::Metrics;
use crate::model::Measurement;
use crate::sinks::alerts::AlertSink;
use crate::sinks::dead_letter::{DeadLetter, FileDeadLetters, KafkaDeadLetters};
use crate::sinks::fhir::FhirSink;
use crate::sinks::observations::ObservationSink;
use crate::sinks::Sink;
use crate::sources::file::FileSource;
use crate::sources::kafka::KafkaSource;
use crate::sources::simulator::{Simulator, SimulatorSource};
use crate::sources::Source;
use anyhow::{anyhow, Context as _};
use sink_thread::NamedSink;
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How to run a job (command-line flags).
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Worker threads per process.
    pub workers: usize,
    /// Number of processes in the cluster.
    pub processes: usize,
    /// This process's index.
    pub process: usize,
    /// `host:port` of every process (timely cluster), when `processes > 1`.
    pub hosts: Vec<String>,
    /// Stop when the input ends (replays, tests).
    pub until_end: bool,
    /// The ward board the job keeps up to date (in process 0; every process of a cluster
    /// must be started with or without one alike).
    pub board: Option<Arc<crate::board::Board>>,
    /// The topic the board's acknowledgements go to and the job reads them from (a Kafka
    /// source with alerts only; created in the embedded cluster).
    pub acks_topic: Option<String>,
}

/// Counts one `key` fewer in `counts`, dropping the key at zero (the windows' epochs held
/// per checkpoint, the event clock's devices per time).
fn count_down<K: Ord>(counts: &mut BTreeMap<K, usize>, key: K) {
    if let std::collections::btree_map::Entry::Occupied(mut e) = counts.entry(key) {
        *e.get_mut() = e.get().saturating_sub(1);
        if *e.get() == 0 {
            e.remove();
        }
    }
}

/// The worker that owns a key (a device's windows, a patient's alerts): a hash stable
/// across processes and builds (rustc-hash's Fx, fixed by the crate's version; SipHash was
/// 1.3 % of the job's CPU on the peer drain).
pub fn route(key: &str) -> u64 {
    let mut h = rustc_hash::FxHasher::default();
    key.hash(&mut h);
    h.finish()
}

/// A mapping file's text and the name to report it by: the file, else the embedded copy the
/// default job runs from.
pub fn mapping_text(path: &Path) -> anyhow::Result<(String, String)> {
    let name = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(t) => Ok((t, name)),
        Err(e) => crate::config::embedded_template(path)
            .map(|t| (t.to_string(), format!("{name} (embedded)")))
            .ok_or_else(|| anyhow!("cannot read {name}: {e}")),
    }
}

/// Loads and compiles the job's mappings; errors name file, line and template.
pub fn load_mappings(job: &JobConfig) -> anyhow::Result<(DeviceMapping, FhirMapping)> {
    let (text, name) = mapping_text(&job.device_mapping)?;
    let device = DeviceMapping::from_text(&text, Some(&name)).map_err(|e| anyhow!("{e}"))?;
    let (text, name) = mapping_text(&job.fhir_mapping)?;
    let fhir = FhirMapping::from_text(&text, Some(&name)).map_err(|e| anyhow!("{e}"))?;
    for t in crate::mapping::unmapped_types(&device, &fhir) {
        tracing::warn!(
            r#type = %t,
            "the device mapping produces type \"{t}\" but the FHIR mapping has no template for it: its messages will be dead-lettered"
        );
    }
    Ok((device, fhir))
}

/// A mapping or rules file that does not load: a usage error (exit 2), not a failed run.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InvalidConfig(pub String);

/// Everything a worker needs, shared by all workers of the process.
struct Shared {
    job: JobConfig,
    device: Arc<DeviceMapping>,
    mapping: Arc<FhirMapping>,
    /// Bootstrap servers of the embedded cluster, when the job started one.
    embedded_brokers: Option<String>,
    partitions: BTreeMap<String, i32>,
    sim_start: chrono::DateTime<chrono::Utc>,
    until_end: bool,
    metrics: Arc<Metrics>,
    fhir: Option<Arc<FhirClient>>,
    rules: Option<Arc<Rules>>,
    /// Stop, failure and sink backlog, as every operator sees them.
    control: Arc<control::Control>,
    /// Prefix of the lakehouse's exactly-once records (Kafka sources only).
    lake_app: Option<String>,
    /// Where alerting checkpoints its state, and the input it belongs to (Kafka sources
    /// whose positions outlive the run only).
    alert_checkpoints: Option<(std::path::PathBuf, String)>,
    /// Where offset commits record what a restart needs (Kafka sources whose positions
    /// outlive the run only).
    commit_log: Option<std::path::PathBuf>,
    /// The ward board, when the job keeps one.
    board: Option<Arc<crate::board::Board>>,
    /// The topic acknowledgements come in on, when the job takes them.
    acks_topic: Option<String>,
}

impl Shared {
    /// The bootstrap servers of a Kafka connection: the embedded cluster's when it runs
    /// in this process.
    fn bootstrap<'a>(&'a self, k: &'a KafkaConfig) -> &'a str {
        match &self.embedded_brokers {
            Some(b) if k.embedded() => b,
            _ => &k.brokers,
        }
    }
}

/// Writes the board's acknowledgements to `topic`, answering once the broker holds each.
fn ack_input(
    k: &KafkaConfig,
    brokers: &str,
    topic: &str,
) -> anyhow::Result<crate::board::AckInput> {
    let producer = std::sync::Mutex::new(crate::sinks::kafka::AckedProducer::new(
        k,
        brokers,
        "acknowledgements",
    )?);
    let topic = topic.to_string();
    Ok(Box::new(move |request| {
        let payload = serde_json::to_vec(request).map_err(|e| e.to_string())?;
        let p = producer.lock().unwrap_or_else(|e| e.into_inner());
        p.begin();
        p.send(
            0,
            rdkafka::producer::BaseRecord::to(&topic)
                .key(request.patient.as_bytes())
                .payload(&payload),
        )
        .map_err(|e| format!("cannot write the acknowledgement: {e}"))?;
        p.acknowledged("acknowledgement")
            .map_err(|e| format!("{e:#}"))
    }))
}

/// Keeps librdkafka's mock cluster and the simulator feeding it alive for the run.
struct Embedded {
    _cluster: rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    feeder: Option<std::thread::JoinHandle<()>>,
}

fn start_embedded(
    job: &JobConfig,
    k: &KafkaConfig,
    acks_topic: Option<&str>,
    stop: &Arc<AtomicBool>,
) -> anyhow::Result<(Embedded, String)> {
    let cluster =
        rdkafka::mocking::MockCluster::new(1).context("cannot start the embedded Kafka cluster")?;
    let brokers = cluster.bootstrap_servers();
    for t in &k.topics {
        cluster.create_topic(t, k.partitions, 1)?;
    }
    for t in job.output_topics().into_iter().chain(acks_topic) {
        cluster.create_topic(t, 1, 1)?;
    }
    tracing::info!(%brokers, "embedded Kafka cluster (librdkafka mock) started");
    let feeder = match &job.feed {
        Some(sim) => {
            let sim = sim.clone();
            let topic = k.topics[0].clone();
            let k = k.clone();
            let brokers = brokers.clone();
            let stop = stop.clone();
            Some(
                std::thread::Builder::new()
                    .name("simulator".into())
                    .spawn(move || {
                        if let Err(e) = crate::sources::simulator::produce(
                            &sim,
                            &k,
                            &brokers,
                            &topic,
                            Simulator::default_start(&sim),
                            &stop,
                        ) {
                            tracing::error!("simulator: {e:#}");
                        }
                    })?,
            )
        }
        None => None,
    };
    Ok((
        Embedded {
            _cluster: cluster,
            feeder,
        },
        brokers,
    ))
}

/// Runs a job to completion: until `stop` is set (signal, `--duration`) or, with
/// `until_end`, until the input ends. Returns when every output is durable and offsets are
/// committed.
pub fn run(
    job: &JobConfig,
    opts: &RunOptions,
    stop: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
) -> anyhow::Result<()> {
    // Templates and rules first: a bad one is the user's to fix, before any connection.
    let (device, fhir) =
        load_mappings(job).map_err(|e| anyhow::Error::new(InvalidConfig(format!("{e:#}"))))?;
    let rules = match &job.anomaly {
        Some(a) => {
            let path = &a.rules;
            let vitals = Arc::new(Vitals::new(&fhir));
            let rules = Rules::load(path, vitals).map_err(|e| InvalidConfig(e.to_string()))?;
            rules.watch(stop.clone(), metrics.clone());
            let (_, set) = rules.get();
            tracing::info!(file = %set.file, rules = set.rules.len(), news2 = set.news2.is_some(), "alert rules loaded");
            Some(rules)
        }
        None => None,
    };
    // Acknowledgements need a Kafka source (they are input read with it) and alerts.
    let acks_topic = match (&opts.board, &opts.acks_topic, &job.source, &job.anomaly) {
        (Some(_), Some(t), SourceConfig::Kafka(_), Some(_)) => Some(t.clone()),
        _ => None,
    };
    if let Some(board) = &opts.board {
        board.refuse_acks(match (&job.source, &job.anomaly, &opts.acks_topic) {
            (_, None, _) => "this job raises no alerts",
            (SourceConfig::Kafka(_), _, None) => "start the job with --acks-topic TOPIC (a topic of its Kafka cluster) to take acknowledgements",
            (SourceConfig::Kafka(_), _, Some(_)) => "the acknowledgements topic is not ready yet",
            _ => "acknowledgements are input the job reads from Kafka: this job's source is not Kafka",
        });
    }
    let mut embedded = None;
    let mut embedded_brokers = None;
    let mut partitions = BTreeMap::new();
    if let Some(k) = job.kafka() {
        let b = if k.brokers == EMBEDDED_BROKERS {
            if opts.processes > 1 {
                return Err(anyhow!(
                    "kafka.brokers = \"embedded\" runs Kafka inside one process; a job of {} processes needs real brokers",
                    opts.processes
                ));
            }
            let (e, b) = start_embedded(job, k, acks_topic.as_deref(), &stop)?;
            embedded = Some(e);
            embedded_brokers = Some(b.clone());
            b
        } else {
            k.brokers.clone()
        };
        let mut wanted = k.clone();
        if !matches!(job.source, SourceConfig::Kafka(_)) {
            wanted.topics.clear();
        }
        let outputs = job.output_topics();
        wanted.topics.extend(outputs.iter().map(|t| t.to_string()));
        wanted.topics.extend(acks_topic.iter().cloned());
        if !wanted.topics.is_empty() {
            partitions = crate::kafka::wait_for_topics(&wanted, &b)?;
        }
        for t in outputs {
            partitions.remove(t);
        }
        if let (Some(board), Some(topic)) = (&opts.board, &acks_topic) {
            board.take_acks(ack_input(k, &b, topic)?);
        }
    }
    let fhir_client = match &job.fhir {
        Some(cfg) => {
            let client = FhirClient::new(cfg, metrics.clone())?;
            client
                .check_server(cfg.startup_timeout)
                .with_context(|| format!("FHIR server {}", cfg.url))?;
            tracing::info!(url = %cfg.url, identity = ?cfg.identity, "FHIR server ready");
            Some(Arc::new(client))
        }
        None => None,
    };
    if let Some(lake) = &job.lake {
        // Created (or checked) once here: an unwritable location or a table of another
        // schema stops the start with its reason, before any worker reads a message.
        for spec in crate::lake::specs(lake) {
            crate::lake::table::Table::open(&lake.location, spec, &lake.storage)?;
        }
        tracing::info!(location = %lake.location, "lakehouse tables ready");
    }
    // One compactor per job, in its first process.
    let compactor = job
        .lake
        .as_ref()
        .filter(|_| opts.process == 0)
        .and_then(|l| crate::lake::maintain::spawn_compactor(l.clone(), stop.clone()));
    if let Some(addr) = &job.metrics_address {
        let bound = crate::metrics::serve(addr, metrics.clone())?;
        tracing::info!(address = %bound, "serving /metrics and /health");
    }
    // Offsets of the embedded cluster start again at 0 every run: its records are a new
    // source each time, not a replay of the last run's.
    let lake_app = match &job.source {
        SourceConfig::Kafka(k) if k.embedded() => Some(format!(
            "vitalflow/{}/embedded-{}",
            k.group_id,
            chrono::Utc::now().timestamp_millis()
        )),
        SourceConfig::Kafka(k) => Some(format!("vitalflow/{}", k.group_id)),
        _ => None,
    };
    let alert_checkpoints = match (&job.source, &job.anomaly) {
        (SourceConfig::Kafka(k), Some(_)) if !k.embedded() => Some((
            job.output_dir.join("alert-state"),
            format!("kafka/{}/{}", k.group_id, k.topics.join(",")),
        )),
        _ => None,
    };
    let commit_log = match &job.source {
        SourceConfig::Kafka(k) if !k.embedded() => Some(commit_log::dir(&job.output_dir)),
        _ => None,
    };
    let control = control::Control::new(stop.clone(), metrics.clone());
    let shared = Arc::new(Shared {
        job: job.clone(),
        device: Arc::new(device),
        mapping: Arc::new(fhir),
        embedded_brokers,
        partitions,
        sim_start: match &job.source {
            SourceConfig::Simulator(s) => Simulator::default_start(s),
            _ => chrono::Utc::now(),
        },
        until_end: opts.until_end,
        metrics,
        fhir: fhir_client,
        rules,
        control,
        lake_app,
        alert_checkpoints,
        commit_log,
        board: opts.board.clone(),
        acks_topic,
    });
    let communication = if opts.processes > 1 {
        timely::CommunicationConfig::Cluster {
            threads: opts.workers,
            process: opts.process,
            addresses: opts.hosts.clone(),
            report: false,
            zerocopy: false,
            log_fn: Arc::new(|_| None),
        }
    } else {
        timely::CommunicationConfig::Process(opts.workers)
    };
    let config = timely::Config {
        communication,
        worker: timely::WorkerConfig::default(),
    };
    let s = shared.clone();
    let guards = timely::execute(config, move |worker| {
        if let Err(e) = graph::run_worker(worker, &s) {
            s.control.fail(format!("worker {}: {e:#}", worker.index()));
        }
    })
    .map_err(|e| anyhow!("cannot start the timely workers: {e}"))?;
    let results = guards.join();
    stop.store(true, Ordering::Relaxed);
    if let Some(mut e) = embedded {
        if let Some(f) = e.feeder.take() {
            let _ = f.join();
        }
    }
    if let Some(c) = compactor {
        let _ = c.join();
    }
    for r in results {
        r.map_err(|e| anyhow!("a worker failed: {e}"))?;
    }
    if let Some(e) = shared.control.take_failure() {
        return Err(anyhow!(e));
    }
    Ok(())
}

/// The source and the outputs of one worker, grouped by the stream each output reads.
struct WorkerParts {
    source: Box<dyn Source>,
    /// Messages no mapping accepts.
    dead_letters: NamedSink<DeadLetter>,
    /// Where the dead-letter topic stands (Kafka dead letters), for the commit log.
    dead_letter_positions: Option<crate::sinks::dead_letter::Positions>,
    /// Normalized measurements (the lakehouse's `measurements`).
    measurements: Vec<NamedSink<Arc<Measurement>>>,
    /// Observation versions (NDJSON, the FHIR server, the lakehouse's `observations`).
    observations: Vec<NamedSink<WindowUpdate>>,
    /// Alert events (files or a topic, the lakehouse's `alerts`).
    alerts: Vec<NamedSink<Alert>>,
    /// Where the alerts topic stands (Kafka alerts), recorded in alerting checkpoints.
    alerts_topic: Option<crate::sinks::alerts::Positions>,
    /// Device outputs (Device and DeviceMetric versions).
    devices: Vec<NamedSink<crate::fhir::device::DeviceVersion>>,
    /// The versions the device outputs hold of this worker's devices, when it has any.
    device_versions: Option<crate::fhir::device::Versions>,
}

/// The dead-letter sink, and where its topic stands when it is one.
type DeadLetterSink = (
    Box<dyn Sink<DeadLetter> + Send>,
    Option<crate::sinks::dead_letter::Positions>,
);

/// `replayed`: whether its dead letters are of source messages a restart reads again
/// (the FHIR sink's are of measurement groups, always written).
fn dead_letter_sink(
    shared: &Shared,
    dir: &Path,
    index: usize,
    replayed: bool,
) -> anyhow::Result<DeadLetterSink> {
    let job = &shared.job;
    Ok(match &job.dead_letters {
        Output::Topic { kafka, topic: t } => {
            // A restart reads back what it may have sent: from where the commit log says.
            let resume = match (&shared.commit_log, replayed) {
                (Some(log), true) => Some(
                    commit_log::dead_letters_from(&commit_log::read(log)?, &shared.partitions)
                        .unwrap_or_default(),
                ),
                _ => None,
            };
            let sink = KafkaDeadLetters::new(kafka, shared.bootstrap(kafka), t, resume.as_ref())?;
            let positions = sink.positions();
            (Box::new(sink), Some(positions))
        }
        Output::Files => (Box::new(FileDeadLetters::new(dir, index)?), None),
    })
}

fn worker_parts(shared: &Shared, index: usize, peers: usize) -> anyhow::Result<WorkerParts> {
    let job = &shared.job;
    let source: Box<dyn Source> = match &job.source {
        SourceConfig::Kafka(k) => Box::new(KafkaSource::new(
            k,
            shared.bootstrap(k),
            &shared.partitions,
            index,
            peers,
            shared.until_end,
            shared.metrics.clone(),
        )?),
        SourceConfig::File { path, rate } => Box::new(FileSource::new(path, index, peers, *rate)?),
        SourceConfig::Simulator(sim) => {
            Box::new(SimulatorSource::new(sim, shared.sim_start, index, peers))
        }
    };
    let mut observations = Vec::new();
    let mut measurements = Vec::new();
    let mut alerts = Vec::new();
    let mut devices = Vec::new();
    // What each device output holds of this worker's devices (only HL7 v2 carries a tree).
    let mut held = Vec::new();
    let owns = move |d: &str| route(d) % peers as u64 == index as u64;
    let reads_trees = shared.device.reads_hl7() || shared.device.names_device_attributes();
    // The newest device versions the NDJSON output holds: where a FHIR device output starts.
    let mut newest = Vec::new();
    if job.ndjson_observations && reads_trees {
        // Devices go beside the Observations.
        let back = crate::sinks::devices::read_back(&job.output_dir, owns)?;
        let sink = crate::sinks::devices::DeviceSink::new(&job.output_dir, index, &back.held)?;
        devices.push(NamedSink::new("DeviceSink", sink, job.flush_interval));
        held.push(back.held);
        newest = back.newest;
    }
    if job.ndjson_observations {
        let sink = ObservationSink::new(
            &job.output_dir,
            index,
            move |d| route(d) % peers as u64 == index as u64,
            job.horizon,
            shared.metrics.clone(),
        )?;
        observations.push(NamedSink::new("ObservationSink", sink, job.flush_interval));
    }
    if let (Some(cfg), Some(client), true) = (&job.fhir, &shared.fhir, reads_trees) {
        // The server keeps its own history: it takes part in no read-back (its sink writes
        // only what is newer than what it holds).
        let sink = crate::sinks::fhir_devices::FhirDeviceSink::new(
            client.clone(),
            cfg.device_identifier_system.clone(),
            cfg.identity == crate::config::IdentityMode::Create,
            newest,
            shared.metrics.clone(),
        );
        devices.push(NamedSink::new("FhirDevices", sink, cfg.flush_interval));
    }
    if let (Some(cfg), Some(client)) = (&job.fhir, &shared.fhir) {
        // Groups the server refuses get dead letters of their own (in files, a directory of
        // their own: part names are per worker and per writer).
        let (dead, _) = dead_letter_sink(shared, &job.output_dir.join("fhir"), index, false)?;
        let sink = FhirSink::new(
            client.clone(),
            cfg,
            dead,
            job.horizon,
            shared.metrics.clone(),
        );
        observations.push(NamedSink::new("FhirSink", sink, cfg.flush_interval));
    }
    let alert_sink = match (&shared.rules, job.anomaly.as_ref().map(|a| &a.alerts)) {
        (None, _) | (_, None) => None,
        (Some(_), Some(Output::Topic { kafka, topic: t })) => {
            // A restart reads back the events sent after the checkpoints it resumes from.
            let resume = match &shared.alert_checkpoints {
                Some((dir, source)) => Some(alert_state::alerts_topic_from(
                    &alert_state::read_all(dir, source)?,
                )),
                None => None,
            };
            Some(AlertSink::kafka(
                kafka,
                shared.bootstrap(kafka),
                t,
                resume.as_ref(),
                shared.metrics.clone(),
            )?)
        }
        (Some(_), Some(Output::Files)) => Some(AlertSink::files(
            &job.output_dir,
            index,
            shared.metrics.clone(),
        )?),
    };
    let alert_sink = match (alert_sink, &job.fhir, &shared.fhir) {
        (Some(a), Some(cfg), Some(client)) => Some(a.with_fhir(client.clone(), cfg)),
        (a, _, _) => a,
    };
    let alerts_topic = alert_sink.as_ref().and_then(|a| a.positions());
    if let Some(sink) = alert_sink {
        alerts.push(NamedSink::new("AlertSink", sink, Duration::ZERO));
    }
    if let Some(cfg) = &job.lake {
        let (m, every) = (&shared.metrics, cfg.flush_interval);
        if cfg.tables.measurements {
            let sink = MeasurementTableSink::new(
                cfg,
                shared.mapping.clone(),
                shared.lake_app.clone(),
                index,
                m.clone(),
            )?;
            measurements.push(NamedSink::new("LakeMeasurements", sink, every));
        }
        if cfg.tables.observations {
            let sink = ObservationTableSink::new(
                cfg,
                index,
                move |d| route(d) % peers as u64 == index as u64,
                job.horizon,
                m.clone(),
            )?;
            observations.push(NamedSink::new("LakeObservations", sink, every));
        }
        if cfg.tables.alerts && shared.rules.is_some() {
            let sink = AlertTableSink::new(cfg, m.clone())?;
            alerts.push(NamedSink::new("LakeAlerts", sink, every));
        }
        if cfg.tables.devices && reads_trees {
            let h = crate::lake::devices::held(cfg, owns)?;
            let sink = crate::lake::devices::DeviceTableSink::new(cfg, &h, m.clone())?;
            devices.push(NamedSink::new("LakeDevices", sink, every));
            held.push(h);
        }
    }
    let (dead_letters, dead_letter_positions) =
        dead_letter_sink(shared, &job.output_dir, index, true)?;
    Ok(WorkerParts {
        source,
        dead_letters: NamedSink {
            name: "DeadLetterSink",
            sink: dead_letters,
            interval: Duration::ZERO,
        },
        dead_letter_positions,
        measurements,
        observations,
        alerts,
        alerts_topic,
        device_versions: (!devices.is_empty())
            .then(|| crate::fhir::device::Versions::held_by_all(&held)),
        devices,
    })
}

/// Sleeps in small steps until `stop` or the deadline.
pub fn stop_after(stop: Arc<AtomicBool>, after: Duration) {
    std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + after;
        while std::time::Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50));
        }
        stop.store(true, Ordering::Relaxed);
    });
}

#[cfg(test)]
mod tests {
    use super::route;

    /// Sequential identifiers (what simulators and bed numbering give) spread as a random
    /// hash would: no worker gets more than 25 % above its share of 2,000 devices or
    /// patients (SipHash, the hash before, reaches 23 % here).
    #[test]
    fn route_spreads_sequential_identifiers_evenly() {
        for prefix in ["BM-", "P-", "urn:uuid:0000-", ""] {
            for peers in [2u64, 3, 4, 6, 8, 16] {
                let mut counts = vec![0u64; peers as usize];
                for i in 0..2000 {
                    counts[(route(&format!("{prefix}{i:04}")) % peers) as usize] += 1;
                }
                let share = 2000 / peers;
                let most = *counts.iter().max().expect("workers");
                assert!(
                    most * 100 <= share * 125,
                    "{prefix} over {peers} workers: {counts:?}"
                );
            }
        }
    }
}
