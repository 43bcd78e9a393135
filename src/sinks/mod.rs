//! Sinks: where the job's outputs go, and when they are durable.
//!
//! Every sink takes items stamped with their ingestion epoch and, on [`Sink::flush`], makes
//! everything written so far durable (fsync + atomic rename, or a producer flush with every
//! delivery acknowledged). The dataflow holds an epoch open until each sink has flushed it;
//! only then are source offsets committed (see `dataflow`).

pub mod alert_events;
pub mod alerts;
pub mod dead_letter;
pub mod devices;
pub mod fhir;
pub mod fhir_devices;
pub mod files;
pub mod kafka;
pub mod observations;

/// A sink failure retrying cannot fix (credentials refused, a stored file that cannot be
/// read back): the job stops with it instead of retrying a flush forever.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Fatal(pub String);

/// An output that buffers items and makes them durable on flush.
pub trait Sink<D> {
    /// Buffers one item produced at `epoch`.
    fn write(&mut self, epoch: u64, item: D) -> anyhow::Result<()>;
    /// Makes every buffered item durable. On error nothing is acknowledged and the flush is
    /// retried later with everything still buffered.
    fn flush(&mut self) -> anyhow::Result<()>;
}

impl<D, S: Sink<D> + ?Sized> Sink<D> for Box<S> {
    fn write(&mut self, epoch: u64, item: D) -> anyhow::Result<()> {
        (**self).write(epoch, item)
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        (**self).flush()
    }
}
