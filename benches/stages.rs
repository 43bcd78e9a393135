//! Criterion micro-benchmarks of the job's hot stages after normalization: the window update
//! per measurement, building / merging an hourly SampledData Observation, and alerting per
//! measurement (the adult rules with NEWS2 on simulated bedside monitors).

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
                device_id: format!("BM-{d:04}").into(),
                patient_id: Some(format!("P-{d:04}").into()),
                encounter_id: None,
                correlation_id: None,
                occurrence_time: start + chrono::Duration::seconds(s),
                properties: vec![("hr".into(), format!("{}", 60 + (s + d as i64) % 40).into())],
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
                    w.add(&m, at, 0);
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
        w.add(&m, at, 0);
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

/// Simulated bedside monitors (heart rate, SpO2 and respiratory rate each second, blood
/// pressure and temperature less often, a few artifacts), normalized as the job does.
fn bedside_measurements(devices: u32, seconds: u64) -> Vec<Measurement> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let device = vitalflow::mapping::DeviceMapping::from_file(
        &root.join("templates/bedside-monitor/devicecontent.json"),
    )
    .expect("device mapping");
    let cfg = vitalflow::config::SimulatorConfig {
        devices,
        count: Some(u64::from(devices) * seconds),
        artifacts: 0.002,
        acute: 1,
        ..Default::default()
    };
    let start = vitalflow::time::parse_timestamp("2026-11-21T10:00:00Z").expect("time");
    let mut out = Vec::new();
    for m in vitalflow::sources::simulator::Simulator::new(&cfg, start, (0, 1)) {
        (device.normalize_message(&m.payload, Default::default(), Default::default(), &mut out))
            .expect("normalizes");
    }
    out.sort_by_key(|m| m.occurrence_time);
    out
}

fn alerting(c: &mut Criterion) {
    use vitalflow::dataflow::patient_alerts::PatientAlerts;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let vitals = Arc::new(vitalflow::anomaly::rules::Vitals::new(&fhir()));
    let rules = Arc::new(
        vitalflow::anomaly::rules::load(&root.join("templates/alerts/adult-vitals.toml"), &vitals)
            .expect("rules"),
    );
    let ms = bedside_measurements(200, 300);
    let end = ms
        .last()
        .expect("readings")
        .occurrence_time
        .timestamp_millis();
    let mut g = c.benchmark_group("alerting");
    g.sample_size(10);
    g.throughput(Throughput::Elements(ms.len() as u64));
    g.bench_function(
        format!("200 monitors x 5 min ({} measurements)", ms.len()),
        |b| {
            b.iter_batched(
                || ms.clone(),
                |ms| {
                    let metrics = Arc::new(vitalflow::metrics::Metrics::default());
                    let mut state = PatientAlerts::new(rules.clone(), vitals.clone(), metrics);
                    let mut alerts = Vec::new();
                    // As the operator takes them: a second of readings, then the clock.
                    let mut fuel = usize::MAX;
                    let mut second = i64::MIN;
                    for m in ms {
                        let at = m.occurrence_time.timestamp_millis() / 1000;
                        if at != second && second != i64::MIN {
                            state.aim(second * 1000);
                            state.run(&mut fuel, &mut alerts);
                        }
                        second = at;
                        state.add(std::sync::Arc::new(m));
                    }
                    state.aim(end);
                    state.run(&mut fuel, &mut alerts);
                    alerts
                },
                BatchSize::LargeInput,
            )
        },
    );
    g.finish();
}

criterion_group!(benches, window_update, observation_build_merge, alerting);
criterion_main!(benches);
