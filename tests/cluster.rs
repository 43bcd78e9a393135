//! Two processes × two workers against one Kafka broker process (Tansu, an Apache Kafka
//! compatible broker, in memory on 127.0.0.1) produce what one process produces.
//!
//! Tansu: tests/common/tansu.rs.

mod common;

use common::tansu::Broker;
use common::*;

/// Seeded bedside monitors and a labelled hypoxia scenario starting `scenario_ago` minutes
/// ago, in event-time order, as a live ward would send them.
fn ward_with_hypoxia(
    devices: u32,
    count: u64,
    seed: u64,
    minutes_ago: i64,
    scenario_ago: i64,
) -> Vec<vitalflow::sources::simulator::SimMessage> {
    let mut msgs = simulated(devices, count, seed, minutes_ago);
    let text =
        std::fs::read_to_string(root().join("datasets/scenarios/hypoxia.toml")).expect("spec");
    let start = chrono::Utc::now() - chrono::Duration::minutes(scenario_ago);
    let start = chrono::DateTime::from_timestamp(start.timestamp(), 0).expect("whole seconds");
    let scenario =
        vitalflow::sources::scenario::generate(&text, "hypoxia", start).expect("scenario");
    msgs.extend(scenario.messages);
    msgs.sort_by_key(|m| m.event_time);
    msgs
}

/// Runs `job` to the end of its input as 2 processes × 2 workers on loopback.
fn run_as_two_processes(dir: &std::path::Path, job: &std::path::Path) {
    let hosts = dir.join("hosts.txt");
    std::fs::write(
        &hosts,
        format!("127.0.0.1:{}\n127.0.0.1:{}\n", free_port(), free_port()),
    )
    .expect("hosts");
    let mut procs: Vec<Running> = (0..2)
        .map(|i| {
            Running::spawn(
                vitalflow()
                    .args(["run", "--until-end", "--workers", "2", "--processes", "2"])
                    .args(["--process", &i.to_string(), "--hosts"])
                    .arg(&hosts)
                    .arg("--job")
                    .arg(job),
            )
        })
        .collect();
    for p in &mut procs {
        let status = p.wait();
        assert!(status.success(), "process exited {status:?}");
    }
}

#[test]
fn two_processes_of_two_workers_equal_one_process() {
    let broker = Broker::start();
    broker.create_topic("ward-vitals", 4);
    let brokers = broker.brokers();
    // With labelled desaturations, for alerts to compare.
    let msgs = ward_with_hypoxia(8, 480, 21, 15, 70);
    produce_sim(&producer(&brokers), "ward-vitals", &msgs);
    let rules = format!(
        "[anomaly]\nrules = \"{}\"\n",
        root().join("templates/alerts/adult-vitals.toml").display()
    );

    let multi = tempfile::tempdir().expect("tmp");
    let job = kafka_job(multi.path(), &brokers, "ward-vitals", "multi", &rules);
    run_as_two_processes(multi.path(), &job);

    let single = tempfile::tempdir().expect("tmp");
    let job = kafka_job(single.path(), &brokers, "ward-vitals", "single", &rules);
    run_ok(
        vitalflow()
            .args(["run", "--until-end", "--workers", "1", "--job"])
            .arg(&job),
    );

    let a = latest(&observation_lines(&multi.path().join("out")));
    let b = latest(&observation_lines(&single.path().join("out")));
    assert!(!a.is_empty());
    assert_same(
        &a,
        &b,
        "2 processes × 2 workers write what 1 process writes",
    );
    assert_same(&a, &expected(&msgs), "the Observations of all messages");
    let (x, y) = (
        alert_lines(&multi.path().join("out")),
        alert_lines(&single.path().join("out")),
    );
    assert!(
        x.iter()
            .any(|l| l.contains("\"rule\":\"hypoxia\"") && l.contains("\"state\":\"open\"")),
        "multi: {x:#?}\nsingle: {y:#?}"
    );
    assert_eq!(
        x, y,
        "2 processes × 2 workers raise the alerts 1 process raises, byte for byte"
    );
    // Offsets are contiguous from 0: the committed offsets add up to the messages produced.
    // (Tansu 0.6 answers ListOffsets wrongly for batched partitions, so no watermarks here.)
    let committed: i64 = committed(&brokers, "multi", "ward-vitals", 4)
        .values()
        .sum();
    assert_eq!(
        committed,
        msgs.len() as i64,
        "the cluster committed every partition to its end"
    );
}

/// The input cut in three at whole event seconds, the cuts after `at` of the messages.
fn three_parts(
    msgs: &[vitalflow::sources::simulator::SimMessage],
    at: [f64; 2],
) -> [std::ops::Range<usize>; 3] {
    let cut = |f: f64| {
        let mut i = (msgs.len() as f64 * f) as usize;
        while i < msgs.len() && msgs[i].event_time.timestamp() == msgs[i - 1].event_time.timestamp()
        {
            i += 1;
        }
        i
    };
    let (a, b) = (cut(at[0]), cut(at[1]));
    [0..a, a..b, b..msgs.len()]
}

#[test]
fn a_job_rescaled_between_runs_writes_what_one_uninterrupted_run_writes() {
    let broker = Broker::start();
    broker.create_topic("rescaled", 4);
    let brokers = broker.brokers();
    let msgs = ward_with_hypoxia(8, 600, 33, 20, 75);
    let rules = format!(
        "[anomaly]\nrules = \"{}\"\n",
        root().join("templates/alerts/adult-vitals.toml").display()
    );
    let p = producer(&brokers);

    // One job, stopped after each third of the input and resumed with another shape:
    // 1 process × 2 workers, then 2 processes × 2 workers, then 1 process × 1 worker.
    let rescaled = tempfile::tempdir().expect("tmp");
    let job = kafka_job(rescaled.path(), &brokers, "rescaled", "rescaled", &rules);
    // The hypoxia episode runs from 20 to 37 minutes of the scenario's hour, which is most
    // of the input: the first cut falls inside it, the second near its end.
    let [first, second, third] = three_parts(&msgs, [0.45, 0.6]);
    assert!(!first.is_empty() && !second.is_empty() && !third.is_empty());
    produce_sim(&p, "rescaled", &msgs[first.clone()]);
    run_ok(
        vitalflow()
            .args(["run", "--until-end", "--workers", "2", "--job"])
            .arg(&job),
    );
    let after_first = alert_lines(&rescaled.path().join("out"));
    produce_sim(&p, "rescaled", &msgs[second]);
    run_as_two_processes(rescaled.path(), &job);
    produce_sim(&p, "rescaled", &msgs[third]);
    run_ok(
        vitalflow()
            .args(["run", "--until-end", "--workers", "1", "--job"])
            .arg(&job),
    );

    // The same input read once by an uninterrupted job.
    let whole = tempfile::tempdir().expect("tmp");
    let job = kafka_job(whole.path(), &brokers, "rescaled", "whole", &rules);
    run_ok(
        vitalflow()
            .args(["run", "--until-end", "--workers", "2", "--job"])
            .arg(&job),
    );

    let a = latest(&observation_lines(&rescaled.path().join("out")));
    let b = latest(&observation_lines(&whole.path().join("out")));
    assert_same(
        &a,
        &b,
        "a job rescaled 1×2 → 2×2 → 1×1 writes what one run writes",
    );
    assert_same(&a, &expected(&msgs), "the Observations of all messages");
    let (x, y) = (
        alert_lines(&rescaled.path().join("out")),
        alert_lines(&whole.path().join("out")),
    );
    assert!(
        y.iter()
            .any(|l| l.contains("\"rule\":\"hypoxia\"") && l.contains("\"state\":\"open\"")),
        "the hypoxia episode raises an alert: {y:#?}"
    );
    // The restarts fell inside the alerting's work: the first run stopped with alerts
    // raised and more to come, so state had to move to the new workers.
    assert!(!after_first.is_empty() && after_first.len() < y.len());
    assert_eq!(
        x, y,
        "the rescaled job raises the alerts one run raises, once each, byte for byte"
    );
    let committed: i64 = committed(&brokers, "rescaled", "rescaled", 4)
        .values()
        .sum();
    assert_eq!(committed, msgs.len() as i64, "every message committed once");
}
