//! An app's capabilities and seccomp filter, with rkt's semantics: the appc isolators
//! `os/linux/capabilities-retain-set` / `-remove-set` and `os/linux/seccomp-retain-set` /
//! `-remove-set` (from `--caps-retain`, `--caps-remove` and `--seccomp`), rkt's default
//! capability set and default seccomp filter when an app has none, and the [`Security`] the
//! guest agent applies.
//!
//! rkt sets only the bounding set: an app run as root has exactly those capabilities; one run
//! as another user has none (no inheritable or ambient ones), unless its files carry some.

use std::collections::{BTreeSet, HashSet};
use std::str::FromStr;

use caps::Capability;
use podvm_protocol::{SeccompMode, SeccompSpec, Security};

use super::resources::{Isolator, Limit, LimitFields};
use super::syscalls::SYSCALLS;

/// appc isolator: the capabilities an app keeps (all others are dropped).
pub const CAPS_RETAIN_ISOLATOR: &str = "os/linux/capabilities-retain-set";
/// appc isolator: capabilities removed from rkt's default set.
pub const CAPS_REMOVE_ISOLATOR: &str = "os/linux/capabilities-remove-set";
/// appc isolator: the only system calls an app may make.
pub const SECCOMP_RETAIN_ISOLATOR: &str = "os/linux/seccomp-retain-set";
/// appc isolator: system calls an app may not make.
pub const SECCOMP_REMOVE_ISOLATOR: &str = "os/linux/seccomp-remove-set";

/// rkt's default capabilities (its capabilities guide; stage1's default bounding set): enough
/// for the usual work of a root app in its own root (file ownership, binding low ports,
/// dropping to another user), nothing that reaches the kernel or other processes' state
/// (CAP_SYS_ADMIN, CAP_NET_ADMIN, CAP_SYS_PTRACE, CAP_SYS_MODULE, ...).
pub const RKT_DEFAULT_CAPS: &[Capability] = &[
    Capability::CAP_AUDIT_WRITE,
    Capability::CAP_CHOWN,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_FSETID,
    Capability::CAP_FOWNER,
    Capability::CAP_KILL,
    Capability::CAP_MKNOD,
    Capability::CAP_NET_RAW,
    Capability::CAP_NET_BIND_SERVICE,
    Capability::CAP_SETUID,
    Capability::CAP_SETGID,
    Capability::CAP_SETPCAP,
    Capability::CAP_SETFCAP,
    Capability::CAP_SYS_CHROOT,
];

/// Docker's default whitelist (its 2016 `default.json`, without argument filters), which rkt
/// uses as both `@docker/default-whitelist` and `@rkt/default-whitelist`. Names of other
/// architectures (`chown32`, `_llseek`, ...) are kept as rkt lists them and skipped on x86_64.
#[rustfmt::skip]
const DOCKER_WHITELIST: &[&str] = &[
    "accept", "accept4", "access", "alarm", "bind", "brk", "capget", "capset", "chdir", "chmod",
    "chown", "chown32", "clock_getres", "clock_gettime", "clock_nanosleep", "close", "connect",
    "copy_file_range", "creat", "dup", "dup2", "dup3", "epoll_create", "epoll_create1",
    "epoll_ctl", "epoll_ctl_old", "epoll_pwait", "epoll_wait", "epoll_wait_old", "eventfd",
    "eventfd2", "execve", "execveat", "exit", "exit_group", "faccessat", "fadvise64",
    "fadvise64_64", "fallocate", "fanotify_mark", "fchdir", "fchmod", "fchmodat", "fchown",
    "fchown32", "fchownat", "fcntl", "fcntl64", "fdatasync", "fgetxattr", "flistxattr", "flock",
    "fork", "fremovexattr", "fsetxattr", "fstat", "fstat64", "fstatat64", "fstatfs",
    "fstatfs64", "fsync", "ftruncate", "ftruncate64", "futex", "futimesat", "getcpu", "getcwd",
    "getdents", "getdents64", "getegid", "getegid32", "geteuid", "geteuid32", "getgid",
    "getgid32", "getgroups", "getgroups32", "getitimer", "getpeername", "getpgid", "getpgrp",
    "getpid", "getppid", "getpriority", "getrandom", "getresgid", "getresgid32", "getresuid",
    "getresuid32", "getrlimit", "get_robust_list", "getrusage", "getsid", "getsockname",
    "getsockopt", "get_thread_area", "gettid", "gettimeofday", "getuid", "getuid32", "getxattr",
    "inotify_add_watch", "inotify_init", "inotify_init1", "inotify_rm_watch", "io_cancel",
    "ioctl", "io_destroy", "io_getevents", "ioprio_get", "ioprio_set", "io_setup", "io_submit",
    "ipc", "kill", "lchown", "lchown32", "lgetxattr", "link", "linkat", "listen", "listxattr",
    "llistxattr", "_llseek", "lremovexattr", "lseek", "lsetxattr", "lstat", "lstat64",
    "madvise", "memfd_create", "mincore", "mkdir", "mkdirat", "mknod", "mknodat", "mlock",
    "mlock2", "mlockall", "mmap", "mmap2", "mprotect", "mq_getsetattr", "mq_notify", "mq_open",
    "mq_timedreceive", "mq_timedsend", "mq_unlink", "mremap", "msgctl", "msgget", "msgrcv",
    "msgsnd", "msync", "munlock", "munlockall", "munmap", "nanosleep", "newfstatat",
    "_newselect", "open", "openat", "pause", "personality", "pipe", "pipe2", "poll", "ppoll",
    "prctl", "pread64", "preadv", "prlimit64", "pselect6", "pwrite64", "pwritev", "read",
    "readahead", "readlink", "readlinkat", "readv", "recv", "recvfrom", "recvmmsg", "recvmsg",
    "remap_file_pages", "removexattr", "rename", "renameat", "renameat2", "restart_syscall",
    "rmdir", "rt_sigaction", "rt_sigpending", "rt_sigprocmask", "rt_sigqueueinfo",
    "rt_sigreturn", "rt_sigsuspend", "rt_sigtimedwait", "rt_tgsigqueueinfo",
    "sched_getaffinity", "sched_getattr", "sched_getparam", "sched_get_priority_max",
    "sched_get_priority_min", "sched_getscheduler", "sched_rr_get_interval",
    "sched_setaffinity", "sched_setattr", "sched_setparam", "sched_setscheduler", "sched_yield",
    "seccomp", "select", "semctl", "semget", "semop", "semtimedop", "send", "sendfile",
    "sendfile64", "sendmmsg", "sendmsg", "sendto", "setfsgid", "setfsgid32", "setfsuid",
    "setfsuid32", "setgid", "setgid32", "setgroups", "setgroups32", "setitimer", "setpgid",
    "setpriority", "setregid", "setregid32", "setresgid", "setresgid32", "setresuid",
    "setresuid32", "setreuid", "setreuid32", "setrlimit", "set_robust_list", "setsid",
    "setsockopt", "set_thread_area", "set_tid_address", "setuid", "setuid32", "setxattr",
    "shmat", "shmctl", "shmdt", "shmget", "shutdown", "sigaltstack", "signalfd", "signalfd4",
    "sigreturn", "socket", "socketcall", "socketpair", "splice", "stat", "stat64", "statfs",
    "statfs64", "symlink", "symlinkat", "sync", "sync_file_range", "syncfs", "sysinfo",
    "syslog", "tee", "tgkill", "time", "timer_create", "timer_delete", "timerfd_create",
    "timerfd_gettime", "timerfd_settime", "timer_getoverrun", "timer_gettime", "timer_settime",
    "times", "tkill", "truncate", "truncate64", "ugetrlimit", "umask", "uname", "unlink",
    "unlinkat", "utime", "utimensat", "utimes", "vfork", "vmsplice", "wait4", "waitid",
    "waitpid", "write", "writev", "arch_prctl", "modify_ldt", "chroot", "clone",
];

/// Calls added by kernels after 2016 that today's C libraries use in place of whitelisted ones
/// (glibc registers `rseq` in every thread, tries `clone3` before `clone`, `statx` and
/// `faccessat2` before the older calls, `close_range` in `posix_spawn`): without them a
/// whitelist written in 2016 kills current programs at start. Docker's current profile has
/// them all; they join both default whitelists.
const SUCCESSORS: &[&str] = &[
    "rseq",
    "clone3",
    "statx",
    "faccessat2",
    "openat2",
    "close_range",
    "epoll_pwait2",
    "preadv2",
    "pwritev2",
    "pidfd_open",
    "pidfd_send_signal",
    "pidfd_getfd",
    "membarrier",
    "fchmodat2",
    "futex_waitv",
    "io_pgetevents",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
];

/// Docker's default blacklist (2016), rkt's `@docker/default-blacklist` and
/// `@rkt/default-blacklist`: calls that change the kernel, the clock, mounts, namespaces, or
/// reach other processes' memory.
#[rustfmt::skip]
const DOCKER_BLACKLIST: &[&str] = &[
    "acct", "add_key", "adjtimex", "bpf", "clock_adjtime", "clock_settime", "create_module",
    "delete_module", "finit_module", "get_kernel_syms", "get_mempolicy", "init_module",
    "ioperm", "iopl", "kcmp", "kexec_file_load", "kexec_load", "keyctl", "lookup_dcookie",
    "mbind", "mount", "move_pages", "name_to_handle_at", "nfsservctl", "open_by_handle_at",
    "perf_event_open", "pivot_root", "process_vm_readv", "process_vm_writev", "ptrace",
    "query_module", "quotactl", "reboot", "request_key", "set_mempolicy", "setns",
    "settimeofday", "stime", "swapon", "swapoff", "sysfs", "_sysctl", "umount", "umount2",
    "unshare", "uselib", "userfaultfd", "ustat", "vm86", "vm86old",
];

/// Calls systemd (which applies rkt's filters) always allows, whatever the set says, so that a
/// filtered process can still be started and end: they are never refused.
const ALWAYS_ALLOWED: &[&str] = &["execve", "exit", "exit_group", "getrlimit", "rt_sigreturn"];

/// appc's wildcard for every system call (`seccomp-retain-set` with it: no filter).
const APPC_ALL: &str = "@appc.io/all";
/// appc's wildcard for no system call (`seccomp-remove-set` with it: rkt's default filter).
const APPC_EMPTY: &str = "@appc.io/empty";

/// A wildcard's system calls, for the ones podvm knows.
fn wildcard(name: &str) -> Option<Vec<&'static str>> {
    let whitelist = || DOCKER_WHITELIST.iter().chain(SUCCESSORS).copied().collect();
    match name {
        "@rkt/default-whitelist" | "@docker/default-whitelist" => Some(whitelist()),
        "@rkt/default-blacklist" | "@docker/default-blacklist" => Some(DOCKER_BLACKLIST.to_vec()),
        APPC_ALL | APPC_EMPTY => Some(Vec::new()),
        _ => None,
    }
}

/// A bad capability or seccomp flag or isolator.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    /// A capability name Linux does not have.
    #[error("{flag}: unknown capability {value:?} (expected names such as CAP_NET_ADMIN)")]
    UnknownCapability {
        /// The flag or isolator.
        flag: String,
        /// The name given.
        value: String,
    },
    /// A system call name Linux does not have on x86_64, or an unknown wildcard.
    #[error(
        "{flag}: unknown system call {value:?} (expected x86_64 names such as statx, or \
         @rkt/default-whitelist, @rkt/default-blacklist, @docker/default-whitelist, \
         @docker/default-blacklist, @appc.io/all, @appc.io/empty)"
    )]
    UnknownSyscall {
        /// The flag or isolator.
        flag: String,
        /// The name given.
        value: String,
    },
    /// An errno name Linux does not have.
    #[error("{flag}: unknown errno {value:?} (expected names such as EPERM or ENOSYS)")]
    UnknownErrno {
        /// The flag or isolator.
        flag: String,
        /// The name given.
        value: String,
    },
    /// A `--seccomp` value that is not `mode=retain|remove[,errno=NAME],SYSCALL...`.
    #[error("--seccomp {value:?}: {why} (expected mode=retain|remove[,errno=NAME],SYSCALL,...)")]
    SeccompSyntax {
        /// The value given.
        value: String,
        /// What is wrong.
        why: &'static str,
    },
    /// Both sets of one kind, which appc makes mutually exclusive.
    #[error("an app may have {first} or {second}, not both")]
    BothSets {
        /// One isolator.
        first: &'static str,
        /// The other.
        second: &'static str,
    },
}

/// Parses a comma-separated list of capabilities given to `flag` (`CAP_NET_ADMIN`, any case,
/// `CAP_` optional) into their canonical names.
pub fn parse_caps(flag: &str, value: &str) -> Result<Vec<String>, SecurityError> {
    value
        .split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .map(|name| capability(flag, name).map(|cap| cap.to_string()))
        .collect()
}

/// A capability by name.
fn capability(flag: &str, name: &str) -> Result<Capability, SecurityError> {
    let upper = name.to_ascii_uppercase();
    let canonical = if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    };
    Capability::from_str(&canonical).map_err(|_| SecurityError::UnknownCapability {
        flag: flag.to_string(),
        value: name.to_string(),
    })
}

/// The isolator of `--caps-retain` (`retain`) or `--caps-remove`.
pub fn caps_isolator(retain: bool, value: &str) -> Result<Isolator, SecurityError> {
    let (name, flag) = match retain {
        true => (CAPS_RETAIN_ISOLATOR, "--caps-retain"),
        false => (CAPS_REMOVE_ISOLATOR, "--caps-remove"),
    };
    Ok(set_isolator(name, parse_caps(flag, value)?, None))
}

/// The isolator of `--seccomp mode=retain|remove[,errno=NAME],SYSCALL...`, checked.
pub fn seccomp_isolator(value: &str) -> Result<Isolator, SecurityError> {
    let syntax = |why| SecurityError::SeccompSyntax {
        value: value.to_string(),
        why,
    };
    let mut items = value.split(',').map(str::trim).filter(|s| !s.is_empty());
    let name = match items.next().and_then(|first| first.strip_prefix("mode=")) {
        Some("retain") => SECCOMP_RETAIN_ISOLATOR,
        Some("remove") => SECCOMP_REMOVE_ISOLATOR,
        Some(_) => return Err(syntax("the mode is retain or remove")),
        None => return Err(syntax("it starts with mode=")),
    };
    let mut errno = None;
    let mut set = Vec::new();
    for item in items {
        match item.strip_prefix("errno=") {
            Some(_) if errno.is_some() => return Err(syntax("errno is given twice")),
            Some(name) => {
                errno_number("--seccomp", name)?;
                errno = Some(name.to_string());
            }
            None => {
                syscall_numbers("--seccomp", item)?;
                set.push(item.to_string());
            }
        }
    }
    if set.is_empty() {
        return Err(syntax("it names no system call"));
    }
    Ok(set_isolator(name, set, errno))
}

fn set_isolator(name: &str, set: Vec<String>, errno: Option<String>) -> Isolator {
    Isolator {
        name: name.to_string(),
        value: Limit {
            number: None,
            fields: LimitFields {
                set,
                errno,
                ..LimitFields::default()
            },
        },
    }
}

/// The numbers of a system call or wildcard (names of other architectures in wildcards are
/// skipped).
fn syscall_numbers(flag: &str, name: &str) -> Result<Vec<i64>, SecurityError> {
    let unknown = || SecurityError::UnknownSyscall {
        flag: flag.to_string(),
        value: name.to_string(),
    };
    match wildcard(name) {
        Some(names) => Ok(names.into_iter().filter_map(syscall_number).collect()),
        None if name.starts_with('@') => Err(unknown()),
        None => syscall_number(name).map(|n| vec![n]).ok_or_else(unknown),
    }
}

fn syscall_number(name: &str) -> Option<i64> {
    SYSCALLS
        .iter()
        .find(|(known, _)| *known == name)
        .map(|(_, number)| *number)
}

/// Errno numbers by name: what `errno=` may say (`man 3 errno`, Linux).
macro_rules! errnos {
    ($($name:ident),* $(,)?) => {
        &[$((stringify!($name), libc::$name)),*]
    };
}

#[rustfmt::skip]
const ERRNOS: &[(&str, i32)] = errnos![
    EPERM, ENOENT, ESRCH, EINTR, EIO, ENXIO, E2BIG, ENOEXEC, EBADF, ECHILD, EAGAIN, ENOMEM,
    EACCES, EFAULT, ENOTBLK, EBUSY, EEXIST, EXDEV, ENODEV, ENOTDIR, EISDIR, EINVAL, ENFILE,
    EMFILE, ENOTTY, ETXTBSY, EFBIG, ENOSPC, ESPIPE, EROFS, EMLINK, EPIPE, EDOM, ERANGE, EDEADLK,
    ENAMETOOLONG, ENOLCK, ENOSYS, ENOTEMPTY, ELOOP, EWOULDBLOCK, ENOMSG, EIDRM, ECHRNG,
    EL2NSYNC, EL3HLT, EL3RST, ELNRNG, EUNATCH, ENOCSI, EL2HLT, EBADE, EBADR, EXFULL, ENOANO,
    EBADRQC, EBADSLT, EDEADLOCK, EBFONT, ENOSTR, ENODATA, ETIME, ENOSR, ENONET, ENOPKG, EREMOTE,
    ENOLINK, EADV, ESRMNT, ECOMM, EPROTO, EMULTIHOP, EDOTDOT, EBADMSG, EOVERFLOW, ENOTUNIQ,
    EBADFD, EREMCHG, ELIBACC, ELIBBAD, ELIBSCN, ELIBMAX, ELIBEXEC, EILSEQ, ERESTART, ESTRPIPE,
    EUSERS, ENOTSOCK, EDESTADDRREQ, EMSGSIZE, EPROTOTYPE, ENOPROTOOPT, EPROTONOSUPPORT,
    ESOCKTNOSUPPORT, EOPNOTSUPP, ENOTSUP, EPFNOSUPPORT, EAFNOSUPPORT, EADDRINUSE, EADDRNOTAVAIL,
    ENETDOWN, ENETUNREACH, ENETRESET, ECONNABORTED, ECONNRESET, ENOBUFS, EISCONN, ENOTCONN,
    ESHUTDOWN, ETOOMANYREFS, ETIMEDOUT, ECONNREFUSED, EHOSTDOWN, EHOSTUNREACH, EALREADY,
    EINPROGRESS, ESTALE, EUCLEAN, ENOTNAM, ENAVAIL, EISNAM, EREMOTEIO, EDQUOT, ENOMEDIUM,
    EMEDIUMTYPE, ECANCELED, ENOKEY, EKEYEXPIRED, EKEYREVOKED, EKEYREJECTED, EOWNERDEAD,
    ENOTRECOVERABLE, ERFKILL, EHWPOISON,
];

fn errno_number(flag: &str, name: &str) -> Result<u32, SecurityError> {
    ERRNOS
        .iter()
        .find(|(known, _)| *known == name)
        .and_then(|(_, number)| u32::try_from(*number).ok())
        .ok_or_else(|| SecurityError::UnknownErrno {
            flag: flag.to_string(),
            value: name.to_string(),
        })
}

/// What the agent applies to an app with these isolators: its capability bounding set (rkt's
/// default, the retain-set, or the default less the remove-set) and its seccomp filter (the
/// isolator's, or rkt's default whitelist killing other calls; none for a retain-set of
/// `@appc.io/all`).
pub fn security<'a>(
    isolators: impl IntoIterator<Item = &'a Isolator> + Clone,
) -> Result<Security, SecurityError> {
    let find = |name: &str| {
        isolators
            .clone()
            .into_iter()
            .find(|isolator| isolator.name == name)
    };
    let capabilities = capabilities(find(CAPS_RETAIN_ISOLATOR), find(CAPS_REMOVE_ISOLATOR))?;
    let seccomp = seccomp(find(SECCOMP_RETAIN_ISOLATOR), find(SECCOMP_REMOVE_ISOLATOR))?;
    Ok(Security {
        capabilities: Some(capabilities),
        seccomp,
    })
}

fn capabilities(
    retain: Option<&Isolator>,
    remove: Option<&Isolator>,
) -> Result<Vec<String>, SecurityError> {
    let parse = |isolator: &Isolator| {
        isolator
            .value
            .set
            .iter()
            .map(|name| capability(&isolator.name, name))
            .collect::<Result<HashSet<_>, _>>()
    };
    let kept: HashSet<Capability> = match (retain, remove) {
        (Some(_), Some(_)) => {
            return Err(SecurityError::BothSets {
                first: CAPS_RETAIN_ISOLATOR,
                second: CAPS_REMOVE_ISOLATOR,
            })
        }
        (Some(retain), None) => parse(retain)?,
        (None, Some(remove)) => {
            let removed = parse(remove)?;
            RKT_DEFAULT_CAPS
                .iter()
                .filter(|cap| !removed.contains(cap))
                .copied()
                .collect()
        }
        (None, None) => RKT_DEFAULT_CAPS.iter().copied().collect(),
    };
    let mut kept: Vec<Capability> = kept.into_iter().collect();
    kept.sort_by_key(|cap| cap.index());
    Ok(kept.iter().map(Capability::to_string).collect())
}

fn seccomp(
    retain: Option<&Isolator>,
    remove: Option<&Isolator>,
) -> Result<Option<SeccompSpec>, SecurityError> {
    let (isolator, mode) = match (retain, remove) {
        (Some(_), Some(_)) => {
            return Err(SecurityError::BothSets {
                first: SECCOMP_RETAIN_ISOLATOR,
                second: SECCOMP_REMOVE_ISOLATOR,
            })
        }
        (Some(retain), None) => (retain, SeccompMode::Retain),
        (None, Some(remove)) => (remove, SeccompMode::Remove),
        (None, None) => return Ok(Some(rkt_default_filter())),
    };
    let set = &isolator.value.set;
    let has = |wildcard: &str| set.iter().any(|name| name == wildcard);
    match mode {
        SeccompMode::Retain if has(APPC_ALL) => return Ok(None),
        SeccompMode::Remove if has(APPC_EMPTY) => return Ok(Some(rkt_default_filter())),
        _ => {}
    }
    let mut numbers = BTreeSet::new();
    for name in set {
        numbers.extend(syscall_numbers(&isolator.name, name)?);
    }
    let errno = isolator
        .value
        .errno
        .as_deref()
        .map(|name| errno_number(&isolator.name, name))
        .transpose()?;
    Ok(Some(filter(mode, numbers, errno)))
}

/// rkt's filter for an app without seccomp isolators: its default whitelist, other calls
/// killing the process (SIGSYS).
fn rkt_default_filter() -> SeccompSpec {
    let numbers = syscall_numbers("", "@rkt/default-whitelist").unwrap_or_default();
    filter(SeccompMode::Retain, numbers.into_iter().collect(), None)
}

/// A filter over `numbers`, with [`ALWAYS_ALLOWED`] allowed whatever the mode.
fn filter(mode: SeccompMode, mut numbers: BTreeSet<i64>, errno: Option<u32>) -> SeccompSpec {
    for number in ALWAYS_ALLOWED
        .iter()
        .filter_map(|name| syscall_number(name))
    {
        match mode {
            SeccompMode::Retain => numbers.insert(number),
            SeccompMode::Remove => numbers.remove(&number),
        };
    }
    SeccompSpec {
        mode,
        syscalls: numbers.into_iter().collect(),
        errno,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(security: &Security) -> Vec<String> {
        security.capabilities.clone().expect("a set")
    }

    #[test]
    fn a_default_app_gets_rkts_capabilities_and_whitelist() {
        let security = security(&[]).expect("default");
        let mut expected = RKT_DEFAULT_CAPS.to_vec();
        expected.sort_by_key(|cap| cap.index());
        let expected: Vec<String> = expected.iter().map(|c| c.to_string()).collect();
        assert_eq!(names(&security), expected);
        let seccomp = security.seccomp.expect("rkt's default filter");
        assert_eq!(seccomp.mode, SeccompMode::Retain);
        assert_eq!(seccomp.errno, None, "killed, as rkt does");
        for call in ["read", "statx", "rseq", "clone3", "execve", "newfstatat"] {
            let number = syscall_number(call).expect("known");
            assert!(seccomp.syscalls.contains(&number), "{call}");
        }
        for call in ["mount", "reboot", "ptrace", "kexec_load"] {
            let number = syscall_number(call).expect("known");
            assert!(!seccomp.syscalls.contains(&number), "{call}");
        }
    }

    #[test]
    fn retain_and_remove_sets_shape_the_capabilities() {
        let retain = caps_isolator(true, "cap_net_admin").expect("valid");
        assert_eq!(retain.value.set, vec!["CAP_NET_ADMIN"]);
        assert_eq!(
            names(&security(&[retain]).expect("ok")),
            vec!["CAP_NET_ADMIN"]
        );
        let remove = caps_isolator(false, "CAP_CHOWN,NET_RAW").expect("valid");
        let kept = names(&security(std::slice::from_ref(&remove)).expect("ok"));
        assert_eq!(kept.len(), RKT_DEFAULT_CAPS.len() - 2);
        assert!(!kept.contains(&"CAP_CHOWN".to_string()));
        let both = [caps_isolator(true, "CAP_KILL").expect("valid"), remove];
        assert!(security(&both).is_err(), "mutually exclusive");
    }

    #[test]
    fn unknown_names_are_refused_naming_the_flag_and_value() {
        let err = caps_isolator(true, "CAP_NET_ADMIN,CAP_FLY").expect_err("unknown");
        let text = err.to_string();
        assert!(
            text.contains("--caps-retain") && text.contains("CAP_FLY"),
            "{text}"
        );
        let err = seccomp_isolator("mode=remove,statz").expect_err("unknown");
        let text = err.to_string();
        assert!(
            text.contains("--seccomp") && text.contains("statz"),
            "{text}"
        );
        let err = seccomp_isolator("mode=remove,errno=EWHAT,stat").expect_err("errno");
        assert!(err.to_string().contains("EWHAT"), "{err}");
        for bad in [
            "stat",
            "mode=keep,stat",
            "mode=remove",
            "mode=remove,@rkt/nope",
        ] {
            assert!(seccomp_isolator(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn seccomp_isolators_become_filters() {
        let isolator =
            seccomp_isolator("mode=remove,errno=EXFULL,stat,newfstatat,statx").expect("valid");
        assert_eq!(isolator.name, SECCOMP_REMOVE_ISOLATOR);
        assert_eq!(isolator.value.errno.as_deref(), Some("EXFULL"));
        let json = serde_json::to_string(&isolator).expect("json");
        assert_eq!(
            json,
            r#"{"name":"os/linux/seccomp-remove-set","value":{"set":["stat","newfstatat","statx"],"errno":"EXFULL"}}"#
        );
        let spec = security(&[isolator]).expect("ok").seccomp.expect("filter");
        assert_eq!(spec.mode, SeccompMode::Remove);
        assert_eq!(spec.errno, Some(libc::EXFULL as u32));
        assert_eq!(
            spec.syscalls,
            vec![libc::SYS_stat, libc::SYS_newfstatat, libc::SYS_statx]
        );
        let all = seccomp_isolator("mode=retain,@appc.io/all").expect("valid");
        assert_eq!(security(&[all]).expect("ok").seccomp, None, "opt-out");
        let retain =
            seccomp_isolator("mode=retain,@docker/default-whitelist,umount2").expect("valid");
        let spec = security(&[retain]).expect("ok").seccomp.expect("filter");
        assert!(spec.syscalls.contains(&libc::SYS_umount2));
        assert!(spec.syscalls.contains(&libc::SYS_exit_group));
        let remove = seccomp_isolator("mode=remove,execve,mount").expect("valid");
        let spec = security(&[remove]).expect("ok").seccomp.expect("filter");
        assert_eq!(spec.syscalls, vec![libc::SYS_mount], "execve stays allowed");
    }

    #[test]
    fn the_default_lists_resolve_on_x86_64() {
        let whitelist = syscall_numbers("", "@rkt/default-whitelist").expect("known");
        // The 2016 list names some 30 calls of 32-bit architectures only.
        assert!(whitelist.len() > 270, "{}", whitelist.len());
        let blacklist = syscall_numbers("", "@rkt/default-blacklist").expect("known");
        assert!(blacklist.len() > 40, "{}", blacklist.len());
    }
}
