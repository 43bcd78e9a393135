//! Alerting's checkpoints: each worker's patient state, written atomically beside the
//! outputs (`<output>/alert-state/w{worker}.json.zst`, zstd-compressed JSON: a tenth of
//! the bytes), so that a job killed mid-episode
//! continues the same alert after a restart instead of opening a second one.
//!
//! A checkpoint holds what the worker's alerting holds: vital state, lifecycle tracks and
//! timers, readings waiting for the event clock, how far event time was applied, and per
//! source partition the highest offset it took in. Alerting holds the epochs it took in
//! since its last checkpoint, so no offset is committed past what a checkpoint covers. At
//! start every worker reads every checkpoint of the same input (any worker count), keeps
//! the patients it now owns, and skips the replayed readings a checkpoint already holds.
//! Files carry the run that wrote them: a patient found in several (a run with another
//! worker count that has not checkpointed every worker yet) is taken from the newest.
//! Rebuilding the state from the input instead would mean re-reading an unbounded past
//! (an episode can last hours); the state itself is small.

use super::alerting::PatientAlerts;
use super::event_clock::{PartitionCut, PartitionKey};
use crate::anomaly::lifecycle::Lifecycle;
use crate::anomaly::signals::VitalState;
use crate::model::Measurement;
use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// One worker's alerting state, as written.
#[derive(Serialize)]
pub struct CheckpointRef<'a> {
    /// The input it belongs to (a consumer group and its topics).
    pub source: &'a str,
    /// The run that wrote it (ms since the Unix epoch at its start).
    pub run: u64,
    /// Workers of that run.
    pub peers: usize,
    /// Highest offset taken in, per (topic, partition).
    pub seen: Vec<(String, i32, i64)>,
    /// Event time applied through.
    pub applied: Option<i64>,
    /// Vital state.
    pub vitals: &'a VitalState,
    /// Alert tracks and timers.
    pub lifecycle: &'a Lifecycle,
    /// Readings waiting for the event clock.
    pub waiting: Vec<&'a Measurement>,
}

/// One worker's alerting state, as read back.
#[derive(Deserialize)]
pub struct Checkpoint {
    /// See [`CheckpointRef::source`].
    pub source: String,
    /// See [`CheckpointRef::run`].
    pub run: u64,
    /// See [`CheckpointRef::seen`].
    pub seen: Vec<(String, i32, i64)>,
    /// See [`CheckpointRef::applied`].
    pub applied: Option<i64>,
    /// See [`CheckpointRef::vitals`].
    pub vitals: VitalState,
    /// See [`CheckpointRef::lifecycle`].
    pub lifecycle: Lifecycle,
    /// See [`CheckpointRef::waiting`].
    pub waiting: Vec<Measurement>,
}

/// Where a run's worker writes.
pub struct Place {
    /// The directory.
    pub dir: PathBuf,
    /// The input.
    pub source: String,
    /// This run.
    pub run: u64,
    /// Its workers.
    pub peers: usize,
}

/// Writes `state` as `worker`'s checkpoint: a temporary file, fsynced, then renamed.
pub fn write(at: &Place, worker: usize, state: &PatientAlerts) -> anyhow::Result<()> {
    let dir = &at.dir;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let done = dir.join(format!("w{worker:03}.json.zst"));
    let tmp = dir.join(format!(".w{worker:03}.json.zst.tmp"));
    let f =
        std::fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    let cannot = |e: std::io::Error| anyhow::anyhow!("cannot write {}: {e}", tmp.display());
    let mut z = zstd::stream::write::Encoder::new(std::io::BufWriter::new(f), 3).map_err(cannot)?;
    serde_json::to_writer(&mut z, &state.checkpoint(&at.source, at.run, at.peers))
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    let mut w = z.finish().map_err(cannot)?;
    w.flush().map_err(cannot)?;
    let f = w
        .into_inner()
        .map_err(|e| anyhow::anyhow!("cannot write {}: {}", tmp.display(), e.error()))?;
    f.sync_all()
        .with_context(|| format!("cannot sync {}", tmp.display()))?;
    crate::failpoint::hit("alerts.checkpoint_synced");
    std::fs::rename(&tmp, &done).with_context(|| format!("cannot commit {}", done.display()))?;
    std::fs::File::open(dir).and_then(|d| d.sync_all()).ok();
    crate::failpoint::hit("alerts.checkpoint_written");
    Ok(())
}

/// Every checkpoint of `source` in `dir`, newest run first (none when the directory is
/// absent). An unreadable one stops the start, naming it: starting without it would alert
/// twice for the episodes it holds.
pub fn read_all(dir: &Path, source: &str) -> anyhow::Result<Vec<Checkpoint>> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(Vec::new());
    };
    let mut paths: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('w') && n.ends_with(".json.zst"))
        })
        .collect();
    paths.sort();
    let mut out = Vec::new();
    for p in paths {
        let packed = std::fs::read(&p).with_context(|| format!("cannot read {}", p.display()))?;
        let text = zstd::stream::decode_all(packed.as_slice())
            .with_context(|| format!("{} is not zstd-compressed", p.display()))?;
        let c: Checkpoint = serde_json::from_slice(&text).with_context(|| {
            format!(
                "{} is not an alerting checkpoint (remove it to start the alert state afresh)",
                p.display()
            )
        })?;
        if c.source == source {
            out.push(c);
        }
    }
    out.sort_by_key(|c| std::cmp::Reverse(c.run));
    Ok(out)
}

/// Where the event clock's partition cuts live, beside the alerting checkpoints.
fn cuts_dir(dir: &Path) -> PathBuf {
    dir.join("clock")
}

/// Writes each partition's cut at the offsets about to be committed, keeping the one of the
/// previous commit: a kill between this write and the offset commit restarts from that one.
/// Lateness is judged per partition from state no offset holds, so a restart must get it
/// back exactly or judge readings late that the uninterrupted run judged on time.
pub fn write_cuts(
    dir: &Path,
    cuts: &[(PartitionKey, PartitionCut)],
    previous: &std::collections::HashMap<PartitionKey, PartitionCut>,
) -> anyhow::Result<()> {
    let dir = cuts_dir(dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for ((topic, partition), cut) in cuts {
        let key = (topic.clone(), *partition);
        let mut kept: Vec<&PartitionCut> = previous.get(&key).into_iter().collect();
        kept.retain(|p| p.offset != cut.offset);
        kept.push(cut);
        let name = format!("{}.{partition}.json", percent_encoding::utf8_percent_encode(topic, percent_encoding::NON_ALPHANUMERIC));
        let done = dir.join(&name);
        let tmp = dir.join(format!(".{name}.tmp"));
        let text = serde_json::to_vec(&CutsFile {
            topic: topic.to_string(),
            partition: *partition,
            cuts: kept.into_iter().cloned().collect(),
        })?;
        let written = std::fs::File::create(&tmp).and_then(|mut f| {
            f.write_all(&text)?;
            f.sync_all()
        });
        written
            .and_then(|()| std::fs::rename(&tmp, &done))
            .with_context(|| format!("cannot write {}", done.display()))?;
    }
    std::fs::File::open(&dir).and_then(|d| d.sync_all()).ok();
    Ok(())
}

/// Every partition's cuts a previous run left (none when there are none). An unreadable file
/// stops the start, naming it.
pub fn read_cuts(
    dir: &Path,
) -> anyhow::Result<std::collections::HashMap<PartitionKey, Vec<PartitionCut>>> {
    let mut out = std::collections::HashMap::new();
    let Ok(entries) = std::fs::read_dir(cuts_dir(dir)) else {
        return Ok(out);
    };
    for e in entries.flatten() {
        let p = e.path();
        let is_cut = p
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| !n.starts_with('.') && n.ends_with(".json"));
        if !is_cut {
            continue;
        }
        let text = std::fs::read(&p).with_context(|| format!("cannot read {}", p.display()))?;
        let f: CutsFile = serde_json::from_slice(&text).with_context(|| {
            format!(
                "{} is not an event-clock cut (remove it to start the clock afresh)",
                p.display()
            )
        })?;
        out.insert((f.topic.as_str().into(), f.partition), f.cuts);
    }
    Ok(out)
}

/// One partition's cuts, as written.
#[derive(Serialize, Deserialize)]
struct CutsFile {
    topic: String,
    partition: i32,
    cuts: Vec<PartitionCut>,
}
