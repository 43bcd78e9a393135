//! FHIR mapping (`fhirmapping.json`): CodeValueFhir templates, looked up by measurement type.

use super::device::{collection_entries, entry_parts};
use super::error::{child, Collector, TemplateErrors};
use rustc_hash::FxHashMap;
use serde_json::{Map, Value};
use std::sync::Arc;

/// How measurements of one type are grouped into Observations (`periodInterval`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PeriodInterval {
    /// `0`: one Observation per timestamp.
    Instance,
    /// `60`: one per UTC hour.
    Hour,
    /// `1440`: one per UTC day.
    Day,
    /// `-1`: one per correlation id.
    Correlation,
}

impl PeriodInterval {
    fn from_minutes(m: i64) -> Option<Self> {
        match m {
            0 => Some(Self::Instance),
            60 => Some(Self::Hour),
            1440 => Some(Self::Day),
            -1 => Some(Self::Correlation),
            _ => None,
        }
    }
}

/// A coding from a template.
#[derive(Debug, Clone, PartialEq)]
pub struct Code {
    /// Code system URI.
    pub system: Option<String>,
    /// Code.
    pub code: Option<String>,
    /// Display text.
    pub display: Option<String>,
}

/// A template category: codings plus text.
#[derive(Debug, Clone, PartialEq)]
pub struct Category {
    /// Codings.
    pub codes: Vec<Code>,
    /// Text.
    pub text: Option<String>,
}

/// How a measured value becomes an Observation value.
#[derive(Debug, Clone, PartialEq)]
pub enum ValueKind {
    /// `valueSampledData`: a stream over the period, `defaultPeriod` ms per slot.
    SampledData {
        /// Slot length in milliseconds.
        default_period: u64,
        /// Unit of the origin quantity.
        unit: Option<String>,
    },
    /// `valueQuantity` from one numeric value.
    Quantity {
        /// Unit text.
        unit: Option<String>,
        /// Unit code (e.g. UCUM).
        code: Option<String>,
        /// Unit system.
        system: Option<String>,
    },
    /// `valueString`.
    String,
    /// `valueCodeableConcept`: fixed codes and text; the measured value only triggers it.
    CodeableConcept {
        /// Codings.
        codes: Vec<Code>,
        /// Text.
        text: Option<String>,
    },
}

/// A template value: which measurement property and how it is rendered.
#[derive(Debug, Clone, PartialEq)]
pub struct ValueTemplate {
    /// Measurement property name.
    pub value_name: String,
    /// Rendering.
    pub kind: ValueKind,
}

impl ValueTemplate {
    /// The unit the template renders the value with, when it states one.
    pub fn unit(&self) -> Option<&str> {
        match &self.kind {
            ValueKind::SampledData { unit, .. } => unit.as_deref(),
            ValueKind::Quantity { unit, code, .. } => unit.as_deref().or(code.as_deref()),
            _ => None,
        }
    }

    /// Every spelling of the unit the template states: the UCUM code first where it gives
    /// one, then the display text.
    pub fn unit_spellings(&self) -> Vec<&str> {
        match &self.kind {
            ValueKind::SampledData { unit, .. } => unit.as_deref().into_iter().collect(),
            ValueKind::Quantity { unit, code, .. } => {
                code.as_deref().into_iter().chain(unit.as_deref()).collect()
            }
            _ => Vec::new(),
        }
    }
}

/// An Observation component template.
#[derive(Debug, Clone, PartialEq)]
pub struct ComponentTemplate {
    /// Component codes.
    pub codes: Vec<Code>,
    /// Component value.
    pub value: ValueTemplate,
}

/// One CodeValueFhir template.
#[derive(Debug, Clone, PartialEq)]
pub struct CodeValueTemplate {
    /// Measurement type this template maps.
    pub type_name: String,
    /// Grouping.
    pub period: PeriodInterval,
    /// Observation.code codings (the connector adds its own).
    pub codes: Vec<Code>,
    /// Observation.category.
    pub category: Vec<Category>,
    /// Main value.
    pub value: Option<ValueTemplate>,
    /// Components.
    pub components: Vec<ComponentTemplate>,
    /// What every Observation of this template starts from, built once by
    /// `fhir::observation`.
    pub head: Head,
}

/// The `code` and `category` an Observation of a template gets for one spelling of its
/// type: the same for every version, built once (building them was 2 % of a replay's
/// instructions). Not part of the template's identity: equal whether built or not.
#[derive(Debug, Clone, Default)]
pub struct Head(pub std::sync::OnceLock<HeadParts>);

/// What [`Head`] holds, built by `fhir::observation`.
#[derive(Debug, Clone)]
pub struct HeadParts {
    /// The spelling of the type they are built for.
    pub type_name: String,
    /// `Observation.code`.
    pub code: Value,
    /// `Observation.category`, when the template has one.
    pub category: Option<Value>,
    /// `code` as compact JSON, for resources written without a `Value`.
    pub code_json: Box<[u8]>,
    /// `category` as compact JSON.
    pub category_json: Option<Box<[u8]>>,
}

impl PartialEq for Head {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl CodeValueTemplate {
    /// The unit of a measurement property, from the value or component that renders it.
    pub fn unit_of(&self, value_name: &str) -> Option<&str> {
        self.value
            .iter()
            .chain(self.components.iter().map(|c| &c.value))
            .find(|v| v.value_name == value_name)
            .and_then(ValueTemplate::unit)
    }
}

/// A compiled FHIR mapping.
#[derive(Debug, Clone)]
pub struct FhirMapping {
    templates: Vec<Arc<CodeValueTemplate>>,
    /// Template index by type name (looked up per measurement: Fx, not SipHash).
    by_type: FxHashMap<String, usize>,
}

impl FhirMapping {
    /// Loads from file text, reporting every problem with its line.
    pub fn from_text(text: &str, file: Option<&str>) -> Result<Self, TemplateErrors> {
        super::error::load_text(text, file, Self::from_value)
    }

    /// Loads from a file.
    pub fn from_file(path: &std::path::Path) -> Result<Self, TemplateErrors> {
        super::error::load_file(path, Self::from_value)
    }

    /// Loads from parsed JSON.
    pub fn from_value(root: &Value) -> Result<Self, TemplateErrors> {
        let mut c = Collector::default();
        let entries = collection_entries(root, "CollectionFhir", &mut c);
        let mut templates: Vec<Arc<CodeValueTemplate>> = Vec::new();
        let mut by_type = FxHashMap::default();
        for (i, entry) in entries.iter().enumerate() {
            let ptr = child("/template", i);
            c.enter(
                i,
                entry
                    .get("templateType")
                    .and_then(Value::as_str)
                    .map(str::to_string),
            );
            let Some((ty, body)) = entry_parts(entry, &ptr, &mut c) else {
                continue;
            };
            if !(ty.eq_ignore_ascii_case("CodeValueFhir")
                || ty.eq_ignore_ascii_case("CodeValueFhirTemplate"))
            {
                c.push(
                    child(&ptr, "templateType"),
                    format!("no match found for template type \"{ty}\" (expected CodeValueFhir)"),
                );
                continue;
            }
            c.type_name = body
                .get("typeName")
                .and_then(Value::as_str)
                .map(str::to_string);
            if let Some(t) = code_value(body, &child(&ptr, "template"), &mut c) {
                let key = t.type_name.to_lowercase();
                if by_type.contains_key(&key) {
                    c.push(
                        child(&child(&ptr, "template"), "typeName"),
                        format!(
                            "duplicate template defined for type name \"{}\"",
                            t.type_name
                        ),
                    );
                    continue;
                }
                // The type as the template spells it too: measurements carry that spelling,
                // and a miss lowercased the name on every lookup (an allocation per reading
                // in the windows and alerting). Another spelling of it lowercases to `key`,
                // a duplicate refused above, so the two keys never name different templates.
                by_type.insert(t.type_name.clone(), templates.len());
                by_type.insert(key, templates.len());
                templates.push(Arc::new(t));
            }
        }
        if c.errors.is_empty() {
            Ok(Self { templates, by_type })
        } else {
            Err(TemplateErrors(c.errors))
        }
    }

    /// The template for a measurement type (case-insensitive, as in the connector).
    pub fn get(&self, type_name: &str) -> Option<&Arc<CodeValueTemplate>> {
        let i = match self.by_type.get(type_name) {
            Some(i) => *i,
            None => *self.by_type.get(&type_name.to_lowercase())?,
        };
        self.templates.get(i)
    }

    /// All templates in file order.
    pub fn templates(&self) -> &[Arc<CodeValueTemplate>] {
        &self.templates
    }
}

fn check_members(
    obj: &Map<String, Value>,
    allowed: &[&str],
    ptr: &str,
    what: &str,
    c: &mut Collector,
) {
    for k in obj.keys() {
        if !allowed.contains(&k.as_str()) {
            c.push(child(ptr, k), format!("unknown member \"{k}\" in {what}"));
        }
    }
}

fn opt_string(obj: &Map<String, Value>, key: &str, ptr: &str, c: &mut Collector) -> Option<String> {
    match obj.get(key) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(v) => {
            c.push(
                child(ptr, key),
                format!("{key} must be a string, found {v}"),
            );
            None
        }
    }
}

fn code_value(
    body: &Map<String, Value>,
    ptr: &str,
    c: &mut Collector,
) -> Option<CodeValueTemplate> {
    check_members(
        body,
        &[
            "typeName",
            "periodInterval",
            "codes",
            "category",
            "value",
            "components",
        ],
        ptr,
        "CodeValueFhir",
        c,
    );
    let before = c.errors.len();
    let type_name = match body.get("typeName") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
        Some(Value::String(_)) => {
            c.push(child(ptr, "typeName"), "typeName must not be blank");
            String::new()
        }
        _ => {
            c.push(
                child(ptr, "typeName"),
                "required property typeName not found",
            );
            String::new()
        }
    };
    let period = match body.get("periodInterval") {
        None => PeriodInterval::Instance,
        Some(v) => match v.as_i64().and_then(PeriodInterval::from_minutes) {
            Some(p) => p,
            None => {
                c.push(
                    child(ptr, "periodInterval"),
                    format!("periodInterval must be 0, 60, 1440 or -1 (correlation id), found {v}"),
                );
                PeriodInterval::Instance
            }
        },
    };
    let main_codes = match body.get("codes") {
        Some(v) => codes(v, &child(ptr, "codes"), c),
        None => {
            c.push(
                child(ptr, "codes"),
                "required property codes not found (an empty array is allowed)",
            );
            vec![]
        }
    };
    let category = match body.get("category") {
        None | Some(Value::Null) => vec![],
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| {
                let iptr = child(&child(ptr, "category"), i);
                let obj = item.as_object().or_else(|| {
                    c.push(&iptr, "a category must be an object with codes and text");
                    None
                })?;
                check_members(obj, &["codes", "text"], &iptr, "category", c);
                Some(Category {
                    codes: obj
                        .get("codes")
                        .map(|v| codes(v, &child(&iptr, "codes"), c))
                        .unwrap_or_default(),
                    text: opt_string(obj, "text", &iptr, c),
                })
            })
            .collect(),
        Some(_) => {
            c.push(child(ptr, "category"), "category must be an array");
            vec![]
        }
    };
    let value = body
        .get("value")
        .filter(|v| !v.is_null())
        .and_then(|v| value_template(v, &child(ptr, "value"), c));
    let components = match body.get("components") {
        None | Some(Value::Null) => vec![],
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| {
                let iptr = child(&child(ptr, "components"), i);
                let obj = item.as_object().or_else(|| {
                    c.push(&iptr, "a component must be an object with codes and value");
                    None
                })?;
                check_members(obj, &["codes", "value"], &iptr, "component", c);
                let comp_codes = obj
                    .get("codes")
                    .map(|v| codes(v, &child(&iptr, "codes"), c))
                    .unwrap_or_default();
                let value = match obj.get("value") {
                    Some(v) => value_template(v, &child(&iptr, "value"), c)?,
                    None => {
                        c.push(child(&iptr, "value"), "required property value not found");
                        return None;
                    }
                };
                Some(ComponentTemplate {
                    codes: comp_codes,
                    value,
                })
            })
            .collect(),
        Some(_) => {
            c.push(child(ptr, "components"), "components must be an array");
            vec![]
        }
    };
    (c.errors.len() == before).then_some(CodeValueTemplate {
        type_name,
        period,
        codes: main_codes,
        category,
        value,
        components,
        head: Head::default(),
    })
}

fn codes(v: &Value, ptr: &str, c: &mut Collector) -> Vec<Code> {
    let Some(items) = v.as_array() else {
        c.push(ptr, "codes must be an array");
        return vec![];
    };
    items
        .iter()
        .enumerate()
        .filter_map(|(i, item)| {
            let iptr = child(ptr, i);
            let obj = item.as_object().or_else(|| {
                c.push(
                    &iptr,
                    "a code must be an object with code, system and display",
                );
                None
            })?;
            check_members(obj, &["code", "system", "display"], &iptr, "code", c);
            Some(Code {
                system: opt_string(obj, "system", &iptr, c),
                code: opt_string(obj, "code", &iptr, c),
                display: opt_string(obj, "display", &iptr, c),
            })
        })
        .collect()
}

fn value_template(v: &Value, ptr: &str, c: &mut Collector) -> Option<ValueTemplate> {
    let Some(obj) = v.as_object() else {
        c.push(
            ptr,
            "a value must be an object with valueType and valueName",
        );
        return None;
    };
    let value_name = match obj.get("valueName").and_then(Value::as_str) {
        Some(n) if !n.trim().is_empty() => n.to_string(),
        _ => {
            c.push(
                child(ptr, "valueName"),
                "required property valueName not found",
            );
            String::new()
        }
    };
    let Some(ty) = obj.get("valueType").and_then(Value::as_str) else {
        c.push(child(ptr, "valueType"), "required property valueType not found (SampledData, Quantity, String or CodeableConcept)");
        return None;
    };
    let kind = if ty.eq_ignore_ascii_case("SampledData") {
        check_members(
            obj,
            &["valueType", "valueName", "defaultPeriod", "unit"],
            ptr,
            "SampledData value",
            c,
        );
        let default_period = match obj.get("defaultPeriod").and_then(Value::as_f64) {
            Some(p) if p >= 1.0 => p as u64,
            _ => {
                c.push(
                    child(ptr, "defaultPeriod"),
                    "SampledData needs defaultPeriod, a positive number of milliseconds",
                );
                return None;
            }
        };
        ValueKind::SampledData {
            default_period,
            unit: opt_string(obj, "unit", ptr, c),
        }
    } else if ty.eq_ignore_ascii_case("Quantity") {
        check_members(
            obj,
            &["valueType", "valueName", "unit", "code", "system"],
            ptr,
            "Quantity value",
            c,
        );
        ValueKind::Quantity {
            unit: opt_string(obj, "unit", ptr, c),
            code: opt_string(obj, "code", ptr, c),
            system: opt_string(obj, "system", ptr, c),
        }
    } else if ty.eq_ignore_ascii_case("String") {
        check_members(obj, &["valueType", "valueName"], ptr, "String value", c);
        ValueKind::String
    } else if ty.eq_ignore_ascii_case("CodeableConcept") {
        check_members(
            obj,
            &["valueType", "valueName", "codes", "text"],
            ptr,
            "CodeableConcept value",
            c,
        );
        ValueKind::CodeableConcept {
            codes: obj
                .get("codes")
                .map(|v| codes(v, &child(ptr, "codes"), c))
                .unwrap_or_default(),
            text: opt_string(obj, "text", ptr, c),
        }
    } else {
        c.push(
            child(ptr, "valueType"),
            format!("unknown valueType \"{ty}\" (expected SampledData, Quantity, String or CodeableConcept)"),
        );
        return None;
    };
    Some(ValueTemplate { value_name, kind })
}
