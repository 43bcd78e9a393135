//! `vitalflow validate`: every problem of a device and FHIR mapping, with where it is.

use super::normalize::print_error;
use super::*;
use serde_json::json;
use std::path::PathBuf;
use vitalflow::debugger::DebugError;
use vitalflow::mapping::{DeviceMapping, FhirMapping, TemplateErrors};

/// Arguments of `vitalflow validate`.
#[derive(clap::Args)]
pub struct ValidateArgs {
    /// Device mapping (devicecontent.json).
    #[arg(long)]
    device: Option<PathBuf>,
    /// FHIR mapping (fhirmapping.json).
    #[arg(long)]
    fhir: Option<PathBuf>,
    /// Output format [default: table on a terminal, json otherwise].
    #[arg(long, value_enum)]
    format: Option<Format>,
}

/// Runs `vitalflow validate`.
pub fn run(args: ValidateArgs) -> ExitCode {
    validate(
        args.device.as_deref(),
        args.fhir.as_deref(),
        resolve(args.format),
    )
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
        (Some((_, Ok(d))), Some((_, Ok(f)))) => vitalflow::mapping::unmapped_types(d, f)
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
