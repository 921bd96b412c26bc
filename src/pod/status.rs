//! `status.json`: what podvm recorded about a pod over its life (times, app exit codes).

use serde::{Deserialize, Serialize};

/// File name of the status record inside a pod directory.
pub const STATUS_FILE: &str = "status.json";

/// The exit of one app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppExit {
    /// The app's name.
    pub name: String,
    /// Its exit code as a shell reports it (128 + N for signal N).
    pub exit_code: i32,
}

/// The recorded life of a pod.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodStatus {
    /// When the pod was created (seconds since the epoch).
    pub created: u64,
    /// When its VM started.
    pub started: Option<u64>,
    /// When its VM ended.
    pub finished: Option<u64>,
    /// PID of the podvm process running the VM.
    pub pid: Option<u32>,
    /// Exit codes of the apps that ended.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub apps: Vec<AppExit>,
    /// Why the pod ended abnormally (e.g. its podvm process died), if it did.
    pub reason: Option<String>,
    /// The pod runs without its cgroup limits (`run --allow-unlimited`), so its podvm process
    /// is not in a pod cgroup.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unlimited: bool,
    /// What the pod used, recorded when its VM ended (`status` reads a running pod's live).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<PodUsage>,
}

/// What a pod used, for accounting (`status --format json`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodUsage {
    /// Wall time of the VM, milliseconds.
    pub wall_ms: u64,
    /// What its cgroup counted (the VMM and the vCPUs: the guest's CPU time and memory).
    #[serde(flatten)]
    pub cgroup: super::cgroup::CgroupUsage,
    /// Guest RAM the guest touched, KiB (after the VM ended).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_memory_kib: Option<u64>,
    /// Peak resident memory of the VMM process, guest RAM included, KiB (after the VM ended).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vmm_peak_rss_kib: Option<u64>,
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0)
}
