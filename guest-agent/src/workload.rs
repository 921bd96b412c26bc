//! The agent's event loop: one poll(2) over the reaper, the exec listener and every session's
//! connection, stdin and output, until the boot session's process has ended and its output is
//! drained.
//!
//! Sessions (see `session.rs`) turn frames into actions on their process; this module only
//! decides who is ready, reaps children, accepts exec sessions and stops everything on
//! `Shutdown` (SIGTERM to every process group, SIGKILL after the grace period).

use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;
use podvm_protocol::{BootSpec, Control, ExecRequest, ExitStatus, Message};

use crate::channel::ChannelError;
use crate::exec::{self, ExecListener};
use crate::launch::Job;
use crate::reaper::{ReapError, Reaper};
use crate::session::{Phase, Request, Session, SessionError};

/// Errors that stop the agent from supervising the workload.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    /// Watching for exits failed.
    #[error(transparent)]
    Reap(#[from] ReapError),
    /// Waiting for events failed.
    #[error("cannot poll the sessions: {0}")]
    Poll(Errno),
    /// The boot session failed; its process was killed.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// The host cannot be told anything any more; the workload was killed.
    #[error(transparent)]
    Sink(#[from] ChannelError),
}

/// How the boot session's process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Its exit status (127 / 126 if it could not start).
    pub status: ExitStatus,
    /// Why it could not start, if it did not.
    pub launch_error: Option<String>,
}

/// Exec sessions are accepted with this secret.
pub struct ExecService {
    /// The listening socket.
    pub listener: ExecListener,
    /// The VM's token.
    pub token: String,
}

/// What woke the loop.
#[derive(Debug, Clone, Copy)]
enum Wake {
    Reaper,
    Listener,
    Input(usize),
    Stdin(usize),
    Output(usize, usize),
}

struct Supervisor<'a> {
    reaper: Reaper,
    /// Index 0 is the boot session.
    sessions: Vec<Session>,
    exec: Option<ExecService>,
    root: &'a Path,
    kill_at: Option<Instant>,
    orphans: usize,
    exec_count: usize,
}

/// Runs the spec's command in `boot` (a session whose frames go to the host) until it ended,
/// serving exec sessions meanwhile. `root` is the app's root directory (for user lookup).
pub fn run(
    spec: &BootSpec,
    mut boot: Session,
    exec: Option<ExecService>,
    root: &Path,
) -> Result<Outcome, WorkloadError> {
    let reaper = Reaper::new()?;
    boot.is_boot = true;
    boot.start(&Job::from_spec(spec), root);
    let mut supervisor = Supervisor {
        reaper,
        sessions: vec![boot],
        exec,
        root,
        kill_at: None,
        orphans: 0,
        exec_count: 0,
    };
    let result = supervisor.run();
    supervisor.kill_all(Signal::SIGKILL);
    if supervisor.orphans > 0 {
        diag!("reaped {} orphaned process(es)", supervisor.orphans);
    }
    result
}

impl Supervisor<'_> {
    fn run(&mut self) -> Result<Outcome, WorkloadError> {
        loop {
            let now = Instant::now();
            if let Some(outcome) = self.housekeeping(now)? {
                return Ok(outcome);
            }
            for wake in self.wait(now)? {
                self.handle(wake)?;
            }
        }
    }

    /// Finishes drained sessions, applies deadlines; the outcome once the boot session ended.
    fn housekeeping(&mut self, now: Instant) -> Result<Option<Outcome>, WorkloadError> {
        for (index, session) in self.sessions.iter_mut().enumerate() {
            match session.finish_if_done(now) {
                Ok(_) => {}
                Err(err) if index == 0 => return Err(err.into()),
                Err(err) => drop_session(session, &err),
            }
            session.expire(now);
        }
        if let Some(status) = self.sessions[0].status {
            if matches!(self.sessions[0].phase, Phase::Done | Phase::Closing { .. }) {
                return Ok(Some(Outcome {
                    status,
                    launch_error: self.sessions[0].launch_error.clone(),
                }));
            }
        }
        let mut index = 0;
        self.sessions.retain(|session| {
            index += 1;
            index == 1 || !matches!(session.phase, Phase::Done)
        });
        if self.kill_at.is_some_and(|at| now >= at) {
            diag!("grace period over: killing what is left");
            self.kill_all(Signal::SIGKILL);
            self.kill_at = None;
        }
        Ok(None)
    }

    /// Polls everything; returns what is ready (empty on timeout).
    fn wait(&self, now: Instant) -> Result<Vec<Wake>, WorkloadError> {
        let mut wakes = vec![Wake::Reaper];
        let mut fds = vec![PollFd::new(self.reaper.fd(), PollFlags::POLLIN)];
        if let Some(exec) = &self.exec {
            wakes.push(Wake::Listener);
            fds.push(PollFd::new(exec.listener.fd(), PollFlags::POLLIN));
        }
        for (index, session) in self.sessions.iter().enumerate() {
            if let (true, Some(input)) = (session.wants_input(), &session.input) {
                wakes.push(Wake::Input(index));
                fds.push(PollFd::new(input.as_fd(), PollFlags::POLLIN));
            }
            let Phase::Running(proc) = &session.phase else {
                continue;
            };
            if let (false, Some(stdin)) = (proc.queue.is_empty(), &proc.stdin) {
                wakes.push(Wake::Stdin(index));
                fds.push(PollFd::new(stdin.as_fd(), PollFlags::POLLOUT));
            }
            for (stream, (_, file)) in proc.outputs.iter().enumerate() {
                if let Some(file) = file {
                    wakes.push(Wake::Output(index, stream));
                    fds.push(PollFd::new(file.as_fd(), PollFlags::POLLIN));
                }
            }
        }
        let deadline = self
            .sessions
            .iter()
            .filter_map(Session::deadline)
            .chain(self.kill_at)
            .min();
        let timeout = match deadline {
            None => PollTimeout::NONE,
            Some(at) => {
                let left = at.saturating_duration_since(now) + Duration::from_millis(1);
                PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX)
            }
        };
        match poll(&mut fds, timeout) {
            Ok(_) => {}
            Err(Errno::EINTR) => return Ok(Vec::new()),
            Err(err) => return Err(WorkloadError::Poll(err)),
        }
        Ok(fds
            .iter()
            .zip(wakes)
            .filter(|(fd, _)| fd.revents().is_some_and(|events| !events.is_empty()))
            .map(|(_, wake)| wake)
            .collect())
    }

    fn handle(&mut self, wake: Wake) -> Result<(), WorkloadError> {
        match wake {
            Wake::Reaper => self.reap()?,
            Wake::Listener => self.accept(),
            Wake::Input(index) => self.read_input(index)?,
            Wake::Stdin(index) => {
                if let Some(proc) = self.sessions.get_mut(index).and_then(Session::proc_mut) {
                    proc.write_stdin();
                }
            }
            Wake::Output(index, stream) => {
                let Some(session) = self.sessions.get_mut(index) else {
                    return Ok(());
                };
                match session.forward_output(stream) {
                    Ok(()) => {}
                    Err(err) if index == 0 => return Err(err.into()),
                    Err(err) => drop_session(session, &err),
                }
            }
        }
        Ok(())
    }

    fn reap(&mut self) -> Result<(), WorkloadError> {
        for (pid, status) in self.reaper.reap()? {
            let owner = self
                .sessions
                .iter_mut()
                .filter_map(Session::proc_mut)
                .find(|proc| proc.pid == pid && proc.exit.is_none());
            match owner {
                Some(proc) => proc.exit = Some((status, Instant::now())),
                None => self.orphans += 1,
            }
        }
        Ok(())
    }

    fn accept(&mut self) {
        let Some(stream) = self.exec.as_ref().and_then(|exec| exec.listener.accept()) else {
            return;
        };
        self.exec_count += 1;
        let name = format!("exec {}", self.exec_count);
        let (writer, closer) = match (stream.try_clone(), stream.try_clone()) {
            (Ok(writer), Ok(closer)) => (writer, closer),
            (Err(err), _) | (_, Err(err)) => {
                diag!("{name}: cannot duplicate the connection: {err}");
                return;
            }
        };
        let target = name.clone();
        let mut writer = writer;
        let send = Box::new(move |message: &Message| {
            message
                .write_to(&mut writer)
                .map_err(|source| ChannelError::Send {
                    target: target.clone(),
                    source,
                })
        });
        let finish = Box::new(move || {
            let _ = nix::sys::socket::shutdown(
                std::os::fd::AsRawFd::as_raw_fd(&closer),
                nix::sys::socket::Shutdown::Write,
            );
        });
        let phase = Phase::AwaitExec {
            deadline: Instant::now() + crate::session::EXEC_PATIENCE,
        };
        self.sessions
            .push(Session::new(name, send, Some(stream), phase).with_finish(finish));
    }

    fn read_input(&mut self, index: usize) -> Result<(), WorkloadError> {
        let token = self.exec.as_ref().map(|exec| exec.token.clone());
        let root = self.root;
        let mut run_exec = |session: &mut Session, request: ExecRequest| {
            start_exec(session, request, token.as_deref(), root)
        };
        let Some(session) = self.sessions.get_mut(index) else {
            return Ok(());
        };
        match session.read_input(&mut run_exec) {
            Ok(Some(Request::Shutdown(grace))) => self.shutdown(grace),
            Ok(None) => {}
            Err(err) if index == 0 => return Err(err.into()),
            Err(err) => drop_session(session, &err),
        }
        Ok(())
    }

    /// SIGTERM to every process now, SIGKILL after `grace`.
    fn shutdown(&mut self, grace: Duration) {
        diag!("shutdown requested: SIGTERM now, SIGKILL in {grace:?}");
        self.kill_all(Signal::SIGTERM);
        self.kill_at = Some(Instant::now() + grace);
    }

    fn kill_all(&mut self, signal: Signal) {
        for proc in self.sessions.iter_mut().filter_map(Session::proc_mut) {
            if proc.exit.is_none() {
                proc.signal(signal);
            }
        }
    }
}

/// Checks an exec request's token and starts its command in `session`.
fn start_exec(session: &mut Session, request: ExecRequest, token: Option<&str>, root: &Path) {
    let allowed = token.is_some_and(|token| exec::token_matches(token, &request.token));
    if !allowed {
        let _ = session.refuse("exec refused: wrong or missing token");
        return;
    }
    diag!("{}: running {:?}", session.name, request.command);
    let ready = Message::Control(Control::Ready {
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
    });
    if let Err(err) = session.send(&ready) {
        drop_session(session, &err);
        return;
    }
    session.start(&Job::from_exec(&request), root);
}

/// Ends an exec session whose host went away: its process group is killed.
fn drop_session(session: &mut Session, why: &dyn std::fmt::Display) {
    diag!("{}: dropping the session: {why}", session.name);
    if let Some(proc) = session.proc_mut() {
        if proc.exit.is_none() {
            proc.signal(Signal::SIGKILL);
        }
    }
    session.phase = Phase::Done;
}
