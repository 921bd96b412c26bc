//! Command line: clap definitions and dispatch to one module per verb.
//!
//! Exit codes: a verb that runs a workload exits with the workload's status (128 + N for a
//! signal); podvm's own failures exit with [`EXIT_PODVM_ERROR`], as Docker does.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod boot;
mod check;

/// Exit code for errors of podvm itself (as opposed to the workload's status).
pub const EXIT_PODVM_ERROR: u8 = 125;

/// podvm: run containers as hardware-isolated microVMs, with rkt's verbs and flags.
#[derive(Debug, Parser)]
#[command(name = "podvm", version, about, propagate_version = true)]
pub struct Cli {
    /// Root of podvm's state (image store, pods).
    #[arg(
        long = "dir",
        global = true,
        env = "PODVM_DIR",
        default_value = "/var/lib/podvm"
    )]
    pub data_dir: std::path::PathBuf,
    /// The verb.
    #[command(subcommand)]
    pub command: Command,
}

/// podvm's verbs.
#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per process; boxing buys nothing
pub enum Command {
    /// Boot a microVM that runs one command with the guest agent (low-level diagnostic).
    Boot(boot::BootArgs),
    /// Report what this host can do and whether pods can run here.
    Check(check::CheckArgs),
}

/// Runs the parsed command line and maps its result to the process exit code.
pub fn run(cli: Cli) -> ExitCode {
    let result: Result<ExitCode, Box<dyn std::error::Error>> = match cli.command {
        Command::Boot(args) => boot::run(args).map_err(Into::into),
        Command::Check(args) => Ok(check::run(args)),
    };
    result.unwrap_or_else(|err| {
        eprintln!("podvm: {err}");
        ExitCode::from(EXIT_PODVM_ERROR)
    })
}
