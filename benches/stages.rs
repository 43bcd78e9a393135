//! Criterion micro-benchmarks of the job's hot stages after normalization: the window update
//! per measurement, and building / merging an hourly SampledData Observation.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use vitalflow::dataflow::window::Windows;
use vitalflow::fhir::observation;
use vitalflow::mapping::FhirMapping;
use vitalflow::model::Measurement;

// The same allocator as the binary, so the figures are the job's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn fhir() -> Arc<FhirMapping> {
    Arc::new(
        FhirMapping::from_file(
            &Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("templates/bedside-monitor/fhirmapping.json"),
        )
        .expect("mapping"),
    )
}

/// An hour of 1 Hz heart rates from `devices` devices, in arrival order.
fn readings(devices: usize, seconds: i64) -> Vec<Measurement> {
    let start = vitalflow::time::parse_timestamp("2026-11-21T10:00:00Z").expect("time");
    (0..seconds)
        .flat_map(|s| {
            (0..devices).map(move |d| Measurement {
                type_name: "heartRate".into(),
                device_id: format!("BM-{d:04}"),
                patient_id: Some(format!("P-{d:04}")),
                encounter_id: None,
                correlation_id: None,
                occurrence_time: start + chrono::Duration::seconds(s),
                properties: vec![("hr".into(), format!("{}", 60 + (s + d as i64) % 40))],
                received_ms: None,
                source: None,
            })
        })
        .collect()
}

fn window_update(c: &mut Criterion) {
    let ms = readings(100, 60);
    let mut g = c.benchmark_group("window");
    g.throughput(Throughput::Elements(ms.len() as u64));
    g.bench_function("add 6000 measurements, 100 devices", |b| {
        b.iter_batched(
            || {
                (
                    Windows::new(fhir(), Duration::from_secs(7200), Duration::from_secs(300)),
                    ms.clone(),
                )
            },
            |(mut w, ms)| {
                for m in ms {
                    let at = m.occurrence_time.timestamp_millis();
                    w.add(m, at, 0);
                }
                w.flush()
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

fn observation_build_merge(c: &mut Criterion) {
    let mut w = Windows::new(fhir(), Duration::from_secs(7200), Duration::from_secs(300));
    for m in readings(1, 3600) {
        let at = m.occurrence_time.timestamp_millis();
        w.add(m, at, 0);
    }
    let full = w.flush().pop().expect("one window");
    let stored = observation::build(
        &full.template,
        &full.type_name,
        &full.group,
        &full.subjects(),
    )
    .expect("build");
    let mut g = c.benchmark_group("observation");
    g.throughput(Throughput::Elements(3600));
    g.bench_function("build hourly SampledData (3600 values)", |b| {
        b.iter(|| {
            observation::build(
                &full.template,
                &full.type_name,
                &full.group,
                &full.subjects(),
            )
            .expect("build")
        })
    });
    g.bench_function("merge hourly window into stored", |b| {
        b.iter(|| observation::merge(&full.template, &full.group, &stored).expect("merge"))
    });
    g.finish();
}

criterion_group!(benches, window_update, observation_build_merge);
criterion_main!(benches);
