//! Feeds the ward board: each worker turns its readings, alert events and dead letters into
//! board updates, and all of them go to worker 0 (in process 0, which serves the pages),
//! where they are applied to the board's views.
//!
//! ```text
//! readings ─┐
//! alerts ───┼─► BoardUpdate ──exchange to worker 0──► Board (views, live feed)
//! dead letters ┘
//! ```
//!
//! The board is a view, not an output: it holds no epoch and writes nothing durable, so it
//! never delays a commit. Its views are order-independent functions of the updates
//! (`board::state`), so it shows the same whatever the worker or process count.

use crate::anomaly::evidence::vital_label;
use crate::anomaly::lifecycle::Alert;
use crate::anomaly::rules::Vitals;
use crate::board::state::{BoardAlert, BoardUpdate, DeadLetterView, Reading, PAYLOAD_BYTES};
use crate::board::Board;
use crate::model::Measurement;
use crate::sinks::dead_letter::DeadLetter;
use std::sync::Arc;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::{Concatenate, Map, Operator};
use timely::dataflow::{Scope, Stream};

/// The board updates of one measurement: one per numeric value of a vital rules can name.
pub(super) fn readings(m: &Measurement, names: &Vitals) -> Vec<BoardUpdate> {
    let Some(patient) = &m.patient_id else {
        return Vec::new();
    };
    m.properties
        .iter()
        .filter_map(|(name, value)| {
            let vital = names.of(&m.type_name, name)?;
            let value: f64 = value.trim().parse().ok().filter(|v: &f64| v.is_finite())?;
            Some(BoardUpdate::Reading(Reading {
                patient: patient.to_string(),
                device: m.device_id.to_string(),
                vital: vital.to_string(),
                label: vital_label(vital, names),
                value,
                at_ms: m.occurrence_time.timestamp_millis(),
            }))
        })
        .collect()
}

/// A dead letter as the job page lists it.
pub(super) fn dead_letter(d: &DeadLetter) -> BoardUpdate {
    let o = &d.message.origin;
    let cut = d.message.payload.len().min(PAYLOAD_BYTES);
    BoardUpdate::DeadLetter(DeadLetterView {
        stage: d.stage.to_string(),
        reason: d.error.clone(),
        position: format!("{}/{}/{}", o.topic, o.partition, o.offset),
        at_ms: chrono::Utc::now().timestamp_millis(),
        payload: String::from_utf8_lossy(&d.message.payload[..cut]).into_owned(),
    })
}

/// Gathers the updates to worker 0 and applies them to `board` there.
pub(super) fn build<G: Scope<Timestamp = u64>>(
    measurements: &Stream<G, Arc<Measurement>>,
    alerts: Option<&Stream<G, Alert>>,
    dead: &Stream<G, DeadLetter>,
    names: Arc<Vitals>,
    board: Arc<Board>,
    metrics: Arc<crate::metrics::Metrics>,
) {
    let scope = measurements.scope();
    let mut parts = vec![
        measurements.flat_map(move |m| readings(&m, &names)),
        dead.map(|d| dead_letter(&d)),
    ];
    if let Some(a) = alerts {
        parts.push(a.map(|a| BoardUpdate::Alert(BoardAlert::from(&a))));
    }
    scope.concatenate(parts).sink(
        Exchange::new(|_: &BoardUpdate| 0u64),
        "Board",
        move |(input, _frontier)| {
            let mut emitted = Vec::new();
            input.for_each_time(|_, data| {
                board.apply(data.flat_map(|batch| batch.drain(..)).inspect(|u| {
                    if let BoardUpdate::Alert(a) = u {
                        emitted.push(a.emitted_us);
                    }
                }));
            });
            if !emitted.is_empty() {
                let now = chrono::Utc::now().timestamp_micros();
                crate::metrics::Latencies::record_us(&metrics.latency.board, now, &emitted);
            }
        },
    );
}
