//! `containerd-shim-podvm-v2`: containerd's runtime v2 shim for podvm (task API v2, containerd
//! 1.6), selected with the runtime name `io.containerd.podvm.v2`. Each task runs in a podvm
//! sandbox of its own (one microVM per task): containerd's snapshot mount is mounted on the
//! bundle's rootfs and shared into the VM, the process of the bundle's OCI spec runs there.
//!
//! containerd runs the binary three ways: `start` (daemonise the shim server, print its ttrpc
//! address on stdout and nothing else), no action (the server: the task service of
//! [`service`]), and `delete` (clean a bundle up after the server died; see [`cleanup`]).

mod cleanup;
mod events;
mod exec;
mod exec_service;
mod metrics;
mod phase;
mod rootfs;
mod service;
mod spec;
mod stdio;
mod task;

use std::path::PathBuf;
use std::sync::Arc;

use containerd_shim::api::DeleteResponse;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{Config, ExitSignal, Flags, Shim, StartOpts};

/// The runtime's name in containerd's config (`runtime_type`).
const RUNTIME_ID: &str = "io.containerd.podvm.v2";

/// The shim's state across its three modes.
struct PodvmShim {
    namespace: String,
    bundle: PathBuf,
    exit: Arc<ExitSignal>,
}

impl Shim for PodvmShim {
    type T = service::Service;

    fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        let bundle = if args.bundle.is_empty() {
            std::env::current_dir().unwrap_or_default()
        } else {
            PathBuf::from(&args.bundle)
        };
        Self {
            namespace: args.namespace.clone(),
            bundle,
            exit: Arc::default(),
        }
    }

    fn start_shim(&mut self, opts: StartOpts) -> containerd_shim::Result<String> {
        // One shim (and one VM) per task: the task's id groups nothing else.
        let grouping = opts.id.clone();
        let (_pid, address) = containerd_shim::spawn(opts, &grouping, Vec::new())?;
        containerd_shim::util::write_address(&address)?;
        Ok(address)
    }

    fn delete_shim(&mut self) -> containerd_shim::Result<DeleteResponse> {
        cleanup::bundle(&self.bundle).map_err(|err| containerd_shim::Error::Other(err.to_string()))
    }

    fn wait(&mut self) {
        self.exit.wait();
    }

    fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        let events = events::EventQueue::start(publisher, self.namespace.clone());
        service::Service::new(events, self.exit.clone())
    }
}

fn main() -> std::process::ExitCode {
    // The runtime starts each sandbox's VMM process from this executable (`__vmm`): it runs
    // here, before containerd-shim reads its own arguments.
    if let Some(code) = podvm::runtime::vmm_main_if_asked() {
        return code;
    }
    let config = Config {
        // The runtime waits for the processes it starts itself: a reaper calling waitpid(-1)
        // on SIGCHLD would take their exit statuses away.
        no_reaper: true,
        no_sub_reaper: true,
        ..Config::default()
    };
    containerd_shim::run::<PodvmShim>(RUNTIME_ID, Some(config));
    std::process::ExitCode::SUCCESS
}
