//! Where a task or an exec is in its life, and the stdio paths containerd gave it: shared by
//! the task and its execs (a module of its own, so neither imports the other).

use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;

/// Where a task or an exec is in its life.
#[derive(Debug, Clone, PartialEq)]
pub enum Phase {
    /// Created; its process not started.
    Created,
    /// Its process runs.
    Running,
    /// Its process ended with this status (128+N for signal N) at this time.
    Exited(u32, Timestamp),
}

/// The stdio paths containerd gave.
#[derive(Debug, Clone, Default)]
pub struct StdioPaths {
    /// stdin (not forwarded yet).
    pub stdin: String,
    /// stdout.
    pub stdout: String,
    /// stderr.
    pub stderr: String,
}
