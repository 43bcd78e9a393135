//! FHIR R4 side: observation groups, SampledData streams, Observation build and merge.

pub mod client;
pub mod compact_json;
pub mod device;
pub mod groups;
pub mod identity;
pub mod observation;
pub mod observation_json;
pub mod sampled_data;
pub mod series;
pub mod store;

/// The connector's service URI: system of its own codings and of Observation identifiers.
pub const SERVICE_URI: &str = "https://azure.microsoft.com/en-us/services/iomt-fhir-connector/";

/// Why a measurement group could not become an Observation.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct FhirDataError(pub String);
