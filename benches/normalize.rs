//! Normalization throughput (messages/s) for every template set in templates/, on the
//! example messages in datasets/<set>/ (bedside-monitor: one vital, all vitals, an array of
//! 50 readings). Parsing the message bytes and wrapping them as the job does are included.
//! `reference/` runs the same templates on jsonpath-rust alone, for the speed-up ratio.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use serde_json::Value;
use std::hint::black_box;
use std::path::Path;
use vitalflow::mapping::DeviceMapping;

// The same allocator as the binary, so the figures are the job's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn load(set: &str, reference: bool) -> DeviceMapping {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text =
        std::fs::read_to_string(root.join(format!("templates/{set}/devicecontent.json"))).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    if reference {
        DeviceMapping::from_value_reference(&v).unwrap()
    } else {
        DeviceMapping::from_value(&v).unwrap()
    }
}

fn messages(set: &str) -> Vec<(String, Vec<u8>, bool)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("datasets/{set}"));
    let mut out: Vec<(String, Vec<u8>, bool)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            let v: Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
            // Compact bytes, as they arrive from Kafka; events given whole are used verbatim.
            let verbatim = v.get("Body").is_some();
            (
                p.file_stem().unwrap().to_string_lossy().into_owned(),
                serde_json::to_vec(&v).unwrap(),
                verbatim,
            )
        })
        .collect();
    out.sort();
    out
}

fn run(
    m: &DeviceMapping,
    bytes: &[u8],
    verbatim: bool,
    out: &mut Vec<vitalflow::model::Measurement>,
) {
    out.clear();
    if verbatim {
        let event: Value = serde_json::from_slice(bytes).unwrap();
        m.normalize_into(&event, out).unwrap();
    } else {
        // What the job does with a message's payload.
        (m.normalize_message(bytes, Default::default(), Default::default(), out)).unwrap();
    }
}

fn bench(c: &mut Criterion) {
    for set in ["bedside-monitor", "basic", "iot-hub", "calculated"] {
        let mapping = load(set, false);
        let mut g = c.benchmark_group(format!("normalize/{set}"));
        g.throughput(Throughput::Elements(1));
        for (name, bytes, verbatim) in messages(set) {
            let mut out = Vec::new();
            g.bench_function(format!("{name} ({} B)", bytes.len()), |b| {
                b.iter(|| run(&mapping, black_box(&bytes), verbatim, &mut out))
            });
        }
        g.finish();
    }
    let reference = load("bedside-monitor", true);
    let mut g = c.benchmark_group("reference/bedside-monitor");
    g.throughput(Throughput::Elements(1));
    for (name, bytes, verbatim) in messages("bedside-monitor") {
        let mut out = Vec::new();
        g.bench_function(format!("{name} ({} B)", bytes.len()), |b| {
            b.iter(|| run(&reference, black_box(&bytes), verbatim, &mut out))
        });
    }
    g.finish();
    per_measurement(c);
    device_tree(c);
    as_read(c);
}

/// The 7-vital bedside reading as the job reads it from Kafka: with the connector's wrapper
/// (`Properties`, `SystemProperties` from the topic, partition, offset, broker time and
/// key). `normalize_raw` builds the wrapper as borrowed nodes; `maps` is the same through
/// `serde_json` maps, as the job built it before, for the ratio.
fn as_read(c: &mut Criterion) {
    let mapping = load("bedside-monitor", false);
    let (_, bytes, _) = messages("bedside-monitor")
        .into_iter()
        .find(|(n, ..)| n == "reading")
        .unwrap();
    let message = vitalflow::model::RawMessage {
        payload: bytes,
        key: Some(b"BM-0042".to_vec()),
        headers: Vec::new(),
        origin: vitalflow::model::Origin {
            topic: "vitals".into(),
            partition: 3,
            offset: 1_234_567,
            timestamp_ms: Some(1_796_500_000_123),
        },
    };
    let mut g = c.benchmark_group("as-read/bedside-monitor");
    g.throughput(Throughput::Elements(1));
    let mut out = Vec::new();
    g.bench_function("reading, normalize_raw", |b| {
        b.iter(|| {
            out.clear();
            mapping
                .normalize_raw(black_box(&message), &mut out)
                .unwrap()
        })
    });
    g.bench_function("reading, wrapper as serde_json maps", |b| {
        b.iter(|| {
            out.clear();
            let m = black_box(&message);
            let (p, s) = (m.properties(), m.system_properties());
            mapping
                .normalize_message(&m.payload, p, s, &mut out)
                .unwrap()
        })
    });
    g.finish();
}

/// HL7 v2 against JSON per measurement made: a 12-OBX IHE PCD-01 `ORU^R01` (6 measurements,
/// framing stripped and parsed here as in the job) and the bedside-monitor reading with
/// every vital.
fn per_measurement(c: &mut Criterion) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut g = c.benchmark_group("per-measurement");
    let pcd01 = load("ihe-pcd01", false);
    let text = std::fs::read_to_string(root.join("datasets/ihe-pcd01/oru-r01.hl7")).unwrap();
    let framed = format!("\x0b{}\x1c\r", text.trim_end().replace('\n', "\r")).into_bytes();
    let mut out = Vec::new();
    let hl7 = |out: &mut Vec<vitalflow::model::Measurement>, bytes: &[u8]| {
        let text = vitalflow::hl7::text(bytes).unwrap();
        let message = vitalflow::hl7::parse(&text).unwrap();
        out.clear();
        pcd01.normalize_hl7_into(&message, out).unwrap();
    };
    hl7(&mut out, &framed);
    g.throughput(Throughput::Elements(out.len() as u64));
    g.bench_function(format!("hl7 pcd01 oru-r01 ({} B)", framed.len()), |b| {
        b.iter(|| hl7(&mut out, black_box(&framed)))
    });
    let bedside = load("bedside-monitor", false);
    let (_, bytes, verbatim) = messages("bedside-monitor")
        .into_iter()
        .find(|(n, ..)| n == "reading")
        .unwrap();
    run(&bedside, &bytes, verbatim, &mut out);
    g.throughput(Throughput::Elements(out.len() as u64));
    g.bench_function(format!("json bedside reading ({} B)", bytes.len()), |b| {
        b.iter(|| run(&bedside, black_box(&bytes), verbatim, &mut out))
    });
    g.finish();
}

/// What reading the device tree adds per IHE PCD-01 message, against normalizing it: the
/// tree (parse and walk the OBX), read only when a message's tree changed; the check that
/// it did not (parse and raw fingerprint), made for every message; and the tree with the
/// version decision the owner makes (resources built and hashed only when it changed).
fn device_tree(c: &mut Criterion) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut g = c.benchmark_group("device-tree");
    g.throughput(Throughput::Elements(1));
    let pcd01 = load("ihe-pcd01", false);
    let text = std::fs::read_to_string(root.join("datasets/ihe-pcd01/oru-r01.hl7")).unwrap();
    let bytes = text.trim_end().replace('\n', "\r").into_bytes();
    let mut out = Vec::new();
    g.bench_function("normalize (baseline)", |b| {
        b.iter(|| {
            let text = vitalflow::hl7::text(black_box(&bytes)).unwrap();
            let message = vitalflow::hl7::parse(&text).unwrap();
            out.clear();
            pcd01.normalize_hl7_into(&message, &mut out).unwrap();
        })
    });
    let trees = |bytes: &[u8]| {
        let text = vitalflow::hl7::text(bytes).unwrap();
        let message = vitalflow::hl7::parse(&text).unwrap();
        vitalflow::mapping::device_tree::from_pcd01(&message)
    };
    // The job reads the tree from the parse its readings come from: what it adds per
    // message is the raw fingerprint, and the tree only when that changed.
    let text = vitalflow::hl7::text(&bytes).unwrap().into_owned();
    let message = vitalflow::hl7::parse(&text).unwrap();
    g.bench_function("tree (a message whose tree changed)", |b| {
        b.iter(|| vitalflow::mapping::device_tree::from_pcd01(black_box(&message)))
    });
    g.bench_function("raw fingerprint (every message)", |b| {
        b.iter(|| vitalflow::mapping::device_tree::raw_fingerprint(black_box(&message)))
    });
    let mut versions = vitalflow::fhir::device::Versions::default();
    g.bench_function("tree and version decision", |b| {
        b.iter(|| {
            for tree in trees(black_box(&bytes)) {
                let report = vitalflow::fhir::device::DeviceReport {
                    tree,
                    at: 1_764_000_000_000,
                    source: None,
                };
                black_box(versions.admit_report(&report, None));
            }
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(std::time::Duration::from_secs(3)).warm_up_time(std::time::Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
