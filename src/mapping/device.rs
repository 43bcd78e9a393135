//! Device mapping (`devicecontent.json`): load, validate, compile, and normalize messages.

use super::error::{child, Collector, NormalizeError, TemplateErrors};
use super::expr::EvalError;
use super::expr::{Expr, Language, MatchedToken, Scope, Token};
use super::jsonpath::ScanSet;
use super::tree::{Node, Tree};
use crate::model::{Measurement, RawMessage, Text};
use bumpalo::Bump;
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::cell::OnceCell;
use std::sync::Arc;

/// One message being normalized as a `serde_json::Value`: what every template shares.
struct Message<'a> {
    event: &'a Value,
    scope: &'a Scope<'a>,
    var: &'a OnceCell<jmespath::Rcvar>,
    /// The last timestamp text parsed and its time.
    last_time: Option<(String, DateTime<Utc>)>,
}

/// Why a message read from a topic made no measurements.
#[derive(Debug)]
pub enum MessageError {
    /// The payload is not JSON.
    Parse(serde_json::Error),
    /// A template could not take it.
    Template(NormalizeError),
}

/// Where one match's expressions are evaluated: each gives the selected token as the
/// connector stores it (`None` when absent or null).
trait Lookup {
    /// The token `e` selects, as [`Tree::text`]: borrowed from the message where it can be
    /// (a timestamp compared with the message's last one then allocates nothing).
    fn text(&self, e: &Expr) -> Result<Option<Cow<'_, str>>, EvalError>;
}

impl Lookup for Scope<'_> {
    fn text(&self, e: &Expr) -> Result<Option<Cow<'_, str>>, EvalError> {
        e.single(self).map(|v| match v {
            Some(Cow::Borrowed(v)) => v.text_cow(),
            Some(Cow::Owned(v)) => v.text().map(Cow::Owned),
            None => None,
        })
    }
}

/// A match in a message parsed as a [`Node`] (mappings whose every expression is a compiled
/// JSONPath: [`DeviceMapping::reads_trees`]).
struct NodeLookup<'n, 'a>(&'n Node<'a>);

impl Lookup for NodeLookup<'_, '_> {
    fn text(&self, e: &Expr) -> Result<Option<Cow<'_, str>>, EvalError> {
        match e {
            Expr::Path(p) => (p.select_single_tree(self.0))
                .map(|v| v.and_then(Tree::text_cow))
                .map_err(EvalError::Multiple),
            Expr::Jmes(_) => unreachable!("JMESPath mappings read serde_json values"),
        }
    }
}

/// The four template types of the connector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TemplateKind {
    /// `JsonPathContent`: expressions relative to each match.
    JsonPath,
    /// `IotJsonPathContent`: IoT Hub events; device id and time from system properties.
    IotJsonPath,
    /// `IotCentralJsonPathContent`: IoT Central exports; `$.deviceId`, `$.enqueuedTime`.
    IotCentral,
    /// `CalculatedContent`: expressions see the whole event plus `matchedToken`.
    Calculated,
}

impl TemplateKind {
    /// The connector's name for this template type.
    pub fn name(self) -> &'static str {
        match self {
            TemplateKind::JsonPath => "JsonPathContent",
            TemplateKind::IotJsonPath => "IotJsonPathContent",
            TemplateKind::IotCentral => "IotCentralJsonPathContent",
            TemplateKind::Calculated => "CalculatedContent",
        }
    }

    /// Matches `templateType` as the connector's factories do: case-insensitive, and with a
    /// `Template` suffix only for the two factories whose own names carry it.
    fn from_name(s: &str) -> Option<Self> {
        let eq = |n: &str| s.eq_ignore_ascii_case(n);
        if eq("JsonPathContent") || eq("JsonPathContentTemplate") {
            Some(TemplateKind::JsonPath)
        } else if eq("IotJsonPathContent") || eq("IotJsonPathContentTemplate") {
            Some(TemplateKind::IotJsonPath)
        } else if eq("IotCentralJsonPathContent") {
            Some(TemplateKind::IotCentral)
        } else if eq("CalculatedContent") {
            Some(TemplateKind::Calculated)
        } else {
            None
        }
    }

    /// Members a template body may have.
    fn allows(self, member: &str) -> bool {
        const COMMON: &[&str] = &[
            "typeName",
            "typeMatchExpression",
            "deviceIdExpression",
            "patientIdExpression",
            "encounterIdExpression",
            "timestampExpression",
            "correlationIdExpression",
            "values",
            "deviceAttributes",
        ];
        COMMON.contains(&member)
            || (self == TemplateKind::Calculated && member == "defaultExpressionLanguage")
    }
}

/// A compiled device mapping: templates in collection order.
#[derive(Debug)]
pub struct DeviceMapping {
    templates: Vec<DeviceTemplate>,
    /// `Hl7v2Content` templates: they apply to HL7 v2 messages, the others to JSON.
    hl7: super::hl7::Templates,
    /// The `$..[?(filter)]` type matches, walked once per message for all templates.
    scan: ScanSet,
    /// Whether messages can be read as [`Node`]s: no template needs a `serde_json::Value`.
    reads_trees: bool,
    /// What it was built from, to build again ([`Self::copy_for_worker`]).
    root: Arc<Value>,
    reference: bool,
}

impl DeviceMapping {
    /// Whether a JSON template names device attributes (`deviceAttributes`).
    pub fn names_device_attributes(&self) -> bool {
        self.templates
            .iter()
            .any(|t| !t.device_attributes.is_empty())
    }
}

/// An optional expression slot: absent, present but empty (fails at run time, as in the
/// connector), or compiled.
#[derive(Debug)]
enum Slot {
    Unset,
    Empty,
    Set(Expr),
}

#[derive(Debug)]
struct DeviceTemplate {
    index: usize,
    kind: TemplateKind,
    type_name: Arc<str>,
    type_match: Slot,
    device_id: Slot,
    /// Tried in order; the first that yields a value wins (IoT Hub falls back to enqueued time).
    timestamp: Vec<Slot>,
    patient_id: Slot,
    encounter_id: Slot,
    correlation_id: Slot,
    values: Vec<ValueDef>,
    /// `deviceAttributes` (a vitalflow extension): `device.<attribute>` and its expression.
    device_attributes: Vec<(Arc<str>, Slot)>,
    /// Its type match's slot in the mapping's [`ScanSet`], when it is one.
    scan_slot: Option<usize>,
}

#[derive(Debug)]
struct ValueDef {
    name: Arc<str>,
    expr: Slot,
    required: bool,
}

impl DeviceMapping {
    /// Loads from file text, reporting every problem with its line.
    pub fn from_text(text: &str, file: Option<&str>) -> Result<Self, TemplateErrors> {
        super::error::load_text(text, file, Self::from_value)
    }

    /// Loads from a file.
    pub fn from_file(path: &std::path::Path) -> Result<Self, TemplateErrors> {
        super::error::load_file(path, Self::from_value)
    }

    /// Loads a mapping from parsed JSON (no line numbers).
    pub fn from_value(root: &Value) -> Result<Self, TemplateErrors> {
        Self::build(root, false)
    }

    /// Loads with every JSONPath on the reference evaluator (jsonpath-rust), for cross-checks.
    pub fn from_value_reference(root: &Value) -> Result<Self, TemplateErrors> {
        Self::build(root, true)
    }

    fn build(root: &Value, reference: bool) -> Result<Self, TemplateErrors> {
        let mut c = Collector::default();
        let entries = collection_entries(root, "CollectionContent", &mut c);
        let mut templates = Vec::new();
        let mut hl7 = Vec::new();
        for (i, entry) in entries.iter().enumerate() {
            let ptr = child("/template", i);
            let ty = entry.get("templateType").and_then(Value::as_str);
            if ty.is_some_and(|t| t.eq_ignore_ascii_case(super::hl7::TEMPLATE_TYPE)) {
                c.enter(i, ty.map(str::to_string));
                if let Some((_, body)) = entry_parts(entry, &ptr, &mut c) {
                    let body_ptr = child(&ptr, "template");
                    hl7.extend(super::hl7::compile(i, body, &body_ptr, &mut c));
                }
                continue;
            }
            if let Some(t) = compile_entry(i, entry, &ptr, reference, &mut c) {
                templates.push(t);
            }
        }
        let mut scan = ScanSet::default();
        for t in &mut templates {
            if let Slot::Set(Expr::Path(p)) = &t.type_match {
                t.scan_slot = scan.add(p);
            }
        }
        let reads_trees = templates.iter().all(DeviceTemplate::walks_any_tree);
        if c.errors.is_empty() {
            Ok(Self {
                templates,
                hl7: super::hl7::Templates::new(hl7),
                scan,
                reads_trees,
                root: Arc::new(root.clone()),
                reference,
            })
        } else {
            Err(TemplateErrors(c.errors))
        }
    }

    /// The same mapping built again, sharing nothing with this one: a worker's own copy.
    /// Every measurement carries the template's type and value names as `Arc`s; with one
    /// copy for all workers, each clone and drop wrote a counter the other cores read.
    pub fn copy_for_worker(&self) -> Self {
        Self::build(&self.root, self.reference).expect("it was built from the same JSON")
    }

    /// Number of templates.
    pub fn len(&self) -> usize {
        self.templates.len() + self.hl7.len()
    }

    /// True when the collection is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `(typeName, templateType)` of each template (JSON ones, then HL7 v2 ones).
    pub fn template_names(&self) -> impl Iterator<Item = (&str, &'static str)> {
        let json = (self.templates.iter()).map(|t| (&*t.type_name, t.kind.name()));
        json.chain((self.hl7.iter()).map(|t| (t.type_name(), super::hl7::TEMPLATE_TYPE)))
    }

    /// Whether the mapping reads HL7 v2 messages (it has `Hl7v2Content` templates).
    pub fn reads_hl7(&self) -> bool {
        !self.hl7.is_empty()
    }

    /// Whether messages are parsed into borrowed [`Node`]s rather than `serde_json::Value`s:
    /// when every expression is a JSONPath the compiled matcher evaluates.
    pub fn reads_trees(&self) -> bool {
        self.reads_trees
    }

    /// Normalizes a JSON payload as the job reads it: wrapped with the message's properties
    /// and system properties as the connector wraps an Event Hubs message, appending to
    /// `out` (left as it was on error). Same result as [`Self::normalize_into`] on the
    /// wrapped `serde_json::Value`; the payload is parsed once, into a [`Node`] where the
    /// mapping allows.
    pub fn normalize_message(
        &self,
        payload: &[u8],
        properties: Map<String, Value>,
        system_properties: Map<String, Value>,
        out: &mut Vec<Measurement>,
    ) -> Result<(), MessageError> {
        if !self.reads_trees {
            let body: Value = super::tree::from_payload(payload).map_err(MessageError::Parse)?;
            let event = crate::event::wrap(body, properties, system_properties);
            return self
                .normalize_into(&event, out)
                .map_err(MessageError::Template);
        }
        with_arena(|arena| {
            let body = Node::parse_in(payload, arena).map_err(MessageError::Parse)?;
            let event = Node::object_in(
                arena,
                [
                    ("Body", body),
                    ("Properties", Node::from_map(&properties, arena)),
                    (
                        "SystemProperties",
                        Node::from_map(&system_properties, arena),
                    ),
                ],
            );
            self.normalize_node(&event, out)
                .map_err(MessageError::Template)
        })
    }

    /// Normalizes a message as the job reads it: [`Self::normalize_message`] with the
    /// message's headers and Kafka metadata as `Properties` and `SystemProperties`. Where
    /// the mapping reads trees the wrapper is built as borrowed [`Node`]s (no map, no key
    /// hashed or allocated): building it as `serde_json` maps cost about 1.2 µs a message,
    /// a fifth of the job's normalization.
    pub fn normalize_raw(
        &self,
        message: &RawMessage,
        out: &mut Vec<Measurement>,
    ) -> Result<(), MessageError> {
        if !self.reads_trees {
            return self.normalize_message(
                &message.payload,
                message.properties(),
                message.system_properties(),
                out,
            );
        }
        let headers = (!message.headers.is_empty()).then(|| message.properties());
        let (offset, enqueued) = (message.origin.offset.to_string(), enqueued_time(message));
        let key = message.key.as_deref().map(String::from_utf8_lossy);
        with_arena(|arena| {
            let body = Node::parse_in(&message.payload, arena).map_err(MessageError::Parse)?;
            let properties = match &headers {
                Some(h) => Node::from_map(h, arena),
                None => Node::Object(&[]),
            };
            let system = system_node(message, &offset, enqueued.as_deref(), key.as_deref(), arena);
            let event = Node::object_in(
                arena,
                [
                    ("Body", body),
                    ("Properties", properties),
                    ("SystemProperties", system),
                ],
            );
            self.normalize_node(&event, out)
                .map_err(MessageError::Template)
        })
    }

    /// [`Self::normalize_into`] on a [`Node`] (for mappings that [`Self::reads_trees`]).
    pub fn normalize_node(
        &self,
        event: &Node<'_>,
        out: &mut Vec<Measurement>,
    ) -> Result<(), NormalizeError> {
        assert!(self.reads_trees, "the mapping needs serde_json values");
        let start = out.len();
        let mut scanned = Vec::new();
        if !self.scan.is_empty() {
            self.scan.run(event, &mut scanned);
        }
        let mut last_time = None;
        for t in &self.templates {
            if let Err(e) = t.apply_node(event, &scanned, &mut last_time, out) {
                out.truncate(start);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Normalizes one HL7 v2 message with the `Hl7v2Content` templates, appending to `out`
    /// (left as it was on error).
    pub fn normalize_hl7_into(
        &self,
        message: &crate::hl7::Hl7<'_>,
        out: &mut Vec<Measurement>,
    ) -> Result<(), NormalizeError> {
        self.hl7.normalize_into(message, out)
    }

    /// Normalizes one event (the object templates see: `Body`, `Properties`,
    /// `SystemProperties`, or any object handed in verbatim).
    ///
    /// Measurements come in template order, then match order. The first failure fails the
    /// whole message, as in the connector, so a message is never half-processed.
    pub fn normalize(&self, event: &Value) -> Result<Vec<Measurement>, NormalizeError> {
        let mut out = Vec::new();
        self.normalize_into(event, &mut out)?;
        Ok(out)
    }

    /// As [`normalize`](Self::normalize), appending to `out` (which is left as it was on error).
    pub fn normalize_into(
        &self,
        event: &Value,
        out: &mut Vec<Measurement>,
    ) -> Result<(), NormalizeError> {
        let start = out.len();
        let event_scope = Scope::json_value(event);
        let event_var = event_scope.var_cell().expect("a JSON scope");
        let mut cx = Message {
            event,
            scope: &event_scope,
            var: event_var,
            last_time: None,
        };
        let mut scanned = Vec::new();
        if !self.scan.is_empty() {
            self.scan.run(event, &mut scanned);
        }
        for t in &self.templates {
            if let Err(e) = t.apply(&mut cx, &scanned, out) {
                out.truncate(start);
                return Err(e);
            }
        }
        Ok(())
    }
}

/// Checks a `{"templateType": <root>, "template": [...]}` collection root and returns its
/// entries (shared by the device and FHIR mappings).
pub(crate) fn collection_entries<'v>(
    root: &'v Value,
    root_type: &str,
    c: &mut Collector,
) -> &'v [Value] {
    let Some(obj) = root.as_object() else {
        c.push(
            "",
            format!("the mapping must be a JSON object with templateType \"{root_type}\""),
        );
        return &[];
    };
    match obj.get("templateType").and_then(Value::as_str) {
        Some(t)
            if t.eq_ignore_ascii_case(root_type)
                || t.eq_ignore_ascii_case(&format!("{root_type}Template")) => {}
        Some(t) => c.push(
            "/templateType",
            format!("expected templateType \"{root_type}\", found \"{t}\""),
        ),
        None => c.push(
            "/templateType",
            format!("required property templateType (\"{root_type}\") not found"),
        ),
    }
    for k in obj.keys() {
        if k != "templateType" && k != "template" {
            c.push(child("", k), format!("unknown member \"{k}\""));
        }
    }
    match obj.get("template") {
        Some(Value::Array(a)) => a,
        Some(_) => {
            c.push("/template", "template must be an array of templates");
            &[]
        }
        None => {
            c.push("/template", "required property template not found");
            &[]
        }
    }
}

/// Reads an entry's `templateType` and `template` object; reports what is wrong.
pub(crate) fn entry_parts<'v>(
    entry: &'v Value,
    ptr: &str,
    c: &mut Collector,
) -> Option<(&'v str, &'v Map<String, Value>)> {
    let Some(obj) = entry.as_object() else {
        c.push(
            ptr,
            "each template entry must be an object with templateType and template",
        );
        return None;
    };
    let ty = obj.get("templateType").and_then(Value::as_str);
    if ty.is_none() {
        c.push(
            child(ptr, "templateType"),
            "required property templateType not found",
        );
    }
    let body = match obj.get("template") {
        Some(Value::Object(o)) => Some(o),
        _ => {
            c.push(
                child(ptr, "template"),
                "expected an object for the template property value",
            );
            None
        }
    };
    Some((ty?, body?))
}

fn compile_entry(
    index: usize,
    entry: &Value,
    ptr: &str,
    reference: bool,
    c: &mut Collector,
) -> Option<DeviceTemplate> {
    c.enter(
        index,
        entry
            .get("templateType")
            .and_then(Value::as_str)
            .map(str::to_string),
    );
    let (ty, body) = entry_parts(entry, ptr, c)?;
    let Some(kind) = TemplateKind::from_name(ty) else {
        c.push(
            child(ptr, "templateType"),
            format!("no match found for template type \"{ty}\" (expected JsonPathContent, IotJsonPathContent, IotCentralJsonPathContent, CalculatedContent, or the vitalflow extension Hl7v2Content)"),
        );
        return None;
    };
    let ptr = child(ptr, "template");
    c.type_name = body
        .get("typeName")
        .and_then(Value::as_str)
        .map(str::to_string);
    for k in body.keys() {
        if !kind.allows(k) {
            c.push(
                child(&ptr, k),
                format!("unknown member \"{k}\" for {}", kind.name()),
            );
        }
    }
    let mut default_lang = Language::JsonPath;
    if let Some(v) = body.get("defaultExpressionLanguage") {
        match v.as_str().and_then(Language::parse) {
            Some(l) => default_lang = l,
            None => c.push(
                child(&ptr, "defaultExpressionLanguage"),
                format!(
                    "defaultExpressionLanguage must be \"JsonPath\" or \"JmesPath\", found {v}"
                ),
            ),
        }
    }
    let mut cx = SlotCompiler {
        body,
        ptr: &ptr,
        default_lang,
        allow_objects: kind == TemplateKind::Calculated,
        reference,
        c,
    };
    let type_name = match body.get("typeName") {
        Some(Value::String(s)) => s.clone(),
        Some(_) => {
            cx.c.push(child(&ptr, "typeName"), "typeName must be a string");
            String::new()
        }
        None => {
            cx.c.push(
                child(&ptr, "typeName"),
                "required property typeName not found",
            );
            String::new()
        }
    };
    let type_match = cx.slot("typeMatchExpression", true);
    let (device_id, timestamp) = match kind {
        TemplateKind::JsonPath | TemplateKind::Calculated => (
            cx.slot("deviceIdExpression", true),
            vec![cx.slot("timestampExpression", true)],
        ),
        // Fixed by the connector for these template types.
        TemplateKind::IotJsonPath => (
            fixed("$.SystemProperties.iothub-connection-device-id"),
            vec![
                fixed("$.Properties.iothub-creation-time-utc"),
                fixed("$.SystemProperties.iothub-enqueuedtime"),
            ],
        ),
        TemplateKind::IotCentral => (fixed("$.deviceId"), vec![fixed("$.enqueuedTime")]),
    };
    let patient_id = cx.slot("patientIdExpression", false);
    let encounter_id = cx.slot("encounterIdExpression", false);
    let correlation_id = cx.slot("correlationIdExpression", false);
    let values = cx.values();
    let device_attributes = cx.device_attributes();
    Some(DeviceTemplate {
        index,
        kind,
        type_name: Arc::from(type_name),
        type_match,
        device_id,
        timestamp,
        patient_id,
        encounter_id,
        correlation_id,
        values,
        device_attributes,
        scan_slot: None,
    })
}

fn fixed(path: &str) -> Slot {
    Slot::Set(Expr::compile(path, Language::JsonPath).expect("built-in path compiles"))
}

struct SlotCompiler<'a, 'c> {
    body: &'a Map<String, Value>,
    ptr: &'a str,
    default_lang: Language,
    allow_objects: bool,
    reference: bool,
    c: &'c mut Collector,
}

impl SlotCompiler<'_, '_> {
    fn slot(&mut self, name: &str, required: bool) -> Slot {
        let ptr = child(self.ptr, name);
        match self.body.get(name) {
            None | Some(Value::Null) => {
                if required {
                    self.c
                        .push(ptr, format!("required property {name} not found"));
                }
                Slot::Unset
            }
            Some(v) => self.expr(v, &ptr),
        }
    }

    fn expr(&mut self, v: &Value, ptr: &str) -> Slot {
        let (source, lang) = match v {
            Value::String(s) => (s.as_str(), self.default_lang),
            Value::Object(o) if self.allow_objects => {
                for k in o.keys() {
                    if k != "value" && k != "language" {
                        self.c.push(
                            child(ptr, k),
                            format!("unknown member \"{k}\" in expression"),
                        );
                    }
                }
                let lang = match o.get("language") {
                    None => self.default_lang,
                    Some(l) => match l.as_str().and_then(Language::parse) {
                        Some(l) => l,
                        None => {
                            self.c.push(
                                child(ptr, "language"),
                                format!("language must be \"JsonPath\" or \"JmesPath\", found {l}"),
                            );
                            return Slot::Unset;
                        }
                    },
                };
                match o.get("value").and_then(Value::as_str) {
                    Some(s) => (s, lang),
                    None => {
                        self.c.push(
                            child(ptr, "value"),
                            "expression object needs a string \"value\"",
                        );
                        return Slot::Unset;
                    }
                }
            }
            _ => {
                self.c
                    .push(ptr, format!("expected an expression string, found {v}"));
                return Slot::Unset;
            }
        };
        if source.trim().is_empty() {
            return Slot::Empty;
        }
        let compiled = if self.reference {
            Expr::compile_reference(source, lang)
        } else {
            Expr::compile(source, lang)
        };
        match compiled {
            Ok(e) => Slot::Set(e),
            Err(reason) => {
                self.c.push(ptr, reason);
                Slot::Unset
            }
        }
    }

    /// `deviceAttributes`: an object of attribute name to expression.
    fn device_attributes(&mut self) -> Vec<(Arc<str>, Slot)> {
        use super::device_tree::{DEVICE_ATTRIBUTE, DEVICE_ATTRIBUTES};
        let ptr = child(self.ptr, "deviceAttributes");
        let items = match self.body.get("deviceAttributes") {
            None | Some(Value::Null) => return vec![],
            Some(Value::Object(o)) => o,
            Some(_) => {
                self.c.push(
                    ptr,
                    "deviceAttributes must be an object of attribute name to expression",
                );
                return vec![];
            }
        };
        let mut out = Vec::new();
        for (name, v) in items {
            let at = child(&ptr, name);
            if !DEVICE_ATTRIBUTES.contains(&name.as_str()) {
                self.c.push(
                    at,
                    format!(
                        "unknown device attribute \"{name}\" ({})",
                        DEVICE_ATTRIBUTES.join(", ")
                    ),
                );
                continue;
            }
            let slot = self.expr(v, &at);
            out.push((Arc::from(format!("{DEVICE_ATTRIBUTE}{name}")), slot));
        }
        out
    }

    fn values(&mut self) -> Vec<ValueDef> {
        let ptr = child(self.ptr, "values");
        let items = match self.body.get("values") {
            None | Some(Value::Null) => return vec![],
            Some(Value::Array(a)) => a,
            Some(_) => {
                self.c.push(ptr, "values must be an array");
                return vec![];
            }
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let iptr = child(&ptr, i);
            let Some(obj) = item.as_object() else {
                self.c.push(
                    iptr,
                    "each value must be an object with valueName and valueExpression",
                );
                continue;
            };
            for k in obj.keys() {
                if !matches!(k.as_str(), "valueName" | "valueExpression" | "required") {
                    self.c
                        .push(child(&iptr, k), format!("unknown member \"{k}\" in value"));
                }
            }
            let name = match obj.get("valueName").and_then(Value::as_str) {
                Some(n) if !n.trim().is_empty() => n,
                _ => {
                    self.c.push(
                        child(&iptr, "valueName"),
                        "required property valueName not found",
                    );
                    ""
                }
            };
            let expr = match obj.get("valueExpression") {
                None | Some(Value::Null) => {
                    self.c.push(
                        child(&iptr, "valueExpression"),
                        "required property valueExpression not found",
                    );
                    Slot::Unset
                }
                Some(v) => self.expr(v, &child(&iptr, "valueExpression")),
            };
            let required = match obj.get("required") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => true,
                Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => false,
                Some(v) => {
                    self.c.push(
                        child(&iptr, "required"),
                        format!("required must be true or false, found {v}"),
                    );
                    false
                }
            };
            out.push(ValueDef {
                name: Arc::from(name),
                expr,
                required,
            });
        }
        out
    }
}

impl DeviceTemplate {
    fn error(&self, field: impl Into<String>, reason: impl Into<String>) -> NormalizeError {
        NormalizeError {
            template_index: self.index,
            template_type: self.kind.name(),
            type_name: self.type_name.to_string(),
            field: field.into(),
            reason: reason.into(),
        }
    }

    fn type_match(&self) -> Result<&Expr, NormalizeError> {
        match &self.type_match {
            Slot::Set(e) => Ok(e),
            _ => Err(self.error(
                "typeMatchExpression",
                "an expression must be set for [TypeMatchExpression]",
            )),
        }
    }

    /// Whether every expression is a JSONPath the compiled matcher evaluates on any [`Tree`].
    fn walks_any_tree(&self) -> bool {
        let slots = [&self.type_match, &self.device_id, &self.patient_id]
            .into_iter()
            .chain([&self.encounter_id, &self.correlation_id])
            .chain(&self.timestamp)
            .chain(self.values.iter().map(|v| &v.expr))
            .chain(self.device_attributes.iter().map(|(_, s)| s));
        self.kind != TemplateKind::Calculated
            && slots.into_iter().all(|s| match s {
                Slot::Set(Expr::Path(p)) => p.is_compiled(),
                Slot::Set(Expr::Jmes(_)) => false,
                Slot::Unset | Slot::Empty => true,
            })
    }

    fn apply<'a>(
        &self,
        cx: &mut Message<'a>,
        scanned: &[(usize, &'a Value)],
        out: &mut Vec<Measurement>,
    ) -> Result<(), NormalizeError> {
        let type_match = self.type_match()?;
        if let Some(slot) = self.scan_slot {
            return (scanned.iter().filter(|(s, _)| *s == slot))
                .try_for_each(|(_, m)| self.apply_match(Token::Json(m), cx, out));
        }
        // Type matches see the raw event, never the matchedToken wrapper.
        let matches = type_match
            .matches(cx.scope)
            .map_err(|e| self.error("typeMatchExpression", e.to_string()))?;
        for m in matches {
            self.apply_match(m, cx, out)?;
        }
        Ok(())
    }

    fn apply_node(
        &self,
        event: &Node<'_>,
        scanned: &[(usize, &Node<'_>)],
        last_time: &mut Option<(String, DateTime<Utc>)>,
        out: &mut Vec<Measurement>,
    ) -> Result<(), NormalizeError> {
        let Expr::Path(type_match) = self.type_match()? else {
            unreachable!("mappings read as trees are JSONPath only")
        };
        match self.scan_slot {
            Some(slot) => {
                for (_, m) in scanned.iter().filter(|(s, _)| *s == slot) {
                    out.push(self.measure(&NodeLookup(m), last_time)?);
                }
            }
            None => {
                for m in type_match.select_tree(event) {
                    out.push(self.measure(&NodeLookup(m), last_time)?);
                }
            }
        }
        Ok(())
    }

    fn apply_match(
        &self,
        m: Token<'_>,
        cx: &mut Message<'_>,
        out: &mut Vec<Measurement>,
    ) -> Result<(), NormalizeError> {
        let scope = match self.kind {
            TemplateKind::Calculated => Scope::Calculated {
                event: cx.event,
                event_var: cx.var,
                matched: MatchedToken::new(m),
                scoped_var: OnceCell::new(),
                scoped_json: OnceCell::new(),
            },
            _ => match m {
                Token::Json(v) => Scope::json_value(v),
                Token::Var(_) => unreachable!("JSONPath templates match JSON"),
            },
        };
        out.push(self.measure(&scope, &mut cx.last_time)?);
        Ok(())
    }

    fn measure(
        &self,
        scope: &impl Lookup,
        last_time: &mut Option<(String, DateTime<Utc>)>,
    ) -> Result<Measurement, NormalizeError> {
        let device_id = self.required_string(
            &self.device_id,
            "deviceIdExpression",
            "DeviceIdExpression",
            scope,
        )?;
        let occurrence_time = self.timestamp(scope, last_time)?;
        let patient_id = self.optional_string(&self.patient_id, "patientIdExpression", scope)?;
        let encounter_id =
            self.optional_string(&self.encounter_id, "encounterIdExpression", scope)?;
        let correlation_id = match &self.correlation_id {
            Slot::Unset => None,
            slot => Some(self.required_string(
                slot,
                "correlationIdExpression",
                "CorrelationIdExpression",
                scope,
            )?),
        };
        let mut properties = Vec::with_capacity(self.values.len());
        for v in &self.values {
            let field = || format!("values[{}]", v.name);
            let found = match &v.expr {
                Slot::Set(e) => scope
                    .text(e)
                    .map_err(|e| self.error(field(), e.to_string()))?,
                _ => {
                    return Err(
                        self.error(field(), "an expression must be set for [ValueExpression]")
                    )
                }
            };
            match found {
                Some(s) if has_text(&s) => properties.push((v.name.clone(), Text::from(s))),
                _ if v.required => {
                    return Err(self.error(
                        field(),
                        format!(
                            "unable to extract required value for [{}] using {}",
                            v.name,
                            slot_source(&v.expr)
                        ),
                    ))
                }
                _ => {}
            }
        }
        for (name, slot) in &self.device_attributes {
            if let Slot::Set(e) = slot {
                let found = scope
                    .text(e)
                    .map_err(|e| self.error(name.to_string(), e.to_string()))?;
                if let Some(s) = found.filter(|s| has_text(s)) {
                    properties.push((name.clone(), Text::from(s)));
                }
            }
        }
        Ok(Measurement {
            type_name: self.type_name.clone(),
            device_id,
            patient_id,
            encounter_id,
            correlation_id,
            occurrence_time,
            properties,
            received_ms: None,
            source: None,
        })
    }

    fn eval<'s>(
        &self,
        slot: &Slot,
        field: &str,
        scope: &'s impl Lookup,
    ) -> Result<Option<Cow<'s, str>>, NormalizeError> {
        match slot {
            Slot::Unset => Ok(None),
            Slot::Empty => {
                Err(self.error(field, format!("an expression must be set for [{field}]")))
            }
            Slot::Set(e) => scope
                .text(e)
                .map(|v| v.filter(|s| has_text(s)))
                .map_err(|err| self.error(field, err.to_string())),
        }
    }

    fn optional_string(
        &self,
        slot: &Slot,
        field: &str,
        scope: &impl Lookup,
    ) -> Result<Option<Text>, NormalizeError> {
        Ok(self.eval(slot, field, scope)?.map(Text::from))
    }

    fn required_string(
        &self,
        slot: &Slot,
        field: &str,
        label: &str,
        scope: &impl Lookup,
    ) -> Result<Text, NormalizeError> {
        self.eval(slot, field, scope)?
            .map(Text::from)
            .ok_or_else(|| {
                self.error(
                    field,
                    format!(
                        "unable to extract required value for [{label}] using {}",
                        slot_source(slot)
                    ),
                )
            })
    }

    /// The event time; `last` keeps the message's last parsed timestamp, since its templates
    /// usually all read the same one.
    fn timestamp(
        &self,
        scope: &impl Lookup,
        last: &mut Option<(String, DateTime<Utc>)>,
    ) -> Result<DateTime<Utc>, NormalizeError> {
        for slot in &self.timestamp {
            if let Some(s) = self.eval(slot, "timestampExpression", scope)? {
                if let Some((text, t)) = last {
                    if *text == s {
                        return Ok(*t);
                    }
                }
                let Some(t) = crate::time::parse_timestamp(&s) else {
                    return Err(self.error(
                        "timestampExpression",
                        format!("\"{s}\" is not a valid date-time"),
                    ));
                };
                *last = Some((s.into_owned(), t));
                return Ok(t);
            }
        }
        let using = self
            .timestamp
            .iter()
            .map(slot_source)
            .collect::<Vec<_>>()
            .join(" or ");
        Err(self.error(
            "timestampExpression",
            format!("unable to extract required value for [TimestampExpression] using {using}"),
        ))
    }
}

/// Whether `s` holds anything but whitespace (an empty or blank token counts as absent, as
/// in the connector). `!s.trim().is_empty()` says the same but scans both ends with a
/// general pattern: 1.3 % of a replay's instructions, for ids and values that seldom
/// start with a space.
fn has_text(s: &str) -> bool {
    s.chars().any(|c| !c.is_whitespace())
}

fn slot_source(slot: &Slot) -> Cow<'_, str> {
    match slot {
        Slot::Set(e) => Cow::Owned(format!("`{}`", e.source())),
        _ => Cow::Borrowed("(no expression)"),
    }
}

/// Why an HL7 v2 message made no measurements.
#[derive(Debug)]
pub enum Hl7Error {
    /// It is not a readable HL7 v2 message (which segment, what is wrong).
    Parse(String),
    /// A template could not take it (which template, OBX and field).
    Template(NormalizeError),
    /// The mapping has no template for HL7 v2, or none matched an OBX.
    Unmatched(&'static str),
}

impl std::fmt::Display for Hl7Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Hl7Error::Parse(e) => write!(f, "{e}"),
            Hl7Error::Template(e) => write!(f, "{e}"),
            Hl7Error::Unmatched(e) => write!(f, "{e}"),
        }
    }
}

impl DeviceMapping {
    /// What a device tree says about the state of the metrics the `Hl7v2Content` templates
    /// take, as readings for alerting only: per measurement type, `{value}Status` (the
    /// metric's operational status: `operating`, `off`, `standby`) and `{value}Calibration` (its
    /// calibration state), at `at`. A rules file's `[technical.flags]` turn them into
    /// technical alerts and suspend the vitals they name (templates/alerts/adult-vitals.toml).
    pub fn metric_states(
        &self,
        tree: &super::device_tree::DeviceTree,
        at: chrono::DateTime<chrono::Utc>,
    ) -> Vec<Measurement> {
        let mut out: Vec<Measurement> = Vec::new();
        for m in &tree.metrics {
            if m.status.is_none() && m.calibration.is_none() {
                continue;
            }
            let Some((type_name, value)) = [Some(&m.kind), m.alternate.as_ref()]
                .into_iter()
                .flatten()
                .find_map(|c| self.hl7.value_for(&c.code, c.system.as_deref()))
            else {
                continue;
            };
            let i = match out.iter().position(|x| x.type_name == *type_name) {
                Some(i) => i,
                None => {
                    out.push(Measurement {
                        type_name: type_name.clone(),
                        device_id: tree.identifier.as_str().into(),
                        patient_id: tree.patient.as_deref().map(Text::from),
                        encounter_id: None,
                        correlation_id: None,
                        occurrence_time: at,
                        properties: Vec::new(),
                        received_ms: None,
                        source: None,
                    });
                    out.len() - 1
                }
            };
            let props = &mut out[i].properties;
            if let Some(s) = m.status {
                props.push((format!("{value}Status").into(), s.word().into()));
            }
            if let Some(c) = &m.calibration {
                props.push((
                    format!("{value}Calibration").into(),
                    c.state.as_str().into(),
                ));
            }
        }
        out
    }

    /// Normalizes one HL7 v2 message with the mapping's `Hl7v2Content` templates into `out`
    /// (left as it was on error): what the job and `vitalflow normalize` both do.
    pub fn normalize_hl7_text(
        &self,
        text: &str,
        out: &mut Vec<Measurement>,
    ) -> Result<(), Hl7Error> {
        if !self.reads_hl7() {
            return Err(Hl7Error::Unmatched(
                "an HL7 v2 message, but the device mapping has no Hl7v2Content template",
            ));
        }
        let message = crate::hl7::parse(text).map_err(Hl7Error::Parse)?;
        self.normalize_hl7(&message, out)
    }

    /// As [`DeviceMapping::normalize_hl7_text`], for a message already parsed.
    pub fn normalize_hl7(
        &self,
        message: &crate::hl7::Hl7<'_>,
        out: &mut Vec<Measurement>,
    ) -> Result<(), Hl7Error> {
        let device = self;
        if !device.reads_hl7() {
            return Err(Hl7Error::Unmatched(
                "an HL7 v2 message, but the device mapping has no Hl7v2Content template",
            ));
        }
        let start = out.len();
        device
            .normalize_hl7_into(message, out)
            .map_err(Hl7Error::Template)?;
        if out.len() == start {
            return Err(Hl7Error::Unmatched(
            "no Hl7v2Content template matches an OBX of the message (OBX-3 identifier and coding system), or every matching OBX is empty or has result status X",
        ));
        }
        Ok(())
    }
}

/// [`RawMessage::system_properties`] as a [`Node`], members in the same order: the names
/// are static, and the texts borrowed from the message and from what the caller formatted
/// once (`offset`, `enqueued`, the key as text).
fn system_node<'a>(
    message: &'a RawMessage,
    offset: &'a str,
    enqueued: Option<&'a str>,
    key: Option<&'a str>,
    arena: &'a Bump,
) -> Node<'a> {
    let o = &message.origin;
    let text = Node::String;
    let mut m = bumpalo::collections::Vec::with_capacity_in(8, arena);
    m.push(("x-opt-kafka-topic", text(&o.topic)));
    m.push(("x-opt-partition", Node::Number(o.partition.into())));
    m.push(("x-opt-offset", text(offset)));
    m.push(("x-opt-sequence-number", Node::Number(o.offset.into())));
    if let Some(t) = enqueued {
        m.push(("x-opt-enqueued-time", text(t)));
        m.push(("iothub-enqueuedtime", text(t)));
    }
    if let Some(k) = key {
        m.push(("x-opt-partition-key", text(k)));
        m.push(("iothub-connection-device-id", text(k)));
    }
    Node::Object(m.into_bump_slice())
}

/// Runs `f` with this thread's message arena, emptied first: a message's tree is built in
/// it and dropped with it, as one reset (the arena keeps its memory for the next message,
/// unless an outsized message grew it past [`ARENA_KEPT`]).
fn with_arena<R>(f: impl FnOnce(&Bump) -> R) -> R {
    thread_local! {
        static ARENA: std::cell::RefCell<Bump> = std::cell::RefCell::new(Bump::new());
    }
    ARENA.with_borrow_mut(|arena| {
        if arena.allocated_bytes() > ARENA_KEPT {
            *arena = Bump::new();
        } else {
            arena.reset();
        }
        f(arena)
    })
}

/// The most an idle message arena keeps (a bedside message's tree takes a few KB).
const ARENA_KEPT: usize = 1 << 20;

/// The broker time as [`RawMessage::system_properties`] writes it.
fn enqueued_time(message: &RawMessage) -> Option<String> {
    let ms = message.origin.timestamp_ms?;
    chrono::DateTime::from_timestamp_millis(ms).map(|t| crate::time::format_rfc3339(&t))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Origin;

    proptest::proptest! {
        #[test]
        fn has_text_is_what_trimming_says(s in "[ \\t\\n\u{a0}\u{2003}\u{3000}a-z0-9.-]{0,8}") {
            proptest::prop_assert_eq!(has_text(&s), !s.trim().is_empty());
        }
    }

    #[test]
    fn the_system_node_is_the_system_properties_map() {
        for (key, timestamp_ms) in [
            (Some(b"dev-\xff-1".to_vec()), Some(1_764_000_000_123)),
            (None, None),
            (None, Some(1_764_000_000_000)),
            (None, Some(1_764_000_000_100)),
            (None, Some(-1_500)),
            (None, Some(0)),
        ] {
            let m = RawMessage {
                payload: b"{}".to_vec(),
                key,
                headers: Vec::new(),
                origin: Origin {
                    topic: "vitals".into(),
                    partition: 3,
                    offset: 41,
                    timestamp_ms,
                },
            };
            let want = Value::Object(m.system_properties());
            let (offset, enqueued) = (m.origin.offset.to_string(), enqueued_time(&m));
            let key = m.key.as_deref().map(String::from_utf8_lossy);
            let arena = Bump::new();
            let got =
                system_node(&m, &offset, enqueued.as_deref(), key.as_deref(), &arena).to_value();
            assert_eq!(got, want);
            let order = |v: &Value| v.as_object().map(|o| o.keys().cloned().collect::<Vec<_>>());
            assert_eq!(order(&got), order(&want), "members in the same order");
        }
    }
}
