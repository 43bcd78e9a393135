//! IoMT/MedTech mapping templates: device mappings (normalization) and FHIR mappings.

pub mod device;
pub mod device_tree;
pub mod error;
pub mod expr;
pub mod fhir;
pub mod hl7;
pub mod jmes;
pub mod jsonpath;
pub mod tree;

pub use device::{DeviceMapping, Hl7Error, MessageError};
pub use error::NormalizeError;
pub use error::{TemplateError, TemplateErrors};
pub use fhir::FhirMapping;

/// Types the device mapping produces that the FHIR mapping has no template for.
pub fn unmapped_types(device: &DeviceMapping, fhir: &FhirMapping) -> Vec<String> {
    let mut out: Vec<String> = device
        .template_names()
        .filter(|(t, _)| fhir.get(t).is_none())
        .map(|(t, _)| t.to_string())
        .collect();
    out.dedup();
    out
}
