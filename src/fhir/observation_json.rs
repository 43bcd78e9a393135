//! A new Observation written straight from a window's values as compact JSON: the bytes
//! [`compact_json`](super::compact_json) writes of [`observation::build_with_id`]'s
//! resource, without the `serde_json::Value` in between.
//!
//! Nearly every version has no stored version to merge into, and building it as a `Value`
//! (each member's key allocated and hashed into its map, then the whole tree dropped) was
//! 6 % of a replay's instructions (`valgrind --tool=callgrind`), more than writing it. Members are
//! written in the order `build_with_id` inserts them; the property test below holds the two
//! to the same bytes for every template kind.

use super::compact_json::string;
use super::groups::ObservationGroup;
use super::observation::{self, head_ref, quantity, single, value_key, Subjects};
use super::series::Series;
use super::{FhirDataError, SERVICE_URI};
use crate::mapping::fhir::{Code, CodeValueTemplate, ValueKind, ValueTemplate};
use crate::time::format_dotnet;
use chrono::{DateTime, Utc};

/// Appends the Observation [`observation::build_with_id`] builds (status `amended` when
/// `amended`) to `out` as compact JSON; on error `out` is left as it was.
pub fn write(
    out: &mut Vec<u8>,
    tpl: &CodeValueTemplate,
    type_name: &str,
    group: &ObservationGroup,
    subjects: &Subjects<'_>,
    id: &str,
    amended: bool,
) -> Result<(), FhirDataError> {
    let start = out.len();
    // Members are written as they come; on error what was written is taken back.
    let members = |out: &mut Vec<u8>| -> Result<(), FhirDataError> {
        let identifier = observation::identifier_value(subjects, type_name, &group.id_segment);
        let mut o = Object::open(out);
        string(o.key("resourceType"), "Observation");
        string(o.key("id"), id);
        let list = o.key("identifier");
        list.push(b'[');
        let mut i = Object::open(list);
        string(i.key("system"), SERVICE_URI);
        string(i.key("value"), &identifier);
        i.close();
        list.push(b']');
        string(o.key("status"), if amended { "amended" } else { "final" });
        head_ref(tpl, type_name, |h| {
            if let Some(c) = &h.category_json {
                o.key("category").extend_from_slice(c);
            }
            o.key("code").extend_from_slice(&h.code_json);
        });
        reference(o.key("subject"), subjects, "Patient", subjects.patient);
        if let Some(e) = subjects.encounter {
            reference(o.key("encounter"), subjects, "Encounter", e);
        }
        let mut p = Object::open(o.key("effectivePeriod"));
        string(p.key("start"), &format_dotnet(&group.start));
        string(p.key("end"), &format_dotnet(&group.end));
        p.close();
        if let Some(v) = &tpl.value {
            if let Some(values) = group.get(&v.value_name) {
                value(o.key(value_key(&v.kind)), v, values, group.start, group.end)?;
            }
        }
        reference(o.key("device"), subjects, "Device", subjects.device);
        let mut components = tpl
            .components
            .iter()
            .filter_map(|c| Some((c, group.get(&c.value.value_name)?)))
            .peekable();
        if components.peek().is_some() {
            let list = o.key("component");
            list.push(b'[');
            for (n, (c, values)) in components.enumerate() {
                if n > 0 {
                    list.push(b',');
                }
                let mut comp = Object::open(list);
                resolved_code(comp.key("code"), &c.value.value_name, &c.codes);
                let key = value_key(&c.value.kind);
                value(comp.key(key), &c.value, values, group.start, group.end)?;
                comp.close();
            }
            list.push(b']');
        }
        o.close();
        Ok(())
    };
    let written = members(out);
    if written.is_err() {
        out.truncate(start);
    }
    written
}

/// A JSON object being written: members are separated as they are added.
struct Object<'a> {
    out: &'a mut Vec<u8>,
    empty: bool,
}

impl<'a> Object<'a> {
    fn open(out: &'a mut Vec<u8>) -> Self {
        out.push(b'{');
        Object { out, empty: true }
    }

    /// Writes the member name `k`, one of this module's FHIR names (nothing in them to
    /// escape); its value is written next, to what this returns.
    fn key(&mut self, k: &'static str) -> &mut Vec<u8> {
        debug_assert!(k.bytes().all(|b| b.is_ascii_alphanumeric()), "{k}");
        if !std::mem::take(&mut self.empty) {
            self.out.push(b',');
        }
        self.out.push(b'"');
        self.out.extend_from_slice(k.as_bytes());
        self.out.extend_from_slice(b"\":");
        self.out
    }

    fn close(self) {
        self.out.push(b'}');
    }
}

/// As `Subjects::reference` builds it.
fn reference(out: &mut Vec<u8>, subjects: &Subjects<'_>, resource_type: &str, id: &str) {
    let mut r = Object::open(out);
    if subjects.resolved {
        string(r.key("reference"), &format!("{resource_type}/{id}"));
    } else {
        string(r.key("type"), resource_type);
        let mut i = Object::open(r.key("identifier"));
        string(i.key("value"), id);
        i.close();
    }
    r.close();
}

/// As `observation::coding` builds it.
fn coding(out: &mut Vec<u8>, c: &Code) {
    let mut m = Object::open(out);
    for (k, v) in [
        ("system", &c.system),
        ("code", &c.code),
        ("display", &c.display),
    ] {
        if let Some(v) = v {
            string(m.key(k), v);
        }
    }
    m.close();
}

/// As `observation::resolve_code` builds it.
fn resolved_code(out: &mut Vec<u8>, name: &str, codes: &[Code]) {
    let mut m = Object::open(out);
    let list = m.key("coding");
    list.push(b'[');
    for c in codes {
        coding(list, c);
        list.push(b',');
    }
    let mut own = Object::open(list);
    string(own.key("system"), SERVICE_URI);
    string(own.key("code"), name);
    string(own.key("display"), name);
    own.close();
    list.push(b']');
    string(m.key("text"), name);
    m.close();
}

/// As `observation::create_value` builds it.
fn value(
    out: &mut Vec<u8>,
    tpl: &ValueTemplate,
    values: &Series,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> Result<(), FhirDataError> {
    match &tpl.kind {
        ValueKind::SampledData {
            default_period,
            unit,
        } => {
            let mut sd = Object::open(out);
            let mut origin = Object::open(sd.key("origin"));
            origin.key("value").push(b'0');
            if let Some(u) = unit {
                string(origin.key("unit"), u);
            }
            origin.close();
            number(sd.key("period"), default_period);
            sd.key("dimensions").push(b'1');
            let data = values.sampled_data(start, end, *default_period);
            string(sd.key("data"), &data);
            sd.close();
        }
        ValueKind::Quantity { unit, code, system } => {
            let n = quantity(tpl, values)?;
            let mut q = Object::open(out);
            number(q.key("value"), &n);
            for (k, v) in [("unit", unit), ("system", system), ("code", code)] {
                if let Some(v) = v {
                    string(q.key(k), v);
                }
            }
            q.close();
        }
        ValueKind::String => string(out, single(tpl, values)?),
        ValueKind::CodeableConcept { codes, text } => {
            let mut m = Object::open(out);
            let list = m.key("coding");
            list.push(b'[');
            for (n, c) in codes.iter().enumerate() {
                if n > 0 {
                    list.push(b',');
                }
                coding(list, c);
            }
            list.push(b']');
            if let Some(t) = text {
                string(m.key("text"), t);
            }
            m.close();
        }
    }
    Ok(())
}

/// A number as `serde_json` writes it.
fn number(out: &mut Vec<u8>, n: &impl serde::Serialize) {
    serde_json::to_writer(out, n).expect("a number serializes");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::FhirMapping;
    use proptest::prelude::*;
    use std::sync::Arc;

    /// Every FHIR template the project ships, and those of the conformance suite's cases.
    static TEMPLATES: std::sync::LazyLock<Vec<Arc<CodeValueTemplate>>> =
        std::sync::LazyLock::new(templates);

    fn templates() -> Vec<Arc<CodeValueTemplate>> {
        let mut files = Vec::new();
        for dir in ["templates", "tests/conformance"] {
            let mut stack = vec![std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(dir)];
            while let Some(d) = stack.pop() {
                for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                    let p = e.path();
                    if p.is_dir() {
                        stack.push(p);
                    } else if p.extension().is_some_and(|x| x == "json") {
                        files.push(p);
                    }
                }
            }
        }
        files.sort();
        let mut out = Vec::new();
        for f in files {
            let Some(json) = std::fs::read_to_string(&f)
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            else {
                continue;
            };
            let whole = f.to_string_lossy().to_lowercase().contains("fhirmapping");
            for m in whole
                .then_some(&json)
                .into_iter()
                .chain(json.get("fhirmapping"))
            {
                if let Ok(m) = FhirMapping::from_value(m) {
                    out.extend(m.templates().iter().cloned());
                }
            }
        }
        assert!(out.len() >= 10, "found {} templates", out.len());
        // Every kind of value, as a template's value and as a component's.
        let kinds = |t: &CodeValueTemplate| {
            (t.value.iter().map(|v| &v.kind))
                .chain(t.components.iter().map(|c| &c.value.kind))
                .map(|k| value_key(k))
                .collect::<Vec<_>>()
        };
        let seen: std::collections::BTreeSet<&str> = out.iter().flat_map(|t| kinds(t)).collect();
        assert_eq!(seen.len(), 4, "value kinds in the templates: {seen:?}");
        out
    }

    fn at(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(1_800_000_000_000 + ms).expect("in range")
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]
        /// The bytes `compact_json` writes of the built resource, or the same error.
        #[test]
        fn writes_what_building_and_serializing_writes(
            which in any::<prop::sample::Index>(),
            values in prop::collection::vec(
                (0i64..7_200_000, "(-?[0-9]{1,4}(\\.[0-9]{1,3})?|[0-9]e[0-9]|x\"y\\\\z|E| |)"),
                0..6,
            ),
            names in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
            ids in ("[A-Za-z0-9-]{1,8}|a\"b", "[A-Za-z0-9-]{1,8}", prop::option::of("[A-Z0-9]{1,6}")),
            resolved: bool,
            amended: bool,
            respelled: bool,
            span in 0i64..3_600_000,
        ) {
            let tpl = which.get(&TEMPLATES);
            // The device mapping's spelling of the type may differ from the template's.
            let type_name = if respelled {
                tpl.type_name.to_uppercase()
            } else {
                tpl.type_name.clone()
            };
            let mut names_of: Vec<&str> = tpl.value.iter().map(|v| v.value_name.as_str()).collect();
            names_of.extend(tpl.components.iter().map(|c| c.value.value_name.as_str()));
            names_of.push("unmapped");
            let mut group = ObservationGroup {
                start: at(0),
                end: at(span),
                id_segment: "20270115080000Z.20270115085959Z".into(),
                values: Vec::new(),
            };
            for ((t, text), n) in values.iter().zip(names.iter().cycle()) {
                let name = *n.get(&names_of);
                let ticks = crate::fhir::sampled_data::ticks_of(at(*t));
                match group.values.iter_mut().find(|(k, _)| &**k == name) {
                    Some((_, list)) => Arc::make_mut(list).insert(ticks, text),
                    None => {
                        let mut list = Series::default();
                        list.insert(ticks, text);
                        group.values.push((name.into(), Arc::new(list)));
                    }
                }
            }
            let subjects = Subjects {
                patient: &ids.0,
                device: &ids.1,
                encounter: ids.2.as_deref(),
                resolved,
            };
            let id = observation::observation_id(&observation::identifier_value(
                &subjects, &type_name, &group.id_segment,
            ));
            let built = observation::build_with_id(tpl, &type_name, &group, &subjects, id.clone())
                .map(|mut o| {
                    if amended {
                        o["status"] = "amended".into();
                    }
                    super::super::compact_json::to_vec(&o)
                });
            let mut out = b"before".to_vec();
            let written = write(&mut out, tpl, &type_name, &group, &subjects, &id, amended);
            match built {
                Ok(bytes) => {
                    prop_assert_eq!(written, Ok(()));
                    prop_assert_eq!(String::from_utf8_lossy(&out[6..]), String::from_utf8_lossy(&bytes));
                }
                Err(e) => {
                    prop_assert_eq!(written, Err(e));
                    prop_assert_eq!(&out, b"before");
                }
            }
        }
    }
}
