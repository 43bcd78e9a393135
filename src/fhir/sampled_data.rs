//! SampledData streams: `data` strings of space-separated values, `E` for no value.

use chrono::{DateTime, Duration, Utc};
use std::sync::Arc;

/// A timestamped measured value. Shared, not owned: a window's version hands its values to
/// the outputs without copying each one.
pub type TimeValue = (DateTime<Utc>, Arc<str>);

/// Builds `data` for values in time order over `[start, end]` (end inclusive), one slot per
/// `period_ms`; a later value in the same slot wins. Values before `start` or past the last
/// slot are dropped (a value just after `end` but inside the last slot still counts).
pub fn build(
    values: &[TimeValue],
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    period_ms: u64,
) -> String {
    let period = period_ms.max(1) as i128 * 1_000_000;
    let span = (end - start).num_nanoseconds().map_or(0, i128::from);
    if span < 0 {
        return String::new();
    }
    let slots = (span / period + 1) as usize;
    let mut data: Vec<Option<&str>> = vec![None; slots];
    for (t, v) in values {
        let offset = (*t - start).num_nanoseconds().map_or(-1, i128::from);
        if offset < 0 {
            continue;
        }
        if let Some(slot) = data.get_mut((offset / period) as usize) {
            *slot = Some(v);
        }
    }
    let mut out = String::with_capacity(slots * 3);
    for (i, d) in data.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(d.unwrap_or("E"));
    }
    out
}

/// Decodes `data`: token k is at `start + k * period`; `E` tokens are skipped.
pub fn to_time_values(data: &str, start: DateTime<Utc>, period_ms: u64) -> Vec<TimeValue> {
    data.split_whitespace()
        .enumerate()
        .filter(|(_, v)| *v != "E")
        .map(|(k, v)| {
            (
                start + Duration::milliseconds((k as u64 * period_ms) as i64),
                Arc::from(v),
            )
        })
        .collect()
}

/// Time-ordered merge of two sorted lists; on equal times the new value wins.
pub fn merge(existing: &[TimeValue], new: &[TimeValue]) -> Vec<TimeValue> {
    let mut out = Vec::with_capacity(existing.len() + new.len());
    let (mut i, mut j) = (0, 0);
    while i < existing.len() || j < new.len() {
        match (existing.get(i), new.get(j)) {
            (Some(a), Some(b)) if a.0 < b.0 => {
                out.push(a.clone());
                i += 1;
            }
            (Some(a), Some(b)) if a.0 == b.0 => {
                out.push(b.clone());
                i += 1;
                j += 1;
            }
            (Some(_), Some(b)) | (None, Some(b)) => {
                out.push(b.clone());
                j += 1;
            }
            (Some(a), None) => {
                out.push(a.clone());
                i += 1;
            }
            (None, None) => unreachable!(),
        }
    }
    out
}
