//! `podvm check`: what this host can do, and whether pods can run here.

use std::path::Path;
use std::process::ExitCode;

use clap::Args;
use serde::Serialize;

use crate::artifacts;
use crate::vmm::host::{self, KvmKind};
use crate::vmm::seccomp::{Mode, MODE_ENV};

/// Flags of `podvm check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Output format: `table` or `json`.
    #[arg(long, default_value = "table", value_parser = ["table", "json"])]
    format: String,
}

/// One line of the report.
#[derive(Debug, Serialize)]
struct Finding {
    /// What was checked.
    name: &'static str,
    /// Whether it is usable.
    ok: bool,
    /// Whether pods need it to run at all.
    required: bool,
    /// What was found, or what to do.
    detail: String,
}

/// The whole report.
#[derive(Debug, Serialize)]
struct Report {
    findings: Vec<Finding>,
    /// The seccomp mode of the VMM's threads in pods started with this environment.
    seccomp: &'static str,
    pods_can_run: bool,
    verdict: String,
}

/// Runs `podvm check`.
pub fn run(args: CheckArgs) -> ExitCode {
    let report = build_report();
    if args.format == "json" {
        match serde_json::to_string_pretty(&report) {
            Ok(json) => println!("{json}"),
            Err(err) => eprintln!("podvm: cannot encode the report: {err}"),
        }
    } else {
        for finding in &report.findings {
            let mark = match (finding.ok, finding.required) {
                (true, _) => "ok  ",
                (false, true) => "FAIL",
                (false, false) => "warn",
            };
            println!("{mark}  {:<14} {}", finding.name, finding.detail);
        }
        println!("verdict: {}", report.verdict);
    }
    if report.pods_can_run {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn build_report() -> Report {
    let findings = vec![
        kvm_finding(),
        device_finding(
            "vhost-vsock",
            "/dev/vhost-vsock",
            "modprobe vhost_vsock (the guest agent channel)",
            true,
        ),
        device_finding(
            "tun",
            "/dev/net/tun",
            "modprobe tun (pod networking)",
            false,
        ),
        cgroup_finding(),
        seccomp_finding(),
        cni_finding(),
        artifact_finding("guest kernel", artifacts::kernel()),
        artifact_finding("guest agent", artifacts::agent()),
    ];
    let blockers: Vec<&str> = findings
        .iter()
        .filter(|f| f.required && !f.ok)
        .map(|f| f.name)
        .collect();
    let pods_can_run = blockers.is_empty();
    let verdict = if pods_can_run {
        "pods can run on this host".to_string()
    } else {
        format!("pods cannot run here: fix {}", blockers.join(", "))
    };
    Report {
        findings,
        seccomp: Mode::current().as_str(),
        pods_can_run,
        verdict,
    }
}

fn kvm_finding() -> Finding {
    let (ok, detail) = match host::check_kvm_access() {
        Err(err) => (false, err.to_string()),
        Ok(()) => match host::kvm_kind() {
            KvmKind::Pvm => (false, host::pvm_explanation()),
            kind => (
                true,
                format!("{} usable, {}", host::KVM_DEVICE, kind.describe()),
            ),
        },
    };
    Finding {
        name: "kvm",
        ok,
        required: true,
        detail,
    }
}

fn device_finding(name: &'static str, path: &str, hint: &str, required: bool) -> Finding {
    let ok = Path::new(path).exists();
    let detail = if ok {
        format!("{path} present")
    } else {
        format!("{path} missing: {hint}")
    };
    Finding {
        name,
        ok,
        required,
        detail,
    }
}

fn cgroup_finding() -> Finding {
    let path = "/sys/fs/cgroup/cgroup.controllers";
    let (ok, detail) = match std::fs::read_to_string(path) {
        Ok(controllers) => (
            true,
            format!("cgroup v2 with controllers: {}", controllers.trim()),
        ),
        Err(_) => (
            false,
            "cgroup v2 not mounted at /sys/fs/cgroup (pod resource limits)".to_string(),
        ),
    };
    Finding {
        name: "cgroup v2",
        ok,
        required: false,
        detail,
    }
}

/// The seccomp mode of the VMM's threads, and whether the kernel has the actions it needs.
fn seccomp_finding() -> Finding {
    let mode = Mode::current();
    let actions =
        std::fs::read_to_string("/proc/sys/kernel/seccomp/actions_avail").unwrap_or_default();
    let needed = match mode {
        Mode::Kill => Some("kill_process"),
        Mode::Log => Some("log"),
        Mode::Off => None,
    };
    let ok = needed.is_none_or(|action| actions.split_whitespace().any(|a| a == action));
    let detail = match (mode, ok) {
        (_, false) => format!(
            "{}: the kernel lacks the seccomp action it needs (actions_avail: {})",
            mode.as_str(),
            actions.trim()
        ),
        (Mode::Kill, true) => "kill: each VMM thread kind has its filter".to_string(),
        (Mode::Log, true) => {
            format!("log ({MODE_ENV}=log): forbidden calls are logged, not fatal (debugging)")
        }
        (Mode::Off, true) => format!("off ({MODE_ENV}=unsafe-off): the VMM runs unfiltered"),
    };
    // Without the action its mode needs no VM starts (the filters fail closed); log and off
    // only warn.
    Finding {
        name: "seccomp",
        ok: ok && mode == Mode::Kill,
        required: !ok,
        detail,
    }
}

fn cni_finding() -> Finding {
    let dirs = ["/usr/lib/cni", "/opt/cni/bin"];
    let found = dirs
        .iter()
        .find(|dir| Path::new(dir).join("bridge").exists());
    let (ok, detail) = match found {
        Some(dir) => (true, format!("CNI plugins in {dir}")),
        None => (
            false,
            "no CNI plugins: apt-get install containernetworking-plugins (pod networking)"
                .to_string(),
        ),
    };
    Finding {
        name: "cni plugins",
        ok,
        required: false,
        detail,
    }
}

fn artifact_finding(
    name: &'static str,
    found: Result<std::path::PathBuf, artifacts::ArtifactError>,
) -> Finding {
    let (ok, detail) = match found {
        Ok(path) => (true, path.display().to_string()),
        Err(err) => (false, err.to_string()),
    };
    Finding {
        name,
        ok,
        required: true,
        detail,
    }
}
