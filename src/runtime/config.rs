//! The plain data a front end gives the runtime and gets back: what a sandbox, a container
//! and an exec are made from, where output goes, and the figures and states it reads.

use std::io::{self, Write};
use std::path::PathBuf;
use std::time::Duration;

use podvm_protocol::{ExitStatus, ProcessSpec};

/// What a sandbox is made from.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// The sandbox's private directory (created, 0700; it must not exist): the share of the
    /// containers' roots, their overlays' upper directories, the console log. Removed by
    /// [`Sandbox::stop`](super::Sandbox::stop).
    pub dir: PathBuf,
    /// Guest kernel; the installed one when `None`.
    pub kernel: Option<PathBuf>,
    /// Guest agent; the installed one when `None`.
    pub agent: Option<PathBuf>,
    /// vCPUs.
    pub cpus: u8,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// Extra kernel command line arguments.
    pub kernel_args: Vec<String>,
    /// How long the agent may take to come up.
    pub boot_timeout: Duration,
    /// How long the agent may take to answer a container request.
    pub request_timeout: Duration,
    /// At a stop, how long processes get between SIGTERM and SIGKILL.
    pub stop_grace: Duration,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::new(),
            kernel: None,
            agent: None,
            cpus: 1,
            memory_mib: 512,
            kernel_args: Vec::new(),
            boot_timeout: Duration::from_secs(120),
            request_timeout: Duration::from_secs(60),
            stop_grace: Duration::from_secs(10),
        }
    }
}

/// A container to add to a sandbox.
#[derive(Debug, Clone, Default)]
pub struct ContainerConfig {
    /// Its id: an appc ACName ([`podvm_protocol::check_container_id`]), unique in the sandbox.
    pub id: String,
    /// The image's rendered root filesystem on the host (never modified: the container's
    /// writes go to an overlay of it, or to a copy).
    pub rootfs: PathBuf,
    /// Its process, started by [`Sandbox::start`](super::Sandbox::start); `stdin` must be false (not supported yet).
    pub process: ProcessSpec,
    /// Its root is read-only.
    pub read_only: bool,
}

/// A command to run in a container's root while the sandbox runs.
#[derive(Debug, Clone, Default)]
pub struct ExecConfig {
    /// Program and arguments.
    pub command: Vec<String>,
    /// Environment as `KEY=VALUE` entries.
    pub env: Vec<String>,
    /// Working directory; `/` when absent.
    pub workdir: Option<String>,
    /// User, a name or number; root when absent.
    pub user: Option<String>,
    /// Group, a name or number; the user's when absent.
    pub group: Option<String>,
    /// Groups besides the user's.
    pub supplementary_gids: Vec<u32>,
    /// Run on a terminal of its own in the guest (its output is one stream: stdout).
    pub tty: bool,
}

/// Where a process's output goes (the caller's sinks; nothing is printed by the runtime).
pub struct Io {
    /// Its standard output.
    pub stdout: Box<dyn Write + Send>,
    /// Its standard error.
    pub stderr: Box<dyn Write + Send>,
}

impl Io {
    /// Output thrown away.
    pub fn discard() -> Self {
        Self {
            stdout: Box::new(io::sink()),
            stderr: Box::new(io::sink()),
        }
    }
}

impl std::fmt::Debug for Io {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Io")
    }
}

/// Where a container is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerStatus {
    /// Created; its process not started.
    Created,
    /// Its process was started.
    Running,
    /// Its process ended so.
    Exited(ExitStatus),
}

/// A sandbox's figures now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SandboxStats {
    /// Since the VM started.
    pub uptime: Duration,
    /// Guest memory configured, MiB.
    pub memory_mib: u64,
    /// Guest RAM the guest touched (resident on the host), KiB.
    pub guest_resident_kib: u64,
    /// Resident set of the whole process holding the VMM, KiB.
    pub process_rss_kib: u64,
    /// CPU time of the VM's vCPU threads so far, milliseconds.
    pub vcpu_time_ms: u64,
    /// vCPUs.
    pub vcpus: usize,
    /// Containers by status: created, running, exited.
    pub containers: (usize, usize, usize),
}
