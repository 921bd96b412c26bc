//! Tests of the nested E2E harness itself (tests/nested/l1.sh + tests/support); they need no
//! podvm artifacts. All checks share ONE L1 boot (or run on the host when it has real KVM).

mod support;

use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use support::nested::{Batch, BatchResults, Mode, RETRIES_LOG};

const BLOB_LEN: usize = 3 * 1024 * 1024 + 17;

/// Deterministic pseudo-random bytes (xorshift64), so a truncated or mangled copy is caught.
fn blob() -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..BLOB_LEN)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn results() -> &'static BatchResults {
    static RESULTS: OnceLock<BatchResults> = OnceLock::new();
    RESULTS.get_or_init(|| {
        Batch::new("harness-selftest")
            .memory_mib(1024)
            .timeout(Duration::from_secs(900))
            .payload_bytes("data/blob.bin", blob())
            .payload_executable("bin/payload-tool", "#!/bin/sh\necho payload-tool ran with $1\n")
            .host_tool("/usr/bin/env")
            // First, so it proves a failing (timed out) check does not stop the rest.
            .check_with_timeout("slow", "echo started; sleep 30; echo not reached", Duration::from_secs(2))
            .check("hello", "echo hello")
            .check(
                "retried",
                "if [ ! -e retried.first ]; then touch retried.first; echo first-attempt; \
                 echo 'podvm: pod 0a1b2c3d-0000-4000-8000-000000000001: the guest stopped before the agent reported an exit status (vcpu0 rip=0xdead)' >&2; \
                 exit 125; fi; echo second-attempt",
            )
            .check("oops", "echo oops >&2; exit 3")
            .check("kvm", "test -c /dev/kvm && exec 3<>/dev/kvm && echo kvm-open; ls /sys/module | grep -E '^kvm_(amd|intel)$'")
            .check("cpus", "grep -c ^processor /proc/cpuinfo; if grep -qw svm /proc/cpuinfo; then echo svm; fi")
            .check("blob", "sha256sum data/blob.bin")
            .check("cwd", "pwd; echo \"$PAYLOAD\"; echo \"$PATH\"; payload-tool arg1")
            .check("scratch", "mkdir -p scratch && echo written > scratch/f && cat scratch/f")
            .check("host_tool", "/usr/bin/env --version")
            .check(
                "l1_env",
                "grep -w cgroup2 /proc/mounts | cut -d' ' -f2; grep -w devpts /proc/mounts | cut -d' ' -f2; \
                 for d in /dev/vhost-vsock /dev/vhost-net /dev/net/tun; do test -c $d && echo $d; done; \
                 ip link show lo | grep -q 'UP' && echo lo-up; \
                 for m in bridge veth overlay nf_tables br_netfilter fuse; do test -d /sys/module/$m && echo mod:$m; done",
            )
            .run()
    })
}

fn sha256_hex(data: &[u8]) -> String {
    let dir = tempfile::tempdir().expect("create temp dir");
    let path = dir.path().join("blob");
    std::fs::write(&path, data).expect("write temp blob");
    let out = Command::new("sha256sum")
        .arg(&path)
        .output()
        .expect("run host sha256sum");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .next()
        .expect("sha256sum prints a digest")
        .to_owned()
}

#[test]
fn stdout_is_captured() {
    let r = results().get("hello").expect_success("hello");
    assert_eq!(r.stdout, "hello\n");
    assert_eq!(r.stderr, "");
}

/// A check whose first attempt ends like a silent guest death is retried once; the retry keeps
/// the first attempt's evidence in the check's stderr and in the run's retries log.
#[test]
fn a_retried_check_keeps_the_first_attempts_evidence() {
    let r = results().get("retried").expect_success("retried");
    assert_eq!(r.stdout, "second-attempt\n", "{r}");
    assert!(r.stderr.contains("NOTE: retried once"), "{r}");
    assert!(
        r.stderr.contains(
            "NOTE:   podvm: pod 0a1b2c3d-0000-4000-8000-000000000001: the guest stopped before \
             the agent reported an exit status (vcpu0 rip=0xdead)"
        ),
        "{r}"
    );
    let log = std::fs::read_to_string(support::nested::work_root().join(RETRIES_LOG))
        .expect("the run's retries log");
    assert!(
        log.lines()
            .any(|l| l.starts_with("harness-selftest/retried: podvm: pod 0a1b2c3d")),
        "{log}"
    );
}

#[test]
fn stderr_and_exit_code_are_captured() {
    let r = results().get("oops");
    assert_eq!(r.code, 3, "{r}");
    assert_eq!(r.stderr, "oops\n");
    assert_eq!(r.stdout, "");
}

#[test]
fn check_timeout_gives_124_and_the_batch_goes_on() {
    let r = results().get("slow");
    assert_eq!(r.code, 124, "{r}");
    assert_eq!(r.stdout, "started\n");
    assert!(r.stderr.contains("timed out after 2s"), "{r}");
    // Later checks still ran.
    results().get("hello").expect_success("hello");
}

#[test]
fn dev_kvm_opens_with_hardware_kvm_module() {
    let r = results().get("kvm").expect_success("kvm");
    assert!(r.stdout.starts_with("kvm-open\n"), "{r}");
    if results().mode() == Mode::L1 {
        assert!(
            r.stdout.contains("kvm_amd"),
            "L1 must run nested kvm_amd: {r}"
        );
    }
}

#[test]
fn cpu_count_and_svm() {
    let r = results().get("cpus").expect_success("cpus");
    let mut lines = r.stdout.lines();
    let n: u32 = lines
        .next()
        .and_then(|l| l.parse().ok())
        .expect("cpu count line");
    if results().mode() == Mode::L1 {
        assert_eq!(n, 2, "L1 is started with -smp 2: {r}");
        assert_eq!(
            lines.next(),
            Some("svm"),
            "L1 CPU must advertise AMD-V: {r}"
        );
    } else {
        assert!(n >= 1, "{r}");
    }
}

#[test]
fn payload_file_arrives_byte_exact() {
    let r = results().get("blob").expect_success("blob");
    let expected = sha256_hex(&blob());
    assert_eq!(r.stdout, format!("{expected}  data/blob.bin\n"));
}

#[test]
fn checks_run_in_payload_with_payload_bin_on_path() {
    let r = results().get("cwd").expect_success("cwd");
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{r}");
    assert_eq!(lines[0], lines[1], "cwd must be $PAYLOAD: {r}");
    assert!(lines[2].starts_with(&format!("{}/bin:", lines[1])), "{r}");
    assert_eq!(lines[3], "payload-tool ran with arg1");
    if results().mode() == Mode::L1 {
        assert_eq!(lines[0], "/payload");
    }
}

#[test]
fn payload_is_writable() {
    let r = results().get("scratch").expect_success("scratch");
    assert_eq!(r.stdout, "written\n");
}

#[test]
fn host_tool_runs_with_its_libraries() {
    let r = results().get("host_tool").expect_success("host_tool");
    assert!(r.stdout.contains("GNU coreutils"), "{r}");
}

#[test]
fn l1_has_cgroup2_devices_and_modules() {
    if results().mode() != Mode::L1 {
        eprintln!("skipping: L1 environment check only applies in L1 mode");
        return;
    }
    let r = results().get("l1_env").expect_success("l1_env");
    let want = [
        "/sys/fs/cgroup",
        "/dev/pts",
        "/dev/vhost-vsock",
        "/dev/vhost-net",
        "/dev/net/tun",
        "lo-up",
        "mod:bridge",
        "mod:veth",
        "mod:overlay",
        "mod:nf_tables",
        "mod:br_netfilter",
        "mod:fuse",
    ];
    let got: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(got, want, "{r}");
}

#[test]
#[should_panic(expected = "has no result for check `no-such-check`")]
fn missing_check_panics_with_context() {
    results().get("no-such-check");
}

#[test]
fn static_elf_detection() {
    assert!(!support::artifacts::is_static_elf(std::path::Path::new(
        "/bin/sh"
    )));
    assert!(!support::artifacts::is_static_elf(std::path::Path::new(
        "/etc/passwd"
    )));
    let busybox = std::path::Path::new("/bin/busybox");
    if busybox.exists()
        && Command::new("ldd")
            .arg(busybox)
            .output()
            .is_ok_and(|o| !o.status.success())
    {
        assert!(support::artifacts::is_static_elf(busybox));
    }
}

#[test]
fn l1_timeout_is_reported_and_missing_results_panic_with_console_tail() {
    if results().mode() != Mode::L1 {
        eprintln!("skipping: the L1 timeout path only exists in L1 mode");
        return;
    }
    // Too short for L1 to even finish booting: the run must end with no status and no results.
    let r = Batch::new("harness-timeout")
        .memory_mib(512)
        .timeout(Duration::from_secs(4))
        .check("never", "sleep 600")
        .mode(Mode::L1)
        .run();
    assert_eq!(r.status(), None);
    assert!(r.try_get("never").is_none());
    let panic = std::panic::catch_unwind(|| {
        r.get("never");
    })
    .expect_err("get() must panic for a check without result");
    let msg = panic
        .downcast_ref::<String>()
        .expect("panic message is a String");
    assert!(msg.contains("log tail"), "{msg}");
    assert!(
        msg.contains("SeaBIOS"),
        "console tail must be included: {msg}"
    );
}
