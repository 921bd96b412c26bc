//! Runs the workload and turns what it does into protocol messages: its output as `Data`
//! frames (stdout and stderr kept apart and in order) and, at the end, how it exited.
//!
//! The transport is not known here: messages go to a sink the caller provides.

use std::fs::File;
use std::io::Read;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use podvm_protocol::{BootSpec, ExitStatus, Message, Stream};

use crate::channel::ChannelError;
use crate::launch::{self, LaunchError};
use crate::reaper::{ReapError, Reaper};

/// Largest chunk of output carried by one frame (well under the protocol's limit).
pub const CHUNK: usize = 32 * 1024;
/// After the main process exited, stop reading once the pipes stayed quiet this long
/// (processes it left behind may hold them open forever).
pub const DRAIN_IDLE: Duration = Duration::from_millis(500);
/// After the main process exited, stop reading after this long in any case.
pub const DRAIN_MAX: Duration = Duration::from_secs(5);

/// Errors that stop the agent from supervising the workload.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    /// Watching for exits failed.
    #[error(transparent)]
    Reap(#[from] ReapError),
    /// Waiting for output failed.
    #[error("cannot poll the workload's output: {0}")]
    Poll(Errno),
    /// Reading output failed.
    #[error("cannot read the workload's {stream:?}: {source}")]
    Read {
        /// Which stream.
        stream: Stream,
        /// Why.
        source: std::io::Error,
    },
    /// The sink refused a message; the workload was killed.
    #[error(transparent)]
    Sink(#[from] ChannelError),
}

/// How the workload ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Its exit status (127 / 126 if it could not start).
    pub status: ExitStatus,
    /// Why it could not start, if it did not.
    pub launch_error: Option<String>,
}

/// Where messages go.
pub type Sink<'a> = dyn FnMut(Message) -> Result<(), ChannelError> + 'a;

/// Runs the spec's command to its end, sending its output to `sink`.
pub fn run(spec: &BootSpec, sink: &mut Sink<'_>) -> Result<Outcome, WorkloadError> {
    let mut reaper = Reaper::new()?;
    let mut child = match launch::spawn(spec) {
        Ok(child) => child,
        Err(err) => return Ok(not_started(&err)),
    };
    let main = Pid::from_raw(i32::try_from(child.id()).expect("Linux pids fit in i32"));
    let mut pipes = Vec::new();
    if let Some(out) = child.stdout.take() {
        pipes.push(Pipe::new(
            Stream::Stdout,
            File::from(std::os::fd::OwnedFd::from(out)),
        ));
    }
    if let Some(err) = child.stderr.take() {
        pipes.push(Pipe::new(
            Stream::Stderr,
            File::from(std::os::fd::OwnedFd::from(err)),
        ));
    }
    match pump(&mut pipes, &mut reaper, main, sink) {
        Ok(status) => {
            if reaper.orphans() > 0 {
                diag!("reaped {} orphaned process(es)", reaper.orphans());
            }
            Ok(Outcome {
                status,
                launch_error: None,
            })
        }
        Err(err) => {
            let _ = kill(main, Signal::SIGKILL);
            Err(err)
        }
    }
}

fn not_started(err: &LaunchError) -> Outcome {
    Outcome {
        status: ExitStatus::Code(err.exit_code()),
        launch_error: Some(err.to_string()),
    }
}

/// One of the workload's output pipes.
struct Pipe {
    stream: Stream,
    file: Option<File>,
}

impl Pipe {
    fn new(stream: Stream, file: File) -> Self {
        Self {
            stream,
            file: Some(file),
        }
    }

    /// Reads one chunk and forwards it; closes the pipe at end of file.
    fn forward(&mut self, buffer: &mut [u8], sink: &mut Sink<'_>) -> Result<(), WorkloadError> {
        let Some(file) = self.file.as_mut() else {
            return Ok(());
        };
        match file.read(buffer) {
            Ok(0) => self.file = None,
            Ok(n) => sink(Message::Data(self.stream, buffer[..n].to_vec()))?,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(WorkloadError::Read {
                    stream: self.stream,
                    source,
                })
            }
        }
        Ok(())
    }
}

/// Forwards output until the main process exited and its pipes are closed (or quiet, see
/// [`DRAIN_IDLE`] and [`DRAIN_MAX`]); reaps every child meanwhile.
fn pump(
    pipes: &mut [Pipe],
    reaper: &mut Reaper,
    main: Pid,
    sink: &mut Sink<'_>,
) -> Result<ExitStatus, WorkloadError> {
    let mut buffer = vec![0u8; CHUNK];
    let mut exited: Option<(ExitStatus, Instant)> = None;
    loop {
        let open = pipes.iter().filter(|pipe| pipe.file.is_some()).count();
        let timeout = match exited {
            Some((status, _)) if open == 0 => return Ok(status),
            Some((status, since)) => match DRAIN_MAX.checked_sub(since.elapsed()) {
                Some(left) => left.min(DRAIN_IDLE),
                None => return Ok(status),
            },
            None => Duration::MAX,
        };
        let ready = wait_ready(pipes, reaper, timeout)?;
        if ready.is_empty() {
            if let Some((status, _)) = exited {
                return Ok(status);
            }
        }
        for index in ready {
            match pipes.get_mut(index) {
                Some(pipe) => pipe.forward(&mut buffer, sink)?,
                None => {
                    if let Some(status) = reaper.reap(main)? {
                        exited = Some((status, Instant::now()));
                    }
                }
            }
        }
    }
}

/// Polls the open pipes and the reaper; returns the ready ones (index `pipes.len()` is the
/// reaper), empty on timeout.
fn wait_ready(
    pipes: &[Pipe],
    reaper: &Reaper,
    timeout: Duration,
) -> Result<Vec<usize>, WorkloadError> {
    let mut indices = Vec::new();
    let mut fds = Vec::new();
    for (index, pipe) in pipes.iter().enumerate() {
        if let Some(file) = &pipe.file {
            indices.push(index);
            fds.push(PollFd::new(file.as_fd(), PollFlags::POLLIN));
        }
    }
    indices.push(pipes.len());
    fds.push(PollFd::new(reaper.fd(), PollFlags::POLLIN));
    let timeout = if timeout == Duration::MAX {
        PollTimeout::NONE
    } else {
        PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX)
    };
    match poll(&mut fds, timeout) {
        Ok(_) => {}
        Err(Errno::EINTR) => return Ok(vec![pipes.len()]),
        Err(err) => return Err(WorkloadError::Poll(err)),
    }
    Ok(fds
        .iter()
        .zip(indices)
        .filter(|(fd, _)| fd.revents().is_some_and(|events| !events.is_empty()))
        .map(|(_, index)| index)
        .collect())
}
