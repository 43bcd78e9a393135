//! NDJSON file source for replays: one device message per line. Worker `w` of `n` takes lines
//! `l` with `l mod n == w`; worker 0 draws a progress bar when standard error is a terminal.

use super::{Origin, Poll, Positions, RawMessage, Source};
use anyhow::Context as _;
use std::fs::File;
use std::io::{BufRead, BufReader, IsTerminal};
use std::path::Path;
use std::sync::Arc;

/// A worker's share of an NDJSON file.
pub struct FileSource {
    reader: BufReader<File>,
    topic: Arc<str>,
    line: i64,
    worker: i64,
    peers: i64,
    buf: Vec<u8>,
    bar: Option<indicatif::ProgressBar>,
    done: bool,
    pacer: super::simulator::Pacer,
}

impl FileSource {
    /// Opens the file for worker `worker` of `peers`.
    pub fn new(path: &Path, worker: usize, peers: usize, rate: f64) -> anyhow::Result<Self> {
        let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let bar = (worker == 0 && std::io::stderr().is_terminal()).then(|| {
            let len = file.metadata().map(|m| m.len()).unwrap_or(0);
            let bar = indicatif::ProgressBar::new(len);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "replay {bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                )
                .expect("valid template"),
            );
            bar
        });
        Ok(Self {
            reader: BufReader::with_capacity(1 << 20, file),
            topic: path.display().to_string().into(),
            line: 0,
            worker: worker as i64,
            peers: peers as i64,
            buf: Vec::new(),
            bar,
            done: false,
            // Each worker replays its share of the lines at its share of the rate.
            pacer: super::simulator::Pacer::new(rate / peers.max(1) as f64),
        })
    }
}

impl Source for FileSource {
    fn poll(&mut self, max: usize, out: &mut Vec<RawMessage>) -> anyhow::Result<Poll> {
        let max = self.pacer.allowance(max);
        if max == 0 && !self.done {
            return Ok(Poll::Idle);
        }
        let mut taken = 0;
        while taken < max && !self.done {
            self.buf.clear();
            let n = self
                .reader
                .read_until(b'\n', &mut self.buf)
                .with_context(|| format!("cannot read {}", self.topic))?;
            if n == 0 {
                self.done = true;
                if let Some(b) = &self.bar {
                    b.finish();
                }
                break;
            }
            if let Some(b) = &self.bar {
                b.inc(n as u64);
            }
            self.line += 1;
            let line = self.buf.trim_ascii();
            if line.is_empty() || (self.line - 1) % self.peers != self.worker {
                continue;
            }
            out.push(RawMessage {
                payload: line.to_vec(),
                key: None,
                headers: Vec::new(),
                origin: Origin {
                    topic: self.topic.clone(),
                    partition: 0,
                    offset: self.line,
                    timestamp_ms: None,
                },
            });
            taken += 1;
        }
        self.pacer.sent(taken);
        Ok(if self.done {
            Poll::Finished
        } else {
            Poll::Ready
        })
    }

    fn partitions(&self) -> Vec<((Arc<str>, i32), bool)> {
        vec![((self.topic.clone(), 0), self.done)]
    }

    fn positions(&self) -> Positions {
        Positions::from([((self.topic.clone(), 0), self.line)])
    }

    fn commit(&mut self, _positions: &Positions) -> anyhow::Result<()> {
        Ok(())
    }
}
