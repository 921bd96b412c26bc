//! Whether the guest kernel's OOM killer struck a process the agent started, for its exit
//! report ([`podvm_protocol::Control::Exited`]'s `oom_kills`).
//!
//! Two sources, the most precise first:
//!
//! * **The app's cgroup** (an app with `--memory` or another limit runs in
//!   `/sys/fs/cgroup/app-<name>`, see [`crate::cgroup`]): its `memory.events` counts `oom_kill`,
//!   the processes the OOM killer killed in the cgroup or below it, whichever process of the app
//!   it chose (a pipeline's `tail`, not only the app's first process). The count is read when
//!   the process starts and when it ended; the difference is its kills (an `enter` session in
//!   the same cgroup would otherwise be blamed for the app's). This is exact: the kernel bumps
//!   the counter in the cgroup that hit its limit, and nothing else writes it.
//! * **Without a cgroup**, the VM-wide `oom_kill` counter of `/proc/vmstat`, read the same way,
//!   counts only when the process itself died of SIGKILL: the OOM killer then most likely chose
//!   it (the VM ran out of memory while it lived and it was killed as the OOM killer kills).
//!   Less exact (another process's kill in the same window is blamed too when this one was
//!   SIGKILLed by someone else), which is why limits make apps precise.
//!
//! The kernel's console message (`Out of memory: Killed process N`) is not used: it is rate
//! limited, can be lost in a full console, and would need parsing the kernel log.

use std::path::{Path, PathBuf};

use nix::sys::signal::Signal;
use podvm_protocol::ExitStatus;

/// The VM-wide counters.
const VMSTAT: &str = "/proc/vmstat";

/// Where a process's OOM kills are counted, and the count when it started.
#[derive(Debug, Clone)]
pub struct OomWatch {
    /// `memory.events` of its cgroup, or `None` for the VM-wide counter.
    events: Option<PathBuf>,
    /// The counter's value when the process started.
    before: u64,
}

impl OomWatch {
    /// Starts watching a process in the cgroup directory `cgroup` (or in none).
    pub fn start(cgroup: Option<&Path>) -> Self {
        let events = cgroup.map(|dir| dir.join("memory.events"));
        let before = read(events.as_deref()).unwrap_or(0);
        Self { events, before }
    }

    /// A watch that counts nothing (a process that never started).
    pub fn idle() -> Self {
        Self {
            events: None,
            before: u64::MAX,
        }
    }

    /// The OOM kills to report for a process that ended with `status`.
    pub fn kills(&self, status: ExitStatus) -> u64 {
        let now = read(self.events.as_deref()).unwrap_or(self.before);
        let delta = now.saturating_sub(self.before);
        match (&self.events, status) {
            (Some(_), _) => delta,
            (None, ExitStatus::Signal(signo)) if signo == Signal::SIGKILL as i32 => delta,
            (None, _) => 0,
        }
    }
}

/// The `oom_kill` counter of `events` (a cgroup's `memory.events`), or of `/proc/vmstat`.
fn read(events: Option<&Path>) -> Option<u64> {
    let path = events.unwrap_or(Path::new(VMSTAT));
    let text = std::fs::read_to_string(path).ok()?;
    counter(&text)
}

/// The value of the `oom_kill` line (`oom_kill N`; not `oom` nor `oom_group_kill`).
fn counter(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix("oom_kill "))
        .and_then(|value| value.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oom_kill_line_is_read_not_its_neighbours() {
        let events = "low 0\nhigh 0\nmax 12\noom 3\noom_kill 2\noom_group_kill 0\n";
        assert_eq!(counter(events), Some(2));
        assert_eq!(counter("pgfault 1\noom_kill 7\n"), Some(7), "vmstat");
        assert_eq!(counter("oom 1\n"), None);
    }

    #[test]
    fn a_cgroup_counts_kills_since_the_start_whatever_the_exit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let events = dir.path().join("memory.events");
        std::fs::write(&events, "oom 1\noom_kill 1\n").expect("before");
        let watch = OomWatch::start(Some(dir.path()));
        assert_eq!(watch.kills(ExitStatus::Code(137)), 0, "nothing new");
        std::fs::write(&events, "oom 4\noom_kill 3\n").expect("after");
        assert_eq!(watch.kills(ExitStatus::Code(137)), 2, "a pipeline's member");
        assert_eq!(watch.kills(ExitStatus::Code(0)), 2);
    }

    #[test]
    fn without_a_cgroup_only_a_sigkill_death_counts() {
        let watch = OomWatch {
            events: None,
            before: 0,
        };
        assert_eq!(watch.kills(ExitStatus::Code(1)), 0);
        assert_eq!(watch.kills(ExitStatus::Signal(15)), 0);
    }
}
