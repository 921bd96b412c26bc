//! Finding out that a process was killed by its seccomp filter: the kernel logs each kill as an
//! audit record (`type=1326`, `sig=31`) in its log, which `/dev/kmsg` gives root. The supervisor
//! that reaped its VMM process dead of SIGSYS reads it for the thread and the call
//! ([`await_kill`]); `podvm status` reads it for a pod whose podvm process died without
//! recording the end.
//!
//! With auditd running the record goes to the audit log instead and the pod reads as `killed`.
//! A pid is only trusted together with the kill record's signal (SIGSYS) and executable name
//! (`podvm`, or a test build `podvm-*`).

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;

/// Most kernel log records read (the ring buffer holds far fewer).
const MAX_RECORDS: usize = 100_000;
/// Largest kernel log record (the kernel's own limit is about 1 KiB for /dev/kmsg reads).
const RECORD_BYTES: usize = 8192;

/// A seccomp kill the kernel logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kill {
    /// The thread that made the call (`comm`, e.g. `vcpu0`, `virtio-rng`).
    pub thread: String,
    /// The system call number.
    pub syscall: i64,
}

impl std::fmt::Display for Kill {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "its thread {} made system call {}{}, which its seccomp filter forbids (SIGSYS)",
            self.thread,
            self.syscall,
            syscall_name(self.syscall)
                .map(|name| format!(" ({name})"))
                .unwrap_or_default()
        )
    }
}

/// The last seccomp kill of process `pid` (a podvm) in the kernel log, if it is there.
pub fn find_kill(pid: u32) -> Option<Kill> {
    let mut kmsg = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/kmsg")
        .ok()?;
    let mut buf = vec![0u8; RECORD_BYTES];
    let mut found = None;
    for _ in 0..MAX_RECORDS {
        match kmsg.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if let Some(kill) = parse_record(&String::from_utf8_lossy(&buf[..n]), pid) {
                    found = Some(kill);
                }
            }
            // EPIPE: records were overwritten while reading; the next read goes on.
            Err(err) if err.raw_os_error() == Some(libc::EPIPE) => {}
            Err(_) => break,
        }
    }
    found
}

/// How long [`await_kill`] waits for the kernel's record of a kill it knows happened.
pub const RECORD_WAIT: std::time::Duration = std::time::Duration::from_secs(2);
/// How often it reads the kernel log meanwhile.
const RECORD_POLL: std::time::Duration = std::time::Duration::from_millis(50);

/// [`find_kill`] for a process known to have died of SIGSYS (its parent reaped it): the
/// kernel's audit thread may log the record a moment after the death, so it is looked for up
/// to [`RECORD_WAIT`]. `None`: not logged (auditd took it, or no audit in the kernel).
pub fn await_kill(pid: u32) -> Option<Kill> {
    let deadline = std::time::Instant::now() + RECORD_WAIT;
    loop {
        if let Some(kill) = find_kill(pid) {
            return Some(kill);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(RECORD_POLL);
    }
}

/// Why the pod ended, for a VMM process `pid` (described as `process`) that died of SIGSYS:
/// the thread and call from the kernel's record when it has one (`kill`).
pub fn reason(process: &str, kill: Option<&Kill>) -> String {
    match kill {
        Some(kill) => {
            format!("killed by SIGSYS (seccomp): {process} was killed because {kill}")
        }
        None => format!(
            "killed by SIGSYS (seccomp): {process} was killed by its seccomp filter (the \
             kernel's log has no record naming the thread and call)"
        ),
    }
}

/// The kill in one kernel log record, if it is a seccomp kill of `pid` by podvm.
fn parse_record(record: &str, pid: u32) -> Option<Kill> {
    let message = record
        .split_once(';')
        .map_or(record, |(_, message)| message);
    let message = message.lines().next()?;
    if !message.contains("type=1326") {
        return None;
    }
    let fields: Vec<&str> = message.split(' ').collect();
    let field = |key: &str| {
        fields
            .iter()
            .find_map(|field| field.strip_prefix(key)?.strip_prefix('='))
    };
    let from_podvm = field("exe").is_some_and(|exe| {
        let name = exe.trim_matches('"').rsplit('/').next().unwrap_or_default();
        name.starts_with("podvm")
    });
    if field("pid")? != pid.to_string() || field("sig")? != "31" || !from_podvm {
        return None;
    }
    Some(Kill {
        thread: field("comm")?.trim_matches('"').to_string(),
        syscall: field("syscall")?.parse().ok()?,
    })
}

/// The name of x86-64 system call `nr`, for the few a broken filter or an attack would show.
fn syscall_name(nr: i64) -> Option<&'static str> {
    let names: [(libc::c_long, &str); 8] = [
        (libc::SYS_execve, "execve"),
        (libc::SYS_execveat, "execveat"),
        (libc::SYS_socket, "socket"),
        (libc::SYS_connect, "connect"),
        (libc::SYS_openat, "openat"),
        (libc::SYS_open, "open"),
        (libc::SYS_clone, "clone"),
        (libc::SYS_clone3, "clone3"),
    ];
    names
        .iter()
        .find(|(number, _)| *number == nr)
        .map(|(_, name)| *name)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RECORD: &str = "5,1234,5678901,-;audit: type=1326 audit(1765112345.123:42): \
        auid=4294967295 uid=0 gid=0 ses=4294967295 pid=4321 comm=\"vcpu0\" \
        exe=\"/payload/bin/podvm\" sig=31 arch=c000003e syscall=59 compat=0 ip=0x4a2b3c \
        code=0x80000000\n SUBSYSTEM=audit\n";

    #[test]
    fn a_kill_record_of_the_pid_names_thread_and_call() {
        let kill = parse_record(RECORD, 4321).expect("a kill");
        assert_eq!(
            kill,
            Kill {
                thread: "vcpu0".into(),
                syscall: 59
            }
        );
        assert!(kill
            .to_string()
            .contains("vcpu0 made system call 59 (execve)"));
    }

    #[test]
    fn other_pids_logged_calls_and_other_programs_are_not_kills_of_this_pod() {
        assert_eq!(parse_record(RECORD, 4322), None);
        assert_eq!(parse_record(&RECORD.replace("sig=31", "sig=0"), 4321), None);
        assert_eq!(
            parse_record(&RECORD.replace("bin/podvm", "bin/sh"), 4321),
            None
        );
        assert_eq!(parse_record("6,1,2,-;eth0: link up\n", 4321), None);
    }
}
