//! Runs every IoMT FHIR Connector conformance case in tests/conformance/ (see its README).
//!
//! One test per case directory; each prints a line per failing case and a summary, and fails
//! if any case fails. A case believed wrong would be listed in `DISPUTED` with the evidence,
//! still run and still reported, never skipped; none is disputed today.

use chrono::{DateTime, Utc};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use vitalflow::fhir::groups::build_groups;
use vitalflow::fhir::observation::{self, Subjects};
use vitalflow::fhir::sampled_data;
use vitalflow::mapping::expr::{Expr, Language, Scope};
use vitalflow::mapping::{DeviceMapping, FhirMapping};
use vitalflow::model::Measurement;
use vitalflow::time::parse_timestamp;

const DISPUTED: &[(&str, &str)] = &[];

fn cases(dir: &str) -> Vec<(String, Value)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/conformance")
        .join(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no cases in {}", root.display());
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let v: Value =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p.file_stem().unwrap().to_string_lossy().into_owned(), v)
        })
        .collect()
}

fn run_all(dir: &str, run: fn(&Value) -> Result<(), String>) {
    let mut failed = Vec::new();
    let all = cases(dir);
    for (name, case) in &all {
        assert_eq!(
            case["name"].as_str(),
            Some(name.as_str()),
            "case name must equal file name"
        );
        let outcome = std::panic::catch_unwind(|| run(case)).unwrap_or_else(|p| {
            Err(format!(
                "panicked: {}",
                p.downcast_ref::<String>().cloned().unwrap_or_default()
            ))
        });
        if let Err(why) = outcome {
            let note = DISPUTED
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, r)| format!(" [disputed: {r}]"));
            println!("FAIL {dir}/{name}: {why}{}", note.unwrap_or_default());
            failed.push(name.clone());
        }
    }
    println!(
        "conformance {dir}: {} passed, {} failed",
        all.len() - failed.len(),
        failed.len()
    );
    assert!(failed.is_empty(), "{dir}: failing cases: {failed:?}");
}

fn mapping_value(v: &Value) -> Result<Value, String> {
    match v {
        Value::String(raw) => serde_json::from_str(raw).map_err(|e| format!("invalid JSON: {e}")),
        other => Ok(other.clone()),
    }
}

fn load_device(case: &Value) -> Result<DeviceMapping, String> {
    let v = mapping_value(&case["devicecontent"])?;
    DeviceMapping::from_value(&v).map_err(|e| e.to_string())
}

fn load_fhir(case: &Value) -> Result<FhirMapping, String> {
    let v = mapping_value(&case["fhirmapping"])?;
    FhirMapping::from_value(&v).map_err(|e| e.to_string())
}

fn instant(s: &Value) -> Option<DateTime<Utc>> {
    s.as_str().and_then(parse_timestamp)
}

fn measurement_matches(got: &Value, want: &Value) -> Result<(), String> {
    for k in [
        "type",
        "deviceId",
        "patientId",
        "encounterId",
        "correlationId",
    ] {
        if got[k] != want[k] {
            return Err(format!("{k}: got {} want {}", got[k], want[k]));
        }
    }
    if instant(&got["occurrenceTimeUtc"]) != instant(&want["occurrenceTimeUtc"])
        || instant(&want["occurrenceTimeUtc"]).is_none()
    {
        return Err(format!(
            "occurrenceTimeUtc: got {} want {}",
            got["occurrenceTimeUtc"], want["occurrenceTimeUtc"]
        ));
    }
    let (gp, wp) = (
        got["properties"].as_array().unwrap(),
        want["properties"].as_array().unwrap(),
    );
    if gp.len() != wp.len() {
        return Err(format!(
            "properties: got {} want {}",
            got["properties"], want["properties"]
        ));
    }
    for (g, w) in gp.iter().zip(wp) {
        if g["name"] != w["name"] {
            return Err(format!(
                "property name: got {} want {}",
                g["name"], w["name"]
            ));
        }
        let ok = match w.get("compare") {
            Some(c) if c["numeric"] == true => {
                let p = c["precision"].as_i64().unwrap_or(0) as i32;
                let num = |v: &Value| {
                    v.as_str()
                        .and_then(|s| s.parse::<f64>().ok())
                        .map(|f| (f * 10f64.powi(p)).round())
                };
                num(&g["value"]).is_some() && num(&g["value"]) == num(&w["value"])
            }
            _ => g["value"] == w["value"],
        };
        if !ok {
            return Err(format!(
                "property {}: got {} want {}",
                w["name"], g["value"], w["value"]
            ));
        }
    }
    Ok(())
}

fn run_normalize(case: &Value) -> Result<(), String> {
    let expect = &case["expect"];
    let mapping = load_device(case);
    if expect["error"] == "template" {
        return match mapping {
            Err(_) => Ok(()),
            Ok(_) => Err("mapping loaded, expected a template error".into()),
        };
    }
    let mapping = mapping.map_err(|e| format!("mapping rejected: {e}"))?;
    if expect["templateValid"] == true {
        return Ok(());
    }
    let result = mapping.normalize(&case["message"]);
    if expect["error"] == "message" {
        return match result {
            Err(_) => Ok(()),
            Ok(m) => Err(format!(
                "expected a message error, got {} measurements",
                m.len()
            )),
        };
    }
    let got: Vec<Value> = result
        .map_err(|e| format!("normalize failed: {e}"))?
        .iter()
        .map(|m| serde_json::to_value(m.to_json()).unwrap())
        .collect();
    let mut want: Vec<Value> = expect["measurements"].as_array().unwrap().clone();
    if got.len() != want.len() {
        return Err(format!(
            "got {} measurements, want {}: {}",
            got.len(),
            want.len(),
            Value::Array(got)
        ));
    }
    if expect["ordered"] == false {
        // Unordered: match each expected measurement to some unused actual one.
        let mut pool = got.clone();
        for w in want.drain(..) {
            let i = pool
                .iter()
                .position(|g| measurement_matches(g, &w).is_ok())
                .ok_or_else(|| format!("no measurement matches {w}"))?;
            pool.remove(i);
        }
        return Ok(());
    }
    for (g, w) in got.iter().zip(&want) {
        measurement_matches(g, w)?;
    }
    Ok(())
}

fn measurement_from_json(v: &Value) -> Measurement {
    let s = |k: &str| v[k].as_str().map(Into::into);
    Measurement {
        type_name: Arc::from(v["type"].as_str().unwrap()),
        device_id: s("deviceId").unwrap(),
        patient_id: s("patientId"),
        encounter_id: s("encounterId"),
        correlation_id: s("correlationId"),
        occurrence_time: instant(&v["occurrenceTimeUtc"]).unwrap(),
        properties: v["properties"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    Arc::from(p["name"].as_str().unwrap()),
                    p["value"].as_str().unwrap().into(),
                )
            })
            .collect(),
        received_ms: None,
        source: None,
    }
}

/// Partial comparison as the README defines it.
fn partial_eq(got: Option<&Value>, want: &Value, path: &str) -> Result<(), String> {
    let absent = |g: Option<&Value>| match g {
        None | Some(Value::Null) => true,
        Some(Value::Array(a)) => a.is_empty(),
        _ => false,
    };
    match want {
        Value::Null => {
            if absent(got) {
                Ok(())
            } else {
                Err(format!("{path}: expected absent, got {}", got.unwrap()))
            }
        }
        Value::Object(w) => {
            let g = got
                .and_then(Value::as_object)
                .ok_or_else(|| format!("{path}: expected object, got {got:?}"))?;
            for (k, wv) in w {
                partial_eq(g.get(k), wv, &format!("{path}.{k}"))?;
            }
            Ok(())
        }
        Value::Array(w) => {
            let g = got
                .and_then(Value::as_array)
                .ok_or_else(|| format!("{path}: expected array, got {got:?}"))?;
            if g.len() != w.len() {
                return Err(format!("{path}: length {} want {}", g.len(), w.len()));
            }
            for (i, (gv, wv)) in g.iter().zip(w).enumerate() {
                partial_eq(Some(gv), wv, &format!("{path}[{i}]"))?;
            }
            Ok(())
        }
        Value::Number(n) => match got.and_then(Value::as_f64) {
            Some(g) if (g - n.as_f64().unwrap()).abs() < 1e-9 => Ok(()),
            _ => Err(format!("{path}: got {got:?} want {n}")),
        },
        Value::String(s) if path.contains("effectivePeriod") => {
            if got.and_then(instant) == parse_timestamp(s) {
                Ok(())
            } else {
                Err(format!("{path}: got {got:?} want {s}"))
            }
        }
        other => {
            if got == Some(other) {
                Ok(())
            } else {
                Err(format!("{path}: got {got:?} want {other}"))
            }
        }
    }
}

fn time_values(v: &Value) -> Vec<sampled_data::TimeValue> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|tv| {
            sampled_data::TimeValue::new(
                instant(&tv["time"]).unwrap(),
                tv["value"].as_str().unwrap().into(),
            )
        })
        .collect()
}

fn time_values_json(tvs: &[sampled_data::TimeValue]) -> Value {
    tvs.iter()
        .map(
            |v| serde_json::json!({"time": vitalflow::time::format_rfc3339(&v.at()), "value": v.text()}),
        )
        .collect()
}

fn run_fhir(case: &Value) -> Result<(), String> {
    let expect = &case["expect"];
    if case["kind"] == "sampledData" {
        let input = &case["input"];
        let got = match case["operation"].as_str().unwrap() {
            "build" => serde_json::json!({"data": sampled_data::build(
                &time_values(&input["values"]),
                instant(&input["start"]).unwrap(),
                instant(&input["end"]).unwrap(),
                input["periodMs"].as_u64().unwrap(),
            )}),
            "toTimeValues" => {
                serde_json::json!({"timeValues": time_values_json(&sampled_data::to_time_values(
                    input["data"].as_str().unwrap(),
                    instant(&input["start"]).unwrap(),
                    input["periodMs"].as_u64().unwrap(),
                ))})
            }
            "merge" => serde_json::json!({"timeValues": time_values_json(&sampled_data::merge(
                &time_values(&input["existing"]),
                &time_values(&input["new"]),
            ))}),
            op => return Err(format!("unknown operation {op}")),
        };
        // Times compare as instants.
        let norm = |v: &Value| -> Value {
            let mut v = v.clone();
            if let Some(tvs) = v.get_mut("timeValues").and_then(Value::as_array_mut) {
                for tv in tvs {
                    tv["time"] = instant(&tv["time"])
                        .map(|t| t.timestamp_nanos_opt().unwrap())
                        .into();
                }
            }
            v
        };
        return if norm(&got) == norm(expect) {
            Ok(())
        } else {
            Err(format!("got {got} want {expect}"))
        };
    }
    let mapping = load_fhir(case);
    if expect["error"] == "template" {
        return match mapping {
            Err(_) => Ok(()),
            Ok(_) => Err("mapping loaded, expected a template error".into()),
        };
    }
    let mapping = mapping.map_err(|e| format!("mapping rejected: {e}"))?;
    if expect["templateValid"] == true {
        return Ok(());
    }
    let group = &case["measurementGroup"];
    let data: Vec<Measurement> = group["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(measurement_from_json)
        .collect();
    let result = (|| -> Result<Value, String> {
        let tpl = mapping
            .get(group["type"].as_str().unwrap())
            .ok_or_else(|| format!("no FHIR template for type {}", group["type"]))?;
        let groups = build_groups(tpl.period, &data).map_err(|e| e.to_string())?;
        if case["kind"] == "groups" {
            return Ok(Value::Array(
                groups
                    .iter()
                    .map(|g| {
                        let values: serde_json::Map<String, Value> = g
                            .values
                            .iter()
                            .map(|(k, v)| (k.to_string(), time_values_json(&v.to_time_values())))
                            .collect();
                        serde_json::json!({
                            "start": vitalflow::time::format_dotnet(&g.start),
                            "end": vitalflow::time::format_dotnet(&g.end),
                            "idSegment": g.id_segment,
                            "values": values,
                        })
                    })
                    .collect(),
            ));
        }
        let ids = &case["resourceIds"];
        let subjects = Subjects {
            patient: ids["patient"]
                .as_str()
                .or(group["patientId"].as_str())
                .unwrap_or(""),
            device: ids["device"]
                .as_str()
                .or(group["deviceId"].as_str())
                .unwrap_or(""),
            encounter: ids["encounter"].as_str().or(group["encounterId"].as_str()),
            resolved: !ids.is_null(),
        };
        let mut out = Vec::new();
        for g in &groups {
            let o = match case.get("existingObservation") {
                Some(existing) => observation::merge(tpl, g, existing),
                None => observation::build(tpl, group["type"].as_str().unwrap(), g, &subjects),
            }
            .map_err(|e| e.to_string())?;
            out.push(o);
        }
        Ok(Value::Array(out))
    })();
    if expect["error"] == "data" {
        return match result {
            Err(_) => Ok(()),
            Ok(v) => Err(format!("expected a data error, got {v}")),
        };
    }
    let got = result?;
    if case["kind"] == "groups" {
        // Values compare with times as instants; property keys are unordered.
        let want = &expect["groups"];
        let norm = |v: &Value| -> Value {
            let mut v = v.clone();
            for g in v.as_array_mut().unwrap() {
                for k in ["start", "end"] {
                    g[k] = instant(&g[k])
                        .map(|t| t.timestamp_nanos_opt().unwrap())
                        .into();
                }
                for (_, tvs) in g["values"].as_object_mut().unwrap() {
                    for tv in tvs.as_array_mut().unwrap() {
                        tv["time"] = instant(&tv["time"])
                            .map(|t| t.timestamp_nanos_opt().unwrap())
                            .into();
                    }
                }
            }
            v
        };
        return if norm(&got) == norm(want) {
            Ok(())
        } else {
            Err(format!("got {got}\nwant {want}"))
        };
    }
    partial_eq(Some(&got), &expect["observations"], "observations")
}

fn run_jmespath(case: &Value) -> Result<(), String> {
    let expect = &case["expect"];
    let lang = match case["language"].as_str().unwrap_or("JmesPath") {
        "JsonPath" => Language::JsonPath,
        _ => Language::JmesPath,
    };
    let expr = Expr::compile(case["expression"].as_str().unwrap(), lang);
    if expect["error"] == "parse" {
        return match expr {
            Err(_) => Ok(()),
            Ok(_) => Err("expression compiled, expected a parse error".into()),
        };
    }
    let expr = expr.map_err(|e| format!("compile failed: {e}"))?;
    let given = &case["given"];
    let scope = Scope::json_value(given);
    if case["mode"] == "multiple" {
        let got: Vec<Value> = expr
            .matches(&scope)
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|t| match t {
                vitalflow::mapping::expr::Token::Json(v) => v.clone(),
                vitalflow::mapping::expr::Token::Var(v) => vitalflow::mapping::jmes::to_json(&v),
            })
            .collect();
        return if Value::Array(got.clone()) == expect["values"] {
            Ok(())
        } else {
            Err(format!("got {got:?}"))
        };
    }
    let result = expr.single(&scope);
    if expect.get("error").is_some() {
        return match result {
            Err(_) => Ok(()),
            Ok(v) => Err(format!("expected an evaluation error, got {v:?}")),
        };
    }
    let got = result.map_err(|e| format!("evaluation failed: {e}"))?;
    if expect["absent"] == true {
        return if got.is_none() {
            Ok(())
        } else {
            Err(format!("expected absent, got {got:?}"))
        };
    }
    let got = got.ok_or("no value")?.into_owned();
    let want = &expect["value"];
    let ok = match expect["valueType"].as_str().unwrap() {
        "integer" => got.is_i64() && got.as_i64() == want.as_i64(),
        "float" => {
            let p = expect["precision"].as_i64().map(|p| 10f64.powi(p as i32));
            got.is_f64()
                && match (p, got.as_f64(), want.as_f64()) {
                    (Some(p), Some(g), Some(w)) => (g * p).round() == (w * p).round(),
                    (None, Some(g), Some(w)) => g == w,
                    _ => false,
                }
        }
        "date" => instant(&got).is_some() && instant(&got) == instant(want),
        _ => &got == want,
    };
    if ok {
        Ok(())
    } else {
        Err(format!("got {got} want {want} ({})", expect["valueType"]))
    }
}

#[test]
fn conformance_normalize() {
    run_all("normalize", run_normalize);
}

#[test]
fn conformance_fhir() {
    run_all("fhir", run_fhir);
}

#[test]
fn conformance_jmespath() {
    run_all("jmespath", run_jmespath);
}
