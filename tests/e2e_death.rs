//! End-to-end test of guests that die (issue 20): a pod is killed in each way a guest can end
//! without its agent's exit report, and `podvm run`'s error, `podvm status` (table and JSON) and
//! `podvm list` must name the cause and show the guest's last console line.
//!
//! - **Guest kernel panic**: the app (root in the guest) sets `vm.panic_on_oom=2` and fills an
//!   unbounded tmpfs: the guest kernel panics ("Out of memory: compulsory panic_on_oom is
//!   enabled"). The guest kernel has no magic SysRq, no modules and no /dev/mem, so that is the
//!   panic root can reach.
//! - **Triple fault**: the app turns the kernel's console off (`kernel.printk` 0) and calls
//!   `reboot -f`: podvm's guests boot with `reboot=t`, so the kernel loads an empty IDT and
//!   raises int3, the CPU triple-faults and KVM reports a shutdown, with nothing from the kernel
//!   on the console.
//! - **VMM killed**: `kill -9` of the pod's VMM process (a child of its supervisor, found by
//!   `podvm status`'s vmm-pid): the supervisor records the end, naming the signal.
//! - **Supervisor killed**: `kill -9` of the `podvm` process that supervises the pod (found by
//!   `podvm status`'s pid): its VMM process dies with it, and `status` says the pod was killed.
//!
//! - **VMM killed by its seccomp filter** (issue 14): the test build of podvm
//!   (`out/test/podvm-seccomp-trigger`, cargo feature `seccomp-test-trigger`) makes a vCPU
//!   thread call execve(2) or open a host file, or a device worker create a socket: the process
//!   dies of SIGSYS, `status` names the cause `seccomp` with the thread and the call, and `gc`
//!   leaves nothing of the pod (directory, cgroup, mounts); the supervisor learns the SIGSYS by
//!   reaping its VMM process. Before that, a running pod's VMM process's threads are read from
//!   /proc: every vCPU and device worker thread is filtered (`Seccomp: 2`); its main and
//!   control threads are not yet, which the check prints.
//!
//! Before it dies each app writes a marker line to the console (`/dev/kmsg` at KERN_EMERG, shown
//! even on a quiet console). All checks in ONE nested L1 boot (or directly on a host with real
//! KVM).

mod support;

#[path = "registry_support/mod.rs"]
mod registry_support;

use std::time::Duration;

use registry_support::Fixtures;
use serde_json::Value;
use support::e2e::{self, E2e};
use support::nested::{Batch, CheckResult};

/// podvm with its own data dir inside the run directory, and the busybox image.
const PODVM: &str = "podvm --dir state";
const IMAGE: &str = "oci:busybox-layout:latest";
/// Each pod's `--memory` (its VM gets the minimum, 256 MiB: little to fill before the panic).
const MEMORY: &str = "32Mi";
/// What `podvm run` exits with when the guest ended without an exit status.
const NO_STATUS_RC: &str = "125";

static RESULTS: E2e = E2e::new("fetch");

fn check(name: &str) -> Option<&'static CheckResult> {
    RESULTS.check(name, batch)
}

/// The app's console marker (KERN_EMERG through /dev/kmsg) for the death `what`.
fn marker(what: &str) -> String {
    format!("podvm-death: {what} next")
}

/// Shell that prints what the host knows of pod `id` once it ended: the app's stdout, `podvm run`'s stderr, `podvm
/// status` as a table and as JSON, its `list --format json` entry, and the console log's last
/// non-blank line read here, for the test to compare. With `mask`, "podvm: " in run's stderr is
/// printed as "podvm| ": the nested runner retries a check whose output says a guest stopped
/// before its agent (a silent death of the environment), which is the expected end here.
fn report(id: &str, mask: bool) -> String {
    let filter = if mask {
        "sed 's/podvm: /podvm| /g'"
    } else {
        "cat"
    };
    format!(
        "u=$(cat {id}.uuid); \
         echo '--- app-out'; cat {id}.out; \
         echo '--- run-err'; {filter} {id}.err; \
         echo '--- status'; {PODVM} status $u; \
         echo '--- status-json'; {PODVM} status --format json $u | tr -d '\\n'; echo; \
         echo '--- list-json'; {PODVM} list --format json | tr -d '\\n'; echo; \
         echo '--- console'; \
         echo \"console-last=$(grep -v '^[[:space:]]*$' state/pods/run/$u/console.log | tail -n 1 | tr -d '\\r')\"; \
         echo \"console-markers=$(grep -c 'podvm-death:' state/pods/run/$u/console.log)\""
    )
}

/// What the apps that kill their guest need beyond rkt's defaults: mounting a tmpfs and
/// rebooting (CAP_SYS_ADMIN, CAP_SYS_BOOT; `mount` and `reboot` are not in rkt's seccomp
/// whitelist).
const GUEST_KILLER: &str = "--caps-retain=CAP_SYS_ADMIN,CAP_SYS_BOOT,CAP_DAC_OVERRIDE \
                            --seccomp mode=retain,@appc.io/all";

/// `podvm run` of an app that runs `script` as root in the guest, with the privileges to kill
/// it, then its exit code.
fn run_app(id: &str, script: &str) -> String {
    format!(
        "{PODVM} run --uuid-file-save {id}.uuid {IMAGE} --memory {MEMORY} {GUEST_KILLER} \
         --exec /bin/sh -- -c '{script}' >{id}.out 2>{id}.err; echo rc=$?"
    )
}

/// A guest kernel panic: marker, `panic_on_oom` 2 (panic on any OOM), then an unbounded tmpfs
/// filled until the kernel runs out of memory.
fn panic_check() -> String {
    let script = format!(
        "echo \"<0>{}\" >/dev/kmsg; echo 2 >/proc/sys/vm/panic_on_oom; \
         mkdir -p /fill && mount -t tmpfs -o size=0 fill /fill && \
         dd if=/dev/zero of=/fill/zero bs=1M 2>&1; echo still-alive",
        marker("kernel panic")
    );
    format!("{}; {}", run_app("panic", &script), report("panic", false))
}

/// A triple fault: marker, the kernel's console off, then a reboot (`reboot=t`).
fn triple_fault_check() -> String {
    let script = format!(
        "echo \"<0>{}\" >/dev/kmsg; echo 0 >/proc/sys/kernel/printk; reboot -f; sleep 60; \
         echo still-alive",
        marker("triple fault")
    );
    format!("{}; {}", run_app("triple", &script), report("triple", true))
}

/// A detached pod (its supervisor is `podvm supervise`, its VM runs in the supervisor's child
/// `podvm __vmm`) with `podvm attach` following it; the app writes its marker and sleeps; once
/// the marker is on the console and in the app's log, `target` (`vmm-pid` or `pid` in
/// `podvm status`) gets SIGKILL. The error is `attach`'s; `vmm-left` says whether the VMM
/// process is still there (after at most 10 s: it dies with its supervisor).
fn kill_check(id: &str, target: &str) -> String {
    let script = format!(
        "echo \"<0>{}\" >/dev/kmsg; echo ready; exec sleep 600",
        marker("VMM kill")
    );
    format!(
        "{PODVM} run --detach --uuid-file-save {id}.uuid {IMAGE} --memory {MEMORY} --exec \
         /bin/sh -- -c '{script}' >{id}.run.out 2>{id}.run.err; echo detach-rc=$?; \
         u=$(cat {id}.uuid); \
         {PODVM} attach --sig-proxy=false $u >{id}.out 2>{id}.err & attach=$!; \
         for i in $(seq 900); do \
           {PODVM} logs $u 2>/dev/null | grep -q ready && \
           grep -q 'podvm-death:' state/pods/run/$u/console.log 2>/dev/null && break; \
           sleep 0.2; done; \
         echo \"before=$({PODVM} status $u | grep '^state=')\"; \
         sp=$({PODVM} status $u | sed -n 's/^pid=//p'); \
         vp=$({PODVM} status $u | sed -n 's/^vmm-pid=//p'); \
         echo \"supervisor-cmd=$(tr '\\0' ' ' </proc/$sp/cmdline)\"; \
         echo \"vmm-cmd=$(tr '\\0' ' ' </proc/$vp/cmdline)\"; \
         echo vmm-separate=$([ -n \"$vp\" ] && [ \"$vp\" != \"$sp\" ] && echo yes || echo no); \
         pid=$({PODVM} status $u | sed -n 's/^{target}=//p'); \
         kill -9 \"$pid\"; wait $attach; echo attach-rc=$?; \
         for i in $(seq 50); do test -e /proc/$vp || break; sleep 0.2; done; \
         echo vmm-left=$(test -e /proc/$vp && echo yes || echo no); {}",
        report(id, false)
    )
}

/// The test build of podvm with the seccomp trigger, in the payload.
const TRIGGER: &str = "test/podvm-seccomp-trigger --dir state";

/// A running pod's VMM threads: each task's name and `Seccomp:` line, then what `status
/// --format json` and `check --format json` say of the mode; the pod is stopped afterwards.
fn seccomp_threads_check() -> String {
    format!(
        "{PODVM} run --detach --uuid-file-save threads.uuid {IMAGE} --memory {MEMORY} --exec \
         /bin/sh -- -c 'echo ready; exec sleep 600' >threads.run.out 2>threads.run.err; \
         echo detach-rc=$?; u=$(cat threads.uuid); \
         for i in $(seq 900); do {PODVM} logs $u 2>/dev/null | grep -q ready && break; \
           sleep 0.2; done; \
         pid=$({PODVM} status $u | sed -n 's/^vmm-pid=//p'); \
         for t in /proc/$pid/task/*; do \
           echo \"thread $(cat $t/comm) $(grep '^Seccomp:' $t/status | tr -d '\\t ')\"; done; \
         echo \"status-seccomp=$({PODVM} status --format json $u | tr -d '\\n ' \
           | sed -n 's/.*\"seccomp\":\"\\([a-z]*\\)\".*/\\1/p')\"; \
         echo \"check-seccomp=$({PODVM} check --format json | tr -d '\\n ' \
           | sed -n 's/.*\"seccomp\":\"\\([a-z]*\\)\".*/\\1/p')\"; \
         {PODVM} stop --force $u >/dev/null 2>&1; {PODVM} status --wait=60s $u >/dev/null 2>&1; \
         {PODVM} gc --grace-period 0s >/dev/null 2>&1; echo done"
    )
}

/// The trigger build runs a pod with `PODVM_SECCOMP_TEST_TRIGGER=what`; then what `status`
/// says, and what is left after `gc`: the pod's directory, cgroup and mounts.
fn seccomp_trigger_check(what: &str) -> String {
    let id = format!("trigger-{what}");
    format!(
        "grep -c PODVM_SECCOMP_TEST_TRIGGER bin/podvm | sed 's/^/shipped-has-trigger=/'; \
         PODVM_SECCOMP_TEST_TRIGGER={what} {TRIGGER} run --uuid-file-save {id}.uuid {IMAGE} \
         --memory {MEMORY} --exec /bin/sh -- -c 'sleep 60; echo still-alive' >{id}.out \
         2>{id}.err; echo rc=$?; u=$(cat {id}.uuid); \
         echo '--- status'; {PODVM} status $u; \
         echo '--- status-json'; {PODVM} status --format json $u | tr -d '\\n'; echo; \
         echo '--- gc'; {PODVM} gc --grace-period 0s 2>&1 | tail -n 3; \
         echo \"left-dirs=$(find state/pods -maxdepth 2 -name \"$u\" | wc -l)\"; \
         echo \"left-cgroups=$(find /sys/fs/cgroup -maxdepth 3 -name \"pod-$u\" | wc -l)\"; \
         echo \"left-mounts=$(grep -c \"$u\" /proc/mounts)\""
    )
}

/// Every check of this file, run in one L1 boot (or on a host with real KVM).
fn batch() -> Option<Batch> {
    if registry_support::skip() {
        return None;
    }
    let fixtures = Fixtures::get();
    let batch = e2e::batch("e2e-death")?
        .payload_dir(fixtures.layout("busybox"), "busybox-layout")
        .check("fetch", &format!("{PODVM} fetch {IMAGE}"))
        .check("panic", &panic_check())
        .check("triple_fault", &triple_fault_check())
        .check("vmm_killed", &kill_check("kill", "vmm-pid"))
        .check("supervisor_killed", &kill_check("supkill", "pid"))
        .payload_file(
            support::artifacts::out_dir().join("test/podvm-seccomp-trigger"),
            "test/podvm-seccomp-trigger",
        )
        .check("seccomp_threads", &seccomp_threads_check())
        .check("seccomp_vcpu_execve", &seccomp_trigger_check("vcpu-execve"))
        .check("seccomp_vcpu_open", &seccomp_trigger_check("vcpu-open"))
        .check(
            "seccomp_worker_socket",
            &seccomp_trigger_check("worker-socket"),
        );
    Some(batch.timeout(Duration::from_secs(1200)))
}

/// A check's output, cut at its `--- NAME` lines.
struct Sections<'a> {
    result: &'a CheckResult,
}

impl<'a> Sections<'a> {
    /// The lines after `--- name` up to the next section.
    fn get(&self, name: &str) -> String {
        let mut lines = self.result.stdout.lines();
        let header = format!("--- {name}");
        if !lines.any(|line| line == header) {
            panic!("no section {name}: {}", self.result);
        }
        lines
            .take_while(|line| !line.starts_with("--- ") || line.starts_with("--- last guest"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The value of `key=` in the output.
    fn value(&self, key: &str) -> String {
        let prefix = format!("{key}=");
        self.result
            .stdout
            .lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no {key}= in {}", self.result))
            .trim()
            .to_string()
    }

    /// A JSON section.
    fn json(&self, name: &str) -> Value {
        let text = self.get(name);
        serde_json::from_str(&text)
            .unwrap_or_else(|err| panic!("section {name} is not JSON ({err}): {}", self.result))
    }
}

/// Asserts what the host says of a pod that died: `rc` from `podvm run` (when it ran in the
/// foreground), the `cause` in status (table, JSON) and list, the `reason` beginning, and the
/// guest's last console line, read independently from its console log, in status (table and
/// JSON). Returns the sections.
fn assert_died<'a>(
    result: &'a CheckResult,
    rc: Option<&str>,
    cause: &str,
    reason: &str,
) -> Sections<'a> {
    let out = Sections { result };
    if let Some(rc) = rc {
        assert_eq!(out.value("rc"), rc, "podvm run's exit code: {result}");
    }
    let last = out.value("console-last");
    assert!(!last.is_empty(), "the guest wrote to its console: {result}");
    assert_ne!(
        out.value("console-markers"),
        "0",
        "the app's marker is on the console: {result}"
    );

    let status = out.get("status");
    assert!(status.contains("\nstate=exited\n"), "{result}");
    assert!(status.contains("\nexited=true\n"), "{result}");
    let reason_line = status
        .lines()
        .find_map(|line| line.strip_prefix("reason="))
        .unwrap_or_else(|| panic!("status has a reason: {result}"));
    assert!(
        reason_line.starts_with(reason),
        "status names the cause in its reason ({reason}): {result}"
    );
    assert!(
        status.contains(&format!("\ncause={cause}\n")),
        "status names the cause ({cause}): {result}"
    );
    assert!(
        status.contains(&format!("\nconsole-last-line={last}\n")),
        "status shows the guest's last console line ({last}): {result}"
    );
    assert!(
        status.lines().all(|line| line.contains('=')),
        "status is key=value lines only: {result}"
    );

    let json = out.json("status-json");
    assert_eq!(json["state"], "exited", "{result}");
    assert_eq!(json["cause"], cause, "{result}");
    assert_eq!(json["console_last_line"].as_str(), Some(last.as_str()));
    let full_reason = json["reason"].as_str().unwrap_or_default();
    assert!(full_reason.starts_with(reason), "{result}");

    let uuid = json["uuid"].as_str().expect("uuid").to_string();
    let list = out.json("list-json");
    let entry = list
        .as_array()
        .and_then(|pods| pods.iter().find(|pod| pod["uuid"] == uuid.as_str()))
        .unwrap_or_else(|| panic!("list shows the pod: {result}"));
    assert_eq!(entry["state"], "exited", "{result}");
    assert_eq!(entry["cause"], cause, "list names the cause: {result}");
    out
}

/// Asserts `podvm run`'s error names the cause and shows the console's last lines, the marker
/// and the last line among them.
fn assert_run_error(out: &Sections<'_>, reason: &str, what: &str) {
    let err = out.get("run-err");
    assert!(
        err.contains(reason),
        "run's error names the cause ({reason}): {}",
        out.result
    );
    assert!(
        err.contains("--- last guest console lines"),
        "{}",
        out.result
    );
    let tail = err
        .split("--- last guest console lines")
        .nth(1)
        .unwrap_or_default();
    assert!(
        tail.contains(&marker(what)),
        "run's error shows the app's last console words: {}",
        out.result
    );
    let last = out.value("console-last");
    assert!(
        tail.lines().any(|line| line.trim_end() == last),
        "run's error shows the guest's last console line ({last}): {}",
        out.result
    );
}

#[test]
fn a_guest_kernel_panic_is_named_with_its_panic_line_and_last_console_line() {
    let Some(result) = check("panic") else {
        return;
    };
    let out = Sections { result };
    assert!(!out.get("app-out").contains("still-alive"), "{result}");
    let reason = "the guest kernel died before the agent reported an exit status: Kernel panic - \
                  not syncing: Out of memory";
    let out = assert_died(result, Some(NO_STATUS_RC), "guest-panic", reason);
    assert_run_error(&out, reason, "kernel panic");
}

#[test]
fn a_triple_fault_is_named_with_the_last_console_line() {
    let Some(result) = check("triple_fault") else {
        return;
    };
    let out = Sections { result };
    assert!(!out.get("app-out").contains("still-alive"), "{result}");
    let reason = "the guest stopped before the agent reported an exit status: it was reset with \
                  nothing on its console (a triple fault)";
    let out = assert_died(result, Some(NO_STATUS_RC), "triple-fault", reason);
    assert_run_error(&out, reason, "triple fault");
    assert!(
        out.value("console-last").ends_with(&marker("triple fault")),
        "the kernel said nothing after the app's marker: {result}"
    );
}

#[test]
fn a_killed_vmm_process_is_named_by_its_signal_with_the_last_console_line() {
    let Some(result) = check("vmm_killed") else {
        return;
    };
    let out = Sections { result };
    assert_eq!(out.value("detach-rc"), "0", "{result}");
    assert_eq!(out.value("before"), "state=running", "{result}");
    assert!(
        out.value("supervisor-cmd").contains(" supervise "),
        "status's pid is the pod's supervisor: {result}"
    );
    assert!(
        out.value("vmm-cmd").contains(" __vmm --parent "),
        "status's vmm-pid is the pod's VMM process: {result}"
    );
    assert_eq!(out.value("vmm-separate"), "yes", "{result}");
    let reason = "the VMM process (pid ";
    let died = assert_died(result, None, "vmm-error", reason);
    let json = died.json("status-json");
    let full_reason = json["reason"].as_str().unwrap_or_default();
    assert!(
        full_reason.contains(") was killed by SIGKILL"),
        "the reason names the signal: {result}"
    );
    let last = died.value("console-last");
    assert!(last.ends_with(&marker("VMM kill")), "{result}");
    assert_ne!(died.value("attach-rc"), "0", "{result}");
    assert_eq!(died.value("vmm-left"), "no", "{result}");
    let err = died.get("run-err");
    assert!(
        err.contains("ended without an exit status: the VMM process (pid ")
            && err.contains("was killed by SIGKILL")
            && err.contains("(cause: vmm-error)"),
        "attach's error names the cause and the signal: {result}"
    );
    assert!(
        err.contains(&format!("the guest's last console line: {last}")),
        "attach's error shows the guest's last console line: {result}"
    );
}

#[test]
fn a_killed_supervisor_takes_its_vmm_process_along_and_is_named_killed() {
    let Some(result) = check("supervisor_killed") else {
        return;
    };
    let out = Sections { result };
    assert_eq!(out.value("detach-rc"), "0", "{result}");
    assert_eq!(out.value("before"), "state=running", "{result}");
    assert!(
        out.value("vmm-cmd").contains(" __vmm --parent "),
        "{result}"
    );
    let reason = "killed: the pod's podvm process";
    let died = assert_died(result, None, "killed", reason);
    let last = died.value("console-last");
    assert!(last.ends_with(&marker("VMM kill")), "{result}");
    assert_ne!(died.value("attach-rc"), "0", "{result}");
    assert_eq!(
        died.value("vmm-left"),
        "no",
        "the VMM process died with its supervisor: {result}"
    );
    let err = died.get("run-err");
    assert!(
        err.contains("ended without an exit status: killed: the pod's podvm process")
            && err.contains("(cause: killed)"),
        "attach's error names the cause: {result}"
    );
    assert!(
        err.contains(&format!("the guest's last console line: {last}")),
        "attach's error shows the guest's last console line: {result}"
    );
}

#[test]
fn every_vcpu_and_device_thread_of_a_running_pod_is_filtered() {
    let Some(result) = check("seccomp_threads") else {
        return;
    };
    let out = Sections { result };
    assert_eq!(out.value("detach-rc"), "0", "{result}");
    let threads: Vec<(&str, &str)> = result
        .stdout
        .lines()
        .filter_map(|line| line.strip_prefix("thread "))
        .filter_map(|line| line.split_once(' '))
        .collect();
    let vmm = |name: &str| name.starts_with("vcpu") || name.starts_with("virtio-");
    let filtered: Vec<&str> = threads
        .iter()
        .filter(|(name, _)| vmm(name))
        .map(|(name, _)| *name)
        .collect();
    for needed in ["vcpu0", "virtio-rng", "virtio-vsock", "virtio-fs-"] {
        assert!(
            filtered.iter().any(|name| name.starts_with(needed)),
            "a {needed} thread runs: {result}"
        );
    }
    for (name, seccomp) in &threads {
        if vmm(name) {
            assert_eq!(*seccomp, "Seccomp:2", "thread {name} is filtered: {result}");
        }
    }
    // Not yet filtered (the VMM process's main and control threads): say what they are.
    let unfiltered: Vec<&str> = threads
        .iter()
        .filter(|(name, seccomp)| !vmm(name) && *seccomp != "Seccomp:2")
        .map(|(name, _)| *name)
        .collect();
    println!("NOTE: the VMM process's threads, unfiltered this session: {unfiltered:?}");
    assert_eq!(out.value("status-seccomp"), "kill", "{result}");
    assert_eq!(out.value("check-seccomp"), "kill", "{result}");
}

/// Asserts a trigger check: podvm died of SIGSYS (128 + 31), status names the seccomp kill,
/// the thread and the call, and gc left nothing of the pod.
fn assert_killed_by_filter(name: &str, thread: &str, call: &str) {
    let Some(result) = check(name) else {
        return;
    };
    let out = Sections { result };
    assert_eq!(
        out.value("shipped-has-trigger"),
        "0",
        "the shipped podvm has no trigger: {result}"
    );
    assert_eq!(out.value("rc"), "159", "podvm died of SIGSYS: {result}");
    let status = out.get("status");
    assert!(status.contains("\nstate=exited\n"), "{result}");
    assert!(status.contains("\ncause=seccomp\n"), "{result}");
    let json = out.json("status-json");
    assert_eq!(json["cause"], "seccomp", "{result}");
    let reason = json["reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("killed by SIGSYS (seccomp)")
            && reason.contains(&format!("its thread {thread}"))
            && reason.contains(&format!("({call})")),
        "the reason names the thread ({thread}) and the call ({call}): {result}"
    );
    for left in ["left-dirs", "left-cgroups", "left-mounts"] {
        assert_eq!(out.value(left), "0", "gc left nothing ({left}): {result}");
    }
}

#[test]
fn a_vcpu_that_calls_execve_kills_the_vmm_and_the_pod_reads_killed_by_seccomp() {
    assert_killed_by_filter("seccomp_vcpu_execve", "vcpu", "execve");
}

#[test]
fn a_vcpu_that_opens_a_host_file_kills_the_vmm() {
    assert_killed_by_filter("seccomp_vcpu_open", "vcpu", "openat");
}

#[test]
fn a_device_worker_that_opens_a_socket_kills_the_vmm() {
    assert_killed_by_filter("seccomp_worker_socket", "virtio-", "socket");
}
