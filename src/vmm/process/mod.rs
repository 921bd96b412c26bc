//! The VMM in a process of its own, one per VM: [`run`] (in the supervisor) starts it and
//! follows it to its end; [`child`] is the process's side.
//!
//! The supervisor keeps what is privileged or outlives the VM: it checks the host, opens
//! /dev/kvm and the kernel, packs the initramfs into a sealed memfd, makes the console's pipe
//! (the console log stays the supervisor's, bounded as ever) and listens for the agent on
//! host vsock (it needs only the guest's CID, which the VMM reports). It starts its own
//! executable (`/proc/self/exe`) as `podvm __vmm --parent PID`, in a process group of its own
//! (Ctrl-C at the terminal is the supervisor's to pass on), stdin and stdout on /dev/null,
//! stderr a pipe the supervisor copies to its own, and a `SOCK_SEQPACKET` socketpair end as
//! descriptor 3 on which the VM description and the descriptors travel ([`wire`]).
//!
//! The VMM process reports `Started` (CID, where guest RAM is mapped, for live figures read
//! from `/proc/PID`) and `Ended` (the figures, the vCPU state that ended the guest, or the
//! failure). [`crate::vmm::VmHandle::kill`] sends `Kill`; a VMM that has not ended
//! [`KILL_PATIENCE`] later gets SIGKILL. A VMM that dies without its report (SIGKILL, later
//! SIGSYS from seccomp) is [`ProcessError::Killed`] with the signal named. The VMM dies with
//! the thread that started it (PR_SET_PDEATHSIG: [`run`] blocks in that thread for the VM's
//! whole life), and [`run`] reaps it before returning: no zombie and no VMM outlives its
//! supervisor.
//!
//! What the VMM process still opens itself, by path (issue 14 hands these over as descriptors
//! before it jails the process): /dev/vhost-vsock, /dev/vhost-net, /dev/net/tun with each tap
//! (in the pod's network namespace), and the virtio-fs share directories (fuse-backend-rs's
//! passthrough file system opens its root by path).

pub mod child;
pub mod trace;
pub mod wire;

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};

use self::wire::{EndReport, Failure, FromVmm, StartVm, ToVmm};
use super::agent_vsock::{AgentListener, AgentReader};
use super::stats::LiveSource;
use super::{boot, host, Stopper, VmConfig, VmHandle, VmOutputs, VmStats, VmmError};

/// How long a VMM asked to stop may take before it is killed.
pub const KILL_PATIENCE: Duration = Duration::from_secs(10);
/// How often the supervisor looks whether a stop ran out of patience.
const POLL: Duration = Duration::from_millis(250);

/// Errors of the VMM process as its supervisor sees them.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// A setup step of the supervisor failed.
    #[error("cannot {what} for the VMM process: {source}")]
    Setup {
        /// The step.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// The VMM process could not be started.
    #[error("cannot start the VMM process: {0}")]
    Spawn(std::io::Error),
    /// The socket to the VMM process failed.
    #[error("the VMM process's socket: {0}")]
    Wire(#[from] wire::WireError),
    /// The VMM process sent something it should not have.
    #[error("the VMM process (pid {pid}) broke the protocol: {what}")]
    Protocol {
        /// The VMM's pid.
        pid: u32,
        /// What it did.
        what: &'static str,
    },
    /// The VMM failed (its own message).
    #[error("{0}")]
    Failed(String),
    /// The VMM process was killed by a signal before it reported the VM's end.
    #[error("the VMM process (pid {pid}) was killed by {signal}")]
    Killed {
        /// The VMM's pid.
        pid: u32,
        /// The signal's name (`SIGKILL`, `SIGSYS`, ...).
        signal: String,
        /// Its number.
        signo: i32,
    },
    /// The VMM process exited without reporting the VM's end.
    #[error("the VMM process (pid {pid}) exited with code {code} without reporting the VM's end")]
    Exited {
        /// The VMM's pid.
        pid: u32,
        /// Its exit code.
        code: i32,
    },
}

fn setup(what: &'static str) -> impl FnOnce(std::io::Error) -> ProcessError {
    move |source| ProcessError::Setup { what, source }
}

/// How the supervisor stops a VMM process: `Kill` on its socket, SIGKILL after
/// [`KILL_PATIENCE`].
#[derive(Debug)]
pub struct KillSwitch {
    socket: Arc<OwnedFd>,
    asked: Mutex<Option<Instant>>,
}

impl KillSwitch {
    /// Asks the VMM to stop the VM now.
    pub fn kill(&self) {
        let mut asked = self.asked.lock().unwrap_or_else(|p| p.into_inner());
        asked.get_or_insert_with(Instant::now);
        let _ = wire::send(self.socket.as_fd(), &ToVmm::Kill, &[]);
    }

    /// Whether a stop was asked for more than [`KILL_PATIENCE`] ago.
    fn out_of_patience(&self) -> bool {
        let asked = self.asked.lock().unwrap_or_else(|p| p.into_inner());
        asked.is_some_and(|at| at.elapsed() > KILL_PATIENCE)
    }

    fn was_asked(&self) -> bool {
        self.asked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }
}

/// A VMM process started ahead of its VM ([`Spawned::start`]), so that its exec and start-up
/// overlap the supervisor's preparation (the initramfs, the console log, the relay); it waits
/// for its VM on its socket. Dropped unused, it is killed and reaped.
#[derive(Debug)]
pub struct Spawned {
    child: Option<Child>,
    socket: OwnedFd,
}

impl Spawned {
    /// Starts a VMM process that dies with the calling thread: the thread must be the one that
    /// [`run_in`]s it (it blocks there for the VM's whole life).
    pub fn start() -> Result<Self, VmmError> {
        trace::mark("spawn");
        let (socket, child_socket) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|e| setup("make a socketpair")(e.into()))?;
        let child = spawn(child_socket)?;
        trace::mark("spawned");
        Ok(Self {
            child: Some(child),
            socket,
        })
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // It waits for a start message on a socket that stays open until it is reaped.
            let _ = child.kill();
            reap(&mut child);
        }
    }
}

/// Runs the VM described by `config` in a VMM process of its own until the guest shuts down;
/// the guest's console and agent channel go to `outputs` (see the module docs). Blocks for the
/// VM's whole life in the calling thread (the VMM process dies with it).
///
/// Returns the VMM process's memory figures measured just before teardown.
pub fn run(config: VmConfig, outputs: VmOutputs) -> Result<VmStats, VmmError> {
    run_in(Spawned::start()?, config, outputs)
}

/// [`run`] in a VMM process started earlier by this thread.
pub fn run_in(
    mut spawned: Spawned,
    config: VmConfig,
    outputs: VmOutputs,
) -> Result<VmStats, VmmError> {
    super::check_host(&config)?;
    super::check_resources(&config)?;
    let kvm = host::open_kvm()?;
    let kernel = boot::open_kernel(&config.kernel)?;
    let initramfs = sealed_memfd(&config.initramfs)?;
    let counters = share_counters()?;
    let (console_rx, console_tx) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| setup("make a pipe")(e.into()))?;
    let listener = AgentListener::bind()?;
    let Some(mut child) = spawned.child.take() else {
        return Err(ProcessError::Failed("the VMM process was already used".into()).into());
    };
    let socket = spawned
        .socket
        .try_clone()
        .map_err(setup("share the socket"))?;
    drop(spawned);
    let pid = child.id();
    let socket = Arc::new(socket);
    let start = ToVmm::Start(Box::new(StartVm {
        agent_port: listener.port(),
        config: VmConfig {
            initramfs: Arc::default(),
            ..config
        },
    }));
    let fds = [
        kvm.as_fd(),
        kernel.as_fd(),
        initramfs.as_fd(),
        console_tx.as_fd(),
        counters.as_fd(),
    ];
    trace::mark("send start");
    if let Err(err) = wire::send(socket.as_fd(), &start, &fds) {
        // It waits for this message on a socket that stays open: it would never end by itself.
        let _ = child.kill();
        reap(&mut child);
        return Err(ProcessError::from(err).into());
    }
    drop((kvm, kernel, initramfs, console_tx, counters));
    let console = copy_console(File::from(console_rx), outputs.console);
    let stderr = child.stderr.take().map(pass_stderr);
    let switch = Arc::new(KillSwitch {
        socket: socket.clone(),
        asked: Mutex::new(None),
    });
    let mut follower = Follower {
        pid,
        switch,
        agent: Some(outputs.agent),
        listener: Some(listener),
        on_start: outputs.on_start,
        reader: None,
    };
    let followed = follower.follow(&socket, &mut child);
    if followed.is_err() {
        let _ = child.kill();
    }
    let status = reap(&mut child);
    trace::mark("reaped");
    if let Some(reader) = follower.reader.take() {
        reader.finish();
    }
    let _ = console.join();
    if let Some(stderr) = stderr {
        let _ = stderr.join();
    }
    let report = followed?;
    outcome(pid, report, status, follower.switch.was_asked())
}

/// What the supervisor keeps while it follows the VMM process.
struct Follower {
    pid: u32,
    switch: Arc<KillSwitch>,
    agent: Option<Box<dyn super::agent_vsock::AgentSink>>,
    listener: Option<AgentListener>,
    on_start: Option<Box<dyn FnOnce(VmHandle) + Send>>,
    reader: Option<AgentReader>,
}

impl Follower {
    /// Reads the VMM's messages until it closes its end: its end report, if it sent one.
    fn follow(
        &mut self,
        socket: &OwnedFd,
        child: &mut Child,
    ) -> Result<Option<EndReport>, ProcessError> {
        let mut report = None;
        loop {
            if !readable(socket, POLL)? {
                if self.switch.out_of_patience() {
                    let _ = child.kill();
                }
                continue;
            }
            match wire::recv::<FromVmm>(socket.as_fd())? {
                None => return Ok(report),
                Some((_, fds)) if !fds.is_empty() => return Err(self.broke("sent descriptors")),
                Some((FromVmm::Started { cid, guest_starts }, _)) => {
                    trace::mark("started");
                    self.started(cid, guest_starts)?
                }
                Some((FromVmm::Ended(end), _)) => {
                    trace::mark("ended");
                    if report.replace(end).is_some() {
                        return Err(self.broke("ended twice"));
                    }
                }
            }
        }
    }

    /// The VM is built: serve the agent of its CID, hand its handle out.
    fn started(&mut self, cid: u32, guest_starts: Vec<u64>) -> Result<(), ProcessError> {
        let (Some(listener), Some(agent)) = (self.listener.take(), self.agent.take()) else {
            return Err(self.broke("started twice"));
        };
        if guest_starts.len() > 64 {
            return Err(self.broke("too many guest memory regions"));
        }
        let reader = listener
            .serve(cid, agent)
            .map_err(|err| ProcessError::Failed(err.to_string()))?;
        self.reader = Some(reader);
        if let Some(on_start) = self.on_start.take() {
            on_start(VmHandle {
                cid,
                pid: self.pid,
                stop: Stopper::Process(self.switch.clone()),
                live: Arc::new(LiveSource::of_process(self.pid, guest_starts)),
            });
        }
        Ok(())
    }

    fn broke(&self, what: &'static str) -> ProcessError {
        ProcessError::Protocol {
            pid: self.pid,
            what,
        }
    }
}

/// The VM's end from the VMM's report and how its process ended.
fn outcome(
    pid: u32,
    report: Option<EndReport>,
    status: Option<std::process::ExitStatus>,
    kill_asked: bool,
) -> Result<VmStats, VmmError> {
    match report {
        Some(EndReport {
            failure: Some(Failure::Vcpu { cpu, reason }),
            ..
        }) => Err(VmmError::VcpuFailed { cpu, reason }),
        Some(EndReport {
            failure: Some(Failure::Vmm { message }),
            ..
        }) => Err(ProcessError::Failed(message).into()),
        Some(EndReport {
            stats, guest_end, ..
        }) => Ok(VmStats { guest_end, ..stats }),
        None => match status.and_then(|status| status.signal()) {
            // Killed by its supervisor after a stop ran out of patience: the stop happened.
            Some(libc::SIGKILL) if kill_asked => Ok(VmStats::default()),
            Some(signo) => Err(ProcessError::Killed {
                pid,
                signal: signal_name(signo),
                signo,
            }
            .into()),
            None => Err(ProcessError::Exited {
                pid,
                code: status.and_then(|status| status.code()).unwrap_or(-1),
            }
            .into()),
        },
    }
}

/// `SIGKILL` for 9, or `signal N` for one without a name.
fn signal_name(signo: i32) -> String {
    nix::sys::signal::Signal::try_from(signo)
        .map(|signal| signal.as_str().to_string())
        .unwrap_or_else(|_| format!("signal {signo}"))
}

/// Starts `podvm __vmm` (this executable) with `socket` as descriptor 3.
fn spawn(socket: OwnedFd) -> Result<Child, ProcessError> {
    let exe = std::env::current_exe().unwrap_or_else(|_| "podvm".into());
    let raw = socket.as_raw_fd();
    let mut command = Command::new("/proc/self/exe");
    command
        .arg0(exe)
        .args([
            child::SUBCOMMAND,
            "--parent",
            &std::process::id().to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0);
    // SAFETY: the closure only calls dup2 and fcntl, which are async-signal-safe, on `raw`,
    // which stays open until the spawn returned (`socket` is dropped after it).
    unsafe {
        command.pre_exec(move || {
            if raw == child::SOCKET_FD {
                // Already in place: only its close-on-exec flag goes.
                if libc::fcntl(raw, libc::F_SETFD, 0) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(raw, child::SOCKET_FD) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command.spawn().map_err(ProcessError::Spawn)?;
    drop(socket);
    Ok(child)
}

/// Waits for the VMM process to end and reaps it.
fn reap(child: &mut Child) -> Option<std::process::ExitStatus> {
    match child.wait() {
        Ok(status) => Some(status),
        Err(err) => {
            eprintln!("podvm: cannot reap the VMM process {}: {err}", child.id());
            None
        }
    }
}

/// Whether `socket` became readable within `timeout`.
fn readable(socket: &OwnedFd, timeout: Duration) -> Result<bool, ProcessError> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let millis = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
    let mut fds = [PollFd::new(socket.as_fd(), PollFlags::POLLIN)];
    match poll(&mut fds, PollTimeout::from(millis)) {
        Ok(n) => Ok(n > 0),
        Err(nix::errno::Errno::EINTR) => Ok(false),
        Err(errno) => Err(ProcessError::Setup {
            what: "wait for the VMM process",
            source: errno.into(),
        }),
    }
}

/// The page the VMM process counts the shares' bytes into, made this process's counters (read
/// by `status` and at the VM's end): its memfd, for the VMM process.
fn share_counters() -> Result<File, ProcessError> {
    use crate::vmm::devices::virtio::fs::{share_in, SharedCounters};
    let page = SharedCounters::create().map_err(|err| ProcessError::Failed(err.to_string()))?;
    let file = page
        .file()
        .try_clone()
        .map_err(setup("share the counters' page"))?;
    // A supervisor runs one VM; a second would count into a page nobody reads.
    if share_in(page).is_err() {
        eprintln!("podvm: this process already follows a VM's share counters");
    }
    Ok(file)
}

/// The initramfs in a memfd sealed against any change, for the VMM process to read.
fn sealed_memfd(bytes: &[u8]) -> Result<File, ProcessError> {
    use nix::fcntl::{fcntl, FcntlArg, SealFlag};
    use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
    let fd = memfd_create(
        c"podvm-initramfs",
        MemFdCreateFlag::MFD_CLOEXEC | MemFdCreateFlag::MFD_ALLOW_SEALING,
    )
    .map_err(|e| setup("make the initramfs memfd")(e.into()))?;
    let mut file = File::from(fd);
    file.write_all(bytes)
        .map_err(setup("write the initramfs memfd"))?;
    let seals = SealFlag::F_SEAL_SHRINK
        | SealFlag::F_SEAL_GROW
        | SealFlag::F_SEAL_WRITE
        | SealFlag::F_SEAL_SEAL;
    fcntl(file.as_raw_fd(), FcntlArg::F_ADD_SEALS(seals))
        .map_err(|e| setup("seal the initramfs memfd")(e.into()))?;
    Ok(file)
}

/// Copies the guest's console from the VMM's pipe into `console` until the VMM is gone.
fn copy_console(mut pipe: File, mut console: Box<dyn Write + Send>) -> JoinHandle<()> {
    let copy = move || {
        let mut buffer = [0u8; 16 * 1024];
        loop {
            match pipe.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => {
                    let _ = console.write_all(&buffer[..n]);
                }
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        let _ = console.flush();
    };
    match std::thread::Builder::new()
        .name("vmm-console".into())
        .spawn(copy)
    {
        Ok(handle) => handle,
        // No thread: the VMM's console writes fail (EPIPE) once the pipe's reader is gone;
        // the VM runs on.
        Err(err) => {
            eprintln!("podvm: cannot follow the guest console: {err}");
            std::thread::spawn(|| {})
        }
    }
}

/// Passes the VMM process's stderr on to the supervisor's.
fn pass_stderr(mut pipe: std::process::ChildStderr) -> JoinHandle<()> {
    let copy = move || {
        let mut buffer = [0u8; 4096];
        while let Ok(n) = pipe.read(&mut buffer) {
            if n == 0 {
                break;
            }
            let _ = std::io::stderr().write_all(&buffer[..n]);
        }
    };
    std::thread::Builder::new()
        .name("vmm-stderr".into())
        .spawn(copy)
        .unwrap_or_else(|_| std::thread::spawn(|| {}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vmm_killed_by_a_signal_is_named_by_it() {
        let killed = std::process::ExitStatus::from_raw(libc::SIGKILL);
        let err = outcome(42, None, Some(killed), false).expect_err("killed");
        assert_eq!(
            err.to_string(),
            "the VMM process (pid 42) was killed by SIGKILL"
        );
        let sys = std::process::ExitStatus::from_raw(libc::SIGSYS);
        let err = outcome(42, None, Some(sys), true).expect_err("seccomp");
        assert!(err.to_string().ends_with("killed by SIGSYS"), "{err}");
        // SIGKILL after a stop that ran out of patience: the stop the supervisor asked for.
        assert!(outcome(42, None, Some(killed), true).is_ok());
        let exited = std::process::ExitStatus::from_raw(3 << 8);
        let err = outcome(42, None, Some(exited), false).expect_err("exited");
        assert!(err.to_string().contains("exited with code 3"), "{err}");
    }

    #[test]
    fn the_report_decides_the_outcome() {
        let report = EndReport {
            stats: VmStats {
                process_peak_rss_kib: 7,
                ..VmStats::default()
            },
            guest_end: Some("vCPU 0: Shutdown".into()),
            failure: None,
        };
        let stats = outcome(1, Some(report.clone()), None, false).expect("ok");
        assert_eq!(stats.process_peak_rss_kib, 7);
        assert_eq!(stats.guest_end.as_deref(), Some("vCPU 0: Shutdown"));
        let vcpu = EndReport {
            failure: Some(Failure::Vcpu {
                cpu: 1,
                reason: "bad".into(),
            }),
            ..report
        };
        assert!(matches!(
            outcome(1, Some(vcpu), None, false),
            Err(VmmError::VcpuFailed { cpu: 1, .. })
        ));
    }

    #[test]
    fn the_initramfs_memfd_cannot_be_changed() {
        let mut file = sealed_memfd(b"newc").expect("memfd");
        assert!(file.write_all(b"x").is_err(), "sealed against writes");
        assert!(file.set_len(0).is_err(), "sealed against shrinking");
        let mut text = String::new();
        use std::io::Seek;
        file.rewind().expect("seek");
        file.read_to_string(&mut text).expect("read");
        assert_eq!(text, "newc");
    }
}
