//! Overrides of a job file from the environment and the command line, written into the raw
//! layer so they are validated exactly like the file's own values.
//!
//! Secrets and per-host settings stay out of job files: `VITALFLOW_KAFKA_BROKERS`,
//! `VITALFLOW_KAFKA_GROUP_ID`, `VITALFLOW_KAFKA__<PROPERTY>` for any librdkafka property
//! (`VITALFLOW_KAFKA__SASL_PASSWORD` sets `sasl.password`), `VITALFLOW_OUTPUT_DIR`,
//! `VITALFLOW_LAKE`, `VITALFLOW_METRICS_ADDRESS`, and for the FHIR sink `VITALFLOW_FHIR_URL`,
//! `VITALFLOW_FHIR_IDENTITY`, `VITALFLOW_FHIR_TOKEN`, `VITALFLOW_FHIR_CLIENT_SECRET`.

use super::error::Checker;
use super::raw::{RawFhir, RawJob, RawKafka, RawLake, RawMetrics};
use toml::Spanned;

/// Values that override a job file, in the order they apply (later wins).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// (where it came from, variable it sets, value).
    entries: Vec<(String, String, String)>,
}

impl Overrides {
    /// The `VITALFLOW_...` variables of this process's environment.
    pub fn from_env() -> Self {
        Self::from_vars(std::env::vars())
    }

    /// The `VITALFLOW_...` variables among `vars`.
    pub fn from_vars(vars: impl IntoIterator<Item = (String, String)>) -> Self {
        let mut o = Self::default();
        for (k, v) in vars {
            if k.starts_with("VITALFLOW_") {
                o.entries.push((format!("environment variable {k}"), k, v));
            }
        }
        o
    }

    /// A command-line option that sets the same thing as environment variable `var`.
    pub fn option(mut self, flag: &str, var: &str, value: &str) -> Self {
        self.entries
            .push((format!("option {flag}"), var.to_string(), value.to_string()));
        self
    }
}

fn spanned(cx: &mut Checker<'_>, origin: &str, value: &str) -> Spanned<String> {
    Spanned::new(cx.env_span(origin), value.to_string())
}

/// Writes the overrides into the Kafka table (the job's, or one built from flags).
pub(super) fn apply_kafka(cx: &mut Checker<'_>, k: &mut RawKafka, o: &Overrides) {
    for (origin, key, value) in &o.entries {
        match key.as_str() {
            "VITALFLOW_KAFKA_BROKERS" => k.brokers = spanned(cx, origin, value),
            "VITALFLOW_KAFKA_GROUP_ID" => k.group_id = Some(spanned(cx, origin, value)),
            _ => {
                if let Some(prop) = key.strip_prefix("VITALFLOW_KAFKA__") {
                    let prop = prop.to_ascii_lowercase().replace('_', ".");
                    let span = cx.env_span(origin);
                    k.properties
                        .insert(prop, Spanned::new(span, toml::Value::String(value.clone())));
                }
            }
        }
    }
}

/// Writes the overrides into a job's raw layer.
pub(super) fn apply(cx: &mut Checker<'_>, raw: &mut RawJob, o: &Overrides) {
    if let Some(k) = &mut raw.kafka {
        apply_kafka(cx, k, o);
    }
    // The URL first: it may create the [sinks.fhir] the other FHIR variables refine.
    for (origin, key, value) in &o.entries {
        if key == "VITALFLOW_FHIR_URL" {
            let url = spanned(cx, origin, value);
            match &mut raw.sinks.fhir {
                Some(f) => f.url = url,
                None => {
                    raw.sinks.fhir = Some(RawFhir::at(url));
                    raw.sinks.fhir_replaces_ndjson = true;
                }
            }
        }
    }
    for (origin, key, value) in &o.entries {
        match key.as_str() {
            "VITALFLOW_OUTPUT_DIR" => raw.output_dir = Some(spanned(cx, origin, value)),
            "VITALFLOW_LAKE" => {
                let location = spanned(cx, origin, value);
                match &mut raw.sinks.lake {
                    Some(l) => l.location = location,
                    None => raw.sinks.lake = Some(RawLake::at(location)),
                }
            }
            "VITALFLOW_METRICS_ADDRESS" => {
                raw.metrics = Some(RawMetrics {
                    address: spanned(cx, origin, value),
                })
            }
            "VITALFLOW_FHIR_IDENTITY" => {
                if let Some(f) = &mut raw.sinks.fhir {
                    f.identity = Some(spanned(cx, origin, value));
                }
            }
            "VITALFLOW_FHIR_TOKEN" => {
                if let Some(f) = &mut raw.sinks.fhir {
                    f.token = Some(value.clone());
                }
            }
            "VITALFLOW_FHIR_CLIENT_SECRET" => {
                if let Some(f) = &mut raw.sinks.fhir {
                    f.client_secret = Some(value.clone());
                }
            }
            _ => {}
        }
    }
}
