//! SampledData streams: `data` strings of space-separated values, `E` for no value.

use arcstr::ArcStr;
use chrono::{DateTime, Utc};

/// A timestamped measured value, in 16 bytes: an hourly window holds 3,600 of them per vital
/// at 1 Hz, and as a `(DateTime<Utc>, Arc<str>)` (32 bytes) they were most of what a job's
/// memory grew by within the hour.
///
/// The time is kept in .NET ticks (100 ns since the Unix epoch): the resolution FHIR periods
/// are written at, and the one the IoMT connector's own times have. Readings of one series
/// in the same tick are one time, as they are to the connector; a leap second's
/// readings count as the next second's. The text is shared behind a one-word pointer: a
/// window's version hands its values to the outputs without copying each one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeValue {
    ticks: i64,
    text: ArcStr,
}

/// Ticks per second.
const TICKS: i64 = 10_000_000;

/// Ticks per millisecond.
pub const TICKS_PER_MS: i64 = TICKS / 1_000;

impl TimeValue {
    /// `text` at `at` (to the tick; saturating beyond ±29,000 years).
    pub fn new(at: DateTime<Utc>, text: ArcStr) -> Self {
        Self::from_ticks(ticks_of(at), text)
    }

    /// `text` at `ticks` (see [`ticks_of`]).
    pub fn from_ticks(ticks: i64, text: ArcStr) -> Self {
        Self { ticks, text }
    }

    /// Its time, to the tick.
    pub fn at(&self) -> DateTime<Utc> {
        time_of(self.ticks)
    }

    /// Its time in ticks: what orders and compares values.
    pub fn ticks(&self) -> i64 {
        self.ticks
    }

    /// The value as the device sent it.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The value, shared.
    pub fn shared_text(&self) -> &ArcStr {
        &self.text
    }
}

/// `at` in ticks (to the tick; saturating beyond ±29,000 years).
pub fn ticks_of(at: DateTime<Utc>) -> i64 {
    at.timestamp()
        .checked_mul(TICKS)
        .and_then(|t| t.checked_add(i64::from(at.timestamp_subsec_nanos() / 100)))
        .unwrap_or(if at.timestamp() < 0 {
            i64::MIN
        } else {
            i64::MAX
        })
}

/// The time of `ticks`.
pub fn time_of(ticks: i64) -> DateTime<Utc> {
    let nanos = (ticks.rem_euclid(TICKS) * 100) as u32;
    DateTime::from_timestamp(ticks.div_euclid(TICKS), nanos).expect("in chrono's range")
}

/// Nanoseconds since the Unix epoch, exact for any time chrono holds.
fn nanos(t: DateTime<Utc>) -> i128 {
    i128::from(t.timestamp()) * 1_000_000_000 + i128::from(t.timestamp_subsec_nanos())
}

/// Builds `data` for values in time order over `[start, end]` (end inclusive), one slot per
/// `period_ms`; a later value in the same slot wins. Values before `start` or past the last
/// slot are dropped (a value just after `end` but inside the last slot still counts).
///
/// Written in one pass over the values, empty slots in runs: an hourly window at 1 Hz has
/// 3,600 slots whatever it holds, and filling a slot table first then writing it slot by
/// slot was 170,000 instructions per version (10 % of a replay's, `valgrind --tool=callgrind`).
pub fn build(
    values: &[TimeValue],
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    period_ms: u64,
) -> String {
    if !values.is_sorted_by(|a, b| a.ticks <= b.ticks) {
        return build_by_slots(values, start, end, period_ms);
    }
    let texts: usize = values.iter().map(|v| v.text.len() + 1).sum();
    build_sorted(
        values.iter().map(|v| (v.ticks, v.text())),
        texts,
        start,
        end,
        period_ms,
    )
}

/// [`build`] in one pass over (ticks, text) known to be in time order; `texts` is room for
/// their tokens.
pub fn build_sorted<'a>(
    values: impl Iterator<Item = (i64, &'a str)>,
    texts: usize,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    period_ms: u64,
) -> String {
    let period = period_ms.max(1) as i128 * 1_000_000;
    let Some(slots) = slot_count(start, end, period) else {
        return String::new();
    };
    let mut out = String::with_capacity(2 * slots + texts);
    // Every token is written with the space after it; the last space goes at the end.
    let mut next = 0;
    let start = nanos(start);
    let mut placed = values
        .filter_map(|(ticks, text)| Some((slot_of(ticks, start, period, slots)?, text)))
        .peekable();
    while let Some((slot, v)) = placed.next() {
        if placed.peek().is_some_and(|(s, _)| *s == slot) {
            // Time order: the next value in this slot is later, and wins.
            continue;
        }
        push_empty(&mut out, slot - next);
        out.push_str(v);
        out.push(' ');
        next = slot + 1;
    }
    push_empty(&mut out, slots - next);
    out.pop();
    out
}

/// How many slots `[start, end]` has at `period` (ns); None when it ends before it starts.
fn slot_count(start: DateTime<Utc>, end: DateTime<Utc>, period: i128) -> Option<usize> {
    let span = (end - start).num_nanoseconds().map_or(0, i128::from);
    (span >= 0).then(|| (span / period + 1) as usize)
}

/// The slot of a value at `ticks`, when it falls in one of `slots` from `start` (ns since
/// the epoch).
fn slot_of(ticks: i64, start: i128, period: i128, slots: usize) -> Option<usize> {
    let offset = i128::from(ticks) * 100 - start;
    if offset < 0 {
        return None;
    }
    usize::try_from(offset / period).ok().filter(|s| *s < slots)
}

/// Appends `n` empty slots ("E ").
fn push_empty(out: &mut String, mut n: usize) {
    static RUN: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| "E ".repeat(256));
    while n > 0 {
        let k = n.min(RUN.len() / 2);
        out.push_str(&RUN[..2 * k]);
        n -= k;
    }
}

/// [`build`] through a table of slots: for values in any order (the iteration order decides
/// within a slot).
fn build_by_slots(
    values: &[TimeValue],
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    period_ms: u64,
) -> String {
    let period = period_ms.max(1) as i128 * 1_000_000;
    let Some(slots) = slot_count(start, end, period) else {
        return String::new();
    };
    let mut data: Vec<Option<&str>> = vec![None; slots];
    let start = nanos(start);
    for v in values {
        if let Some(slot) = slot_of(v.ticks, start, period, slots) {
            data[slot] = Some(v.text());
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
            let at = start + chrono::Duration::milliseconds((k as u64 * period_ms) as i64);
            TimeValue::new(at, ArcStr::from(v))
        })
        .collect()
}

/// Time-ordered merge of two sorted lists; on equal times the new value wins.
pub fn merge(existing: &[TimeValue], new: &[TimeValue]) -> Vec<TimeValue> {
    let mut out = Vec::with_capacity(existing.len() + new.len());
    let (mut i, mut j) = (0, 0);
    while i < existing.len() || j < new.len() {
        match (existing.get(i), new.get(j)) {
            (Some(a), Some(b)) if a.ticks < b.ticks => {
                out.push(a.clone());
                i += 1;
            }
            (Some(a), Some(b)) if a.ticks == b.ticks => {
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

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use proptest::prelude::*;

    fn at(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(ms).expect("time")
    }

    /// `ms` after the instant the build tests draw values around.
    pub(in crate::fhir) fn near(ms: i64) -> DateTime<Utc> {
        at(1_800_000_000_000 + ms)
    }

    /// Values in time order around [`near`]`(0)` (several in one slot, some before the
    /// window, some past it), a window's span and a period, both in ms: what the build
    /// tests draw.
    pub(in crate::fhir) fn sorted_values() -> impl Strategy<Value = (Vec<TimeValue>, i64, u64)> {
        (
            proptest::collection::vec(-5_000i64..70_000, 0..80),
            proptest::collection::vec("[0-9]{1,3}(\\.[0-9])?", 80),
            -1_000i64..65_000,
            0u64..7_000,
        )
            .prop_map(|(mut times, texts, span, period)| {
                times.sort();
                let values = times
                    .iter()
                    .zip(&texts)
                    .map(|(t, v)| TimeValue::new(near(*t), v.as_str().into()))
                    .collect();
                (values, span, period)
            })
    }

    proptest! {
        /// The one-pass build writes what the slot table writes, for time-ordered values:
        /// values before the start, past the last slot, several in one slot (the later
        /// wins), windows ending before they start, periods wider than the window.
        #[test]
        fn one_pass_equals_the_slot_table((values, span, period) in sorted_values()) {
            let (start, end) = (near(0), near(span));
            prop_assert_eq!(
                build(&values, start, end, period),
                build_by_slots(&values, start, end, period)
            );
        }
    }

    proptest! {
        /// A value's time is the reading's to the tick, and ticks order as times do.
        #[test]
        fn a_value_keeps_its_time_to_the_tick(
            a in -62_135_596_800i64..253_402_300_799,
            b in -62_135_596_800i64..253_402_300_799,
            na in 0u32..1_000_000_000,
            nb in 0u32..1_000_000_000,
        ) {
            let (ta, tb) = (
                DateTime::from_timestamp(a, na).expect("time"),
                DateTime::from_timestamp(b, nb).expect("time"),
            );
            let (va, vb) = (TimeValue::new(ta, "1".into()), TimeValue::new(tb, "2".into()));
            prop_assert_eq!(va.at(), DateTime::from_timestamp(a, na / 100 * 100).expect("time"));
            prop_assert_eq!(va.at().timestamp_subsec_nanos() % 100, 0);
            if ta <= tb {
                prop_assert!(va.ticks() <= vb.ticks());
            }
        }
    }

    #[test]
    fn values_are_sixteen_bytes_and_times_out_of_range_saturate() {
        assert_eq!(std::mem::size_of::<TimeValue>(), 16);
        let far = DateTime::<Utc>::MAX_UTC;
        assert_eq!(TimeValue::new(far, "x".into()).ticks(), i64::MAX);
        assert_eq!(
            TimeValue::new(DateTime::<Utc>::MIN_UTC, "x".into()).ticks(),
            i64::MIN
        );
    }

    #[test]
    fn an_hour_at_one_hertz_has_a_slot_per_second() {
        let start = at(0);
        let values = vec![
            TimeValue::new(at(0), "72".into()),
            TimeValue::new(at(2_500), "75".into()),
        ];
        let data = build(&values, start, at(3_599_999), 1_000);
        assert_eq!(data.split(' ').count(), 3_600);
        assert!(data.starts_with("72 E 75 E E"));
        // Out of time order: the slot table decides, the later in the list wins.
        let shuffled = vec![
            TimeValue::new(at(1_400), "80".into()),
            TimeValue::new(at(1_100), "81".into()),
        ];
        assert!(build(&shuffled, start, at(2_999), 1_000).starts_with("E 81 E"));
    }
}
