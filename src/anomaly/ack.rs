//! Acknowledgements and silences: clinicians' actions on an alert, taken as input of the job
//! (a topic it reads, each stamped with the event time it takes effect at), so that a replay
//! of the same readings and acknowledgements writes the same alert events. They are recorded
//! as `acknowledged` and `silenced` events beside the alert's own and never change what is
//! detected.
//!
//! An acknowledgement carries the alert as the board showed it (rule, title, severity, ...):
//! its event is built from the input alone, so it is the same whether the alert is still
//! open when the job takes it or has resolved since. It travels through the dataflow as a
//! [`Measurement`] of type [`ACK_TYPE`], routed by patient like the patient's readings, so
//! that alerting's restart bookkeeping (what a checkpoint already holds) covers it too.

use super::lifecycle::{rfc3339, Alert, Category, State};
use super::rules::Severity;
use crate::model::{Measurement, SourcePos};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// The measurement type acknowledgements travel as; no mapping can produce it.
pub const ACK_TYPE: &str = "vitalflow.acknowledgement";

/// Longest silence a board may ask for, minutes.
pub const MAX_SILENCE_MINUTES: u32 = 120;

/// An acknowledgement or silence, as the board writes it to the acknowledgements topic.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AckRequest {
    /// The alert episode.
    pub alert: String,
    /// Its patient.
    pub patient: String,
    /// Its device.
    pub device: String,
    /// Its rule.
    pub rule: String,
    /// Its title.
    pub title: String,
    /// Its severity as shown.
    pub severity: Severity,
    /// Physiological or technical.
    pub category: Category,
    /// When the condition began, RFC 3339.
    pub since: String,
    /// `acknowledge` or `silence`.
    pub action: String,
    /// Minutes of silence (silence only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minutes: Option<u32>,
    /// Who: the authenticated user, or the name given on a loopback board without users.
    pub by: String,
    /// An optional note.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Event time it takes effect at, ms: the board's clock when it was asked for.
    pub at_ms: i64,
}

impl AckRequest {
    /// Reads and checks one record of the acknowledgements topic.
    pub fn parse(payload: &[u8]) -> Result<Self, String> {
        let a: AckRequest =
            serde_json::from_slice(payload).map_err(|e| format!("not an acknowledgement: {e}"))?;
        a.check()?;
        Ok(a)
    }

    /// What makes an acknowledgement usable.
    pub fn check(&self) -> Result<(), String> {
        if self.alert.is_empty() || self.patient.is_empty() {
            return Err("an acknowledgement needs the alert and its patient".into());
        }
        if self.by.trim().is_empty() {
            return Err("an acknowledgement needs who made it (\"by\")".into());
        }
        match (self.action.as_str(), self.minutes) {
            ("acknowledge", _) => Ok(()),
            ("silence", Some(m)) if (1..=MAX_SILENCE_MINUTES).contains(&m) => Ok(()),
            ("silence", _) => Err(format!(
                "a silence needs \"minutes\" from 1 to {MAX_SILENCE_MINUTES}"
            )),
            (other, _) => Err(format!(
                "unknown action \"{other}\": acknowledge or silence"
            )),
        }
    }

    /// The measurement it travels through the dataflow as.
    pub fn to_measurement(&self, source: SourcePos) -> Measurement {
        let body = serde_json::to_string(self).unwrap_or_default();
        Measurement {
            type_name: Arc::from(ACK_TYPE),
            device_id: self.device.as_str().into(),
            patient_id: Some(self.patient.as_str().into()),
            encounter_id: None,
            correlation_id: None,
            occurrence_time: chrono::DateTime::from_timestamp_millis(self.at_ms)
                .unwrap_or_default(),
            properties: vec![(Arc::from("ack"), body.into())],
            received_ms: None,
            source: Some(source),
        }
    }

    /// The alert event it records.
    pub fn to_alert(&self) -> Alert {
        let (state, verb) = match self.action.as_str() {
            "silence" => (State::Silenced, "silenced"),
            _ => (State::Acknowledged, "acknowledged"),
        };
        let until = self
            .minutes
            .filter(|_| state == State::Silenced)
            .map(|m| rfc3339(self.at_ms + i64::from(m) * 60_000));
        let mut text = format!(
            "{} {verb} by {}: patient {}: {}",
            match (self.category, self.severity) {
                (Category::Technical, _) => "TECHNICAL",
                (_, Severity::Critical) => "CRITICAL",
                (_, Severity::Warning) => "WARNING",
            },
            self.by,
            self.patient,
            self.title
        );
        if let Some(u) = &until {
            text.push_str(&format!(" until {u}"));
        }
        if let Some(n) = &self.note {
            text.push_str(&format!(" ({n})"));
        }
        Alert {
            id: self.alert.clone(),
            patient: self.patient.clone(),
            device: self.device.clone(),
            rule: self.rule.clone(),
            title: self.title.clone(),
            severity: self.severity,
            category: self.category,
            state,
            since: self.since.clone(),
            at: rfc3339(self.at_ms),
            values: Vec::new(),
            text,
            by: Some(self.by.clone()),
            note: self.note.clone(),
            until,
            stamp_ms: 0,
        }
    }
}

/// Whether a measurement is an acknowledgement in transit.
pub fn is_ack(m: &Measurement) -> bool {
    &*m.type_name == ACK_TYPE
}

/// The alert event of an acknowledgement in transit.
pub fn alert_of(m: &Measurement) -> Option<Alert> {
    let body = m.properties.first().filter(|(k, _)| &**k == "ack")?;
    serde_json::from_str::<AckRequest>(&body.1)
        .ok()
        .map(|a| a.to_alert())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(action: &str, minutes: Option<u32>) -> AckRequest {
        AckRequest {
            alert: "a1".into(),
            patient: "P-1".into(),
            device: "BM-1".into(),
            rule: "hypoxia".into(),
            title: "SpO2 low".into(),
            severity: Severity::Critical,
            category: Category::Physiological,
            since: "2026-12-05T10:00:00Z".into(),
            action: action.into(),
            minutes,
            by: "alice".into(),
            note: Some("probe re-sited".into()),
            at_ms: 1_796_464_860_000,
        }
    }

    #[test]
    fn an_acknowledgement_round_trips_through_its_measurement() {
        let r = request("silence", Some(5));
        let bytes = serde_json::to_vec(&r).expect("json");
        let parsed = AckRequest::parse(&bytes).expect("valid");
        let m = parsed.to_measurement(SourcePos {
            topic: "vitals.acks".into(),
            partition: 0,
            offset: 3,
        });
        assert!(is_ack(&m));
        assert_eq!(m.patient_id.as_deref(), Some("P-1"));
        let a = alert_of(&m).expect("alert");
        assert_eq!(a.state, State::Silenced);
        assert_eq!(a.by.as_deref(), Some("alice"));
        assert_eq!(a.at, "2026-12-05T10:01:00Z");
        assert_eq!(a.until.as_deref(), Some("2026-12-05T10:06:00Z"));
        assert!(
            a.text
                .starts_with("CRITICAL silenced by alice: patient P-1: SpO2 low"),
            "{}",
            a.text
        );
    }

    #[test]
    fn bad_acknowledgements_say_what_is_wrong() {
        let bad = |r: AckRequest| AckRequest::parse(&serde_json::to_vec(&r).expect("json"));
        assert!(bad(request("silence", None))
            .unwrap_err()
            .contains("minutes"));
        assert!(bad(request("mute", None))
            .unwrap_err()
            .contains("unknown action"));
        let mut r = request("acknowledge", None);
        r.by = " ".into();
        assert!(bad(r).unwrap_err().contains("who"));
        assert!(AckRequest::parse(b"{}")
            .unwrap_err()
            .starts_with("not an acknowledgement"));
    }
}
