//! FHIR server Observation sink: identity resolution, then idempotent upserts of every version.
//!
//! Per flush, each version the windows emitted is written, in order (several versions of
//! one Observation in successive rounds), as a PUT by its deterministic id (the connector's
//! SHA-256 of `{patient}.{device}.{type}.{segment}` with
//! resolved resource ids) inside `batch` Bundles. The sink remembers, per Observation it
//! wrote, the version the server gave and which window instance it was built from:
//!
//! - the same window instance again: its group holds every value written, so the
//!   Observation is built afresh (status `amended`) and PUT with `If-Match` on that version;
//! - anything else (first sight after a restart, a window evicted and reopened by late data):
//!   the stored Observation is read by id (batched) and the group merged into it exactly as
//!   the connector merges; an unchanged merge writes nothing.
//!
//! 409/412 answers (someone else wrote meanwhile) re-read, re-merge and retry. A flush
//! succeeds only when every Observation was acknowledged, refused with a reason (dead
//! letters) or found unchanged; otherwise what is left stays pending and the flush fails, so
//! the dataflow holds the epoch and its offsets until a retry succeeds.

use super::dead_letter::DeadLetter;
use super::Sink;
use crate::config::FhirSinkConfig;
use crate::fhir::client::{etag_version, FhirClient, FhirError};
use crate::fhir::identity::{Identity, IdentityKey, Resolver};
use crate::fhir::observation::{self, identifier_value, observation_id, period_end, Subjects};
use crate::fhir::store::WindowUpdate;
use crate::metrics::Metrics;
use crate::model::{Origin, RawMessage};
use crate::time::format_dotnet;
use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// What the sink knows of an Observation it wrote.
struct Known {
    version: Option<String>,
    /// The window instance whose group holds every value of the stored version.
    instance: Option<u64>,
    end: DateTime<Utc>,
}

/// One Observation to write this flush.
struct Write {
    window: String,
    id: String,
    resource: Value,
    if_match: Option<String>,
    from_group: bool,
}

/// Attempts at an Observation that keeps conflicting within one flush.
const CONFLICT_ROUNDS: usize = 3;

/// One worker's FHIR Observation output.
pub struct FhirSink {
    client: Arc<FhirClient>,
    resolver: Resolver,
    batch_size: usize,
    concurrency: usize,
    pending: HashMap<String, (u64, WindowUpdate)>,
    /// Later versions of Observations already pending, written in rounds after them: the
    /// server keeps every version the windows emitted, however often the sink flushes.
    queued: HashMap<String, std::collections::VecDeque<(u64, WindowUpdate)>>,
    known: HashMap<String, Known>,
    dead_letters: Box<dyn Sink<DeadLetter> + Send>,
    horizon: chrono::Duration,
    newest: Option<DateTime<Utc>>,
    metrics: Arc<Metrics>,
}

/// A measurement group that cannot be written, as a dead letter: the group as JSON, with
/// the device as key, so it can be inspected and replayed.
pub fn group_dead_letter(u: &WindowUpdate, stage: &'static str, error: String) -> DeadLetter {
    let values: Map<String, Value> = u
        .group
        .values
        .iter()
        .map(|(name, tv)| {
            let list = tv
                .iter()
                .map(|v| json!([format_dotnet(&v.at()), v.text()]))
                .collect();
            (name.to_string(), Value::Array(list))
        })
        .collect();
    let payload = json!({
        "type": &*u.type_name,
        "deviceId": u.device,
        "patientId": u.patient,
        "encounterId": u.encounter,
        "periodStart": format_dotnet(&u.group.start),
        "periodEnd": format_dotnet(&u.group.end),
        "values": values,
    });
    DeadLetter {
        message: RawMessage {
            payload: serde_json::to_vec(&payload).expect("JSON"),
            key: Some(u.device.clone().into_bytes()),
            headers: Vec::new(),
            origin: Origin {
                topic: Arc::from("vitalflow:measurement-group"),
                partition: 0,
                offset: 0,
                timestamp_ms: None,
            },
        },
        stage,
        error,
        template: Some(json!({ "typeName": &*u.type_name })),
    }
}

fn version_of(resource: &Value, etag: Option<&str>) -> Option<String> {
    etag.map(|e| etag_version(e).to_string()).or_else(|| {
        resource
            .pointer("/meta/versionId")
            .and_then(Value::as_str)
            .map(str::to_string)
    })
}

/// A FHIR failure as a sink error: credentials refused become [`Fatal`] (the job stops),
/// anything else is retried.
pub fn sink_error(e: FhirError) -> anyhow::Error {
    // The error's text may echo the batch (a server's diagnostics quote what it refused):
    // what a flush error shows, and what the log prints at its default level, is its
    // summary; the whole text is logged at debug level.
    let shown = format!(
        "{} (details at debug level: VITALFLOW_LOG=vitalflow=debug)",
        e.summary()
    );
    let redacted = crate::privacy::Redacted::new(shown, &e.to_string());
    if e.is_fatal() {
        anyhow::Error::new(super::Fatal(redacted.to_string()))
    } else {
        anyhow::Error::new(redacted)
    }
}

/// The identifiers a window's group is resolved by.
fn identity_key(u: &WindowUpdate) -> IdentityKey {
    IdentityKey {
        device: u.device.clone(),
        patient: u.patient.clone(),
        encounter: u.encounter.clone(),
    }
}

fn subjects(identity: &Identity) -> Subjects<'_> {
    Subjects {
        patient: &identity.patient,
        device: &identity.device,
        encounter: identity.encounter.as_deref(),
        resolved: true,
    }
}

impl FhirSink {
    /// A sink writing through `client`; failures to link or write a group go to
    /// `dead_letters`.
    pub fn new(
        client: Arc<FhirClient>,
        cfg: &FhirSinkConfig,
        dead_letters: Box<dyn Sink<DeadLetter> + Send>,
        horizon: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            client,
            resolver: Resolver::new(cfg),
            batch_size: cfg.batch_size.max(1),
            concurrency: cfg.concurrency.max(1),
            pending: HashMap::new(),
            queued: HashMap::new(),
            known: HashMap::new(),
            dead_letters,
            horizon: chrono::Duration::from_std(horizon).unwrap_or(chrono::Duration::MAX),
            newest: None,
            metrics,
        }
    }

    fn dead(&mut self, window: &str, stage: &'static str, error: String) -> anyhow::Result<()> {
        if let Some((epoch, u)) = self.pending.remove(window) {
            // The reason names identifiers: it goes with the dead letter, not to the log.
            tracing::warn!(r#type = %u.type_name, stage, "measurement group to the dead letters (the dead letter says why)");
            tracing::debug!(r#type = %u.type_name, stage, "measurement group to the dead letters: {error}");
            Metrics::add(&self.metrics.dead_letters, 1);
            self.dead_letters
                .write(epoch, group_dead_letter(&u, stage, error))?;
        }
        Ok(())
    }

    /// Records what the server now holds for `w` and drops it from the pending updates.
    fn acknowledged(&mut self, w: &Write, version: Option<String>) {
        let (_, u) = self.pending.remove(&w.window).expect("pending");
        self.metrics
            .record_versions(false, std::iter::once(u.emitted_ms));
        let end = period_end(&w.resource).unwrap_or(u.group.end);
        self.newest = Some(self.newest.map_or(end, |n| n.max(end)));
        self.known.insert(
            w.id.clone(),
            Known {
                version,
                instance: w.from_group.then_some(u.instance),
                end,
            },
        );
    }

    /// Builds from the group alone, or says the stored version must be read first.
    fn plan(&self, window: &str, identity: &Identity) -> Result<Option<Write>, String> {
        let (_, u) = &self.pending[window];
        let subjects = subjects(identity);
        let id = self.observation_id(window, identity);
        let Some(k) = self
            .known
            .get(&id)
            .filter(|k| k.instance == Some(u.instance))
        else {
            return Ok(None);
        };
        let mut resource = observation::build(&u.template, &u.type_name, &u.group, &subjects)
            .map_err(|e| e.to_string())?;
        resource["status"] = "amended".into();
        Ok(Some(Write {
            window: window.to_string(),
            id,
            resource,
            if_match: k.version.clone(),
            from_group: true,
        }))
    }

    /// Reads the stored versions of `reads` (window, identity, id) and builds or merges.
    fn read_and_merge(
        &mut self,
        reads: Vec<(String, Identity, String)>,
        writes: &mut Vec<Write>,
        unavailable: &mut Option<String>,
    ) -> anyhow::Result<()> {
        for chunk in reads.chunks(self.batch_size) {
            let entries = chunk
                .iter()
                .map(|(_, _, id)| json!({"request": {"method": "GET", "url": format!("Observation/{id}")}}))
                .collect();
            let answers = self.client.batch(entries).map_err(sink_error)?;
            for ((window, identity, id), a) in chunk.iter().zip(answers) {
                let (_, u) = &self.pending[window];
                let subjects = subjects(identity);
                let (result, if_match, stored) = match a.status {
                    200 => (
                        observation::merge(&u.template, &u.group, &a.resource),
                        version_of(&a.resource, a.etag.as_deref()),
                        Some(&a.resource),
                    ),
                    404 | 410 => (
                        observation::build(&u.template, &u.type_name, &u.group, &subjects),
                        None,
                        None,
                    ),
                    s if s == 429 || s >= 500 => {
                        unavailable.get_or_insert(format!(
                            "reading Observation/{} answered {s}",
                            crate::privacy::tag(id)
                        ));
                        continue;
                    }
                    s => {
                        let why = format!(
                            "reading Observation/{id} answered {s}: {}",
                            a.diagnostics.unwrap_or_default()
                        );
                        self.dead(window, "fhir", why)?;
                        continue;
                    }
                };
                let resource = match result {
                    Ok(r) => r,
                    Err(e) => {
                        // A value the FHIR template cannot represent: the group cannot be
                        // written as mapped, so it is kept in the dead letters with why.
                        Metrics::add(&self.metrics.observation_errors, 1);
                        self.dead(window, "fhir", format!("cannot build the Observation: {e}"))?;
                        continue;
                    }
                };
                let w = Write {
                    window: window.clone(),
                    id: id.clone(),
                    from_group: stored.is_none(),
                    if_match,
                    resource,
                };
                if stored == Some(&w.resource) {
                    // The server already holds all of it (a replay): nothing to write.
                    Metrics::add(&self.metrics.observations_unchanged, 1);
                    let version = w.if_match.clone();
                    self.acknowledged(&w, version);
                    continue;
                }
                writes.push(w);
            }
        }
        Ok(())
    }

    /// PUTs `writes`; returns those that conflicted (to re-read and merge again).
    fn put(
        &mut self,
        writes: Vec<Write>,
        unavailable: &mut Option<String>,
    ) -> anyhow::Result<Vec<String>> {
        let mut conflicts = Vec::new();
        let base = self.client.base().to_string();
        let bundle = |chunk: &[Write]| -> Vec<Value> {
            chunk
                .iter()
                .map(|w| {
                    let mut request =
                        json!({"method": "PUT", "url": format!("Observation/{}", w.id)});
                    if let Some(v) = &w.if_match {
                        request["ifMatch"] = format!("W/\"{v}\"").into();
                    }
                    json!({
                        "fullUrl": format!("{base}/Observation/{}", w.id),
                        "resource": w.resource,
                        "request": request,
                    })
                })
                .collect()
        };
        let chunks: Vec<&[Write]> = writes.chunks(self.batch_size).collect();
        let mut failed = None;
        for group in chunks.chunks(self.concurrency) {
            // Several Bundles in flight: the server parses and indexes one while it commits
            // another, and the flush waits for the slowest rather than for their sum.
            let client = &self.client;
            let results: Vec<_> = std::thread::scope(|scope| {
                let handles: Vec<_> = group
                    .iter()
                    .map(|chunk| scope.spawn(|| client.batch(bundle(chunk))))
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().expect("a FHIR request thread panicked"))
                    .collect()
            });
            crate::failpoint::hit("fhir.bundles_answered");
            for (chunk, result) in group.iter().zip(results) {
                let answers = match result {
                    Ok(a) => a,
                    Err(e) => {
                        // Answers of the other Bundles still count: record them first.
                        failed.get_or_insert(e);
                        continue;
                    }
                };
                for (w, a) in chunk.iter().zip(answers) {
                    match a.status {
                        200 | 201 => {
                            Metrics::add(&self.metrics.fhir_observations, 1);
                            self.acknowledged(w, version_of(&a.resource, a.etag.as_deref()));
                        }
                        409 | 412 => {
                            tracing::debug!(observation = %w.id, status = a.status, "conflict: re-reading and merging again");
                            self.known.remove(&w.id);
                            conflicts.push(w.window.clone());
                        }
                        s if s == 429 || s >= 500 => {
                            unavailable.get_or_insert(format!(
                                "PUT Observation/{} answered {s}",
                                crate::privacy::tag(&w.id)
                            ));
                        }
                        s => {
                            let why = format!(
                                "PUT Observation/{} answered {s}: {}",
                                w.id,
                                a.diagnostics
                                    .unwrap_or_else(|| "no OperationOutcome".into())
                            );
                            tracing::error!(observation = %crate::privacy::tag(&w.id), status = s, "the FHIR server refused an Observation (the dead letter has its diagnostics)");
                            tracing::debug!(observation = %w.id, "refused: {why}");
                            Metrics::add(&self.metrics.observation_errors, 1);
                            self.dead(&w.window, "fhir", why)?;
                        }
                    }
                }
            }
        }
        match failed {
            Some(e) => Err(sink_error(e)),
            None => Ok(conflicts),
        }
    }

    fn write_pending(&mut self) -> anyhow::Result<()> {
        let mut windows: Vec<String> = self.pending.keys().cloned().collect();
        windows.sort();
        let keys: Vec<IdentityKey> = windows
            .iter()
            .map(|w| identity_key(&self.pending[w].1))
            .collect();
        let identities = self
            .resolver
            .resolve(&self.client, &keys)
            .map_err(sink_error)?;
        let mut unavailable = None;
        let mut writes = Vec::new();
        let mut reads = Vec::new();
        for (window, key) in windows.into_iter().zip(keys) {
            match &identities[&key] {
                Err(why) => self.dead(&window, "identity", why.clone())?,
                Ok(identity) => match self.plan(&window, identity) {
                    Ok(Some(w)) => writes.push(w),
                    Ok(None) => {
                        let id = self.observation_id(&window, identity);
                        reads.push((window, identity.clone(), id));
                    }
                    Err(e) => {
                        Metrics::add(&self.metrics.observation_errors, 1);
                        self.dead(
                            &window,
                            "fhir",
                            format!("cannot build the Observation: {e}"),
                        )?;
                    }
                },
            }
        }
        for _ in 0..CONFLICT_ROUNDS {
            self.read_and_merge(std::mem::take(&mut reads), &mut writes, &mut unavailable)?;
            let conflicts = self.put(std::mem::take(&mut writes), &mut unavailable)?;
            if conflicts.is_empty() {
                break;
            }
            for window in conflicts {
                let key = identity_key(&self.pending[&window].1);
                if let Ok(identity) = &identities[&key] {
                    let id = self.observation_id(&window, identity);
                    reads.push((window, identity.clone(), id));
                }
            }
        }
        self.dead_letters.flush()?;
        if let Some(cutoff) = self.newest.and_then(|n| n.checked_sub_signed(self.horizon)) {
            self.known.retain(|_, k| k.end >= cutoff);
        }
        match (unavailable, self.pending.len()) {
            (_, 0) => Ok(()),
            (Some(why), n) => Err(anyhow::anyhow!(
                "{n} Observations not written yet, kept for the retry: {why}"
            )),
            (None, n) => Err(anyhow::anyhow!(
                "{n} Observations still conflicting after {CONFLICT_ROUNDS} attempts, kept for the retry"
            )),
        }
    }

    /// The connector's Observation id for a pending window, from the resolved ids.
    fn observation_id(&self, window: &str, identity: &Identity) -> String {
        let (_, u) = &self.pending[window];
        observation_id(&identifier_value(
            &subjects(identity),
            &u.type_name,
            &u.group.id_segment,
        ))
    }
}

impl Sink<WindowUpdate> for FhirSink {
    fn write(&mut self, epoch: u64, item: WindowUpdate) -> anyhow::Result<()> {
        if self.pending.contains_key(&item.id) {
            self.queued
                .entry(item.id.clone())
                .or_default()
                .push_back((epoch, item));
        } else {
            self.pending.insert(item.id.clone(), (epoch, item));
        }
        Ok(())
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        if self.pending.is_empty() {
            return self.dead_letters.flush();
        }
        loop {
            self.write_pending()?;
            // The next version of each Observation, in the order the windows emitted them.
            self.queued.retain(|id, q| {
                if let Some(next) = q.pop_front() {
                    self.pending.insert(id.clone(), next);
                }
                !q.is_empty()
            });
            if self.pending.is_empty() {
                return Ok(());
            }
        }
    }
}
