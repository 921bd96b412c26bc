//! The host's side of a sandbox's agent: what the agent said on the boot session (up, the
//! answer to each container request, each container's end) and on each container's session
//! (its output, sent where the caller said, and its close), with waits for each of those.
//!
//! The agent answers container requests in order, so the sandbox sends one request at a time
//! ([`Events::request`] holds a lock across send and answer) and the next answer is its own.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::File;
use std::io::{self, Read, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use podvm_protocol::{ContainerErrorKind, ContainerOp, Control, ExitStatus, Message};

use crate::agent_link::{AgentLink, AppOutputs, AppWriters, ControlHook, HostWriter};

/// Size of one read from an exec session.
const READ_CHUNK: usize = 64 * 1024;

/// Errors of a request to the agent.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The request could not be sent.
    #[error("container {id}: cannot send the {op:?} request to the agent: {source}")]
    Send {
        /// The container.
        id: String,
        /// The request.
        op: ContainerOp,
        /// Why.
        source: podvm_protocol::ProtocolError,
    },
    /// The agent refused or failed.
    #[error("container {id}: the agent refused {op:?} ({kind:?}): {message}")]
    Refused {
        /// The container.
        id: String,
        /// The request.
        op: ContainerOp,
        /// The kind of failure.
        kind: ContainerErrorKind,
        /// The agent's message.
        message: String,
    },
    /// The answer did not come in time.
    #[error("container {id}: no answer to {op:?} from the agent within {waited:?}")]
    Timeout {
        /// The container.
        id: String,
        /// The request.
        op: ContainerOp,
        /// How long it waited.
        waited: Duration,
    },
    /// The VM ended first.
    #[error("container {id}: the VM ended before the agent answered {op:?}")]
    VmEnded {
        /// The container.
        id: String,
        /// The request.
        op: ContainerOp,
    },
    /// An answer about another container or request came: host and agent disagree.
    #[error("container {id}: the agent answered {got} to {op:?}")]
    Mismatch {
        /// The container.
        id: String,
        /// The request.
        op: ContainerOp,
        /// What came instead.
        got: String,
    },
}

/// An answer of the agent to a container request.
#[derive(Debug, Clone)]
enum Answer {
    Done {
        id: String,
        op: ContainerOp,
    },
    Failed {
        id: String,
        op: ContainerOp,
        kind: ContainerErrorKind,
        message: String,
    },
}

#[derive(Default)]
struct State {
    ready: bool,
    vm_ended: bool,
    answers: VecDeque<Answer>,
    exits: HashMap<String, ExitStatus>,
    /// Containers whose session the agent closed (all their output delivered).
    closed: HashSet<String>,
    /// Where each started container's output goes, until its session takes it.
    outputs: HashMap<String, AppWriters>,
}

/// Everything the agent said, shared by the VM's threads and the sandbox.
#[derive(Default)]
pub struct Events {
    state: Mutex<State>,
    changed: Condvar,
    /// Held across a request and its answer.
    requests: Mutex<()>,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events").finish_non_exhaustive()
    }
}

/// How a wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waited<T> {
    /// The condition came true.
    Done(T),
    /// The VM ended first.
    VmEnded,
    /// The time ran out.
    TimedOut,
}

impl Events {
    /// Empty events.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn update(&self, change: impl FnOnce(&mut State)) {
        change(&mut self.lock());
        self.changed.notify_all();
    }

    /// Waits until `done` gives a value, the VM ended, or `timeout` (if any) passed.
    fn wait_for<T>(
        &self,
        timeout: Option<Duration>,
        mut done: impl FnMut(&mut State) -> Option<T>,
    ) -> Waited<T> {
        let deadline = timeout.map(|timeout| Instant::now() + timeout);
        let mut state = self.lock();
        loop {
            if let Some(value) = done(&mut state) {
                return Waited::Done(value);
            }
            if state.vm_ended {
                return Waited::VmEnded;
            }
            state = match deadline {
                None => self
                    .changed
                    .wait(state)
                    .unwrap_or_else(|poisoned| poisoned.into_inner()),
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Waited::TimedOut;
                    }
                    self.changed
                        .wait_timeout(state, left)
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .0
                }
            };
        }
    }

    /// The VM has ended: every wait ends.
    pub fn vm_ended(&self) {
        self.update(|state| state.vm_ended = true);
    }

    /// Waits up to `timeout` for the VM to end; whether it did.
    pub fn wait_vm_end(&self, timeout: Duration) -> bool {
        self.wait_for(Some(timeout), |_| None::<()>) == Waited::VmEnded
    }

    /// Waits for the agent's `Ready`.
    pub fn wait_ready(&self, timeout: Duration) -> Waited<()> {
        self.wait_for(Some(timeout), |state| state.ready.then_some(()))
    }

    /// The hook for the boot session's [`crate::agent_link::AgentLink`].
    pub fn hook(self: &Arc<Self>) -> ControlHook {
        let events = self.clone();
        Arc::new(move |control: &Control| events.take(control))
    }

    fn take(&self, control: &Control) {
        self.update(|state| match control {
            Control::Ready { .. } => state.ready = true,
            Control::ContainerDone { id, op } => state.answers.push_back(Answer::Done {
                id: id.clone(),
                op: *op,
            }),
            Control::ContainerError {
                id,
                op,
                kind,
                message,
            } => state.answers.push_back(Answer::Failed {
                id: id.clone(),
                op: *op,
                kind: *kind,
                message: message.clone(),
            }),
            Control::ContainerExited { id, status } => {
                state.exits.insert(id.clone(), *status);
            }
            _ => {}
        });
    }

    /// Sends `message` (a request about container `id`) and waits for its answer.
    pub fn request(
        &self,
        writer: &HostWriter,
        id: &str,
        op: ContainerOp,
        message: Control,
        timeout: Duration,
    ) -> Result<(), SessionError> {
        let _one_at_a_time = self
            .requests
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        writer
            .send(&Message::Control(message))
            .map_err(|source| SessionError::Send {
                id: id.to_string(),
                op,
                source,
            })?;
        let answer = match self.wait_for(Some(timeout), |state| state.answers.pop_front()) {
            Waited::Done(answer) => answer,
            Waited::VmEnded => {
                return Err(SessionError::VmEnded {
                    id: id.to_string(),
                    op,
                })
            }
            Waited::TimedOut => {
                return Err(SessionError::Timeout {
                    id: id.to_string(),
                    op,
                    waited: timeout,
                })
            }
        };
        match answer {
            Answer::Done { id: got, op: done } if got == id && done == op => Ok(()),
            Answer::Failed {
                id: got,
                op: failed,
                kind,
                message,
            } if got == id && failed == op => Err(SessionError::Refused {
                id: id.to_string(),
                op,
                kind,
                message,
            }),
            other => Err(SessionError::Mismatch {
                id: id.to_string(),
                op,
                got: format!("{other:?}"),
            }),
        }
    }

    /// Where container `id`'s session writes its output, once it opens.
    pub fn set_outputs(&self, id: &str, writers: AppWriters) {
        self.update(|state| {
            state.closed.remove(id);
            state.outputs.insert(id.to_string(), writers);
        });
    }

    /// Forgets container `id` (removed): its end and outputs.
    pub fn forget(&self, id: &str) {
        self.update(|state| {
            state.exits.remove(id);
            state.closed.remove(id);
            state.outputs.remove(id);
        });
    }

    /// Container `id`'s exit once it ended and its session closed (all its output written).
    pub fn wait_exit(&self, id: &str, timeout: Option<Duration>) -> Waited<ExitStatus> {
        self.wait_for(timeout, |state| {
            state
                .exits
                .get(id)
                .copied()
                .filter(|_| state.closed.contains(id))
        })
    }

    /// The writers of container sessions for [`crate::agent_link::AgentLink::with_apps`]:
    /// the caller's for a started container; they say when the session let go of them.
    pub fn outputs(self: &Arc<Self>) -> AppOutputs {
        let events = self.clone();
        Arc::new(move |id: &str| {
            let (stdout, stderr) = events
                .lock()
                .outputs
                .remove(id)
                .unwrap_or_else(|| (Box::new(io::sink()), Box::new(io::sink())));
            let stdout: Box<dyn Write + Send> = Box::new(Closing {
                inner: stdout,
                id: id.to_string(),
                events: events.clone(),
            });
            (stdout, stderr)
        })
    }
}

/// A container's stdout writer that records, when its session drops it, that the session
/// closed.
struct Closing {
    inner: Box<dyn Write + Send>,
    id: String,
    events: Arc<Events>,
}

impl Write for Closing {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl Drop for Closing {
    fn drop(&mut self) {
        let _ = self.inner.flush();
        let id = std::mem::take(&mut self.id);
        self.events.update(|state| {
            state.closed.insert(id);
        });
    }
}

/// Feeds an exec session's bytes to `link` until the agent closes it (or the connection
/// breaks: the missing exit status tells). Output that cannot be delivered is dropped (the
/// session goes on, so the agent is never blocked); the first such error is returned.
pub(crate) fn pump(mut stream: File, link: &mut AgentLink) -> io::Result<()> {
    let mut buffer = vec![0u8; READ_CHUNK];
    let mut first_error = None;
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => {
                if let Err(err) = link.write_all(&buffer[..n]) {
                    first_error.get_or_insert(err);
                }
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let _ = link.flush();
    first_error.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exit_counts_once_the_session_let_go_of_its_output() {
        let events = Events::new();
        events.set_outputs("web", (Box::new(io::sink()), Box::new(io::sink())));
        let writers = (events.outputs())("web");
        (events.hook())(&Control::ContainerExited {
            id: "web".into(),
            status: ExitStatus::Code(3),
        });
        let short = Some(Duration::from_millis(10));
        assert_eq!(events.wait_exit("web", short), Waited::TimedOut);
        drop(writers);
        assert_eq!(
            events.wait_exit("web", short),
            Waited::Done(ExitStatus::Code(3))
        );
    }

    #[test]
    fn answers_are_matched_to_their_request() {
        let events = Events::new();
        let writer = HostWriter::new();
        let (host, _guest) = std::os::unix::net::UnixStream::pair().expect("pair");
        writer.connect(std::fs::File::from(std::os::fd::OwnedFd::from(host)));
        (events.hook())(&Control::ContainerError {
            id: "db".into(),
            op: ContainerOp::Start,
            kind: ContainerErrorKind::WrongState,
            message: "started already".into(),
        });
        let request = Control::StartContainer { id: "db".into() };
        let err = events
            .request(
                &writer,
                "db",
                ContainerOp::Start,
                request,
                Duration::from_secs(1),
            )
            .expect_err("refused");
        assert!(matches!(err, SessionError::Refused { .. }), "{err}");
        events.vm_ended();
        let request = Control::RemoveContainer { id: "db".into() };
        let err = events
            .request(
                &writer,
                "db",
                ContainerOp::Remove,
                request,
                Duration::from_secs(1),
            )
            .expect_err("vm gone");
        assert!(matches!(err, SessionError::VmEnded { .. }), "{err}");
    }
}
