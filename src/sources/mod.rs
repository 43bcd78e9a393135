//! Sources: where device messages enter the dataflow.
//!
//! A source is owned by one timely worker and reads only that worker's share of the input
//! (Kafka partitions `p mod total_workers`, lines of a file, simulated devices). It hands out
//! [`RawMessage`]s with their position, and commits positions once the dataflow reports that
//! every output of every message up to them is durable.

pub mod file;
pub mod kafka;
pub mod scenario;
pub mod simulator;

use std::collections::BTreeMap;
use std::sync::Arc;

pub use crate::model::{Origin, RawMessage};

/// Next position to read, per (topic, partition): what a commit records.
pub type Positions = BTreeMap<(Arc<str>, i32), i64>;

/// What a poll found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Poll {
    /// Messages may follow at once.
    Ready,
    /// Nothing to read now; poll again a little later.
    Idle,
    /// The input ended (`--until-end`, end of file, simulator count reached).
    Finished,
}

/// A worker's share of an input.
pub trait Source {
    /// Appends up to `max` messages to `out`.
    fn poll(&mut self, max: usize, out: &mut Vec<RawMessage>) -> anyhow::Result<Poll>;
    /// The next position to read, per partition.
    fn positions(&self) -> Positions;
    /// Records that outputs of everything before `positions` are durable.
    fn commit(&mut self, positions: &Positions) -> anyhow::Result<()>;
    /// The partitions this source reads, each with whether it stands at its end (nothing
    /// left to read now): with `--until-end` it has ended and the event clock waits for the
    /// others; in a live job it may go idle. Empty when the source does not know.
    fn partitions(&self) -> Vec<((Arc<str>, i32), bool)> {
        Vec::new()
    }
    /// Last commit at shutdown, once every output is durable: may block.
    fn commit_final(&mut self, positions: &Positions) -> anyhow::Result<()> {
        self.commit(positions)
    }
}
