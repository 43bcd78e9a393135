//! The lakehouse tables: their columns (documented in docs/lakehouse.md), partitioning and
//! Parquet settings.

use deltalake::arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};
use deltalake::parquet::basic::{Compression, ZstdLevel};
use deltalake::parquet::file::properties::{EnabledStatistics, WriterProperties};
use deltalake::parquet::schema::types::ColumnPath;
use std::sync::Arc;

/// A table's name, layout and how its files are written.
pub struct TableSpec {
    /// Directory name under the lakehouse root.
    pub name: &'static str,
    /// Table comment in the Delta metadata.
    pub comment: &'static str,
    /// Hive-style partition columns, in directory order.
    pub partition_columns: &'static [&'static str],
    /// Columns analysts filter on by equality: bloom filters pay for themselves there.
    pub bloom_columns: &'static [&'static str],
    /// A flush starts a new file beyond this many bytes (per partition).
    pub flush_file_size: usize,
    columns: fn() -> Vec<Field>,
}

/// A UTC timestamp in microseconds: what DuckDB, Spark and Polars read as a timestamp.
pub fn timestamp() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

fn text(name: &str, nullable: bool) -> Field {
    Field::new(name, DataType::Utf8, nullable)
}

impl TableSpec {
    /// The table's Arrow schema (partition columns last).
    pub fn arrow_schema(&self) -> SchemaRef {
        Arc::new(Schema::new((self.columns)()))
    }

    /// zstd, page statistics, dictionaries, and bloom filters on the id columns.
    pub fn writer_properties(&self) -> WriterProperties {
        let mut b = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).expect("level 3")))
            .set_statistics_enabled(EnabledStatistics::Page)
            .set_dictionary_enabled(true)
            .set_max_row_group_row_count(Some(1 << 20));
        for c in self.bloom_columns {
            b = b
                .set_column_bloom_filter_enabled(ColumnPath::from(*c), true)
                .set_column_bloom_filter_fpp(ColumnPath::from(*c), 0.01);
        }
        b.build()
    }
}

/// One row per normalized value.
pub static MEASUREMENTS: TableSpec = TableSpec {
    name: "measurements",
    comment: "vitalflow: one row per normalized device value",
    partition_columns: &["date", "type"],
    bloom_columns: &["device_id", "patient_id"],
    flush_file_size: 256 << 20,
    columns: || {
        vec![
            Field::new("event_time", timestamp(), false),
            Field::new("ingest_time", timestamp(), true),
            text("device_id", false),
            text("patient_id", true),
            text("encounter_id", true),
            text("correlation_id", true),
            text("value_name", false),
            Field::new("value", DataType::Float64, true),
            text("value_string", true),
            text("unit", true),
            text("source_topic", true),
            Field::new("source_partition", DataType::Int32, true),
            Field::new("source_offset", DataType::Int64, true),
            Field::new("date", DataType::Date32, false),
            text("type", false),
        ]
    },
};

/// One row per value of each Observation version written.
pub static OBSERVATIONS: TableSpec = TableSpec {
    name: "observations",
    comment: "vitalflow: one row per value of each FHIR Observation version written",
    partition_columns: &["date", "type"],
    bloom_columns: &["id", "patient_id", "device_id"],
    flush_file_size: 256 << 20,
    columns: || {
        vec![
            text("id", false),
            text("identifier", true),
            text("patient_id", false),
            text("device_id", false),
            text("encounter_id", true),
            Field::new("window_start", timestamp(), false),
            Field::new("window_end", timestamp(), false),
            text("status", false),
            text("value_name", true),
            text("unit", true),
            Field::new("count", DataType::Int64, false),
            Field::new("min", DataType::Float64, true),
            Field::new("max", DataType::Float64, true),
            Field::new("mean", DataType::Float64, true),
            Field::new("last", DataType::Float64, true),
            text("value_string", true),
            Field::new("version", DataType::Int64, false),
            Field::new("written_at", timestamp(), false),
            text("resource", false),
            Field::new("date", DataType::Date32, false),
            text("type", false),
        ]
    },
};

/// The values an alert event cites: which vital, its value and when it was measured.
pub fn alert_value_fields() -> Fields {
    Fields::from(vec![
        text("vital", false),
        Field::new("value", DataType::Float64, false),
        Field::new("time", timestamp(), true),
    ])
}

/// One row per alert event (open, escalated, resolved).
pub static ALERTS: TableSpec = TableSpec {
    name: "alerts",
    comment: "vitalflow: one row per alert event",
    partition_columns: &["date", "type"],
    bloom_columns: &["alert_id", "patient_id"],
    flush_file_size: 64 << 20,
    columns: || {
        vec![
            text("alert_id", false),
            text("patient_id", false),
            text("device_id", false),
            text("rule", false),
            text("title", false),
            text("severity", false),
            text("state", false),
            Field::new("since", timestamp(), false),
            Field::new("at", timestamp(), false),
            Field::new(
                "values",
                DataType::List(Arc::new(Field::new(
                    "item",
                    DataType::Struct(alert_value_fields()),
                    true,
                ))),
                false,
            ),
            text("text", false),
            Field::new("date", DataType::Date32, false),
            text("type", false),
        ]
    },
};

/// Every table, by name.
pub static TABLES: [&TableSpec; 3] = [&MEASUREMENTS, &OBSERVATIONS, &ALERTS];
