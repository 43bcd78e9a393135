//! The one validation pass: the raw layer (file values and overrides) becomes a
//! [`JobConfig`], or every problem with where it is.

use super::error::Checker;
use super::job::*;
use super::raw::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

/// Validates a job's raw layer; problems are collected in `cx`.
pub(super) fn job(cx: &mut Checker<'_>, raw: &RawJob, file: &str, base: &Path) -> JobConfig {
    let name = raw
        .name
        .as_ref()
        .map_or_else(|| "vitalflow".to_string(), |n| n.get_ref().clone());

    let kafka = raw.kafka.as_ref().map(|k| kafka_config(cx, k, &name));

    let simulator = raw.simulator.as_ref().map(|s| {
        let d = SimulatorConfig::default();
        let devices = cx.positive(&s.devices, "simulator.devices", d.devices as u64) as u32;
        let rate = s.rate.as_ref().map_or(devices as f64, |r| *r.get_ref());
        let profile = s
            .profile
            .as_ref()
            .map_or_else(|| d.profile.clone(), |p| p.get_ref().clone());
        let fraction = |v: &Option<Spanned<f64>>| v.as_ref().map_or(0.0, |v| *v.get_ref());
        let cfg = SimulatorConfig {
            devices,
            rate,
            seed: s.seed.as_ref().map_or(d.seed, |v| *v.get_ref() as u64),
            profile,
            count: s
                .count
                .as_ref()
                .map(|_| cx.positive(&s.count, "simulator.count", 1)),
            out_of_order: fraction(&s.out_of_order),
            late_burst: s.late_burst.as_ref().map(|_| {
                cx.duration(
                    &s.late_burst,
                    "simulator.late_burst",
                    Duration::from_secs(60),
                )
            }),
            dropout: fraction(&s.dropout),
            artifacts: fraction(&s.artifacts),
            acute: match &s.acute {
                Some(a) if *a.get_ref() < 0 || *a.get_ref() > i64::from(devices) => {
                    cx.at(
                        a.span(),
                        "simulator.acute",
                        format!("must be between 0 and simulator.devices ({devices})"),
                    );
                    0
                }
                Some(a) => *a.get_ref() as u32,
                None => 0,
            },
        };
        for (field, reason) in cfg.problems() {
            // Defaults are valid: a problem is always in a value the file gives.
            let span = match field {
                "rate" => s.rate.as_ref().map(Spanned::span),
                "profile" => s.profile.as_ref().map(Spanned::span),
                "out_of_order" => s.out_of_order.as_ref().map(Spanned::span),
                "dropout" => s.dropout.as_ref().map(Spanned::span),
                _ => s.artifacts.as_ref().map(Spanned::span),
            };
            cx.at(span.unwrap_or(0..0), &format!("simulator.{field}"), reason);
        }
        cfg
    });

    // Placeholders where a problem was recorded: `cx` refuses the whole job then.
    let nowhere = || SourceConfig::File {
        path: PathBuf::new(),
        rate: 0.0,
    };
    let source = match (raw.source.get_ref().as_str(), &kafka, &simulator, &raw.file) {
        ("kafka", Some(k), _, _) => SourceConfig::Kafka(k.clone()),
        ("kafka", None, _, _) => {
            cx.at(
                raw.source.span(),
                "source",
                "source \"kafka\" needs a [kafka] table (brokers, topics)",
            );
            nowhere()
        }
        ("file", _, _, Some(f)) => {
            let rate = f.rate.as_ref().map_or(0.0, |r| *r.get_ref());
            if rate < 0.0 || rate.is_nan() {
                let span = f.rate.as_ref().map_or(0..0, Spanned::span);
                cx.at(
                    span,
                    "file.rate",
                    "must be zero (as fast as possible) or positive",
                );
            }
            SourceConfig::File {
                path: cx.existing_file(base, &f.path, "file.path"),
                rate,
            }
        }
        ("file", _, _, None) => {
            cx.at(
                raw.source.span(),
                "source",
                "source \"file\" needs a [file] table with path",
            );
            nowhere()
        }
        ("simulator", _, Some(s), _) => SourceConfig::Simulator(s.clone()),
        ("simulator", _, None, _) => {
            cx.at(
                raw.source.span(),
                "source",
                "source \"simulator\" needs a [simulator] table",
            );
            nowhere()
        }
        (other, ..) => {
            cx.at(
                raw.source.span(),
                "source",
                format!("expected \"kafka\", \"file\" or \"simulator\", found \"{other}\""),
            );
            nowhere()
        }
    };
    // The simulator feeds a Kafka source only when that Kafka runs in the process.
    let feed = match &source {
        SourceConfig::Kafka(k) if k.embedded() => simulator.clone(),
        _ => None,
    };

    let device_mapping = cx.existing_file(base, &raw.mapping.device, "mapping.device");
    let fhir_mapping = cx.existing_file(base, &raw.mapping.fhir, "mapping.fhir");
    let horizon = cx.duration(
        &raw.window.horizon,
        "window.horizon",
        Duration::from_secs(2 * 3600),
    );
    let max_future_skew = cx.duration(
        &raw.window.max_future_skew,
        "window.max_future_skew",
        Duration::from_secs(300),
    );
    let allowed_lateness = cx.duration(
        &raw.window.allowed_lateness,
        "window.allowed_lateness",
        Duration::from_secs(5),
    );
    let idle_timeout = cx.duration(
        &raw.window.idle_timeout,
        "window.idle_timeout",
        Duration::from_secs(5),
    );
    let update_every = cx.duration(
        &raw.window.update_every,
        "window.update_every",
        Duration::from_secs(300),
    );
    let (output_dir, flush_interval) = match &raw.sinks.ndjson {
        Some(n) => {
            if n.dir.get_ref().trim().is_empty() {
                cx.at(n.dir.span(), "sinks.ndjson.dir", "must name a directory");
            }
            (
                PathBuf::from(n.dir.get_ref()),
                cx.duration(
                    &n.flush_interval,
                    "sinks.ndjson.flush_interval",
                    Duration::from_secs(1),
                ),
            )
        }
        None => (PathBuf::from("vitalflow-out"), Duration::from_secs(1)),
    };
    // A topic output uses the job's Kafka connection.
    let to = |cx: &mut Checker<'_>, topic: Option<&Spanned<String>>, field: &str, what: &str| match (
        topic, &kafka,
    ) {
        (None, _) => Output::Files,
        (Some(t), Some(k)) => Output::Topic {
            kafka: k.clone(),
            topic: t.get_ref().clone(),
        },
        (Some(t), None) => {
            cx.at(
                t.span(),
                field,
                format!("{what} needs a [kafka] table (brokers)"),
            );
            Output::Files
        }
    };
    let dead_letters = to(
        cx,
        raw.sinks
            .dead_letter
            .as_ref()
            .and_then(|d| d.topic.as_ref()),
        "sinks.dead_letter.topic",
        "a dead-letter topic",
    );
    let anomaly = raw.anomaly.as_ref().map(|a| AnomalyConfig {
        rules: cx.existing_file(base, &a.rules, "anomaly.rules"),
        alerts: to(cx, a.topic.as_ref(), "anomaly.topic", "an alerts topic"),
        checkpoint_every: cx.duration(
            &a.checkpoint_every,
            "anomaly.checkpoint_every",
            Duration::from_secs(5),
        ),
    });
    let epoch = cx.duration(
        &raw.performance.epoch,
        "performance.epoch",
        Duration::from_millis(50),
    );
    let batch_size =
        cx.positive(&raw.performance.batch_size, "performance.batch_size", 1000) as usize;
    let max_durable_lag = cx.duration(
        &raw.performance.max_durable_lag,
        "performance.max_durable_lag",
        Duration::from_secs(60),
    );
    let fhir = raw.sinks.fhir.as_ref().map(|f| fhir_config(cx, base, f));
    // Only the outputs the job names: a job of alerts alone writes no Observations.
    let ndjson_observations = raw.sinks.ndjson.is_some() && !raw.sinks.fhir_replaces_ndjson;
    if !ndjson_observations && fhir.is_none() && raw.sinks.lake.is_none() && raw.anomaly.is_none() {
        cx.at(
            raw.source.span(),
            "sinks",
            "the job names no output: add [sinks.ndjson], [sinks.fhir], [sinks.lake] or [anomaly]",
        );
    }
    let lake = raw.sinks.lake.as_ref().map(|l| lake_config(cx, l));
    let metrics_address = raw.metrics.as_ref().map(|m| {
        if m.address.get_ref().parse::<std::net::SocketAddr>().is_err() {
            cx.at(
                m.address.span(),
                "metrics.address",
                format!(
                    "\"{}\" is not an address (ip:port, e.g. 127.0.0.1:9464)",
                    m.address.get_ref()
                ),
            );
        }
        m.address.get_ref().clone()
    });

    let mut job = JobConfig {
        name,
        file: file.to_string(),
        source,
        feed,
        device_mapping,
        fhir_mapping,
        horizon,
        max_future_skew,
        allowed_lateness,
        idle_timeout,
        update_every,
        output_dir,
        ndjson_observations,
        fhir,
        flush_interval,
        lake,
        dead_letters,
        anomaly,
        epoch,
        batch_size,
        max_durable_lag,
        metrics_address,
    };
    if let Some(dir) = &raw.output_dir {
        if dir.get_ref().trim().is_empty() {
            cx.at(dir.span(), "output directory", "must name a directory");
        }
        job.set_output_dir(PathBuf::from(dir.get_ref()));
    }
    job
}

/// Validates a `[kafka]` table; `name` gives the default consumer group.
pub(super) fn kafka_config(cx: &mut Checker<'_>, k: &RawKafka, name: &str) -> KafkaConfig {
    let brokers = k.brokers.get_ref().trim().to_string();
    if brokers.is_empty() {
        cx.at(
            k.brokers.span(),
            "kafka.brokers",
            "must name at least one broker (host:port), or \"embedded\"",
        );
    }
    let topics = k.topics.get_ref().clone();
    if topics.is_empty() || topics.iter().any(|t| t.trim().is_empty()) {
        cx.at(
            k.topics.span(),
            "kafka.topics",
            "must list one or more non-empty topic names",
        );
    }
    let start = match k.start.as_ref().map(|s| s.get_ref().as_str()) {
        None | Some("earliest") => StartPosition::Earliest,
        Some("latest") => StartPosition::Latest,
        Some(other) => {
            let span = k.start.as_ref().expect("some").span();
            cx.at(
                span,
                "kafka.start",
                format!("expected \"earliest\" or \"latest\", found \"{other}\""),
            );
            StartPosition::Earliest
        }
    };
    let partitions = cx.positive(&k.partitions, "kafka.partitions", 4) as i32;
    let startup_timeout = cx.duration(
        &k.startup_timeout,
        "kafka.startup_timeout",
        Duration::from_secs(30),
    );
    let mut properties = BTreeMap::new();
    for (key, v) in &k.properties {
        let value = match v.get_ref() {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            _ => {
                cx.at(
                    v.span(),
                    &format!("kafka.properties.{key}"),
                    "librdkafka properties are strings, numbers or booleans",
                );
                continue;
            }
        };
        if RESERVED_KAFKA_PROPERTIES.contains(&key.as_str()) {
            cx.at(v.span(), &format!("kafka.properties.{key}"), "set by vitalflow: use kafka.group_id / kafka.brokers (offsets are committed by the job, never automatically)");
            continue;
        }
        properties.insert(key.clone(), value);
    }
    let group_id = match &k.group_id {
        Some(g) if g.get_ref().trim().is_empty() => {
            cx.at(g.span(), "kafka.group_id", "must not be empty");
            String::new()
        }
        Some(g) => g.get_ref().clone(),
        None => format!("{name}-job"),
    };
    KafkaConfig {
        brokers,
        topics,
        group_id,
        start,
        partitions,
        startup_timeout,
        properties,
    }
}

fn lake_config(cx: &mut Checker<'_>, l: &RawLake) -> LakeConfig {
    let mut c = LakeConfig::at(l.location.get_ref().trim());
    if c.location.is_empty() {
        cx.at(
            l.location.span(),
            "sinks.lake.location",
            "must name a directory or an object-store URL (s3://bucket/prefix)",
        );
    } else if let Some((scheme, _)) = c.location.split_once("://") {
        if !["s3", "s3a", "file", "memory"].contains(&scheme) {
            cx.at(
                l.location.span(),
                "sinks.lake.location",
                format!("unsupported scheme \"{scheme}\" (a local path, file://, or s3://)"),
            );
        }
    }
    if let Some(t) = &l.tables {
        c.tables = Tables {
            measurements: false,
            observations: false,
            alerts: false,
            devices: false,
        };
        for name in t.get_ref() {
            match name.as_str() {
                "measurements" => c.tables.measurements = true,
                "observations" => c.tables.observations = true,
                "alerts" => c.tables.alerts = true,
                "devices" => c.tables.devices = true,
                other => cx.at(
                    t.span(),
                    "sinks.lake.tables",
                    format!("no table \"{other}\" (measurements, observations, alerts, devices)"),
                ),
            }
        }
    }
    c.flush_interval = cx.duration(
        &l.flush_interval,
        "sinks.lake.flush_interval",
        c.flush_interval,
    );
    c.target_file_size = cx.positive(
        &l.target_file_size_mib,
        "sinks.lake.target_file_size_mib",
        c.target_file_size >> 20,
    ) << 20;
    if l.compact_every.is_some() {
        c.compact_every = Some(cx.duration(
            &l.compact_every,
            "sinks.lake.compact_every",
            Duration::from_secs(3600),
        ));
    }
    c.storage = l
        .storage
        .iter()
        .map(|(k, v)| (k.clone(), v.get_ref().clone()))
        .collect();
    c
}

fn fhir_config(cx: &mut Checker<'_>, base: &Path, f: &RawFhir) -> FhirSinkConfig {
    let url = f.url.get_ref().trim();
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        cx.at(
            f.url.span(),
            "sinks.fhir.url",
            format!("\"{url}\" is not an http(s) URL (e.g. https://fhir.example.org/r4)"),
        );
    }
    let mut c = FhirSinkConfig::new(url);
    if let Some(m) = &f.identity {
        match IdentityMode::parse(m.get_ref()) {
            Some(mode) => c.identity = mode,
            None => cx.at(
                m.span(),
                "sinks.fhir.identity",
                format!(
                    "expected \"Lookup\", \"LookupWithEncounter\" or \"Create\", found \"{}\"",
                    m.get_ref()
                ),
            ),
        }
    }
    c.device_identifier_system = f
        .device_identifier_system
        .as_ref()
        .map(|s| s.get_ref().clone());
    c.batch_size =
        cx.positive(&f.batch_size, "sinks.fhir.batch_size", c.batch_size as u64) as usize;
    c.concurrency = cx.positive(
        &f.concurrency,
        "sinks.fhir.concurrency",
        c.concurrency as u64,
    ) as usize;
    c.flush_interval = cx.duration(
        &f.flush_interval,
        "sinks.fhir.flush_interval",
        c.flush_interval,
    );
    c.timeout = cx.duration(&f.timeout, "sinks.fhir.timeout", c.timeout);
    c.startup_timeout = cx.duration(
        &f.startup_timeout,
        "sinks.fhir.startup_timeout",
        c.startup_timeout,
    );
    if let Some(r) = &f.max_retries {
        match u32::try_from(*r.get_ref()) {
            Ok(n) => c.max_retries = n,
            Err(_) => cx.at(
                r.span(),
                "sinks.fhir.max_retries",
                format!("must be zero or a positive integer, found {}", r.get_ref()),
            ),
        }
    }
    c.ca_file = f
        .ca_file
        .as_ref()
        .map(|p| cx.existing_file(base, p, "sinks.fhir.ca_file"));
    if let Some(cache) = &f.cache {
        c.cache_ttl = cx.duration(&cache.ttl, "sinks.fhir.cache.ttl", c.cache_ttl);
        c.negative_cache_ttl = cx.duration(
            &cache.negative_ttl,
            "sinks.fhir.cache.negative_ttl",
            c.negative_cache_ttl,
        );
        c.cache_capacity = cx.positive(
            &cache.capacity,
            "sinks.fhir.cache.capacity",
            c.cache_capacity as u64,
        ) as usize;
    }
    if let Some(a) = &f.auth {
        c.allow_http_credentials = a.allow_http.as_ref().is_some_and(|b| *b.get_ref());
        c.auth = match a.kind.get_ref().as_str() {
            "none" => FhirAuth::None,
            // The token arrives from the environment (`VITALFLOW_FHIR_TOKEN`, see `env.rs`); empty means "not given".
            "bearer" => FhirAuth::Bearer {
                token: f.token.clone().unwrap_or_default(),
            },
            "oauth2" => {
                let mut need = |v: &Option<Spanned<String>>, field: &str| match v {
                    Some(v) if !v.get_ref().trim().is_empty() => v.get_ref().clone(),
                    _ => {
                        cx.at(
                            a.kind.span(),
                            &format!("sinks.fhir.auth.{field}"),
                            "auth type \"oauth2\" needs token_url and client_id (the secret comes from VITALFLOW_FHIR_CLIENT_SECRET)",
                        );
                        String::new()
                    }
                };
                let token_url = need(&a.token_url, "token_url");
                let client_id = need(&a.client_id, "client_id");
                FhirAuth::OAuth2 {
                    token_url,
                    client_id,
                    client_secret: f.client_secret.clone().unwrap_or_default(),
                    scope: a.scope.as_ref().map(|s| s.get_ref().clone()),
                }
            }
            other => {
                cx.at(
                    a.kind.span(),
                    "sinks.fhir.auth.type",
                    format!("expected \"none\", \"bearer\" or \"oauth2\", found \"{other}\""),
                );
                FhirAuth::None
            }
        };
    }
    // A token given without an auth table means a bearer token.
    if let (Some(token), FhirAuth::None) = (&f.token, &c.auth) {
        c.auth = FhirAuth::Bearer {
            token: token.clone(),
        };
    }
    c
}
