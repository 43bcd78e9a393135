//! IoMT/MedTech mapping templates: device mappings (normalization) and FHIR mappings.

pub mod device;
pub mod error;
pub mod expr;
pub mod fhir;
pub mod jmes;
pub mod jsonpath;

pub use device::{DeviceMapping, NormalizeError};
pub use error::{TemplateError, TemplateErrors};
pub use fhir::FhirMapping;
