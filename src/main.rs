//! The `vitalflow` command line.

use clap::{Parser, Subcommand, ValueEnum};
use comfy_table::{presets::UTF8_FULL_CONDENSED, ContentArrangement, Table};
use serde_json::{json, Value};
use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use vitalflow::debugger::{self, DebugError, Normalized};
use vitalflow::event;
use vitalflow::mapping::{DeviceMapping, FhirMapping, TemplateErrors};

// Message parsing allocates and frees many small strings and maps; mimalloc measurably
// speeds normalization up over glibc malloc (benches/normalize.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `println!` that ignores a closed pipe (`vitalflow normalize ... | head` must not panic).
macro_rules! outln {
    ($($t:tt)*) => {{
        use std::io::Write;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}

#[derive(Parser)]
#[command(
    name = "vitalflow",
    version,
    about = "Stream medical-device vitals into FHIR R4, alerts and a lakehouse",
    long_about = "vitalflow reads device messages, normalizes them with IoMT FHIR Connector / Azure MedTech \
device mappings (devicecontent.json) and maps them to FHIR R4 Observations with FHIR mappings \
(fhirmapping.json).",
    after_help = "Examples:\n  \
vitalflow validate --device templates/bedside-monitor/devicecontent.json --fhir templates/bedside-monitor/fhirmapping.json\n  \
vitalflow normalize --device templates/bedside-monitor/devicecontent.json --fhir templates/bedside-monitor/fhirmapping.json datasets/bedside-monitor/reading.json\n  \
echo '{\"heartRate\": 72}' | vitalflow normalize --device devicecontent.json --format json -\n\n\
Exit codes: 0 success, 1 invalid mapping or message, 2 usage error."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum Format {
    /// Human-readable tables (default on a terminal).
    Table,
    /// One JSON object on stdout, for scripts.
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Check device and FHIR mappings; report every problem with file, line and template.
    #[command(
        after_help = "Example:\n  vitalflow validate --device templates/iot-hub/devicecontent.json --fhir templates/iot-hub/fhirmapping.json"
    )]
    Validate {
        /// Device mapping (devicecontent.json).
        #[arg(long)]
        device: Option<PathBuf>,
        /// FHIR mapping (fhirmapping.json).
        #[arg(long)]
        fhir: Option<PathBuf>,
        /// Output format [default: table on a terminal, json otherwise].
        #[arg(long, value_enum)]
        format: Option<Format>,
    },
    /// Mapping debugger: show what one device message becomes, or exactly why it fails.
    #[command(
        after_help = "The message is a device payload, wrapped as the job wraps a Kafka message: \
{\"Body\": <payload>, \"Properties\": <headers>, \"SystemProperties\": <Kafka metadata>}. \
With --event it is the whole event object, used verbatim.\n\nExamples:\n  \
vitalflow normalize --device templates/basic/devicecontent.json --fhir templates/basic/fhirmapping.json datasets/basic/heartrate.json\n  \
vitalflow normalize --device templates/iot-hub/devicecontent.json --event datasets/iot-hub/bloodpressure-event.json\n  \
vitalflow normalize --device d.json --system-property iothub-connection-device-id=dev-1 --property iothub-creation-time-utc=2026-11-21T10:00:00Z msg.json"
    )]
    Normalize {
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
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Validate {
            device,
            fhir,
            format,
        } => validate(device.as_deref(), fhir.as_deref(), resolve(format)),
        Command::Normalize {
            device,
            fhir,
            event,
            properties,
            system_properties,
            format,
            message,
        } => {
            let format = resolve(format);
            let outcome = (|| {
                let event = read_event(&message, event, &properties, &system_properties)?;
                let device = DeviceMapping::from_file(&device).map_err(DebugError::Template)?;
                let fhir = fhir
                    .map(|p| FhirMapping::from_file(&p))
                    .transpose()
                    .map_err(DebugError::Template)?;
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
    }
}

fn resolve(format: Option<Format>) -> Format {
    format.unwrap_or(if std::io::stdout().is_terminal() {
        Format::Table
    } else {
        Format::Json
    })
}

fn read_event(
    source: &str,
    verbatim: bool,
    props: &[String],
    sys: &[String],
) -> Result<Value, DebugError> {
    let message_error = |reason: String| DebugError::Message {
        reason,
        template: None,
    };
    let text = if source == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| message_error(format!("cannot read standard input: {e}")))?;
        s
    } else {
        std::fs::read_to_string(source)
            .map_err(|e| message_error(format!("cannot read {source}: {e}")))?
    };
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

fn print_error(e: &DebugError, format: Format) {
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

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

fn print_normalized(n: &Normalized, format: Format) {
    if format == Format::Json {
        let mut out = json!({ "measurements": n.measurements.iter().map(|m| m.to_json()).collect::<Vec<_>>() });
        if let Some(obs) = &n.observations {
            out["observations"] = Value::Array(obs.clone());
        }
        outln!("{out}");
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
                m.device_id.clone(),
                m.patient_id.clone().unwrap_or_else(|| "-".into()),
                m.encounter_id.clone().unwrap_or_else(|| "-".into()),
                m.correlation_id.clone().unwrap_or_else(|| "-".into()),
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
    if let Some(obs) = &n.observations {
        outln!("\n{} observation{}", obs.len(), plural(obs.len()));
        for o in obs {
            outln!("{}", serde_json::to_string_pretty(o).unwrap_or_default());
        }
    }
}

fn validate(device: Option<&Path>, fhir: Option<&Path>, format: Format) -> ExitCode {
    if device.is_none() && fhir.is_none() {
        eprintln!("error: give --device, --fhir or both");
        return ExitCode::from(2);
    }
    let mut errors = Vec::new();
    let mut summary = Vec::new();
    let dm = device.map(|p| (p, DeviceMapping::from_file(p)));
    let fm = fhir.map(|p| (p, FhirMapping::from_file(p)));
    if let Some((p, r)) = &dm {
        match r {
            Ok(m) => summary.push(format!(
                "{}: {} device template{}",
                p.display(),
                m.len(),
                plural(m.len())
            )),
            Err(TemplateErrors(e)) => errors.extend(e.iter().cloned()),
        }
    }
    if let Some((p, r)) = &fm {
        match r {
            Ok(m) => summary.push(format!(
                "{}: {} FHIR template{}",
                p.display(),
                m.templates().len(),
                plural(m.templates().len())
            )),
            Err(TemplateErrors(e)) => errors.extend(e.iter().cloned()),
        }
    }
    let warnings: Vec<String> = match (&dm, &fm) {
        (Some((_, Ok(d))), Some((_, Ok(f)))) => debugger::unmapped_types(d, f)
            .into_iter()
            .map(|t| format!("measurement type \"{t}\" has no FHIR template: its measurements cannot become Observations"))
            .collect(),
        _ => vec![],
    };
    let ok = errors.is_empty();
    match format {
        Format::Json if ok => outln!(
            "{}",
            json!({"valid": true, "summary": summary, "warnings": warnings})
        ),
        Format::Json => outln!("{}", DebugError::Template(TemplateErrors(errors)).to_json()),
        Format::Table => {
            for s in &summary {
                outln!("ok: {s}");
            }
            for w in &warnings {
                outln!("warning: {w}");
            }
            if !ok {
                print_error(&DebugError::Template(TemplateErrors(errors)), format);
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
