//! The device outputs: what messages say about their devices (an IHE PCD-01 containment
//! tree) becomes Device and DeviceMetric versions, one per attribute change.
//!
//! Reports go to the worker that owns their MDS (routed as its Observations are), which
//! keeps the versions written so far per resource (`fhir::device::Versions`) and passes on
//! only new ones. It starts from the versions every device output already holds, so a
//! replay from the committed offsets writes nothing twice. A device's messages come in its
//! partition's order whatever the worker count, and a version is decided by event time
//! against the versions around it, so the same input writes the same versions in any split.
//!
//! A monitor repeats its tree in every message: the normalize stage keeps the last tree of
//! each device it reads, and builds a tree again, and sends it on, only when the message's
//! raw fingerprint says it changed (`mapping::device_tree::raw_fingerprint`); otherwise it
//! sends the news that the device said the same again, which the owner decides with the
//! tree it kept.

use super::route;
use crate::fhir::device::{DeviceVersion, Versions};
use crate::mapping::device_tree::{from_pcd01, raw_fingerprint, DeviceTree};
use crate::metrics::Metrics;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::{Scope, Stream};

/// What a message says about one of its devices, on its way to the worker that owns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceNews {
    /// The MDS identifier.
    pub identifier: String,
    /// Its tree, when it differs from the last this worker sent of the device (None: the
    /// same as that one).
    pub tree: Option<DeviceTree>,
    /// When it was so (ms since the Unix epoch).
    pub at: i64,
    /// The record it came from: (topic or file, partition, offset).
    pub source: Option<(String, i32, i64)>,
}

/// The trees the devices whose messages a worker reads last described, with the raw
/// fingerprint they were read from.
#[derive(Default)]
pub(super) struct SeenTrees {
    last: HashMap<String, (Option<u64>, DeviceTree)>,
}

/// One device a message describes.
pub(super) enum Described {
    /// The same tree as the last one remembered of the device.
    Same {
        identifier: String,
        time: Option<chrono::DateTime<chrono::Utc>>,
    },
    /// A tree that differs (or a device not seen before), with the raw fingerprint it was
    /// read from (None for a message of several MDSs).
    New {
        tree: DeviceTree,
        fingerprint: Option<u64>,
        time: Option<chrono::DateTime<chrono::Utc>>,
    },
}

impl SeenTrees {
    /// The devices an HL7 v2 message describes (as parsed for its readings). Nothing is
    /// remembered: a message that is then dead-lettered sends no tree, so its tree must not
    /// count as sent ([`SeenTrees::remember`]).
    pub(super) fn read(&self, msg: &crate::hl7::Hl7<'_>) -> Vec<Described> {
        let time = msg
            .segment("MSH")
            .and_then(|s| crate::hl7::timestamp(msg.field(s, 7)));
        let raw = raw_fingerprint(msg);
        if let Some((identifier, fp)) = &raw {
            if self
                .last
                .get(identifier)
                .is_some_and(|(f, _)| *f == Some(*fp))
            {
                return vec![Described::Same {
                    identifier: identifier.clone(),
                    time,
                }];
            }
        }
        let fingerprint = raw.map(|(_, fp)| fp);
        from_pcd01(msg)
            .into_iter()
            .map(|tree| Described::New {
                tree,
                fingerprint,
                time,
            })
            .collect()
    }

    /// A tree a JSON message's `deviceAttributes` made, against the last one of its device.
    pub(super) fn describe(&self, tree: DeviceTree) -> Described {
        let fp = tree.fingerprint();
        if self
            .last
            .get(&tree.identifier)
            .is_some_and(|(f, _)| *f == Some(fp))
        {
            return Described::Same {
                identifier: tree.identifier,
                time: tree.time,
            };
        }
        Described::New {
            time: tree.time,
            tree,
            fingerprint: Some(fp),
        }
    }

    /// Remembers a tree sent on.
    pub(super) fn remember(&mut self, tree: DeviceTree, fingerprint: Option<u64>) {
        self.last
            .insert(tree.identifier.clone(), (fingerprint, tree));
    }

    /// The tree a device last described.
    pub(super) fn tree(&self, identifier: &str) -> Option<&DeviceTree> {
        self.last.get(identifier).map(|(_, t)| t)
    }
}

/// New versions of the reported devices' resources. `system`: the job's device identifier
/// system.
pub(super) fn versions_operator<G: Scope<Timestamp = u64>>(
    news: &Stream<G, DeviceNews>,
    mut versions: Versions,
    system: Option<String>,
    metrics: Arc<Metrics>,
) -> Stream<G, DeviceVersion> {
    let exchange = Exchange::new(|n: &DeviceNews| route(&n.identifier));
    news.unary(exchange, "DeviceVersions", move |_, _| {
        // The tree each device last sent: what news without one says again.
        let mut trees: HashMap<String, DeviceTree> = HashMap::new();
        move |input, output| {
            input.for_each_time(|time, data| {
                let mut session = output.session(&time);
                for batch in data {
                    for n in batch.drain(..) {
                        if let Some(t) = n.tree {
                            trees.insert(n.identifier.clone(), t);
                        }
                        // (News without a tree always follows the tree it repeats: one
                        // worker reads a device's partition, and channels keep order.)
                        let Some(tree) = trees.get(&n.identifier) else {
                            continue;
                        };
                        let new =
                            versions.admit_tree(tree, n.at, n.source.as_ref(), system.as_deref());
                        Metrics::add(&metrics.device_versions, new.len() as u64);
                        session.give_iterator(new.into_iter());
                    }
                }
            });
        }
    })
}
