//! The shape of the rule data: groups of system calls, each with the reason it is allowed.

use seccompiler::{BackendError, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition};

/// Some system calls a thread may make, and why (the code path that needs them).
#[derive(Debug, Clone)]
pub struct Group {
    /// The code path that makes these calls.
    pub why: &'static str,
    /// The calls.
    pub allow: Vec<Allow>,
}

/// One allowed system call, with or without a check of one argument.
#[derive(Debug, Clone)]
pub enum Allow {
    /// Any call of this number.
    Call(i64),
    /// A call of `nr` whose argument `arg` (its low 32 bits) is one of `values`.
    ArgIn {
        /// The system call.
        nr: i64,
        /// Which argument (0-based).
        arg: u8,
        /// The values it may have.
        values: Vec<u64>,
    },
}

/// A group of calls allowed with any arguments.
pub fn group(why: &'static str, nrs: &[libc::c_long]) -> Group {
    Group {
        why,
        allow: nrs.iter().map(|nr| Allow::Call(*nr)).collect(),
    }
}

/// A group of one call allowed when argument `arg` is one of `values`.
pub fn with_arg(why: &'static str, nr: libc::c_long, arg: u8, values: &[u64]) -> Group {
    Group {
        why,
        allow: vec![Allow::ArgIn {
            nr,
            arg,
            values: values.to_vec(),
        }],
    }
}

/// The condition "argument `arg` is `value`" (32 bits: ioctl requests, fcntl commands and
/// socket families are ints to the kernel).
pub fn arg_equals(arg: u8, value: u64) -> Result<SeccompCondition, BackendError> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value)
}

/// `fcntl` commands the std library and the devices use on their own descriptors: duplicate
/// (EventFd::try_clone, File::try_clone), read and set the flags.
pub const FCNTL_CMDS: &[u64] = &[
    libc::F_DUPFD_CLOEXEC as u64,
    libc::F_GETFD as u64,
    libc::F_SETFD as u64,
    libc::F_GETFL as u64,
    libc::F_SETFL as u64,
];
