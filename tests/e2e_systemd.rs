//! End-to-end tests of podvm as a systemd service (issue 6, interop): `systemd-run podvm run ...`
//! under a real systemd (the host's Debian systemd, PID 1 of its own namespaces inside L1, see
//! tests/systemd/sdns) driven with the real `systemd-run`, `systemctl` and `journalctl`: the unit's
//! exit status is the app's, stdout and stderr reach the journal untouched, `systemctl stop` stops
//! the pod gracefully, and other signals reach the app without stopping it. All checks in ONE
//! nested L1 boot.

mod support;

#[path = "registry_support/mod.rs"]
mod registry_support;

use std::path::Path;
use std::time::Duration;

use registry_support::Fixtures;
use support::e2e::{self, E2e};
use support::nested::{Batch, CheckResult, Mode};

/// podvm with its own data dir inside the run directory, and the busybox image.
const PODVM: &str = "podvm --dir state";
const IMAGE: &str = "oci:busybox-layout:latest";
/// Runs the rest of the line in systemd's namespaces (cwd kept).
const SD: &str = "sdns run";
/// Starts a check that needs systemd: it fails at once when `setup` could not start it.
const NEEDS_SYSTEMD: &str = "sdns run true || exit 1;";

/// What systemd needs in L1: PID 1, the journal daemon (at the path its unit names), the system
/// bus with its configuration (`systemd-run --wait` tracks its unit through the bus), the client
/// tools, and util-linux's unshare and nsenter (busybox's lack cgroup namespaces).
const SYSTEMD_TOOLS: &[&str] = &[
    "/usr/lib/systemd/systemd",
    "/lib/systemd/systemd-journald",
    "/usr/bin/dbus-daemon",
    "/usr/share/dbus-1",
    "/usr/bin/systemd-run",
    "/usr/bin/systemctl",
    "/usr/bin/journalctl",
    "/usr/bin/unshare",
    "/usr/bin/nsenter",
];
/// Debian's units of the journal and the bus, used as they are; the rest of systemd's unit path
/// is tests/systemd/units (a target that starts them and nothing else).
const DEBIAN_UNITS: &[&str] = &[
    "/usr/lib/systemd/system/systemd-journald.service",
    "/usr/lib/systemd/system/systemd-journald.socket",
    "/usr/lib/systemd/system/systemd-journald-dev-log.socket",
    "/usr/lib/systemd/system/dbus.service",
    "/usr/lib/systemd/system/dbus.socket",
];

static RESULTS: E2e = E2e::new("setup");

fn check(name: &str) -> Option<&'static CheckResult> {
    RESULTS.check(name, batch)
}

/// Shell that waits (up to about a minute) until unit `unit`'s journal has the line `line`.
fn wait_journal(unit: &str, line: &str) -> String {
    format!(
        "for i in $(seq 120); do {SD} journalctl -u {unit} -o cat | grep -qx '{line}' && break; sleep 0.5; done"
    )
}

/// Shell that prints, after marker lines, unit `unit`'s journal as `journalctl -u` shows it and
/// only what the unit's processes wrote.
fn journal(unit: &str) -> String {
    format!(
        "{SD} journalctl --sync; \
         echo '--- journal -u {unit}'; {SD} journalctl -u {unit} -o cat --all; \
         echo '--- written by {unit}'; {SD} journalctl _SYSTEMD_UNIT={unit}.service -o cat --all; \
         echo '--- end'"
    )
}

/// Every check of this file, run in one L1 boot.
fn batch() -> Option<Batch> {
    if registry_support::skip() {
        return None;
    }
    if let Some(missing) = SYSTEMD_TOOLS
        .iter()
        .chain(DEBIAN_UNITS)
        .find(|path| !Path::new(path).exists())
    {
        support::artifacts::skip(&format!(
            "{missing} not found: the systemd tests carry the host's systemd and D-Bus into L1 (Debian's systemd and dbus packages)"
        ));
        return None;
    }
    let layout = Fixtures::get().layout("busybox");
    let dir = support::artifacts::repo_root().join("tests/systemd");
    // systemd runs as PID 1 of namespaces of the test machine: only in the throwaway L1, never
    // on a host that runs the checks directly.
    let batch = e2e::batch("e2e-systemd")?
        .mode(Mode::L1)
        .payload_dir(&layout, "busybox-layout")
        .payload_file(dir.join("sdns"), "bin/sdns")
        .payload_dir(dir.join("units"), "systemd/units");
    let batch = SYSTEMD_TOOLS
        .iter()
        .fold(batch, |batch, tool| batch.host_tool(tool));
    let batch = DEBIAN_UNITS.iter().fold(batch, |batch, unit| {
        let name = Path::new(unit).file_name().expect("a unit file name");
        batch.payload_file(unit, Path::new("systemd/units").join(name))
    });
    let batch = batch
        .default_check_timeout(Duration::from_secs(300))
        .check("setup", &format!("sdns start && {PODVM} fetch {IMAGE} >/dev/null"))
        .check(
            "exit_status_and_journal",
            &format!(
                "{NEEDS_SYSTEMD} {SD} systemd-run --wait -q -p Delegate=yes --unit=pod-exit -d {PODVM} run {IMAGE} --exec /bin/sh -- \
                 -c 'echo to-out; echo to-err >&2; exit 7'; echo rc=$?; \
                 {SD} systemctl show -p ExecMainStatus pod-exit; {}",
                journal("pod-exit")
            ),
        )
        .check(
            "stop_is_graceful",
            &format!(
                "{NEEDS_SYSTEMD} {SD} systemd-run -q -p Delegate=yes --unit=pod-term -d {PODVM} run --uuid-file-save term.uuid {IMAGE} --exec /bin/sh -- \
                 -c 'trap \"echo got-term; exit 3\" TERM; echo started; sleep 600 & wait'; {}; \
                 cg=/sys/fs/cgroup/podvm-systemd/system.slice/pod-term.service/pod-$(cat term.uuid); \
                 echo pod-cgroup-in-unit=$(ls -d $cg | wc -l) memory.max=$(cat $cg/memory.max) \
                 pids.max=$(cat $cg/pids.max) cpu.max=$(cat $cg/cpu.max 2>/dev/null || echo none); \
                 echo '--- systemctl status'; {SD} systemctl status --no-pager pod-term; \
                 {SD} systemctl stop pod-term; echo stop-rc=$?; \
                 {SD} systemctl show -p ExecMainStatus pod-term; {}; \
                 {PODVM} status $(cat term.uuid) | grep -E 'state=|app-'; \
                 echo podvm-processes=$(ps | grep -c '[p]odvm --dir'); \
                 echo pod-cgroups=$(find /sys/fs/cgroup -name \"pod-$(cat term.uuid)\" | wc -l)",
                wait_journal("pod-term", "started"),
                journal("pod-term")
            ),
        )
        .check(
            "signals_are_forwarded",
            &format!(
                "{NEEDS_SYSTEMD} {SD} systemd-run -q -p Delegate=yes --unit=pod-sig -d {PODVM} run --uuid-file-save sig.uuid {IMAGE} --exec /bin/sh -- \
                 -c 'trap \"echo got-hup\" HUP; trap \"echo got-usr1\" USR1; echo started; while :; do sleep 600 & wait; done'; \
                 {}; {SD} systemctl kill -s HUP --kill-whom=main pod-sig; \
                 {}; {SD} systemctl kill -s USR1 --kill-whom=main pod-sig; \
                 {}; sleep 15; echo active=$({SD} systemctl is-active pod-sig); \
                 {PODVM} status $(cat sig.uuid) | grep state=; \
                 echo '--- systemctl status'; {SD} systemctl status --no-pager pod-sig; \
                 {SD} systemctl stop pod-sig; echo stop-rc=$?; {}",
                wait_journal("pod-sig", "started"),
                wait_journal("pod-sig", "got-hup"),
                wait_journal("pod-sig", "got-usr1"),
                journal("pod-sig")
            ),
        );
    Some(batch)
}

/// The lines of `out` between the marker line `--- {title}` and the next marker.
fn section<'a>(out: &'a str, title: &str) -> Vec<&'a str> {
    let marker = format!("--- {title}");
    out.lines()
        .skip_while(|line| *line != marker)
        .skip(1)
        .take_while(|line| !line.starts_with("--- "))
        .collect()
}

/// Asserts that what unit `unit` wrote reached the journal as exactly `lines` (in any order:
/// stdout and stderr are two streams) and that `journalctl -u` shows them.
fn assert_journal(result: &CheckResult, unit: &str, lines: &[&str]) {
    let mut written = section(&result.stdout, &format!("written by {unit}"));
    written.sort_unstable();
    let mut expected = lines.to_vec();
    expected.sort_unstable();
    assert_eq!(
        written, expected,
        "the unit's output, line for line, nothing else: {result:?}"
    );
    let shown = section(&result.stdout, &format!("journal -u {unit}"));
    for line in lines {
        assert!(
            shown.contains(line),
            "journalctl -u {unit} shows {line:?}: {result:?}"
        );
    }
}

#[test]
fn the_units_exit_status_is_the_apps_and_its_output_reaches_the_journal_untouched() {
    let Some(result) = check("exit_status_and_journal") else {
        return;
    };
    let out = &result.stdout;
    assert!(
        out.lines().next() == Some("rc=7"),
        "systemd-run --wait gives the unit's status: {result:?}"
    );
    assert!(out.contains("\nExecMainStatus=7\n"), "{result:?}");
    assert!(
        !out.contains('\r') && !out.contains('\x1b'),
        "no carriage returns or escape codes: {result:?}"
    );
    assert_journal(result, "pod-exit", &["to-out", "to-err"]);
}

#[test]
fn systemctl_stop_stops_the_pod_gracefully() {
    let Some(result) = check("stop_is_graceful") else {
        return;
    };
    let out = &result.stdout;
    assert!(
        out.contains("pod-cgroup-in-unit=1"),
        "the pod's cgroup is below the unit's, so the journal and systemd keep it: {result:?}"
    );
    // The default VM (256 MiB + 192 MiB VMM margin); cpu.max only where systemd offers the
    // unit the cpu controller.
    assert!(
        out.contains(&format!("memory.max={} pids.max=257", (256 + 192) << 20)),
        "the pod's limits hold below the unit too: {result:?}"
    );
    assert!(out.contains("stop-rc=0"), "{result:?}");
    assert!(
        out.contains("\nExecMainStatus=3\n"),
        "the app's code from its TERM trap: {result:?}"
    );
    assert_journal(result, "pod-term", &["started", "got-term"]);
    assert!(
        out.contains("state=exited") && out.contains("app-busybox-layout=3"),
        "{result:?}"
    );
    assert!(out.contains("podvm-processes=0"), "{result:?}");
    assert!(
        out.contains("pod-cgroups=0"),
        "the pod's cgroup is gone: {result:?}"
    );
}

#[test]
fn hup_and_usr1_reach_the_app_without_stopping_the_pod() {
    let Some(result) = check("signals_are_forwarded") else {
        return;
    };
    let out = &result.stdout;
    assert!(
        out.contains("active=active\nstate=running\n"),
        "still running 15 s after HUP and USR1 (longer than podvm's stop timeout): {result:?}"
    );
    assert!(out.contains("stop-rc=0"), "{result:?}");
    let written = section(out, "written by pod-sig");
    assert_eq!(
        written,
        ["started", "got-hup", "got-usr1"],
        "each signal trapped once, in order: {result:?}"
    );
}
