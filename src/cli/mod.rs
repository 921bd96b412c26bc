//! Command line: clap definitions and dispatch to one module per verb.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
pub enum Command {}

/// Runs the parsed command line and maps its result to the process exit code.
pub fn run(cli: Cli) -> ExitCode {
    match cli.command {}
}
