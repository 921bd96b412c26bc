//! Ends the agent: in the VM by rebooting (the kernel runs with `reboot=t`, so the reboot
//! triple-faults and the VMM sees a clean shutdown); off the VM by exiting.

use std::os::fd::AsFd;

use nix::sys::reboot::{reboot, RebootMode};

use crate::channel;

/// Whether the agent runs as the VM's init or as an ordinary process (tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// PID 1 in the microVM: mounts, reaps everything, reboots at the end.
    Init,
    /// Any other PID: no mounts, no reboot; exits with a status instead.
    Process,
}

impl Role {
    /// The role for this process.
    pub fn detect() -> Self {
        if std::process::id() == 1 {
            Role::Init
        } else {
            Role::Process
        }
    }
}

/// Flushes the channel and the console, then ends: reboots the VM as [`Role::Init`], exits
/// with `code` as [`Role::Process`]. Never returns (PID 1 returning panics the kernel).
pub fn end(role: Role, code: i32) -> ! {
    if let Err(err) = channel::drain() {
        diag!("{err}");
    }
    if role == Role::Process {
        std::process::exit(code);
    }
    nix::unistd::sync();
    // The console is a UART too: let the last diagnostics leave before the VM goes away.
    let _ = nix::sys::termios::tcdrain(std::io::stderr().as_fd());
    for mode in [RebootMode::RB_AUTOBOOT, RebootMode::RB_POWER_OFF] {
        let Err(err) = reboot(mode);
        diag!("reboot({mode:?}) failed: {err}");
    }
    diag!("cannot end the VM; halting here");
    loop {
        nix::unistd::pause();
    }
}
