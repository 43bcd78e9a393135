//! The lakehouse: measurements, Observations and alerts as Delta Lake tables of Parquet
//! files, for DuckDB, Polars, Spark and pandas (layout and columns: docs/lakehouse.md).

pub mod alerts;
pub mod devices;
pub mod maintain;
pub mod measurements;
pub mod observations;
pub mod rows;
pub mod s3;
pub mod schema;
pub mod table;

pub use crate::config::{LakeConfig, Tables};

/// The specs of the tables a job writes.
pub fn specs(config: &LakeConfig) -> Vec<&'static schema::TableSpec> {
    let t = config.tables;
    [
        (t.measurements, &schema::MEASUREMENTS),
        (t.observations, &schema::OBSERVATIONS),
        (t.alerts, &schema::ALERTS),
        (t.devices, &schema::DEVICES),
    ]
    .into_iter()
    .filter_map(|(on, spec)| on.then_some(spec))
    .collect()
}
