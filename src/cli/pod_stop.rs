//! `podvm stop`: ends running pods, gracefully by default.
//!
//! A running pod is a `podvm run` process (its supervisor) holding the pod's lock, its pid
//! recorded in the pod. Graceful: `stop` asks the supervisor over the pod's control socket
//! ([`crate::control`]), which does what SIGTERM does: forwards it to the apps through the agent
//! and ends the VM when they exit (or kills it after its stop timeout).
//! A supervisor that does not answer there (an older podvm), `--force`, and a graceful stop
//! that takes too long fall back to signals: `stop` pins the process with a pidfd and checks that
//! it is the pod's: it is in the pod's cgroup (unless the pod runs `--allow-unlimited`) and holds
//! the pod's lock (`/proc/locks`). Signals then go through the pidfd, so a pid recycled by
//! another process after the pod's podvm died is never signalled. `--force` is SIGKILL, which
//! ends the in-process VMM at once; the exit is then recorded here.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use clap::Args;
use nix::sys::signal::Signal;

use super::pod_gc::for_each_pod;
use crate::control;
use crate::pod::status::PodStatus;
use crate::pod::status::{now, EndCause};
use crate::pod::{cgroup, lock, Pod, PodError, PodStore};

/// How long a graceful stop may take before `stop` kills the pod's podvm (at least: a pod's
/// supervisor says its stop timeout, which [`SUPERVISOR_MARGIN`] extends).
const GRACEFUL_LIMIT: Duration = Duration::from_secs(30);
/// After the supervisor's stop timeout, how long it may take to end the VM and record the pod.
const SUPERVISOR_MARGIN: Duration = Duration::from_secs(15);
/// How long a killed podvm may take to release the pod.
const FORCE_LIMIT: Duration = Duration::from_secs(10);
/// How often `stop` looks whether the pod was released.
const POLL: Duration = Duration::from_millis(100);

/// Flags of `podvm stop`.
#[derive(Debug, Args)]
pub struct StopArgs {
    /// The pods (unique uuid prefixes).
    uuids: Vec<String>,
    /// Kill the pod's VM at once instead of asking its apps to exit.
    #[arg(long)]
    force: bool,
    /// Read the pod's uuid from this file (as written by `--uuid-file-save`).
    #[arg(long = "uuid-file")]
    uuid_file: Option<std::path::PathBuf>,
}

/// Runs `podvm stop`: prints each stopped pod's uuid; exit 1 if any could not be stopped.
pub fn stop(data_dir: &Path, args: StopArgs) -> Result<ExitCode, PodError> {
    let pods = PodStore::open(data_dir)?;
    let mut prefixes = args.uuids.clone();
    if let Some(file) = &args.uuid_file {
        let text = std::fs::read_to_string(file).map_err(|source| PodError::Io {
            what: "cannot read the uuid file",
            path: file.clone(),
            source,
        })?;
        prefixes.push(text.trim().to_string());
    }
    if prefixes.is_empty() {
        eprintln!("podvm: stop: name at least one pod (uuid prefix or --uuid-file)");
        return Ok(ExitCode::FAILURE);
    }
    let force = args.force;
    Ok(for_each_pod(&pods, "stop", &prefixes, |pods, pod| {
        stop_one(pods, pod, force)
    }))
}

fn stop_one(pods: &PodStore, pod: &Pod, force: bool) -> Result<String, PodError> {
    pod.expect_running("only running pods can be stopped")?;
    let asked = match force {
        true => None,
        false => ask_supervisor(pod)?,
    };
    if let Some(stop_timeout) = asked {
        let limit = GRACEFUL_LIMIT.max(stop_timeout + SUPERVISOR_MARGIN);
        if wait_released(pod, limit) {
            return Ok(pod.uuid.clone());
        }
        return kill_late(pods, pod, &pod_process(pods, pod)?, limit);
    }
    let process = pod_process(pods, pod)?;
    let signal = if force {
        Signal::SIGKILL
    } else {
        Signal::SIGTERM
    };
    process.send(signal)?;
    if !wait_released(pod, if force { FORCE_LIMIT } else { GRACEFUL_LIMIT }) {
        if force {
            return Err(PodError::StopTimeout(pod.uuid.clone()));
        }
        return kill_late(pods, pod, &process, GRACEFUL_LIMIT);
    }
    if force {
        return record_kill(pods, pod, "killed by `podvm stop --force`");
    }
    Ok(pod.uuid.clone())
}

/// Asks the pod's supervisor to stop the pod over its control socket; returns its stop
/// timeout, or `None` when nothing answers there (a supervisor from an older podvm, or one
/// that just ended).
fn ask_supervisor(pod: &Pod) -> Result<Option<Duration>, PodError> {
    match control::client::stop(&pod.dir.join(control::SOCKET_FILE)) {
        Ok(stop_timeout) => Ok(Some(stop_timeout)),
        Err(err) if err.is_unreachable() => Ok(None),
        Err(err) => Err(err.into()),
    }
}

/// The running pod's podvm process, pinned and checked (see [`PodProcess::verify`]).
fn pod_process<'a>(pods: &PodStore, pod: &'a Pod) -> Result<PodProcess<'a>, PodError> {
    let status = pods.status(pod)?;
    let pid = status.pid.ok_or_else(|| PodError::WrongState {
        uuid: pod.uuid.clone(),
        state: pod.state,
        hint: "it recorded no podvm pid yet; try again in a moment",
    })?;
    PodProcess::verify(pod, &status, pid)
}

/// Kills the pod's podvm after its graceful stop took longer than `limit`.
fn kill_late(
    pods: &PodStore,
    pod: &Pod,
    process: &PodProcess<'_>,
    limit: Duration,
) -> Result<String, PodError> {
    eprintln!(
        "podvm: pod {} did not stop within {}s; killing it",
        pod.uuid,
        limit.as_secs()
    );
    process.send(Signal::SIGKILL)?;
    if !wait_released(pod, FORCE_LIMIT) {
        return Err(PodError::StopTimeout(pod.uuid.clone()));
    }
    record_kill(
        pods,
        pod,
        "killed by `podvm stop` after the graceful stop timed out",
    )
}

/// The pod's podvm process, pinned by a pidfd and checked to be the pod's.
struct PodProcess<'a> {
    pod: &'a Pod,
    pidfd: OwnedFd,
}

impl<'a> PodProcess<'a> {
    /// Pins process `pid` and checks it is `pod`'s podvm: in the pod's cgroup (unless the pod
    /// runs unlimited) and holding the pod's lock. The checks read `/proc/<pid>`; the pidfd
    /// still naming a live process afterwards proves they were about the pinned process.
    fn verify(pod: &'a Pod, status: &PodStatus, pid: u32) -> Result<Self, PodError> {
        let not_it = |why: String| PodError::NotThePodsProcess {
            uuid: pod.uuid.clone(),
            pid,
            why,
        };
        let pidfd = pidfd_open(pid).map_err(|err| not_it(format!("cannot pin it: {err}")))?;
        if !status.unlimited {
            let cgroup = cgroup::of_process(pid).map_err(|err| not_it(err.to_string()))?;
            if !cgroup::is_pods(&cgroup, &pod.uuid) {
                return Err(not_it(format!(
                    "it is in cgroup {}, not in the pod's",
                    cgroup.display()
                )));
            }
        }
        if !lock::is_held_by(&pod.dir, pid) {
            return Err(not_it("it does not hold the pod's lock".into()));
        }
        let process = PodProcess { pod, pidfd };
        if !process.alive() {
            return Err(not_it("it exited while being checked".into()));
        }
        Ok(process)
    }

    /// Whether the pinned process still runs (signal 0 through the pidfd).
    fn alive(&self) -> bool {
        pidfd_send_signal(&self.pidfd, 0).is_ok()
    }

    /// Signals the pinned process; one that is already gone is not an error.
    fn send(&self, signal: Signal) -> Result<(), PodError> {
        match pidfd_send_signal(&self.pidfd, signal as i32) {
            Ok(()) => Ok(()),
            Err(err) if err.raw_os_error() == Some(libc::ESRCH) => Ok(()),
            Err(source) => Err(PodError::Io {
                what: "cannot signal the podvm process of pod",
                path: self.pod.dir.clone(),
                source,
            }),
        }
    }
}

/// A pidfd of process `pid` (pidfd_open(2)).
fn pidfd_open(pid: u32) -> std::io::Result<OwnedFd> {
    let pid =
        libc::pid_t::try_from(pid).map_err(|_| std::io::Error::from_raw_os_error(libc::ESRCH))?;
    // SAFETY: pidfd_open takes a pid and flags (none) and passes no memory; it returns a new
    // descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(|_| std::io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: the kernel just returned `fd` as a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sends `signal` (0: only check) to the process of `pidfd` (pidfd_send_signal(2)).
fn pidfd_send_signal(pidfd: &OwnedFd, signal: i32) -> std::io::Result<()> {
    // SAFETY: `pidfd` is a live pidfd; a null siginfo makes the kernel fill it as kill(2)
    // does; flags are none. No memory of ours is written.
    let done = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    match done {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// Whether the pod's lock was released within `limit`.
fn wait_released(pod: &Pod, limit: Duration) -> bool {
    let start = Instant::now();
    while lock::is_locked(&pod.dir) {
        if start.elapsed() >= limit {
            return false;
        }
        std::thread::sleep(POLL);
    }
    true
}

/// Records in a killed pod's status why it ended (its podvm could not).
fn record_kill(pods: &PodStore, pod: &Pod, reason: &str) -> Result<String, PodError> {
    let _held = lock::try_lock(&pod.dir, &pod.uuid)?;
    // The killed podvm could not release the pod's network.
    if let Err(err) = super::net::release(pod) {
        eprintln!("podvm: {err}");
    }
    let mut status = pods.status(pod)?;
    if status.finished.is_none() {
        status.finished = Some(now());
        status.reason = Some(reason.to_string());
        status.cause = Some(EndCause::Killed);
        pods.write_status(pod, &status)?;
    }
    Ok(pod.uuid.clone())
}
