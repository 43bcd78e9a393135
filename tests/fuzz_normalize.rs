//! Byte-level fuzzing of parse + normalize, the path every Kafka message takes: whatever the
//! bytes, no panic, and every failure is a dead letter that says why.
//!
//! Mutations of real messages of every template set, JSON and HL7 v2 (IHE PCD-01) alike (bit
//! flips, truncation, splices, byte runs, JSON tokens, HL7 delimiters, escapes, segment
//! separators and MLLP framing bytes), plus hostile shapes: invalid UTF-8, 200-deep nesting,
//! a 10 MB array, huge and odd numbers, odd timestamps, MSH headers with odd encoding
//! characters. `VITALFLOW_FUZZ_CASES` sets the number of random cases (default 100,000),
//! spread evenly over the template sets.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use std::path::Path;
use std::sync::Arc;
use vitalflow::dataflow::normalize::normalize;
use vitalflow::mapping::{DeviceMapping, FhirMapping};
use vitalflow::sources::{Origin, RawMessage};

const SETS: [&str; 5] = [
    "basic",
    "iot-hub",
    "calculated",
    "bedside-monitor",
    "ihe-pcd01",
];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Each template set's mappings and its example messages.
fn sets() -> Vec<(DeviceMapping, FhirMapping, Vec<Vec<u8>>)> {
    SETS.iter()
        .map(|set| {
            let dir = root().join("templates").join(set);
            let read = |f: &str| std::fs::read_to_string(dir.join(f)).expect("template");
            let device =
                DeviceMapping::from_text(&read("devicecontent.json"), None).expect("device");
            let fhir = FhirMapping::from_text(&read("fhirmapping.json"), None).expect("fhir");
            let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(root().join("datasets").join(set))
                .expect("dataset")
                .map(|e| std::fs::read(e.expect("entry").path()).expect("read"))
                .collect();
            seeds.sort();
            (device, fhir, seeds)
        })
        .collect()
}

/// Normalizes `payload`: Ok, or a dead letter with a stage and a reason. Panics fail the test.
fn check(device: &DeviceMapping, fhir: &FhirMapping, payload: Vec<u8>) {
    let message = RawMessage {
        payload,
        key: None,
        headers: Vec::new(),
        origin: Origin {
            topic: Arc::from("fuzz"),
            partition: 0,
            offset: 0,
            timestamp_ms: Some(1_764_000_000_000),
        },
    };
    let mut out = Vec::new();
    if let Err(d) = normalize(
        device,
        fhir,
        chrono::Duration::minutes(5),
        chrono::Utc::now(),
        message,
        &mut out,
    ) {
        assert!(!d.error.trim().is_empty(), "a dead letter without a reason");
        assert!(!d.stage.is_empty(), "a dead letter without a stage");
    }
}

/// A mutation of a seed message.
#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Truncate(usize),
    Insert(usize, Vec<u8>),
    Splice(usize, usize, usize),
}

fn mutate(seed: &[u8], ms: &[Mutation]) -> Vec<u8> {
    let mut b = seed.to_vec();
    for m in ms {
        let n = b.len().max(1);
        match m {
            Mutation::Flip(i, bit) => {
                if !b.is_empty() {
                    let i = i % n;
                    b[i] ^= 1 << (bit % 8);
                }
            }
            Mutation::Truncate(i) => b.truncate(i % n),
            Mutation::Insert(i, bytes) => {
                let i = i % (b.len() + 1);
                b.splice(i..i, bytes.iter().copied());
            }
            Mutation::Splice(from, len, to) => {
                let from = from % n;
                let end = (from + len % 64).min(b.len());
                let chunk: Vec<u8> = b.get(from..end).unwrap_or_default().to_vec();
                let to = to % (b.len() + 1);
                b.splice(to..to, chunk);
            }
        }
    }
    b
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let tokens = prop_oneof![
        Just(b"{".to_vec()),
        Just(b"}".to_vec()),
        Just(b"[".to_vec()),
        Just(b"\"".to_vec()),
        Just(b"\\u0000".to_vec()),
        Just(b"\xff\xfe".to_vec()),
        Just(b"1e309".to_vec()),
        Just(b"-0".to_vec()),
        Just(b"18446744073709551616".to_vec()),
        Just(b"null".to_vec()),
        Just(b"\"9999-99-99T99:99:99Z\"".to_vec()),
        Just(b"\"2026-02-30T10:00:00+25:00\"".to_vec()),
        // HL7 v2: delimiters, escapes, segment separators, headers, MLLP framing bytes.
        Just(b"|".to_vec()),
        Just(b"^".to_vec()),
        Just(b"~".to_vec()),
        Just(b"&".to_vec()),
        Just(b"\\".to_vec()),
        Just(b"\r".to_vec()),
        Just(b"\n".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b"\\F\\".to_vec()),
        Just(b"\\X0D0A\\".to_vec()),
        Just(b"\\E\\".to_vec()),
        Just(b"\\H\\".to_vec()),
        Just(b"MSH|^~\\&|".to_vec()),
        Just(b"MSH|".to_vec()),
        Just(b"\rOBX|1|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC|1.1.1.1|".to_vec()),
        Just(b"\rPID|||".to_vec()),
        Just(b"20261121100000+0000".to_vec()),
        Just(b"99999999999999+9999".to_vec()),
        Just(vec![0x0b]),
        Just(vec![0x1c, 0x0d]),
        prop::collection::vec(any::<u8>(), 0..16),
    ];
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Flip(i, b)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), tokens).prop_map(|(i, t)| Mutation::Insert(i, t)),
        (any::<usize>(), any::<usize>(), any::<usize>())
            .prop_map(|(a, b, c)| Mutation::Splice(a, b, c)),
    ]
}

#[test]
fn random_bytes_never_panic_and_every_failure_is_a_dead_letter_with_a_reason() {
    let cases: u32 = std::env::var("VITALFLOW_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let sets = sets();
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    // A set, then one of its messages: each set gets its share, whatever its seed count.
    let strategy = (
        0..sets.len(),
        any::<usize>(),
        prop::collection::vec(mutation(), 1..6),
        prop::bool::weighted(0.05),
        prop::collection::vec(any::<u8>(), 0..256),
    );
    runner
        .run(&strategy, |(s, m, ms, raw, bytes)| {
            let (device, fhir, messages) = &sets[s];
            let m = m % messages.len();
            let payload = if raw {
                bytes
            } else {
                mutate(&messages[m], &ms)
            };
            check(device, fhir, payload);
            Ok(())
        })
        .expect("no input panics");
}

#[test]
fn hostile_shapes_are_dead_letters_not_crashes() {
    let sets = sets();
    let deep = format!(
        "{{\"deviceId\":\"d\",\"x\":{}1{}}}",
        "[".repeat(200),
        "]".repeat(200)
    );
    let deep_objects = format!(
        "{}{}",
        "{\"a\":".repeat(200),
        "1".to_string() + &"}".repeat(200)
    );
    let mut big = String::from("{\"deviceId\":\"d\",\"heartRate\":[");
    while big.len() < 10 << 20 {
        big.push_str("123456789,");
    }
    big.push_str("0]}");
    let shapes: Vec<Vec<u8>> = vec![
        deep.into_bytes(),
        deep_objects.into_bytes(),
        big.into_bytes(),
        b"\xc3\x28\xa0\xa1".to_vec(),
        br#"{"deviceId":"d","patientId":"p","heartRate":1e400,"endDate":"2026-11-21T10:00:00Z"}"#.to_vec(),
        br#"{"deviceId":"d","patientId":"p","heartRate":-1.7976931348623157e308,"endDate":"0000-01-01T00:00:00Z"}"#.to_vec(),
        br#"{"deviceId":"d","patientId":"p","heartRate":99999999999999999999999999,"endDate":"+275760-09-13T00:00:00Z"}"#.to_vec(),
        br#"{"deviceId":"d","patientId":"p","heartRate":60,"endDate":"1970-01-01T00:00:00.000000001Z"}"#.to_vec(),
        br#"{"deviceId":"d","patientId":"p","heartRate":60,"endDate":"2026-11-21T10:00:00"}"#.to_vec(),
        br#"{"deviceId":"\u0000","patientId":"\ud800","heartRate":"60","endDate":1764000000}"#.to_vec(),
        Vec::new(),
        b"null".to_vec(),
        // HL7 v2 headers with odd or missing encoding characters and segment separators.
        b"MSH".to_vec(),
        b"MSH|".to_vec(),
        b"MSH|^~\\&".to_vec(),
        b"MSH||||||||||||".to_vec(),
        b"MSH|\r\r\rOBX|||||||".to_vec(),
        b"MSH|||\rPID|\rOBX|1|NM|||\x00\xff".to_vec(),
        b"MSH^~\\&|".to_vec(),
        format!("MSH|^~\\&|A|B|C|D|20261121100005+0000||ORU^R01|1|P|2.6\r{}", "OBX|1|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC|1.1.1.1|97|\r".repeat(50_000)).into_bytes(),
        format!("MSH|^~\\&|A|B|C|D|20261121100005+0000||ORU^R01|1|P|2.6\rOBX|1|NM|{}|", "^".repeat(100_000)).into_bytes(),
        b"MSH|^~\\&|A|B|C|D|20261121100005+0000||ORU^R01|1|P|2.6\rOBX|1|NM|150456^X^MDC|1|\\X\\\\XZZ\\\\".to_vec(),
    ];
    for (device, fhir, _) in &sets {
        for s in &shapes {
            check(device, fhir, s.clone());
        }
    }
}
