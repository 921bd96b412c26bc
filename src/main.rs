//! podvm: an rkt-style container runtime where every pod is a KVM microVM.

use std::process::ExitCode;

fn main() -> ExitCode {
    // `podvm __vmm`: a VMM process started by a supervisor (not a user command, not in --help).
    if let Some(code) = podvm::runtime::vmm_main_if_asked() {
        return code;
    }
    let args = podvm::Cli::parse_args();
    podvm::run(args)
}
