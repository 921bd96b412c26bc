//! End-to-end test of rootless podvm (issue 17): an ordinary user in group kvm, with a cgroup
//! scope delegated to it as systemd gives one, fetches, runs, enters, stops, reads logs and
//! removes pods with its store in its own home, and nothing outside its directories changes.
//! Its pods' default network is passt's (a passt of the user per pod, the VM's NIC on passt's
//! socket): a guest fetches a page from a server on the host's loopback through it, and no
//! passt is left after the pod. What it cannot have (CNI networks) and what its host lacks
//! (group kvm, a delegated cgroup) are clear errors saying what to do. All in ONE nested L1 boot (or directly on a host
//! with real KVM); `tests/rootless/as-user.sh` sets the user up and runs podvm as it.

mod support;

#[path = "registry_support/mod.rs"]
mod registry_support;

use registry_support::Fixtures;
use serde_json::Value;
use support::e2e::{self, E2e};
use support::nested::{Batch, CheckResult};

/// podvm as the ordinary user (uid 4242), without --dir.
const AS_USER: &str = "as-user.sh";
const IMAGE: &str = "oci:busybox-layout:latest";
/// The user's data dir: `$XDG_DATA_HOME/podvm`'s default under its home.
const USER_DATA: &str = "/home/rl/.local/share/podvm";
/// setpriv from util-linux (busybox's cannot change uids), brought into L1.
const SETPRIV: &str = "/usr/bin/setpriv";
/// util-linux's unshare (a private mount namespace for as-user.sh's chroot).
const UNSHARE: &str = "/usr/bin/unshare";
/// Debian's passt, brought into L1 (rootless networking).
const PASST: &str = "/usr/bin/passt";
/// The page served on L1's loopback, fetched by the guest through passt.
const PAGE: &str = "hello through passt";

/// As root: busybox httpd on L1's loopback serving a page and 600 kB whose checksum is printed
/// (files in the payload's results, outside the -xdev scan of `host_untouched`), waited for; then as the
/// user a pod with the default network fetches both from passt's gateway address, which passt
/// maps to the host's loopback. Afterwards: passt processes and passt directories left.
fn passt_check() -> String {
    format!(
        "mkdir -p /payload/results/www && echo '{PAGE}' > /payload/results/www/page && seq 1 100000 > /payload/results/www/big; \
         echo host-md5=$(md5sum < /payload/results/www/big | cut -c1-32); \
         httpd -f -p 127.0.0.1:18080 -h /payload/results/www & h=$!; \
         for i in $(seq 100); do wget -qO- http://127.0.0.1:18080/page >/dev/null 2>&1 && break; sleep 0.1; done; \
         {AS_USER} run {IMAGE} --exec /bin/sh -- -c \
           'wget -qO- http://10.0.2.2:18080/page; echo guest-md5=$(wget -qO- http://10.0.2.2:18080/big | md5sum | cut -c1-32)'; \
         echo rc=$?; kill $h; rm -rf /payload/results/www; \
         for p in /proc/[0-9]*; do case \"$(cat $p/comm 2>/dev/null)\" in passt*) echo passt-left ${{p#/proc/}};; esac; done; \
         ls /home/rl/run | grep passt | sed 's/^/dir-left /'; echo end"
    )
}

static RESULTS: E2e = E2e::new("setup");

fn check(name: &str) -> Option<&'static CheckResult> {
    RESULTS.check(name, batch)
}

/// Every check of this file, run in one L1 boot (or on a host with real KVM).
fn batch() -> Option<Batch> {
    if registry_support::skip() {
        return None;
    }
    let fixtures = Fixtures::get();
    let running = "u=$(as-user.sh run --detach --net=none oci:busybox-layout:latest --exec /bin/sh -- \
                   -c 'trap \"exit 3\" TERM; echo started; sleep 600 & wait'); echo detach-rc=$?; \
                   pid=$(as-user.sh status $u | sed -n 's/^pid=//p'); \
                   echo supervisor-uid=$(awk '/^Uid:/ {print $2}' /proc/$pid/status); \
                   echo supervisor-cgroup=$(sed \"s/$u/UUID/\" /proc/$pid/cgroup); \
                   as-user.sh enter $u /bin/sh -c 'echo entered as $(id -u); exit 4'; echo enter-rc=$?; \
                   as-user.sh stop $u >/dev/null; echo stop-rc=$?; \
                   for i in $(seq 300); do as-user.sh status $u | grep -q state=exited && break; sleep 0.2; done; \
                   as-user.sh status $u | grep -E '^(state|app-)'";
    Some(
        e2e::batch("e2e-rootless")?
            .payload_dir(fixtures.layout("busybox"), "busybox-layout")
            .payload_executable("bin/as-user.sh", include_str!("rootless/as-user.sh"))
            .host_tool(SETPRIV)
            .host_tool(PASST)
            .host_tool(UNSHARE)
            .check("setup", &format!("{AS_USER} setup && {AS_USER} fetch {IMAGE} >/dev/null"))
            .check(
                "run",
                &format!(
                    "{AS_USER} run --uuid-file-save /home/rl/run.uuid --net=none {IMAGE} --exec /bin/sh -- \
                     -c 'echo hello from uid $(id -u) in the guest; echo written > /tmp/w; exit 7'; echo rc=$?; \
                     {AS_USER} status --format json $(cat /home/rl/run.uuid)"
                ),
            )
            .check(
                "logs",
                &format!("{AS_USER} logs $(cat /home/rl/run.uuid)"),
            )
            .check("running_pod", running)
            .check(
                "rm_gc",
                &format!(
                    "u=$(cat /home/rl/run.uuid); [ \"$({AS_USER} rm $u)\" = \"\\\"$u\\\"\" ] && echo rm-said-uuid; \
                     {AS_USER} gc --grace-period=0s >/dev/null; echo gc-rc=$?; \
                     echo pods-left=$({AS_USER} list --no-legend | wc -l); \
                     echo pod-dirs-left=$(find {USER_DATA}/pods -mindepth 2 -maxdepth 2 | wc -l)"
                ),
            )
            .check("passt_network", &passt_check())
            .check(
                "network_needs_root",
                &format!("{AS_USER} run --net=default-restricted {IMAGE} --exec /bin/true; echo rc=$?"),
            )
            .check(
                "no_delegated_cgroup",
                &format!("{AS_USER} --no-scope run --net=none {IMAGE} --exec /bin/true; echo rc=$?"),
            )
            .check(
                "no_kvm_group",
                &format!("{AS_USER} --no-kvm run --net=none {IMAGE} --exec /bin/true; echo rc=$?"),
            )
            .check(
                "host_untouched",
                &format!(
                    "ls -ld {USER_DATA} | awk '{{print $1, $3}}'; \
                     for d in /var/lib/podvm /run/podvm /run/netns /sys/fs/cgroup/podvm; do [ -e $d ] && echo made $d; done; \
                     find / -xdev -newer /run/rootless.stamp ! -path '/home/rl*' ! -path /run/rootless.stamp \
                     ! -path /sys/fs/cgroup/podvm-rootless.scope -print | sed 's/^/changed /'; \
                     ls /sys/fs/cgroup/podvm-rootless.scope | grep '^pod-' | sed 's/^/cgroup-left /'; echo end"
                ),
            ),
    )
}

fn lines(result: &CheckResult) -> Vec<&str> {
    result.stdout.lines().collect()
}

#[test]
fn an_ordinary_user_runs_a_pod_with_its_store_in_its_home() {
    let Some(result) = check("run") else {
        return;
    };
    let out = lines(result);
    // The guest's root is the user's as far as the guest knows; the host ran it all as 4242.
    assert_eq!(
        out.first().copied(),
        Some("hello from uid 0 in the guest"),
        "{result}"
    );
    assert!(out.contains(&"rc=7"), "the app's exit code: {result}");
    let json = out
        .iter()
        .skip_while(|l| !l.starts_with('{'))
        .copied()
        .collect::<String>();
    let status: Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {result}"));
    assert_eq!(status["state"], "exited", "{result}");
    assert_eq!(status["apps"][0]["exit_code"], 7, "{result}");
}

#[test]
fn logs_replay_the_output_for_the_user() {
    let Some(result) = check("logs") else {
        return;
    };
    result.expect_lines(&["hello from uid 0 in the guest"]);
}

#[test]
fn a_running_pod_is_entered_and_stopped_by_its_user_in_its_delegated_cgroup() {
    let Some(result) = check("running_pod") else {
        return;
    };
    let out = lines(result);
    for want in [
        "detach-rc=0",
        "supervisor-uid=4242",
        "supervisor-cgroup=0::/podvm-rootless.scope/pod-UUID",
        "entered as 0",
        "enter-rc=4",
        "stop-rc=0",
        "state=exited",
    ] {
        assert!(out.contains(&want), "{want:?} in:\n{result}");
    }
}

#[test]
fn rm_and_gc_leave_nothing_of_the_users_pods() {
    let Some(result) = check("rm_gc") else {
        return;
    };
    result.expect_lines(&["rm-said-uuid", "gc-rc=0", "pods-left=0", "pod-dirs-left=0"]);
}

/// `check`'s output ends with rc=125 and its stderr says `what`.
fn refused_saying(name: &str, what: &[&str]) {
    let Some(result) = check(name) else {
        return;
    };
    assert_eq!(lines(result).last().copied(), Some("rc=125"), "{result}");
    for part in what {
        assert!(
            result.stderr.contains(part),
            "{part:?} in the error:\n{result}"
        );
    }
}

#[test]
fn a_rootless_pod_fetches_from_the_hosts_loopback_through_passt_and_leaves_no_passt() {
    let Some(result) = check("passt_network") else {
        return;
    };
    let out = lines(result);
    assert!(out.contains(&PAGE), "the page, byte-exact: {result}");
    let host = out
        .iter()
        .find_map(|l| l.strip_prefix("host-md5="))
        .unwrap_or_else(|| panic!("host checksum: {result}"));
    assert!(
        out.contains(&format!("guest-md5={host}").as_str()),
        "600 kB through passt intact: {result}"
    );
    assert!(out.contains(&"rc=0"), "{result}");
    assert!(
        !out.iter()
            .any(|l| l.starts_with("passt-left") || l.starts_with("dir-left")),
        "passt and its directory go with the pod: {result}"
    );
    assert_eq!(out.last().copied(), Some("end"), "{result}");
}

#[test]
fn a_rootless_cni_network_is_refused_naming_passt_and_net_none() {
    refused_saying("network_needs_root", &["needs root", "passt", "--net=none"]);
}

#[test]
fn without_a_delegated_cgroup_the_error_says_how_to_get_one() {
    refused_saying(
        "no_delegated_cgroup",
        &["not delegated to uid 4242", "systemd-run --user --scope"],
    );
}

#[test]
fn without_group_kvm_the_error_says_to_join_it() {
    refused_saying("no_kvm_group", &["/dev/kvm", "`kvm` group"]);
}

#[test]
fn nothing_outside_the_users_directories_changed() {
    let Some(result) = check("host_untouched") else {
        return;
    };
    result.expect_lines(&["drwx------ 4242", "end"]);
}
