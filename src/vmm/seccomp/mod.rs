//! seccomp-bpf filters for the VMM's threads, one per thread kind (issue 14, its seccomp part).
//!
//! The threads that touch guest data each install a filter of their own kind at their start,
//! before the guest can reach them:
//!
//! | thread | kind | rules | installed in |
//! |---|---|---|---|
//! | `vcpuN` | [`ThreadKind::Vcpu`] | `vcpu.rs` | `vcpu::spawn`, before the first KVM_RUN |
//! | `virtio-rng` | [`ThreadKind::Rng`] | `rng.rs` | the device worker, before activation |
//! | `virtio-vsock` | [`ThreadKind::Vsock`] | `vhost.rs` | the device worker, before activation |
//! | `virtio-net` | [`ThreadKind::Net`] | `net.rs` | the device worker, before activation |
//! | `virtio-fs-TAG` | [`ThreadKind::Fs`] | `fs.rs` | the device worker, before activation |
//!
//! Every filter also allows what every thread of the process needs (`common.rs`: memory, futex,
//! signal return, thread exit...). A device's worker thread is started with the device, before
//! the vCPUs run, and waits for the driver's activation: it is never started by a (filtered)
//! vCPU thread, whose filter it would inherit on top of its own.
//!
//! The filters are data (groups of system calls, each with the code path that needs it and
//! argument checks where they are cheap: KVM and vhost ioctl numbers, fcntl commands), compiled
//! with `seccompiler` when the thread starts. A call outside them kills the whole process
//! (SECCOMP_RET_KILL_PROCESS), i.e. the VMM process (`crate::vmm::process`): its supervisor
//! reaps it and sees SIGSYS, so the pod's cause is `seccomp`; the kernel's log
//! (`audit: type=1326 ... sig=31 syscall=N`, [`audit`]) adds the thread and the call. A filter
//! that cannot be installed stops the VM with an error naming the thread (fail closed). Filters
//! are per thread, never TSYNC: each kind has its own.
//!
//! **Debug switch:** `PODVM_SECCOMP=log` makes a forbidden call logged (SECCOMP_RET_LOG)
//! instead of fatal, to find what a new code path needs (`dmesg | grep type=1326`; `comm=` is
//! the thread). `PODVM_SECCOMP=unsafe-off` installs nothing (plain `off` is refused as unknown,
//! and unknown values mean `kill`). `podvm check` and `status --format json` show the mode.
//!
//! **Left for issue 14:** filters for the VMM process's main thread (`podvm-vmm`: it builds the
//! VM, then waits for its end and tears it down) and its `vmm-control` thread, namespaces and
//! pivot_root, an unprivileged uid, no capabilities, rlimits.

pub mod audit;
mod common;
mod fs;
mod net;
mod rng;
mod rules;
#[cfg(feature = "seccomp-test-trigger")]
pub mod trigger;
mod vcpu;
mod vhost;

use std::collections::BTreeMap;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, SeccompRule};

pub use self::rules::{Allow, Group};

/// The environment variable that picks the [`Mode`].
pub const MODE_ENV: &str = "PODVM_SECCOMP";

/// What a filtered thread's forbidden call does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// The process is killed (SECCOMP_RET_KILL_PROCESS). The default.
    Kill,
    /// The call is logged by the kernel and goes on (SECCOMP_RET_LOG): for debugging only.
    Log,
    /// No filter at all (`PODVM_SECCOMP=unsafe-off`).
    Off,
}

impl Mode {
    /// The mode `value` of [`MODE_ENV`] names: `kill` (or unset), `log`, `unsafe-off`; anything
    /// else is `kill` with a warning (fail closed).
    pub fn parse(value: Option<&str>) -> Self {
        match value {
            None | Some("" | "kill") => Self::Kill,
            Some("log") => Self::Log,
            Some("unsafe-off") => Self::Off,
            Some(other) => {
                eprintln!(
                    "podvm: {MODE_ENV}={other:?} is not kill, log or unsafe-off: filters kill"
                );
                Self::Kill
            }
        }
    }

    /// The mode this process runs its VMs with (read from the environment once). Unit tests
    /// of the library run their device threads unfiltered; the seccomp tests pick their mode.
    pub fn current() -> Self {
        static MODE: std::sync::OnceLock<Mode> = std::sync::OnceLock::new();
        if cfg!(test) {
            return Self::Off;
        }
        *MODE.get_or_init(|| Self::parse(std::env::var(MODE_ENV).ok().as_deref()))
    }

    /// As `podvm check` and `status` print it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Kill => "kill",
            Self::Log => "log",
            Self::Off => "off",
        }
    }
}

/// The kinds of VMM thread, each with its filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// A vCPU: KVM_RUN, port and MMIO exits, device activation and reset by the driver.
    Vcpu,
    /// The virtio-rng worker: fills buffers with getrandom.
    Rng,
    /// The virtio-vsock worker: relays vhost-vsock's call eventfds as interrupts.
    Vsock,
    /// The virtio-net worker: relays vhost-net's calls, or moves frames between queues and tap.
    Net,
    /// The virtio-fs worker: the FUSE server over the share (passthrough file system).
    Fs,
}

impl ThreadKind {
    /// The syscall groups this kind of thread may make, its own and the common ones.
    pub fn groups(self) -> Vec<Group> {
        let mut groups = common::groups();
        groups.extend(match self {
            Self::Vcpu => vcpu::groups(),
            Self::Rng => rng::groups(),
            Self::Vsock => vhost::groups(),
            Self::Net => net::groups(),
            Self::Fs => fs::groups(),
        });
        groups
    }
}

/// Why a filter could not be built or installed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// seccompiler refused the rules (a bug in the rule data).
    #[error("cannot compile the seccomp filter of thread {thread} ({group}): {source}")]
    Compile {
        /// The thread's name.
        thread: String,
        /// The group of rules it refused (its reason), or "the filter".
        group: &'static str,
        /// Why.
        source: seccompiler::BackendError,
    },
    /// The kernel refused the filter.
    #[error("cannot install the seccomp filter of thread {thread}: {source}")]
    Install {
        /// The thread's name.
        thread: String,
        /// Why.
        source: seccompiler::Error,
    },
}

/// Compiles the filter of `kind` for `mode`; `None` for [`Mode::Off`].
pub fn compile(
    kind: ThreadKind,
    mode: Mode,
    thread: &str,
) -> Result<Option<BpfProgram>, SeccompError> {
    let mismatch = match mode {
        Mode::Kill => SeccompAction::KillProcess,
        Mode::Log => SeccompAction::Log,
        Mode::Off => return Ok(None),
    };
    let compile_error = |source| SeccompError::Compile {
        thread: thread.to_string(),
        group: "the filter",
        source,
    };
    let rules = rule_map(&kind.groups()).map_err(|(group, source)| SeccompError::Compile {
        thread: thread.to_string(),
        group,
        source,
    })?;
    let filter = SeccompFilter::new(
        rules,
        mismatch,
        SeccompAction::Allow,
        std::env::consts::ARCH
            .try_into()
            .map_err(|err: seccompiler::BackendError| compile_error(err))?,
    )
    .map_err(compile_error)?;
    BpfProgram::try_from(filter)
        .map(Some)
        .map_err(compile_error)
}

/// Installs the filter of `kind` on the calling thread (named `thread` in errors), in the
/// process's [`Mode`]. Never TSYNC: the other threads keep their own.
pub fn install(kind: ThreadKind, thread: &str) -> Result<(), SeccompError> {
    install_in_mode(kind, Mode::current(), thread)
}

/// [`install`] in `mode`.
pub fn install_in_mode(kind: ThreadKind, mode: Mode, thread: &str) -> Result<(), SeccompError> {
    match compile(kind, mode, thread)? {
        Some(program) => {
            keep_malloc_from_opening_files();
            seccompiler::apply_filter(&program).map_err(|source| SeccompError::Install {
                thread: thread.to_string(),
                source,
            })
        }
        None => Ok(()),
    }
}

/// Turns off glibc's trimming of freed heap memory, for the whole process. The first time glibc
/// shrinks a thread arena's heap after a free it opens `/proc/sys/vm/overcommit_memory`
/// (`check_may_shrink_heap`, answer cached): in a filtered thread that open is a kill (seen as
/// SIGSYS on `openat` in a virtio-net worker after a 600 kB transfer). Freed memory then stays in
/// the heaps for reuse instead of going back to the kernel; whole thread heaps are still unmapped.
/// The setting is the process's: the first filter installed makes it.
fn keep_malloc_from_opening_files() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: mallopt only sets an allocator parameter; a positive trim threshold is valid.
        unsafe { libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX) };
    });
}

/// The groups as seccompiler's map: a call allowed unconditionally by one group is allowed
/// whatever argument rules another adds. An error names the group it comes from.
fn rule_map(
    groups: &[Group],
) -> Result<BTreeMap<i64, Vec<SeccompRule>>, (&'static str, seccompiler::BackendError)> {
    let mut unconditional = std::collections::BTreeSet::new();
    let mut map: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    let allows = groups
        .iter()
        .flat_map(|group| group.allow.iter().map(|allow| (group.why, allow)));
    for (why, allow) in allows {
        let in_group = |source| (why, source);
        match allow {
            Allow::Call(nr) => {
                unconditional.insert(*nr);
            }
            Allow::ArgIn { nr, arg, values } => {
                let rules = map.entry(*nr).or_default();
                for value in values {
                    let condition = rules::arg_equals(*arg, *value).map_err(in_group)?;
                    rules.push(SeccompRule::new(vec![condition]).map_err(in_group)?);
                }
            }
        }
    }
    for nr in unconditional {
        // An empty rule list matches every call of `nr`.
        map.insert(nr, Vec::new());
    }
    Ok(map)
}

#[cfg(test)]
mod tests;
