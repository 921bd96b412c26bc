//! An app's capabilities and seccomp filter ([`Security`], rkt's isolators), prepared before the
//! fork and applied in the child: the bounding set is cut while the child is still root (it
//! needs CAP_SETPCAP), before the user and group change; the seccomp filter comes last, right
//! before the exec. A process run as root then has exactly the kept capabilities as permitted
//! and effective; one run as another user has none (the kernel clears them at setuid), as in
//! rkt, which sets only the bounding set.
//!
//! The child calls `prctl` and `seccomp` directly on the data prepared here: no allocation, no
//! lock, so the hook stays async-signal-safe (the `caps` crate names the capabilities; its own
//! setters build error strings, which the child must not).

use std::collections::{BTreeMap, HashSet};
use std::str::FromStr;

use caps::Capability;
use podvm_protocol::{SeccompMode, SeccompSpec, Security};
use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

/// Why an app's security settings cannot be applied.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    /// A capability name the agent does not know.
    #[error("unknown capability {0:?} in the app's capability set")]
    UnknownCapability(String),
    /// The seccomp filter could not be compiled.
    #[error("cannot compile the app's seccomp filter: {0}")]
    Seccomp(#[from] seccompiler::BackendError),
    /// The agent's architecture has no seccomp support in seccompiler.
    #[error("seccomp filters are not supported on {0}")]
    Arch(&'static str),
}

/// Security settings ready for the child: what to drop and the compiled filter.
#[derive(Debug, Default)]
pub struct Prepared {
    /// Capability numbers to drop from the bounding set.
    drop_bounding: Vec<libc::c_ulong>,
    /// The seccomp program, installed last.
    filter: Option<BpfProgram>,
}

/// Turns `security` into what the child applies.
pub fn prepare(security: &Security) -> Result<Prepared, SecurityError> {
    let drop_bounding = match &security.capabilities {
        None => Vec::new(),
        Some(names) => bounding_drops(names)?,
    };
    let filter = security.seccomp.as_ref().map(compile).transpose()?;
    Ok(Prepared {
        drop_bounding,
        filter,
    })
}

/// The capabilities to drop so that only `keep` remain: every capability the `caps` crate knows
/// (the kernel refuses numbers past its last one; those are skipped in the child).
fn bounding_drops(keep: &[String]) -> Result<Vec<libc::c_ulong>, SecurityError> {
    let kept = keep
        .iter()
        .map(|name| {
            Capability::from_str(name).map_err(|_| SecurityError::UnknownCapability(name.clone()))
        })
        .collect::<Result<HashSet<_>, _>>()?;
    let mut drops: Vec<libc::c_ulong> = caps::all()
        .difference(&kept)
        .map(|cap| libc::c_ulong::from(cap.index()))
        .collect();
    drops.sort_unstable();
    Ok(drops)
}

/// Compiles a seccomp filter for the agent's architecture.
fn compile(spec: &SeccompSpec) -> Result<BpfProgram, SecurityError> {
    let arch = TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|_| SecurityError::Arch(std::env::consts::ARCH))?;
    let refused = match spec.errno {
        Some(errno) => SeccompAction::Errno(errno),
        None => SeccompAction::KillProcess,
    };
    let (mismatch, matched) = match spec.mode {
        SeccompMode::Retain => (refused, SeccompAction::Allow),
        SeccompMode::Remove => (SeccompAction::Allow, refused),
    };
    // An empty rule list matches every call of that number, whatever its arguments.
    let rules: BTreeMap<i64, Vec<seccompiler::SeccompRule>> = spec
        .syscalls
        .iter()
        .map(|number| (*number, Vec::new()))
        .collect();
    let filter = SeccompFilter::new(rules, mismatch, matched, arch)?;
    Ok(BpfProgram::try_from(filter)?)
}

/// In the child, while still root: cuts the bounding set. Allocates nothing.
pub fn drop_bounding(prepared: &Prepared) -> std::io::Result<()> {
    for cap in &prepared.drop_bounding {
        // SAFETY: PR_CAPBSET_DROP takes a capability number and touches no memory of ours.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, *cap, 0, 0, 0) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            // A capability this kernel does not have is not in the set to begin with.
            if err.raw_os_error() != Some(libc::EINVAL) {
                return Err(err);
            }
        }
    }
    Ok(())
}

/// In the child, last before the exec: sets no_new_privs and installs the filter. Allocates
/// nothing (seccompiler's `apply_filter` is a `prctl` and a `seccomp` call on the program).
pub fn install_filter(prepared: &Prepared) -> std::io::Result<()> {
    match &prepared.filter {
        None => Ok(()),
        Some(program) => seccompiler::apply_filter(program).map_err(|err| match err {
            seccompiler::Error::Prctl(io) | seccompiler::Error::Seccomp(io) => io,
            _ => std::io::Error::from_raw_os_error(libc::EINVAL),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_restricted_by_default() {
        let prepared = prepare(&Security::default()).expect("prepare");
        assert!(prepared.drop_bounding.is_empty());
        assert!(prepared.filter.is_none());
    }

    #[test]
    fn the_bounding_set_keeps_only_the_named_capabilities() {
        let prepared = prepare(&Security {
            capabilities: Some(vec!["CAP_CHOWN".into(), "CAP_KILL".into()]),
            seccomp: None,
        })
        .expect("prepare");
        let chown = libc::c_ulong::from(Capability::CAP_CHOWN.index());
        let kill = libc::c_ulong::from(Capability::CAP_KILL.index());
        assert!(!prepared.drop_bounding.contains(&chown));
        assert!(!prepared.drop_bounding.contains(&kill));
        assert_eq!(prepared.drop_bounding.len(), caps::all().len() - 2);
        let err = prepare(&Security {
            capabilities: Some(vec!["CAP_NOPE".into()]),
            seccomp: None,
        })
        .expect_err("unknown");
        assert!(err.to_string().contains("CAP_NOPE"), "{err}");
    }

    #[test]
    fn filters_compile_in_both_modes() {
        for mode in [SeccompMode::Retain, SeccompMode::Remove] {
            let prepared = prepare(&Security {
                capabilities: None,
                seccomp: Some(SeccompSpec {
                    mode,
                    syscalls: vec![libc::SYS_read, libc::SYS_write, libc::SYS_execve],
                    errno: Some(libc::EXFULL as u32),
                }),
            })
            .expect("prepare");
            assert!(prepared.filter.is_some_and(|program| !program.is_empty()));
        }
    }

    /// The real thing in a forked child: the filter makes `uname` fail with EXFULL, the bounding
    /// set loses CAP_SYS_ADMIN (when the test runs as root), and the parent is untouched.
    #[test]
    fn a_child_gets_the_filter_and_the_bounding_set() {
        let prepared = prepare(&Security {
            capabilities: Some(vec!["CAP_CHOWN".into()]),
            seccomp: Some(SeccompSpec {
                mode: SeccompMode::Remove,
                syscalls: vec![libc::SYS_uname],
                errno: Some(libc::EXFULL as u32),
            }),
        })
        .expect("prepare");
        let root = nix::unistd::Uid::effective().is_root();
        // SAFETY: the child only makes system calls and exits with _exit.
        match unsafe { nix::unistd::fork() }.expect("fork") {
            nix::unistd::ForkResult::Child => {
                let mut code = 0;
                if root && drop_bounding(&prepared).is_err() {
                    code |= 1;
                }
                if install_filter(&prepared).is_err() {
                    code |= 2;
                }
                // SAFETY: uname writes into the zeroed struct we pass.
                let mut name: libc::utsname = unsafe { std::mem::zeroed() };
                // SAFETY: as above.
                let rc = unsafe { libc::uname(&mut name) };
                let errno = std::io::Error::last_os_error().raw_os_error();
                if rc != -1 || errno != Some(libc::EXFULL) {
                    code |= 4;
                }
                // SAFETY: PR_CAPBSET_READ reads a capability number.
                let admin = unsafe {
                    libc::prctl(
                        libc::PR_CAPBSET_READ,
                        libc::c_ulong::from(Capability::CAP_SYS_ADMIN.index()),
                        0,
                        0,
                        0,
                    )
                };
                if root && admin != 0 {
                    code |= 8;
                }
                // SAFETY: ends the forked child without running the parent's destructors.
                unsafe { libc::_exit(code) };
            }
            nix::unistd::ForkResult::Parent { child } => {
                let status = nix::sys::wait::waitpid(child, None).expect("wait");
                assert_eq!(
                    status,
                    nix::sys::wait::WaitStatus::Exited(child, 0),
                    "child failure bits: 1 drop, 2 install, 4 uname not EXFULL, 8 SYS_ADMIN kept"
                );
                // SAFETY: uname writes into the zeroed struct we pass.
                let mut name: libc::utsname = unsafe { std::mem::zeroed() };
                // SAFETY: as above.
                let rc = unsafe { libc::uname(&mut name) };
                assert_eq!(rc, 0, "the parent is unfiltered");
            }
        }
    }
}
