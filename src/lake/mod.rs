//! The lakehouse: measurements, Observations and alerts as Delta Lake tables of Parquet
//! files, for DuckDB, Polars, Spark and pandas (layout and columns: docs/lakehouse.md).

pub mod alerts;
pub mod maintain;
pub mod measurements;
pub mod observations;
pub mod rows;
pub mod s3;
pub mod schema;
pub mod table;

use std::collections::HashMap;
use std::time::Duration;

/// Which tables a job writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tables {
    /// One row per normalized value.
    pub measurements: bool,
    /// One row per value of each Observation version.
    pub observations: bool,
    /// One row per alert event.
    pub alerts: bool,
}

/// `[sinks.lake]`: where the tables live and how often they are committed.
#[derive(Clone, PartialEq)]
pub struct LakeConfig {
    /// Root: a local directory or an object-store URL (`s3://bucket/prefix`).
    pub location: String,
    /// The tables written.
    pub tables: Tables,
    /// How often each worker commits what it buffered (one Delta commit per table).
    pub flush_interval: Duration,
    /// The file size `vitalflow lake compact` aims for.
    pub target_file_size: u64,
    /// Compact files older than this, this often, while the job runs (None: only by
    /// `vitalflow lake compact`).
    pub compact_every: Option<Duration>,
    /// object_store options (endpoint, region, credentials), passed through.
    pub storage: HashMap<String, String>,
}

impl std::fmt::Debug for LakeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LakeConfig")
            .field("location", &self.location)
            .field("tables", &self.tables)
            .field("flush_interval", &self.flush_interval)
            .field("target_file_size", &self.target_file_size)
            .field("compact_every", &self.compact_every)
            .field("storage", &crate::config::redacted(&self.storage))
            .finish()
    }
}

impl LakeConfig {
    /// The specs of the tables this job writes.
    pub fn specs(&self) -> Vec<&'static schema::TableSpec> {
        let t = self.tables;
        [
            (t.measurements, &schema::MEASUREMENTS),
            (t.observations, &schema::OBSERVATIONS),
            (t.alerts, &schema::ALERTS),
        ]
        .into_iter()
        .filter_map(|(on, spec)| on.then_some(spec))
        .collect()
    }

    /// The default layout under a root: all three tables, committed every 10 s.
    pub fn at(location: &str) -> Self {
        Self {
            location: location.to_string(),
            tables: Tables {
                measurements: true,
                observations: true,
                alerts: true,
            },
            flush_interval: Duration::from_secs(10),
            target_file_size: 128 << 20,
            compact_every: None,
            storage: HashMap::new(),
        }
    }
}
