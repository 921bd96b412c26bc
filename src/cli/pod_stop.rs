//! `podvm stop`: ends running pods, gracefully by default.
//!
//! A running pod is a `podvm run` process holding the pod's lock, its pid recorded in the pod.
//! Graceful: SIGTERM to that process, which forwards it to the apps through the agent and ends
//! the VM when they exit (or kills it after its stop timeout). `--force`: SIGKILL, which ends the
//! in-process VMM at once; the exit is then recorded here.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::pod_gc::for_each_pod;
use crate::pod::status::now;
use crate::pod::{lock, Pod, PodError, PodState, PodStore};

/// How long a graceful stop may take before `stop` kills the pod's podvm.
const GRACEFUL_LIMIT: Duration = Duration::from_secs(30);
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
    if pod.state != PodState::Running {
        return Err(PodError::WrongState {
            uuid: pod.uuid.clone(),
            state: pod.state,
            hint: "only running pods can be stopped",
        });
    }
    let pid = pods.status(pod)?.pid.ok_or_else(|| PodError::WrongState {
        uuid: pod.uuid.clone(),
        state: pod.state,
        hint: "it recorded no podvm pid yet; try again in a moment",
    })?;
    let signal = if force {
        Signal::SIGKILL
    } else {
        Signal::SIGTERM
    };
    send(pod, pid, signal)?;
    if !wait_released(pod, if force { FORCE_LIMIT } else { GRACEFUL_LIMIT }) {
        if force {
            return Err(PodError::StopTimeout(pod.uuid.clone()));
        }
        eprintln!(
            "podvm: pod {} did not stop within {}s; killing it",
            pod.uuid,
            GRACEFUL_LIMIT.as_secs()
        );
        send(pod, pid, Signal::SIGKILL)?;
        if !wait_released(pod, FORCE_LIMIT) {
            return Err(PodError::StopTimeout(pod.uuid.clone()));
        }
        return record_kill(
            pods,
            pod,
            "killed by `podvm stop` after the graceful stop timed out",
        );
    }
    if force {
        return record_kill(pods, pod, "killed by `podvm stop --force`");
    }
    Ok(pod.uuid.clone())
}

/// Signals the pod's podvm process; a process that is already gone is not an error.
fn send(pod: &Pod, pid: u32, signal: Signal) -> Result<(), PodError> {
    let pid = i32::try_from(pid).map_err(|_| PodError::WrongState {
        uuid: pod.uuid.clone(),
        state: pod.state,
        hint: "its recorded pid is not a valid pid",
    })?;
    match kill(Pid::from_raw(pid), signal) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(errno) => Err(PodError::Io {
            what: "cannot signal the podvm process of pod",
            path: pod.dir.clone(),
            source: errno.into(),
        }),
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
        pods.write_status(pod, &status)?;
    }
    Ok(pod.uuid.clone())
}
