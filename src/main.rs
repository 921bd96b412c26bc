//! podvm: an rkt-style container runtime where every pod is a KVM microVM.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args = podvm::Cli::parse_args();
    podvm::run(args)
}
