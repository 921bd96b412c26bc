//! Command line: clap definitions and dispatch to one module per verb.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod fetch;
mod image;

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
pub enum Command {
    /// Fetch images into the store and print their ids.
    Fetch(fetch::FetchArgs),
    /// Manage images in the store.
    Image(image::ImageArgs),
}

/// Runs the parsed command line and maps its result to the process exit code.
pub fn run(cli: Cli) -> ExitCode {
    let result: Result<ExitCode, Box<dyn std::error::Error>> = match cli.command {
        Command::Fetch(args) => fetch::run(&cli.data_dir, args).map_err(Into::into),
        Command::Image(args) => image::run(&cli.data_dir, args).map_err(Into::into),
    };
    result.unwrap_or_else(|err| {
        eprintln!("podvm: {err}");
        ExitCode::FAILURE
    })
}
