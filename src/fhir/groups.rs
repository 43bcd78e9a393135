//! Observation groups: measurements of one (patient, device, type) split by `periodInterval`.

use super::FhirDataError;
use crate::mapping::fhir::PeriodInterval;
use crate::model::Measurement;
use crate::time::{push_id_segment, tick};
use chrono::{DateTime, Duration, Utc};
use std::sync::Arc;

pub use super::sampled_data::TimeValue;
pub use super::series::Series;

/// The measurements that become one Observation.
#[derive(Debug, Clone, PartialEq)]
pub struct ObservationGroup {
    /// Period start.
    pub start: DateTime<Utc>,
    /// Period end (inclusive).
    pub end: DateTime<Utc>,
    /// Segment of the Observation identifier: the period, or the correlation id.
    pub id_segment: String,
    /// Per property, time-sorted values; a repeated timestamp keeps the first value.
    /// Shared with the window that holds them: a version copies no value, and the window
    /// appends in place once the outputs have built the version.
    pub values: Vec<(Arc<str>, Arc<Series>)>,
}

impl ObservationGroup {
    fn new(start: DateTime<Utc>, end: DateTime<Utc>, id_segment: String) -> Self {
        Self {
            start,
            end,
            id_segment,
            values: Vec::new(),
        }
    }

    /// Adds a measurement's properties.
    pub fn add(&mut self, m: &Measurement) {
        self.add_values(m.occurrence_time, &m.properties);
    }

    /// Adds named values read at `at`.
    pub fn add_values(&mut self, at: DateTime<Utc>, properties: &[(Arc<str>, crate::model::Text)]) {
        for (name, value) in properties {
            let list = match self.values.iter_mut().position(|(n, _)| n == name) {
                Some(i) => Arc::make_mut(&mut self.values[i].1),
                None => {
                    self.values.push((name.clone(), Arc::default()));
                    Arc::make_mut(&mut self.values.last_mut().expect("just pushed").1)
                }
            };
            // A set ordered by time: an equal timestamp keeps the value already there.
            list.insert(super::sampled_data::ticks_of(at), value.as_str());
        }
    }

    /// Values of a property.
    pub fn get(&self, name: &str) -> Option<&Series> {
        self.values
            .iter()
            .find(|(n, _)| &**n == name)
            .map(|(_, v)| &**v)
    }
}

/// The period (start, end) a timestamp falls in, for time-based intervals.
pub fn boundary(period: PeriodInterval, t: DateTime<Utc>) -> (DateTime<Utc>, DateTime<Utc>) {
    match period {
        PeriodInterval::Instance | PeriodInterval::Correlation => (t, t),
        PeriodInterval::Hour => {
            let start = floor(t, 3_600);
            (start, start + Duration::hours(1) - tick())
        }
        PeriodInterval::Day => {
            let start = floor(t, 86_400);
            (start, start + Duration::days(1) - tick())
        }
    }
}

/// The millisecond [`boundary`] starts `t`'s period at, in integers alone: a window is
/// found by it for every reading, and only a new one needs the period's times (the
/// calendar arithmetic of `boundary` was 2 % of a replay's instructions).
pub fn period_start_ms(period: PeriodInterval, t: &DateTime<Utc>) -> i64 {
    // From the whole seconds, as `floor` takes them: a leap second's milliseconds run past
    // them into the next period.
    match period {
        PeriodInterval::Instance | PeriodInterval::Correlation => t.timestamp_millis(),
        PeriodInterval::Hour => t.timestamp().div_euclid(3_600) * 3_600_000,
        PeriodInterval::Day => t.timestamp().div_euclid(86_400) * 86_400_000,
    }
}

/// The start of the UTC hour or day (`secs` long) `t` is in: UTC hours and days are whole
/// multiples of their length since the epoch, so integers find it (the calendar did, at 490
/// instructions per reading: 2.6 % of a replay's).
fn floor(t: DateTime<Utc>, secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(t.timestamp().div_euclid(secs) * secs, 0).expect("a valid period")
}

/// Identifier segment for a time period.
pub fn period_segment(start: &DateTime<Utc>, end: &DateTime<Utc>) -> String {
    let mut out = String::with_capacity(31);
    push_id_segment(&mut out, start);
    out.push('.');
    push_id_segment(&mut out, end);
    out
}

/// Splits measurements of one (patient, device, type) into observation groups, in order of
/// each group's first measurement.
pub fn build_groups(
    period: PeriodInterval,
    measurements: &[Measurement],
) -> Result<Vec<ObservationGroup>, FhirDataError> {
    let mut groups: Vec<ObservationGroup> = Vec::new();
    if period == PeriodInterval::Correlation {
        let mut by_id: Vec<ObservationGroup> = Vec::new();
        for m in measurements {
            let id = m.correlation_id.as_deref().ok_or_else(|| {
                FhirDataError(format!(
                    "measurement of type {} has no correlation id but its FHIR template groups by correlation id (periodInterval -1)",
                    m.type_name
                ))
            })?;
            let g = match by_id.iter_mut().position(|g| g.id_segment == id) {
                Some(i) => &mut by_id[i],
                None => {
                    by_id.push(ObservationGroup::new(
                        m.occurrence_time,
                        m.occurrence_time,
                        id.to_string(),
                    ));
                    by_id.last_mut().expect("just pushed")
                }
            };
            g.start = g.start.min(m.occurrence_time);
            g.end = g.end.max(m.occurrence_time);
            g.add(m);
        }
        return Ok(by_id);
    }
    for m in measurements {
        let (start, end) = boundary(period, m.occurrence_time);
        let g = match groups.iter_mut().position(|g| g.start == start) {
            Some(i) => &mut groups[i],
            None => {
                groups.push(ObservationGroup::new(
                    start,
                    end,
                    period_segment(&start, &end),
                ));
                groups.last_mut().expect("just pushed")
            }
        };
        g.add(m);
    }
    Ok(groups)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Datelike, TimeZone, Timelike};
    use proptest::prelude::*;

    proptest! {
        /// Integer hours and days are the calendar's, before and after 1970, to the
        /// nanosecond and on a leap second.
        #[test]
        fn periods_start_where_the_calendar_says(
            secs in -5_000_000_000i64..5_000_000_000,
            nanos in 0u32..2_000_000_000,
        ) {
            // Past a second's nanoseconds only on a leap second (a minute's last).
            let t = DateTime::from_timestamp(secs, nanos)
                .or_else(|| DateTime::from_timestamp(secs, nanos % 1_000_000_000))
                .expect("time");
            let hour = Utc
                .with_ymd_and_hms(t.year(), t.month(), t.day(), t.hour(), 0, 0)
                .single()
                .expect("hour");
            let day = Utc
                .with_ymd_and_hms(t.year(), t.month(), t.day(), 0, 0, 0)
                .single()
                .expect("day");
            prop_assert_eq!(boundary(PeriodInterval::Hour, t).0, hour);
            prop_assert_eq!(boundary(PeriodInterval::Day, t).0, day);
            for p in [PeriodInterval::Instance, PeriodInterval::Hour, PeriodInterval::Day] {
                prop_assert_eq!(period_start_ms(p, &t), boundary(p, t).0.timestamp_millis());
            }
        }
    }
}
