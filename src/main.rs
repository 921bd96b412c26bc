//! podvm: an rkt-style container runtime where every pod is a KVM microVM.

use std::process::ExitCode;

use clap::Parser;

mod cli;
mod image;
mod store;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    cli::run(args)
}
