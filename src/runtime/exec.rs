//! Exec processes started without waiting for them: [`Sandbox::exec_start`] opens an exec
//! session to the agent and returns an [`ExecProcess`] handle to wait for the process (with a
//! bound), signal it, resize its terminal and close its stdin. The process's output is pumped
//! by a thread of the handle into the caller's sinks; its stdin, when the caller gives a
//! source, is read by another and sent in frames of at most [`STDIN_CHUNK`] bytes. The library
//! never touches its own stdio.
//!
//! [`Sandbox::exec_start`]: super::Sandbox::exec_start

use std::fs::File;
use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use podvm_protocol::{Control, ExitStatus, Message, Stream};

use super::config::Io;
use super::session;
use crate::agent_link::{self, AgentLink};

/// The most stdin bytes one frame carries.
pub const STDIN_CHUNK: usize = 32 * 1024;

/// Errors of an exec process.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExecError {
    /// A message could not be sent to the agent (the session is gone).
    #[error("exec in {container}: cannot send {what} to the agent: {reason}")]
    Send {
        /// The container.
        container: String,
        /// The message.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// The session ended without an exit status.
    #[error("exec in {container}: {reason}")]
    Lost {
        /// The container.
        container: String,
        /// What happened instead.
        reason: String,
    },
    /// The wait ran out of time.
    #[error("exec in {container}: still running after {waited:?}")]
    StillRunning {
        /// The container.
        container: String,
        /// How long the wait was.
        waited: Duration,
    },
}

/// How the session ended: the process's status, or why there is none.
type Outcome = Result<ExitStatus, String>;

/// What the handle and its threads share.
struct Shared {
    container: String,
    /// The host's side of the session, for messages to the agent.
    writer: Mutex<File>,
    outcome: Mutex<Option<Outcome>>,
    ended: Condvar,
    /// Set once stdin was closed: no more stdin data is sent.
    stdin_closed: AtomicBool,
}

impl Shared {
    fn outcome(&self) -> MutexGuard<'_, Option<Outcome>> {
        self.outcome.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn send(&self, message: &Message, what: &'static str) -> Result<(), ExecError> {
        let mut writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        message
            .write_to(&mut *writer)
            .map_err(|err| ExecError::Send {
                container: self.container.clone(),
                what,
                reason: err.to_string(),
            })
    }

    /// Closes stdin once; later calls do nothing.
    fn close_stdin(&self) -> Result<(), ExecError> {
        if self.stdin_closed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        self.send(&Message::Control(Control::StdinClose), "the end of stdin")
    }
}

/// A running exec process; see the module docs. Dropping the handle leaves the process
/// running: its output still goes to the sinks until it ends.
pub struct ExecProcess {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ExecProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecProcess")
            .field("container", &self.shared.container)
            .finish_non_exhaustive()
    }
}

impl ExecProcess {
    /// Starts the threads of a session whose exec request was sent on `stream`: output to
    /// `io`, stdin from `stdin` (closed at once when `None`).
    pub(crate) fn start(
        container: &str,
        stream: File,
        io: Io,
        stdin: Option<Box<dyn Read + Send>>,
    ) -> io::Result<Self> {
        let shared = Arc::new(Shared {
            container: container.to_string(),
            writer: Mutex::new(stream.try_clone()?),
            outcome: Mutex::new(None),
            ended: Condvar::new(),
            stdin_closed: AtomicBool::new(false),
        });
        let pumped = shared.clone();
        // The pump ends with the session; it is not joined (a dropped handle leaves the
        // process running).
        std::thread::Builder::new()
            .name("exec-output".into())
            .spawn(move || pump_output(stream, io, &pumped))?;
        let process = Self { shared };
        match stdin {
            None => {
                // A failure here shows as the session's end, which the pump reports.
                let _ = process.shared.close_stdin();
            }
            Some(source) => {
                let feeding = process.shared.clone();
                std::thread::Builder::new()
                    .name("exec-stdin".into())
                    .spawn(move || feed_stdin(source, &feeding))?;
            }
        }
        Ok(process)
    }

    /// Waits until the process ended and all its output was written to the sinks; `None`
    /// waits as long as it takes (or until the session breaks).
    pub fn wait(&self, timeout: Option<Duration>) -> Result<ExitStatus, ExecError> {
        let deadline = timeout.map(|timeout| Instant::now() + timeout);
        let mut outcome = self.shared.outcome();
        loop {
            if let Some(ended) = outcome.as_ref() {
                return ended.clone().map_err(|reason| ExecError::Lost {
                    container: self.shared.container.clone(),
                    reason,
                });
            }
            outcome = match deadline {
                None => self
                    .shared
                    .ended
                    .wait(outcome)
                    .unwrap_or_else(|p| p.into_inner()),
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(ExecError::StillRunning {
                            container: self.shared.container.clone(),
                            waited: timeout.unwrap_or_default(),
                        });
                    }
                    self.shared
                        .ended
                        .wait_timeout(outcome, left)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
            };
        }
    }

    /// The process's status if it ended (and its output was written).
    pub fn try_status(&self) -> Option<Result<ExitStatus, ExecError>> {
        self.wait(Some(Duration::ZERO))
            .map(Some)
            .or_else(|err| match err {
                ExecError::StillRunning { .. } => Ok(None),
                other => Err(other),
            })
            .transpose()
    }

    /// Sends signal `signo` to the process's group (the agent refuses unknown numbers).
    pub fn signal(&self, signo: i32) -> Result<(), ExecError> {
        self.shared
            .send(&Message::Control(Control::Signal { signo }), "a signal")
    }

    /// Sets the size of the process's terminal (ignored by the agent without one; 0x0, a
    /// terminal of unknown size, is passed on like any other).
    pub fn resize(&self, rows: u16, cols: u16) -> Result<(), ExecError> {
        self.shared.send(
            &Message::Control(Control::Resize { rows, cols }),
            "a resize",
        )
    }

    /// Closes the process's stdin (it reads end-of-file); stdin from the source stops.
    pub fn close_stdin(&self) -> Result<(), ExecError> {
        self.shared.close_stdin()
    }
}

/// Feeds the session's output to the sinks until the agent closes it, then records how it
/// ended and wakes the waiters.
fn pump_output(stream: File, io: Io, shared: &Shared) {
    let (mut link, report) = AgentLink::new(io.stdout, io.stderr);
    let pumped = session::pump(stream, &mut link);
    drop(link);
    let report = agent_link::lock(&report).clone();
    let outcome = match report.exit {
        Some(status) => Ok(status),
        None => {
            let mut reasons = report.agent_errors;
            reasons.extend(report.protocol_error);
            if let Err(err) = pumped {
                reasons.push(format!("its output could not be delivered: {err}"));
            }
            if reasons.is_empty() {
                reasons.push("the agent closed the session without an exit status".into());
            }
            Err(reasons.join("; "))
        }
    };
    *shared.outcome() = Some(outcome);
    shared.ended.notify_all();
}

/// Sends what `source` gives as stdin frames until it ends (then closes stdin), stdin was
/// closed, or the session is gone.
fn feed_stdin(mut source: Box<dyn Read + Send>, shared: &Shared) {
    let mut buffer = vec![0u8; STDIN_CHUNK];
    loop {
        if shared.stdin_closed.load(Ordering::SeqCst) || shared.outcome().is_some() {
            return;
        }
        match source.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => {
                if shared.stdin_closed.load(Ordering::SeqCst) {
                    return;
                }
                let data = Message::Data(Stream::Stdin, buffer[..n].to_vec());
                if shared.send(&data, "stdin").is_err() {
                    return;
                }
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let _ = shared.close_stdin();
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::fd::OwnedFd;
    use std::os::unix::net::UnixStream;

    use super::*;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn session() -> (File, UnixStream) {
        let (host, guest) = UnixStream::pair().expect("pair");
        (File::from(OwnedFd::from(host)), guest)
    }

    #[test]
    fn stdin_reaches_the_agent_then_output_and_the_exit_come_back() {
        let (host, mut guest) = session();
        let out = Captured::default();
        let io = Io {
            stdout: Box::new(out.clone()),
            stderr: Box::new(io::sink()),
        };
        let stdin: Box<dyn Read + Send> = Box::new(io::Cursor::new(b"abc".to_vec()));
        let process = ExecProcess::start("web", host, io, Some(stdin)).expect("start");
        let first = Message::read_from(&mut guest)
            .expect("read")
            .expect("frame");
        assert_eq!(first, Message::Data(Stream::Stdin, b"abc".to_vec()));
        let second = Message::read_from(&mut guest)
            .expect("read")
            .expect("frame");
        assert_eq!(second, Message::Control(Control::StdinClose));
        let short = Some(Duration::from_millis(20));
        assert!(matches!(
            process.wait(short),
            Err(ExecError::StillRunning { .. })
        ));
        process.resize(40, 120).expect("resize");
        let resize = Message::read_from(&mut guest)
            .expect("read")
            .expect("frame");
        assert_eq!(
            resize,
            Message::Control(Control::Resize {
                rows: 40,
                cols: 120
            })
        );
        Message::Data(Stream::Stdout, b"x\n".to_vec())
            .write_to(&mut guest)
            .expect("write");
        Message::Control(Control::Exited {
            status: ExitStatus::Code(4),
            oom_kills: 0,
        })
        .write_to(&mut guest)
        .expect("write");
        drop(guest);
        let waited = process.wait(Some(Duration::from_secs(10)));
        assert_eq!(waited, Ok(ExitStatus::Code(4)));
        assert_eq!(out.0.lock().expect("lock").as_slice(), b"x\n");
    }

    #[test]
    fn a_session_closed_without_an_exit_is_an_error_and_stdin_closes_once() {
        let (host, mut guest) = session();
        let process = ExecProcess::start("web", host, Io::discard(), None).expect("start");
        let first = Message::read_from(&mut guest)
            .expect("read")
            .expect("frame");
        assert_eq!(first, Message::Control(Control::StdinClose));
        process.close_stdin().expect("closed already: nothing sent");
        process.signal(15).expect("signal");
        let signal = Message::read_from(&mut guest)
            .expect("read")
            .expect("frame");
        assert_eq!(signal, Message::Control(Control::Signal { signo: 15 }));
        drop(guest);
        let err = process
            .wait(Some(Duration::from_secs(10)))
            .expect_err("no exit status");
        assert!(matches!(err, ExecError::Lost { .. }), "{err}");
    }
}
