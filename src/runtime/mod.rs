//! The runtime library: live sandboxes. A front end (the CLI, a test driver, later a shim)
//! creates a [`Sandbox`] from a plain [`SandboxConfig`], which boots a microVM with the guest
//! agent and no workload, then adds containers to it while it runs ([`Sandbox::add_container`],
//! [`Sandbox::start`], [`Sandbox::wait`], [`Sandbox::signal`], [`Sandbox::exec`], [`Sandbox::exec_start`],
//! [`Sandbox::remove`]), reads its [`Sandbox::stats`], and [`Sandbox::stop`]s it, which removes
//! everything it made on the host. Plain structs in, typed errors ([`SandboxError`]) out; the
//! library never prints, reads stdin or installs signal handlers: output goes to the sinks the
//! caller passes ([`Io`]).
//!
//! Each sandbox's VM runs in a VMM process of its own (see `crate::vmm::process`), started
//! from the caller's executable: a front end calls [`vmm_main_if_asked`] first in `main`.
//!
//! # Containers' roots: one share per sandbox
//!
//! A sandbox has ONE virtio-fs share (tag `containers`) made at boot, with a directory per
//! container that the host fills before it asks the agent to create the container, and empties
//! after the agent removed it (see [`share`]):
//!
//! ```text
//! <dir>/share/<id>/rootfs      the container's root: an overlay of the image tree (its lower
//!                              layer, never modified), or a copy without mount privilege
//! <dir>/overlay/<id>/{upper,work}   the overlay's writes, outside the share: never visible
//! <dir>/console.log            the guest's console
//! ```
//!
//! Hot-adding a virtio-fs device per container would need PCI or mmio hotplug, which the VMM
//! does not have; one share known at boot keeps the boot the same for every sandbox (a
//! template can be snapshotted before any workload) and needs no device work. The cost is that
//! every container's root sits in one guest-writable tree, so the host never resolves a path
//! string in it: every name is created and opened relative to its parent's descriptor without
//! following symlinks, and the overlay is mounted onto, and later unmounted by, descriptors
//! (mount API: fsopen/fsmount/move_mount). The agent finds `<id>/rootfs` beneath the share
//! without following symlinks either, and binds it at `/opt/stage2/<id>/rootfs`.
//!
//! # Sessions
//!
//! Container requests travel on the agent's boot session and are answered in order
//! ([`session`]); each container's process has a session of its own, opened by the agent when
//! it starts, carrying its output; exec sessions are opened by the host to the agent's exec
//! port with the sandbox's secret token.

pub(crate) mod boot;
pub mod config;
pub mod exec;
pub mod sandbox;
pub mod session;
pub mod share;

pub use config::{ContainerConfig, ContainerStatus, ExecConfig, Io, SandboxConfig, SandboxStats};
pub use exec::{ExecError, ExecProcess};
pub use podvm_protocol::{AppLimits, ExitStatus, ProcessSpec};
pub use sandbox::{Sandbox, SandboxError};

/// Runs a sandbox's VMM process when this process was started as one (`argv[1]` is
/// `__vmm`), returning its exit code; `None` otherwise. A sandbox starts its VMM from its own
/// executable, so a front end that embeds the runtime calls this first in `main`.
pub fn vmm_main_if_asked() -> Option<std::process::ExitCode> {
    crate::vmm::process::child::main_if_asked()
}
