//! A property's values in one Observation: in time order, one per tick, in about three bytes
//! a value.
//!
//! An hourly window at 1 Hz holds 3,600 values per vital until the hour closes, and every
//! version rebuilds its SampledData from all of them. As a list of (ticks, shared text) they
//! took 16 bytes each, about 12 MB a minute of the embedded default's growth at 5,000
//! msgs/s (docs/performance.md). Here a value is its time since the one before (a varint; in
//! milliseconds when whole, 2 bytes at 1 Hz) and its text's number in the series' own
//! dictionary (1 byte for the first 32 texts): vitals repeat a few texts ("72", "98"). Past
//! [`DICTIONARY`] texts a new text is written out in full, so a series of ever-new texts
//! stays bounded too. Reading is one forward pass, which is all a SampledData build, a dead
//! letter or a merge needs.

use super::sampled_data::{self, time_of, TimeValue, TICKS_PER_MS};
use arcstr::ArcStr;
use chrono::{DateTime, Utc};

/// Texts a series numbers; a text first seen after this many is written out in full.
const DICTIONARY: usize = 64;

/// Tag bits: the delta is in milliseconds; the text is written out (else numbered).
const MS: u64 = 1;
const INLINE: u64 = 2;

/// Values in time order, one per tick (see the module's notes).
#[derive(Clone, Default)]
pub struct Series {
    /// Numbered texts, in the order first seen.
    texts: Vec<ArcStr>,
    /// Per value: tag varint (text number or length, and the [`MS`] and [`INLINE`] bits),
    /// the text's bytes when written out, then the time since the value before (varint).
    bytes: Vec<u8>,
    len: u32,
    /// Bytes of every value's text, as a SampledData string will take them.
    text_len: usize,
    /// Ticks of the first and of the last value (0 while empty).
    first: i64,
    last: i64,
    /// The last value's text: its number, or where its bytes are.
    last_text: Last,
}

#[derive(Clone, Copy, Default)]
enum Last {
    #[default]
    None,
    Numbered(u32),
    Inline(u32, u32),
}

/// One value of a [`Series`], borrowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample<'a> {
    ticks: i64,
    text: &'a str,
}

impl<'a> Sample<'a> {
    /// Its time, to the tick.
    pub fn at(&self) -> DateTime<Utc> {
        time_of(self.ticks)
    }

    /// Its time in ticks.
    pub fn ticks(&self) -> i64 {
        self.ticks
    }

    /// The value as the device sent it.
    pub fn text(&self) -> &'a str {
        self.text
    }
}

impl Series {
    /// How many values it holds.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The values, in time order.
    pub fn iter(&self) -> Iter<'_> {
        Iter {
            texts: &self.texts,
            rest: &self.bytes,
            ticks: self.first,
            left: self.len,
        }
    }

    /// The first value's time in ticks.
    pub fn first_ticks(&self) -> Option<i64> {
        (!self.is_empty()).then_some(self.first)
    }

    /// The last value.
    pub fn last(&self) -> Option<Sample<'_>> {
        let text = match self.last_text {
            Last::None => return None,
            Last::Numbered(i) => self.texts[i as usize].as_str(),
            Last::Inline(at, len) => inline_text(&self.bytes, at as usize, len as usize),
        };
        Some(Sample {
            ticks: self.last,
            text,
        })
    }

    /// The last value's text when the series shares it (numbered texts are shared).
    pub fn last_shared(&self) -> Option<&ArcStr> {
        match self.last_text {
            Last::Numbered(i) => Some(&self.texts[i as usize]),
            _ => None,
        }
    }

    /// The SampledData `data` of its values over `[start, end]`, one slot per `period_ms`
    /// ([`sampled_data::build`]).
    pub fn sampled_data(&self, start: DateTime<Utc>, end: DateTime<Utc>, period_ms: u64) -> String {
        sampled_data::build_sorted(
            self.iter().map(|v| (v.ticks, v.text)),
            self.text_len + self.len(),
            start,
            end,
            period_ms,
        )
    }

    /// Bytes of every value's text together.
    pub fn text_len(&self) -> usize {
        self.text_len
    }

    /// Bytes its values take (texts numbered are counted once, elsewhere).
    pub fn encoded_len(&self) -> usize {
        self.bytes.len()
    }

    /// Adds `text` at `ticks`. A value at a time already held is not added: of values of one
    /// time the first stays.
    pub fn insert(&mut self, ticks: i64, text: &str) {
        if self.is_empty() || ticks > self.last {
            self.append(ticks, text, None);
        } else if !self.iter().any(|s| s.ticks == ticks) {
            self.rebuild_with(vec![TimeValue::from_ticks(ticks, text.into())]);
        }
    }

    /// Adds values sorted by time (and, within a time, first to last): of values of one time
    /// the one held or added first stays. Room is made for exactly what they take: the
    /// series lives as long as its window, and doubling would leave up to half unused.
    pub fn extend_sorted(&mut self, values: Vec<TimeValue>) {
        let Some(first) = values.first() else {
            return;
        };
        if !self.is_empty() && first.ticks() <= self.last {
            self.rebuild_with(values);
            return;
        }
        let per_value = if self.is_empty() {
            3
        } else {
            self.bytes.len().div_ceil(self.len())
        };
        self.bytes.reserve_exact(per_value * values.len());
        for v in values {
            if self.is_empty() || v.ticks() > self.last {
                self.append(v.ticks(), v.text(), Some(v.shared_text()));
            }
        }
    }

    /// The values as an owned list.
    pub fn to_time_values(&self) -> Vec<TimeValue> {
        self.iter()
            .map(|s| TimeValue::from_ticks(s.ticks, self.share(s.text)))
            .collect()
    }

    /// A series of `values` in any order; of values of one time the first stays.
    pub fn of(values: &[TimeValue]) -> Self {
        let mut s = Self::default();
        for v in values {
            s.insert(v.ticks(), v.text());
        }
        s
    }

    /// The numbered text equal to `text`, else a new shared one.
    fn share(&self, text: &str) -> ArcStr {
        self.texts
            .iter()
            .find(|t| t.as_str() == text)
            .cloned()
            .unwrap_or_else(|| text.into())
    }

    /// Merges `values` (sorted as [`Self::extend_sorted`] wants) into what is held: one pass
    /// over both, then written anew. Out-of-order readings only.
    fn rebuild_with(&mut self, values: Vec<TimeValue>) {
        let old = std::mem::take(self);
        let mut new = values.into_iter().peekable();
        let mut out = Self {
            texts: Vec::with_capacity(old.texts.len()),
            bytes: Vec::with_capacity(old.bytes.len() + 3 * new.len()),
            ..Self::default()
        };
        let add = |out: &mut Self, ticks: i64, text: &str, shared: Option<&ArcStr>| {
            if out.is_empty() || ticks > out.last {
                out.append(ticks, text, shared);
            }
        };
        for h in old.iter() {
            while let Some(n) = new.next_if(|n| n.ticks() < h.ticks) {
                add(&mut out, n.ticks(), n.text(), Some(n.shared_text()));
            }
            let shared = old.texts.iter().find(|t| std::ptr::eq(t.as_str(), h.text));
            add(&mut out, h.ticks, h.text, shared);
        }
        for n in new {
            add(&mut out, n.ticks(), n.text(), Some(n.shared_text()));
        }
        *self = out;
    }

    /// Appends a value later than every one held.
    fn append(&mut self, ticks: i64, text: &str, shared: Option<&ArcStr>) {
        debug_assert!(self.is_empty() || ticks > self.last);
        let delta = if self.is_empty() {
            self.first = ticks;
            0
        } else {
            ticks.wrapping_sub(self.last) as u64
        };
        let (delta, ms) = if delta % TICKS_PER_MS as u64 == 0 {
            (delta / TICKS_PER_MS as u64, MS)
        } else {
            (delta, 0)
        };
        match self.number(text, shared) {
            Some(i) => {
                push_varint(&mut self.bytes, (u64::from(i) << 2) | ms);
                self.last_text = Last::Numbered(i);
            }
            None => {
                push_varint(&mut self.bytes, ((text.len() as u64) << 2) | INLINE | ms);
                let at = self.bytes.len();
                self.bytes.extend_from_slice(text.as_bytes());
                self.last_text = Last::Inline(at as u32, text.len() as u32);
            }
        }
        push_varint(&mut self.bytes, delta);
        self.last = ticks;
        self.len += 1;
        self.text_len += text.len();
    }

    /// The number of `text`, numbering it while there is room.
    fn number(&mut self, text: &str, shared: Option<&ArcStr>) -> Option<u32> {
        // A vital often reads as it did a moment before.
        if let Last::Numbered(i) = self.last_text {
            if self.texts[i as usize].as_str() == text {
                return Some(i);
            }
        }
        // The window's texts are interned: the pointer answers. A text shared anew after its
        // first share was dropped takes a second number, which costs a slot, not a value.
        let found = match shared {
            Some(s) => self.texts.iter().position(|t| ArcStr::ptr_eq(t, s)),
            None => self.texts.iter().position(|t| t.as_str() == text),
        };
        if let Some(i) = found {
            return Some(i as u32);
        }
        (self.texts.len() < DICTIONARY).then(|| {
            self.texts
                .push(shared.cloned().unwrap_or_else(|| text.into()));
            (self.texts.len() - 1) as u32
        })
    }
}

/// The values of a [`Series`], in time order.
#[derive(Clone)]
pub struct Iter<'a> {
    texts: &'a [ArcStr],
    /// The values not yet read.
    rest: &'a [u8],
    ticks: i64,
    left: u32,
}

impl<'a> Iterator for Iter<'a> {
    type Item = Sample<'a>;

    fn next(&mut self) -> Option<Sample<'a>> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let tag = take_varint(&mut self.rest);
        let text = if tag & INLINE == 0 {
            self.texts[(tag >> 2) as usize].as_str()
        } else {
            let (text, rest) = self.rest.split_at((tag >> 2) as usize);
            self.rest = rest;
            std::str::from_utf8(text).expect("UTF-8 as written")
        };
        let delta = take_varint(&mut self.rest);
        let delta = if tag & MS == 0 {
            delta
        } else {
            delta * TICKS_PER_MS as u64
        };
        self.ticks = self.ticks.wrapping_add(delta as i64);
        Some(Sample {
            ticks: self.ticks,
            text,
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left as usize, Some(self.left as usize))
    }
}

impl ExactSizeIterator for Iter<'_> {}

impl<'a> IntoIterator for &'a Series {
    type Item = Sample<'a>;
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

impl PartialEq for Series {
    /// Same values at the same times, however numbered.
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.iter().eq(other.iter())
    }
}

impl Eq for Series {}

impl std::fmt::Debug for Series {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.iter().map(|s| (s.ticks, s.text)))
            .finish()
    }
}

fn inline_text(bytes: &[u8], at: usize, len: usize) -> &str {
    // Written from a `&str` by `append`, and read back at the same boundaries.
    std::str::from_utf8(&bytes[at..at + len]).expect("UTF-8 as written")
}

fn push_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads a varint off the front of `rest` (as [`push_varint`] wrote it).
fn take_varint(rest: &mut &[u8]) -> u64 {
    let mut v = 0u64;
    let mut shift = 0;
    while let Some((&b, tail)) = rest.split_first() {
        *rest = tail;
        v |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            break;
        }
        shift += 7;
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::sampled_data::tests::{near, sorted_values};
    use proptest::prelude::*;

    /// What a series must hold: a set by time where the first value of a time stays.
    fn model(values: &[(i64, String)]) -> Vec<(i64, String)> {
        let mut out: Vec<(i64, String)> = Vec::new();
        for (t, v) in values {
            if let Err(i) = out.binary_search_by_key(t, |(t, _)| *t) {
                out.insert(i, (*t, v.clone()));
            }
        }
        out
    }

    fn held(s: &Series) -> Vec<(i64, String)> {
        s.iter().map(|v| (v.ticks, v.text.to_string())).collect()
    }

    fn times() -> impl Strategy<Value = i64> {
        // Whole milliseconds, odd ticks, and the ends of the range.
        prop_oneof![
            (0i64..5_000).prop_map(|ms| 17_000_000_000_000_000 + ms * TICKS_PER_MS),
            (0i64..50_000_000).prop_map(|t| 17_000_000_000_000_000 + t),
            Just(i64::MIN),
            Just(i64::MAX),
            Just(0),
        ]
    }

    proptest! {
        /// Inserted in any order, in batches or one by one, a series reads back as the set
        /// by time it stands for, with every text as sent: many distinct texts (past the
        /// dictionary), empty ones, non-ASCII ones.
        #[test]
        fn a_series_holds_what_was_added(
            values in proptest::collection::vec((times(), "|[0-9]{1,3}|[0-9]{2}\\.[0-9]{3}|é?x[a-z]{0,20}"), 0..300),
            batch in 1usize..40,
        ) {
            let one_by_one = {
                let mut s = Series::default();
                for (t, v) in &values {
                    s.insert(*t, v);
                }
                s
            };
            prop_assert_eq!(held(&one_by_one), model(&values));
            // As a window adds them: each batch sorted by time, stable within a time.
            let mut batched = Series::default();
            for chunk in values.chunks(batch) {
                let mut c: Vec<TimeValue> = chunk
                    .iter()
                    .map(|(t, v)| TimeValue::from_ticks(*t, v.as_str().into()))
                    .collect();
                c.sort_by_key(TimeValue::ticks);
                batched.extend_sorted(c);
            }
            let mut expect: Vec<(i64, String)> = Vec::new();
            for chunk in values.chunks(batch) {
                let mut c = chunk.to_vec();
                c.sort_by_key(|(t, _)| *t);
                expect.extend(c);
            }
            prop_assert_eq!(held(&batched), model(&expect));
            prop_assert_eq!(batched.len(), model(&expect).len());
            prop_assert_eq!(batched.last().map(|s| (s.ticks, s.text.to_string())), model(&expect).last().cloned());
            prop_assert_eq!(batched.first_ticks(), model(&expect).first().map(|(t, _)| *t));
            prop_assert_eq!(Series::of(&batched.to_time_values()), batched);
        }
    }

    proptest! {
        /// A series (one value per time, the first) builds the SampledData its list does.
        #[test]
        fn a_series_builds_as_its_list((values, span, period) in sorted_values()) {
            let mut firsts = values.clone();
            firsts.dedup_by_key(|v| v.ticks());
            prop_assert_eq!(
                Series::of(&values).sampled_data(near(0), near(span), period),
                sampled_data::build(&firsts, near(0), near(span), period)
            );
        }
    }

    #[test]
    fn a_vital_at_one_hertz_takes_three_bytes_a_value() {
        let mut s = Series::default();
        let texts: Vec<ArcStr> = (60..90).map(|v| ArcStr::from(v.to_string())).collect();
        let base = 17_000_000_000_000_000;
        let values: Vec<TimeValue> = (0..3_600)
            .map(|i| {
                TimeValue::from_ticks(
                    base + i * 1_000 * TICKS_PER_MS,
                    texts[(i % 30) as usize].clone(),
                )
            })
            .collect();
        s.extend_sorted(values);
        assert_eq!(s.len(), 3_600);
        assert!(s.encoded_len() <= 3 * 3_600, "{} bytes", s.encoded_len());
        // Numbered texts are the window's own: shared, not copied.
        assert!(std::ptr::eq(
            s.last_shared().expect("numbered").as_str(),
            texts[29].as_str()
        ));
    }
}
