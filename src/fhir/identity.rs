//! Identity resolution, as the IoMT connector's `ResourceIdentityService`s: device (and
//! patient, encounter) identifiers in measurements become FHIR resource ids.
//!
//! - `Lookup`: the Device by identifier; its `patient` reference is the subject.
//! - `LookupWithEncounter`: also the Encounter by the measurement's encounter identifier.
//! - `Create`: as `Lookup`, creating a missing Patient and Device at ids derived from their
//!   identifiers, so two workers or jobs racing create one of each.
//!
//! Answers are cached per worker with a TTL, "not found" for a shorter one, in a bounded LRU.
//! Lookups of many devices go to the server as one `batch` Bundle of searches.

use super::client::{FhirClient, FhirError};
use crate::config::{FhirSinkConfig, IdentityMode};
use lru::LruCache;
use reqwest::Method;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

/// What a measurement group names: its device, patient and encounter identifiers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdentityKey {
    /// Device identifier.
    pub device: String,
    /// Patient identifier (used by `Create`).
    pub patient: String,
    /// Encounter identifier (used by `LookupWithEncounter`).
    pub encounter: Option<String>,
}

/// FHIR resource ids of a group's Patient, Device and Encounter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Patient resource id.
    pub patient: String,
    /// Device resource id.
    pub device: String,
    /// Encounter resource id (`LookupWithEncounter`).
    pub encounter: Option<String>,
}

/// A resolution: the ids, or why the group cannot be linked (it goes to the dead letters).
pub type Resolved = Result<Identity, String>;

/// One worker's identity resolver and its cache.
pub struct Resolver {
    mode: IdentityMode,
    system: Option<String>,
    batch_size: usize,
    ttl: Duration,
    negative_ttl: Duration,
    cache: LruCache<IdentityKey, (Resolved, Instant)>,
}

/// The id in a reference to `resource_type` (`Patient/1`, `http://x/Patient/1/_history/2`).
pub fn reference_id<'a>(reference: &'a str, resource_type: &str) -> Option<&'a str> {
    let prefix = format!("{resource_type}/");
    let at = if reference.starts_with(&prefix) {
        0
    } else {
        reference.find(&format!("/{prefix}"))? + 1
    };
    reference[at + prefix.len()..]
        .split('/')
        .next()
        .filter(|s| !s.is_empty())
}

/// A lookup's answer before `Create` acts on it.
enum Answer {
    Found(Identity),
    /// The Device, or the Patient it should link to, does not exist: `Create` makes them.
    Missing(String),
    /// Anything else that stops the group being linked.
    Refused(String),
}

fn identifier_param(system: Option<&str>, value: &str) -> String {
    let v = value
        .replace('|', "\\|")
        .replace(',', "\\,")
        .replace('$', "\\$");
    let token = match system {
        Some(s) => format!("{s}|{v}"),
        None => v,
    };
    form_urlencoded(&token)
}

/// What a search parameter value escapes: everything but RFC 3986 unreserved characters.
const QUERY_VALUE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

fn form_urlencoded(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, QUERY_VALUE).to_string()
}

/// Resources in a searchset Bundle whose identifiers match exactly (servers may match
/// loosely, e.g. on a prefix or without the system).
fn matching<'a>(bundle: &'a Value, system: Option<&str>, value: &str) -> Vec<&'a Value> {
    bundle
        .get("entry")
        .and_then(Value::as_array)
        .map(|a| a.as_slice())
        .unwrap_or_default()
        .iter()
        .filter(|e| {
            e.pointer("/search/mode").and_then(Value::as_str) != Some("include")
                && e.pointer("/search/mode").and_then(Value::as_str) != Some("outcome")
        })
        .filter_map(|e| e.get("resource"))
        .filter(|r| has_identifier(r, system, value))
        .collect()
}

/// Whether resource `r` carries this identifier exactly.
fn has_identifier(r: &Value, system: Option<&str>, value: &str) -> bool {
    r.get("identifier")
        .and_then(Value::as_array)
        .is_some_and(|ids| {
            ids.iter().any(|i| {
                i.get("value").and_then(Value::as_str) == Some(value)
                    && system.is_none_or(|s| i.get("system").and_then(Value::as_str) == Some(s))
            })
        })
}

enum Found<'a> {
    One(&'a Value),
    None,
    Many(usize),
}

fn one<'a>(bundle: &'a Value, system: Option<&str>, value: &str) -> Found<'a> {
    let m = matching(bundle, system, value);
    match m.len() {
        0 => Found::None,
        1 => Found::One(m[0]),
        n => Found::Many(n),
    }
}

fn id_of(r: &Value) -> Option<String> {
    r.get("id").and_then(Value::as_str).map(str::to_string)
}

impl Resolver {
    /// A resolver with the sink's mode, system, batch size and cache settings.
    pub fn new(cfg: &FhirSinkConfig) -> Self {
        Self {
            mode: cfg.identity,
            system: cfg.device_identifier_system.clone(),
            batch_size: cfg.batch_size.max(1),
            ttl: cfg.cache_ttl,
            negative_ttl: cfg.negative_cache_ttl,
            cache: LruCache::new(NonZeroUsize::new(cfg.cache_capacity.max(1)).expect("> 0")),
        }
    }

    /// Cached entries (fresh or not).
    pub fn cached(&self) -> usize {
        self.cache.len()
    }

    /// Resolves every key. Transport failures return Err and cache nothing new for the keys
    /// not yet answered; "not found" and bad links are answers, cached for the negative TTL.
    pub fn resolve(
        &mut self,
        client: &FhirClient,
        keys: &[IdentityKey],
    ) -> Result<HashMap<IdentityKey, Resolved>, FhirError> {
        let now = Instant::now();
        let mut out = HashMap::new();
        let mut misses = Vec::new();
        for k in keys {
            if out.contains_key(k) || misses.contains(k) {
                continue;
            }
            match self.cache.get(k) {
                Some((r, at)) if *at > now => {
                    out.insert(k.clone(), r.clone());
                }
                _ => misses.push(k.clone()),
            }
        }
        for chunk in misses.chunks(self.batch_size) {
            let answers = self.lookup(client, chunk)?;
            for (k, answer) in chunk.iter().zip(answers) {
                let r = match answer {
                    Answer::Found(i) => Ok(i),
                    Answer::Missing(_) if self.mode == IdentityMode::Create => {
                        self.create(client, k)?
                    }
                    Answer::Missing(why) | Answer::Refused(why) => Err(why),
                };
                let ttl = if r.is_ok() {
                    self.ttl
                } else {
                    self.negative_ttl
                };
                self.cache.put(k.clone(), (r.clone(), now + ttl));
                out.insert(k.clone(), r);
            }
        }
        Ok(out)
    }

    /// One batch of searches for the Devices (and Encounters) of `keys`.
    fn lookup(&self, client: &FhirClient, keys: &[IdentityKey]) -> Result<Vec<Answer>, FhirError> {
        let system = self.system.as_deref();
        let with_encounter = self.mode == IdentityMode::LookupWithEncounter;
        let mut entries = Vec::new();
        for k in keys {
            entries.push(json!({"request": {"method": "GET", "url": format!("Device?identifier={}", identifier_param(system, &k.device))}}));
            if with_encounter {
                if let Some(e) = &k.encounter {
                    entries.push(json!({"request": {"method": "GET", "url": format!("Encounter?identifier={}", identifier_param(None, e))}}));
                }
            }
        }
        let mut answers = client.batch(entries)?.into_iter();
        let mut out = Vec::new();
        for k in keys {
            let device = answers.next().expect("one answer per entry");
            let encounter = if with_encounter && k.encounter.is_some() {
                answers.next()
            } else {
                None
            };
            out.push(self.judge(k, &device, encounter.as_ref())?);
        }
        Ok(out)
    }

    fn judge(
        &self,
        k: &IdentityKey,
        device: &super::client::EntryResponse,
        encounter: Option<&super::client::EntryResponse>,
    ) -> Result<Answer, FhirError> {
        let search_failed = |what: &str, e: &super::client::EntryResponse| {
            let d = e.diagnostics.clone().unwrap_or_default();
            if e.status == 429 || e.status >= 500 {
                Err(FhirError::Unavailable(format!(
                    "{what} search answered {}: {d}",
                    e.status
                )))
            } else {
                Ok(Answer::Refused(format!(
                    "the {what} search answered {}: {d}",
                    e.status
                )))
            }
        };
        if device.status != 200 {
            return search_failed("Device", device);
        }
        let system = self.system.as_deref();
        let d = match one(&device.resource, system, &k.device) {
            Found::One(d) => d,
            Found::None => {
                return Ok(Answer::Missing(format!(
                    "no Device with identifier \"{}\"{}",
                    k.device,
                    system.map(|s| format!(" (system {s})")).unwrap_or_default()
                )))
            }
            Found::Many(n) => {
                return Ok(Answer::Refused(format!(
                    "{n} Devices share identifier \"{}\": cannot tell which one measured",
                    k.device
                )))
            }
        };
        let Some(device_id) = id_of(d) else {
            return Ok(Answer::Refused(format!(
                "Device \"{}\" has no id",
                k.device
            )));
        };
        let patient = d
            .pointer("/patient/reference")
            .and_then(Value::as_str)
            .and_then(|r| reference_id(r, "Patient"));
        let Some(patient) = patient else {
            return Ok(Answer::Missing(format!(
                "Device/{device_id} (identifier \"{}\") is linked to no Patient",
                k.device
            )));
        };
        let mut identity = Identity {
            patient: patient.to_string(),
            device: device_id,
            encounter: None,
        };
        if self.mode == IdentityMode::LookupWithEncounter {
            let Some(eid) = &k.encounter else {
                return Ok(Answer::Refused(
                    "the measurement has no encounter id, which identity LookupWithEncounter needs"
                        .into(),
                ));
            };
            let e = encounter.expect("searched");
            if e.status != 200 {
                return search_failed("Encounter", e);
            }
            match one(&e.resource, None, eid) {
                Found::One(r) => identity.encounter = id_of(r),
                Found::None => {
                    return Ok(Answer::Refused(format!(
                        "no Encounter with identifier \"{eid}\""
                    )))
                }
                Found::Many(n) => {
                    return Ok(Answer::Refused(format!(
                        "{n} Encounters share identifier \"{eid}\""
                    )))
                }
            }
        }
        Ok(Answer::Found(identity))
    }

    /// Ensures the Patient and the Device exist and are linked (identity `Create`).
    fn create(&self, client: &FhirClient, k: &IdentityKey) -> Result<Resolved, FhirError> {
        let patient = ensure(
            client,
            "Patient",
            None,
            &k.patient,
            json!({"resourceType": "Patient", "identifier": [{"value": k.patient}]}),
        )?;
        let patient_id = match patient.as_ref().map(id_of) {
            Ok(Some(id)) => id,
            Ok(None) => return Ok(Err("the server created a Patient without an id".into())),
            Err(e) => return Ok(Err(e.clone())),
        };
        let system = self.system.as_deref();
        let mut identifier = json!({"value": k.device});
        if let Some(s) = system {
            identifier["system"] = s.into();
        }
        let device = ensure(
            client,
            "Device",
            system,
            &k.device,
            json!({"resourceType": "Device", "identifier": [identifier], "patient": {"reference": format!("Patient/{patient_id}")}}),
        )?;
        let mut device = match device {
            Ok(d) => d,
            Err(e) => return Ok(Err(e)),
        };
        let Some(device_id) = id_of(&device) else {
            return Ok(Err("the server created a Device without an id".into()));
        };
        let linked = device
            .pointer("/patient/reference")
            .and_then(Value::as_str)
            .and_then(|r| reference_id(r, "Patient"))
            .map(str::to_string);
        match linked {
            Some(p) if p != patient_id => {
                return Ok(Err(format!(
                    "Device/{device_id} (identifier \"{}\") is linked to Patient/{p}, not to Patient/{patient_id} (identifier \"{}\")",
                    k.device, k.patient
                )))
            }
            Some(_) => {}
            None => {
                // An existing Device without a patient: link it, as the connector does.
                device["patient"] = json!({"reference": format!("Patient/{patient_id}")});
                let r = client.send(Method::PUT, &format!("Device/{device_id}"), Some(&device), &[])?;
                if !(200..300).contains(&r.status) {
                    return Ok(Err(format!(
                        "linking Device/{device_id} to Patient/{patient_id} answered {}",
                        r.status
                    )));
                }
            }
        }
        Ok(Ok(Identity {
            patient: patient_id,
            device: device_id,
            encounter: None,
        }))
    }
}

/// The existing resource with this identifier, else a new one `PUT` at an id derived from the
/// identifier. Writers that race past the search write the same id and meet on one
/// resource, where a conditional create (`If-None-Exist`) is only as atomic as the server
/// makes it: Helios answered six racing writers with three Patients.
pub fn ensure(
    client: &FhirClient,
    resource_type: &str,
    system: Option<&str>,
    value: &str,
    mut resource: Value,
) -> Result<Result<Value, String>, FhirError> {
    let condition = format!("identifier={}", identifier_param(system, value));
    let s = client.send(
        Method::GET,
        &format!("{resource_type}?{condition}"),
        None,
        &[],
    )?;
    if s.status != 200 {
        return Ok(Err(format!(
            "the {resource_type} search answered {}: {}",
            s.status,
            super::client::outcome_diagnostics(&s.body).unwrap_or_default()
        )));
    }
    match one(&s.body, system, value) {
        Found::One(found) => return Ok(Ok(found.clone())),
        Found::Many(n) => {
            return Ok(Err(format!(
                "{n} {resource_type} resources have identifier \"{value}\""
            )))
        }
        Found::None => {}
    }
    let id = created_id(resource_type, system, value);
    // A writer that raced past the search may have created it since; anything else at that
    // id is not overwritten.
    let held = client.send(Method::GET, &format!("{resource_type}/{id}"), None, &[])?;
    if held.status == 200 {
        return Ok(if has_identifier(&held.body, system, value) {
            Ok(held.body)
        } else {
            Err(format!(
                "{resource_type}/{id} exists with another identifier than \"{value}\""
            ))
        });
    }
    resource["id"] = Value::String(id.clone());
    let r = client.send(
        Method::PUT,
        &format!("{resource_type}/{id}"),
        Some(&resource),
        &[("Prefer", "return=representation".into())],
    )?;
    match r.status {
        200 | 201 if r.body.get("resourceType").and_then(Value::as_str) == Some(resource_type) => {
            Ok(Ok(r.body))
        }
        // A server that answers with no body holds what was sent.
        200 | 201 => Ok(Ok(resource)),
        s => Ok(Err(format!(
            "creating {resource_type} \"{value}\" answered {s}: {}",
            super::client::outcome_diagnostics(&r.body).unwrap_or_default()
        ))),
    }
}

/// The id a created resource gets: a hash of its type and identifier, so every writer, job
/// and restart picks the same one, and no patient identifier shows in a URL.
fn created_id(resource_type: &str, system: Option<&str>, value: &str) -> String {
    match system {
        Some(s) => super::device::resource_id(resource_type, &format!("{s}|{value}")),
        // As the device tree names its monitor, so both outputs write one resource.
        None => super::device::resource_id(resource_type, value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_ids_come_from_relative_absolute_and_versioned_references() {
        assert_eq!(reference_id("Patient/p-1", "Patient"), Some("p-1"));
        assert_eq!(
            reference_id("https://fhir.example/r4/Patient/7/_history/2", "Patient"),
            Some("7")
        );
        assert_eq!(reference_id("Device/7", "Patient"), None);
        assert_eq!(reference_id("Patient/", "Patient"), None);
    }

    #[test]
    fn identifier_search_values_are_escaped() {
        assert_eq!(identifier_param(None, "BM 1,a|b"), "BM%201%5C%2Ca%5C%7Cb");
        assert_eq!(identifier_param(Some("urn:x"), "d1"), "urn%3Ax%7Cd1");
    }

    #[test]
    fn only_exact_identifier_matches_count() {
        let b = json!({"resourceType": "Bundle", "entry": [
            {"resource": {"resourceType": "Device", "id": "a", "identifier": [{"value": "BM-10"}]}},
            {"resource": {"resourceType": "Device", "id": "b", "identifier": [{"system": "urn:s", "value": "BM-1"}]}},
        ]});
        assert!(matches!(one(&b, None, "BM-1"), Found::One(d) if d["id"] == "b"));
        assert!(matches!(one(&b, Some("urn:other"), "BM-1"), Found::None));
        assert!(matches!(one(&b, None, "BM-2"), Found::None));
    }
}
