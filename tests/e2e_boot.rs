//! End-to-end tests of `podvm boot`: real microVMs booting podvm's kernel and agent, all checks
//! in ONE nested L1 boot (or directly on a host with real KVM). Acceptance of the foundation issue.

mod support;

use support::e2e::{self, E2e};
use support::nested::{Batch, CheckResult};

/// Builds a busybox root tree inside the run directory from the payload's static busybox.
const SETUP_ROOTFS: &str = "mkdir -p rootfs/bin rootfs/etc rootfs/tmp && cp lib/podvm/busybox rootfs/bin/busybox \
     && for a in $(rootfs/bin/busybox --list); do [ $a = busybox ] || ln -sf busybox rootfs/bin/$a; done \
     && echo 'root:x:0:0:root:/root:/bin/sh' > rootfs/etc/passwd && echo rootfs-ready";

/// Size of the large-output check: 50 MiB of random bytes from the app to the host.
const BIG_OUTPUT_BYTES: u64 = 50 << 20;

static RESULTS: E2e = E2e::new("setup");

/// The result of check `name`, or `None` (test skipped) when artifacts are missing.
fn check(name: &str) -> Option<&'static CheckResult> {
    RESULTS.check(name, batch)
}

/// Every check of this file, run in one L1 boot (or on a host with real KVM).
fn batch() -> Option<Batch> {
    let boot = "podvm boot --initrd-dir rootfs";
    let batch = e2e::batch("e2e-boot")?
        .payload_bytes("text-kernel", "this is not a kernel\n")
        .check("setup", SETUP_ROOTFS)
        .check("echo_exit7", &format!("{boot} -- /bin/sh -c 'echo hi; exit 7'"))
        .check("sigkill", &format!("{boot} -- /bin/sh -c 'kill -9 $$'"))
        .check("missing_cmd", &format!("{boot} -- /no/such/command"))
        .check("streams", &format!("{boot} -- /bin/sh -c 'echo to-out; echo to-err >&2'"))
        .check(
            "env_workdir",
            &format!("{boot} --env GREETING=bonjour --workdir /tmp -- /bin/sh -c 'echo $GREETING; pwd'"),
        )
        .check("cpus2", &format!("{boot} --cpus 2 -- /bin/sh -c 'grep -c ^processor /proc/cpuinfo; nproc'"))
        .check(
            "memory512",
            &format!("{boot} --memory 512 -- /bin/sh -c \"awk '/MemTotal/ {{print \\$2}}' /proc/meminfo\""),
        )
        .check("missing_kernel", "podvm boot --kernel /payload/no-such-vmlinux -- /bin/true")
        .check("text_kernel", "podvm boot --kernel text-kernel -- /bin/true")
        .check("memory0", "podvm boot --memory 0 -- /bin/true")
        .check("check", "podvm check")
        .check(
            "big_output",
            &format!(
                "{boot} --memory 512 -- /bin/sh -c 'head -c {BIG_OUTPUT_BYTES} /dev/urandom | tee /tmp/x | md5sum >&2; cat /tmp/x' \
                 > big.out 2> big.err; echo rc=$?; wc -c < big.out; md5sum < big.out; cat big.err; rm -f big.out"
            ),
        )
        .check(
            "hwrng",
            &format!("{boot} -- /bin/sh -c 'cat /sys/class/misc/hw_random/rng_current; head -c 64 /dev/hwrng | od -An -tx1'"),
        );
    Some(batch)
}

#[test]
fn command_output_and_exit_code_come_back() {
    let Some(result) = check("echo_exit7") else {
        return;
    };
    assert_eq!(result.code, 7, "{result:?}");
    assert_eq!(result.stdout.trim(), "hi", "{result:?}");
}

#[test]
fn signal_death_is_128_plus_signal() {
    let Some(result) = check("sigkill") else {
        return;
    };
    assert_eq!(result.code, 137, "{result:?}");
}

#[test]
fn missing_command_is_127_with_a_clear_error() {
    let Some(result) = check("missing_cmd") else {
        return;
    };
    assert_eq!(result.code, 127, "{result:?}");
    assert!(result.stderr.contains("/no/such/command"), "{result:?}");
    assert!(result.stderr.contains("not found"), "{result:?}");
}

#[test]
fn stdout_and_stderr_stay_apart() {
    let Some(result) = check("streams") else {
        return;
    };
    assert_eq!(result.code, 0, "{result:?}");
    assert_eq!(result.stdout.trim(), "to-out", "{result:?}");
    assert!(result.stderr.contains("to-err"), "{result:?}");
    assert!(!result.stdout.contains("to-err"), "{result:?}");
}

#[test]
fn env_and_workdir_reach_the_command() {
    let Some(result) = check("env_workdir") else {
        return;
    };
    assert_eq!(result.code, 0, "{result:?}");
    assert_eq!(result.stdout.trim(), "bonjour\n/tmp", "{result:?}");
}

#[test]
fn two_vcpus_are_seen() {
    let Some(result) = check("cpus2") else { return };
    assert_eq!(result.code, 0, "{result:?}");
    assert_eq!(result.stdout.trim(), "2\n2", "{result:?}");
}

#[test]
fn memory_size_is_what_was_asked() {
    let Some(result) = check("memory512") else {
        return;
    };
    assert_eq!(result.code, 0, "{result:?}");
    let kib: u64 = result.stdout.trim().parse().expect("MemTotal in KiB");
    // MemTotal excludes what the kernel reserves for itself; about 512 MiB means 450..=512 MiB.
    assert!(
        (450 * 1024..=512 * 1024).contains(&kib),
        "MemTotal {kib} KiB: {result:?}"
    );
}

#[test]
fn missing_kernel_is_a_clear_error() {
    let Some(result) = check("missing_kernel") else {
        return;
    };
    assert_eq!(result.code, 125, "{result:?}");
    assert!(
        result.stderr.contains("/payload/no-such-vmlinux"),
        "{result:?}"
    );
    assert!(result.stderr.contains("not found"), "{result:?}");
}

#[test]
fn text_file_as_kernel_is_a_clear_error() {
    let Some(result) = check("text_kernel") else {
        return;
    };
    assert_eq!(result.code, 125, "{result:?}");
    assert!(result.stderr.contains("not a kernel image"), "{result:?}");
}

#[test]
fn zero_memory_is_a_clear_error() {
    let Some(result) = check("memory0") else {
        return;
    };
    assert_eq!(result.code, 125, "{result:?}");
    assert!(result.stderr.contains("--memory 0"), "{result:?}");
    assert!(result.stderr.contains("at least"), "{result:?}");
}

#[test]
fn check_says_pods_can_run_on_real_kvm() {
    let Some(result) = check("check") else { return };
    assert_eq!(result.code, 0, "{result:?}");
    assert!(
        result.stdout.contains("verdict: pods can run"),
        "{result:?}"
    );
}

#[test]
fn virtio_rng_feeds_dev_hwrng() {
    let Some(result) = check("hwrng") else { return };
    assert_eq!(result.code, 0, "{result:?}");
    let mut lines = result.stdout.lines();
    assert_eq!(lines.next(), Some("virtio_rng.0"), "{result:?}");
    let bytes: Vec<&str> = lines.flat_map(str::split_whitespace).collect();
    assert_eq!(bytes.len(), 64, "{result:?}");
    assert!(
        bytes.iter().filter(|b| **b == "00").count() < 16,
        "64 bytes from /dev/hwrng look not random: {result:?}"
    );
}

#[test]
fn large_output_arrives_byte_exact() {
    let Some(result) = check("big_output") else {
        return;
    };
    let lines: Vec<&str> = result.stdout.lines().collect();
    assert_eq!(lines.first(), Some(&"rc=0"), "{result:?}");
    assert_eq!(
        lines.get(1).map(|l| l.trim()),
        Some(BIG_OUTPUT_BYTES.to_string().as_str()),
        "{result:?}"
    );
    let host_md5 = lines.get(2).and_then(|l| l.split_whitespace().next());
    let guest_md5 = lines.get(3).and_then(|l| l.split_whitespace().next());
    assert!(host_md5.is_some_and(|m| m.len() == 32), "{result:?}");
    assert_eq!(
        host_md5, guest_md5,
        "host and guest checksums differ: {result:?}"
    );
}
