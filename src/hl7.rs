//! The HL7 v2 wire format, apart from any mapping: recognising a message in a payload (with
//! or without MLLP framing), its delimiters, segments, fields, components and escape
//! sequences read in place, and its timestamps. The MLLP and MQTT gateways read messages
//! with it; the `Hl7v2Content` device template (`mapping::hl7`) builds on it.
//!
//! Hand-written rather than the `hl7-parser` crate because that crate allocates a vector
//! per field, repetition, component and subcomponent: it took 50 of the 56 µs a 12-OBX
//! PCD-01 message cost (9× the JSON bedside reading per measurement,
//! `cargo bench --bench normalize -- per-measurement`); figures in docs/hl7.md.

use chrono::{DateTime, FixedOffset, NaiveDate, TimeZone, Utc};
use std::borrow::Cow;

/// MLLP framing: start block (VT), end block (FS) and the carriage return after it.
pub const START_BLOCK: u8 = 0x0b;
/// MLLP end block.
pub const END_BLOCK: u8 = 0x1c;

/// The HL7 text of a payload when it is an HL7 v2 message (it starts with `MSH`, with or
/// without MLLP framing); None for anything else (JSON).
pub fn text(payload: &[u8]) -> Option<Cow<'_, str>> {
    let mut p = payload.trim_ascii_start();
    if p.first() == Some(&START_BLOCK) {
        p = &p[1..];
    }
    if !p.starts_with(b"MSH") {
        return None;
    }
    let end = p.iter().position(|b| *b == END_BLOCK).unwrap_or(p.len());
    let p = p[..end].trim_ascii_end();
    // HL7 v2 defaults to ASCII; 8-bit bytes of other charsets survive as replacement
    // characters rather than failing the message.
    Some(String::from_utf8_lossy(p))
}

/// The delimiters of a message (MSH-1 and MSH-2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Separators {
    /// Between fields (`|`).
    pub field: char,
    /// Between components (`^`).
    pub component: char,
    /// Between repetitions (`~`).
    pub repetition: char,
    /// Starts and ends an escape sequence (`\`).
    pub escape: char,
    /// Between subcomponents (`&`).
    pub subcomponent: char,
}

/// An HL7 v2 message read in place: its delimiters and its segments as slices of the text.
#[derive(Debug, Clone)]
pub struct Hl7<'m> {
    /// The delimiters.
    pub separators: Separators,
    segments: Vec<&'m str>,
}

/// Fills `out` with the first pieces of `s` split at `sep` (the rest stay as they were), as
/// `str::split` would. A byte loop for ASCII separators: HL7 pieces are a few bytes long, and
/// `str::split`'s searcher set up per piece was 59 % of reading a message's device tree
/// (perf). `cargo bench --bench normalize -- device-tree`: normalizing the PCD-01 example
/// 10.19 -> 7.64 us, its raw fingerprint 5.17 -> 3.19 us; one `memchr` iterator over the
/// whole string instead measured 12 % slower than this loop on these short pieces.
fn split_into<'a>(s: &'a str, sep: char, out: &mut [&'a str]) {
    if out.is_empty() {
        return;
    }
    if !sep.is_ascii() {
        for (slot, piece) in out.iter_mut().zip(s.split(sep)) {
            *slot = piece;
        }
        return;
    }
    let sep = sep as u8;
    let (mut start, mut k) = (0, 0);
    for (i, &b) in s.as_bytes().iter().enumerate() {
        if b == sep {
            // An ASCII byte never falls inside a multi-byte character: `i` is a boundary.
            out[k] = &s[start..i];
            k += 1;
            start = i + 1;
            if k == out.len() {
                return;
            }
        }
    }
    out[k] = &s[start..];
}

/// Parses HL7 v2 text; an error names the segment and what is wrong with it.
pub fn parse(text: &str) -> Result<Hl7<'_>, String> {
    let bad = |n: usize, what: String| format!("not an HL7 v2 message: segment {n}: {what}");
    let mut chars = text.chars();
    if text.get(..3) != Some("MSH") {
        return Err(bad(1, "the message must start with an MSH segment".into()));
    }
    chars.nth(2);
    let field = chars
        .next()
        .ok_or_else(|| bad(1, "MSH ends before MSH-1 (the field separator)".into()))?;
    let encoding: Vec<char> = chars
        .take_while(|c| *c != field && *c != '\r' && *c != '\n')
        .collect();
    if field.is_alphanumeric() || field.is_whitespace() {
        return Err(bad(
            1,
            format!("MSH-1 \"{field}\" cannot be a field separator"),
        ));
    }
    let distinct = |cs: &[char]| cs.iter().enumerate().all(|(i, c)| !cs[..i].contains(c));
    if encoding.len() < 4
        || encoding.len() > 5
        || !distinct(&encoding)
        || encoding.contains(&field)
        || encoding
            .iter()
            .any(|c| c.is_alphanumeric() || c.is_whitespace())
    {
        return Err(bad(
            1,
            format!(
                "MSH-2 \"{}\" must be four distinct encoding characters (component, repetition, escape, subcomponent), e.g. ^~\\&",
                encoding.iter().collect::<String>()
            ),
        ));
    }
    let separators = Separators {
        field,
        component: encoding[0],
        repetition: encoding[1],
        escape: encoding[2],
        subcomponent: encoding[3],
    };
    // Segments end with CR (the standard) or LF; splitting on one byte is a memchr scan.
    let segments: Vec<&str> = if text.contains('\n') {
        text.split(['\r', '\n']).filter(|s| !s.is_empty()).collect()
    } else {
        text.split('\r').filter(|s| !s.is_empty()).collect()
    };
    for (i, s) in segments.iter().enumerate() {
        let name = s.get(..3).unwrap_or(s);
        let named = name.len() == 3
            && name
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
            && s[name.len()..].chars().next().is_none_or(|c| c == field);
        if !named {
            let shown: String = s.chars().take(12).collect();
            return Err(bad(
                i + 1,
                format!("\"{shown}\" does not start with a segment name (three capitals) and a field separator"),
            ));
        }
    }
    Ok(Hl7 {
        separators,
        segments,
    })
}

impl<'m> Hl7<'m> {
    /// The segments, in order, as (name, text).
    pub fn segments(&self) -> impl Iterator<Item = (&'m str, &'m str)> + '_ {
        self.segments.iter().map(|s| (&s[..3], *s))
    }

    /// The first segment named `name`.
    pub fn segment(&self, name: &str) -> Option<&'m str> {
        self.segments.iter().copied().find(|s| s.starts_with(name))
    }

    /// Field `n` of a segment (HL7 numbering: MSH-1 is the field separator itself), as
    /// written; empty when absent.
    pub fn field(&self, segment: &'m str, n: usize) -> &'m str {
        let sep = self.separators.field;
        let msh = segment.starts_with("MSH");
        match (msh, n) {
            (_, 0) => "",
            (true, 1) => segment.get(3..3 + sep.len_utf8()).unwrap_or(""),
            (true, n) => segment.split(sep).nth(n - 1).unwrap_or(""),
            (false, n) => segment.split(sep).nth(n).unwrap_or(""),
        }
    }

    /// The first `N` fields of a (non-MSH) segment, split once: `fields[n]` is field n, the
    /// segment name field 0, absent ones empty.
    pub fn fields<const N: usize>(&self, segment: &'m str) -> [&'m str; N] {
        let mut out = [""; N];
        split_into(segment, self.separators.field, &mut out);
        out
    }

    /// The first `N` components of a field's first repetition, split once: `components[k]`
    /// is component k + 1.
    pub fn components<const N: usize>(&self, field: &'m str) -> [&'m str; N] {
        let mut first = [""];
        split_into(field, self.separators.repetition, &mut first);
        let mut out = [""; N];
        split_into(first[0], self.separators.component, &mut out);
        out
    }

    /// Component `n` (from 1) of a field's first repetition, as written.
    pub fn component(&self, field: &'m str, n: usize) -> &'m str {
        let mut first = [""];
        split_into(field, self.separators.repetition, &mut first);
        let mut pieces = [""; 8];
        match n.saturating_sub(1) {
            i if i < pieces.len() => {
                split_into(first[0], self.separators.component, &mut pieces);
                pieces[i]
            }
            i => first[0]
                .split(self.separators.component)
                .nth(i)
                .unwrap_or(""),
        }
    }

    /// `raw` with escape sequences decoded; borrowed when it has none.
    pub fn decode(&self, raw: &'m str) -> Cow<'m, str> {
        let s = self.separators;
        if !raw.contains(s.escape) {
            return Cow::Borrowed(raw);
        }
        let mut out = String::with_capacity(raw.len());
        let mut rest = raw;
        while let Some(i) = rest.find(s.escape) {
            out.push_str(&rest[..i]);
            let after = &rest[i + s.escape.len_utf8()..];
            let Some(j) = after.find(s.escape) else {
                // An unmatched escape character stands for itself.
                out.push_str(&rest[i..]);
                return Cow::Owned(out);
            };
            let seq = &after[..j];
            match seq {
                "F" => out.push(s.field),
                "S" => out.push(s.component),
                "T" => out.push(s.subcomponent),
                "R" => out.push(s.repetition),
                "E" => out.push(s.escape),
                x if x.starts_with('X') => {
                    let bytes: Vec<u8> = (1..x.len())
                        .step_by(2)
                        .filter_map(|k| x.get(k..k + 2))
                        .filter_map(|h| u8::from_str_radix(h, 16).ok())
                        .collect();
                    out.push_str(&String::from_utf8_lossy(&bytes));
                }
                // Highlighting and formatting commands (\H\, \N\, .br) carry no value.
                _ => {}
            }
            rest = &after[j + s.escape.len_utf8()..];
        }
        out.push_str(rest);
        Cow::Owned(out)
    }
}

/// An HL7 DTM (`YYYY[MM[DD[HH[MM[SS[.S...]]]]]][+/-ZZZZ]`); without an offset it is UTC.
pub fn timestamp(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    let (body, offset) = match s.find(['+', '-']) {
        Some(i) => (&s[..i], Some(&s[i..])),
        None => (s, None),
    };
    let (digits, fraction) = body.split_once('.').unwrap_or((body, ""));
    if digits.len() < 4 || digits.len() % 2 != 0 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let num = |a: usize, b: usize, default: u32| -> u32 {
        digits
            .get(a..b)
            .and_then(|d| d.parse().ok())
            .unwrap_or(default)
    };
    let date = NaiveDate::from_ymd_opt(num(0, 4, 0) as i32, num(4, 6, 1), num(6, 8, 1))?;
    let mut micros = 0u32;
    if !fraction.is_empty() {
        if fraction.len() > 6 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        micros = format!("{fraction:0<6}").parse().ok()?;
    }
    let time = date.and_hms_micro_opt(num(8, 10, 0), num(10, 12, 0), num(12, 14, 0), micros)?;
    let seconds = match offset {
        None => 0,
        Some(o) if o.len() == 5 && o[1..].bytes().all(|b| b.is_ascii_digit()) => {
            let v = o[1..3].parse::<i32>().ok()? * 3600 + o[3..5].parse::<i32>().ok()? * 60;
            if o.starts_with('-') {
                -v
            } else {
                v
            }
        }
        Some(_) => return None,
    };
    let tz = FixedOffset::east_opt(seconds)?;
    tz.from_local_datetime(&time)
        .single()
        .map(|t| t.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_into_is_str_split() {
        let cases = [
            "",
            "a",
            "|",
            "a|b",
            "|a||b|",
            "é|ü^x|",
            "OBX|1|NM|150456^X^MDC|1.1.1.1|97",
        ];
        for text in cases {
            for sep in ['|', '^', '~', 'é'] {
                for n in 0..8 {
                    let mut got = vec!["-"; n];
                    split_into(text, sep, &mut got);
                    let mut want = vec!["-"; n];
                    for (slot, piece) in want.iter_mut().zip(text.split(sep)) {
                        *slot = piece;
                    }
                    assert_eq!(got, want, "{text:?} at {sep:?} into {n}");
                }
            }
        }
    }
}
