//! `vitalflow bench`: the job under an open-loop load, per-message latency percentiles per
//! path against `benches/targets.toml`, throughput, CPU and memory.
//!
//! The load is the simulator producing into Kafka at a steady rate whatever the job does
//! (open loop), so queueing shows up in the latencies. Latencies are measured from each
//! message's Kafka timestamp (its creation by the producer) to the stage, in HdrHistograms.

pub mod alerts;
pub mod gateway;
pub mod peer;

use crate::config::{JobConfig, SimulatorConfig};
use crate::dataflow::{self, RunOptions};
use crate::metrics::Metrics;
use anyhow::{anyhow, Context as _};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The targets file shipped with the project.
pub const DEFAULT_TARGETS: &str = include_str!("../../benches/targets.toml");

/// Latency limits of one path.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathTarget {
    /// What the path measures.
    pub description: String,
    /// Median limit, milliseconds.
    pub p50_ms: f64,
    /// 99th percentile limit, milliseconds.
    pub p99_ms: f64,
    /// 99.9th percentile limit, milliseconds.
    pub p999_ms: f64,
    /// Counted beyond the lakehouse's flush interval: the job's `[sinks.lake]
    /// flush_interval` is added to p99 and p99.9, half of it to p50 (a version waits for
    /// the next commit, whatever the interval the job chose).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub beyond_lake_flush: bool,
}

impl PathTarget {
    /// The target for a job whose lakehouse commits every `flush` (none: no lakehouse).
    fn for_lake_flush(&self, flush: Option<std::time::Duration>) -> Self {
        let mut t = self.clone();
        if let (true, Some(f)) = (t.beyond_lake_flush, flush) {
            let f = f.as_secs_f64() * 1e3;
            t.p50_ms += f / 2.0;
            t.p99_ms += f;
            t.p999_ms += f;
            t.beyond_lake_flush = false;
        }
        t
    }
}

/// Throughput target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThroughputTarget {
    /// Offered rate when none is given, messages per second.
    pub rate: f64,
    /// Minimum consumed / offered ratio.
    pub min_ratio: f64,
    /// Maximum unread messages at the end.
    pub max_lag: i64,
}

/// `benches/targets.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Targets {
    /// Throughput target.
    pub throughput: ThroughputTarget,
    /// Latency targets by path (`normalize`, `durable`).
    pub paths: BTreeMap<String, PathTarget>,
}

impl Targets {
    /// Parses a targets file; errors name the file and line.
    pub fn parse(text: &str, file: &str) -> Result<Self, crate::config::ConfigErrors> {
        crate::config::error::from_toml("bench targets", text, file)
    }
}

/// Measured latencies of one path.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PathResult {
    /// Path name.
    pub path: String,
    /// Messages measured.
    pub count: u64,
    /// Median, milliseconds.
    pub p50_ms: f64,
    /// 99th percentile, milliseconds.
    pub p99_ms: f64,
    /// 99.9th percentile, milliseconds.
    pub p999_ms: f64,
    /// Maximum, milliseconds.
    pub max_ms: f64,
    /// The target, when the targets file has one for this path.
    pub target: Option<PathTarget>,
    /// Every percentile within its target (and something measured).
    pub pass: bool,
}

/// What the FHIR sink did in the measured window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FhirFigures {
    /// Observations the server acknowledged.
    pub observations: u64,
    /// Acknowledged Observations per second.
    pub observations_per_s: f64,
    /// HTTP requests sent (retries and token requests included).
    pub requests: u64,
    /// Requests per acknowledged Observation.
    pub requests_per_observation: f64,
    /// Requests per normalized measurement.
    pub requests_per_measurement: f64,
}

/// One bench run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// Offered rate, messages per second.
    pub rate: f64,
    /// Measured window, seconds (after the warm-up).
    pub duration_s: f64,
    /// Worker threads.
    pub workers: usize,
    /// Messages consumed in the measured window.
    pub messages: u64,
    /// Consumed messages per second.
    pub throughput_msgs_per_s: f64,
    /// Throughput per worker.
    pub throughput_per_worker: f64,
    /// Unread messages at the end of the window.
    pub lag: i64,
    /// Average cores busy (user + system CPU time / wall time).
    pub cpu_cores: f64,
    /// Peak resident memory of the process, MB.
    pub peak_rss_mb: f64,
    /// Per path latencies.
    pub paths: Vec<PathResult>,
    /// FHIR sink figures, when the job writes to a FHIR server.
    pub fhir: Option<FhirFigures>,
    /// Ward board figures, when the bench kept one.
    pub board: Option<BoardFigures>,
    /// Throughput within target.
    pub throughput_pass: bool,
    /// Every target met.
    pub pass: bool,
}

/// How to run the bench.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Offered rate, messages per second.
    pub rate: f64,
    /// Measured window.
    pub duration: Duration,
    /// Warm-up before measuring.
    pub warmup: Duration,
    /// Worker threads.
    pub workers: usize,
    /// Where histograms, summary and plot go.
    pub out: PathBuf,
    /// Keep the ward board's views, and read them as one open page does (every 5 s).
    pub board: bool,
}

/// What the ward board cost, when the bench kept one.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct BoardFigures {
    /// Patients on the board at the end.
    pub patients: usize,
    /// Size of the board's JSON with one hour of trends (a page reads it once a minute),
    /// bytes.
    pub snapshot_bytes: usize,
    /// Time to build that JSON, ms (median of the reads in the window).
    pub snapshot_ms: f64,
    /// Size of the board's JSON without trends (a page reads it every 5 s), bytes.
    pub values_bytes: usize,
    /// The same, gzipped as the server sends it to browsers, bytes.
    pub values_gzip_bytes: usize,
}

/// CPU seconds (user + system) this process has used so far.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map_or("", |x| x.1);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of stat(5), in clock ticks of 1/100 s on Linux.
    (ticks(11) + ticks(12)) / 100.0
}

/// Peak resident memory so far, MB.
fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// Latency histograms by path name, microseconds.
pub type Histograms = Vec<(String, hdrhistogram::Histogram<u64>)>;

/// Runs the job once under load; returns the summary and the histograms measured.
pub fn run_once(
    base: &JobConfig,
    targets: &Targets,
    opts: &BenchOptions,
) -> anyhow::Result<(Summary, Histograms)> {
    let mut job = base.clone();
    let k = job.kafka().cloned().ok_or_else(|| {
        anyhow!(
            "{}: the bench drives a Kafka source: the job needs [kafka]",
            job.file
        )
    })?;
    job.source = crate::config::SourceConfig::Kafka(k.clone());
    job.set_output_dir(opts.out.join("job-output"));

    job.metrics_address = None;
    let _ = std::fs::remove_dir_all(&job.output_dir);
    // 1 Hz bedside monitors: one device per message per second.
    let sim = SimulatorConfig {
        devices: (opts.rate.round() as u32).max(1),
        rate: opts.rate,
        seed: 1,
        count: None,
        ..SimulatorConfig::default()
    };
    job.feed = k.embedded().then(|| sim.clone());
    let stop = Arc::new(AtomicBool::new(false));
    let metrics = Metrics::new();
    let feeder = if k.embedded() {
        None
    } else {
        // Against real brokers the bench produces itself; the job only consumes.
        let (k, stop, topic) = (k.clone(), stop.clone(), k.topics[0].clone());
        let start = crate::sources::simulator::Simulator::default_start(&sim);
        Some(std::thread::spawn(move || {
            crate::sources::simulator::produce(&sim, &k, &k.brokers, &topic, start, &stop)
        }))
    };
    let board = opts.board.then(|| Arc::new(crate::board::Board::new()));
    // One page open on the board: it reads the views every 5 s, as board.js does.
    let reader = board.clone().map(|b| {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut reads = Vec::new();
            let (mut bytes, mut values, mut values_gzip) = (0, 0, 0);
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                bytes = b.snapshot(60).to_string().len();
                reads.push(t.elapsed().as_secs_f64() * 1e3);
                let v = b.snapshot(0).to_string();
                values = v.len();
                values_gzip = {
                    use std::io::Write as _;
                    let mut z =
                        flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                    let _ = z.write_all(v.as_bytes());
                    z.finish().map_or(0, |z| z.len())
                };
                for _ in 0..50 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            reads.sort_by(f64::total_cmp);
            (
                bytes,
                reads.get(reads.len() / 2).copied().unwrap_or(0.0),
                values,
                values_gzip,
            )
        })
    });
    let runner = {
        let (job, stop, metrics) = (job.clone(), stop.clone(), metrics.clone());
        let run = RunOptions {
            workers: opts.workers,
            processes: 1,
            process: 0,
            hosts: Vec::new(),
            until_end: false,
            board: board.clone(),
            acks_topic: None,
        };
        std::thread::spawn(move || dataflow::run(&job, &run, stop, metrics))
    };
    let wait = |d: Duration, runner: &std::thread::JoinHandle<_>| {
        let until = Instant::now() + d;
        while Instant::now() < until && !runner.is_finished() {
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait(opts.warmup, &runner);
    metrics.latency.reset();
    let counts = |m: &Metrics| {
        [
            &m.messages_in,
            &m.measurements,
            &m.fhir_observations,
            &m.fhir_requests,
        ]
        .map(|c| c.load(Ordering::Relaxed))
    };
    let (c0, cpu0, t0) = (counts(&metrics), cpu_seconds(), Instant::now());
    wait(opts.duration, &runner);
    let elapsed = t0.elapsed().as_secs_f64();
    let c1 = counts(&metrics);
    let [messages, measurements, fhir_observations, fhir_requests] =
        [0, 1, 2, 3].map(|i| c1[i] - c0[i]);
    let fhir = job.fhir.as_ref().map(|_| FhirFigures {
        observations: fhir_observations,
        observations_per_s: fhir_observations as f64 / elapsed.max(1e-9),
        requests: fhir_requests,
        requests_per_observation: fhir_requests as f64 / (fhir_observations.max(1)) as f64,
        requests_per_measurement: fhir_requests as f64 / (measurements.max(1)) as f64,
    });
    let cpu = cpu_seconds() - cpu0;
    let lag = metrics.total_lag();
    // Snapshot before shutdown: the final flush is not part of the steady state.
    let histograms: Histograms = metrics
        .latency
        .paths()
        .iter()
        .map(|(name, h)| {
            let h = h
                .lock()
                .map(|h| h.clone())
                .unwrap_or_else(|p| p.into_inner().clone());
            (name.to_string(), h)
        })
        .collect();
    stop.store(true, Ordering::Relaxed);
    runner
        .join()
        .map_err(|_| anyhow!("the job panicked"))?
        .context("the job failed under load")?;
    if let Some(f) = feeder {
        f.join()
            .map_err(|_| anyhow!("the load generator panicked"))??;
    }
    let board = match (board, reader) {
        (Some(b), Some(r)) => {
            let (snapshot_bytes, snapshot_ms, values_bytes, values_gzip_bytes) =
                r.join().map_err(|_| anyhow!("the board reader panicked"))?;
            let patients = b.state().patients();
            Some(BoardFigures {
                patients,
                snapshot_bytes,
                snapshot_ms,
                values_bytes,
                values_gzip_bytes,
            })
        }
        _ => None,
    };
    // A job writing no Observations to a lakehouse has no `lake` path to hold to one.
    let lake = base.lake.as_ref().filter(|l| l.tables.observations);
    let paths: Vec<PathResult> = histograms
        .iter()
        .map(|(name, h)| {
            let target = match (name.as_str(), lake) {
                ("lake", None) => None,
                _ => (targets.paths.get(name))
                    .map(|t| t.for_lake_flush(lake.map(|l| l.flush_interval))),
            };
            let (p50, p99, p999) = (
                ms(h.value_at_quantile(0.5)),
                ms(h.value_at_quantile(0.99)),
                ms(h.value_at_quantile(0.999)),
            );
            // A path that saw nothing is not a failure when nothing could reach it: no alert
            // fired, or no window checkpoint ([window] update_every) passed in the window.
            let unreachable =
                matches!(name.as_str(), "version" | "lake") && opts.duration < base.update_every;
            let pass = if h.is_empty() {
                target.is_none() || unreachable
            } else {
                target
                    .as_ref()
                    .is_none_or(|t| p50 <= t.p50_ms && p99 <= t.p99_ms && p999 <= t.p999_ms)
            };
            PathResult {
                path: name.clone(),
                count: h.len(),
                p50_ms: p50,
                p99_ms: p99,
                p999_ms: p999,
                max_ms: ms(h.max()),
                target,
                pass,
            }
        })
        .collect();
    let throughput = messages as f64 / elapsed.max(1e-9);
    let throughput_pass =
        throughput >= opts.rate * targets.throughput.min_ratio && lag <= targets.throughput.max_lag;
    let pass = throughput_pass && paths.iter().all(|p| p.pass);
    Ok((
        Summary {
            rate: opts.rate,
            duration_s: elapsed,
            workers: opts.workers,
            messages,
            throughput_msgs_per_s: throughput,
            throughput_per_worker: throughput / opts.workers.max(1) as f64,
            lag,
            cpu_cores: cpu / elapsed.max(1e-9),
            peak_rss_mb: peak_rss_mb(),
            paths,
            fhir,
            board,
            throughput_pass,
            pass,
        },
        histograms,
    ))
}

/// Writes the histograms of a run in the HdrHistogram interval log format (`<path>.hlog`).
pub fn write_histograms(
    out: &Path,
    histograms: &[(String, hdrhistogram::Histogram<u64>)],
    duration: Duration,
) -> anyhow::Result<()> {
    use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};
    use hdrhistogram::serialization::V2Serializer;
    for (name, h) in histograms {
        let mut buf = Vec::new();
        let mut serializer = V2Serializer::new();
        let mut log = IntervalLogWriterBuilder::new()
            .add_comment(&format!(
                "vitalflow bench: Kafka append -> {name}, microseconds"
            ))
            .with_start_time(std::time::SystemTime::now())
            .begin_log_with(&mut buf, &mut serializer)?;
        log.write_histogram(h, Duration::ZERO, duration, Tag::new(name))
            .map_err(|e| anyhow!("cannot encode the {name} histogram: {e:?}"))?;
        let path = out.join(format!("{name}.hlog"));
        std::fs::write(&path, &buf).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// Raises the rate until a p99 target or the throughput target fails, then bisects: returns
/// every run, and the highest passing rate.
pub fn find_max(
    job: &JobConfig,
    targets: &Targets,
    opts: &BenchOptions,
) -> anyhow::Result<(Vec<Summary>, Option<f64>)> {
    let mut runs = Vec::new();
    let (mut good, mut bad): (Option<f64>, Option<f64>) = (None, None);
    let mut rate = opts.rate;
    for _ in 0..12 {
        let (s, _) = run_once(
            job,
            targets,
            &BenchOptions {
                rate,
                ..opts.clone()
            },
        )?;
        let ok = s.throughput_pass
            && s.paths.iter().all(|p| {
                p.target
                    .as_ref()
                    .is_none_or(|t| p.count > 0 && p.p99_ms <= t.p99_ms)
            });
        tracing::info!(
            rate,
            pass = ok,
            throughput = s.throughput_msgs_per_s.round(),
            "find-max trial"
        );
        runs.push(s);
        if ok {
            good = Some(rate);
        } else {
            bad = Some(rate);
        }
        rate = match (good, bad) {
            (Some(g), None) => g * 2.0,
            (None, Some(b)) => b / 2.0,
            (Some(g), Some(b)) if (b - g) / b > 0.1 => (g + b) / 2.0,
            _ => break,
        };
        if rate < 1.0 {
            break;
        }
    }
    Ok((runs, good))
}

/// Latency-vs-throughput plot (p99 of each path against the offered rate), or, for a single
/// run, the latency at each percentile.
pub fn plot(out: &Path, runs: &[Summary]) -> anyhow::Result<PathBuf> {
    use plotters::prelude::*;
    let path = out.join("latency.svg");
    let root = SVGBackend::new(&path, (900, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("plot: {e}"))?;
    let colors = [RED, BLUE, GREEN, MAGENTA];
    let series: Vec<(String, Vec<(f64, f64)>)> = if runs.len() > 1 {
        let mut sorted: Vec<&Summary> = runs.iter().collect();
        sorted.sort_by(|a, b| a.rate.total_cmp(&b.rate));
        let names: Vec<String> = sorted[0].paths.iter().map(|p| p.path.clone()).collect();
        names
            .iter()
            .map(|n| {
                let pts = sorted
                    .iter()
                    .filter_map(|s| {
                        s.paths
                            .iter()
                            .find(|p| &p.path == n)
                            .map(|p| (s.throughput_msgs_per_s, p.p99_ms.max(0.001)))
                    })
                    .collect();
                (format!("{n} p99"), pts)
            })
            .collect()
    } else {
        runs.iter()
            .flat_map(|s| &s.paths)
            .map(|p| {
                let pts = vec![
                    (50.0, p.p50_ms),
                    (99.0, p.p99_ms),
                    (99.9, p.p999_ms),
                    (100.0, p.max_ms),
                ]
                .into_iter()
                .map(|(x, y)| (x, y.max(0.001)))
                .collect();
                (p.path.clone(), pts)
            })
            .collect()
    };
    let xs = series.iter().flat_map(|s| s.1.iter().map(|p| p.0));
    let ys = series.iter().flat_map(|s| s.1.iter().map(|p| p.1));
    let (x0, x1) = xs.fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(x), b.max(x)));
    let (y0, y1) = ys.fold((f64::MAX, f64::MIN), |(a, b), y| (a.min(y), b.max(y)));
    if x0 > x1 {
        return Err(anyhow!("nothing measured to plot"));
    }
    let (title, xdesc) = if runs.len() > 1 {
        ("p99 latency vs throughput", "messages/s consumed")
    } else {
        ("latency by percentile", "percentile")
    };
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("vitalflow bench: {title}"), ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(x0 * 0.95..x1 * 1.05, (y0 * 0.8..y1 * 1.25).log_scale())
        .map_err(|e| anyhow!("plot: {e}"))?;
    chart
        .configure_mesh()
        .x_desc(xdesc)
        .y_desc("milliseconds from Kafka append")
        .draw()
        .map_err(|e| anyhow!("plot: {e}"))?;
    for (i, (name, pts)) in series.iter().enumerate() {
        let c = colors[i % colors.len()];
        chart
            .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))
            .map_err(|e| anyhow!("plot: {e}"))?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| anyhow!("plot: {e}"))?;
    root.present().map_err(|e| anyhow!("plot: {e}"))?;
    drop(chart);
    drop(root);
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_targets_parse_and_bad_ones_name_the_line() {
        let t = Targets::parse(DEFAULT_TARGETS, "benches/targets.toml").expect("valid");
        assert!(t.paths.contains_key("normalize") && t.paths.contains_key("version"));
        // The lakehouse path is held to the job's own commit interval.
        let lake = &t.paths["lake"];
        let ten = lake.for_lake_flush(Some(std::time::Duration::from_secs(10)));
        assert_eq!(
            (ten.p50_ms, ten.p99_ms, ten.p999_ms),
            (lake.p50_ms + 5e3, lake.p99_ms + 1e4, lake.p999_ms + 1e4)
        );
        assert!(
            !ten.beyond_lake_flush,
            "the reported target is the one applied"
        );
        assert_eq!(
            t.paths["version"].for_lake_flush(Some(std::time::Duration::from_secs(10))),
            t.paths["version"]
        );
        let e = Targets::parse(
            "[throughput]\nrate = 1\nmin_ratio = 1\nmax_lag = 1\n[paths.x]\np50 = 3\n",
            "t.toml",
        )
        .expect_err("unknown field");
        assert!(e.to_string().contains("\n  t.toml:6:"), "{e}");
    }
}
