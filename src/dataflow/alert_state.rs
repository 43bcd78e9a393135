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

use crate::anomaly::lifecycle::Lifecycle;
use crate::anomaly::signals::VitalState;
use crate::model::{Measurement, Text};
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
    /// Readings waiting for the event clock, as rows ([`Row`]).
    #[serde(rename = "waiting_rows")]
    pub waiting: Vec<Row<'a>>,
    /// Where the alert topic stood per partition (Kafka alerts): every event raised after
    /// this checkpoint lies past it.
    pub alerts_topic: std::collections::BTreeMap<i32, i64>,
    /// Patients whose state holds readings past `seen` (resumed, not yet replayed past).
    pub resumed: Vec<Resumed>,
    /// Per patient, the event time of their last reading (for forgetting the silent).
    pub last: Vec<(&'a str, i64)>,
}

/// A waiting reading in a checkpoint, as a JSON array: its field names once in the code,
/// not once per reading in the file, and its time as integers, not RFC 3339 text. A fast
/// catch-up holds hundreds of thousands of readings waiting for the event clock (partitions
/// read at different speeds), and encoding them as objects was 4.5 % of the peer drain's
/// CPU with two workers.
pub struct Row<'a>(pub &'a Measurement);

impl Serialize for Row<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple as _;
        let m = self.0;
        let t = &m.occurrence_time;
        let mut row = s.serialize_tuple(9)?;
        row.serialize_element(&*m.type_name)?;
        row.serialize_element(&m.device_id)?;
        row.serialize_element(&m.patient_id)?;
        row.serialize_element(&m.encounter_id)?;
        row.serialize_element(&m.correlation_id)?;
        row.serialize_element(&(t.timestamp(), t.timestamp_subsec_nanos()))?;
        row.serialize_element(&m.properties)?;
        row.serialize_element(&m.received_ms)?;
        row.serialize_element(&(m.source.as_ref()).map(|p| (&*p.topic, p.partition, p.offset)))?;
        row.end()
    }
}

/// A [`Row`] as read back.
#[derive(Deserialize)]
struct RowOwned(
    String,
    Text,
    Option<Text>,
    Option<Text>,
    Option<Text>,
    (i64, u32),
    Vec<(String, Text)>,
    Option<i64>,
    Option<(String, i32, i64)>,
);

impl RowOwned {
    fn into_measurement(self) -> anyhow::Result<Measurement> {
        let RowOwned(ty, device, patient, encounter, correlation, (secs, nanos), props, rx, src) =
            self;
        let occurrence_time = chrono::DateTime::from_timestamp(secs, nanos)
            .with_context(|| format!("a waiting reading's time is out of range: {secs}.{nanos}"))?;
        Ok(Measurement {
            type_name: ty.into(),
            device_id: device,
            patient_id: patient,
            encounter_id: encounter,
            correlation_id: correlation,
            occurrence_time,
            properties: props.into_iter().map(|(k, v)| (k.into(), v)).collect(),
            received_ms: rx,
            source: src.map(|(topic, partition, offset)| crate::model::SourcePos {
                topic: topic.into(),
                partition,
                offset,
            }),
        })
    }
}

/// Patients resumed from an earlier checkpoint whose state holds, per partition, the
/// readings up to `seen`, further than the run that resumed them has read.
#[derive(Serialize, Deserialize)]
pub struct Resumed {
    /// The patients.
    pub patients: Vec<String>,
    /// Highest offset their state holds, per (topic, partition).
    pub seen: Vec<(String, i32, i64)>,
}

/// One worker's alerting state, as read back.
#[derive(Deserialize)]
pub struct Checkpoint {
    /// See [`CheckpointRef::source`].
    pub source: String,
    /// See [`CheckpointRef::run`].
    pub run: u64,
    /// See [`CheckpointRef::peers`] (0: not recorded).
    #[serde(default)]
    pub peers: usize,
    /// The worker that wrote it (from the file name).
    #[serde(skip)]
    pub worker: usize,
    /// See [`CheckpointRef::seen`].
    pub seen: Vec<(String, i32, i64)>,
    /// See [`CheckpointRef::vitals`].
    pub vitals: VitalState,
    /// See [`CheckpointRef::lifecycle`].
    pub lifecycle: Lifecycle,
    /// See [`CheckpointRef::waiting`]; checkpoints before rows held them as objects.
    #[serde(default)]
    pub waiting: Vec<Measurement>,
    /// See [`CheckpointRef::waiting`]: moved into `waiting` as the file is read.
    #[serde(default, rename = "waiting_rows")]
    waiting_rows: Vec<RowOwned>,
    /// See [`CheckpointRef::alerts_topic`].
    #[serde(default)]
    pub alerts_topic: std::collections::BTreeMap<i32, i64>,
    /// See [`CheckpointRef::resumed`].
    #[serde(default)]
    pub resumed: Vec<Resumed>,
    /// See [`CheckpointRef::last`].
    #[serde(default)]
    pub last: Vec<(String, i64)>,
}

/// Where a restart reads the alert topic back from: per partition the least position of
/// any checkpoint (a partition some checkpoint does not name: from its start). When a
/// worker of the newest run left no checkpoint at all, its patients start afresh and raise
/// again everything an earlier run sent for them, which no checkpoint's position bounds:
/// then from the start.
pub fn alerts_topic_from(checkpoints: &[Checkpoint]) -> std::collections::BTreeMap<i32, i64> {
    let complete = checkpoints.first().is_some_and(|newest| {
        newest.peers > 0 && (0..newest.peers).all(|w| checkpoints.iter().any(|c| c.worker == w))
    });
    if !complete {
        return std::collections::BTreeMap::new();
    }
    let mut from = std::collections::BTreeMap::new();
    let mut unknown = std::collections::BTreeSet::new();
    for c in checkpoints {
        for (q, o) in &c.alerts_topic {
            let e = from.entry(*q).or_insert(*o);
            *e = (*e).min(*o);
        }
    }
    for c in checkpoints {
        unknown.extend(
            from.keys()
                .copied()
                .filter(|q| !c.alerts_topic.contains_key(q)),
        );
    }
    if checkpoints.iter().any(|c| c.alerts_topic.is_empty()) {
        return std::collections::BTreeMap::new();
    }
    from.retain(|q, _| !unknown.contains(q));
    from
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

/// A checkpoint's bytes (zstd-compressed JSON).
///
/// The JSON goes to zstd's stream encoder through a 64 KiB buffer, never whole: on a fast
/// catch-up a checkpoint holds hundreds of thousands of waiting readings, tens of MB of
/// JSON, and a buffer of that size growing to fit each larger checkpoint was fresh pages to
/// fault in and copy (4 % of the peer drain's worker samples). Written to the stream encoder
/// field by field, zstd's per-call overhead was over half of encoding; the buffer's writes
/// are large enough that it is not.
pub fn encode(checkpoint: &CheckpointRef<'_>) -> anyhow::Result<Vec<u8>> {
    let zstd = zstd::stream::write::Encoder::new(Vec::new(), 3)?;
    let mut json = std::io::BufWriter::with_capacity(1 << 16, zstd);
    serde_json::to_writer(&mut json, checkpoint)?;
    let zstd = json.into_inner().map_err(|e| e.into_error())?;
    Ok(zstd.finish()?)
}

/// A checkpoint from its JSON (see [`encode`]).
fn decode(text: &[u8]) -> anyhow::Result<Checkpoint> {
    let mut c: Checkpoint = serde_json::from_slice(text)?;
    let rows = std::mem::take(&mut c.waiting_rows);
    for r in rows {
        c.waiting.push(r.into_measurement()?);
    }
    Ok(c)
}

/// Writes `bytes` (see [`encode`]) as `worker`'s checkpoint: a temporary file, fsynced,
/// then renamed.
pub fn write(at: &Place, worker: usize, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = &at.dir;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let done = dir.join(format!("w{worker:03}.json.zst"));
    let tmp = dir.join(format!(".w{worker:03}.json.zst.tmp"));
    let written = std::fs::File::create(&tmp).and_then(|mut f| {
        f.write_all(bytes)?;
        f.sync_all()
    });
    written.with_context(|| format!("cannot write {}", tmp.display()))?;
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
        let mut c = decode(&text).with_context(|| {
            format!(
                "{} is not an alerting checkpoint (remove it to start the alert state afresh)",
                p.display()
            )
        })?;
        c.worker = p
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix('w')?.strip_suffix(".json.zst")?.parse().ok())
            .unwrap_or(usize::MAX);
        if c.source == source {
            out.push(c);
        }
    }
    out.sort_by_key(|c| std::cmp::Reverse(c.run));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::SourcePos;

    fn reading(nanos: u32, full: bool) -> Measurement {
        Measurement {
            type_name: "bloodPressure".into(),
            device_id: "BM-7".into(),
            patient_id: full.then(|| "P-7".into()),
            encounter_id: full.then(|| "E-1".into()),
            correlation_id: full.then(|| "c-9".into()),
            occurrence_time: chrono::DateTime::from_timestamp(1_764_892_800, nanos).expect("t"),
            properties: vec![
                ("systolic".into(), "120".into()),
                ("note".into(), "a \"b\"".into()),
            ],
            received_ms: full.then_some(1_764_892_800_250),
            source: full.then(|| SourcePos {
                topic: "vitals".into(),
                partition: 3,
                offset: 41,
            }),
        }
    }

    fn checkpoint_text(waiting: &[Measurement]) -> Vec<u8> {
        let (vitals, lifecycle) = (VitalState::default(), Lifecycle::default());
        let c = CheckpointRef {
            source: "g/vitals",
            run: 1,
            peers: 2,
            seen: vec![("vitals".into(), 3, 41)],
            applied: Some(1),
            vitals: &vitals,
            lifecycle: &lifecycle,
            waiting: waiting.iter().map(Row).collect(),
            alerts_topic: Default::default(),
            resumed: Vec::new(),
            last: Vec::new(),
        };
        zstd::stream::decode_all(encode(&c).expect("encode").as_slice()).expect("zstd")
    }

    #[test]
    fn waiting_readings_come_back_exactly_as_they_were() {
        let waiting = vec![reading(123_456_789, true), reading(0, false)];
        let text = checkpoint_text(&waiting);
        assert!(
            !String::from_utf8_lossy(&text).contains("device_id"),
            "rows, not objects"
        );
        let c = decode(&text).expect("decode");
        assert_eq!(c.waiting, waiting);
        assert_eq!(c.seen, vec![("vitals".to_string(), 3, 41)]);
    }

    #[test]
    fn a_checkpoint_written_before_rows_still_reads() {
        let waiting = vec![reading(5_000_000, true)];
        let mut v: serde_json::Value = serde_json::from_slice(&checkpoint_text(&[])).expect("json");
        v["waiting"] = serde_json::to_value(&waiting).expect("objects");
        v.as_object_mut().expect("object").remove("waiting_rows");
        let c = decode(&serde_json::to_vec(&v).expect("json")).expect("decode");
        assert_eq!(c.waiting, waiting);
    }

    #[test]
    fn a_row_with_a_time_out_of_range_is_an_error() {
        let mut v: serde_json::Value =
            serde_json::from_slice(&checkpoint_text(&[reading(0, true)])).expect("json");
        v["waiting_rows"][0][5] = serde_json::json!([i64::MAX, 0]);
        let Err(e) = decode(&serde_json::to_vec(&v).expect("json")) else {
            panic!("a time out of range decoded");
        };
        assert!(format!("{e:#}").contains("out of range"), "{e:#}");
    }
}
