//! What a binary operator on the event clock waits for: per epoch, the records of its two
//! inputs (data and the workers' clock marks) and a capability for its outputs, held until
//! both input frontiers have passed the epoch, then taken in epoch order. Applying an epoch
//! only once it is complete is what makes the operators' outputs independent of how the
//! input was cut into batches.

use std::collections::BTreeMap;
use timely::dataflow::operators::{Capability, InputCapability};
use timely::progress::frontier::MutableAntichain;

/// Records of two inputs, per epoch, until the epoch is complete.
pub(super) struct EpochGate<A, B> {
    pending: BTreeMap<u64, Epoch<A, B>>,
}

/// One epoch's records and the capability to give its outputs at.
pub(super) struct Epoch<A, B> {
    /// The epoch.
    pub time: u64,
    /// Its capability.
    pub cap: Capability<u64>,
    /// What the first input brought, in the batches it came in.
    pub a: Batches<A>,
    /// What the second input brought, in the batches it came in.
    pub b: Batches<B>,
}

/// An epoch's records as the batches they arrived in: taking each batch whole instead of
/// appending it to one vector copied every record again as the vector grew (and zeroed
/// fresh pages for it), 9 % of the job's CPU on the peer drain.
pub(super) type Batches<T> = Vec<Vec<T>>;

impl<A, B> EpochGate<A, B> {
    /// Nothing held.
    pub(super) fn new() -> Self {
        Self {
            pending: BTreeMap::new(),
        }
    }

    fn epoch(&mut self, time: InputCapability<u64>) -> &mut Epoch<A, B> {
        let t = *time.time();
        self.pending.entry(t).or_insert_with(|| Epoch {
            time: t,
            cap: time.retain(),
            a: Vec::new(),
            b: Vec::new(),
        })
    }

    /// Holds the records of the first input at `time`.
    pub(super) fn hold_a<'a>(
        &mut self,
        time: InputCapability<u64>,
        data: impl Iterator<Item = &'a mut Vec<A>>,
    ) where
        A: 'a,
    {
        let e = self.epoch(time);
        e.a.extend(data.map(std::mem::take).filter(|b| !b.is_empty()));
    }

    /// Holds the records of the second input at `time`.
    pub(super) fn hold_b<'a>(
        &mut self,
        time: InputCapability<u64>,
        data: impl Iterator<Item = &'a mut Vec<B>>,
    ) where
        B: 'a,
    {
        let e = self.epoch(time);
        e.b.extend(data.map(std::mem::take).filter(|b| !b.is_empty()));
    }

    /// The epochs both frontiers have passed, oldest first, no longer held.
    pub(super) fn complete(
        &mut self,
        f1: &MutableAntichain<u64>,
        f2: &MutableAntichain<u64>,
    ) -> Vec<Epoch<A, B>> {
        let done: Vec<u64> = self
            .pending
            .keys()
            .copied()
            .take_while(|t| !f1.less_equal(t) && !f2.less_equal(t))
            .collect();
        done.iter().filter_map(|t| self.pending.remove(t)).collect()
    }

    /// Whether no epoch is held.
    pub(super) fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}
