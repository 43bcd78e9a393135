//! Keyed window state: measurements grouped per Observation (patient, device, type and
//! `periodInterval` window or correlation id), in event time.
//!
//! Windows are never closed for good: a late measurement merges into its window and the
//! updated group is emitted again. Windows ending further than the horizon behind the newest
//! event time seen are evicted to bound memory; data arriving for them later starts a new
//! group, which the sinks merge into the stored Observation.

use crate::fhir::groups::{boundary, period_segment, ObservationGroup};
use crate::fhir::observation::{identifier_value, observation_id, Subjects};
use crate::mapping::fhir::{CodeValueTemplate, PeriodInterval};
use crate::mapping::FhirMapping;
use crate::model::Measurement;
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// The current state of one Observation's window, as emitted to the sinks.
#[derive(Debug, Clone)]
pub struct WindowUpdate {
    /// Deterministic Observation id.
    pub id: String,
    /// Measurement type, as the device mapping spells it.
    pub type_name: Arc<str>,
    /// Patient identifier.
    pub patient: String,
    /// Device identifier.
    pub device: String,
    /// Encounter identifier.
    pub encounter: Option<String>,
    /// The FHIR template of the type.
    pub template: Arc<CodeValueTemplate>,
    /// Every value of the window seen so far (shared: emitting does not copy it).
    pub group: Arc<ObservationGroup>,
    /// Which life of the window this is (windows evicted and opened again get a new one): a
    /// sink that wrote this same instance knows the group holds every value it wrote.
    pub instance: u64,
}

impl WindowUpdate {
    /// Who the Observation is about, as logical references by identifier.
    pub fn subjects(&self) -> Subjects<'_> {
        Subjects {
            patient: &self.patient,
            device: &self.device,
            encounter: self.encounter.as_deref(),
            resolved: false,
        }
    }
}

struct Window {
    update: WindowUpdate,
    dirty: bool,
}

/// What identifies a window, cheap to build per measurement (the Observation id, a SHA-256,
/// is computed once per window).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct WindowKey {
    type_name: Arc<str>,
    patient: String,
    device: String,
    slot: Slot,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Slot {
    /// Start of the period, milliseconds since the Unix epoch.
    Period(i64),
    /// Correlation id.
    Correlation(String),
}

/// All open windows of one worker.
pub struct Windows {
    fhir: Arc<FhirMapping>,
    windows: HashMap<WindowKey, Window>,
    /// Windows changed since the last emission: emitting is O(changes), not O(open windows).
    dirty: Vec<WindowKey>,
    newest: Option<DateTime<Utc>>,
    horizon: chrono::Duration,
    instances: u64,
}

impl Windows {
    /// Empty state; windows ending more than `horizon` behind the newest event are evicted.
    pub fn new(fhir: Arc<FhirMapping>, horizon: Duration) -> Self {
        Self {
            fhir,
            windows: HashMap::new(),
            dirty: Vec::new(),
            instances: 0,
            newest: None,
            horizon: chrono::Duration::from_std(horizon).unwrap_or(chrono::Duration::MAX),
        }
    }

    /// Open windows.
    pub fn len(&self) -> usize {
        self.windows.len()
    }

    /// True when no window is open.
    pub fn is_empty(&self) -> bool {
        self.windows.is_empty()
    }

    /// Adds a measurement to its window. Returns false when the FHIR mapping has no template
    /// for its type or it has no patient (the normalize stage dead-letters those first).
    pub fn add(&mut self, m: &Measurement) -> bool {
        let (Some(tpl), Some(patient)) = (self.fhir.get(&m.type_name), m.patient_id.as_deref())
        else {
            return false;
        };
        let (start, end, slot) = match tpl.period {
            PeriodInterval::Correlation => match &m.correlation_id {
                Some(c) => (
                    m.occurrence_time,
                    m.occurrence_time,
                    Slot::Correlation(c.clone()),
                ),
                None => return false,
            },
            p => {
                let (s, e) = boundary(p, m.occurrence_time);
                (s, e, Slot::Period(s.timestamp_millis()))
            }
        };
        let key = WindowKey {
            type_name: m.type_name.clone(),
            patient: patient.to_string(),
            device: m.device_id.clone(),
            slot,
        };
        if !self.windows.contains_key(&key) {
            let segment = match &key.slot {
                Slot::Correlation(c) => c.clone(),
                Slot::Period(_) => period_segment(&start, &end),
            };
            let subjects = Subjects {
                patient,
                device: &m.device_id,
                encounter: None,
                resolved: false,
            };
            let id = observation_id(&identifier_value(&subjects, &m.type_name, &segment));
            self.instances += 1;
            let window = Window {
                update: WindowUpdate {
                    id,
                    type_name: m.type_name.clone(),
                    patient: patient.to_string(),
                    device: m.device_id.clone(),
                    encounter: m.encounter_id.clone(),
                    template: tpl.clone(),
                    group: Arc::new(ObservationGroup {
                        start,
                        end,
                        id_segment: segment,
                        values: Vec::new(),
                    }),
                    instance: self.instances,
                },
                dirty: false,
            };
            self.windows.insert(key.clone(), window);
        }
        let w = self.windows.get_mut(&key).expect("inserted above");
        // Copies the group only when a sink still holds the previous emission.
        let g = Arc::make_mut(&mut w.update.group);
        g.start = g.start.min(start);
        g.end = g.end.max(end);
        g.add(m);
        let newly_dirty = !w.dirty;
        w.dirty = true;
        let end = g.end;
        self.newest = Some(self.newest.map_or(end, |n| n.max(end)));
        if newly_dirty {
            self.dirty.push(key);
        }
        true
    }

    /// The windows changed since the last call.
    pub fn take_dirty(&mut self) -> Vec<WindowUpdate> {
        let mut out: Vec<WindowUpdate> = Vec::with_capacity(self.dirty.len());
        for key in self.dirty.drain(..) {
            if let Some(w) = self.windows.get_mut(&key) {
                w.dirty = false;
                out.push(w.update.clone());
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// Evicts clean windows ending more than the horizon behind the newest event time;
    /// returns how many.
    pub fn evict(&mut self) -> usize {
        let Some(cutoff) = self.newest.and_then(|n| n.checked_sub_signed(self.horizon)) else {
            return 0;
        };
        let before = self.windows.len();
        self.windows
            .retain(|_, w| w.dirty || w.update.group.end >= cutoff);
        before - self.windows.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::parse_timestamp;

    fn fhir() -> Arc<FhirMapping> {
        Arc::new(
            FhirMapping::from_file(std::path::Path::new(
                "templates/bedside-monitor/fhirmapping.json",
            ))
            .expect("mapping"),
        )
    }

    fn hr(t: &str, v: &str) -> Measurement {
        Measurement {
            type_name: "heartRate".into(),
            device_id: "BM-1".into(),
            patient_id: Some("P-1".into()),
            encounter_id: None,
            correlation_id: None,
            occurrence_time: parse_timestamp(t).expect("time"),
            properties: vec![("hr".into(), v.into())],
            received_ms: None,
            source: None,
        }
    }

    #[test]
    fn late_data_merges_into_its_window_and_is_emitted_again() {
        let mut w = Windows::new(fhir(), Duration::from_secs(7200));
        assert!(w.add(&hr("2026-11-21T10:00:05Z", "70")));
        assert!(w.add(&hr("2026-11-21T10:30:00Z", "72")));
        assert!(w.add(&hr("2026-11-21T11:00:00Z", "74")));
        let first = w.take_dirty();
        assert_eq!(first.len(), 2, "two hourly windows");
        assert!(w.take_dirty().is_empty(), "nothing changed since");
        assert!(w.add(&hr("2026-11-21T10:10:00Z", "71")), "late reading");
        let again = w.take_dirty();
        assert_eq!(again.len(), 1);
        let ten = first
            .iter()
            .find(|u| u.id == again[0].id)
            .expect("same window");
        assert_eq!(
            ten.group.get("hr").map(<[_]>::len),
            Some(2),
            "the earlier emission is untouched"
        );
        assert_eq!(again[0].group.get("hr").map(<[_]>::len), Some(3));
    }

    #[test]
    fn windows_past_the_horizon_are_evicted() {
        let mut w = Windows::new(fhir(), Duration::from_secs(3600));
        w.add(&hr("2026-11-21T08:00:00Z", "70"));
        w.add(&hr("2026-11-21T10:30:00Z", "72"));
        assert_eq!(w.evict(), 0, "dirty windows are emitted before they go");
        w.take_dirty();
        assert_eq!(w.evict(), 1);
        assert_eq!(w.len(), 1);
    }

    #[test]
    fn unmapped_types_and_missing_patients_are_refused() {
        let mut w = Windows::new(fhir(), Duration::from_secs(3600));
        let mut m = hr("2026-11-21T10:00:00Z", "70");
        m.patient_id = None;
        assert!(!w.add(&m));
        let mut m = hr("2026-11-21T10:00:00Z", "70");
        m.type_name = "unknown".into();
        assert!(!w.add(&m));
        assert!(w.is_empty());
    }
}
