//! podvm: an rkt-style container runtime where every pod is a KVM microVM.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = podvm::Cli::parse();
    podvm::run(args)
}
