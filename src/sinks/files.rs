//! Part files committed atomically: lines go to a hidden temporary file, which a commit
//! fsyncs and renames to `part-w{worker}-{first epoch}-{last epoch}.ndjson`. A reader never
//! sees a partial file, and a crash leaves only temporaries, removed at the next start.
//!
//! A writer may give a part an index, committed before the part as `<part>.index`
//! beside it: a few lines that let a reader skip parts (the Observation output lists the
//! event days a part holds). A part without one (an older writer, a lost index) is read.

use anyhow::Context as _;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// One worker's part files in one directory.
pub struct PartWriter {
    dir: PathBuf,
    worker: usize,
    current: Option<(PathBuf, BufWriter<File>)>,
    first_epoch: u64,
    last_epoch: u64,
    lines: u64,
}

impl PartWriter {
    /// Creates the directory and removes this worker's uncommitted leftovers.
    pub fn new(dir: &Path, worker: usize) -> anyhow::Result<Self> {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let prefix = format!(".part-w{worker:03}-");
        let own = format!("part-w{worker:03}-");
        for e in fs::read_dir(dir)?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            // An index whose part was never committed (a crash between the two renames).
            let orphan = name.starts_with(&own)
                && name
                    .strip_suffix(INDEX_SUFFIX)
                    .is_some_and(|part| !dir.join(part).exists());
            if name.starts_with(&prefix) || orphan {
                let _ = fs::remove_file(e.path());
            }
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            worker,
            current: None,
            first_epoch: 0,
            last_epoch: 0,
            lines: 0,
        })
    }

    /// Appends one line (without its newline) produced at `epoch`.
    pub fn write_line(&mut self, epoch: u64, line: &[u8]) -> anyhow::Result<()> {
        if self.current.is_none() {
            let path = self
                .dir
                .join(format!(".part-w{:03}-{epoch}.tmp", self.worker));
            let f =
                File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
            self.current = Some((path, BufWriter::with_capacity(1 << 16, f)));
            self.first_epoch = epoch;
            self.last_epoch = epoch;
        }
        let (path, w) = self.current.as_mut().expect("open");
        w.write_all(line)
            .and_then(|_| w.write_all(b"\n"))
            .with_context(|| format!("cannot write {}", path.display()))?;
        self.first_epoch = self.first_epoch.min(epoch);
        self.last_epoch = self.last_epoch.max(epoch);
        self.lines += 1;
        Ok(())
    }

    /// Drops the open file uncommitted (a failed flush): the retry rewrites it whole.
    pub fn abort(&mut self) {
        if let Some((tmp, _)) = self.current.take() {
            let _ = fs::remove_file(tmp);
        }
        self.lines = 0;
    }

    /// Commits the open file, if any: returns its final path.
    pub fn commit(&mut self) -> anyhow::Result<Option<PathBuf>> {
        self.commit_with_index(None)
    }

    /// Commits the open file, if any, with `index` written durably beside it first: a part
    /// is never visible without the index it was committed with.
    pub fn commit_with_index(&mut self, index: Option<&str>) -> anyhow::Result<Option<PathBuf>> {
        let Some((tmp, w)) = self.current.take() else {
            return Ok(None);
        };
        let f = w
            .into_inner()
            .map_err(|e| anyhow::anyhow!("cannot write {}: {}", tmp.display(), e.error()))?;
        f.sync_all()
            .with_context(|| format!("cannot sync {}", tmp.display()))?;
        // Parts of one epoch range (versions go out at the oldest epoch a window holds, so
        // several flushes can share one) get a sequence after it: names sort in commit order.
        let base = format!(
            "part-w{:03}-{:016}-{:016}",
            self.worker, self.first_epoch, self.last_epoch
        );
        let name = (0u32..)
            .map(|n| match n {
                0 => format!("{base}.ndjson"),
                n => format!("{base}-{n:06}.ndjson"),
            })
            .find(|n| !self.dir.join(n).exists())
            .expect("a free name");
        let done = self.dir.join(&name);
        crate::failpoint::hit("files.part_synced");
        if let Some(index) = index {
            let staged = self.dir.join(format!(".{name}{INDEX_SUFFIX}.tmp"));
            let written = File::create(&staged).and_then(|mut f| {
                f.write_all(index.as_bytes())?;
                f.sync_all()
            });
            written
                .and_then(|()| fs::rename(&staged, self.dir.join(format!("{name}{INDEX_SUFFIX}"))))
                .with_context(|| format!("cannot write the index of {}", done.display()))?;
        }
        crate::failpoint::hit("files.index_written");
        fs::rename(&tmp, &done).with_context(|| format!("cannot commit {}", done.display()))?;
        // The rename itself is durable only once the directory is synced.
        File::open(&self.dir).and_then(|d| d.sync_all()).ok();
        self.lines = 0;
        Ok(Some(done))
    }
}

const INDEX_SUFFIX: &str = ".index";

/// The index committed with a part, if it has one.
pub fn part_index(part: &Path) -> Option<String> {
    let mut name = part.file_name()?.to_os_string();
    name.push(INDEX_SUFFIX);
    fs::read_to_string(part.with_file_name(name)).ok()
}

/// The index of a part that lists event days (`2026-11-21`, one a line).
pub fn days_index(days: &std::collections::BTreeSet<i32>) -> String {
    days.iter()
        .filter_map(|d| chrono::NaiveDate::default().checked_add_days(chrono::Days::new(*d as u64)))
        .map(|d| format!("{d}\n"))
        .collect()
}

/// The days of a days index; None when it is not one, or empty (an empty index cannot be
/// told from a lost write).
pub fn parse_days_index(text: &str) -> Option<std::collections::BTreeSet<i32>> {
    let days: Option<std::collections::BTreeSet<i32>> = text
        .lines()
        .map(|l| {
            chrono::NaiveDate::parse_from_str(l.trim(), "%Y-%m-%d")
                .ok()
                .map(|d| crate::time::day_of(&d.and_time(chrono::NaiveTime::MIN).and_utc()))
        })
        .collect();
    days.filter(|d| !d.is_empty())
}

/// The committed parts of `dir` that may hold any of `days`, oldest first: those whose
/// index lists one, and those without a (readable) index.
pub fn parts_on_days(dir: &Path, days: &std::collections::BTreeSet<i32>) -> Vec<PathBuf> {
    committed_parts(dir)
        .into_iter()
        .filter(|p| {
            part_index(p)
                .and_then(|t| parse_days_index(&t))
                .is_none_or(|d| !d.is_disjoint(days))
        })
        .collect()
}

/// Committed part files of a directory, oldest first (names sort by worker then epoch, so
/// sort by the epoch range instead).
pub fn committed_parts(dir: &Path) -> Vec<PathBuf> {
    let mut parts: Vec<(String, PathBuf)> = fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let epochs = name.strip_prefix("part-w")?.strip_suffix(".ndjson")?;
                    let (_, range) = epochs.split_once('-')?;
                    Some((range.to_string(), e.path()))
                })
                .collect()
        })
        .unwrap_or_default();
    parts.sort();
    parts.into_iter().map(|(_, p)| p).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_is_atomic_and_leftovers_are_removed() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut w = PartWriter::new(dir.path(), 1).expect("writer");
        w.write_line(1_000, b"{\"a\":1}").expect("write");
        w.write_line(1_050, b"{\"a\":2}").expect("write");
        assert!(
            committed_parts(dir.path()).is_empty(),
            "nothing visible before commit"
        );
        let p = w.commit().expect("commit").expect("a file");
        assert_eq!(
            p.file_name().expect("name").to_string_lossy(),
            "part-w001-0000000000001000-0000000000001050.ndjson"
        );
        assert_eq!(
            fs::read_to_string(&p).expect("read"),
            "{\"a\":1}\n{\"a\":2}\n"
        );
        assert!(w.commit().expect("commit").is_none(), "nothing to commit");
        w.write_line(1_500, b"partial").expect("write");
        w.abort();
        assert!(
            w.commit().expect("commit").is_none(),
            "an aborted file is gone"
        );
        w.write_line(2_000, b"x").expect("write");
        drop(w); // a crash before commit
        let _ = PartWriter::new(dir.path(), 1).expect("restart");
        let names: Vec<_> = fs::read_dir(dir.path())
            .expect("dir")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            vec!["part-w001-0000000000001000-0000000000001050.ndjson"]
        );
    }
}
