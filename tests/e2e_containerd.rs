//! End-to-end test of the containerd shim (issue 15): Debian's containerd 1.6, started with its
//! own config, root and state under the run directory, runs busybox tasks (imported from a
//! docker archive with `ctr images import`) with `--runtime io.containerd.podvm.v2`, i.e.
//! `containerd-shim-podvm-v2` from the payload's bin/, each task in a microVM of its own, and
//! kills one task's shim to see containerd's cleanup through the shim's `delete`; runs exec
//! processes in a task (with and without a terminal, detached, refused) and restarts
//! containerd under a running task. All in
//! ONE nested L1 boot (or directly on a host with real KVM); the work is done by
//! `tests/containerd/ctr-run.sh`, whose `key=value` lines this file checks.

mod support;

#[path = "registry_support/mod.rs"]
mod registry_support;

use std::path::Path;
use std::time::Duration;

use registry_support::Fixtures;
use support::artifacts;
use support::e2e::{self, E2e};
use support::nested::{Batch, CheckResult};

/// Debian's containerd and its client, carried into L1 from the host.
const CONTAINERD: &str = "/usr/bin/containerd";
const CTR: &str = "/usr/bin/ctr";
const SHIM: &str = "containerd-shim-podvm-v2";
/// util-linux `script`: gives `ctr task exec -t` a terminal of its own.
const SCRIPT: &str = "/usr/bin/script";

static RESULTS: E2e = E2e::new("ctr");

/// The script's output, once it ran through.
fn run() -> Option<&'static CheckResult> {
    RESULTS.check("ctr", batch)
}

/// The checks of this file, run in one L1 boot (or on a host with real KVM).
fn batch() -> Option<Batch> {
    if registry_support::skip() {
        return None;
    }
    for tool in [CONTAINERD, CTR, SCRIPT] {
        if !Path::new(tool).is_file() {
            artifacts::skip(&format!(
                "{tool} is missing: install Debian's containerd (make deps)"
            ));
            return None;
        }
    }
    let shim = artifacts::out_dir().join("bin").join(SHIM);
    if !shim.is_file() {
        artifacts::skip(&format!("{} is missing: run make binaries", shim.display()));
        return None;
    }
    let fixtures = Fixtures::get();
    let batch = e2e::batch("e2e-containerd")?
        .host_tool(CONTAINERD)
        .host_tool(CTR)
        .host_tool(SCRIPT)
        .payload_file(&shim, format!("bin/{SHIM}"))
        .payload_file(fixtures.docker_archive(), "busybox-docker.tar")
        .payload_executable("bin/ctr-run.sh", include_str!("containerd/ctr-run.sh"))
        .check_with_timeout(
            "ctr",
            "ctr-run.sh busybox-docker.tar",
            Duration::from_secs(480),
        );
    Some(batch.timeout(Duration::from_secs(900)))
}

/// Every `key=` value of the output, in order.
fn values<'a>(out: &'a str, key: &str) -> Vec<&'a str> {
    out.lines()
        .filter_map(|line| line.strip_prefix(&format!("{key}=")))
        .collect()
}

/// The value of `key=` (the first line that has it).
fn value<'a>(out: &'a str, key: &str) -> &'a str {
    values(out, key)
        .first()
        .copied()
        .unwrap_or_else(|| panic!("no {key}= in the output:\n{out}"))
}

/// The output after containerd came up and the image was imported.
fn output() -> Option<&'static str> {
    let result = run()?;
    let out = &result.stdout;
    assert_eq!(value(out, "containerd-up"), "yes", "{result}");
    assert!(
        value(out, "containerd-version").starts_with("1.6."),
        "Debian's containerd 1.6: {result}"
    );
    assert_eq!(value(out, "import-rc"), "0", "{result}");
    Some(out)
}

#[test]
fn ctr_run_rm_prints_the_tasks_output_and_exits_with_its_code() {
    let Some(out) = output() else { return };
    eprintln!(
        "t1: rc={} out={:?} err={:?} in {}s",
        value(out, "t1-rc"),
        values(out, "t1-out"),
        values(out, "t1-err"),
        value(out, "t1-secs")
    );
    assert_eq!(values(out, "t1-out"), ["hi"], "{out}");
    assert_eq!(value(out, "t1-rc"), "3", "{out}");
    assert!(values(out, "t1-err").is_empty(), "{out}");
}

#[test]
fn containerd_gets_the_tasks_events_in_order() {
    let Some(out) = output() else { return };
    assert_eq!(value(out, "events-subscribed"), "0", "{out}");
    assert_eq!(
        values(out, "t1-event"),
        [
            "/tasks/create",
            "/tasks/start",
            "/tasks/exit",
            "/tasks/delete"
        ],
        "{out}"
    );
}

#[test]
fn a_killed_shim_is_cleaned_up_by_its_delete_subcommand() {
    let Some(out) = output() else { return };
    assert_eq!(value(out, "t4-run-rc"), "0", "{out}");
    assert_eq!(value(out, "t4-running"), "RUNNING", "{out}");
    assert_eq!(
        value(out, "t4-shims"),
        "1",
        "one shim for the one task: {out}"
    );
    assert_eq!(
        value(out, "t4-vmms"),
        "1",
        "its VM in a VMM process of its own, started from the shim's executable: {out}"
    );
    assert_eq!(
        value(out, "t4-vmms-left-after-shim-kill"),
        "0",
        "the VMM process died with its shim: {out}"
    );
    assert_eq!(
        value(out, "t4-after-shim-kill"),
        "",
        "containerd dropped the task of the dead shim: {out}"
    );
    assert_eq!(value(out, "t4-container-rm-rc"), "0", "{out}");
    // What it left (mounts, bundle, VM) is checked with the rest in
    // nothing_is_left_once_the_tasks_are_removed.
}

#[test]
fn a_detached_task_is_listed_measured_killed_and_removed() {
    let Some(out) = output() else { return };
    eprintln!("t2 ls: {:?}", values(out, "t2-ls"));
    eprintln!("t2 metrics: {:?}", values(out, "t2-metrics"));
    eprintln!("t2 rm: {:?}", values(out, "t2-rm"));
    assert_eq!(value(out, "t2-run-rc"), "0", "{out}");
    assert!(
        value(out, "t2-running").starts_with("RUNNING"),
        "ctr task ls shows it running: {out}"
    );
    assert!(
        values(out, "t2-ls")
            .iter()
            .any(|line| line.starts_with("t2 ") && line.ends_with("RUNNING")),
        "{out}"
    );
    assert_eq!(value(out, "t2-ps-rc"), "0", "{out}");
    assert_eq!(value(out, "t2-metrics-rc"), "0", "{out}");
    assert_eq!(value(out, "t2-kill-rc"), "0", "{out}");
    assert_eq!(value(out, "t2-after-kill"), "STOPPED", "{out}");
    // Its trap of SIGTERM exited 7: `ctr task rm` warns about the non-zero status.
    assert_eq!(value(out, "t2-rm-rc"), "0", "{out}");
    assert!(
        values(out, "t2-rm")
            .iter()
            .any(|line| line.contains("exit with non-zero exit code 7")),
        "{out}"
    );
    assert_eq!(value(out, "t2-container-rm-rc"), "0", "{out}");
    assert_eq!(value(out, "tasks-after"), "0", "{out}");
}

#[test]
fn the_metrics_are_the_vms_cpu_and_memory() {
    let Some(out) = output() else { return };
    let metrics = values(out, "t2-metrics");
    let number = |name: &str| -> u64 {
        metrics
            .iter()
            .find_map(|line| {
                let mut words = line.split_whitespace();
                (words.next() == Some(name)).then(|| words.next()?.parse().ok())?
            })
            .unwrap_or_else(|| panic!("no {name} in ctr task metrics: {out}"))
    };
    assert!(number("memory.usage") > 0, "{out}");
    assert!(number("cpu.usage_usec") > 0, "{out}");
}

#[test]
fn a_privileged_task_is_refused_naming_the_field() {
    let Some(out) = output() else { return };
    assert_ne!(value(out, "t3-rc"), "0", "{out}");
    assert!(
        values(out, "t3-err")
            .iter()
            .any(|line| line.contains("linux.devices")),
        "{out}"
    );
}

#[test]
fn nothing_is_left_once_the_tasks_are_removed() {
    let Some(out) = output() else { return };
    for key in [
        "shims-left",
        "kvm-holders-left",
        "mounts-left",
        "bundles-left",
    ] {
        eprintln!("{key}={}", value(out, key));
    }
    assert_eq!(value(out, "shims-left"), "0", "no shim process: {out}");
    assert_eq!(
        value(out, "kvm-holders-left"),
        "0",
        "no VMM (no process holding /dev/kvm but the runner's kvm-hold): {out}"
    );
    assert_eq!(
        value(out, "mounts-left"),
        "0",
        "no mount under the dirs: {out}"
    );
    assert_eq!(value(out, "bundles-left"), "0", "no task bundle: {out}");
}

#[test]
fn an_exec_prints_its_output_and_exits_with_its_code() {
    let Some(out) = output() else { return };
    eprintln!(
        "e1: rc={} out={:?} err={:?} in {}s",
        value(out, "e1-rc"),
        values(out, "e1-out"),
        values(out, "e1-err"),
        value(out, "e1-secs")
    );
    assert_eq!(values(out, "e1-out"), ["x"], "{out}");
    assert_eq!(value(out, "e1-rc"), "4", "{out}");
    assert!(values(out, "e1-err").is_empty(), "{out}");
}

#[test]
fn an_exec_with_a_terminal_runs_on_a_pts_of_the_clients_size() {
    let Some(out) = output() else { return };
    eprintln!(
        "e2: {:?} err={:?}",
        values(out, "e2-out"),
        values(out, "e2-err")
    );
    assert_eq!(value(out, "e2-rc"), "0", "{out}");
    assert!(
        values(out, "e2-out")
            .iter()
            .any(|line| line.contains("/dev/pts/")),
        "tty prints its terminal: {out}"
    );
    assert!(
        values(out, "e2-out")
            .iter()
            .any(|line| line.trim() == "24 80"),
        "ctr's terminal size (ResizePty) reached the exec's pty: {out}"
    );
    assert!(
        !values(out, "e2-out")
            .iter()
            .any(|line| line.contains("ERRO")),
        "{out}"
    );
}

#[test]
fn a_long_exec_shows_in_ps_and_is_killed_by_its_exec_id() {
    let Some(out) = output() else { return };
    eprintln!("e3 ps: {:?}", values(out, "e3-ps"));
    assert_eq!(value(out, "e3-rc"), "0", "{out}");
    assert_eq!(value(out, "e3-ps-rc"), "0", "{out}");
    assert!(
        values(out, "e3-ps").iter().any(|line| line.contains("e3")),
        "{out}"
    );
    assert_eq!(value(out, "e3-kill-rc"), "0", "{out}");
    assert_eq!(
        value(out, "e3-gone"),
        "0",
        "gone from ps once killed: {out}"
    );
}

#[test]
fn containerd_gets_the_exec_events_in_order() {
    let Some(out) = output() else { return };
    assert_eq!(value(out, "exec-events-subscribed"), "0", "{out}");
    assert_eq!(
        values(out, "e1-event"),
        ["/tasks/exec-added", "/tasks/exec-started", "/tasks/exit"],
        "{out}"
    );
}

/// Attack: an exec whose spec has more arguments than the shim takes (a client making the
/// shim and the agent hold huge specs). Refused with an error naming the field; no exec was
/// added (no event) and nothing runs (not in ps).
#[test]
fn an_exec_with_too_many_arguments_is_refused_and_nothing_starts() {
    let Some(out) = output() else { return };
    eprintln!("e4 err: {:?}", values(out, "e4-err"));
    assert_ne!(value(out, "e4-rc"), "0", "{out}");
    assert!(
        values(out, "e4-err")
            .iter()
            .any(|line| line.contains("process.args") && line.contains("more than 1024")),
        "{out}"
    );
    assert!(values(out, "e4-out").is_empty(), "{out}");
    assert_eq!(value(out, "e4-in-ps"), "0", "{out}");
    assert_eq!(value(out, "e4-events"), "0", "{out}");
}

#[test]
fn a_task_survives_a_containerd_restart_and_is_killed_and_removed_after() {
    let Some(out) = output() else { return };
    eprintln!("t5 kill: {:?}", values(out, "t5-kill"));
    eprintln!("t5 rm: {:?}", values(out, "t5-rm"));
    assert_eq!(value(out, "t5-run-rc"), "0", "{out}");
    assert_eq!(value(out, "t5-running"), "RUNNING", "{out}");
    assert_eq!(value(out, "t5-containerd-back"), "0", "{out}");
    assert_eq!(value(out, "t5-after-restart"), "RUNNING", "{out}");
    assert_eq!(value(out, "t5-shims"), "1", "the shim kept running: {out}");
    assert_eq!(value(out, "t5-vmms"), "1", "its VM kept running: {out}");
    assert_eq!(value(out, "t5-kill-rc"), "0", "{out}");
    assert_eq!(value(out, "t5-after-kill"), "STOPPED", "{out}");
    assert_eq!(value(out, "t5-rm-rc"), "0", "{out}");
    assert_eq!(value(out, "t5-container-rm-rc"), "0", "{out}");
}
