//! `vitalflow lake compact` and `vitalflow lake vacuum`: small-file control.
//!
//! A running job commits a few files per partition and worker every flush: fresh data is
//! visible in seconds, at the cost of many small files. Compaction rewrites a partition's
//! small files older than a cut-off into files of about the target size, in one Delta
//! commit that removes the small ones (`dataChange = false`: readers of the table see the
//! same rows before and after, and a running job's appends do not conflict with it).
//! Vacuum then deletes files the log no longer references (compacted ones past the
//! retention, and files of flushes whose commit never happened).

use super::schema::{TableSpec, TABLES};
use super::table::{FileEntry, Table};
use super::LakeConfig;
use anyhow::{anyhow, Context as _};
use deltalake::arrow::array::{ArrayRef, Date32Array, RecordBatch, StringArray};
use deltalake::kernel::transaction::CommitBuilder;
use deltalake::kernel::Action;
use deltalake::operations::vacuum::VacuumMode;
use deltalake::protocol::DeltaOperation;
use deltalake::writer::{DeltaWriter as _, RecordBatchWriter};
use std::collections::BTreeMap;
use std::future::IntoFuture as _;
use std::sync::Arc;
use std::time::Duration;

/// What compaction did to one table.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Compacted {
    /// Table name.
    pub table: &'static str,
    /// Partitions rewritten.
    pub partitions: usize,
    /// Small files replaced.
    pub files_in: usize,
    /// Files written instead.
    pub files_out: usize,
    /// Bytes of the replaced files.
    pub bytes_in: i64,
    /// Rows rewritten.
    pub rows: usize,
}

/// The tables named (all when empty), refusing unknown names.
pub fn specs(names: &[String]) -> anyhow::Result<Vec<&'static TableSpec>> {
    if names.is_empty() {
        return Ok(TABLES.to_vec());
    }
    names
        .iter()
        .map(|n| {
            TABLES.iter().copied().find(|t| t.name == n).ok_or_else(|| {
                anyhow!(
                    "no table \"{n}\" (the lakehouse has {})",
                    TABLES.map(|t| t.name).join(", ")
                )
            })
        })
        .collect()
}

fn partition_key(f: &FileEntry) -> String {
    let mut parts: Vec<String> = f
        .partition
        .iter()
        .map(|(k, v)| format!("{k}={}", v.as_deref().unwrap_or("")))
        .collect();
    parts.sort();
    parts.join("/")
}

/// Adds the partition columns (not stored in the files) back as constants.
fn with_partition_columns(
    spec: &TableSpec,
    batch: &RecordBatch,
    values: &std::collections::HashMap<String, Option<String>>,
) -> anyhow::Result<RecordBatch> {
    let schema = spec.arrow_schema();
    let n = batch.num_rows();
    let mut columns: Vec<ArrayRef> = Vec::new();
    for field in schema.fields() {
        if let Some(c) = batch.column_by_name(field.name()) {
            columns.push(c.clone());
            continue;
        }
        let v =
            values.get(field.name()).cloned().flatten().ok_or_else(|| {
                anyhow!("a file has no column or partition value {}", field.name())
            })?;
        let col: ArrayRef = match field.data_type() {
            deltalake::arrow::datatypes::DataType::Date32 => {
                let days = super::rows::partition_days(&v)
                    .ok_or_else(|| anyhow!("partition value {}={v} is not a date", field.name()))?;
                Arc::new(Date32Array::from(vec![days; n]))
            }
            _ => Arc::new(StringArray::from(vec![v.as_str(); n])),
        };
        columns.push(col);
    }
    Ok(RecordBatch::try_new(schema, columns)?)
}

/// Compacts one table: per partition, files smaller than half the target and older than
/// `older_than` are rewritten into files of about `target` bytes.
pub fn compact(
    config: &LakeConfig,
    spec: &'static TableSpec,
    older_than: Duration,
    target: u64,
) -> anyhow::Result<Compacted> {
    let mut table = Table::open_existing(&config.location, spec, &config.storage)?;
    let cutoff = chrono::Utc::now().timestamp_millis() - older_than.as_millis() as i64;
    let mut by_partition: BTreeMap<String, Vec<FileEntry>> = BTreeMap::new();
    for f in table.files()? {
        if f.modified_ms <= cutoff && (f.size as u64) < target / 2 {
            by_partition.entry(partition_key(&f)).or_default().push(f);
        }
    }
    let mut report = Compacted {
        table: spec.name,
        ..Default::default()
    };
    for (key, files) in by_partition {
        // Bins of about the target size; Parquet compresses further when rewritten whole.
        let mut bins: Vec<Vec<FileEntry>> = vec![Vec::new()];
        let mut size = 0u64;
        for f in files {
            if size + f.size as u64 > target && !bins.last().expect("a bin").is_empty() {
                bins.push(Vec::new());
                size = 0;
            }
            size += f.size as u64;
            bins.last_mut().expect("a bin").push(f);
        }
        for bin in bins.into_iter().filter(|b| b.len() > 1) {
            let (files_out, rows) = rewrite(&mut table, spec, &bin, target)
                .with_context(|| format!("compacting {} {key}", spec.name))?;
            report.partitions += 1;
            report.files_in += bin.len();
            report.files_out += files_out;
            report.bytes_in += bin.iter().map(|f| f.size).sum::<i64>();
            report.rows += rows;
        }
    }
    Ok(report)
}

/// Rewrites `files` (one partition) into new files and commits the swap; returns the number
/// of files written and rows moved.
fn rewrite(
    table: &mut Table,
    spec: &'static TableSpec,
    files: &[FileEntry],
    target: u64,
) -> anyhow::Result<(usize, usize)> {
    let columns: Vec<String> = spec
        .arrow_schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let names: Vec<&str> = columns.iter().map(String::as_str).collect();
    let mut batches = Vec::new();
    for f in files {
        for b in table.read(std::slice::from_ref(f), &names)? {
            batches.push(with_partition_columns(spec, &b, &f.partition)?);
        }
    }
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    let expected: usize = files.iter().filter_map(|f| f.rows).sum();
    if files.iter().all(|f| f.rows.is_some()) && expected != rows {
        return Err(anyhow!(
            "read {rows} rows but the log records {expected}: left as it is"
        ));
    }
    // A compacted file's ids are at most its rows.
    let props = spec.writer_properties(rows.min(1 << 20) as u64);
    let removes: Vec<Action> = files
        .iter()
        .map(|f| Action::Remove(f.remove.clone()))
        .collect();
    let (rt, delta) = table.parts();
    let written = rt.block_on(async {
        let mut writer = RecordBatchWriter::for_table(delta)?
            .with_writer_properties(props)
            .with_target_file_size(target);
        for b in batches {
            writer.write(b).await?;
        }
        let adds = writer.flush().await?;
        let n = adds.len();
        let mut actions: Vec<Action> = adds
            .into_iter()
            .map(|mut a| {
                a.data_change = false;
                Action::Add(a)
            })
            .collect();
        actions.extend(removes);
        let snapshot = delta.snapshot()?;
        let finalized = CommitBuilder::default()
            .with_actions(actions)
            .build(
                Some(snapshot),
                delta.log_store(),
                DeltaOperation::Optimize {
                    predicate: None,
                    target_size: target as i64,
                },
            )
            .await?;
        Ok::<_, deltalake::DeltaTableError>((n, finalized.version()))
    })?;
    table.refresh()?;
    Ok((written.0, rows))
}

/// Deletes files the table no longer references and that are older than `retention`;
/// returns their paths (only lists them with `dry_run`).
pub fn vacuum(
    config: &LakeConfig,
    spec: &'static TableSpec,
    retention: Duration,
    dry_run: bool,
) -> anyhow::Result<Vec<String>> {
    let mut table = Table::open_existing(&config.location, spec, &config.storage)?;
    let location = table.location.clone();
    let (rt, delta) = table.parts();
    let delta = delta.clone();
    let retention = chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
    let (_, metrics) = rt
        .block_on(
            delta
                .vacuum()
                .with_retention_period(retention)
                .with_enforce_retention_duration(false)
                .with_mode(VacuumMode::Full)
                .with_dry_run(dry_run)
                .into_future(),
        )
        .with_context(|| format!("cannot vacuum {location}"))?;
    Ok(metrics.files_deleted)
}

/// Compacts the job's tables every `compact_every` (files older than that) until `stop`:
/// steady-state files of about the target size without a scheduler. Failures are logged and
/// retried at the next round; the job's appends go on meanwhile.
pub fn spawn_compactor(
    config: LakeConfig,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Option<std::thread::JoinHandle<()>> {
    let every = config.compact_every?;
    let spawned = std::thread::Builder::new()
        .name("lake-compact".into())
        .spawn(move || {
            let stopped = || stop.load(std::sync::atomic::Ordering::Relaxed);
            loop {
                let next = std::time::Instant::now() + every;
                while std::time::Instant::now() < next {
                    if stopped() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                for spec in super::specs(&config) {
                    match compact(&config, spec, every, config.target_file_size) {
                        Ok(c) if c.files_in > 0 => tracing::info!(
                            table = c.table,
                            partitions = c.partitions,
                            files_in = c.files_in,
                            files_out = c.files_out,
                            rows = c.rows,
                            "compacted"
                        ),
                        Ok(_) => {}
                        Err(e) => tracing::warn!(
                            table = spec.name,
                            "compaction failed, retried next round: {e:#}"
                        ),
                    }
                    if stopped() {
                        return;
                    }
                }
            }
        });
    match spawned {
        Ok(h) => Some(h),
        Err(e) => {
            tracing::warn!("cannot start the lakehouse compactor: {e}");
            None
        }
    }
}
