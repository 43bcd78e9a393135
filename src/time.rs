//! Event-time parsing and the timestamp formats the IoMT connector writes.

use chrono::{DateTime, NaiveDateTime, SecondsFormat, TimeZone, Utc};

/// Parses a device timestamp: RFC 3339 / ISO 8601, with or without offset (no offset means UTC,
/// as the connector converts unspecified times with `ToUniversalTime` on UTC hosts).
pub fn parse_timestamp(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    parse_utc_fast(s.as_bytes()).or_else(|| parse_general(s))
}

/// The UTC shape nearly every device sends, `YYYY-MM-DDTHH:MM:SS[.f{1,9}]Z`, read digit by
/// digit: chrono's RFC 3339 parser took 470 instructions a time (1 % of a replay's,
/// `valgrind --tool=callgrind`). `None` for anything else (offsets, a leap second, more
/// than nine fractional digits, an invalid date), which [`parse_general`] then reads.
fn parse_utc_fast(b: &[u8]) -> Option<DateTime<Utc>> {
    if b.len() < 20 || b.len() > 30 || b[b.len() - 1] != b'Z' {
        return None;
    }
    let num = |from: usize, to: usize| -> Option<u32> {
        b[from..to].iter().try_fold(0u32, |n, &c| {
            c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0'))
        })
    };
    let seps = [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':')];
    if seps.iter().any(|&(i, c)| b[i] != c) {
        return None;
    }
    let nanos = match &b[19..b.len() - 1] {
        [] => 0,
        [b'.', digits @ ..] if (1..=9).contains(&digits.len()) => {
            num(20, 20 + digits.len())? * 10u32.pow(9 - digits.len() as u32)
        }
        _ => return None,
    };
    let (second, minute, hour) = (num(17, 19)?, num(14, 16)?, num(11, 13)?);
    if second > 59 {
        return None;
    }
    let date = chrono::NaiveDate::from_ymd_opt(num(0, 4)? as i32, num(5, 7)?, num(8, 10)?)?;
    let time = chrono::NaiveTime::from_hms_nano_opt(hour, minute, second, nanos)?;
    Some(Utc.from_utc_datetime(&date.and_time(time)))
}

/// Every form [`parse_timestamp`] takes, through chrono.
fn parse_general(s: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    for fmt in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
        "%m/%d/%Y %H:%M:%S",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, fmt) {
            return Some(Utc.from_utc_datetime(&t));
        }
    }
    if let Ok(t) = DateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f%z") {
        return Some(t.with_timezone(&Utc));
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Some(Utc.from_utc_datetime(&d.and_hms_opt(0, 0, 0)?));
    }
    None
}

/// RFC 3339 with only the fractional digits needed (the measurement wire format).
pub fn format_rfc3339(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// .NET round-trip format (`o`): 7 fractional digits and `Z`, as the connector writes FHIR periods.
///
/// Written digit by digit: every Observation version formats its period, and chrono's
/// format machinery took 4,500 instructions per time (1.5 % of a replay's,
/// `valgrind --tool=callgrind`); this takes about a tenth. Years chrono writes otherwise
/// (before 0, after 9999) and leap seconds go through chrono.
pub fn format_dotnet(t: &DateTime<Utc>) -> String {
    let Some([year, month, day, hour, minute, second]) = civil(t) else {
        return format_dotnet_chrono(t);
    };
    let mut b = *b"0000-00-00T00:00:00.0000000Z";
    put(&mut b[0..4], year);
    put(&mut b[5..7], month);
    put(&mut b[8..10], day);
    put(&mut b[11..13], hour);
    put(&mut b[14..16], minute);
    put(&mut b[17..19], second);
    put(&mut b[20..27], t.timestamp_subsec_nanos() / 100);
    String::from_utf8(b.to_vec()).expect("ASCII digits")
}

/// Year, month, day, hour, minute and second of `t` where the digit writers take it: a
/// four-digit year and no leap second (chrono writes the others).
fn civil(t: &DateTime<Utc>) -> Option<[u32; 6]> {
    use chrono::{Datelike as _, Timelike as _};
    let year = t.year();
    (t.timestamp_subsec_nanos() < 1_000_000_000 && (0..=9999).contains(&year)).then(|| {
        [
            year as u32,
            t.month(),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
        ]
    })
}

/// Writes `v` in decimal into all of `out`, zero-padded (the highest digits dropped when it
/// does not fit).
fn put(out: &mut [u8], mut v: u32) {
    for b in out.iter_mut().rev() {
        *b = b'0' + (v % 10) as u8;
        v /= 10;
    }
}

/// [`format_dotnet`] by chrono's formatter: every year and leap seconds.
fn format_dotnet_chrono(t: &DateTime<Utc>) -> String {
    let ticks = t.timestamp_subsec_nanos() / 100;
    format!("{}.{:07}Z", t.format("%Y-%m-%dT%H:%M:%S"), ticks)
}

/// Appends `t` as `yyyyMMddHHmmss` plus a literal `Z` (the connector's identifier segment
/// format) to `out`, digit by digit: every new window names its period with two of them,
/// and chrono's format machinery took 2,300 instructions a time (1 % of a replay's,
/// `valgrind --tool=callgrind`). Years chrono writes otherwise (before 0, after 9999) and
/// leap seconds go through chrono.
pub fn push_id_segment(out: &mut String, t: &DateTime<Utc>) {
    let Some([year, month, day, hour, minute, second]) = civil(t) else {
        out.push_str(&format_id_segment_chrono(t));
        return;
    };
    let mut b = *b"00000000000000Z";
    put(&mut b[0..4], year);
    put(&mut b[4..6], month);
    put(&mut b[6..8], day);
    put(&mut b[8..10], hour);
    put(&mut b[10..12], minute);
    put(&mut b[12..14], second);
    out.push_str(std::str::from_utf8(&b).expect("ASCII digits"));
}

/// [`push_id_segment`] by chrono's formatter: every year and leap seconds.
fn format_id_segment_chrono(t: &DateTime<Utc>) -> String {
    format!("{}Z", t.format("%Y%m%d%H%M%S"))
}

/// One .NET tick (100 ns): the connector ends hourly and daily periods one tick before the next.
pub fn tick() -> chrono::Duration {
    chrono::Duration::nanoseconds(100)
}

/// Days since the Unix epoch of a UTC time: how outputs partition Observations and alerts by
/// event date (the lakehouse's `date`, the NDJSON part index).
pub fn day_of(t: &DateTime<Utc>) -> i32 {
    t.date_naive()
        .signed_duration_since(chrono::NaiveDate::default())
        .num_days() as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`push_id_segment`] alone.
    fn format_id_segment(t: &DateTime<Utc>) -> String {
        let mut out = String::new();
        push_id_segment(&mut out, t);
        out
    }

    proptest::proptest! {
        /// Any string of the fast path's shape, valid or not, reads as chrono reads it.
        #[test]
        fn the_fast_path_reads_what_chrono_reads(
            s in "[0-9]{4}-[01][0-9]-[0-3][0-9]T[0-2][0-9]:[0-6][0-9]:[0-6][0-9](\\.[0-9]{0,11})?[Zz]?"
        ) {
            proptest::prop_assert_eq!(parse_timestamp(&s), parse_general(&s));
        }

        /// Times of any year chrono writes in four digits, to the nanosecond.
        #[test]
        fn the_fast_path_reads_every_time_written_in_utc(
            secs in -62_135_596_800i64..253_402_300_799,
            nanos in 0u32..1_000_000_000,
            digits in 0usize..=9,
        ) {
            let t = DateTime::from_timestamp(secs, nanos).expect("in range");
            let mut s = t.format("%Y-%m-%dT%H:%M:%S").to_string();
            if digits > 0 {
                s.push_str(&format!(".{:09}", nanos)[..=digits]);
            }
            s.push('Z');
            proptest::prop_assert!(parse_utc_fast(s.as_bytes()).is_some(), "{}", s);
            proptest::prop_assert_eq!(parse_timestamp(&s), parse_general(&s));
        }
    }

    #[test]
    fn parses_common_device_formats() {
        let a = parse_timestamp("2021-07-13T17:29:01.061144Z").unwrap();
        assert_eq!(format_rfc3339(&a), "2021-07-13T17:29:01.061144Z");
        let b = parse_timestamp("2019-01-01T08:00:00").unwrap();
        assert_eq!(format_dotnet(&b), "2019-01-01T08:00:00.0000000Z");
        let c = parse_timestamp("2019-01-01T10:00:00+02:00").unwrap();
        assert_eq!(format_id_segment(&c), "20190101080000Z");
        assert!(parse_timestamp("not a time").is_none());
        assert!(parse_timestamp("").is_none());
    }

    proptest::proptest! {
        #[test]
        fn dotnet_and_id_formats_are_chronos(
            secs in -70_000_000_000i64..260_000_000_000,
            nanos in 0u32..1_000_000_000,
            leap: bool,
        ) {
            // Years -250 to 10208; a leap second is a minute's last second run over.
            let (secs, nanos) = if leap {
                (secs - secs.rem_euclid(60) + 59, nanos + 1_000_000_000)
            } else {
                (secs, nanos)
            };
            let t = DateTime::from_timestamp(secs, nanos).expect("in chrono's range");
            proptest::prop_assert_eq!(format_dotnet(&t), format_dotnet_chrono(&t));
            proptest::prop_assert_eq!(format_id_segment(&t), format_id_segment_chrono(&t));
        }
    }

    #[test]
    fn dotnet_format_keeps_ticks() {
        let t = parse_timestamp("2019-01-01T00:59:59.9999999Z").unwrap();
        assert_eq!(format_dotnet(&t), "2019-01-01T00:59:59.9999999Z");
    }
}
