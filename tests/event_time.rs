//! Observation versions follow event time: the same input writes the same versions, each
//! with the same values, whatever the replay speed, epoch length, batch size or worker count.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::path::Path;

/// Every Observation line the run wrote, as a multiset of texts: every version, not only
/// the latest.
fn versions(out: &Path) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for o in observation_lines(out) {
        *m.entry(o.to_string()).or_default() += 1;
    }
    m
}

/// Per Observation id, how many versions.
fn per_id(out: &Path) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for o in observation_lines(out) {
        *m.entry(o["id"].as_str().expect("id").to_string())
            .or_default() += 1;
    }
    m
}

fn mapping(root: &Path) -> String {
    format!(
        "[mapping]\ndevice = \"{}\"\nfhir = \"{}\"\n",
        root.join("templates/bedside-monitor/devicecontent.json")
            .display(),
        root.join("templates/bedside-monitor/fhirmapping.json")
            .display()
    )
}

fn assert_same_versions(a: &Path, b: &Path, what: &str) {
    let (va, vb) = (versions(a), versions(b));
    let only_a: Vec<&String> = va.keys().filter(|k| va.get(*k) != vb.get(*k)).collect();
    let only_b: Vec<&String> = vb.keys().filter(|k| va.get(*k) != vb.get(*k)).collect();
    assert!(
        only_a.is_empty() && only_b.is_empty(),
        "{what}: {} versions differ; first of one run: {:?}; of the other: {:?}",
        only_a.len() + only_b.len(),
        only_a.first().map(|s| &s[..s.len().min(300)]),
        only_b.first().map(|s| &s[..s.len().min(300)])
    );
}

#[test]
fn a_paced_replay_writes_the_versions_of_a_full_speed_one() {
    let tmp = tempfile::tempdir().expect("tmp");
    // 12 monitors, 10 minutes of 1 Hz readings, out of order, with late bursts.
    let msgs = simulated(12, 7_200, 41, 90);
    let text: String = msgs
        .iter()
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned() + "\n")
        .collect();
    let input = tmp.path().join("replay.ndjson");
    std::fs::write(&input, text).expect("write");
    let root = root();
    let run = |name: &str, rate: Option<u32>, epoch: &str, batch: u32| {
        let out = tmp.path().join(name);
        let job = tmp.path().join(format!("{name}.toml"));
        let rate = rate.map_or(String::new(), |r| format!("rate = {r}\n"));
        std::fs::write(
            &job,
            format!(
                "source = \"file\"\n[file]\npath = \"{}\"\n{rate}{}[window]\nupdate_every = \"1m\"\n[performance]\nepoch = \"{epoch}\"\nbatch_size = {batch}\n[sinks.ndjson]\ndir = \"{}\"\nflush_interval = \"100ms\"\n",
                input.display(),
                mapping(&root),
                out.display()
            ),
        )
        .expect("job");
        run_ok(
            vitalflow()
                .args(["run", "--until-end", "--workers", "1", "--job"])
                .arg(&job),
        );
        out
    };
    let fast = run("fast", None, "500ms", 5000);
    // About 3 s of wall time: many flushes, each with a few seconds of event time.
    let paced = run("paced", Some(2_500), "10ms", 7);
    assert_same_versions(&fast, &paced, "paced against full speed");
    let counts = per_id(&fast);
    let most = counts.values().max().copied().unwrap_or(0);
    assert!(
        most >= 5,
        "10 minutes of readings at update_every 1m make several versions per hourly Observation, found at most {most}"
    );
    assert!(
        most <= 14,
        "at most one version per minute of event time and the close, found {most}"
    );
    // The versions converge to what the connector would build from all messages at once.
    assert_same(
        &latest(&observation_lines(&fast)),
        &expected(&msgs),
        "the latest versions",
    );
}

#[test]
fn the_worker_count_and_epoch_do_not_change_the_versions() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (_cluster, brokers) = mock_cluster(&[("vitals", 4)]);
    let msgs = simulated(12, 7_200, 43, 90);
    produce_sim(&producer(&brokers), "vitals", &msgs);
    let run = |name: &str, workers: &str, epoch: &str, batch: u32| {
        let dir = tmp.path().join(name);
        std::fs::create_dir_all(&dir).expect("dir");
        let job = kafka_job(&dir, &brokers, "vitals", name, "");
        let text = std::fs::read_to_string(&job)
            .expect("job")
            .replace("update_every = \"5s\"", "update_every = \"1m\"")
            .replace("epoch = \"20ms\"", &format!("epoch = \"{epoch}\""))
            .replace("batch_size = 50", &format!("batch_size = {batch}"));
        std::fs::write(&job, text).expect("job");
        run_ok(
            vitalflow()
                .args(["run", "--until-end", "--workers", workers, "--job"])
                .arg(&job),
        );
        dir.join("out")
    };
    let one = run("one", "1", "300ms", 2000);
    let three = run("three", "3", "5ms", 11);
    assert_same_versions(&one, &three, "3 workers, short epochs against 1 worker");
    let versions: usize = per_id(&one).values().sum();
    let windows = per_id(&one).len();
    assert!(
        versions > 2 * windows,
        "{versions} versions of {windows} Observations: the test must span checkpoints"
    );
    let lines = observation_lines(&one);
    assert!(lines.iter().any(|o| o["status"] == "amended"));
}
