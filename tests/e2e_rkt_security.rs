//! End-to-end tests of rkt's in-guest security (issue 18): the capability bounding set every app
//! starts with (rkt's default set, `--caps-retain`, `--caps-remove`), seccomp filters
//! (`--seccomp`, rkt's default whitelist), their appc isolators in `cat-manifest` and through
//! `run-prepared`, and `enter` sessions with their app's set. All checks in ONE nested L1 boot
//! (or directly on a host with real KVM), read from /proc/self/status inside the apps.

mod support;

#[path = "registry_support/mod.rs"]
mod registry_support;

use registry_support::Fixtures;
use support::e2e::{self, E2e};
use support::nested::{Batch, CheckResult};

/// podvm with its own data dir inside the run directory, and the busybox image.
const PODVM: &str = "podvm --dir state";
const IMAGE: &str = "oci:busybox-layout:latest";
/// rkt's default bounding set (CHOWN, DAC_OVERRIDE, FOWNER, FSETID, KILL, SETGID, SETUID,
/// SETPCAP, NET_BIND_SERVICE, NET_RAW, SYS_CHROOT, MKNOD, AUDIT_WRITE, SETFCAP) as
/// /proc/self/status shows it.
const RKT_CAPS: &str = "00000000a80425fb";
/// CAP_NET_ADMIN (12) alone.
const NET_ADMIN: &str = "0000000000001000";
/// CAP_KILL (5) and CAP_NET_ADMIN (12).
const KILL_NET_ADMIN: &str = "0000000000001020";
/// The capability and seccomp lines of the process's status.
const SHOW: &str = "grep -E \"^(Cap(Inh|Prm|Eff|Bnd|Amb)|Seccomp):\" /proc/self/status";
/// What busybox's `stat` calls on x86_64 (glibc's stat() is newfstatat) and its relatives.
const STAT_CALLS: &str = "stat,lstat,newfstatat,statx";

static RESULTS: E2e = E2e::new("fetch");

fn check(name: &str) -> Option<&'static CheckResult> {
    RESULTS.check(name, batch)
}

/// Starts a pod in the background whose app prints `started` then sleeps, waits for that line,
/// runs `then`, and stops the pod.
fn while_running(id: &str, app_flags: &str, then: &str) -> String {
    format!(
        "{PODVM} run --uuid-file-save {id}.uuid {app_flags} >{id}.out 2>&1 & pid=$!; \
         for i in $(seq 600); do grep -q started {id}.out 2>/dev/null && break; sleep 0.2; done; \
         u=$(cat {id}.uuid); {then}; {PODVM} stop $u >/dev/null; wait $pid; cat {id}.out"
    )
}

/// An app that prints `started` and sleeps until stopped.
const SLEEPER: &str = "--exec /bin/sh -- -c 'echo started; sleep 600 & wait'";

/// Every check of this file, run in one L1 boot (or on a host with real KVM).
fn batch() -> Option<Batch> {
    if registry_support::skip() {
        return None;
    }
    let fixtures = Fixtures::get();
    let batch = e2e::batch("e2e-rkt-security")?
        .payload_dir(fixtures.layout("busybox"), "busybox-layout")
        .check("fetch", &format!("{PODVM} fetch {IMAGE}"))
        .check(
            "default",
            &format!(
                "{PODVM} run {IMAGE} --exec /bin/sh -- -c '{SHOW}; touch /f && chown 1000 /f && echo chown-ok; \
                 umount /proc; echo umount-rc=$?' 2>&1; \
                 {PODVM} run {IMAGE} --user 1000 --group 1000 --exec /bin/sh -- -c '{SHOW}' | sed 's/^/user-/'"
            ),
        )
        .check(
            "retain",
            &format!("{PODVM} run {IMAGE} --caps-retain=CAP_NET_ADMIN --exec /bin/sh -- -c '{SHOW}'"),
        )
        .check(
            "remove_chown",
            &format!(
                "{PODVM} run {IMAGE} --caps-remove=CAP_CHOWN --exec /bin/sh -- -c \
                 '{SHOW}; touch /f; chown 1000 /f; echo chown-rc=$?' 2>&1"
            ),
        )
        .check(
            "seccomp_stat",
            &format!(
                "{PODVM} run {IMAGE} --seccomp mode=remove,errno=EXFULL,{STAT_CALLS} --exec /bin/stat -- /etc/passwd; echo rc=$?; \
                 {PODVM} run {IMAGE} --seccomp mode=retain,@appc.io/all --exec /bin/sh -- -c '{SHOW}; umount /proc; echo umount-rc=$?' 2>&1"
            ),
        )
        .check(
            "manifest",
            &format!(
                "u=$({PODVM} prepare {IMAGE} --caps-retain=CAP_NET_ADMIN --seccomp mode=remove,errno=EXFULL,{STAT_CALLS} \
                 --exec /bin/sh -- -c '{SHOW}; stat /etc/passwd; echo stat-rc=$?') && \
                 {PODVM} cat-manifest $u && echo && {PODVM} run-prepared $u 2>&1; echo run-rc=$?"
            ),
        )
        .check(
            "extra_flags",
            &format!(
                "u=$({PODVM} prepare {IMAGE} --supplementary-gids=10,27 --user-annotation team=web \
                 --user-label tier=front --oom-score-adj=-500 --cpu-shares=512 --exec /bin/sh -- -c \
                 'echo groups=$(id -G) oom=$(cat /proc/self/oom_score_adj) weight=$(cat /sys/fs/cgroup/app-*/cpu.weight)') && \
                 {PODVM} cat-manifest $u | tr -d ' \n' && echo && {PODVM} run-prepared $u"
            ),
        )
        .check(
            "bad_flags",
            &format!(
                "pods() {{ find state/pods -mindepth 2 -maxdepth 2 | wc -l; }}; n0=$(pods); \
                 {PODVM} prepare {IMAGE} --caps-retain=CAP_NET_ADMIN,CAP_FLY; echo rc=$?; \
                 {PODVM} prepare {IMAGE} --caps-remove=NOPE; echo rc=$?; \
                 {PODVM} prepare {IMAGE} --seccomp mode=remove,statz; echo rc=$?; \
                 {PODVM} prepare {IMAGE} --seccomp mode=remove,errno=EWHAT,stat; echo rc=$?; \
                 {PODVM} prepare {IMAGE} --caps-retain=CAP_KILL --caps-remove=CAP_CHOWN; echo rc=$?; \
                 echo pods-added=$(( $(pods) - n0 ))"
            ),
        )
        .check(
            "enter_single",
            &while_running(
                "one",
                &format!("{IMAGE} --caps-retain=CAP_KILL,CAP_NET_ADMIN {SLEEPER}"),
                &format!("{PODVM} enter $u /bin/sh -c '{SHOW}' | sed 's/^/enter-/'"),
            ),
        )
        .check(
            "enter_pod",
            &while_running(
                "two",
                &format!(
                    "{IMAGE} --name a {SLEEPER} --- {IMAGE} --name b --caps-retain=CAP_NET_ADMIN \
                     --seccomp mode=remove,errno=EXFULL,{STAT_CALLS} {SLEEPER}"
                ),
                &format!(
                    "{PODVM} enter --app a $u /bin/sh -c '{SHOW}' | sed 's/^/a-/'; \
                     {PODVM} enter --app b $u /bin/sh -c '{SHOW}; stat /etc/passwd' 2>&1 | sed 's/^/b-/'"
                ),
            ),
        );
    Some(batch)
}

/// The value of the status line `name` (e.g. `CapBnd`) after `prefix`.
fn field<'a>(out: &'a str, prefix: &str, name: &str) -> Option<&'a str> {
    let key = format!("{prefix}{name}:");
    out.lines()
        .find_map(|line| line.strip_prefix(key.as_str()))
        .map(str::trim)
}

#[test]
fn a_default_app_has_rkts_capabilities_and_seccomp_filter() {
    let Some(result) = check("default") else {
        return;
    };
    let out = &result.stdout;
    assert_eq!(field(out, "", "CapBnd"), Some(RKT_CAPS), "{result}");
    assert_eq!(field(out, "", "CapEff"), Some(RKT_CAPS), "root's: {result}");
    assert_eq!(field(out, "", "CapPrm"), Some(RKT_CAPS), "{result}");
    assert_eq!(
        field(out, "", "CapInh"),
        Some("0000000000000000"),
        "{result}"
    );
    assert_eq!(
        field(out, "", "CapAmb"),
        Some("0000000000000000"),
        "{result}"
    );
    assert_eq!(field(out, "", "Seccomp"), Some("2"), "a filter: {result}");
    assert!(out.contains("chown-ok"), "CAP_CHOWN is kept: {result}");
    // rkt's default whitelist lacks umount2: the process is killed with SIGSYS (128 + 31).
    assert!(out.contains("umount-rc=159"), "{result}");
    // Another user keeps the bounding set but, as in rkt, no capability to use.
    assert_eq!(field(out, "user-", "CapBnd"), Some(RKT_CAPS), "{result}");
    assert_eq!(
        field(out, "user-", "CapEff"),
        Some("0000000000000000"),
        "{result}"
    );
    assert_eq!(
        field(out, "user-", "CapPrm"),
        Some("0000000000000000"),
        "{result}"
    );
}

#[test]
fn caps_retain_leaves_only_those() {
    let Some(result) = check("retain") else {
        return;
    };
    let out = &result.stdout;
    assert_eq!(field(out, "", "CapBnd"), Some(NET_ADMIN), "{result}");
    assert_eq!(field(out, "", "CapEff"), Some(NET_ADMIN), "{result}");
}

#[test]
fn caps_remove_of_chown_makes_chown_fail() {
    let Some(result) = check("remove_chown") else {
        return;
    };
    let out = &result.stdout;
    assert_eq!(
        field(out, "", "CapBnd"),
        Some("00000000a80425fa"),
        "{result}"
    );
    assert!(out.contains("Operation not permitted"), "{result}");
    assert!(out.contains("chown-rc=1"), "{result}");
}

#[test]
fn seccomp_remove_with_errno_makes_stat_fail_with_exchange_full() {
    let Some(result) = check("seccomp_stat") else {
        return;
    };
    let out = &result.stdout;
    assert!(result.stderr.contains("Exchange full"), "{result}");
    assert!(out.contains("rc=1"), "{result}");
    // @appc.io/all as the retain-set: no filter at all, so umount fails on the missing
    // capability (EPERM) instead of killing the shell.
    assert_eq!(field(out, "", "Seccomp"), Some("0"), "{result}");
    assert!(out.contains("umount-rc=1"), "{result}");
}

#[test]
fn the_isolators_are_in_the_manifest_and_run_prepared_applies_them() {
    let Some(result) = check("manifest") else {
        return;
    };
    let out = &result.stdout;
    assert!(
        out.contains("\"os/linux/capabilities-retain-set\""),
        "{result}"
    );
    assert!(out.contains("\"CAP_NET_ADMIN\""), "{result}");
    assert!(out.contains("os/linux/seccomp-remove-set"), "{result}");
    assert!(out.contains("\"EXFULL\""), "{result}");
    assert!(out.contains("\"newfstatat\""), "{result}");
    assert_eq!(field(out, "", "CapBnd"), Some(NET_ADMIN), "{result}");
    assert!(out.contains("Exchange full"), "{result}");
    assert!(out.contains("stat-rc=1"), "{result}");
    assert!(out.contains("run-rc=0"), "{result}");
}

#[test]
fn unknown_names_are_refused_naming_the_flag_and_value() {
    let Some(result) = check("bad_flags") else {
        return;
    };
    let (out, err) = (&result.stdout, &result.stderr);
    assert_eq!(out.matches("rc=0").count(), 0, "{result}");
    for text in [
        "--caps-retain: unknown capability \"CAP_FLY\"",
        "--caps-remove: unknown capability \"NOPE\"",
        "--seccomp: unknown system call \"statz\"",
        "--seccomp: unknown errno \"EWHAT\"",
        "--caps-remove",
    ] {
        assert!(err.contains(text), "{text}: {result}");
    }
    assert!(
        out.contains("pods-added=0"),
        "nothing left behind: {result}"
    );
}

#[test]
fn enter_gets_the_apps_capabilities_in_a_single_app_pod() {
    let Some(result) = check("enter_single") else {
        return;
    };
    let out = &result.stdout;
    assert_eq!(
        field(out, "enter-", "CapBnd"),
        Some(KILL_NET_ADMIN),
        "{result}"
    );
    assert_eq!(
        field(out, "enter-", "CapEff"),
        Some(KILL_NET_ADMIN),
        "{result}"
    );
    assert_eq!(field(out, "enter-", "Seccomp"), Some("2"), "{result}");
}

#[test]
fn enter_gets_each_apps_own_set_in_a_pod_of_two() {
    let Some(result) = check("enter_pod") else {
        return;
    };
    let out = &result.stdout;
    assert_eq!(field(out, "a-", "CapBnd"), Some(RKT_CAPS), "{result}");
    assert_eq!(field(out, "b-", "CapBnd"), Some(NET_ADMIN), "{result}");
    assert!(
        out.contains("b-stat: can't stat '/etc/passwd': Exchange full"),
        "{result}"
    );
}

#[test]
fn supplementary_gids_annotations_labels_oom_and_shares_reach_the_manifest_and_the_app() {
    let Some(result) = check("extra_flags") else {
        return;
    };
    let out = &result.stdout;
    for text in [
        "\"supplementaryGIDs\":[10,27]",
        "\"userAnnotations\":{\"team\":\"web\"}",
        "\"userLabels\":{\"tier\":\"front\"}",
        "{\"name\":\"os/linux/oom-score-adj\",\"value\":-500}",
        "{\"name\":\"os/linux/cpu-shares\",\"value\":512}",
        // cpu.weight 20 is cpu.shares 512 mapped as runc maps it.
        "groups=0 10 27 oom=-500 weight=20",
    ] {
        assert!(out.contains(text), "{text}: {result}");
    }
}
