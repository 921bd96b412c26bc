//! `podvm run --detach` and `run-prepared --detach`: the pod's supervisor goes to the
//! background. podvm starts itself again as `podvm supervise UUID` (a hidden verb) in a session
//! of its own, hands it the pod's lock (the locked descriptor, inherited: the pod is never
//! unlocked in between, see [`crate::pod::lock`]) and the VM flags as JSON on its stdin, and
//! returns once the pod runs (its
//! supervisor answers on the pod's control socket that the VM's agent is up), or with the
//! supervisor's messages when it ended before that. The supervisor's own messages go to
//! `<pod>/supervisor.log`; the apps' output to their logs and to `podvm attach`.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::control;
use crate::control::proto::LiveState;
use crate::pod::lock::{self, PodLock};
use crate::pod::{Pod, PodError, PodState, PodStore};

/// The detached supervisor's own log in the pod's directory.
pub const SUPERVISOR_LOG: &str = "supervisor.log";
/// The hidden verb the detached supervisor runs.
pub const SUPERVISE_VERB: &str = "supervise";
/// How often `--detach` looks whether the pod runs.
const POLL: Duration = Duration::from_millis(50);
/// Largest VM flags document the supervisor reads from its stdin.
pub const MAX_FLAGS: u64 = 1 << 20;

/// Errors of `--detach`.
#[derive(Debug, thiserror::Error)]
pub enum DetachError {
    /// Pod store failure.
    #[error(transparent)]
    Pod(#[from] PodError),
    /// The supervisor could not be started.
    #[error("pod {uuid}: cannot start its supervisor in the background: {source}")]
    Spawn {
        /// The pod.
        uuid: String,
        /// Why.
        source: std::io::Error,
    },
    /// The supervisor ended before the pod ran.
    #[error("pod {uuid} did not start in the background ({status}):\n{log}")]
    Ended {
        /// The pod.
        uuid: String,
        /// How the supervisor ended.
        status: std::process::ExitStatus,
        /// Its messages.
        log: String,
    },
}

/// Starts the supervisor of the prepared `pod` (of `pods`, in data dir `data_dir`) in the
/// background with its lock `held` and the VM flags `flags` (JSON), and waits until the pod
/// runs; the caller then hands the lock over ([`PodLock::hand_over`]).
pub fn start(
    data_dir: &Path,
    pods: &PodStore,
    pod: &Pod,
    held: &PodLock,
    flags: &[u8],
) -> Result<(), DetachError> {
    let spawn_error = |source| DetachError::Spawn {
        uuid: pod.uuid.clone(),
        source,
    };
    let log_path = pod.dir.join(SUPERVISOR_LOG);
    let mut log = open_log(&log_path).map_err(|source| PodError::Io {
        what: "cannot create the supervisor's log",
        path: log_path.clone(),
        source,
    })?;
    let mut command = Command::new(std::env::current_exe().map_err(spawn_error)?);
    command
        .arg("--dir")
        .arg(data_dir)
        .arg(SUPERVISE_VERB)
        .arg(&pod.uuid)
        .arg(format!("--lock-fd={}", held.as_fd().as_raw_fd()))
        .stdin(Stdio::piped())
        .stdout(log.try_clone().map_err(spawn_error)?)
        .stderr(log.try_clone().map_err(spawn_error)?);
    let lock_fd = held.as_fd().as_raw_fd();
    // SAFETY: between fork and exec the child only calls fcntl(2) (to keep the lock's
    // descriptor across exec) and setsid(2), both async-signal-safe, on no memory of ours.
    unsafe {
        command.pre_exec(move || {
            let keep = nix::fcntl::FdFlag::empty();
            nix::fcntl::fcntl(lock_fd, nix::fcntl::FcntlArg::F_SETFD(keep))?;
            nix::unistd::setsid()?;
            Ok(())
        });
    }
    let mut child = command.spawn().map_err(spawn_error)?;
    if let Some(mut stdin) = child.stdin.take() {
        // A supervisor that died at once says why in its log, read below.
        let _ = stdin.write_all(flags);
    }
    loop {
        if let Some(status) = child.try_wait().map_err(spawn_error)? {
            let mut text = String::new();
            let _ = log.rewind().and_then(|()| log.read_to_string(&mut text));
            return Err(DetachError::Ended {
                uuid: pod.uuid.clone(),
                status,
                log: text.trim_end().to_string(),
            });
        }
        if runs(pods, &pod.uuid) {
            return Ok(());
        }
        std::thread::sleep(POLL);
    }
}

/// Whether the pod runs: its supervisor answers on its control socket, the VM's agent up.
fn runs(pods: &PodStore, uuid: &str) -> bool {
    pods.find(uuid).is_ok_and(|pod| {
        let socket = pod.dir.join(control::SOCKET_FILE);
        pod.state == PodState::Running
            && control::client::status(&socket).is_ok_and(|live| live.state != LiveState::Starting)
    })
}

/// The supervisor's log: 0600, emptied, never through a symlink; readable by this process too.
fn open_log(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .mode(crate::private::FILE_MODE)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// The pod's lock a detached supervisor was handed as descriptor `fd`.
pub fn adopt_lock(pod: &Pod, fd: RawFd) -> Result<PodLock, PodError> {
    let not_handed = |source| PodError::Io {
        what: "no lock was handed over for the pod in",
        path: pod.dir.clone(),
        source,
    };
    nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD)
        .map_err(|errno| not_handed(errno.into()))?;
    // SAFETY: `fd` is open (checked just above) and was left open across exec by the podvm
    // that started this one; nothing else in this process owns it (no descriptor it opens can
    // have that number while the inherited one is open). `adopt` checks it is the pod's lock.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    lock::adopt(&pod.dir, &pod.uuid, fd)
}

/// The VM flags a detached supervisor was handed on its stdin.
pub fn read_flags() -> std::io::Result<Vec<u8>> {
    let mut flags = Vec::new();
    std::io::stdin().take(MAX_FLAGS).read_to_end(&mut flags)?;
    Ok(flags)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn the_supervise_verb_is_the_hidden_command() {
        let cli =
            crate::cli::Cli::try_parse_from(["podvm", SUPERVISE_VERB, "some-uuid", "--lock-fd=3"]);
        assert!(
            matches!(
                cli,
                Ok(crate::cli::Cli {
                    command: crate::cli::Command::Supervise(_),
                    ..
                })
            ),
            "{cli:?}"
        );
    }
}
