//! The raw layer of a job file: what the TOML says, with the span of every value.
//!
//! Environment and command-line overrides are written into this layer (see
//! [`super::env`]) before the one validation pass in [`super::validate`].

use serde::Deserialize;
use std::collections::BTreeMap;
use toml::Spanned;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawJob {
    pub(super) name: Option<Spanned<String>>,
    pub(super) source: Spanned<String>,
    pub(super) kafka: Option<RawKafka>,
    pub(super) file: Option<RawFile>,
    pub(super) simulator: Option<RawSimulator>,
    pub(super) mapping: RawMapping,
    #[serde(default)]
    pub(super) window: RawWindow,
    #[serde(default)]
    pub(super) sinks: RawSinks,
    pub(super) anomaly: Option<RawAnomaly>,
    #[serde(default)]
    pub(super) performance: RawPerformance,
    pub(super) metrics: Option<RawMetrics>,
    /// `VITALFLOW_OUTPUT_DIR` / `--output`: where NDJSON, alert and dead-letter files go
    /// (the lakehouse moves with it when it lies inside).
    #[serde(skip)]
    pub(super) output_dir: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKafka {
    pub(super) brokers: Spanned<String>,
    pub(super) topics: Spanned<Vec<String>>,
    pub(super) group_id: Option<Spanned<String>>,
    pub(super) start: Option<Spanned<String>>,
    pub(super) partitions: Option<Spanned<i64>>,
    pub(super) startup_timeout: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) properties: BTreeMap<String, Spanned<toml::Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFile {
    pub(super) path: Spanned<String>,
    pub(super) rate: Option<Spanned<f64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSimulator {
    pub(super) devices: Option<Spanned<i64>>,
    pub(super) rate: Option<Spanned<f64>>,
    pub(super) seed: Option<Spanned<i64>>,
    pub(super) profile: Option<Spanned<String>>,
    pub(super) count: Option<Spanned<i64>>,
    pub(super) out_of_order: Option<Spanned<f64>>,
    pub(super) late_burst: Option<Spanned<String>>,
    pub(super) dropout: Option<Spanned<f64>>,
    pub(super) artifacts: Option<Spanned<f64>>,
    pub(super) acute: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMapping {
    pub(super) device: Spanned<String>,
    pub(super) fhir: Spanned<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWindow {
    pub(super) horizon: Option<Spanned<String>>,
    pub(super) max_future_skew: Option<Spanned<String>>,
    pub(super) allowed_lateness: Option<Spanned<String>>,
    pub(super) idle_timeout: Option<Spanned<String>>,
    pub(super) update_every: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSinks {
    pub(super) ndjson: Option<RawNdjson>,
    pub(super) dead_letter: Option<RawDeadLetter>,
    pub(super) fhir: Option<RawFhir>,
    pub(super) lake: Option<RawLake>,
    /// A FHIR URL given by override to a job without `[sinks.fhir]`: Observations go there
    /// instead of NDJSON.
    #[serde(skip)]
    pub(super) fhir_replaces_ndjson: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLake {
    pub(super) location: Spanned<String>,
    pub(super) tables: Option<Spanned<Vec<String>>>,
    pub(super) flush_interval: Option<Spanned<String>>,
    pub(super) target_file_size_mib: Option<Spanned<i64>>,
    pub(super) compact_every: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) storage: BTreeMap<String, Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFhir {
    pub(super) url: Spanned<String>,
    pub(super) identity: Option<Spanned<String>>,
    pub(super) device_identifier_system: Option<Spanned<String>>,
    pub(super) batch_size: Option<Spanned<i64>>,
    pub(super) concurrency: Option<Spanned<i64>>,
    pub(super) flush_interval: Option<Spanned<String>>,
    pub(super) timeout: Option<Spanned<String>>,
    pub(super) startup_timeout: Option<Spanned<String>>,
    pub(super) max_retries: Option<Spanned<i64>>,
    pub(super) ca_file: Option<Spanned<String>>,
    pub(super) auth: Option<RawFhirAuth>,
    pub(super) cache: Option<RawFhirCache>,
    /// `VITALFLOW_FHIR_TOKEN`: secrets come from the environment only.
    #[serde(skip)]
    pub(super) token: Option<String>,
    /// `VITALFLOW_FHIR_CLIENT_SECRET`.
    #[serde(skip)]
    pub(super) client_secret: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFhirAuth {
    #[serde(rename = "type")]
    pub(super) kind: Spanned<String>,
    pub(super) token_url: Option<Spanned<String>>,
    pub(super) client_id: Option<Spanned<String>>,
    pub(super) scope: Option<Spanned<String>>,
    pub(super) allow_http: Option<Spanned<bool>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFhirCache {
    pub(super) ttl: Option<Spanned<String>>,
    pub(super) negative_ttl: Option<Spanned<String>>,
    pub(super) capacity: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNdjson {
    pub(super) dir: Spanned<String>,
    pub(super) flush_interval: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDeadLetter {
    pub(super) topic: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAnomaly {
    pub(super) rules: Spanned<String>,
    pub(super) topic: Option<Spanned<String>>,
    pub(super) checkpoint_every: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPerformance {
    pub(super) epoch: Option<Spanned<String>>,
    pub(super) batch_size: Option<Spanned<i64>>,
    pub(super) max_durable_lag: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMetrics {
    pub(super) address: Spanned<String>,
}

impl RawFhir {
    /// A `[sinks.fhir]` of defaults at `url` (a URL given by override alone).
    pub(super) fn at(url: Spanned<String>) -> Self {
        Self {
            url,
            identity: None,
            device_identifier_system: None,
            batch_size: None,
            concurrency: None,
            flush_interval: None,
            timeout: None,
            startup_timeout: None,
            max_retries: None,
            ca_file: None,
            auth: None,
            cache: None,
            token: None,
            client_secret: None,
        }
    }
}

impl RawLake {
    /// A `[sinks.lake]` of defaults at `location`.
    pub(super) fn at(location: Spanned<String>) -> Self {
        Self {
            location,
            tables: None,
            flush_interval: None,
            target_file_size_mib: None,
            compact_every: None,
            storage: Default::default(),
        }
    }
}

impl RawKafka {
    /// A `[kafka]` table for a command that takes its brokers and topic from flags.
    pub(super) fn from_flags(
        cx: &mut super::error::Checker<'_>,
        brokers: &str,
        topic: &str,
    ) -> Self {
        Self {
            brokers: Spanned::new(cx.env_span("option --brokers"), brokers.to_string()),
            topics: Spanned::new(cx.env_span("option --topic"), vec![topic.to_string()]),
            group_id: None,
            start: None,
            partitions: None,
            startup_timeout: None,
            properties: Default::default(),
        }
    }
}
