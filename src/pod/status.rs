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
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0)
}
