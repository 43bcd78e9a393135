//! The lakehouse tables: their columns (documented in docs/lakehouse.md), partitioning and
//! Parquet settings.

use deltalake::arrow::array::{
    ArrayRef, Date32Builder, Float64Builder, Int32Builder, Int64Builder, ListBuilder, RecordBatch,
    StringBuilder, StructBuilder, TimestampMicrosecondBuilder,
};
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

/// A column's builder: how it starts, and the array it finishes into.
pub trait ColumnBuilder {
    /// An empty builder.
    fn start() -> Self;
    /// The column built so far (the builder starts over).
    fn finish_column(&mut self) -> ArrayRef;
}

macro_rules! plain_builders {
    ($($b:ty),*) => {$(
        impl ColumnBuilder for $b {
            fn start() -> Self {
                <$b>::new()
            }
            fn finish_column(&mut self) -> ArrayRef {
                Arc::new(self.finish())
            }
        }
    )*};
}
plain_builders!(
    StringBuilder,
    Float64Builder,
    Int32Builder,
    Int64Builder,
    Date32Builder
);

impl ColumnBuilder for TimestampMicrosecondBuilder {
    fn start() -> Self {
        Self::new()
    }
    fn finish_column(&mut self) -> ArrayRef {
        Arc::new(self.finish().with_timezone("UTC"))
    }
}

/// Declares a table's columns once, in schema order: the struct of their builders, the
/// Arrow fields ([`TableSpec`]'s schema) and the batch they finish into all come from it.
macro_rules! columns {
    ($(#[$m:meta])* $name:ident {
        $($field:ident: $builder:ty = $col:literal, $dtype:expr, $nullable:literal;)*
    }) => {
        $(#[$m])*
        pub struct $name {
            $(
                #[doc = concat!("Column `", $col, "`.")]
                pub $field: $builder,
            )*
        }

        impl Default for $name {
            fn default() -> Self {
                Self { $($field: <$builder as ColumnBuilder>::start(),)* }
            }
        }

        impl $name {
            /// The columns as Arrow fields, in order.
            pub fn fields() -> Vec<Field> {
                vec![$(Field::new($col, $dtype, $nullable)),*]
            }

            /// Every column built so far, as one batch of `schema` (the builders start over).
            pub fn finish(&mut self, schema: SchemaRef) -> RecordBatch {
                RecordBatch::try_new(schema, vec![$(self.$field.finish_column()),*])
                    .expect("the columns are the schema's")
            }
        }
    };
}

/// Distinct ids a flush's file is sized for: the devices, patients or Observations of one
/// worker's flush interval (a 2,000-bed hospital's 1 Hz monitors with eight hourly vitals
/// each is 16,000 Observations). Past it a filter still answers, with more false
/// positives, until compaction rewrites the files with filters sized by their rows.
pub const FLUSH_BLOOM_NDV: u64 = 1 << 16;

impl TableSpec {
    /// The table's Arrow schema (partition columns last).
    pub fn arrow_schema(&self) -> SchemaRef {
        Arc::new(Schema::new((self.columns)()))
    }

    /// zstd, page statistics, dictionaries, and bloom filters on the id columns, sized for
    /// `ndv` distinct values per file.
    ///
    /// The writer allocates each filter at that size up front (then folds it down as it
    /// closes the file): parquet's default of a row group's million rows made 2 MB per
    /// id column per partition being written, 71 MB of a 2,500-msgs/s job's heap at its
    /// peak (heaptrack). A flush's files hold one flush of a worker: [`FLUSH_BLOOM_NDV`].
    pub fn writer_properties(&self, ndv: u64) -> WriterProperties {
        let mut b = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).expect("level 3")))
            .set_statistics_enabled(EnabledStatistics::Page)
            .set_dictionary_enabled(true)
            .set_max_row_group_row_count(Some(1 << 20));
        for c in self.bloom_columns {
            b = b
                .set_column_bloom_filter_enabled(ColumnPath::from(*c), true)
                .set_column_bloom_filter_fpp(ColumnPath::from(*c), 0.01)
                .set_column_bloom_filter_max_ndv(ColumnPath::from(*c), ndv.max(1));
        }
        b.build()
    }
}

columns! {
    /// The `measurements` table: one row per normalized value.
    MeasurementColumns {
        event_time: TimestampMicrosecondBuilder = "event_time", timestamp(), false;
        ingest_time: TimestampMicrosecondBuilder = "ingest_time", timestamp(), true;
        device_id: StringBuilder = "device_id", DataType::Utf8, false;
        patient_id: StringBuilder = "patient_id", DataType::Utf8, true;
        encounter_id: StringBuilder = "encounter_id", DataType::Utf8, true;
        correlation_id: StringBuilder = "correlation_id", DataType::Utf8, true;
        value_name: StringBuilder = "value_name", DataType::Utf8, false;
        value: Float64Builder = "value", DataType::Float64, true;
        value_string: StringBuilder = "value_string", DataType::Utf8, true;
        unit: StringBuilder = "unit", DataType::Utf8, true;
        source_topic: StringBuilder = "source_topic", DataType::Utf8, true;
        source_partition: Int32Builder = "source_partition", DataType::Int32, true;
        source_offset: Int64Builder = "source_offset", DataType::Int64, true;
        date: Date32Builder = "date", DataType::Date32, false;
        type_name: StringBuilder = "type", DataType::Utf8, false;
    }
}

/// One row per normalized value.
pub static MEASUREMENTS: TableSpec = TableSpec {
    name: "measurements",
    comment: "vitalflow: one row per normalized device value",
    partition_columns: &["date", "type"],
    bloom_columns: &["device_id", "patient_id"],
    flush_file_size: 256 << 20,
    columns: MeasurementColumns::fields,
};

columns! {
    /// The `observations` table: one row per value of each Observation version written.
    ObservationColumns {
        id: StringBuilder = "id", DataType::Utf8, false;
        identifier: StringBuilder = "identifier", DataType::Utf8, true;
        patient_id: StringBuilder = "patient_id", DataType::Utf8, false;
        device_id: StringBuilder = "device_id", DataType::Utf8, false;
        encounter_id: StringBuilder = "encounter_id", DataType::Utf8, true;
        window_start: TimestampMicrosecondBuilder = "window_start", timestamp(), false;
        window_end: TimestampMicrosecondBuilder = "window_end", timestamp(), false;
        status: StringBuilder = "status", DataType::Utf8, false;
        value_name: StringBuilder = "value_name", DataType::Utf8, true;
        unit: StringBuilder = "unit", DataType::Utf8, true;
        count: Int64Builder = "count", DataType::Int64, false;
        min: Float64Builder = "min", DataType::Float64, true;
        max: Float64Builder = "max", DataType::Float64, true;
        mean: Float64Builder = "mean", DataType::Float64, true;
        last: Float64Builder = "last", DataType::Float64, true;
        value_string: StringBuilder = "value_string", DataType::Utf8, true;
        version: Int64Builder = "version", DataType::Int64, false;
        written_at: TimestampMicrosecondBuilder = "written_at", timestamp(), false;
        resource: StringBuilder = "resource", DataType::Utf8, false;
        date: Date32Builder = "date", DataType::Date32, false;
        type_name: StringBuilder = "type", DataType::Utf8, false;
    }
}

/// One row per value of each Observation version written.
pub static OBSERVATIONS: TableSpec = TableSpec {
    name: "observations",
    comment: "vitalflow: one row per value of each FHIR Observation version written",
    partition_columns: &["date", "type"],
    bloom_columns: &["id", "patient_id", "device_id"],
    flush_file_size: 256 << 20,
    columns: ObservationColumns::fields,
};

/// The values an alert event cites: which vital, its value and when it was measured.
pub fn alert_value_fields() -> Fields {
    Fields::from(vec![
        Field::new("vital", DataType::Utf8, false),
        Field::new("value", DataType::Float64, false),
        Field::new("time", timestamp(), true),
    ])
}

/// The `values` column of an alert: a list of (vital, value, time) structs.
pub struct AlertValuesBuilder(pub ListBuilder<StructBuilder>);

impl ColumnBuilder for AlertValuesBuilder {
    fn start() -> Self {
        let fields = alert_value_fields();
        Self(
            ListBuilder::new(StructBuilder::new(
                fields.clone(),
                vec![
                    Box::new(StringBuilder::new()),
                    Box::new(Float64Builder::new()),
                    Box::new(TimestampMicrosecondBuilder::new().with_timezone("UTC")),
                ],
            ))
            .with_field(alert_values_item(fields)),
        )
    }
    fn finish_column(&mut self) -> ArrayRef {
        Arc::new(self.0.finish())
    }
}

fn alert_values_item(fields: Fields) -> Arc<Field> {
    Arc::new(Field::new("item", DataType::Struct(fields), true))
}

columns! {
    /// The `alerts` table: one row per alert event (open, escalated, resolved, acknowledged,
    /// silenced).
    AlertColumns {
        alert_id: StringBuilder = "alert_id", DataType::Utf8, false;
        patient_id: StringBuilder = "patient_id", DataType::Utf8, false;
        device_id: StringBuilder = "device_id", DataType::Utf8, false;
        rule: StringBuilder = "rule", DataType::Utf8, false;
        title: StringBuilder = "title", DataType::Utf8, false;
        severity: StringBuilder = "severity", DataType::Utf8, false;
        state: StringBuilder = "state", DataType::Utf8, false;
        since: TimestampMicrosecondBuilder = "since", timestamp(), false;
        at: TimestampMicrosecondBuilder = "at", timestamp(), false;
        values: AlertValuesBuilder = "values", DataType::List(alert_values_item(alert_value_fields())), false;
        text: StringBuilder = "text", DataType::Utf8, false;
        date: Date32Builder = "date", DataType::Date32, false;
        type_name: StringBuilder = "type", DataType::Utf8, false;
        // Added after the table's first release: nullable, so that older tables take it
        // as a new column (their rows read as null: physiological, the only kind then).
        category: StringBuilder = "category", DataType::Utf8, true;
        // Acknowledgements and silences (added later, nullable as `category`): who, their
        // note, and until when a silence holds.
        by_user: StringBuilder = "by", DataType::Utf8, true;
        note: StringBuilder = "note", DataType::Utf8, true;
        until: TimestampMicrosecondBuilder = "until", timestamp(), true;
    }
}

/// One row per alert event (open, escalated, resolved).
pub static ALERTS: TableSpec = TableSpec {
    name: "alerts",
    comment: "vitalflow: one row per alert event",
    partition_columns: &["date", "type"],
    bloom_columns: &["alert_id", "patient_id"],
    flush_file_size: 64 << 20,
    columns: AlertColumns::fields,
};

columns! {
    /// The `devices` table: one row per Device or DeviceMetric version (docs/hl7.md).
    DeviceColumns {
        device_id: StringBuilder = "device_id", DataType::Utf8, false;
        resource_type: StringBuilder = "resource_type", DataType::Utf8, false;
        id: StringBuilder = "id", DataType::Utf8, false;
        component: StringBuilder = "component", DataType::Utf8, false;
        level: StringBuilder = "level", DataType::Utf8, false;
        code: StringBuilder = "code", DataType::Utf8, true;
        code_display: StringBuilder = "code_display", DataType::Utf8, true;
        manufacturer: StringBuilder = "manufacturer", DataType::Utf8, true;
        model: StringBuilder = "model", DataType::Utf8, true;
        serial: StringBuilder = "serial", DataType::Utf8, true;
        software_version: StringBuilder = "software_version", DataType::Utf8, true;
        hardware_version: StringBuilder = "hardware_version", DataType::Utf8, true;
        firmware_version: StringBuilder = "firmware_version", DataType::Utf8, true;
        location: StringBuilder = "location", DataType::Utf8, true;
        unit: StringBuilder = "unit", DataType::Utf8, true;
        operational_status: StringBuilder = "operational_status", DataType::Utf8, true;
        calibration_state: StringBuilder = "calibration_state", DataType::Utf8, true;
        calibration_time: TimestampMicrosecondBuilder = "calibration_time", timestamp(), true;
        version_id: StringBuilder = "version_id", DataType::Utf8, false;
        valid_from: TimestampMicrosecondBuilder = "valid_from", timestamp(), false;
        source_topic: StringBuilder = "source_topic", DataType::Utf8, true;
        source_partition: Int32Builder = "source_partition", DataType::Int32, true;
        source_offset: Int64Builder = "source_offset", DataType::Int64, true;
        resource: StringBuilder = "resource", DataType::Utf8, false;
        date: Date32Builder = "date", DataType::Date32, false;
    }
}

/// One row per Device or DeviceMetric version.
pub static DEVICES: TableSpec = TableSpec {
    name: "devices",
    comment: "vitalflow: one row per FHIR Device or DeviceMetric version (a change of a monitor, module, channel or metric)",
    partition_columns: &["date"],
    bloom_columns: &["device_id", "id"],
    flush_file_size: 16 << 20,
    columns: DeviceColumns::fields,
};

/// Every table, by name.
pub static TABLES: [&TableSpec; 4] = [&MEASUREMENTS, &OBSERVATIONS, &ALERTS, &DEVICES];

#[cfg(test)]
mod tests {
    use super::*;
    use deltalake::arrow::array::{RecordBatch, StringArray};
    use deltalake::parquet::arrow::ArrowWriter;
    use deltalake::parquet::file::properties::ReaderProperties;
    use deltalake::parquet::file::reader::{FileReader as _, SerializedFileReader};
    use deltalake::parquet::file::serialized_reader::ReadOptionsBuilder;

    #[test]
    fn id_columns_get_bloom_filters_sized_for_what_a_file_holds() {
        let props = OBSERVATIONS.writer_properties(FLUSH_BLOOM_NDV);
        for c in OBSERVATIONS.bloom_columns {
            let b = props
                .bloom_filter_properties(&ColumnPath::from(*c))
                .expect("a bloom filter");
            assert_eq!((b.ndv(), b.fpp()), (FLUSH_BLOOM_NDV, 0.01), "{c}");
        }
        assert!(props
            .bloom_filter_properties(&ColumnPath::from("resource"))
            .is_none());

        // Written and read back: an id present is found, one absent (almost surely) not.
        let schema = Arc::new(Schema::new(vec![Field::new(
            "patient_id",
            DataType::Utf8,
            false,
        )]));
        let ids: Vec<String> = (0..5000).map(|i| format!("P-{i}")).collect();
        let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(StringArray::from(ids))])
            .expect("batch");
        let mut file = tempfile::tempfile().expect("tmp");
        let mut w = ArrowWriter::try_new(&mut file, schema, Some(props)).expect("writer");
        w.write(&batch).expect("write");
        w.close().expect("close");
        let options = ReadOptionsBuilder::new()
            .with_reader_properties(
                ReaderProperties::builder()
                    .set_read_bloom_filter(true)
                    .build(),
            )
            .build();
        let r = SerializedFileReader::new_with_options(file, options).expect("reader");
        let rg = r.get_row_group(0).expect("row group");
        let filter = rg.get_column_bloom_filter(0).expect("a filter on disk");
        assert!(filter.check(&"P-4321"));
        let absent = (0..100).filter(|i| filter.check(&format!("Q-{i}").as_str()));
        assert!(absent.count() < 10, "about 1 % false positives");
    }
}
