//! The vitals a FHIR mapping produces, by every name a rule may use for them.

use crate::mapping::fhir::ValueTemplate;
use crate::mapping::FhirMapping;
use rustc_hash::FxHashMap as HashMap;
use std::sync::Arc;

/// The vitals a FHIR mapping produces: each measurement property that becomes an
/// Observation value, by every name a rule may use for it.
#[derive(Debug, Clone, Default)]
pub struct Vitals {
    /// (type name, value name) → canonical vital key, by the hash of the two names: a
    /// reading's lookup hashes its names once and clones none of the template's shared
    /// `Arc`s (building an `(Arc, Arc)` key wrote two counters every worker shares).
    by_property: HashMap<u64, Vec<Property>>,
    /// Any accepted name (codes, type names, `type.value`) → canonical key.
    names: HashMap<String, String>,
    /// Canonical key → the unit's spellings (UCUM code, display), when the mapping
    /// states one.
    pub(super) units: HashMap<String, Vec<String>>,
    /// Canonical key → the mapping's name for it (type, or `type.value`).
    labels: HashMap<String, String>,
}

/// A (type name, value name) a FHIR mapping turns into a vital, and that vital's key.
type Property = (Arc<str>, Arc<str>, String);

/// The hash [`Vitals::by_property`] is keyed by.
fn property_key(type_name: &str, value_name: &str) -> u64 {
    use std::hash::{Hash as _, Hasher as _};
    let mut h = rustc_hash::FxHasher::default();
    type_name.hash(&mut h);
    value_name.hash(&mut h);
    h.finish()
}

impl Vitals {
    /// Indexes the values of a FHIR mapping.
    pub fn new(fhir: &FhirMapping) -> Self {
        let mut v = Self::default();
        for t in fhir.templates() {
            let mut add = |codes: Vec<&str>, value: &ValueTemplate, alias: String| {
                let key = codes.first().map_or(alias.clone(), |c| c.to_string());
                let type_name: Arc<str> = Arc::from(t.type_name.as_str());
                let value_name: Arc<str> = Arc::from(value.value_name.as_str());
                let same = v
                    .by_property
                    .entry(property_key(&type_name, &value_name))
                    .or_default();
                same.retain(|(t, n, _)| (t, n) != (&type_name, &value_name));
                same.push((type_name, value_name, key.clone()));
                v.labels.insert(key.clone(), alias.clone());
                v.names.insert(alias, key.clone());
                for c in codes {
                    v.names.insert(c.to_string(), key.clone());
                }
                v.units.insert(
                    key,
                    value
                        .unit_spellings()
                        .into_iter()
                        .map(str::to_string)
                        .collect(),
                );
            };
            if let Some(value) = &t.value {
                let codes = t.codes.iter().filter_map(|c| c.code.as_deref()).collect();
                add(codes, value, t.type_name.clone());
            }
            for c in &t.components {
                let codes = c.codes.iter().filter_map(|c| c.code.as_deref()).collect();
                add(
                    codes,
                    &c.value,
                    format!("{}.{}", t.type_name, c.value.value_name),
                );
            }
        }
        v
    }

    /// The canonical vital of a measurement property, if it becomes an Observation value.
    pub fn of(&self, type_name: &Arc<str>, value_name: &Arc<str>) -> Option<&str> {
        self.by_property
            .get(&property_key(type_name, value_name))?
            .iter()
            .find(|(t, v, _)| **t == **type_name && **v == **value_name)
            .map(|(.., key)| key.as_str())
    }

    /// The canonical key for a name a rule uses.
    pub fn resolve(&self, name: &str) -> Option<&str> {
        self.names.get(name).map(String::as_str)
    }

    /// The mapping's name for a canonical key (`spo2`, `bloodPressure.systolic`).
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.get(key).map(String::as_str)
    }

    pub(super) fn known(&self) -> String {
        let mut n: Vec<&String> = self.names.keys().collect();
        n.sort();
        n.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
    }
}
