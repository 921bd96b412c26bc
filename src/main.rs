//! podvm: an rkt-style container runtime where every pod is a KVM microVM.

use std::process::ExitCode;

use clap::Parser;

mod agent_link;
mod artifacts;
mod cli;
mod exec_client;
mod exec_info;
mod image;
mod initramfs;
mod launch;
mod net;
mod pod;
mod private;
mod relay;
mod stoppable;
mod store;
mod tree_copy;
mod vmm;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    cli::run(args)
}
