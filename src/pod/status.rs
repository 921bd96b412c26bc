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
    /// What ended it, when it was not its own doing: `oom-killed` when the guest kernel's OOM
    /// killer killed one of its processes (it, or one it started).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<EndCause>,
    /// How many of its processes the guest kernel's OOM killer killed, when it killed some.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oom_kills: Option<u64>,
}

impl AppExit {
    /// The exit of app `name` with `exit_code`, of which the guest's OOM killer killed
    /// `oom_kills` processes.
    pub fn new(name: &str, exit_code: i32, oom_kills: u64) -> Self {
        let killed = oom_kills > 0;
        Self {
            name: name.to_string(),
            exit_code,
            reason: killed.then_some(EndCause::OomKilled),
            oom_kills: killed.then_some(oom_kills),
        }
    }

    /// The line `run` prints about an app the OOM killer struck, if it did.
    pub fn oom_line(&self) -> Option<String> {
        let kills = self.oom_kills?;
        Some(format!(
            "oom-killed: the guest kernel's OOM killer killed {kills} process(es) of app {} \
             (exit code {}): it ran out of memory; raise its --memory",
            self.name, self.exit_code
        ))
    }
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
    /// Why the pod ended abnormally (e.g. its podvm process died), if it did: the whole error,
    /// with the guest's last console lines when there are some.
    pub reason: Option<String>,
    /// What ended the pod abnormally, when it is known (see [`EndCause`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<EndCause>,
    /// The pod runs without its cgroup limits (`run --allow-unlimited`), so its podvm process
    /// is not in a pod cgroup.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unlimited: bool,
    /// The seccomp mode of the pod's VMM threads (`kill`, `log` or `off`), recorded when its
    /// VM started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seccomp: Option<String>,
    /// What the pod used, recorded when its VM ended (`status` reads a running pod's live).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<PodUsage>,
}

impl PodStatus {
    /// Records the apps' exits; when the OOM killer struck one, that is the pod's cause and the
    /// reason names the first such app. Returns the line `run` prints for each such app.
    pub fn record_apps(&mut self, apps: Vec<AppExit>) -> Vec<String> {
        let lines: Vec<String> = apps.iter().filter_map(AppExit::oom_line).collect();
        if let Some(first) = lines.first() {
            if self.cause.is_none() {
                self.cause = Some(EndCause::OomKilled);
                self.reason = Some(first.clone());
            }
        }
        self.apps = apps;
        lines
    }
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
    /// Bytes the guest read from its shares (root filesystems and volumes) over virtio-fs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share_read_bytes: Option<u64>,
    /// Bytes the guest wrote to its shares over virtio-fs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share_written_bytes: Option<u64>,
    /// Bytes the pod received on its network interfaces (pods with a network).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net_rx_bytes: Option<u64>,
    /// Bytes the pod sent on its network interfaces (pods with a network).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net_tx_bytes: Option<u64>,
}

impl PodUsage {
    /// Adds the bytes through the shares, as the VMM counted them.
    pub fn set_share_bytes(&mut self, read: u64, written: u64) {
        self.share_read_bytes = Some(read);
        self.share_written_bytes = Some(written);
    }

    /// Adds the network bytes of the pod in `pod_dir`, when it has a network.
    pub fn add_net_bytes(&mut self, pod_dir: &std::path::Path) {
        if let Some(bytes) = crate::net::stats::pod_bytes(pod_dir) {
            self.net_rx_bytes = Some(bytes.rx);
            self.net_tx_bytes = Some(bytes.tx);
        }
    }
}

/// What ended a pod without its apps' exit report, as `status` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EndCause {
    /// The guest kernel died on its own: its console shows a panic, an Oops or a BUG.
    GuestPanic,
    /// The guest was reset with nothing from its kernel on the console: a triple fault.
    TripleFault,
    /// The guest ended before its agent started, with nothing from its kernel on the console.
    NoAgent,
    /// The guest agent sent data the host cannot read.
    AgentProtocol,
    /// The VMM failed: KVM, a device, or the VM could not be built.
    VmmError,
    /// The pod's podvm process (its VMM) was killed, or crashed, before it recorded the end.
    Killed,
    /// Killed by the kernel's OOM killer: the pod's cgroup reached its memory limit (its
    /// podvm process was killed), or, for an app, the guest kernel's OOM killer killed one of
    /// its processes.
    OomKilled,
    /// Stopped at its `run --timeout`.
    Timeout,
    /// The VMM was killed by its seccomp filter (SIGSYS): a VMM thread made a forbidden call.
    Seccomp,
}

impl EndCause {
    /// The name `status` shows.
    pub fn name(self) -> &'static str {
        match self {
            EndCause::GuestPanic => "guest-panic",
            EndCause::TripleFault => "triple-fault",
            EndCause::NoAgent => "no-agent",
            EndCause::AgentProtocol => "agent-protocol",
            EndCause::VmmError => "vmm-error",
            EndCause::Killed => "killed",
            EndCause::OomKilled => "oom-killed",
            EndCause::Timeout => "timeout",
            EndCause::Seccomp => "seccomp",
        }
    }
}

impl std::fmt::Display for EndCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_are_named_as_they_are_recorded() {
        for cause in [
            EndCause::GuestPanic,
            EndCause::TripleFault,
            EndCause::NoAgent,
            EndCause::AgentProtocol,
            EndCause::VmmError,
            EndCause::Killed,
            EndCause::OomKilled,
            EndCause::Timeout,
            EndCause::Seccomp,
        ] {
            let json = serde_json::to_string(&cause).expect("serialize");
            assert_eq!(json, format!("\"{}\"", cause.name()));
            let back: EndCause = serde_json::from_str(&json).expect("parse");
            assert_eq!(back, cause);
        }
        let old: PodStatus = serde_json::from_str(
            r#"{"created": 1, "started": null, "finished": 2, "pid": 3, "reason": "x"}"#,
        )
        .expect("a record without a cause still reads");
        assert_eq!(old.cause, None);
    }

    #[test]
    fn an_app_the_oom_killer_struck_reads_oom_killed_and_so_does_its_pod() {
        let mut status = PodStatus::default();
        let lines = status.record_apps(vec![
            AppExit::new("fine", 0, 0),
            AppExit::new("hog", 137, 1),
        ]);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].contains("app hog (exit code 137)"), "{}", lines[0]);
        assert_eq!(status.cause, Some(EndCause::OomKilled));
        let json = serde_json::to_value(&status).expect("json");
        assert_eq!(json["apps"][1]["reason"], "oom-killed");
        assert_eq!(json["apps"][1]["oom_kills"], 1);
        assert!(json["apps"][0].get("reason").is_none(), "{json}");
        let mut normal = PodStatus::default();
        assert!(normal
            .record_apps(vec![AppExit::new("fine", 3, 0)])
            .is_empty());
        assert_eq!((normal.cause, normal.reason), (None, None));
        let old: AppExit = serde_json::from_str(r#"{"name":"a","exit_code":1}"#).expect("old");
        assert_eq!(old, AppExit::new("a", 1, 0));
    }
}
