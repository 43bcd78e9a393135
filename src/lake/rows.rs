//! Small helpers shared by the tables' row builders.

use deltalake::arrow::array::{Array, RecordBatch};

/// Days since the Unix epoch of a UTC time: the `date` partition value.
pub fn date_of(t: &chrono::DateTime<chrono::Utc>) -> i32 {
    crate::time::day_of(t)
}

/// Days since the Unix epoch of a date (Arrow's Date32).
pub fn days(d: chrono::NaiveDate) -> i32 {
    d.signed_duration_since(chrono::NaiveDate::default())
        .num_days() as i32
}

/// A `date` partition value as the Delta log spells it (`2026-11-21`), in days.
pub fn partition_days(value: &str) -> Option<i32> {
    chrono::NaiveDate::parse_from_str(value, "%Y-%m-%d")
        .ok()
        .map(days)
}

/// A column of `batch` by name, as the array type the table writes it with.
pub fn column<'a, T: Array + 'static>(batch: &'a RecordBatch, name: &str) -> Option<&'a T> {
    batch.column_by_name(name)?.as_any().downcast_ref::<T>()
}

/// Microseconds since the Unix epoch of an RFC 3339 time, if it is one.
pub fn micros(rfc3339: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .ok()
        .map(|t| t.timestamp_micros())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_count_days_since_1970_in_utc() {
        let t = crate::time::parse_timestamp("2026-11-21T23:59:59+00:00").expect("time");
        assert_eq!(date_of(&t), 20_778);
        let t = crate::time::parse_timestamp("2026-11-22T00:30:00+01:00").expect("time");
        assert_eq!(date_of(&t), 20_778, "23:30 UTC the day before");
        assert_eq!(partition_days("2026-11-21"), Some(20_778));
        assert_eq!(partition_days("21/11/2026"), None);
        assert_eq!(micros("1970-01-01T00:00:01Z"), Some(1_000_000));
        assert_eq!(micros("yesterday"), None);
    }
}
