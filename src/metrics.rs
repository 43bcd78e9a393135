//! Job metrics: counters shared by all workers, served as Prometheus text on `/metrics`,
//! with `/health` for liveness probes.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Counters and gauges of a running job. Cheap to update from hot loops (relaxed atomics).
#[derive(Default)]
pub struct Metrics {
    /// Messages read from the source.
    pub messages_in: AtomicU64,
    /// Measurements produced by normalization.
    pub measurements: AtomicU64,
    /// Messages sent to the dead letters.
    pub dead_letters: AtomicU64,
    /// Observation versions written to NDJSON files.
    pub observations_out: AtomicU64,
    /// Device and DeviceMetric versions passed to the device outputs.
    pub device_versions: AtomicU64,
    /// Device and DeviceMetric versions the FHIR server acknowledged.
    pub fhir_devices: AtomicU64,
    /// Observations the FHIR server acknowledged.
    pub fhir_observations: AtomicU64,
    /// HTTP requests sent to the FHIR server (and its token endpoint), retries included.
    pub fhir_requests: AtomicU64,
    /// FHIR requests retried (429, 5xx, network errors).
    pub fhir_retries: AtomicU64,
    /// Alert events delivered (open, escalated, resolved).
    pub alerts_out: AtomicU64,
    /// Readings the alerting ignored as implausible or not numeric.
    pub alert_inputs_rejected: AtomicU64,
    /// Readings that reached alerting after the event clock had passed their time.
    pub alert_inputs_late: AtomicU64,
    /// Readings waiting in alerting for the event clock to pass them (gauge).
    pub alert_inputs_waiting: AtomicU64,
    /// The same, by (vital, reason).
    pub alert_rejections: Mutex<BTreeMap<(String, &'static str), u64>>,
    /// Rule files reloaded.
    pub rule_reloads: AtomicU64,
    /// Rule file changes refused (the previous rules stay).
    pub rule_reload_errors: AtomicU64,
    /// Observation updates the sink skipped because nothing changed (replays).
    pub observations_unchanged: AtomicU64,
    /// Stored Observations read back from an output to merge into (restart, late data).
    pub observations_restored: AtomicU64,
    /// Rows committed to the lakehouse tables.
    pub lake_rows: AtomicU64,
    /// Delta commits made.
    pub lake_commits: AtomicU64,
    /// Sum of the time lakehouse flushes took (write + commit), microseconds.
    pub lake_commit_us_sum: AtomicU64,
    /// Replayed rows the lakehouse already held, not written again.
    pub lake_rows_skipped: AtomicU64,
    /// Observations that could not be built (values the FHIR template cannot represent).
    pub observation_errors: AtomicU64,
    /// Windows evicted past the horizon.
    pub windows_evicted: AtomicU64,
    /// Open windows held in memory, all workers.
    pub windows_open: AtomicU64,
    /// Measurements waiting in their window for the next version, all workers.
    pub window_values_waiting: AtomicU64,
    /// Offset commits made.
    pub commits: AtomicU64,
    /// Epochs made durable.
    pub epochs_durable: AtomicU64,
    /// Sum of epoch latencies (epoch start to durable), microseconds.
    pub epoch_latency_us_sum: AtomicU64,
    /// When an epoch last became durable (wall clock, ms since the Unix epoch).
    pub last_durable_ms: AtomicU64,
    /// Unread messages per (topic, partition), from librdkafka statistics.
    pub lag: Mutex<BTreeMap<(String, i32), i64>>,
    /// False once the job has failed.
    pub healthy: AtomicBool,
    /// Sinks whose last flush failed (they retry; offsets wait).
    pub failing_sinks: AtomicU64,
    /// Workers not reading because their outputs are `max_durable_lag` behind.
    pub reading_paused: AtomicU64,
    /// Patients alerting holds state for (forgotten once silent beyond the horizon).
    pub alert_patients: AtomicU64,
    /// Epoch latency histogram buckets (seconds), cumulative counts.
    pub epoch_latency_buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    /// Per-message latencies from the Kafka append (message timestamp).
    pub latency: Latencies,
}

/// Largest latency recorded, microseconds (an hour): later is clamped.
const MAX_LATENCY_US: u64 = 3_600_000_000;

fn latency_histogram() -> hdrhistogram::Histogram<u64> {
    hdrhistogram::Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid bounds")
}

/// Per-message latency histograms (microseconds) of the job's paths, measured from the
/// message's Kafka timestamp (its append, or its creation by the simulator).
pub struct Latencies {
    /// Append → normalized measurement.
    pub normalize: Mutex<hdrhistogram::Histogram<u64>>,
    /// Append → every output of the message durable (its offset may be committed).
    pub durable: Mutex<hdrhistogram::Histogram<u64>>,
    /// Epoch opened → all its outputs durable (per epoch, not per message).
    pub epoch: Mutex<hdrhistogram::Histogram<u64>>,
    /// Append of the triggering reading → alert delivered (alerts topic or file).
    pub alert: Mutex<hdrhistogram::Histogram<u64>>,
    /// Watermark past a window's checkpoint (its version emitted) → the version durable,
    /// per Observation output flushed every second or so (NDJSON, FHIR).
    pub version: Mutex<hdrhistogram::Histogram<u64>>,
    /// The same, to the version's lakehouse commit: apart, because the lake commits once
    /// per its own, longer, flush interval (10 s in the embedded default), and one
    /// histogram of both would hold the per-second outputs to the lake's pace.
    pub lake: Mutex<hdrhistogram::Histogram<u64>>,
    /// Alert event emitted by alerting → on the ward board and sent to its live pages.
    pub board: Mutex<hdrhistogram::Histogram<u64>>,
}

impl Default for Latencies {
    fn default() -> Self {
        Self {
            normalize: Mutex::new(latency_histogram()),
            durable: Mutex::new(latency_histogram()),
            epoch: Mutex::new(latency_histogram()),
            alert: Mutex::new(latency_histogram()),
            version: Mutex::new(latency_histogram()),
            lake: Mutex::new(latency_histogram()),
            board: Mutex::new(latency_histogram()),
        }
    }
}

impl Latencies {
    /// The paths, by name.
    pub fn paths(&self) -> [(&'static str, &Mutex<hdrhistogram::Histogram<u64>>); 6] {
        [
            ("normalize", &self.normalize),
            ("version", &self.version),
            ("lake", &self.lake),
            ("durable", &self.durable),
            ("alert", &self.alert),
            ("board", &self.board),
        ]
    }

    /// Records `now - stamp` for every stamp (microseconds since the Unix epoch).
    pub fn record_us(h: &Mutex<hdrhistogram::Histogram<u64>>, now_us: i64, stamps_us: &[i64]) {
        if let Ok(mut h) = h.lock() {
            for t in stamps_us {
                let _ = h.record(((now_us - t).max(1) as u64).min(MAX_LATENCY_US));
            }
        }
    }

    /// Records `now - stamp` for every stamp (milliseconds since the Unix epoch).
    pub fn record(h: &Mutex<hdrhistogram::Histogram<u64>>, now_us: i64, stamps_ms: &[i64]) {
        if stamps_ms.is_empty() {
            return;
        }
        if let Ok(mut h) = h.lock() {
            for t in stamps_ms {
                let us = (now_us - t * 1000).max(1) as u64;
                let _ = h.record(us.min(MAX_LATENCY_US));
            }
        }
    }

    /// Forgets everything recorded (after a warm-up).
    pub fn reset(&self) {
        for (_, h) in self.paths() {
            if let Ok(mut h) = h.lock() {
                h.reset();
            }
        }
    }
}

/// Upper bounds of the epoch latency histogram, seconds.
pub const LATENCY_BUCKETS: [f64; 10] = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

impl Metrics {
    /// A fresh, healthy set of metrics.
    pub fn new() -> Arc<Self> {
        let m = Self::default();
        m.healthy.store(true, Ordering::Relaxed);
        Arc::new(m)
    }

    /// Records the latency of versions from their emission (wall ms; 0: not stamped) to now,
    /// durable in the lakehouse (`lake`) or in another output.
    pub fn record_versions(&self, lake: bool, emitted_ms: impl Iterator<Item = i64>) {
        let stamped: Vec<i64> = emitted_ms.filter(|t| *t > 0).collect();
        let path = if lake {
            &self.latency.lake
        } else {
            &self.latency.version
        };
        Latencies::record(path, chrono::Utc::now().timestamp_micros(), &stamped);
    }

    /// Adds to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Records one lakehouse commit of `rows` rows that took `took`.
    pub fn lake_commit(&self, rows: u64, took: Duration) {
        Self::add(&self.lake_rows, rows);
        Self::add(&self.lake_commits, 1);
        Self::add(&self.lake_commit_us_sum, took.as_micros() as u64);
    }

    /// Records an epoch made durable `latency` after it began.
    pub fn epoch_durable(&self, latency: Duration) {
        self.epochs_durable.fetch_add(1, Ordering::Relaxed);
        self.last_durable_ms.store(
            chrono::Utc::now().timestamp_millis().max(0) as u64,
            Ordering::Relaxed,
        );
        self.epoch_latency_us_sum
            .fetch_add(latency.as_micros() as u64, Ordering::Relaxed);
        if let Ok(mut h) = self.latency.epoch.lock() {
            let _ = h.record((latency.as_micros() as u64).clamp(1, MAX_LATENCY_US));
        }
        let s = latency.as_secs_f64();
        for (i, le) in LATENCY_BUCKETS.iter().enumerate() {
            if s <= *le {
                self.epoch_latency_buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Epoch latency (start to durable) at quantiles, e.g. `[0.5, 0.99]`.
    pub fn epoch_latency_quantiles(&self, q: &[f64]) -> Vec<Duration> {
        let h = self.latency.epoch.lock().ok();
        q.iter()
            .map(|q| {
                h.as_ref().map_or(Duration::ZERO, |h| {
                    Duration::from_micros(h.value_at_quantile(*q))
                })
            })
            .collect()
    }

    /// Not failed, and every sink flushing.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed) && self.failing_sinks.load(Ordering::Relaxed) == 0
    }

    /// Total unread messages over all partitions.
    pub fn total_lag(&self) -> i64 {
        self.lag
            .lock()
            .map_or(0, |l| l.values().map(|v| (*v).max(0)).sum())
    }

    /// Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let counters: [(&str, &str, &AtomicU64); 23] = [
            (
                "vitalflow_alerts_total",
                "Alert events delivered (open, escalated, resolved).",
                &self.alerts_out,
            ),
            (
                "vitalflow_alert_inputs_rejected_total",
                "Readings ignored by alerting as implausible or not numeric.",
                &self.alert_inputs_rejected,
            ),
            (
                "vitalflow_alert_inputs_late_total",
                "Readings that reached alerting after the event clock had passed their time (not judged).",
                &self.alert_inputs_late,
            ),
            (
                "vitalflow_rule_reloads_total",
                "Alert rule files reloaded.",
                &self.rule_reloads,
            ),
            (
                "vitalflow_rule_reload_errors_total",
                "Alert rule file changes refused (previous rules kept).",
                &self.rule_reload_errors,
            ),
            (
                "vitalflow_messages_in_total",
                "Messages read from the source.",
                &self.messages_in,
            ),
            (
                "vitalflow_measurements_total",
                "Measurements produced by normalization.",
                &self.measurements,
            ),
            (
                "vitalflow_dead_letters_total",
                "Messages sent to the dead letters.",
                &self.dead_letters,
            ),
            (
                "vitalflow_observations_out_total",
                "Observation versions written.",
                &self.observations_out,
            ),
            (
                "vitalflow_fhir_devices_total",
                "Device and DeviceMetric versions the FHIR server acknowledged.",
                &self.fhir_devices,
            ),
            (
                "vitalflow_device_versions_total",
                "Device and DeviceMetric versions passed to the device outputs (attribute changes).",
                &self.device_versions,
            ),
            (
                "vitalflow_fhir_observations_total",
                "Observations the FHIR server acknowledged.",
                &self.fhir_observations,
            ),
            (
                "vitalflow_fhir_requests_total",
                "HTTP requests to the FHIR server, retries included.",
                &self.fhir_requests,
            ),
            (
                "vitalflow_fhir_retries_total",
                "FHIR requests retried after 429, 5xx or network errors.",
                &self.fhir_retries,
            ),
            (
                "vitalflow_observations_unchanged_total",
                "Observation updates skipped as unchanged.",
                &self.observations_unchanged,
            ),
            (
                "vitalflow_observations_restored_total",
                "Stored Observations read back from an output to merge late or replayed values into.",
                &self.observations_restored,
            ),
            (
                "vitalflow_lake_rows_total",
                "Rows committed to the lakehouse tables.",
                &self.lake_rows,
            ),
            (
                "vitalflow_lake_commits_total",
                "Delta Lake commits.",
                &self.lake_commits,
            ),
            (
                "vitalflow_lake_flush_microseconds_total",
                "Time lakehouse flushes took (write and commit), microseconds.",
                &self.lake_commit_us_sum,
            ),
            (
                "vitalflow_lake_rows_skipped_total",
                "Replayed rows the lakehouse already held.",
                &self.lake_rows_skipped,
            ),
            (
                "vitalflow_observation_errors_total",
                "Observations that could not be built.",
                &self.observation_errors,
            ),
            (
                "vitalflow_windows_evicted_total",
                "Windows evicted past the horizon.",
                &self.windows_evicted,
            ),
            (
                "vitalflow_offset_commits_total",
                "Offset commits.",
                &self.commits,
            ),
        ];
        for (name, help, c) in counters {
            let _ = writeln!(
                s,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                get(c)
            );
        }
        let _ = writeln!(
            s,
            "# HELP vitalflow_alert_inputs_waiting Readings waiting in alerting for the event clock.\n# TYPE vitalflow_alert_inputs_waiting gauge\nvitalflow_alert_inputs_waiting {}",
            get(&self.alert_inputs_waiting)
        );
        let _ = writeln!(
            s,
            "# HELP vitalflow_alert_patients Patients alerting holds state for.\n# TYPE vitalflow_alert_patients gauge\nvitalflow_alert_patients {}",
            get(&self.alert_patients)
        );
        let _ = writeln!(
            s,
            "# HELP vitalflow_reading_paused Workers not reading: their outputs are max_durable_lag behind.\n# TYPE vitalflow_reading_paused gauge\nvitalflow_reading_paused {}",
            get(&self.reading_paused)
        );
        let _ = writeln!(
            s,
            "# HELP vitalflow_windows_open Open windows in memory.\n# TYPE vitalflow_windows_open gauge\nvitalflow_windows_open {}",
            get(&self.windows_open)
        );
        let _ = writeln!(
            s,
            "# HELP vitalflow_window_values_waiting Measurements waiting in their window for its next version (update_every).\n# TYPE vitalflow_window_values_waiting gauge\nvitalflow_window_values_waiting {}",
            get(&self.window_values_waiting)
        );
        let _ = writeln!(s, "# HELP vitalflow_epoch_latency_seconds Epoch start to all outputs durable.\n# TYPE vitalflow_epoch_latency_seconds histogram");
        for (i, le) in LATENCY_BUCKETS.iter().enumerate() {
            let _ = writeln!(
                s,
                "vitalflow_epoch_latency_seconds_bucket{{le=\"{le}\"}} {}",
                get(&self.epoch_latency_buckets[i])
            );
        }
        let n = get(&self.epochs_durable);
        let _ = writeln!(
            s,
            "vitalflow_epoch_latency_seconds_bucket{{le=\"+Inf\"}} {n}"
        );
        let _ = writeln!(
            s,
            "vitalflow_epoch_latency_seconds_sum {}\nvitalflow_epoch_latency_seconds_count {n}",
            get(&self.epoch_latency_us_sum) as f64 / 1e6
        );
        let _ = writeln!(s, "# HELP vitalflow_latency_seconds Kafka append to the stage, per message.\n# TYPE vitalflow_latency_seconds summary");
        for (path, h) in self.latency.paths() {
            if let Ok(h) = h.lock() {
                for q in [0.5, 0.99, 0.999] {
                    let _ = writeln!(
                        s,
                        "vitalflow_latency_seconds{{path=\"{path}\",quantile=\"{q}\"}} {}",
                        h.value_at_quantile(q) as f64 / 1e6
                    );
                }
                let _ = writeln!(
                    s,
                    "vitalflow_latency_seconds_count{{path=\"{path}\"}} {}",
                    h.len()
                );
            }
        }
        let _ = writeln!(s, "# HELP vitalflow_alert_inputs_rejected Readings ignored by alerting, by vital and reason.\n# TYPE vitalflow_alert_inputs_rejected counter");
        if let Ok(r) = self.alert_rejections.lock() {
            for ((vital, reason), n) in r.iter() {
                let _ = writeln!(
                    s,
                    "vitalflow_alert_inputs_rejected{{vital=\"{vital}\",reason=\"{reason}\"}} {n}"
                );
            }
        }
        let _ = writeln!(s, "# HELP vitalflow_kafka_lag Unread messages per partition.\n# TYPE vitalflow_kafka_lag gauge");
        if let Ok(lag) = self.lag.lock() {
            for ((topic, p), v) in lag.iter() {
                let _ = writeln!(
                    s,
                    "vitalflow_kafka_lag{{topic=\"{topic}\",partition=\"{p}\"}} {v}"
                );
            }
        }
        s
    }
}

/// Serves `/metrics` and `/health` on `address` from a background thread.
pub fn serve(address: &str, metrics: Arc<Metrics>) -> anyhow::Result<std::net::SocketAddr> {
    let server = tiny_http::Server::http(address)
        .map_err(|e| anyhow::anyhow!("cannot serve metrics on {address}: {e}"))?;
    let bound = server
        .server_addr()
        .to_ip()
        .ok_or_else(|| anyhow::anyhow!("metrics address {address} is not an IP address"))?;
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for request in server.incoming_requests() {
                let (status, body, kind) = match request.url() {
                    "/metrics" => (200, metrics.render(), "text/plain; version=0.0.4"),
                    "/health" if metrics.is_healthy() => {
                        (200, "{\"status\":\"ok\"}".to_string(), "application/json")
                    }
                    "/health" => (
                        503,
                        "{\"status\":\"failing\"}".to_string(),
                        "application/json",
                    ),
                    _ => (
                        404,
                        "not found: try /metrics or /health\n".to_string(),
                        "text/plain",
                    ),
                };
                let header =
                    tiny_http::Header::from_bytes("Content-Type", kind).expect("valid header");
                let _ = request.respond(
                    tiny_http::Response::from_string(body)
                        .with_status_code(status)
                        .with_header(header),
                );
            }
        })?;
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histogram_and_lag() {
        let m = Metrics::new();
        Metrics::add(&m.messages_in, 5);
        m.epoch_durable(Duration::from_millis(40));
        m.lag.lock().expect("lock").insert(("vitals".into(), 3), 12);
        let text = m.render();
        assert!(text.contains("vitalflow_messages_in_total 5"), "{text}");
        assert!(
            text.contains("vitalflow_epoch_latency_seconds_bucket{le=\"0.025\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("vitalflow_epoch_latency_seconds_bucket{le=\"0.05\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("vitalflow_kafka_lag{topic=\"vitals\",partition=\"3\"} 12"),
            "{text}"
        );
        assert_eq!(m.total_lag(), 12);
    }
}
