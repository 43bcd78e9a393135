//! The `vitalflow` command line: parses the arguments and hands each subcommand to its file
//! under `cli/`.

mod cli;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

// Message parsing allocates and frees many small strings and maps; mimalloc measurably
// speeds normalization up over glibc malloc (benches/normalize.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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

#[derive(Subcommand)]
enum Command {
    /// Check device and FHIR mappings; report every problem with file, line and template.
    #[command(
        after_help = "Example:\n  vitalflow validate --device templates/iot-hub/devicecontent.json --fhir templates/iot-hub/fhirmapping.json"
    )]
    Validate(cli::validate::ValidateArgs),
    /// Mapping debugger: show what one device message becomes, or exactly why it fails.
    #[command(
        after_help = "The message is a device payload, wrapped as the job wraps a Kafka message: \
{\"Body\": <payload>, \"Properties\": <headers>, \"SystemProperties\": <Kafka metadata>}. \
With --event it is the whole event object, used verbatim.\n\nExamples:\n  \
vitalflow normalize --device templates/basic/devicecontent.json --fhir templates/basic/fhirmapping.json datasets/basic/heartrate.json\n  \
vitalflow normalize --device templates/iot-hub/devicecontent.json --event datasets/iot-hub/bloodpressure-event.json\n  \
vitalflow normalize --device d.json --system-property iothub-connection-device-id=dev-1 --property iothub-creation-time-utc=2026-11-21T10:00:00Z msg.json"
    )]
    Normalize(cli::normalize::NormalizeArgs),
    /// The mapping debugger in a browser: edit templates, paste a message, see the result.
    #[command(
        after_help = "Example:\n  vitalflow debugger --device templates/bedside-monitor/devicecontent.json --fhir templates/bedside-monitor/fhirmapping.json\n  then open http://127.0.0.1:8081/debugger"
    )]
    Debugger(cli::board::DebuggerArgs),
    /// Print a users-file line (name:argon2 hash) for the board; the password is read on stdin.
    BoardPassword(cli::board::PasswordArgs),
    /// Run a streaming job: Kafka (or a file, or the simulator) in, FHIR Observations out.
    #[command(after_help = cli::run::RUN_HELP)]
    Run(cli::run::RunArgs),
    /// Generate realistic, reproducible device messages into Kafka or an NDJSON file.
    #[command(after_help = cli::simulate::SIMULATE_HELP)]
    Simulate(cli::simulate::SimulateArgs),
    /// Measure the job under an open-loop load against benches/targets.toml.
    #[command(after_help = cli::bench::BENCH_HELP)]
    Bench(cli::bench::BenchArgs),
    /// Show the alerts a job delivers, as they come (its alerts topic, or its alert files).
    #[command(after_help = cli::alerts::ALERTS_HELP)]
    Alerts(cli::alerts::AlertsArgs),
    /// Maintain the lakehouse tables: compact small files, vacuum unreferenced ones.
    #[command(subcommand)]
    Lake(cli::lake::LakeWhat),
    /// Hospital device protocols into Kafka: HL7 v2 over MLLP.
    #[command(subcommand)]
    Gateway(cli::gateway::GatewayWhat),
    /// The plain-loop baseline `vitalflow bench peer` measures the job against.
    #[command(hide = true)]
    BenchLoop(cli::bench::BenchLoopArgs),
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Validate(args) => cli::validate::run(args),
        Command::Normalize(args) => cli::normalize::run(args),
        Command::Debugger(args) => cli::board::debugger(args),
        Command::BoardPassword(args) => cli::board::password(args),
        Command::Run(args) => cli::run::run(args),
        Command::Simulate(args) => cli::simulate::run(args),
        Command::Bench(args) => cli::bench::run(args),
        Command::BenchLoop(args) => cli::bench::bench_loop(args),
        Command::Alerts(args) => cli::alerts::run(args),
        Command::Lake(what) => cli::lake::run(what),
        Command::Gateway(what) => cli::gateway::run(what),
    }
}
