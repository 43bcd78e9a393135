//! A resource's compact JSON, byte for byte what `serde_json::to_vec` writes, without
//! checking long plain strings one byte at a time.
//!
//! An hourly SampledData Observation is mostly its `data` string (3,600 slots at 1 Hz, 7 KB
//! or more): `serde_json` looks every byte of a string up in its escape table, which was 7 %
//! of a replay's instructions (`valgrind --tool=callgrind`). Here a string is checked in one
//! pass the compiler vectorizes and copied whole when nothing in it needs escaping; anything
//! else (numbers, strings that need escapes) is written by `serde_json` itself.

use serde_json::Value;

/// `value` as compact JSON, the bytes `serde_json::to_vec` writes.
pub fn to_vec(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    write(&mut out, value);
    out
}

/// Appends `value` as compact JSON to `out`.
pub fn write_into(out: &mut Vec<u8>, value: &Value) {
    write(out, value);
}

/// `value` as compact JSON in a box of exactly its length, written through `scratch`: a
/// buffer kept by the caller has room for the next resource already, where a new one grows
/// by doubling and is shrunk to fit after (3 % of a replay's instructions, reallocating).
pub fn to_boxed(value: &Value, scratch: &mut Vec<u8>) -> Box<[u8]> {
    scratch.clear();
    write(scratch, value);
    scratch.as_slice().into()
}

fn write(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Number(n) => serde_json::to_writer(&mut *out, n).expect("a number serializes"),
        Value::String(s) => string(out, s),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write(out, item);
            }
            out.push(b']');
        }
        Value::Object(members) => {
            out.push(b'{');
            for (i, (key, item)) in members.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                string(out, key);
                out.push(b':');
                write(out, item);
            }
            out.push(b'}');
        }
    }
}

/// Appends `s` as a JSON string.
pub(super) fn string(out: &mut Vec<u8>, s: &str) {
    // What serde_json escapes: control characters, the quote and the backslash. A fold
    // without an early exit, so that it is vectorized.
    let escapes = s
        .bytes()
        .fold(false, |e, b| e | (b < 0x20) | (b == b'"') | (b == b'\\'));
    if escapes {
        serde_json::to_writer(&mut *out, s).expect("a string serializes");
    } else {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn values() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            // Quotes, backslashes, control characters, non-ASCII and plain text.
            "(\\PC|[\"\\\\\u{0}-\u{1f}\u{7f}/E ]){0,40}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::vec(("(\\PC|[\"\\\\\u{1}])*", inner), 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn writes_what_serde_json_writes(v in values(), before in values()) {
            let expected = serde_json::to_vec(&v).expect("serializes");
            prop_assert_eq!(&to_vec(&v), &expected);
            // Through a buffer that held another resource before.
            let mut scratch = to_vec(&before);
            prop_assert_eq!(&*to_boxed(&v, &mut scratch), &expected[..]);
        }
    }

    #[test]
    fn an_observation_with_sampled_data_is_written_as_serde_json_writes_it() {
        let data = "72 E 75.5 E ".repeat(900) + "-1e3";
        let o = json!({"resourceType": "Observation", "id": "a\"b\\c\u{1}",
            "valueSampledData": {"origin": {"value": 0}, "period": 1000, "dimensions": 1,
            "data": data}, "effectivePeriod": {"start": "2026-12-06T09:00:00Z"},
            "note": [{"text": "ünïcode ✓"}], "x": [], "y": {}, "z": [1.5, -2, null, true]});
        assert_eq!(to_vec(&o), serde_json::to_vec(&o).expect("serializes"));
    }
}
