//! Child reaping: as PID 1 the agent inherits every orphan and must collect every zombie.
//!
//! SIGCHLD is blocked and read from a signalfd, so the event loop can poll it next to the
//! workload's pipes; no signal handler runs.

use std::os::fd::{AsFd, BorrowedFd};

use nix::errno::Errno;
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use podvm_protocol::ExitStatus;

/// Errors while watching children.
#[derive(Debug, thiserror::Error)]
pub enum ReapError {
    /// SIGCHLD could not be routed to a signalfd.
    #[error("cannot watch for exiting children (blocking SIGCHLD / signalfd): {0} (is CONFIG_SIGNALFD set in the guest kernel?)")]
    Setup(Errno),
    /// Reading the signalfd or waiting failed.
    #[error("cannot collect exited children: {0}")]
    Wait(Errno),
}

/// Collects exited children; create it before starting any.
pub struct Reaper {
    signals: SignalFd,
}

impl Reaper {
    /// Blocks SIGCHLD for this (single-threaded) process and opens a signalfd for it.
    pub fn new() -> Result<Self, ReapError> {
        let mut mask = SigSet::empty();
        mask.add(Signal::SIGCHLD);
        nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask), None)
            .map_err(ReapError::Setup)?;
        let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(ReapError::Setup)?;
        Ok(Self { signals })
    }

    /// The descriptor that becomes readable when a child exits.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.signals.as_fd()
    }

    /// Consumes pending SIGCHLDs and reaps every exited child; returns who exited and how.
    pub fn reap(&mut self) -> Result<Vec<(Pid, ExitStatus)>, ReapError> {
        while self
            .signals
            .read_signal()
            .map_err(ReapError::Wait)?
            .is_some()
        {}
        let mut exited = Vec::new();
        loop {
            let status = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
                Err(Errno::EINTR) => continue,
                Err(err) => return Err(ReapError::Wait(err)),
                Ok(status) => status,
            };
            match status {
                WaitStatus::Exited(pid, code) => exited.push((pid, ExitStatus::Code(code))),
                WaitStatus::Signaled(pid, signal, _) => {
                    exited.push((pid, ExitStatus::Signal(signal as i32)))
                }
                _ => {}
            }
        }
        Ok(exited)
    }
}
