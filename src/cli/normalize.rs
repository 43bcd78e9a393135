//! `vitalflow normalize`: what one device message becomes, or exactly why it fails.

use super::*;
use comfy_table::{presets::UTF8_FULL_CONDENSED, ContentArrangement, Table};
use serde_json::Value;
use std::io::Read;
use std::path::PathBuf;
use vitalflow::debugger::{self, DebugError, Normalized};
use vitalflow::event;
use vitalflow::mapping::{DeviceMapping, FhirMapping};

/// Arguments of `vitalflow normalize`.
#[derive(clap::Args)]
pub struct NormalizeArgs {
    /// Device mapping (devicecontent.json).
    #[arg(long)]
    device: PathBuf,
    /// FHIR mapping (fhirmapping.json): also print the Observations.
    #[arg(long)]
    fhir: Option<PathBuf>,
    /// The input is the whole event object (as in the conformance cases), not a payload.
    #[arg(long)]
    event: bool,
    /// Message property (header) key=value, repeatable.
    #[arg(long = "property", value_name = "KEY=VALUE")]
    properties: Vec<String>,
    /// System property (broker metadata) key=value, repeatable.
    #[arg(long = "system-property", value_name = "KEY=VALUE")]
    system_properties: Vec<String>,
    /// Output format [default: table on a terminal, json otherwise].
    #[arg(long, value_enum)]
    format: Option<Format>,
    /// Message file, or - for standard input.
    message: String,
}

/// Runs `vitalflow normalize`.
pub fn run(args: NormalizeArgs) -> ExitCode {
    let format = resolve(args.format);
    let outcome = (|| {
        let input = read_input(&args.message)?;
        let device = DeviceMapping::from_file(&args.device).map_err(DebugError::Template)?;
        let fhir = (args.fhir.as_ref())
            .map(|p| FhirMapping::from_file(p))
            .transpose()
            .map_err(DebugError::Template)?;
        // An HL7 v2 message (with or without MLLP framing, segments ended by CR or LF) goes
        // to the Hl7v2Content templates, as in the job.
        if let Some(text) = vitalflow::hl7::text(&input) {
            return debugger::normalize_hl7(&device, fhir.as_ref(), &text);
        }
        let event = read_event(
            &args.message,
            &input,
            args.event,
            &args.properties,
            &args.system_properties,
        )?;
        debugger::normalize(&device, fhir.as_ref(), &event)
    })();
    match outcome {
        Ok(n) => {
            print_normalized(&n, format);
            ExitCode::SUCCESS
        }
        Err(e) => {
            print_error(&e, format);
            ExitCode::FAILURE
        }
    }
}

fn message_error(reason: String) -> DebugError {
    DebugError::Message {
        reason,
        template: None,
    }
}

/// The message file, or standard input for `-`.
fn read_input(source: &str) -> Result<Vec<u8>, DebugError> {
    if source == "-" {
        let mut s = Vec::new();
        std::io::stdin()
            .read_to_end(&mut s)
            .map_err(|e| message_error(format!("cannot read standard input: {e}")))?;
        Ok(s)
    } else {
        std::fs::read(source).map_err(|e| message_error(format!("cannot read {source}: {e}")))
    }
}

/// The event object templates see, from a JSON message.
fn read_event(
    source: &str,
    input: &[u8],
    verbatim: bool,
    props: &[String],
    sys: &[String],
) -> Result<Value, DebugError> {
    let text = String::from_utf8_lossy(input);
    let body: Value = serde_json::from_str(&text).map_err(|e| {
        message_error(format!(
            "{source}: invalid JSON at line {}, column {}: {e}",
            e.line(),
            e.column()
        ))
    })?;
    if verbatim {
        return Ok(body);
    }
    let properties =
        event::parse_pairs(props).map_err(|e| message_error(format!("--property: {e}")))?;
    let system =
        event::parse_pairs(sys).map_err(|e| message_error(format!("--system-property: {e}")))?;
    Ok(event::wrap(body, properties, system))
}

/// Prints why a message or mapping failed, as a table or JSON.
pub fn print_error(e: &DebugError, format: Format) {
    match format {
        Format::Json => outln!("{}", e.to_json()),
        Format::Table => match e {
            DebugError::Template(errors) => {
                eprintln!(
                    "error: invalid mapping ({} problem{})",
                    errors.0.len(),
                    plural(errors.0.len())
                );
                for err in &errors.0 {
                    eprintln!("  {err}");
                }
            }
            DebugError::Message { reason, .. } => {
                eprintln!("error: message cannot be normalized: {reason}")
            }
        },
    }
}

fn print_normalized(n: &Normalized, format: Format) {
    if format == Format::Json {
        outln!("{}", vitalflow::debugger::report_json(n));
        return;
    }
    if n.measurements.is_empty() {
        outln!("no template matched this message: 0 measurements");
    } else {
        let mut t = Table::new();
        t.load_preset(UTF8_FULL_CONDENSED)
            .set_content_arrangement(ContentArrangement::Dynamic);
        t.set_header([
            "#",
            "type",
            "device",
            "patient",
            "encounter",
            "correlation",
            "time (UTC)",
            "values",
        ]);
        for (i, m) in n.measurements.iter().enumerate() {
            let values: Vec<String> = m
                .properties
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            t.add_row([
                i.to_string(),
                m.type_name.to_string(),
                m.device_id.to_string(),
                m.patient_id.as_deref().unwrap_or("-").to_string(),
                m.encounter_id.as_deref().unwrap_or("-").to_string(),
                m.correlation_id.as_deref().unwrap_or("-").to_string(),
                vitalflow::time::format_rfc3339(&m.occurrence_time),
                values.join(", "),
            ]);
        }
        outln!(
            "{} measurement{}",
            n.measurements.len(),
            plural(n.measurements.len())
        );
        outln!("{t}");
    }
    if !n.devices.is_empty() {
        let mut t = Table::new();
        t.load_preset(UTF8_FULL_CONDENSED)
            .set_content_arrangement(ContentArrangement::Dynamic);
        t.set_header(["resource", "type", "identifier", "attributes", "parent"]);
        for row in vitalflow::debugger::device_rows(&n.devices) {
            t.add_row(row);
        }
        outln!(
            "\n{} device resource{} (Device, DeviceMetric)",
            n.devices.len(),
            plural(n.devices.len())
        );
        outln!("{t}");
    }
    if let Some(obs) = &n.observations {
        outln!("\n{} observation{}", obs.len(), plural(obs.len()));
        for o in obs {
            outln!("{}", serde_json::to_string_pretty(o).unwrap_or_default());
        }
    }
}
