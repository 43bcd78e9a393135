//! Graph assembly: one worker's dataflow from its source to its outputs, and the loop that
//! runs it until every output is durable.

use super::commit_log;
use super::committer::{Committer, CutLog, CUT_EVERY};
use super::event_clock::InputClock;
use super::operators::{
    clock_operator, normalize_operator, source_operator, window_operator, Normalizer, Reading,
};
use super::sink_thread::attach;
use super::window::Windows;
use super::{worker_parts, Shared};
use crate::metrics::Metrics;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;
use timely::communication::Allocate;
use timely::dataflow::operators::probe::Handle as ProbeHandle;
use timely::dataflow::operators::{Branch, Concat, Concatenate, Map, Probe};
use timely::worker::Worker;

/// Builds this worker's dataflow and runs it until it completes.
pub(super) fn run_worker<A: Allocate>(
    worker: &mut Worker<A>,
    shared: &Arc<Shared>,
) -> anyhow::Result<()> {
    let index = worker.index();
    let peers = worker.peers();
    let parts = worker_parts(shared, index, peers)?;
    let mut input_clock = InputClock::new(
        shared.job.allowed_lateness,
        shared.job.idle_timeout,
        !shared.until_end,
    );
    let cuts = match &shared.commit_log {
        Some(dir) => {
            let records = commit_log::read(dir)?;
            // Kept as the previous commit's until this run commits: a kill before then
            // restarts from them again.
            let committed = records.clone();
            input_clock.restore(
                records
                    .into_iter()
                    .map(|(k, rs)| (k, rs.into_iter().map(|r| r.clock).collect()))
                    .collect(),
            );
            Some(CutLog {
                dir: dir.clone(),
                every: CUT_EVERY,
                last: None,
                committed,
                dead_letters: parts.dead_letter_positions.clone(),
                pending: Vec::new(),
            })
        }
        None => None,
    };
    let committer = Rc::new(RefCell::new(Committer {
        source: parts.source,
        pending: VecDeque::new(),
        stamps: Vec::new(),
        last: None,
        metrics: shared.metrics.clone(),
        cuts,
    }));
    let probe = ProbeHandle::new();
    let clock = Rc::new(RefCell::new(input_clock));
    let control = &shared.control;
    let job = &shared.job;
    let reading = Reading {
        epoch: job.epoch,
        batch_size: job.batch_size,
        max_durable_lag: job.max_durable_lag,
    };
    let normalizer = Normalizer {
        // The worker's own copy: see `DeviceMapping::copy_for_worker`.
        device: Arc::new(shared.device.copy_for_worker()),
        mapping: shared.mapping.clone(),
        max_future_skew: job.max_future_skew,
        metrics: shared.metrics.clone(),
        acks_topic: shared.acks_topic.as_deref().map(Arc::from),
        devices: !parts.devices.is_empty(),
        // Metric states matter only to alerting, and only HL7 v2 messages carry them.
        states: !parts.alerts.is_empty() && shared.rules.is_some() && shared.device.reads_hl7(),
    };
    let behind = super::operators::Behind::default();
    worker.dataflow::<u64, _, _>(|scope| {
        let raw = source_operator(
            scope,
            committer.clone(),
            probe.clone(),
            clock.clone(),
            reading,
            control.clone(),
            behind.clone(),
        );
        let super::operators::Normalizing {
            judged,
            dead,
            devices: reports,
            states,
        } = normalize_operator(&raw, clock.clone(), normalizer);
        // Acknowledgements go to alerting only: no window, table or board takes them.
        let (judged, acks) = judged.branch(|_, j| crate::anomaly::ack::is_ack(&j.measurement));
        let alerting = !parts.alerts.is_empty();
        let marks = (!parts.observations.is_empty() || alerting)
            .then(|| clock_operator(scope, clock.clone(), control.clone()));
        let mut durable = attach(&dead, vec![parts.dead_letters], control);
        if let Some(versions) = parts.device_versions {
            let system = job
                .fhir
                .as_ref()
                .and_then(|f| f.device_identifier_system.clone());
            let new = super::devices::versions_operator(
                &reports,
                versions,
                system,
                shared.metrics.clone(),
            );
            durable.extend(attach(&new, parts.devices, control));
        }
        if let (Some(marks), false) = (&marks, parts.observations.is_empty()) {
            let windows = Windows::new(shared.mapping.clone(), job.horizon, job.update_every);
            let updates = window_operator(&judged, marks, windows, shared.metrics.clone());
            durable.extend(attach(&updates, parts.observations, control));
        }
        if !parts.measurements.is_empty() {
            let measurements = judged.map(|j| j.measurement);
            durable.extend(attach(&measurements, parts.measurements, control));
        }
        let settings = match (&shared.rules, &job.anomaly, alerting) {
            (Some(rules), Some(a), true) => Some(super::alerting::Settings {
                rules: rules.clone(),
                checkpoints: shared.alert_checkpoints.clone(),
                checkpoint_every: a.checkpoint_every,
                forget_after: job.horizon,
                metrics: shared.metrics.clone(),
                control: control.clone(),
                behind: behind.clone(),
            }),
            _ => None,
        };
        let mut board_alerts = None;
        if let (Some(settings), Some(marks)) = (settings, &marks) {
            // Readings beyond the allowed lateness behind their partition are recorded,
            // not judged: judged, they would depend on how fast the other partitions went.
            let metrics = shared.metrics.clone();
            let on_time = judged.flat_map(move |j| {
                if j.late {
                    Metrics::add(&metrics.alert_inputs_late, 1);
                }
                (!j.late).then_some(j.measurement)
            });
            // Metric states go to alerting only, like acknowledgements: they are no reading.
            let states = states.flat_map(|j| (!j.late).then_some(j.measurement));
            let on_time = on_time.concat(&acks.map(|j| j.measurement)).concat(&states);
            let checkpoints = settings.checkpoints.clone();
            let out = super::alerting::build(&on_time, marks, parts.alerts_topic, settings);
            let alerts = out.flat_map(|o| match o {
                super::alerting::Out::Alert(a) => Some(a),
                _ => None,
            });
            let alerts_durable = scope.concatenate(attach(&alerts, parts.alerts, control));
            if let Some(place) = checkpoints {
                // Checkpoints follow the alert outputs, and offsets follow checkpoints.
                let c = super::alerting::checkpoint_writer(&out, &alerts_durable, place);
                durable.push(c);
            }
            durable.push(alerts_durable);
            board_alerts = Some(out.flat_map(|o| match o {
                super::alerting::Out::Alert(a) | super::alerting::Out::Standing(a) => Some(a),
                super::alerting::Out::Snapshot(_) => None,
            }));
        }
        if let Some(board) = &shared.board {
            let names = Arc::new(crate::anomaly::rules::Vitals::new(&shared.mapping));
            let measurements = judged.map(|j| j.measurement);
            super::board_feed::build(
                &measurements,
                board_alerts.as_ref(),
                &dead,
                names,
                board.clone(),
                shared.metrics.clone(),
            );
        }
        scope.concatenate(durable).probe_with(&probe);
    });
    while !probe.done() {
        if control.failed() {
            // A failed job stops where it is: outputs not yet durable keep their offsets
            // uncommitted, and the next start reads them again. Timely would otherwise keep
            // stepping a dataflow whose sink never releases its epochs.
            for id in worker.installed_dataflows() {
                worker.drop_dataflow(id);
            }
            return Ok(());
        }
        worker.step_or_park(Some(Duration::from_millis(100)));
    }
    if !control.failed() {
        committer
            .borrow_mut()
            .commit_final(&mut clock.borrow_mut())?;
    }
    Ok(())
}
