//! NDJSON Observation sink, FHIR bulk-data style: `<dir>/observations/part-*.ndjson`, one
//! Observation per line; a later line for the same id supersedes an earlier one.
//!
//! The sink keeps an Observation store (`fhir::store`): the last Observation it wrote per id,
//! into which each version merges as the IoMT connector merges into a stored Observation.
//! What the store does not hold it reads back from the committed part files (through their
//! day index), so a replay or a days-old backlog merges into what was already written.

use super::files::{days_index, parts_on_days, PartWriter};
use super::Sink;
use crate::fhir::store::{ObservationStore, StoredObservations, WindowUpdate};
use crate::metrics::Metrics;
use crate::time::parse_timestamp;
use anyhow::Context as _;
use chrono::{DateTime, Utc};
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// One worker's Observation output.
pub struct ObservationSink {
    writer: PartWriter,
    store: ObservationStore,
    parts: CommittedParts,
}

/// The committed Observation parts, read back by event day through their indexes.
struct CommittedParts {
    dir: PathBuf,
    owns: Box<dyn Fn(&str) -> bool + Send>,
}

/// What a stored line must be read for before it is parsed whole.
#[derive(serde::Deserialize)]
struct Head<'a> {
    #[serde(borrow)]
    id: Option<std::borrow::Cow<'a, str>>,
    #[serde(rename = "effectivePeriod")]
    period: Option<HeadPeriod<'a>>,
    #[serde(rename = "effectiveDateTime", borrow)]
    instant: Option<std::borrow::Cow<'a, str>>,
    device: Option<HeadDevice<'a>>,
}

#[derive(serde::Deserialize)]
struct HeadPeriod<'a> {
    #[serde(borrow)]
    start: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    end: Option<std::borrow::Cow<'a, str>>,
}

#[derive(serde::Deserialize)]
struct HeadDevice<'a> {
    #[serde(borrow)]
    identifier: Option<HeadIdentifier<'a>>,
}

#[derive(serde::Deserialize)]
struct HeadIdentifier<'a> {
    #[serde(borrow)]
    value: Option<std::borrow::Cow<'a, str>>,
}

impl StoredObservations for CommittedParts {
    fn read_days(
        &mut self,
        days: &BTreeSet<i32>,
        keep: &dyn Fn(&str, Option<DateTime<Utc>>) -> bool,
    ) -> anyhow::Result<Vec<(Value, i64)>> {
        // Later lines supersede earlier ones (NDJSON numbers no versions): the newest line
        // of each wanted Observation, parsed whole at the end.
        let mut newest: HashMap<String, String> = HashMap::new();
        for part in parts_on_days(&self.dir, days) {
            let f = std::fs::File::open(&part)
                .with_context(|| format!("cannot read {}", part.display()))?;
            for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
                let line = line.with_context(|| format!("cannot read {}", part.display()))?;
                // A damaged committed part is not something a retry mends: the job stops,
                // naming the line, rather than write a version that forgets what it held.
                let head: Head = serde_json::from_str(&line).map_err(|e| {
                    anyhow::Error::new(super::Fatal(format!(
                        "{}:{}: not a JSON Observation ({e})",
                        part.display(),
                        i + 1
                    )))
                })?;
                let time =
                    |t: &Option<std::borrow::Cow<str>>| t.as_deref().and_then(parse_timestamp);
                let start = head.period.as_ref().and_then(|p| time(&p.start));
                let end = head.period.as_ref().and_then(|p| time(&p.end));
                let (start, end) = (start.or(time(&head.instant)), end.or(time(&head.instant)));
                let device = head
                    .device
                    .as_ref()
                    .and_then(|d| d.identifier.as_ref())
                    .and_then(|i| i.value.as_deref());
                let (Some(id), Some(start)) = (head.id.as_deref(), start) else {
                    continue;
                };
                if days.contains(&crate::time::day_of(&start))
                    && device.is_some_and(&self.owns)
                    && keep(id, end)
                {
                    newest.insert(id.to_string(), line);
                }
            }
        }
        newest
            .into_values()
            .map(|line| Ok((serde_json::from_str(&line)?, 0)))
            .collect()
    }
}

impl ObservationSink {
    /// Opens `<dir>/observations` for `worker`; `owns(device)` tells which stored
    /// Observations this worker is responsible for (the window exchange's routing). What
    /// was written before is read back when an update needs it, not at start.
    pub fn new(
        dir: &Path,
        worker: usize,
        owns: impl Fn(&str) -> bool + Send + 'static,
        horizon: Duration,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let dir = dir.join("observations");
        let writer = PartWriter::new(&dir, worker)?;
        Ok(Self {
            writer,
            store: ObservationStore::new("ndjson", worker, horizon, metrics),
            parts: CommittedParts {
                dir,
                owns: Box::new(owns),
            },
        })
    }
}

impl Sink<WindowUpdate> for ObservationSink {
    fn write(&mut self, epoch: u64, item: WindowUpdate) -> anyhow::Result<()> {
        self.store.add(epoch, item, &mut self.parts)
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        let result = self.write_pending();
        if result.is_err() {
            // Nothing of a failed flush is kept: the retry writes every pending update again.
            self.writer.abort();
        }
        result
    }
}

impl ObservationSink {
    fn write_pending(&mut self) -> anyhow::Result<()> {
        self.store.build(&mut self.parts)?;
        let mut days = BTreeSet::new();
        // Written one at a time (`Change::write_json`): the flush holds no resources.
        let mut line = Vec::new();
        for c in self.store.changes() {
            line.clear();
            c.write_json(&mut line);
            self.writer.write_line(c.epoch, &line)?;
            days.insert(c.day());
        }
        self.writer.commit_with_index(Some(&days_index(&days)))?;
        self.store.committed();
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::dataflow::window::Windows;
    use crate::fhir::observation::period_start;
    use crate::mapping::FhirMapping;
    use crate::model::Measurement;
    use crate::sinks::files::{committed_parts, parse_days_index};
    use chrono::DurationRound as _;
    use std::sync::atomic::Ordering;

    /// A heart-rate reading `at`, and the window update it makes.
    pub(crate) fn hr_at(w: &mut Windows, at: DateTime<Utc>, v: &str) -> WindowUpdate {
        w.add(&heart_rate(at, v), at.timestamp_millis(), 0);
        w.flush().pop().expect("one window")
    }

    /// Heart rate `v` of device BM-1 (patient P-1) at `at`.
    pub(crate) fn heart_rate(at: DateTime<Utc>, v: &str) -> Measurement {
        Measurement {
            type_name: "heartRate".into(),
            device_id: "BM-1".into(),
            patient_id: Some("P-1".into()),
            encounter_id: None,
            correlation_id: None,
            occurrence_time: at,
            properties: vec![("hr".into(), v.into())],
            received_ms: None,
            source: None,
        }
    }

    /// The bedside-monitor FHIR mapping the restore tests build Observations with.
    pub(crate) fn bedside_fhir() -> Arc<FhirMapping> {
        Arc::new(
            FhirMapping::from_file(Path::new("templates/bedside-monitor/fhirmapping.json"))
                .expect("fhir"),
        )
    }

    /// The dates the restore tests run at: ten days before today, and years either side of
    /// it, so that no test holds only while the calendar is near its data.
    pub(crate) fn test_dates() -> Vec<DateTime<Utc>> {
        let ten_days_ago = (Utc::now() - chrono::Duration::days(10))
            .duration_trunc(chrono::Duration::hours(1))
            .expect("hour");
        vec![
            ten_days_ago,
            parse_timestamp("2019-03-01T10:00:00Z").expect("time"),
            parse_timestamp("2036-05-01T10:00:00Z").expect("time"),
        ]
    }

    /// Values (no E) of the newest line for the window starting `start`.
    fn data_of(dir: &Path, start: DateTime<Utc>) -> String {
        let mut found = None;
        for part in committed_parts(&dir.join("observations")) {
            let text = std::fs::read_to_string(part).expect("read");
            for line in text.lines() {
                let o: Value = serde_json::from_str(line).expect("json");
                if period_start(&o) == Some(start) {
                    found = Some(o);
                }
            }
        }
        found.expect("an Observation of the window")["valueSampledData"]["data"]
            .as_str()
            .expect("data")
            .split(' ')
            .filter(|v| *v != "E")
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn after_a_restart_every_update_keeps_what_was_written_before_at_any_date() {
        let fhir = bedside_fhir();
        let horizon = Duration::from_secs(7200);
        let s = chrono::Duration::seconds;
        for t0 in test_dates() {
            let dir = tempfile::tempdir().expect("tmp");
            let open = || {
                ObservationSink::new(dir.path(), 0, |_| true, horizon, Metrics::new())
                    .expect("sink")
            };
            let mut sink = open();
            let mut w = Windows::new(fhir.clone(), horizon, Duration::from_secs(300));
            hr_at(&mut w, t0, "70");
            sink.write(1, hr_at(&mut w, t0 + s(1), "71"))
                .expect("write");
            sink.flush().expect("flush");
            assert_eq!(data_of(dir.path(), t0), "70 71", "{t0}");

            // Restart: the window state is gone, the sink reads its store back; a part
            // whose index is lost (or an older writer's, without one) is read all the same.
            for e in std::fs::read_dir(dir.path().join("observations")).expect("dir") {
                let p = e.expect("entry").path();
                if p.extension().is_some_and(|x| x == "index") {
                    std::fs::remove_file(p).expect("rm");
                }
            }
            let mut sink = open();
            let mut w = Windows::new(fhir.clone(), horizon, Duration::from_secs(300));
            sink.write(2, hr_at(&mut w, t0 + s(2), "72"))
                .expect("write");
            sink.flush().expect("flush");
            assert_eq!(
                data_of(dir.path(), t0),
                "70 71 72",
                "merged after restart at {t0}"
            );
            sink.write(3, hr_at(&mut w, t0 + s(3), "73"))
                .expect("write");
            sink.flush().expect("flush");
            assert_eq!(
                data_of(dir.path(), t0),
                "70 71 72 73",
                "merged again at {t0}"
            );

            // Three days later by event time, a late reading of the first window: the
            // store and the windows evicted it long ago; it merges into the stored version.
            let later = t0 + chrono::Duration::days(3);
            sink.write(4, hr_at(&mut w, later, "90")).expect("write");
            sink.flush().expect("flush");
            assert_eq!(
                w.evict(later.timestamp_millis()),
                1,
                "the first window is gone from the job"
            );
            sink.write(5, hr_at(&mut w, t0 + s(4), "74"))
                .expect("write");
            sink.flush().expect("flush");
            assert_eq!(
                data_of(dir.path(), t0),
                "70 71 72 73 74",
                "late data at {t0}"
            );
            assert_eq!(data_of(dir.path(), later), "90");
        }
    }

    #[test]
    fn hourly_versions_wait_as_their_window_values_and_are_written_as_built_at_once() {
        // A checkpoint's versions wait for the flush as their windows' values, not as
        // resources; written, they are what building each as it came gives.
        use crate::fhir::{compact_json, observation};
        let fhir = bedside_fhir();
        let horizon = Duration::from_secs(7200);
        let t0 = test_dates()[1];
        let dir = tempfile::tempdir().expect("tmp");
        let mut sink =
            ObservationSink::new(dir.path(), 0, |_| true, horizon, Metrics::new()).expect("sink");
        let mut w = Windows::new(fhir, horizon, Duration::from_secs(300));
        let built = |u: &WindowUpdate, amended: bool| {
            let mut o = observation::build(&u.template, &u.type_name, &u.group, &u.subjects())
                .expect("built");
            if amended {
                o["status"] = "amended".into();
            }
            compact_json::to_vec(&o)
        };
        let first = hr_at(&mut w, t0, "70");
        let expected = built(&first, false);
        sink.write(1, first).expect("write");
        let second = hr_at(&mut w, t0 + chrono::Duration::seconds(1), "71");
        let expected_second = built(&second, true);
        sink.write(2, second).expect("write");
        let changes = sink.store.changes();
        assert_eq!(changes.len(), 2);
        assert!(changes.iter().all(|c| !c.holds_resource()));
        assert_eq!(&*changes[0].json(), &expected[..]);
        assert_eq!(&*changes[1].json(), &expected_second[..]);
        sink.flush().expect("flush");
        let lines: Vec<String> = committed_parts(&dir.path().join("observations"))
            .iter()
            .flat_map(|p| {
                let text = std::fs::read_to_string(p).expect("read");
                text.lines().map(str::to_string).collect::<Vec<_>>()
            })
            .collect();
        let want = [expected, expected_second].map(|j| String::from_utf8(j).expect("utf8"));
        assert_eq!(lines, want);
    }

    #[test]
    fn a_window_opened_again_merges_what_its_last_life_wrote() {
        // The store keeps no bytes of an Observation its live window holds every value of;
        // the window evicted (the store not told) and opened again must still merge.
        let fhir = bedside_fhir();
        let horizon = Duration::from_secs(7200);
        let s = chrono::Duration::seconds;
        let t0 = test_dates()[1];
        let dir = tempfile::tempdir().expect("tmp");
        let metrics = Metrics::new();
        let mut sink =
            ObservationSink::new(dir.path(), 0, |_| true, horizon, metrics.clone()).expect("sink");
        let mut w = Windows::new(fhir, horizon, Duration::from_secs(300));
        hr_at(&mut w, t0, "70");
        sink.write(1, hr_at(&mut w, t0 + s(1), "71"))
            .expect("write");
        sink.flush().expect("flush");
        sink.write(2, hr_at(&mut w, t0 + s(2), "72"))
            .expect("write");
        sink.flush().expect("flush");
        assert_eq!(data_of(dir.path(), t0), "70 71 72");
        let restored = || metrics.observations_restored.load(Ordering::Relaxed);
        assert_eq!(
            restored(),
            0,
            "the live window's versions read nothing back"
        );

        let past = t0 + s(3 * 3600 + 1);
        assert_eq!(w.evict(past.timestamp_millis()), 1, "the window is gone");
        sink.write(3, hr_at(&mut w, t0 + s(3), "73"))
            .expect("write");
        sink.flush().expect("flush");
        assert_eq!(data_of(dir.path(), t0), "70 71 72 73");
        assert_eq!(restored(), 1, "read back from the committed parts");
    }

    #[test]
    fn a_damaged_part_stops_the_job_naming_its_line() {
        let dir = tempfile::tempdir().expect("tmp");
        let fhir = bedside_fhir();
        let horizon = Duration::from_secs(7200);
        let t0 = test_dates()[1];
        let mut sink =
            ObservationSink::new(dir.path(), 0, |_| true, horizon, Metrics::new()).expect("sink");
        let mut w = Windows::new(fhir.clone(), horizon, Duration::from_secs(300));
        sink.write(1, hr_at(&mut w, t0, "70")).expect("write");
        sink.flush().expect("flush");
        let part = committed_parts(&dir.path().join("observations"))
            .pop()
            .expect("a part");
        std::fs::write(&part, "{\"id\": \"x\"}\n{not json\n").expect("damage");
        let mut sink =
            ObservationSink::new(dir.path(), 0, |_| true, horizon, Metrics::new()).expect("sink");
        let mut w = Windows::new(fhir, horizon, Duration::from_secs(300));
        // Read back when the version is built (write), or retried at the flush.
        let e = sink
            .write(2, hr_at(&mut w, t0, "71"))
            .and_then(|()| sink.flush())
            .expect_err("a damaged part");
        assert!(e.downcast_ref::<super::super::Fatal>().is_some(), "{e:#}");
        assert!(
            format!("{e:#}").contains(&format!("{}:2:", part.display())),
            "{e:#}"
        );
    }

    #[test]
    fn a_part_index_lists_days_and_an_empty_one_counts_as_none() {
        let days: BTreeSet<i32> = [20_778, 20_779].into();
        let text = days_index(&days);
        assert_eq!(text, "2026-11-21\n2026-11-22\n");
        assert_eq!(parse_days_index(&text), Some(days));
        assert_eq!(parse_days_index(""), None, "an empty index is no index");
        assert_eq!(parse_days_index("21/11/2026\n"), None);
    }
}
