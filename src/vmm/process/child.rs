//! The VMM process's side: `podvm __vmm --parent PID`, started by [`super::run`] with the
//! supervisor's socket as descriptor 3 and nothing else (stdin and stdout /dev/null, stderr a
//! pipe to the supervisor).
//!
//! In order: die with the supervisor (PR_SET_PDEATHSIG, then a check that the parent is still
//! the supervisor: it may have died before the call), close every descriptor above 3
//! (close_range), take the VM description and its descriptors ([`wire::ToVmm::Start`]), run the
//! VM ([`crate::vmm::run_vm`]) with a thread that turns [`wire::ToVmm::Kill`] (or the
//! supervisor's end of the socket closing) into a power-off, and send the end report.

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};
use std::process::ExitCode;
use std::sync::Arc;

use super::wire::{self, EndReport, Failure, FromVmm, StartVm, ToVmm};
use crate::vmm::{self, VmHandle, VmResources, VmmError};

/// The hidden subcommand that runs a VMM process.
pub const SUBCOMMAND: &str = "__vmm";
/// The descriptor the supervisor's socket is on.
pub const SOCKET_FD: i32 = 3;

/// Errors of the VMM process before or around the VM (printed on its stderr, which the
/// supervisor passes on).
#[derive(Debug, thiserror::Error)]
pub enum ChildError {
    /// The arguments are not `--parent PID`.
    #[error("usage: podvm {SUBCOMMAND} --parent PID (started by podvm itself)")]
    Usage,
    /// The supervisor is gone, or this process was not started by it.
    #[error("the supervisor (pid {0}) is not this process's parent")]
    Orphan(u32),
    /// A setup step failed.
    #[error("cannot {what}: {source}")]
    Setup {
        /// The step.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// The socket failed.
    #[error("the supervisor's socket: {0}")]
    Wire(#[from] wire::WireError),
    /// The first message is not a start with its descriptors.
    #[error("the supervisor's first message is not a VM with {n} descriptors", n = wire::START_FDS)]
    BadStart,
}

/// Runs the VMM process when this process was started as one (`argv[1]` is [`SUBCOMMAND`]);
/// `None` otherwise. A binary that embeds the runtime library calls it first in `main` (the
/// supervisor starts the VMM from its own executable).
pub fn main_if_asked() -> Option<ExitCode> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) != Some(SUBCOMMAND) {
        return None;
    }
    Some(match main(&args[1..]) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("podvm vmm: {err}");
            ExitCode::FAILURE
        }
    })
}

/// The VMM process's life; `args` follow the subcommand.
pub fn main(args: &[String]) -> Result<(), ChildError> {
    super::trace::mark_vmm("exec");
    let parent = match args {
        [flag, pid] if flag == "--parent" => pid.parse::<u32>().map_err(|_| ChildError::Usage)?,
        _ => return Err(ChildError::Usage),
    };
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).map_err(|errno| {
        ChildError::Setup {
            what: "set the parent-death signal",
            source: errno.into(),
        }
    })?;
    if u32::try_from(nix::unistd::getppid().as_raw()).ok() != Some(parent) {
        return Err(ChildError::Orphan(parent));
    }
    close_other_fds()?;
    ignore_signals_meant_for_the_supervisor()?;
    // Its threads are named for what they run; the main thread would be `exe` (the name it
    // was executed by, /proc/self/exe).
    let _ = nix::sys::prctl::set_name(c"podvm-vmm");
    // SAFETY: the supervisor put its socket on SOCKET_FD (see `super::spawn`) and nothing in
    // this process owns it yet.
    let socket = Arc::new(unsafe { OwnedFd::from_raw_fd(SOCKET_FD) });
    let (start, fds) = match wire::recv::<ToVmm>(socket.as_fd())? {
        Some((ToVmm::Start(start), fds)) if fds.len() == wire::START_FDS => (start, fds),
        _ => return Err(ChildError::BadStart),
    };
    super::trace::mark_vmm("start received");
    let report = run(*start, fds, &socket);
    super::trace::mark_vmm("vm ended");
    wire::send(socket.as_fd(), &FromVmm::Ended(report), &[])?;
    Ok(())
}

/// Signals that a service manager or a user sends to every process of the pod's cgroup or
/// unit (`systemctl stop` sends SIGTERM to each, `systemctl kill -s HUP` HUP): they are meant
/// for the supervisor, which stops the VM gracefully or passes them to the app; the VMM
/// process ends when its supervisor says so (or SIGKILL).
const SUPERVISOR_SIGNALS: [nix::sys::signal::Signal; 6] = {
    use nix::sys::signal::Signal::*;
    [SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2]
};

/// Ignores [`SUPERVISOR_SIGNALS`]: such a signal killed the VMM process under it before the
/// supervisor could stop the guest (e2e_systemd: `systemctl stop` ended the pod with 125).
fn ignore_signals_meant_for_the_supervisor() -> Result<(), ChildError> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet};
    let ignore = SigAction::new(SigHandler::SigIgn, SaFlags::empty(), SigSet::empty());
    for signal in SUPERVISOR_SIGNALS {
        // SAFETY: SIG_IGN installs no handler code; nothing in this process relies on the
        // signal's former disposition.
        unsafe { sigaction(signal, &ignore) }.map_err(|errno| ChildError::Setup {
            what: "ignore the supervisor's signals",
            source: errno.into(),
        })?;
    }
    Ok(())
}

/// Closes every descriptor above the socket: only what the supervisor sends is used.
fn close_other_fds() -> Result<(), ChildError> {
    let first = libc::c_uint::try_from(SOCKET_FD + 1).expect("a small descriptor number");
    // SAFETY: close_range only closes descriptors; nothing in this process uses any above the
    // socket yet (the process was just started).
    let rc = unsafe { libc::syscall(libc::SYS_close_range, first, libc::c_uint::MAX, 0) };
    if rc != 0 {
        return Err(ChildError::Setup {
            what: "close inherited descriptors",
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Runs the VM of `start` with its descriptors: the end report.
fn run(start: StartVm, fds: Vec<OwnedFd>, socket: &Arc<OwnedFd>) -> EndReport {
    let mut fds = fds.into_iter().map(File::from);
    let (Some(kvm), Some(kernel), Some(initramfs), Some(console), Some(counters)) =
        (fds.next(), fds.next(), fds.next(), fds.next(), fds.next())
    else {
        return failed("the supervisor sent too few descriptors".into());
    };
    if let Err(message) = count_shares_in(counters) {
        return failed(message);
    }
    let config = start.config;
    let initramfs = match MappedInitramfs::map(&initramfs, config.memory_mib) {
        Ok(map) => map,
        Err(message) => return failed(message),
    };
    let resources = VmResources {
        kvm,
        kernel,
        initramfs: Box::new(initramfs),
        agent_port: start.agent_port,
    };
    let socket = socket.clone();
    let on_start = Box::new(move |handle: VmHandle| started(handle, socket));
    match vmm::run_vm(config, resources, Box::new(console), on_start) {
        Ok(mut stats) => EndReport {
            guest_end: stats.guest_end.take(),
            stats,
            failure: None,
        },
        Err(VmmError::VcpuFailed { cpu, reason }) => EndReport {
            failure: Some(Failure::Vcpu { cpu, reason }),
            ..EndReport::default()
        },
        Err(err) => failed(err.to_string()),
    }
}

fn failed(message: String) -> EndReport {
    EndReport {
        failure: Some(Failure::Vmm { message }),
        ..EndReport::default()
    }
}

/// Counts the shares' bytes into the supervisor's page.
fn count_shares_in(file: File) -> Result<(), String> {
    use crate::vmm::devices::virtio::fs::{share_in, SharedCounters};
    let page = SharedCounters::map(file).map_err(|err| err.to_string())?;
    share_in(page).map_err(|_| "the share counters were set up twice".to_string())
}

/// The initramfs memfd mapped read-only (no larger than the guest's memory): the VMM copies
/// it into guest memory straight from the supervisor's pages.
#[derive(Debug)]
struct MappedInitramfs {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
}

// SAFETY: a read-only mapping of a sealed memfd (no one can write or shrink it), owned by the
// value and unmapped once in Drop.
unsafe impl Send for MappedInitramfs {}

impl MappedInitramfs {
    fn map(file: &File, memory_mib: u64) -> Result<Self, String> {
        use nix::fcntl::{fcntl, FcntlArg, SealFlag};
        use std::os::fd::AsRawFd;
        let len = file
            .metadata()
            .map_err(|err| format!("cannot stat the initramfs: {err}"))?
            .len();
        if len > memory_mib.saturating_mul(1 << 20) {
            return Err(format!(
                "the initramfs ({len} bytes) is larger than the guest's memory"
            ));
        }
        // A memfd that could still shrink would fault the VMM while it reads it.
        let seals = fcntl(file.as_raw_fd(), FcntlArg::F_GET_SEALS)
            .map_err(|err| format!("cannot read the initramfs's seals: {err}"))?;
        let needed = SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_WRITE;
        if !SealFlag::from_bits_truncate(seals).contains(needed) {
            return Err("the initramfs memfd is not sealed".into());
        }
        let len = usize::try_from(len).map_err(|_| "the initramfs is too large".to_string())?;
        if len == 0 {
            return Ok(Self {
                ptr: std::ptr::NonNull::dangling(),
                len,
            });
        }
        // SAFETY: a new private read-only mapping of `len` bytes of a file that long, sealed
        // against shrinking and writes; no existing memory is affected.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(format!(
                "cannot map the initramfs: {}",
                std::io::Error::last_os_error()
            ));
        }
        let ptr = std::ptr::NonNull::new(ptr.cast::<u8>())
            .ok_or_else(|| "cannot map the initramfs: a null mapping".to_string())?;
        Ok(Self { ptr, len })
    }
}

impl AsRef<[u8]> for MappedInitramfs {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `ptr` maps `len` readable bytes that nothing writes (sealed), valid until
        // Drop; a dangling pointer only for `len` 0.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for MappedInitramfs {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: unmaps exactly the mapping made in `map`; no slice of it outlives self.
            unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
        }
    }
}

/// The VM is built: tell the supervisor, and stop it when the supervisor asks (or is gone).
fn started(handle: VmHandle, socket: Arc<OwnedFd>) {
    let message = FromVmm::Started {
        cid: handle.cid(),
        guest_starts: handle.guest_starts().to_vec(),
    };
    if let Err(err) = wire::send(socket.as_fd(), &message, &[]) {
        eprintln!("podvm vmm: cannot tell the supervisor the VM started: {err}");
        handle.kill();
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("vmm-control".into())
        .spawn(move || follow(socket.as_fd(), &handle));
    if let Err(err) = spawned {
        eprintln!("podvm vmm: cannot follow the supervisor: {err}");
    }
}

/// Stops the VM at the supervisor's `Kill`, or when its end of the socket closes.
fn follow(socket: BorrowedFd<'_>, handle: &VmHandle) {
    loop {
        match wire::recv::<ToVmm>(socket) {
            Ok(Some((ToVmm::Kill, _))) | Ok(None) => break,
            Ok(Some((ToVmm::Start(_), _))) => {
                eprintln!("podvm vmm: a second start message is ignored");
            }
            Err(err) => {
                eprintln!("podvm vmm: the supervisor's socket: {err}");
                break;
            }
        }
    }
    handle.kill();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_initramfs_is_mapped_whole_from_the_supervisor_s_memfd() {
        let bytes: Vec<u8> = (0..=255u8).cycle().take(300_000).collect();
        let memfd = super::super::sealed_memfd(&bytes).expect("memfd");
        let map = MappedInitramfs::map(&memfd, 1).expect("map");
        assert_eq!(map.as_ref(), bytes.as_slice());
        let memfd = super::super::sealed_memfd(&vec![0u8; (1 << 20) + 1]).expect("memfd");
        assert!(
            MappedInitramfs::map(&memfd, 1).is_err(),
            "larger than the guest"
        );
        let unsealed = tempfile::tempfile().expect("file");
        unsealed.set_len(10).expect("size");
        assert!(MappedInitramfs::map(&unsealed, 1).is_err(), "not sealed");
    }
}
