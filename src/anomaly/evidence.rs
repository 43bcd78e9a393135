//! What counts as evidence, and what its loss raises: a vital's usual cadence, the devices
//! that send a patient's readings, and the technical conditions (a signal lost, a monitor
//! silent, a device's sensor-off flag) the vital state reports when evidence stops.

use serde::{Deserialize, Serialize};

/// A technical condition (about the signal, not the patient) turning on or off.
#[derive(Debug, Clone, PartialEq)]
pub struct TechnicalChange {
    /// Patient.
    pub patient: String,
    /// `signal-lost/<vital>` or `device-silent/<device>`.
    pub rule: String,
    /// What a clinician reads ("SpO2 signal lost").
    pub title: String,
    /// The vital whose signal stopped.
    pub vital: String,
    /// The device.
    pub device: String,
    /// On (lost) or off (valid readings back).
    pub on: bool,
    /// Since when the signal has been lost: its last valid reading (on).
    pub since: i64,
    /// The last valid reading: (event ms, value).
    pub last: (i64, f64),
    /// A one-line account.
    pub detail: String,
}

/// The rule id of a vital's "signal lost" technical alert.
pub const SIGNAL_LOST: &str = "signal-lost";
/// The rule id of a silent device's technical alert.
pub const DEVICE_SILENT: &str = "device-silent";
/// The rule id of a device's own "sensor off" flag's technical alert.
pub const SENSOR_OFF: &str = "sensor-off";

/// The last few intervals between a patient's readings of a vital, ms: its usual cadence.
#[derive(Default, Clone, Serialize, Deserialize)]
pub(super) struct Cadence {
    recent: [u32; 8],
    n: u8,
}

impl Cadence {
    pub(super) fn push(&mut self, ms: i64) {
        let i = usize::from(self.n) % self.recent.len();
        self.recent[i] = ms.clamp(0, i64::from(u32::MAX)) as u32;
        // Counts past the ring's size (to 255) so that "seen flowing" needs no other field.
        self.n = self.n.saturating_add(1).max(1);
    }

    pub(super) fn count(&self) -> usize {
        usize::from(self.n)
    }

    /// The median of the recent intervals: a probe off for a minute is one long interval
    /// among eight and does not change it.
    pub(super) fn usual(&self) -> Option<i64> {
        let k = self.count().min(self.recent.len());
        if k == 0 {
            return None;
        }
        let mut v = self.recent;
        let v = &mut v[..k];
        v.sort_unstable();
        Some(i64::from(v[k / 2]))
    }
}

/// How a lost signal was reported.
pub(super) const LOST_NO: u8 = 0;
pub(super) const LOST_SIGNAL: u8 = 1;
pub(super) const LOST_DEVICE: u8 = 2;
/// Its device says the sensor is off: the flag's alert stands for it.
pub(super) const LOST_FLAG: u8 = 3;

/// A device of a patient: when it last sent anything, and whether it is reported silent.
#[derive(Default, Clone, Serialize, Deserialize)]
pub(super) struct DeviceSeen {
    pub(super) device: crate::model::Text,
    pub(super) last: i64,
    pub(super) silent: bool,
}

/// A short name clinicians use for a vital: the usual LOINC codes, else the mapping's name.
pub fn vital_label(vital: &str, names: &super::rules::Vitals) -> String {
    let known = match vital {
        "8867-4" => "Heart rate",
        "59408-5" | "2708-6" | "20564-1" => "SpO2",
        "9279-1" => "Respiratory rate",
        "8480-6" => "Systolic BP",
        "8462-4" => "Diastolic BP",
        "8478-0" => "Mean BP",
        "8310-5" => "Temperature",
        "8889-8" => "Pulse rate",
        _ => return names.label(vital).unwrap_or(vital).to_string(),
    };
    known.to_string()
}

/// An event time as a clinician reads it in an alert's text (HH:MM:SS, UTC).
pub(super) fn clock(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%H:%M:%S").to_string())
        .unwrap_or_default()
}
