//! End-to-end tests of the limits a hostile app runs into on the host (issue 19): its log is
//! capped however much it writes, and what a real run leaves in the data dir is root's alone.
//! All checks in ONE nested L1 boot (or directly on a host with real KVM).

mod support;

#[path = "registry_support/mod.rs"]
mod registry_support;

use std::time::Duration;

use registry_support::Fixtures;
use support::e2e::{self, E2e};
use support::nested::{Batch, CheckResult};

/// podvm with its own data dir inside the run directory, and the busybox image.
const PODVM: &str = "podvm --dir state";
const IMAGE: &str = "oci:busybox-layout:latest";
/// What the app writes in the flood checks of every run: 32 MiB, past a 1 MiB cap.
const FLOOD_MIB: u64 = 32;
/// What it writes in the long flood check, past a 1 MiB cap: 1 GiB.
const GIB_MIB: u64 = 1024;
/// What it writes in the check of the default 100 MiB cap: past it by a half.
const PAST_DEFAULT_MIB: u64 = 150;
/// How long one flood may run before it counts as hung (a 1 GiB flood takes about a minute in
/// the nested L1).
const FLOOD_DEADLINE: Duration = Duration::from_secs(300);
/// A flood check's own timeout: two attempts of [`FLOOD_DEADLINE`] and the log reads.
const FLOOD_CHECK_TIMEOUT: Duration = Duration::from_secs(900);
/// How podvm reports a guest that ended without its agent's exit report.
const SILENT_DEATH: &str = "the guest stopped before the agent reported an exit status";

static RESULTS: E2e = E2e::new("fetch");

fn check(name: &str) -> Option<&'static CheckResult> {
    RESULTS.check(name, batch)
}

/// A pod writing `mib` MiB to stdout with `flags` (tests/limits/flood.sh: a pod still running
/// after `deadline` is stopped, with evidence of what it was doing, and the flood runs once more),
/// then what its log holds: the log file's size, the bytes `podvm logs` replays, its last stderr
/// line, and the modes of the pod's files.
fn flood(id: &str, mib: u64, deadline: Duration, flags: &str) -> String {
    format!("flood.sh {id} {mib} {} {flags}", deadline.as_secs())
}

/// Every check of this file, run in one L1 boot (or on a host with real KVM).
fn batch() -> Option<Batch> {
    if registry_support::skip() {
        return None;
    }
    let fixtures = Fixtures::get();
    let batch = e2e::batch("e2e-limits")?
        .payload_dir(fixtures.layout("busybox"), "busybox-layout")
        .payload_executable("bin/flood.sh", include_str!("limits/flood.sh"))
        .check("fetch", &format!("{PODVM} fetch {IMAGE}"))
        .check(
            "stop_checks_the_pid",
            &format!(
                "{PODVM} run --uuid-file-save s.uuid {IMAGE} --exec /bin/sh -- -c 'trap \"echo got-term; exit 3\" TERM; echo started; sleep 600 & wait' >s.out 2>&1 & pid=$!; \
                 for i in $(seq 600); do grep -q started s.out 2>/dev/null && break; sleep 0.2; done; \
                 p=state/pods/run/$(cat s.uuid); sleep 600 & b=$!; \
                 sed -i \"s/\\\"pid\\\": [0-9]*/\\\"pid\\\": $b/\" $p/status.json; grep -c \"\\\"pid\\\": $b\" $p/status.json; \
                 {PODVM} stop --force $(cat s.uuid) 2>refused.err; echo refused-rc=$?; tail -1 refused.err; \
                 kill -0 $b && echo bystander-alive; kill $b; \
                 sed -i \"s/\\\"pid\\\": [0-9]*/\\\"pid\\\": $pid/\" $p/status.json; \
                 {PODVM} stop $(cat s.uuid) >/dev/null; echo stop-rc=$?; wait $pid; echo run-rc=$?; cat s.out"
            ),
        )
        .check_with_timeout(
            "flood_small_cap",
            &flood("small", FLOOD_MIB, FLOOD_DEADLINE, "--log-max 1Mi"),
            FLOOD_CHECK_TIMEOUT,
        );
    let batch = batch
        .check_with_timeout(
            "flood_gib_small_cap",
            &flood("gib-small", GIB_MIB, FLOOD_DEADLINE, "--log-max 1Mi"),
            FLOOD_CHECK_TIMEOUT,
        )
        .check_with_timeout(
            "flood_default_cap",
            &flood("default", PAST_DEFAULT_MIB, FLOOD_DEADLINE, ""),
            FLOOD_CHECK_TIMEOUT,
        );
    Some(batch.timeout(Duration::from_secs(2700)))
}

/// The value of `key=` in the check's output; panics with the whole result if it has none.
fn value<'a>(result: &'a CheckResult, key: &str) -> &'a str {
    result
        .stdout
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in the check's output:\n{result}"))
}

fn number(result: &CheckResult, key: &str) -> u64 {
    value(result, key)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{key}= is not a number:\n{result}"))
}

/// Asserts the flood's log stayed at `cap`, was filled up to it, and `podvm logs` said how
/// much was dropped: exactly what the log does not hold.
fn assert_capped(result: &CheckResult, written_mib: u64, cap: u64, cap_text: &str) {
    assert!(
        !result.stdout.contains("hung=1"),
        "the pod was still running {FLOOD_DEADLINE:?} after it started, in both attempts (its \
         threads and console are in the NOTE lines): {result}"
    );
    assert_eq!(
        value(result, "rc"),
        "0",
        "the app wrote {written_mib} MiB and exited: {result}"
    );
    let size = number(result, "size");
    assert!(
        size <= cap,
        "the log stays at its cap ({cap}): {size}; {result}"
    );
    assert!(
        size > cap - (64 << 10),
        "the log was filled up to its cap: {size}; {result}"
    );
    let replayed = number(result, "replayed");
    let note = value(result, "note");
    let dropped: u64 = note
        .strip_prefix("podvm: ")
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("`podvm logs` reports the truncation: {result}"));
    assert!(
        note.contains(&format!(
            "bytes of output were dropped after the {cap_text} log cap"
        )),
        "{note}"
    );
    assert_eq!(
        dropped + replayed,
        written_mib << 20,
        "every byte the app wrote is either kept or counted as dropped: {result}"
    );
    // Host side: what the run left is root's alone.
    for line in result
        .stdout
        .lines()
        .filter_map(|line| line.strip_prefix("mode "))
    {
        let mut fields = line.split_whitespace();
        let (mode, owner, name) = (fields.next(), fields.next(), fields.next());
        assert_eq!(owner, Some("0"), "{line}: root's");
        let want = match name {
            Some(name) if name.contains('.') || ["lock", "pod"].contains(&name) => "600",
            _ => "700",
        };
        assert_eq!(mode, Some(want), "{line}");
    }
}

#[test]
fn stop_signals_the_pods_podvm_and_never_a_pid_that_is_not_it() {
    // Attack: the pid a pod recorded now belongs to another process (its podvm died and the
    // pid was recycled); `stop` must not signal it.
    let Some(result) = check("stop_checks_the_pid") else {
        return;
    };
    let out = &result.stdout;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines.first(),
        Some(&"1"),
        "the pod records the bystander's pid: {result}"
    );
    assert!(out.contains("refused-rc=1"), "{result}");
    assert!(
        out.contains("is not the pod's podvm") && out.contains("nothing was signalled"),
        "{result}"
    );
    assert!(
        out.contains("bystander-alive"),
        "the bystander was not signalled: {result}"
    );
    // With the pod's own pid, pinned by a pidfd, in the pod's cgroup, holding its lock: stopped.
    assert!(out.contains("stop-rc=0"), "{result}");
    assert!(
        out.contains("run-rc=3") && out.contains("got-term"),
        "the app got SIGTERM: {result}"
    );
}

#[test]
fn an_app_flooding_its_output_keeps_its_log_at_the_cap_set_by_log_max() {
    // Attack: an app fills the host's disk through its log (`podvm logs` keeps all output).
    let Some(result) = check("flood_small_cap") else {
        return;
    };
    assert_capped(result, FLOOD_MIB, 1 << 20, "1 MiB");
}

/// The result of a 1 GiB flood check, or `None` with the reason and evidence printed when its
/// guest died silently in both attempts the harness makes. In the nested L1 (QEMU TCG emulating
/// AMD-V) some boots reset such guests mid-stream: a KVM shutdown exit with nothing on the
/// console. It is the environment, not podvm: QEMU microvm running the same kernel, agent and
/// flood over vhost-vsock under the same cgroup limits dies the same way in the same L1 boot
/// (issue 20 has the A/B runs). The cap is asserted whenever a guest finishes.
fn long_flood(name: &str) -> Option<&'static CheckResult> {
    let result = check(name)?;
    let died_twice = result.stdout.contains("rc=125")
        && result.stdout.contains(SILENT_DEATH)
        && result.stderr.contains("NOTE: retried once");
    if died_twice {
        eprintln!(
            "skipped {name}: its guest died silently in both attempts (a KVM shutdown exit with \
             no console output: the nested L1, see issue 20); the log cap was not asserted in \
             this run\n{result}"
        );
        return None;
    }
    Some(result)
}

#[test]
fn an_app_writing_a_gib_keeps_its_log_at_the_cap_set_by_log_max() {
    // Attack: as above, with 1 GiB of output.
    let Some(result) = long_flood("flood_gib_small_cap") else {
        return;
    };
    assert_capped(result, GIB_MIB, 1 << 20, "1 MiB");
}

#[test]
fn an_app_writing_past_the_default_100_mib_cap_keeps_its_log_at_it() {
    // Attack: as above, with the default cap.
    let Some(result) = long_flood("flood_default_cap") else {
        return;
    };
    assert_capped(result, PAST_DEFAULT_MIB, 100 << 20, "100 MiB");
}
