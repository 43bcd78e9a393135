//! The device outputs: what messages say about their devices (an IHE PCD-01 containment
//! tree) becomes Device and DeviceMetric versions, one per attribute change.
//!
//! Reports go to the worker that owns their MDS (routed as its Observations are), which
//! keeps the versions written so far per resource (`fhir::device::Versions`) and passes on
//! only new ones. It starts from the versions the device output already holds, so a replay
//! from the committed offsets writes nothing twice. A device's messages come in its
//! partition's order whatever the worker count, and a version is decided by event time
//! against the versions around it, so the same input writes the same versions in any split.

use super::route;
use crate::fhir::device::{DeviceReport, DeviceVersion, Versions};
use crate::mapping::device_tree::{from_pcd01, DeviceTree};
use crate::metrics::Metrics;
use std::sync::Arc;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::{Scope, Stream};

/// The device trees of a raw message: those of an HL7 v2 message's MDSs, none otherwise.
pub(super) fn trees(payload: &[u8]) -> Vec<DeviceTree> {
    crate::hl7::text(payload)
        .and_then(|t| crate::hl7::parse(&t).ok().map(|m| from_pcd01(&m)))
        .unwrap_or_default()
}

/// New versions of the reported devices' resources. `system`: the job's device identifier
/// system.
pub(super) fn versions_operator<G: Scope<Timestamp = u64>>(
    reports: &Stream<G, DeviceReport>,
    mut versions: Versions,
    system: Option<String>,
    metrics: Arc<Metrics>,
) -> Stream<G, DeviceVersion> {
    let exchange = Exchange::new(|r: &DeviceReport| route(&r.tree.identifier));
    reports.unary(exchange, "DeviceVersions", move |_, _| {
        move |input, output| {
            input.for_each_time(|time, data| {
                let mut session = output.session(&time);
                for batch in data {
                    for report in batch.drain(..) {
                        let new = versions.admit_report(&report, system.as_deref());
                        Metrics::add(&metrics.device_versions, new.len() as u64);
                        session.give_iterator(new.into_iter());
                    }
                }
            });
        }
    })
}
