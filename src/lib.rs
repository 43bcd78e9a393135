//! vitalflow: streams medical-device vitals into FHIR R4 Observations, clinician alerts and a
//! lakehouse, reading the Microsoft IoMT FHIR Connector / Azure MedTech mapping templates.

pub mod debugger;
pub mod event;
pub mod fhir;
pub mod mapping;
pub mod model;
pub mod time;
