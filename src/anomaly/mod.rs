//! Anomaly detection and clinician alerts: rules as data, NEWS2, per-patient vital state,
//! rule evaluation and the alert lifecycle, all on event time.

pub mod ack;
pub mod evidence;
pub mod judge;
pub mod lifecycle;
pub mod news2;
pub mod reload;
pub mod rules;
pub mod signals;
