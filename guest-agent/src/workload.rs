//! The agent's event loop: one poll(2) over the reaper, the exec listener and every session's
//! connection, stdin and output, until the boot session's process has ended and its output is
//! drained.
//!
//! Sessions (see `session.rs`) turn frames into actions on their process; this module only
//! decides who is ready, reaps children, accepts exec sessions and stops everything on
//! `Shutdown` (SIGTERM to every process group, SIGKILL after the grace period).
//!
//! In a pod of several apps ([`run_pod`]) the boot session has no process; the apps' sessions
//! follow it, and rkt's rule holds: the first app that fails has the others stopped (SIGTERM,
//! SIGKILL after the spec's grace period); once every app ended and its session closed, the
//! boot session reports the pod's status (the first failure, else code 0).

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;
use podvm_protocol::{BootSpec, Control, ExecRequest, ExitStatus, Message, DEFAULT_GRACE_MS};

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

/// One app of a pod of several apps, ready to run.
pub struct PodApp {
    /// Its app session (connected, `App` sent); its process is started by [`run_pod`].
    pub session: Session,
    /// Its root directory.
    pub root: PathBuf,
}

/// rkt's rule over the apps of a pod of several apps (sessions 1..=apps).
struct PodRule {
    apps: usize,
    /// Between SIGTERM and SIGKILL when an app failed.
    grace: Duration,
    /// The first app's failure.
    failed: Option<ExitStatus>,
    /// Which apps' ends were seen.
    ended: Vec<bool>,
}

struct Supervisor {
    reaper: Reaper,
    /// Index 0 is the boot session; in a pod of several apps, the app sessions follow it.
    sessions: Vec<Session>,
    exec: Option<ExecService>,
    /// App names and their roots; exec requests naming no app get the first.
    roots: Vec<(String, PathBuf)>,
    pod: Option<PodRule>,
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
    let name = spec
        .rootfs
        .as_ref()
        .map(|rootfs| rootfs.app.clone())
        .unwrap_or_default();
    let mut supervisor = Supervisor {
        reaper,
        sessions: vec![boot],
        exec,
        roots: vec![(name, root.to_path_buf())],
        pod: None,
        kill_at: None,
        orphans: 0,
        exec_count: 0,
    };
    supervisor.supervise()
}

/// Runs the apps of a pod of several apps, each in its session, until all ended (see the
/// module docs); `boot` carries only control messages. Exec sessions are served meanwhile.
pub fn run_pod(
    spec: &BootSpec,
    mut boot: Session,
    exec: Option<ExecService>,
    apps: Vec<PodApp>,
) -> Result<Outcome, WorkloadError> {
    let reaper = Reaper::new()?;
    boot.is_boot = true;
    boot.phase = Phase::Control;
    let mut sessions = vec![boot];
    let mut roots = Vec::new();
    for (app, PodApp { mut session, root }) in spec.apps.iter().zip(apps) {
        session.start(&Job::from_app(app), &root);
        session.close_stdin();
        roots.push((app.name.clone(), root));
        sessions.push(session);
    }
    let count = sessions.len() - 1;
    let grace = Duration::from_millis(spec.stop_grace_ms.unwrap_or(DEFAULT_GRACE_MS));
    let mut supervisor = Supervisor {
        reaper,
        sessions,
        exec,
        roots,
        pod: Some(PodRule {
            apps: count,
            grace,
            failed: None,
            ended: vec![false; count],
        }),
        kill_at: None,
        orphans: 0,
        exec_count: 0,
    };
    supervisor.supervise()
}

impl Supervisor {
    /// Runs the loop, then kills whatever is left.
    fn supervise(&mut self) -> Result<Outcome, WorkloadError> {
        let result = self.run();
        self.kill_all(Signal::SIGKILL);
        if self.orphans > 0 {
            diag!("reaped {} orphaned process(es)", self.orphans);
        }
        result
    }

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
        if let Some(status) = self.apply_pod_rule(now) {
            self.sessions[0].send(&Message::Control(Control::Exited { status }))?;
            return Ok(Some(Outcome {
                status,
                launch_error: None,
            }));
        }
        // The boot session and the app sessions keep their places; finished exec sessions go.
        let keep = 1 + self.pod.as_ref().map_or(0, |pod| pod.apps);
        let mut index = 0;
        self.sessions.retain(|session| {
            index += 1;
            index <= keep || !matches!(session.phase, Phase::Done)
        });
        if self.kill_at.is_some_and(|at| now >= at) {
            diag!("grace period over: killing what is left");
            self.kill_all(Signal::SIGKILL);
            self.kill_at = None;
        }
        Ok(None)
    }

    /// rkt's rule in a pod of several apps: the first app that fails has the others stopped.
    /// Returns the pod's status once every app ended and its session closed.
    fn apply_pod_rule(&mut self, now: Instant) -> Option<ExitStatus> {
        let pod = self.pod.as_mut()?;
        let apps = &mut self.sessions[1..=pod.apps];
        let mut failed_now = false;
        for (index, session) in apps.iter().enumerate() {
            if pod.ended[index] {
                continue;
            }
            let status = match (session.status, &session.phase) {
                (Some(status), _) => status,
                // Dropped (its connection broke): its process was killed.
                (None, Phase::Done) => ExitStatus::Signal(Signal::SIGKILL as i32),
                (None, _) => continue,
            };
            pod.ended[index] = true;
            diag!("app {}: ended with {status:?}", session.name);
            if status != ExitStatus::Code(0) && pod.failed.is_none() {
                diag!("app {} failed: stopping the other apps", session.name);
                pod.failed = Some(status);
                failed_now = true;
            }
        }
        if failed_now {
            for other in apps.iter_mut().filter_map(Session::proc_mut) {
                if other.exit.is_none() {
                    other.signal(Signal::SIGTERM);
                }
            }
            let kill_at = now + pod.grace;
            self.kill_at = Some(self.kill_at.map_or(kill_at, |at| at.min(kill_at)));
        }
        let closed = apps
            .iter()
            .all(|session| matches!(session.phase, Phase::Done));
        closed.then(|| pod.failed.unwrap_or(ExitStatus::Code(0)))
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
        let phase = Phase::AwaitExec {
            deadline: Instant::now() + crate::session::EXEC_PATIENCE,
        };
        match Session::over_stream(name.clone(), name.clone(), stream, phase) {
            Ok(session) => self.sessions.push(session),
            Err(err) => diag!("{name}: cannot duplicate the connection: {err}"),
        }
    }

    fn read_input(&mut self, index: usize) -> Result<(), WorkloadError> {
        let token = self.exec.as_ref().map(|exec| exec.token.clone());
        let roots = &self.roots;
        let mut run_exec = |session: &mut Session, request: ExecRequest| {
            start_exec(session, request, token.as_deref(), roots)
        };
        let Some(session) = self.sessions.get_mut(index) else {
            return Ok(());
        };
        match session.read_input(&mut run_exec) {
            Ok(Some(Request::Shutdown(grace))) => self.shutdown(grace),
            Ok(Some(Request::SignalApps(signo))) => self.signal_apps(signo),
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

    /// Delivers a signal the host sent on the boot session to every app still running.
    fn signal_apps(&mut self, signo: i32) {
        let Ok(signal) = Signal::try_from(signo) else {
            diag!("ignoring the unknown signal {signo} for the apps");
            return;
        };
        let apps = self.pod.as_ref().map_or(0, |pod| pod.apps);
        for proc in self.sessions[1..=apps]
            .iter_mut()
            .filter_map(Session::proc_mut)
        {
            if proc.exit.is_none() {
                proc.signal(signal);
            }
        }
    }

    fn kill_all(&mut self, signal: Signal) {
        for proc in self.sessions.iter_mut().filter_map(Session::proc_mut) {
            if proc.exit.is_none() {
                proc.signal(signal);
            }
        }
    }
}

/// Checks an exec request's token and starts its command in `session`, in the root of the app
/// it names (the first app's when it names none, or when there is only one).
fn start_exec(
    session: &mut Session,
    request: ExecRequest,
    token: Option<&str>,
    roots: &[(String, PathBuf)],
) {
    let allowed = token.is_some_and(|token| exec::token_matches(token, &request.token));
    if !allowed {
        let _ = session.refuse("exec refused: wrong or missing token");
        return;
    }
    let root = match (&request.app, roots) {
        (_, [(_, only)]) => only.as_path(),
        (None, [(_, first), ..]) => first.as_path(),
        (Some(name), _) => match roots.iter().find(|(app, _)| app == name) {
            Some((_, root)) => root.as_path(),
            None => {
                let _ = session.refuse(&format!("exec refused: the pod has no app {name:?}"));
                return;
            }
        },
        (None, []) => Path::new("/"),
    };
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
