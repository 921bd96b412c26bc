//! The guest-root privilege attack of issue 19 as shell snippets for E2E checks, and its
//! host-side assertions: guest root tries to leave setuid/setgid files and device nodes in a
//! virtio-fs share (`boot --rootfs`, a pod's upper dir, a host volume); afterwards the host must
//! hold none.

use super::nested::CheckResult;

/// What guest root tries in `DIR/sec` (setuid and setgid files, a setuid directory, char and
/// block devices, a hard link to the host's setuid `DIR/victim` where there is one; a setgid
/// directory and a FIFO are allowed), then appends to `DIR/victim`.
/// Prints each step's status and what the guest's `stat` shows.
pub fn attempts(dir: &str) -> String {
    format!(
        "mkdir -p {dir}/sec && cd {dir}/sec && echo x > f && chmod 4755 f; echo chmod-rc=$?; \
         echo y > g && chown 0:0 g && chmod 6755 g; echo chown-chmod-rc=$?; \
         mkdir d && chmod 2755 d; mkdir e && chmod 4755 e; echo dirs-rc=$?; \
         mknod null c 1 3; echo mknod-c-rc=$?; mknod sda b 8 0; echo mknod-b-rc=$?; \
         mkfifo fifo; echo mkfifo-rc=$?; ln {dir}/victim victim-link; echo link-rc=$?; \
         echo pwned >> {dir}/victim; echo victim-rc=$?; \
         stat -c \"guest %n %a %u:%g %F\" f g d e fifo {dir}/victim"
    )
}

/// The host side after [`attempts`]: every privileged node under `dir` as a `PRIV` line, then
/// the modes of what the guest made there (`host LABEL NAME MODE UID:GID TYPE`) and the
/// victim's content.
pub fn host_scan(dir: &str, label: &str) -> String {
    format!(
        "{{ find {dir} -perm -4000; find {dir} ! -type d -perm -2000; find {dir} -type c; \
         find {dir} -type b; }} | sed \"s/^/PRIV /\"; \
         (cd {dir} && stat -c \"host {label} %n %a %u:%g %F\" sec/* victim && cat victim)"
    )
}

/// No `PRIV` line: no setuid/setgid file and no device node on the host; each of the guest's
/// steps but the mknods of devices succeeded in each of `runs` runs of [`attempts`].
pub fn assert_none_left(result: &CheckResult, runs: usize) {
    let out = &result.stdout;
    let privileged: Vec<&str> = out.lines().filter(|l| l.starts_with("PRIV ")).collect();
    assert!(
        privileged.is_empty(),
        "privileged nodes on the host: {privileged:?}\n{result}"
    );
    let count = |line: &str| out.lines().filter(|l| *l == line).count();
    for line in [
        "chmod-rc=0",
        "chown-chmod-rc=0",
        "dirs-rc=0",
        "mkfifo-rc=0",
        "victim-rc=0",
    ] {
        assert_eq!(count(line), runs, "{line}: {result}");
    }
    for line in ["mknod-c-rc=0", "mknod-b-rc=0", "link-rc=0"] {
        assert_eq!(count(line), 0, "{line}: {result}");
    }
    assert!(
        !out.lines()
            .any(|l| l.starts_with("host ") && l.contains("victim-link")),
        "a second name of the setuid victim on the host: {result}"
    );
}

/// The [`host_scan`] lines of `label`: the guest's modes stripped on the host (a setgid
/// directory kept), the victim with `victim_mode`, a FIFO and no device node.
pub fn assert_host_modes(result: &CheckResult, label: &str, victim_mode: &str) {
    let out = &result.stdout;
    let count = |line: &str| out.lines().filter(|l| *l == line).count();
    for line in [
        format!("host {label} sec/d 2755 0:0 directory"),
        format!("host {label} sec/e 755 0:0 directory"),
        format!("host {label} sec/f 755 0:0 regular file"),
        format!("host {label} sec/g 755 0:0 regular file"),
        format!("host {label} victim {victim_mode} 0:0 regular file"),
    ] {
        assert_eq!(count(&line), 1, "{line}: {result}");
    }
    let fifo = format!("host {label} sec/fifo ");
    assert!(
        out.lines()
            .any(|l| l.starts_with(&fifo) && l.ends_with(" fifo")),
        "{result}"
    );
    let ours = format!("host {label} ");
    assert_eq!(
        out.lines().filter(|l| l.starts_with(&ours)).count(),
        6,
        "no device node made it to the host: {result}"
    );
}
