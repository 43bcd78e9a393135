//! What the job writes beside each offset commit (Kafka sources that outlive the run):
//! per source partition, the state a restart from those offsets needs and no offset holds.
//!
//! - The event clock's state of the partition at the offset ([`PartitionCut`]): lateness is
//!   judged per partition from the devices' recent event times, so a restart that lost them
//!   would judge readings late that the uninterrupted run judged on time, and alert
//!   differently.
//! - Where the dead-letter topic stood when the job had read up to the offset: every dead
//!   letter of a later message lies past it, so a restart reads back from there what it
//!   would otherwise write twice.
//!
//! `<output>/commit-log/<topic>.<partition>.json`, written atomically before the offsets
//! are committed, keeping the record of the previous commit too: a kill between the write
//! and the commit restarts from that one.

use super::event_clock::{PartitionCut, PartitionKey};
use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// What a restart from one partition's offset needs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The event clock of the partition before the offset (the offset is the cut's).
    pub clock: PartitionCut,
    /// Per dead-letter topic partition, an offset no dead letter of a message at or past
    /// the offset precedes.
    #[serde(default)]
    pub dead_letters: BTreeMap<i32, i64>,
}

/// One partition's records, as written.
#[derive(Serialize, Deserialize)]
struct File {
    topic: String,
    partition: i32,
    records: Vec<Record>,
}

/// The directory under the job's output directory.
pub fn dir(output: &Path) -> PathBuf {
    output.join("commit-log")
}

fn file_name(topic: &str, partition: i32) -> String {
    let topic = percent_encoding::utf8_percent_encode(topic, percent_encoding::NON_ALPHANUMERIC);
    format!("{topic}.{partition}.json")
}

/// Writes each partition's record for the offsets about to be committed, keeping those
/// the committed offsets may still stand at (`previous`: the last commit's, and at start
/// every record found, since the run does not know yet which one its offsets match).
pub fn write(
    dir: &Path,
    records: &[(PartitionKey, Record)],
    previous: &HashMap<PartitionKey, Vec<Record>>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for ((topic, partition), record) in records {
        let key = (topic.clone(), *partition);
        let mut kept: Vec<Record> = previous
            .get(&key)
            .into_iter()
            .flatten()
            .filter(|p| p.clock.offset != record.clock.offset)
            .cloned()
            .collect();
        kept.push(record.clone());
        let name = file_name(topic, *partition);
        let done = dir.join(&name);
        let tmp = dir.join(format!(".{name}.tmp"));
        let text = serde_json::to_vec(&File {
            topic: topic.to_string(),
            partition: *partition,
            records: kept,
        })?;
        let written = std::fs::File::create(&tmp).and_then(|mut f| {
            f.write_all(&text)?;
            f.sync_all()
        });
        written
            .and_then(|()| std::fs::rename(&tmp, &done))
            .with_context(|| format!("cannot write {}", done.display()))?;
    }
    std::fs::File::open(dir).and_then(|d| d.sync_all()).ok();
    Ok(())
}

/// Every partition's records a previous run left (none when there are none). An
/// unreadable file stops the start, naming it.
pub fn read(dir: &Path) -> anyhow::Result<HashMap<PartitionKey, Vec<Record>>> {
    let mut out = HashMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(out);
    };
    for e in entries.flatten() {
        let p = e.path();
        let is_log = p
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| !n.starts_with('.') && n.ends_with(".json"));
        if !is_log {
            continue;
        }
        let text = std::fs::read(&p).with_context(|| format!("cannot read {}", p.display()))?;
        let f: File = serde_json::from_slice(&text).with_context(|| {
            format!(
                "{} is not a commit-log record (remove it to restart without it: alerts may \
                 then differ and dead letters repeat)",
                p.display()
            )
        })?;
        out.insert((f.topic.as_str().into(), f.partition), f.records);
    }
    Ok(out)
}

/// Where a restart reads the dead-letter topic back from: per partition the least offset
/// any record names. None (read from the start) when some source partition of `sources`
/// (topic → partition count) has no record: it is replayed from where no record bounds
/// the dead letters an earlier run sent for it.
pub fn dead_letters_from(
    records: &HashMap<PartitionKey, Vec<Record>>,
    sources: &BTreeMap<String, i32>,
) -> Option<BTreeMap<i32, i64>> {
    let every = sources.iter().all(|(t, n)| {
        (0..*n).all(|p| {
            records
                .get(&(t.as_str().into(), p))
                .is_some_and(|r| !r.is_empty())
        })
    });
    if !every {
        return None;
    }
    let mut from: Option<BTreeMap<i32, i64>> = None;
    for r in records.values().flatten() {
        let f = from.get_or_insert_with(BTreeMap::new);
        for (q, o) in &r.dead_letters {
            let e = f.entry(*q).or_insert(*o);
            *e = (*e).min(*o);
        }
    }
    from
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_is_read_back_with_the_previous_commits() {
        let tmp = tempfile::tempdir().expect("tmp");
        let key: PartitionKey = ("vitals/ward 3".into(), 2);
        let rec = |offset: i64, dl: i64| Record {
            clock: PartitionCut::empty(offset),
            dead_letters: BTreeMap::from([(0, dl)]),
        };
        write(tmp.path(), &[(key.clone(), rec(10, 4))], &HashMap::new()).expect("write");
        let previous = HashMap::from([(key.clone(), vec![rec(10, 4)])]);
        write(tmp.path(), &[(key.clone(), rec(25, 9))], &previous).expect("write");
        let back = read(tmp.path()).expect("read");
        assert_eq!(back[&key], vec![rec(10, 4), rec(25, 9)]);
        let sources = BTreeMap::from([("vitals/ward 3".to_string(), 3)]);
        assert_eq!(
            dead_letters_from(&back, &sources),
            None,
            "partitions 0 and 1 have no record: from the start"
        );
        let mut all = back.clone();
        for p in [0, 1] {
            all.insert(("vitals/ward 3".into(), p), vec![rec(3, 7)]);
        }
        assert_eq!(
            dead_letters_from(&all, &sources),
            Some(BTreeMap::from([(0, 4)])),
            "from the least position: the older commit's, a kill before the newer commit"
        );
        assert_eq!(dead_letters_from(&HashMap::new(), &sources), None);
        std::fs::write(tmp.path().join("x.0.json"), "{").expect("write");
        let e = read(tmp.path()).expect_err("a damaged record stops the start");
        assert!(format!("{e:#}").contains("x.0.json"), "{e:#}");
    }
}
