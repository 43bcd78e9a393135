//! vitalflow: streams medical-device vitals into FHIR R4 Observations, clinician alerts and a
//! lakehouse, reading the Microsoft IoMT FHIR Connector / Azure MedTech mapping templates.

pub mod anomaly;
pub mod bench;
pub mod board;
pub mod config;
pub mod dataflow;
pub mod debugger;
pub mod event;
pub mod failpoint;
pub mod fhir;
pub mod gateway;
pub mod hl7;
pub mod kafka;
pub mod lake;
pub mod mapping;
pub mod metrics;
pub mod model;
pub mod privacy;
pub mod sinks;
pub mod sources;
pub mod time;
pub mod web;
