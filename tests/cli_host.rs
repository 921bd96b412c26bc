//! Host-level tests of the podvm CLI that need no guest: argument errors and the host report.

use std::path::Path;
use std::process::{Command, Output};

fn podvm(args: &[&str], lib_dir: Option<&Path>) -> Output {
    podvm_at(Path::new(env!("CARGO_BIN_EXE_podvm")), args, lib_dir)
}

/// Runs the podvm binary at `binary` (its directory is part of the artifact search).
fn podvm_at(binary: &Path, args: &[&str], lib_dir: Option<&Path>) -> Output {
    let mut command = Command::new(binary);
    command.args(args).env_remove("PODVM_LIB_DIR");
    if let Some(dir) = lib_dir {
        command.env("PODVM_LIB_DIR", dir);
    }
    command.output().expect("run podvm")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn is_pvm_host() -> bool {
    Path::new("/sys/module/kvm_pvm").exists()
}

#[test]
fn boot_without_a_command_is_a_usage_error() {
    let output = podvm(&["boot"], None);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    assert!(stderr(&output).contains("CMD"), "{output:?}");
}

#[test]
fn bad_env_entry_is_named() {
    let output = podvm(&["boot", "--env", "NOEQUALS", "--", "/bin/true"], None);
    assert_eq!(output.status.code(), Some(125), "{output:?}");
    assert!(
        stderr(&output).contains("--env NOEQUALS: expected KEY=VALUE"),
        "{output:?}"
    );
}

#[test]
fn missing_agent_names_where_podvm_looked() {
    // The binary in an empty directory, so nothing is found next to it either.
    let empty = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let binary = empty.path().join("bin/podvm");
    std::fs::create_dir_all(empty.path().join("bin")).expect("mkdir");
    // A hard link, not a copy: a copy's write handle may leak into a child forked concurrently
    // by another test thread and make exec fail with ETXTBSY.
    std::fs::hard_link(env!("CARGO_BIN_EXE_podvm"), &binary).expect("link podvm");
    let kernel = empty.path().join("k");
    std::fs::write(&kernel, "x").expect("write");
    let output = podvm_at(
        &binary,
        &[
            "boot",
            "--kernel",
            kernel.to_str().expect("utf8"),
            "--",
            "/bin/true",
        ],
        Some(empty.path()),
    );
    assert_eq!(output.status.code(), Some(125), "{output:?}");
    let err = stderr(&output);
    assert!(err.contains("cannot find the guest agent"), "{err}");
    assert!(err.contains(&empty.path().display().to_string()), "{err}");
}

#[test]
fn check_json_is_machine_readable() {
    let output = podvm(&["check", "--format", "json"], None);
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json report");
    let can_run = report["pods_can_run"].as_bool().expect("pods_can_run");
    assert_eq!(output.status.success(), can_run, "{report}");
    let names: Vec<&str> = report["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .filter_map(|finding| finding["name"].as_str())
        .collect();
    for expected in [
        "kvm",
        "vhost-vsock",
        "tun",
        "cgroup v2",
        "cni plugins",
        "guest kernel",
        "guest agent",
    ] {
        assert!(names.contains(&expected), "{expected} missing in {names:?}");
    }
}

#[test]
fn pvm_host_is_explained_instead_of_failing_obscurely() {
    if !is_pvm_host() {
        eprintln!("skipping: this host's KVM is not PVM (/sys/module/kvm_pvm absent)");
        return;
    }
    let lib = tempfile::tempdir().expect("tempdir");
    std::fs::write(lib.path().join("vmlinux"), "stand-in kernel").expect("write");
    std::fs::write(lib.path().join("podvm-agent"), "stand-in agent").expect("write");
    let output = podvm(&["boot", "--", "/bin/true"], Some(lib.path()));
    assert_eq!(output.status.code(), Some(125), "{output:?}");
    let err = stderr(&output);
    assert!(err.contains("PVM (kvm_pvm)"), "{err}");
    assert!(err.contains("--kernel"), "{err}");

    let check = podvm(&["check"], Some(lib.path()));
    assert!(!check.status.success(), "{check:?}");
    assert!(
        String::from_utf8_lossy(&check.stdout).contains("PVM"),
        "{check:?}"
    );
}

#[test]
fn version_reports_podvm_and_protocol_versions_as_json() {
    let output = podvm(&["version", "--format", "json"], None);
    assert!(output.status.success(), "{}", stderr(&output));
    let view: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
    assert_eq!(view["podvm_version"], env!("CARGO_PKG_VERSION"));
    assert!(
        view["agent_protocol"].as_u64().is_some_and(|v| v >= 1),
        "{view}"
    );
    assert!(
        view["kernel"].is_string() && view["agent"].is_string(),
        "{view}"
    );
}

#[test]
fn run_and_prepare_help_list_every_app_flag() {
    for verb in ["run", "prepare"] {
        let out = podvm(&[verb, "--help"], None);
        assert!(out.status.success(), "{}", stderr(&out));
        let help = String::from_utf8_lossy(&out.stdout);
        let (_, app_flags) = help
            .split_once("App flags (after each IMAGE")
            .unwrap_or_else(|| panic!("`{verb} --help` has a section of app flags:\n{help}"));
        for flag in [
            "--exec=",
            "--user=",
            "--group=",
            "--mount=",
            "--readonly-rootfs",
            "--caps-retain=",
            "--caps-remove=",
            "--seccomp=",
        ] {
            assert!(app_flags.contains(flag), "{verb}: {flag} in\n{app_flags}");
        }
        assert!(
            app_flags.contains("Program to run instead of the image's"),
            "with their meaning: {app_flags}"
        );
    }
}
