//! One Delta Lake table of the lakehouse, driven synchronously from a sink thread.
//!
//! Each flush is one Delta commit: the Parquet files of the flush and, in the same commit,
//! `txn` actions recording how far into each Kafka partition the table now holds data. A
//! commit is atomic, so after a crash the table holds a flush whole or not at all, and the
//! recorded versions say exactly which source offsets a restart must not write again.
//! Files of a flush whose commit never happened are not in the log: readers never see them,
//! and `vitalflow lake vacuum` deletes them.

use super::schema::TableSpec;
use anyhow::{anyhow, Context as _};
use deltalake::arrow::array::RecordBatch;
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel as _;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::kernel::{StructType, Transaction};
use deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use deltalake::parquet::arrow::ProjectionMask;
use deltalake::parquet::file::properties::WriterProperties;
use deltalake::protocol::SaveMode;
use deltalake::writer::{DeltaWriter as _, RecordBatchWriter};
use deltalake::{DeltaTable, DeltaTableBuilder};
use std::collections::HashMap;

/// A Delta table opened for appends, with the runtime its object store runs on.
pub struct Table {
    rt: tokio::runtime::Runtime,
    table: DeltaTable,
    spec: &'static TableSpec,
    /// Where the table is, as the user gave it (messages).
    pub location: String,
    writer_properties: WriterProperties,
}

/// A data file of the table, as the log lists it.
#[derive(Debug, Clone)]
pub struct FileEntry {
    /// Path relative to the table root.
    pub path: String,
    /// Bytes on storage.
    pub size: i64,
    /// Rows, when the log records statistics.
    pub rows: Option<usize>,
    /// Partition column → value.
    pub partition: HashMap<String, Option<String>>,
    /// Milliseconds since the Unix epoch the file was written.
    pub modified_ms: i64,
    /// The action that removes it from the table (compaction).
    pub remove: deltalake::kernel::Remove,
}

/// A table location: a local path (made absolute) or an object-store URL.
pub fn table_url(base: &str, table: &str) -> anyhow::Result<url::Url> {
    let joined = format!("{}/{table}", base.trim_end_matches('/'));
    if base.contains("://") {
        super::s3::register();
        return url::Url::parse(&joined).with_context(|| format!("\"{joined}\" is not a URL"));
    }
    let path = std::path::Path::new(&joined);
    std::fs::create_dir_all(path).with_context(|| format!("cannot create {}", path.display()))?;
    let abs = std::fs::canonicalize(path)
        .with_context(|| format!("cannot resolve {}", path.display()))?;
    url::Url::from_directory_path(&abs)
        .map_err(|()| anyhow!("{} is not an absolute path", abs.display()))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the lakehouse I/O runtime")
}

impl Table {
    /// Opens the table at `base/<spec.name>`, creating it with the spec's schema if absent;
    /// an existing table whose schema differs is refused, naming the columns.
    pub fn open(
        base: &str,
        spec: &'static TableSpec,
        storage: &HashMap<String, String>,
    ) -> anyhow::Result<Self> {
        Self::open_url(table_url(base, spec.name)?, spec, storage, true)
    }

    fn open_url(
        url: url::Url,
        spec: &'static TableSpec,
        storage: &HashMap<String, String>,
        create: bool,
    ) -> anyhow::Result<Self> {
        let location = url.to_string();
        let rt = runtime()?;
        let table = rt
            .block_on(open_or_create(url, spec, storage, create))
            .with_context(|| format!("lakehouse table {location}"))?;
        let writer_properties = spec.writer_properties(super::schema::FLUSH_BLOOM_NDV);
        Ok(Self {
            rt,
            table,
            spec,
            location,
            writer_properties,
        })
    }

    /// Opens an existing table (maintenance): a location without one is an error, not a new
    /// empty table.
    pub fn open_existing(
        base: &str,
        spec: &'static TableSpec,
        storage: &HashMap<String, String>,
    ) -> anyhow::Result<Self> {
        if !base.contains("://") {
            let path = std::path::Path::new(base).join(spec.name);
            if !path.join("_delta_log").is_dir() {
                return Err(anyhow!(
                    "no {} table at {} (the job creates it when it starts)",
                    spec.name,
                    path.display()
                ));
            }
        }
        Self::open_url(table_url(base, spec.name)?, spec, storage, false)
    }

    /// The version the table's log last recorded for an application id (a Kafka partition).
    pub fn txn_version(&self, app_id: &str) -> anyhow::Result<Option<i64>> {
        let snapshot = self.table.snapshot()?;
        let log_store = self.table.log_store();
        self.rt
            .block_on(snapshot.transaction_version(log_store.as_ref(), app_id))
            .with_context(|| format!("cannot read the transactions of {}", self.location))
    }

    /// Appends `batches` in one commit recording `txns`; returns the new table version.
    /// Batches are taken one at a time: a sink that builds them as they are asked for holds
    /// one batch, not the whole flush, beside what the writer has encoded.
    pub fn append(
        &mut self,
        batches: impl IntoIterator<Item = RecordBatch>,
        txns: Vec<Transaction>,
        info: HashMap<String, serde_json::Value>,
    ) -> anyhow::Result<i64> {
        let location = self.location.clone();
        let props = self.writer_properties.clone();
        let target = self.spec.flush_file_size as u64;
        let table = &mut self.table;
        let result = self
            .rt
            .block_on(async move {
                // A fresh writer per flush: a failed attempt leaves nothing staged, and its
                // uncommitted files are invisible to readers until vacuum deletes them.
                let mut writer = RecordBatchWriter::for_table(table)?
                    .with_writer_properties(props)
                    .with_target_file_size(target)
                    .with_commit_properties(
                        CommitProperties::default()
                            .with_application_transactions(txns)
                            .with_metadata(info),
                    );
                for b in batches {
                    writer.write(b).await?;
                }
                writer.flush_and_commit(table).await
            })
            .map(|v| v as i64)
            .with_context(|| format!("cannot commit to {location}"));
        if result.is_ok() {
            crate::failpoint::hit("lake.committed");
        }
        if result.is_err() {
            // The retry starts from the log as it is now (another writer's commit, a
            // metadata change), not from the snapshot that conflicted.
            let _ = self.refresh();
        }
        result
    }

    /// The data files of the current version.
    pub fn files(&self) -> anyhow::Result<Vec<FileEntry>> {
        let snapshot = self.table.snapshot()?;
        Ok(snapshot
            .log_data()
            .iter()
            .map(|f| FileEntry {
                path: f.path().to_string(),
                size: f.size(),
                rows: f.num_records(),
                partition: f.partition_values_map(),
                modified_ms: f.modification_time(),
                remove: f.remove_action(false),
            })
            .collect())
    }

    /// The data files of the given `date` partitions (days since 1970); files without a
    /// `date` partition value are included.
    pub fn files_on_days(
        &self,
        days: &std::collections::BTreeSet<i32>,
    ) -> anyhow::Result<Vec<FileEntry>> {
        Ok(self
            .files()?
            .into_iter()
            .filter(|f| {
                f.partition
                    .get("date")
                    .and_then(|d| d.as_deref())
                    .and_then(super::rows::partition_days)
                    .is_none_or(|d| days.contains(&d))
            })
            .collect())
    }

    /// Reads `columns` of the given files (partition columns are not in the files).
    pub fn read(&self, files: &[FileEntry], columns: &[&str]) -> anyhow::Result<Vec<RecordBatch>> {
        let store = self.table.object_store();
        let mut out = Vec::new();
        for f in files {
            // The log's paths are already percent-encoded (a partition value with a `/`, as
            // technical rule ids have, is `%2F` in it): parsed as they are, not encoded again.
            let path = deltalake::Path::parse(f.path.as_str())
                .with_context(|| format!("{} of {} is not a path", f.path, self.location))?;
            let bytes = self
                .rt
                .block_on(async {
                    store
                        .get_opts(&path, Default::default())
                        .await?
                        .bytes()
                        .await
                })
                .with_context(|| format!("cannot read {} of {}", f.path, self.location))?;
            let builder = ParquetRecordBatchReaderBuilder::try_new(bytes)
                .with_context(|| format!("{} of {} is not Parquet", f.path, self.location))?;
            let schema = builder.parquet_schema();
            let leaves: Vec<usize> = (0..schema.num_columns())
                .filter(|i| columns.contains(&schema.column(*i).name()))
                .collect();
            let mask = ProjectionMask::leaves(schema, leaves);
            for b in builder.with_projection(mask).build()? {
                out.push(b?);
            }
        }
        Ok(out)
    }

    /// Re-reads the log (after other writers committed).
    pub fn refresh(&mut self) -> anyhow::Result<()> {
        let location = self.location.clone();
        self.rt
            .block_on(self.table.update_state())
            .with_context(|| format!("cannot read the log of {location}"))
    }

    /// The underlying table and its runtime, for maintenance operations.
    pub fn parts(&mut self) -> (&tokio::runtime::Runtime, &mut DeltaTable) {
        (&self.rt, &mut self.table)
    }
}

async fn open_or_create(
    url: url::Url,
    spec: &TableSpec,
    storage: &HashMap<String, String>,
    create: bool,
) -> anyhow::Result<DeltaTable> {
    let schema = spec.arrow_schema();
    let kernel: StructType = schema.as_ref().try_into_kernel()?;
    for attempt in 0..3 {
        let mut table = DeltaTableBuilder::from_url(url.clone())?
            .with_storage_options(storage.clone())
            .build()?;
        match table.load().await {
            Ok(()) => match add_new_columns(table, &kernel).await {
                Ok(table) => {
                    check_schema(&table, &kernel)?;
                    return Ok(table);
                }
                // Another worker added them first: load theirs.
                Err(_) if attempt < 2 => continue,
                Err(e) => return Err(e),
            },
            Err(deltalake::DeltaTableError::NotATable(_)) if create => {}
            Err(deltalake::DeltaTableError::NotATable(_)) => {
                return Err(anyhow!(
                    "no {} table there (the job creates it when it starts)",
                    spec.name
                ))
            }
            Err(e) => return Err(e.into()),
        }
        let created = table
            .create()
            .with_table_name(spec.name)
            .with_comment(spec.comment)
            .with_columns(kernel.fields().cloned())
            .with_partition_columns(spec.partition_columns.iter().copied())
            .with_save_mode(SaveMode::ErrorIfExists)
            // Losing a race to create must fail, not retry as a later version that would
            // change the metadata under the winner's appends.
            .with_commit_properties(CommitProperties::default().with_max_retries(0))
            .await;
        match created {
            Ok(t) => return Ok(t),
            // Another worker created it first: load theirs.
            Err(_) if attempt < 2 => continue,
            Err(e) => return Err(e.into()),
        }
    }
    unreachable!("the loop returns")
}

/// A table written by an earlier version lacks the nullable columns added since: they are
/// added (one metadata commit; older rows read as null), so an upgrade needs no rewrite.
async fn add_new_columns(table: DeltaTable, want: &StructType) -> anyhow::Result<DeltaTable> {
    let have = table.snapshot()?.schema();
    let new: Vec<_> = want
        .fields()
        .filter(|f| f.is_nullable() && have.field(f.name()).is_none())
        .cloned()
        .collect();
    if new.is_empty() {
        return Ok(table);
    }
    let names: Vec<String> = new.iter().map(|f| f.name().to_string()).collect();
    tracing::info!(columns = %names.join(", "), "adding new columns to an existing table");
    Ok(table.add_columns().with_fields(new).await?)
}

fn check_schema(table: &DeltaTable, want: &StructType) -> anyhow::Result<()> {
    let have = table.snapshot()?.schema();
    let mut problems = Vec::new();
    for f in want.fields() {
        match have.field(f.name()) {
            None => problems.push(format!("column {} is missing", f.name())),
            Some(h) if h.data_type() != f.data_type() => problems.push(format!(
                "column {} is {} in the table, vitalflow writes {}",
                f.name(),
                h.data_type(),
                f.data_type()
            )),
            Some(_) => {}
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(anyhow!(
            "the existing table's schema differs from what vitalflow writes: {}",
            problems.join("; ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lake::schema::{ALERTS, MEASUREMENTS};

    #[test]
    fn a_table_written_before_a_nullable_column_existed_gains_it_on_open() {
        let dir = tempfile::tempdir().expect("tmp");
        let base = dir.path().display().to_string();
        Table::open(&base, &ALERTS, &HashMap::new()).expect("created");
        // Make it the table an earlier release wrote: no category column.
        let log = dir
            .path()
            .join("alerts/_delta_log/00000000000000000000.json");
        let text = std::fs::read_to_string(&log).expect("log");
        let lines: Vec<String> = text
            .lines()
            .map(|l| {
                let mut v: serde_json::Value = serde_json::from_str(l).expect("json");
                if let Some(schema) = v["metaData"]["schemaString"].as_str() {
                    let mut s: serde_json::Value = serde_json::from_str(schema).expect("schema");
                    s["fields"]
                        .as_array_mut()
                        .expect("fields")
                        .retain(|f| f["name"] != "category");
                    v["metaData"]["schemaString"] = s.to_string().into();
                }
                v.to_string()
            })
            .collect();
        std::fs::write(&log, lines.join("\n") + "\n").expect("write");
        let t = Table::open(&base, &ALERTS, &HashMap::new()).expect("opened and evolved");
        let schema = t.table.snapshot().expect("snapshot").schema();
        assert!(schema.field("category").is_some(), "{schema:?}");
        assert!(
            dir.path()
                .join("alerts/_delta_log/00000000000000000001.json")
                .exists(),
            "one metadata commit"
        );
        // Opening again changes nothing.
        Table::open(&base, &ALERTS, &HashMap::new()).expect("reopened");
        assert!(!dir
            .path()
            .join("alerts/_delta_log/00000000000000000002.json")
            .exists());
    }

    #[test]
    fn a_table_of_another_schema_is_refused_naming_the_columns() {
        let dir = tempfile::tempdir().expect("tmp");
        let base = dir.path().display().to_string();
        Table::open(&base, &MEASUREMENTS, &HashMap::new()).expect("created");
        // Someone points the alerts table at a measurements table.
        std::fs::rename(dir.path().join("measurements"), dir.path().join("alerts")).expect("mv");
        let e = Table::open(&base, &ALERTS, &HashMap::new())
            .err()
            .expect("refused");
        let text = format!("{e:#}");
        assert!(text.contains("/alerts/"), "names the table: {text}");
        assert!(text.contains("column alert_id is missing"), "{text}");
        // Opening it as what it is still works.
        std::fs::rename(dir.path().join("alerts"), dir.path().join("measurements")).expect("mv");
        let t = Table::open(&base, &MEASUREMENTS, &HashMap::new()).expect("reopened");
        assert!(t.files().expect("files").is_empty());
    }
}
