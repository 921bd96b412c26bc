//! End-to-end test of the runtime library (issue 13), through a real VM and without the podvm
//! binary's pod commands: `podvm-probe sandbox-demo` (tests/probe) calls only
//! `podvm::runtime` to create a sandbox, add a busybox container and later a `layers` one
//! (each rootfs a rendered image tree on the host), exec in each, signal one, wait for both,
//! read stats, remove both and stop; the checks then look that nothing is left: no mounts, no
//! sandbox directory, no threads, no process (the probe's nor its VMM process's). The podvm
//! binary only fetches and renders the two images. All in ONE nested L1 boot (or directly on a host with real KVM).

mod support;

#[path = "registry_support/mod.rs"]
mod registry_support;

use std::time::Duration;

use registry_support::Fixtures;
use support::e2e::{self, E2e};
use support::nested::{Batch, CheckResult};

/// podvm with its own data dir inside the run directory.
const PODVM: &str = "podvm --dir state";
const BUSYBOX: &str = "oci:busybox-layout:latest";
const LAYERS: &str = "oci:layers-layout:latest";

static RESULTS: E2e = E2e::new("render");

fn check(name: &str) -> Option<&'static CheckResult> {
    RESULTS.check(name, batch)
}

/// The checks of this file, run in one L1 boot (or on a host with real KVM).
fn batch() -> Option<Batch> {
    if registry_support::skip() {
        return None;
    }
    let fixtures = Fixtures::get();
    let batch = e2e::batch("e2e-runtime")?
        .payload_dir(fixtures.layout("busybox"), "busybox-layout")
        .payload_dir(fixtures.layout("layers"), "layers-layout")
        .check(
            "render",
            &format!(
                "{PODVM} fetch {BUSYBOX} {LAYERS} && \
                 {PODVM} image render {BUSYBOX} bb-root && {PODVM} image render {LAYERS} ly-root"
            ),
        )
        .check_with_timeout(
            "sandbox_demo",
            "start=$(date +%s); test/podvm-probe sandbox-demo sbx bb-root ly-root; echo rc=$?; \
             echo seconds=$(( $(date +%s) - start )); \
             echo mounts-left=$(grep -c \" $(pwd -P)/sbx\" /proc/self/mountinfo); \
             echo sbx-left=$(test -e sbx && echo yes || echo no); \
             echo probes-left=$(grep -la '[s]andbox-demo' /proc/[0-9]*/cmdline 2>/dev/null | wc -l); \
             echo vmms-left=$(grep -la '[_]_vmm' /proc/[0-9]*/cmdline 2>/dev/null | wc -l); \
             echo images-intact=$(test -e ly-root/hello.txt && test ! -e ly-root/ly-release && echo yes)",
            Duration::from_secs(240),
        );
    Some(batch.timeout(Duration::from_secs(900)))
}

/// The value of `key=` in the output (the first line that has it).
fn value<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines()
        .find_map(|line| line.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in {out}"))
}

/// Every `key=` value in the output, in order.
fn values<'a>(out: &'a str, key: &str) -> Vec<&'a str> {
    out.lines()
        .filter_map(|line| line.strip_prefix(&format!("{key}=")))
        .collect()
}

/// A number of the `stats` line.
fn stat(out: &str, key: &str) -> u64 {
    out.lines()
        .find(|line| line.starts_with("stats "))
        .and_then(|line| {
            line.split_whitespace()
                .find_map(|field| field.strip_prefix(&format!("{key}=")))
        })
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no stats {key}= in {out}"))
}

fn demo() -> Option<&'static CheckResult> {
    let result = check("sandbox_demo")?;
    assert_eq!(
        value(&result.stdout, "rc"),
        "0",
        "the demo ran through: {result}"
    );
    Some(result)
}

#[test]
fn containers_from_two_images_run_side_by_side_in_one_sandbox() {
    let Some(result) = demo() else { return };
    let out = &result.stdout;
    eprintln!("sandbox demo took {}s", value(out, "seconds"));
    assert!(out.contains("created cid="), "{result}");
    // Each container sees its own image: only `layers` has /hello.txt.
    assert_eq!(
        values(out, "exec-bb-out"),
        ["in-bb", "no-hello"],
        "{result}"
    );
    assert_eq!(
        values(out, "exec-ly-out"),
        ["in-ly", "has-hello"],
        "{result}"
    );
    assert_eq!(value(out, "exec-bb-status"), "Code(0)", "{result}");
    assert_eq!(value(out, "exec-ly-status"), "Code(0)", "{result}");
    assert_eq!(
        value(out, "mounts-running"),
        "2",
        "one overlay per container while they run: {result}"
    );
    assert_eq!(
        value(out, "host-sees-ly-write"),
        "true",
        "a write in the container lands in its private upper dir on the host: {result}"
    );
}

#[test]
fn a_signalled_container_and_one_that_ends_by_itself_are_both_waited_for() {
    let Some(result) = demo() else { return };
    let out = &result.stdout;
    // bb traps SIGTERM and exits 7; ly exits 3 once exec released it; all output delivered.
    assert_eq!(value(out, "bb-exit"), "Code(7)", "{result}");
    assert_eq!(value(out, "ly-exit"), "Code(3)", "{result}");
    assert_eq!(
        values(out, "bb-out"),
        ["bb-started", "bb-got-term"],
        "{result}"
    );
    let ly = values(out, "ly-out");
    assert_eq!(ly.last(), Some(&"ly-released"), "{result}");
    assert!(
        ly.len() >= 2,
        "ly printed the image's /hello.txt first: {result}"
    );
}

#[test]
fn stats_show_the_sandboxs_memory_and_cpu() {
    let Some(result) = demo() else { return };
    let out = &result.stdout;
    assert_eq!(stat(out, "memory_mib"), 384, "{result}");
    assert!(stat(out, "vcpus") >= 1, "{result}");
    assert!(stat(out, "vcpu_time_ms") > 0, "the guest ran: {result}");
    let guest = stat(out, "guest_resident_kib");
    assert!(guest > 1024, "the guest touched its memory: {result}");
    assert!(stat(out, "process_rss_kib") >= guest, "{result}");
}

#[test]
fn nothing_is_left_after_stop() {
    let Some(result) = demo() else { return };
    let out = &result.stdout;
    assert_eq!(
        values(out, "removed bb share-dir-left")
            .into_iter()
            .chain(values(out, "removed ly share-dir-left"))
            .collect::<Vec<_>>(),
        ["false", "false"],
        "remove empties the container's place in the share: {result}"
    );
    assert!(out.contains("stopped"), "{result}");
    for (key, want) in [
        ("mounts-after", "0"),
        ("dir-left", "false"),
        ("threads-after", "1"),
        ("mounts-left", "0"),
        ("sbx-left", "no"),
        ("probes-left", "0"),
        ("vmms-left", "0"),
        ("images-intact", "yes"),
    ] {
        assert_eq!(value(out, key).trim(), want, "{key}: {result}");
    }
}
