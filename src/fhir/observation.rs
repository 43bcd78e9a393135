//! Observation build and merge, as the IoMT connector's CodeValueFhir processor does them.
//!
//! Observations are plain `serde_json::Value`s: a stored Observation may carry members this
//! code never sets (meta, extensions, notes), and a merge must keep them untouched.

use super::groups::ObservationGroup;
use super::sampled_data;
use super::series::Series;
use super::{FhirDataError, SERVICE_URI};
use crate::mapping::fhir::{
    Category, Code, CodeValueTemplate, ComponentTemplate, HeadParts, ValueKind, ValueTemplate,
};
use crate::time::{format_dotnet, parse_timestamp};
use chrono::{DateTime, Utc};
use serde_json::{json, Map, Number, Value};
use sha2::{Digest, Sha256};

/// Who an Observation is about and which device made it.
#[derive(Debug, Clone, PartialEq)]
pub struct Subjects<'a> {
    /// Patient resource id (resolved) or identifier (logical reference).
    pub patient: &'a str,
    /// Device resource id or identifier.
    pub device: &'a str,
    /// Encounter resource id or identifier.
    pub encounter: Option<&'a str>,
    /// True: ids are FHIR resource ids (`Patient/{id}`); false: logical references by identifier.
    pub resolved: bool,
}

impl Subjects<'_> {
    fn reference(&self, resource_type: &str, id: &str) -> Value {
        if self.resolved {
            json!({ "reference": format!("{resource_type}/{id}") })
        } else {
            json!({ "type": resource_type, "identifier": { "value": id } })
        }
    }
}

/// When an Observation's period (or instant) starts.
pub fn period_start(o: &Value) -> Option<DateTime<Utc>> {
    o.pointer("/effectivePeriod/start")
        .or_else(|| o.get("effectiveDateTime"))
        .and_then(Value::as_str)
        .and_then(parse_timestamp)
}

/// When an Observation's period (or instant) ends.
pub fn period_end(o: &Value) -> Option<DateTime<Utc>> {
    o.pointer("/effectivePeriod/end")
        .or_else(|| o.get("effectiveDateTime"))
        .and_then(Value::as_str)
        .and_then(parse_timestamp)
}

/// The connector's Observation identifier value: `{patient}.{device}.{type}.{segment}`.
///
/// Joined, not formatted: `format!` took 1,600 instructions for it, once per new window.
pub fn identifier_value(subjects: &Subjects<'_>, type_name: &str, id_segment: &str) -> String {
    [subjects.patient, subjects.device, type_name, id_segment].join(".")
}

/// The deterministic Observation id: lower-case hex SHA-256 of `{system}_{value}`.
pub fn observation_id(identifier_value: &str) -> String {
    let mut h = Sha256::new();
    h.update(SERVICE_URI.as_bytes());
    h.update(b"_");
    h.update(identifier_value.as_bytes());
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = String::with_capacity(64);
    for b in h.finalize() {
        id.push(HEX[usize::from(b >> 4)] as char);
        id.push(HEX[usize::from(b & 0xf)] as char);
    }
    id
}

fn coding(c: &Code) -> Value {
    let mut m = Map::new();
    if let Some(s) = &c.system {
        m.insert("system".into(), s.as_str().into());
    }
    if let Some(s) = &c.code {
        m.insert("code".into(), s.as_str().into());
    }
    if let Some(s) = &c.display {
        m.insert("display".into(), s.as_str().into());
    }
    Value::Object(m)
}

/// Template codes plus the connector's own coding for `name`; text = `name`.
fn resolve_code(name: &str, codes: &[Code]) -> Value {
    let mut coding: Vec<Value> = codes.iter().map(self::coding).collect();
    coding.push(json!({ "system": SERVICE_URI, "code": name, "display": name }));
    json!({ "coding": coding, "text": name })
}

/// The `code` and `category` (None when the template has none) of `tpl`'s Observations
/// of `type_name`: built once per template, for the spelling it first sees.
fn head(tpl: &CodeValueTemplate, type_name: &str) -> (Value, Option<Value>) {
    head_ref(tpl, type_name, |h| (h.code.clone(), h.category.clone()))
}

/// [`head`] with its compact JSON, lent to `f` instead of copied where it is built already.
pub(super) fn head_ref<R>(
    tpl: &CodeValueTemplate,
    type_name: &str,
    f: impl FnOnce(&HeadParts) -> R,
) -> R {
    let build = |type_name: &str| {
        let category = (!tpl.category.is_empty()).then(|| category(&tpl.category));
        let code = resolve_code(type_name, &tpl.codes);
        HeadParts {
            type_name: type_name.to_string(),
            code_json: super::compact_json::to_vec(&code).into(),
            category_json: (category.as_ref()).map(|c| super::compact_json::to_vec(c).into()),
            code,
            category,
        }
    };
    let cached = tpl.head.0.get_or_init(|| build(type_name));
    if cached.type_name == type_name {
        f(cached)
    } else {
        f(&build(type_name))
    }
}

fn category(categories: &[Category]) -> Value {
    Value::Array(
        categories
            .iter()
            .map(|c| {
                let mut m = Map::new();
                if !c.codes.is_empty() {
                    m.insert("coding".into(), c.codes.iter().map(coding).collect());
                }
                if let Some(t) = &c.text {
                    m.insert("text".into(), t.as_str().into());
                }
                Value::Object(m)
            })
            .collect(),
    )
}

fn period(start: &DateTime<Utc>, end: &DateTime<Utc>) -> Value {
    json!({ "start": format_dotnet(start), "end": format_dotnet(end) })
}

const VALUE_KEYS: &[&str] = &[
    "valueQuantity",
    "valueCodeableConcept",
    "valueString",
    "valueBoolean",
    "valueInteger",
    "valueRange",
    "valueRatio",
    "valueSampledData",
    "valueTime",
    "valueDateTime",
    "valuePeriod",
];

pub(super) fn value_key(kind: &ValueKind) -> &'static str {
    match kind {
        ValueKind::SampledData { .. } => "valueSampledData",
        ValueKind::Quantity { .. } => "valueQuantity",
        ValueKind::String => "valueString",
        ValueKind::CodeableConcept { .. } => "valueCodeableConcept",
    }
}

/// Parses a measured value as an invariant-culture decimal.
fn decimal(s: &str) -> Option<Number> {
    let t = s.trim();
    let f: f64 = t.parse().ok().filter(|f: &f64| f.is_finite())?;
    if t.contains(['e', 'E', 'n', 'N', 'i', 'I']) {
        return Number::from_f64(f);
    }
    t.trim_start_matches('+')
        .parse::<i64>()
        .map(Number::from)
        .ok()
        .or_else(|| Number::from_f64(f))
}

/// The one value of a Quantity, as a number.
pub(super) fn quantity(tpl: &ValueTemplate, values: &Series) -> Result<Number, FhirDataError> {
    let raw = single(tpl, values)?;
    decimal(raw).ok_or_else(|| {
        FhirDataError(format!(
            "Quantity value \"{}\" is not a number: \"{raw}\"",
            tpl.value_name
        ))
    })
}

pub(super) fn single<'v>(
    tpl: &ValueTemplate,
    values: &'v Series,
) -> Result<&'v str, FhirDataError> {
    match (values.len(), values.last()) {
        (1, Some(v)) => Ok(v.text()),
        _ => Err(FhirDataError(format!(
            "{} value \"{}\" expects exactly one value per observation, found {}",
            value_key(&tpl.kind),
            tpl.value_name,
            values.len()
        ))),
    }
}

/// Whether every Observation of `tpl` builds whatever its group holds: SampledData and
/// CodeableConcept values do; a Quantity or a string wants exactly one value
/// ([`create_value`]), a Quantity a number.
pub fn always_builds(tpl: &CodeValueTemplate) -> bool {
    let builds = |v: &ValueTemplate| {
        matches!(
            v.kind,
            ValueKind::SampledData { .. } | ValueKind::CodeableConcept { .. }
        )
    };
    tpl.value.iter().all(builds) && tpl.components.iter().all(|c| builds(&c.value))
}

fn create_value(
    tpl: &ValueTemplate,
    values: &Series,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> Result<Value, FhirDataError> {
    Ok(match &tpl.kind {
        ValueKind::SampledData {
            default_period,
            unit,
        } => {
            let mut origin = Map::new();
            origin.insert("value".into(), 0.into());
            if let Some(u) = unit {
                origin.insert("unit".into(), u.as_str().into());
            }
            json!({
                "origin": origin,
                "period": default_period,
                "dimensions": 1,
                "data": values.sampled_data(start, end, *default_period),
            })
        }
        ValueKind::Quantity { unit, code, system } => {
            let n = quantity(tpl, values)?;
            let mut q = Map::new();
            q.insert("value".into(), Value::Number(n));
            for (k, v) in [("unit", unit), ("system", system), ("code", code)] {
                if let Some(v) = v {
                    q.insert(k.into(), v.as_str().into());
                }
            }
            Value::Object(q)
        }
        ValueKind::String => Value::String(single(tpl, values)?.to_string()),
        ValueKind::CodeableConcept { codes, text } => {
            let mut m = Map::new();
            m.insert("coding".into(), codes.iter().map(coding).collect());
            if let Some(t) = text {
                m.insert("text".into(), t.as_str().into());
            }
            Value::Object(m)
        }
    })
}

fn merge_value(
    tpl: &ValueTemplate,
    values: &Series,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    existing_period: (DateTime<Utc>, DateTime<Utc>),
    holder: &mut Map<String, Value>,
) -> Result<(), FhirDataError> {
    let key = value_key(&tpl.kind);
    let new_value = match &tpl.kind {
        ValueKind::SampledData { default_period, .. } => {
            let Some(existing) = holder.get(key) else {
                return Err(FhirDataError(format!(
                    "cannot merge SampledData value \"{}\" into an Observation value of another type",
                    tpl.value_name
                )));
            };
            if existing
                .get("dimensions")
                .and_then(Value::as_u64)
                .unwrap_or(1)
                > 1
            {
                return Err(FhirDataError(format!(
                    "cannot merge value \"{}\" into SampledData with more than one dimension",
                    tpl.value_name
                )));
            }
            let data = existing.get("data").and_then(Value::as_str).unwrap_or("");
            let old = sampled_data::to_time_values(data, existing_period.0, *default_period);
            let merged = sampled_data::merge(&old, &values.to_time_values());
            let (start, end) = (start.min(existing_period.0), end.max(existing_period.1));
            let mut sd = existing.clone();
            sd["data"] = Value::String(sampled_data::build(&merged, start, end, *default_period));
            sd
        }
        _ => create_value(tpl, values, start, end)?,
    };
    for k in VALUE_KEYS {
        if *k != key {
            holder.remove(*k);
        }
    }
    holder.insert(key.into(), new_value);
    Ok(())
}

/// A new component: the component codes plus the connector's coding for the value name.
fn new_component(
    c: &ComponentTemplate,
    values: &Series,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> Result<Value, FhirDataError> {
    let mut comp = Map::new();
    comp.insert("code".into(), resolve_code(&c.value.value_name, &c.codes));
    comp.insert(
        value_key(&c.value.kind).into(),
        create_value(&c.value, values, start, end)?,
    );
    Ok(Value::Object(comp))
}

/// Builds a new Observation for one group. `type_name` is the measurement type as the
/// device mapping spelled it (the template lookup ignores case; the codes keep this spelling).
pub fn build(
    tpl: &CodeValueTemplate,
    type_name: &str,
    group: &ObservationGroup,
    subjects: &Subjects<'_>,
) -> Result<Value, FhirDataError> {
    let id = observation_id(&identifier_value(subjects, type_name, &group.id_segment));
    build_with_id(tpl, type_name, group, subjects, id)
}

/// [`build`] when the Observation id is known already: the window computes it once for
/// all its versions (a SHA-256, 2 % of a replay's instructions when computed per version).
pub fn build_with_id(
    tpl: &CodeValueTemplate,
    type_name: &str,
    group: &ObservationGroup,
    subjects: &Subjects<'_>,
    id: String,
) -> Result<Value, FhirDataError> {
    let identifier = identifier_value(subjects, type_name, &group.id_segment);
    debug_assert_eq!(id, observation_id(&identifier), "the id of this identifier");
    let mut o = Map::new();
    o.insert("resourceType".into(), "Observation".into());
    o.insert("id".into(), id.into());
    o.insert(
        "identifier".into(),
        json!([{ "system": SERVICE_URI, "value": identifier }]),
    );
    o.insert("status".into(), "final".into());
    let (code, category) = head(tpl, type_name);
    if let Some(c) = category {
        o.insert("category".into(), c);
    }
    o.insert("code".into(), code);
    o.insert(
        "subject".into(),
        subjects.reference("Patient", subjects.patient),
    );
    if let Some(e) = subjects.encounter {
        o.insert("encounter".into(), subjects.reference("Encounter", e));
    }
    o.insert("effectivePeriod".into(), period(&group.start, &group.end));
    if let Some(v) = &tpl.value {
        if let Some(values) = group.get(&v.value_name) {
            o.insert(
                value_key(&v.kind).into(),
                create_value(v, values, group.start, group.end)?,
            );
        }
    }
    o.insert(
        "device".into(),
        subjects.reference("Device", subjects.device),
    );
    let mut components = Vec::new();
    for c in &tpl.components {
        if let Some(values) = group.get(&c.value.value_name) {
            components.push(new_component(c, values, group.start, group.end)?);
        }
    }
    if !components.is_empty() {
        o.insert("component".into(), Value::Array(components));
    }
    Ok(Value::Object(o))
}

fn existing_period(
    o: &Map<String, Value>,
    group: &ObservationGroup,
) -> (DateTime<Utc>, DateTime<Utc>) {
    let p = o.get("effectivePeriod");
    let at = |k: &str| {
        p.and_then(|p| p.get(k))
            .and_then(Value::as_str)
            .and_then(parse_timestamp)
    };
    match (at("start"), at("end")) {
        (Some(s), Some(e)) => (s, e),
        (Some(s), None) => (s, s.max(group.end)),
        _ => {
            let t = o
                .get("effectiveDateTime")
                .and_then(Value::as_str)
                .and_then(parse_timestamp);
            t.map_or((group.start, group.end), |t| (t, t))
        }
    }
}

/// Merges a group into a stored Observation. Values are replaced (SampledData re-built over
/// the union of both periods, new values winning), the period only widens, and when the
/// result differs from what was stored its status becomes `amended`.
pub fn merge(
    tpl: &CodeValueTemplate,
    group: &ObservationGroup,
    existing: &Value,
) -> Result<Value, FhirDataError> {
    let Some(mut o) = existing.as_object().cloned() else {
        return Err(FhirDataError(
            "the stored Observation is not a JSON object".into(),
        ));
    };
    let period_before = existing_period(&o, group);
    if tpl.category.is_empty() {
        o.remove("category");
    } else {
        o.insert("category".into(), category(&tpl.category));
    }
    if let Some(v) = &tpl.value {
        if let Some(values) = group.get(&v.value_name) {
            merge_value(v, values, group.start, group.end, period_before, &mut o)?;
        }
    }
    if !tpl.components.is_empty() {
        let mut components: Vec<Value> = match o.remove("component") {
            Some(Value::Array(a)) => a,
            _ => Vec::new(),
        };
        for c in &tpl.components {
            let Some(values) = group.get(&c.value.value_name) else {
                continue;
            };
            let found = components.iter_mut().find(|comp| {
                comp.pointer("/code/coding")
                    .and_then(Value::as_array)
                    .is_some_and(|codings| {
                        codings.iter().any(|cd| {
                            cd.get("system").and_then(Value::as_str) == Some(SERVICE_URI)
                                && cd.get("code").and_then(Value::as_str)
                                    == Some(&c.value.value_name)
                        })
                    })
            });
            match found.and_then(Value::as_object_mut) {
                Some(comp) => merge_value(
                    &c.value,
                    values,
                    group.start,
                    group.end,
                    period_before,
                    comp,
                )?,
                None => components.push(new_component(c, values, group.start, group.end)?),
            }
        }
        if !components.is_empty() {
            o.insert("component".into(), Value::Array(components));
        }
    }
    let start = period_before.0.min(group.start);
    let end = period_before.1.max(group.end);
    if (start, end) != period_before || !o.contains_key("effectivePeriod") {
        o.insert("effectivePeriod".into(), period(&start, &end));
    }
    let merged = Value::Object(o);
    Ok(if &merged != existing {
        let mut m = merged;
        m["status"] = "amended".into();
        m
    } else {
        merged
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::groups::TimeValue;
    use crate::mapping::FhirMapping;
    use std::sync::Arc;

    #[test]
    fn the_cached_code_follows_each_spelling_of_the_type() {
        // The first spelling builds the cache; another spelling of the same type (the
        // template lookup ignores case) gets its own code, not the cached one.
        let fhir = FhirMapping::from_file(std::path::Path::new(
            "templates/bedside-monitor/fhirmapping.json",
        ))
        .expect("mapping");
        let tpl = fhir.get("heartRate").expect("template");
        let at = parse_timestamp("2026-12-06T10:00:00Z").expect("time");
        let group = ObservationGroup {
            start: at,
            end: at + chrono::Duration::seconds(3599),
            id_segment: "x".into(),
            values: vec![(
                Arc::from("hr"),
                Arc::new(Series::of(&[TimeValue::new(at, "72".into())])),
            )],
        };
        let subjects = Subjects {
            patient: "P-1",
            device: "D-1",
            encounter: None,
            resolved: false,
        };
        for spelling in ["heartRate", "HEARTRATE", "heartRate"] {
            let o = build(tpl, spelling, &group, &subjects).expect("built");
            assert_eq!(o["code"], resolve_code(spelling, &tpl.codes), "{spelling}");
            assert_eq!(o["category"], category(&tpl.category), "{spelling}");
        }
    }
}
