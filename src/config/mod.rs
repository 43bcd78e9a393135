//! Configuration: job files (`dataflows/*.toml`) and their overrides, read low and built
//! high once.
//!
//! A job file is deserialized into a raw layer that keeps every value's span ([`raw`]);
//! environment variables and command-line options are written into that layer ([`env`]);
//! one validation pass ([`validate`]) turns it into a [`JobConfig`] whose types hold only
//! valid settings, or reports every problem with its file, line and column (or the variable
//! that set it). Nothing downstream checks again. Rules files, bench targets and scenarios
//! report their problems with the same [`ConfigErrors`].

pub mod env;
pub mod error;
mod job;
mod raw;
mod validate;

pub use env::Overrides;
pub use error::{ConfigError, ConfigErrors};
pub use job::*;

use std::path::Path;

/// The embedded default job: librdkafka's in-process mock cluster fed by the simulator.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../dataflows/default.toml");

/// The name the embedded default job goes by in messages.
pub const EMBEDDED_FILE: &str = "<embedded default job>";

/// Mapping files shipped inside the binary, so the embedded default runs from any directory.
pub const EMBEDDED_TEMPLATES: [(&str, &str); 3] = [
    (
        "templates/bedside-monitor/devicecontent.json",
        include_str!("../../templates/bedside-monitor/devicecontent.json"),
    ),
    (
        "templates/bedside-monitor/fhirmapping.json",
        include_str!("../../templates/bedside-monitor/fhirmapping.json"),
    ),
    (
        "templates/alerts/adult-vitals.toml",
        include_str!("../../templates/alerts/adult-vitals.toml"),
    ),
];

/// The copy built into the binary of a template file, when it is one of
/// [`EMBEDDED_TEMPLATES`]: the embedded default runs from any directory.
pub fn embedded_template(path: &Path) -> Option<&'static str> {
    EMBEDDED_TEMPLATES
        .iter()
        .find(|(p, _)| Path::new(p) == path)
        .map(|(_, t)| *t)
}

/// What a job file is called in messages.
const WHAT: &str = "job file";

/// Reads and validates a job file, with `overrides` applied.
pub fn load(path: &Path, overrides: &Overrides) -> Result<JobConfig, ConfigErrors> {
    let text = error::read(WHAT, path)?;
    parse(
        &text,
        &path.display().to_string(),
        path.parent().unwrap_or(Path::new(".")),
        overrides,
    )
}

/// A job file when given, else the embedded default; `overrides` apply to either.
pub fn load_or_default(
    path: Option<&Path>,
    overrides: &Overrides,
) -> Result<JobConfig, ConfigErrors> {
    match path {
        Some(p) => load(p, overrides),
        None => parse(EMBEDDED_DEFAULT, EMBEDDED_FILE, Path::new("."), overrides),
    }
}

/// The embedded default job, without overrides.
pub fn embedded_default() -> JobConfig {
    parse(
        EMBEDDED_DEFAULT,
        EMBEDDED_FILE,
        Path::new("."),
        &Overrides::default(),
    )
    .expect("the embedded default job is valid (tested)")
}

/// Parses and validates job text; `base` resolves relative paths.
pub fn parse(
    text: &str,
    file: &str,
    base: &Path,
    overrides: &Overrides,
) -> Result<JobConfig, ConfigErrors> {
    let mut raw: raw::RawJob = error::from_toml(WHAT, text, file)?;
    let mut cx = error::Checker::new(WHAT, file, text);
    env::apply(&mut cx, &mut raw, overrides);
    let job = validate::job(&mut cx, &raw, file, base);
    cx.finish(job)
}

/// The Kafka connection of a command that names its brokers and topic by flag
/// (`vitalflow simulate`), with the environment's overrides, validated like a job's.
pub fn kafka_from_flags(
    brokers: &str,
    topic: &str,
    overrides: &Overrides,
) -> Result<KafkaConfig, ConfigErrors> {
    let mut cx = error::Checker::new("command line", "command line", "");
    let mut raw = raw::RawKafka::from_flags(&mut cx, brokers, topic);
    env::apply_kafka(&mut cx, &mut raw, overrides);
    let k = validate::kafka_config(&mut cx, &raw, "vitalflow-simulate");
    cx.finish(k)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn errors(text: &str) -> Vec<String> {
        parse(text, "job.toml", Path::new("."), &Overrides::default())
            .expect_err("invalid")
            .errors
            .iter()
            .map(|e| e.to_string())
            .collect()
    }

    const MAPPING: &str = "[mapping]\ndevice = \"templates/bedside-monitor/devicecontent.json\"\nfhir = \"templates/bedside-monitor/fhirmapping.json\"\n";
    const OUTPUT: &str = "[sinks.ndjson]\ndir = \"out\"\n";

    #[test]
    fn a_job_writes_only_the_outputs_it_names() {
        let base = Path::new(".");
        let rules = "[anomaly]\nrules = \"templates/alerts/adult-vitals.toml\"\n";
        let job = parse(
            &format!("source = \"simulator\"\n{MAPPING}[simulator]\n{rules}"),
            "job.toml",
            base,
            &Overrides::default(),
        )
        .expect("valid");
        assert!(!job.ndjson_observations, "alerts alone write no NDJSON");
        assert!(job.fhir.is_none() && job.lake.is_none());
        let e = errors(&format!("source = \"simulator\"\n{MAPPING}[simulator]\n"));
        assert_eq!(
            e,
            ["job.toml:1:10: sinks: the job names no output: add [sinks.ndjson], [sinks.fhir], [sinks.lake] or [anomaly]"]
        );
    }

    #[test]
    fn embedded_default_is_valid() {
        let job = embedded_default();
        assert!(matches!(&job.source, SourceConfig::Kafka(k) if k.embedded()));
        assert!(job.feed.is_some());
    }

    #[test]
    fn errors_name_line_column_and_field() {
        let text = format!("source = \"kafka\"\n{MAPPING}[kafka]\nbrokers = \"\"\ntopics = []\nstart = \"beginning\"\n[window]\nhorizon = \"a day\"\n{OUTPUT}");
        let e = errors(&text);
        assert_eq!(e.len(), 4, "{e:?}");
        assert!(
            e[0].starts_with("job.toml:6:11: kafka.brokers: must name"),
            "{e:?}"
        );
        assert!(e[1].starts_with("job.toml:7:10: kafka.topics"), "{e:?}");
        assert!(
            e[2].contains(
                ":8:9: kafka.start: expected \"earliest\" or \"latest\", found \"beginning\""
            ),
            "{e:?}"
        );
        assert!(
            e[3].contains(":10:11: window.horizon: \"a day\" is not a duration"),
            "{e:?}"
        );
    }

    #[test]
    fn unknown_fields_and_syntax_errors_have_lines() {
        let e = errors(&format!(
            "source = \"simulator\"\n{MAPPING}[simulator]\ndevcies = 3\n"
        ));
        assert!(
            e[0].starts_with("job.toml:6:1:") && e[0].contains("devcies"),
            "{e:?}"
        );
        let e = errors("source = \"kafka\n");
        assert!(e[0].starts_with("job.toml:1:"), "{e:?}");
    }

    #[test]
    fn lakehouse_settings_are_checked_with_their_lines() {
        let e = errors(&format!(
            "source = \"simulator\"\n{MAPPING}[simulator]\n[sinks.lake]\nlocation = \"gs://b/x\"\ntables = [\"measurements\", \"vitals\"]\n"
        ));
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(
            e[0].starts_with("job.toml:7:") && e[0].contains("\"gs\""),
            "{e:?}"
        );
        assert!(
            e[1].starts_with("job.toml:8:") && e[1].contains("no table \"vitals\""),
            "{e:?}"
        );
        let base = Path::new(".");
        let text = format!(
            "source = \"simulator\"\n{MAPPING}[simulator]\n[sinks.lake]\nlocation = \"out/lake\"\n"
        );
        let mut job = parse(&text, "job.toml", base, &Overrides::default()).expect("valid");
        assert!(
            !job.ndjson_observations,
            "a lakehouse alone writes no NDJSON"
        );
        job.output_dir = PathBuf::from("out");
        job.set_output_dir(PathBuf::from("/tmp/run-1"));
        assert_eq!(job.lake.as_ref().expect("lake").location, "/tmp/run-1/lake");
    }

    #[test]
    fn simulator_settings_are_checked_with_their_lines() {
        let e = errors(&format!("source = \"simulator\"\n{MAPPING}[simulator]\nprofile = \"pager\"\ndropout = 1.0\nartifacts = 2.0\n{OUTPUT}"));
        assert_eq!(e.len(), 3, "{e:?}");
        assert!(
            e[0].starts_with("job.toml:6:11: simulator.profile: unknown profile \"pager\""),
            "{e:?}"
        );
        assert_eq!(e[1], "job.toml:7:11: simulator.dropout: must be below 1");
        assert_eq!(
            e[2],
            "job.toml:8:13: simulator.artifacts: must be between 0 and 1, found 2"
        );
    }

    #[test]
    fn missing_mapping_file_is_reported() {
        let e = errors(&format!("source = \"simulator\"\n[simulator]\n[mapping]\ndevice = \"nope.json\"\nfhir = \"templates/basic/fhirmapping.json\"\n{OUTPUT}"));
        assert_eq!(
            e,
            vec!["job.toml:4:10: mapping.device: file not found: nope.json"]
        );
    }

    fn with_env(vars: &[(&str, &str)]) -> Result<JobConfig, ConfigErrors> {
        let o = Overrides::from_vars(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        parse(EMBEDDED_DEFAULT, EMBEDDED_FILE, Path::new("."), &o)
    }

    #[test]
    fn environment_overrides_secrets_and_brokers() {
        let job = with_env(&[
            ("VITALFLOW_KAFKA_BROKERS", "10.0.0.1:9093"),
            ("VITALFLOW_KAFKA__SASL_PASSWORD", "s3cret"),
            ("HOME", "/root"),
        ])
        .expect("valid overrides");
        let k = job.kafka().expect("kafka");
        assert_eq!(k.brokers, "10.0.0.1:9093");
        assert_eq!(
            k.properties.get("sasl.password").map(String::as_str),
            Some("s3cret")
        );
    }

    #[test]
    fn environment_overrides_are_checked_like_the_job_file() {
        let e = with_env(&[
            ("VITALFLOW_METRICS_ADDRESS", "not-an-address"),
            ("VITALFLOW_FHIR_URL", "ftp://x"),
            ("VITALFLOW_FHIR_IDENTITY", "Maybe"),
            ("VITALFLOW_LAKE", " "),
            ("VITALFLOW_KAFKA__ENABLE_AUTO_COMMIT", "true"),
            ("VITALFLOW_KAFKA_GROUP_ID", ""),
            ("VITALFLOW_OUTPUT_DIR", ""),
        ])
        .expect_err("invalid overrides");
        let all = e.to_string();
        for var in [
            "environment variable VITALFLOW_METRICS_ADDRESS: metrics.address",
            "environment variable VITALFLOW_FHIR_URL: sinks.fhir.url",
            "environment variable VITALFLOW_FHIR_IDENTITY: sinks.fhir.identity",
            "environment variable VITALFLOW_LAKE: sinks.lake.location",
            "environment variable VITALFLOW_KAFKA__ENABLE_AUTO_COMMIT: kafka.properties.enable.auto.commit",
            "environment variable VITALFLOW_KAFKA_GROUP_ID: kafka.group_id",
            "environment variable VITALFLOW_OUTPUT_DIR",
        ] {
            assert!(all.contains(var), "names {var}: {all}");
        }
        assert_eq!(e.errors.len(), 7, "{all}");
    }

    #[test]
    fn a_fhir_url_override_sends_observations_to_the_server() {
        let job = with_env(&[
            ("VITALFLOW_FHIR_URL", "http://127.0.0.1:1/fhir/"),
            ("VITALFLOW_FHIR_TOKEN", "t0ken"),
            ("VITALFLOW_FHIR_IDENTITY", "Create"),
        ])
        .expect("valid");
        let f = job.fhir.as_ref().expect("[sinks.fhir] from the URL");
        assert_eq!(f.url, "http://127.0.0.1:1/fhir");
        assert_eq!(f.identity, IdentityMode::Create);
        assert_eq!(
            f.auth,
            FhirAuth::Bearer {
                token: "t0ken".into()
            }
        );
        assert!(
            !job.ndjson_observations,
            "Observations go to the server instead"
        );
    }

    #[test]
    fn secrets_never_print_in_debug() {
        let mut job = with_env(&[("VITALFLOW_KAFKA__SASL_PASSWORD", "hunter2")]).expect("valid");
        let mut lake = LakeConfig::at("s3://b/p");
        lake.storage
            .insert("aws_secret_access_key".into(), "wJalrXUtnFEMI".into());
        job.lake = Some(lake);
        let printed = format!("{job:?}");
        assert!(
            !printed.contains("hunter2") && !printed.contains("wJalrXUtnFEMI"),
            "{printed}"
        );
        assert!(
            printed.contains("sasl.password"),
            "the key is shown: {printed}"
        );
    }

    #[test]
    fn reserved_librdkafka_properties_are_refused() {
        let e = errors(&format!("source = \"kafka\"\n{MAPPING}[kafka]\nbrokers = \"b:9092\"\ntopics = [\"t\"]\nproperties = {{ \"enable.auto.commit\" = true }}\n"));
        assert!(
            e[0].contains("kafka.properties.enable.auto.commit: set by vitalflow"),
            "{e:?}"
        );
    }
}
