//! `podvm version`: what this podvm is and which guest artifacts it would boot.

use std::process::ExitCode;

use clap::Args;
use serde::Serialize;

use crate::artifacts;

/// Flags of `podvm version`.
#[derive(Debug, Args)]
pub struct VersionArgs {
    /// Output format: `table` (key: value lines) or `json`.
    #[arg(long, default_value = "table", value_parser = ["table", "json"])]
    format: String,
}

/// What `podvm version` reports.
#[derive(Debug, Serialize)]
struct VersionView {
    /// podvm's own version.
    podvm_version: &'static str,
    /// The host<->agent protocol version this podvm speaks.
    agent_protocol: u8,
    /// The guest kernel podvm boots by default, or why none was found.
    kernel: String,
    /// The guest agent podvm packs by default, or why none was found.
    agent: String,
}

/// Runs `podvm version`.
pub fn run(args: VersionArgs) -> ExitCode {
    let describe = |found: Result<std::path::PathBuf, artifacts::ArtifactError>| match found {
        Ok(path) => path.display().to_string(),
        Err(err) => format!("not found ({err})"),
    };
    let view = VersionView {
        podvm_version: env!("CARGO_PKG_VERSION"),
        agent_protocol: podvm_protocol::VERSION,
        kernel: describe(artifacts::kernel()),
        agent: describe(artifacts::agent()),
    };
    if args.format == "json" {
        println!(
            "{}",
            serde_json::to_string_pretty(&view).expect("the view always serializes")
        );
    } else {
        println!("podvm Version: {}", view.podvm_version);
        println!("Agent protocol: {}", view.agent_protocol);
        println!("Guest kernel: {}", view.kernel);
        println!("Guest agent: {}", view.agent);
    }
    ExitCode::SUCCESS
}
