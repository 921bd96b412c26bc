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
//! boot session reports the pod's status (the first failure, else code 0). A sandbox is such a
//! pod without apps that ends after `Shutdown`, once every container ended.
//!
//! Container requests on the boot session (`container.rs` keeps the table) are answered in
//! order; a started container's session joins the others, and when its process has ended and
//! its output was sent, the boot session says `ContainerExited`.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;
use podvm_protocol::{
    BootSpec, Control, ExecRequest, ExitStatus, Message, Security, DEFAULT_GRACE_MS,
};

use crate::channel::ChannelError;
use crate::container::{ContainerError, Containers, Origin, State};
use crate::exec::{self, ExecListener};
use crate::launch::Job;
use crate::reaper::{ReapError, Reaper};
use crate::session::{ContainerRequest, Phase, Request, Session, SessionError};

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
    /// An app of the pod could not start.
    #[error(transparent)]
    App(#[from] ContainerError),
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

/// rkt's rule over the apps of a pod of several apps: their sessions are sessions 1..=apps
/// (started first, and apps are never removed).
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
    /// Index 0 is the boot session; app, container and exec sessions follow it.
    sessions: Vec<Session>,
    exec: Option<ExecService>,
    /// The apps and containers.
    containers: Containers,
    /// The single app's name and root, when the boot session carries the app.
    boot_root: Option<(String, PathBuf)>,
    /// The single app's capabilities and seccomp filter, which its exec sessions get too.
    boot_security: Security,
    pod: Option<PodRule>,
    /// A sandbox: it ends after `Shutdown`, once its containers ended.
    sandbox: bool,
    /// `Shutdown` was asked for.
    stopping: bool,
    kill_at: Option<Instant>,
    orphans: usize,
    exec_count: usize,
}

impl Supervisor {
    fn new(
        boot: Session,
        exec: Option<ExecService>,
        containers: Containers,
    ) -> Result<Self, WorkloadError> {
        let mut boot = boot;
        boot.is_boot = true;
        Ok(Self {
            reaper: Reaper::new()?,
            sessions: vec![boot],
            exec,
            containers,
            boot_root: None,
            boot_security: Security::default(),
            pod: None,
            sandbox: false,
            stopping: false,
            kill_at: None,
            orphans: 0,
            exec_count: 0,
        })
    }
}

/// Runs the spec's command in `boot` (a session whose frames go to the host) until it ended,
/// serving exec sessions and container requests meanwhile. `root` is the app's root directory
/// (for user lookup).
pub fn run(
    spec: &BootSpec,
    boot: Session,
    exec: Option<ExecService>,
    root: &Path,
    containers: Containers,
) -> Result<Outcome, WorkloadError> {
    let mut supervisor = Supervisor::new(boot, exec, containers)?;
    supervisor.sessions[0].start(&Job::from_spec(spec), root);
    let name = spec
        .rootfs
        .as_ref()
        .map(|rootfs| rootfs.app.clone())
        .unwrap_or_default();
    supervisor.boot_root = Some((name, root.to_path_buf()));
    supervisor.boot_security = spec.security.clone();
    supervisor.supervise()
}

/// Starts the apps of a pod of several apps (created in `containers`), each on its session,
/// and runs them until all ended (see the module docs); a sandbox (no apps) until `Shutdown`.
/// `boot` carries only control messages. Exec sessions and container requests are served
/// meanwhile.
pub fn run_pod(
    spec: &BootSpec,
    boot: Session,
    exec: Option<ExecService>,
    containers: Containers,
) -> Result<Outcome, WorkloadError> {
    let mut supervisor = Supervisor::new(boot, exec, containers)?;
    supervisor.sessions[0].phase = Phase::Control;
    supervisor.sandbox = spec.sandbox;
    for app in &spec.apps {
        let session = supervisor.containers.start(&app.name)?;
        supervisor.sessions.push(session);
    }
    if !spec.apps.is_empty() {
        let grace = Duration::from_millis(spec.stop_grace_ms.unwrap_or(DEFAULT_GRACE_MS));
        supervisor.pod = Some(PodRule {
            apps: spec.apps.len(),
            grace,
            failed: None,
            ended: vec![false; spec.apps.len()],
        });
    }
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
        self.report_container_ends()?;
        let pod_status = self.apply_pod_rule(now).or_else(|| self.sandbox_status());
        if let Some(status) = pod_status {
            // The pod's count is its apps'.
            let oom_kills = self.sessions[1..].iter().map(|s| s.oom_kills).sum();
            self.sessions[0].send(&Message::Control(Control::Exited { status, oom_kills }))?;
            return Ok(Some(Outcome {
                status,
                launch_error: None,
            }));
        }
        // The boot session and the sessions of the apps and containers still there keep their
        // places; finished exec sessions and those of removed containers go.
        let containers = &self.containers;
        let mut index = 0;
        self.sessions.retain(|session| {
            index += 1;
            let kept = match &session.container {
                Some(id) => containers.get(id).is_some(),
                None => false,
            };
            index == 1 || kept || !matches!(session.phase, Phase::Done)
        });
        if self.kill_at.is_some_and(|at| now >= at) {
            diag!("grace period over: killing what is left");
            self.kill_all(Signal::SIGKILL);
            self.kill_at = None;
        }
        Ok(None)
    }

    /// Records the end of every started app and container whose session reported it (or
    /// broke: its process was killed), and tells the host of containers' ends.
    fn report_container_ends(&mut self) -> Result<(), ChannelError> {
        let mut ends = Vec::new();
        for session in &self.sessions[1..] {
            let Some(id) = &session.container else {
                continue;
            };
            let status = match (session.status, &session.phase) {
                (Some(status), _) => status,
                (None, Phase::Done) => ExitStatus::Signal(Signal::SIGKILL as i32),
                (None, _) => continue,
            };
            if self.containers.ended(id, status) {
                ends.push(Control::ContainerExited {
                    id: id.clone(),
                    status,
                });
            }
        }
        for end in ends {
            if let Control::ContainerExited { id, status } = &end {
                diag!("container {id}: ended with {status:?}");
            }
            self.sessions[0].send(&Message::Control(end))?;
        }
        Ok(())
    }

    /// A sandbox's status once `Shutdown` was asked for and every container's session closed.
    fn sandbox_status(&self) -> Option<ExitStatus> {
        if !(self.sandbox && self.stopping) {
            return None;
        }
        let closed = self.sessions[1..]
            .iter()
            .filter(|session| session.container.is_some())
            .all(|session| matches!(session.phase, Phase::Done));
        closed.then_some(ExitStatus::Code(0))
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
        let roots = self.exec_roots();
        let mut run_exec = |session: &mut Session, request: ExecRequest| {
            start_exec(session, request, token.as_deref(), &roots)
        };
        let Some(session) = self.sessions.get_mut(index) else {
            return Ok(());
        };
        let requests = match session.read_input(&mut run_exec) {
            Ok(requests) => requests,
            Err(err) if index == 0 => return Err(err.into()),
            Err(err) => {
                drop_session(session, &err);
                return Ok(());
            }
        };
        for request in requests {
            match request {
                Request::Shutdown(grace) => self.shutdown(grace),
                Request::SignalApps(signo) => self.signal_apps(signo),
                Request::Container(request) => self.container_request(request)?,
            }
        }
        Ok(())
    }

    /// Where exec sessions may run: the single app's root or the apps' (the first is the
    /// default), then the containers created by request (only by name).
    fn exec_roots(&self) -> ExecRoots {
        let apps = match &self.boot_root {
            Some(root) => vec![root.clone()],
            None => self
                .containers
                .iter()
                .filter(|container| container.origin == Origin::App)
                .map(|container| (container.id.clone(), container.root.clone()))
                .collect(),
        };
        let containers = self
            .containers
            .iter()
            .filter(|container| container.origin == Origin::Request)
            .map(|container| (container.id.clone(), container.root.clone()))
            .collect();
        let mut security: Vec<(String, Security)> = self
            .containers
            .iter()
            .map(|container| (container.id.clone(), container.process.security.clone()))
            .collect();
        if let Some((name, _)) = &self.boot_root {
            security.push((name.clone(), self.boot_security.clone()));
        }
        ExecRoots {
            apps,
            containers,
            security,
        }
    }

    /// Carries out a container request and answers it on the boot session.
    fn container_request(&mut self, request: ContainerRequest) -> Result<(), ChannelError> {
        let (id, op) = (request.id().to_string(), request.op());
        let answer = match self.do_container_request(request) {
            Ok(()) => Control::ContainerDone { id, op },
            Err(err) => {
                diag!("{err}");
                Control::ContainerError {
                    id,
                    op,
                    kind: err.kind(),
                    message: err.to_string(),
                }
            }
        };
        self.sessions[0].send(&Message::Control(answer))
    }

    fn do_container_request(&mut self, request: ContainerRequest) -> Result<(), ContainerError> {
        match request {
            ContainerRequest::Create(spec) => self.containers.create(&spec),
            ContainerRequest::Start(id) => {
                let session = self.containers.start(&id)?;
                let not_started = session.launch_error.clone();
                self.sessions.push(session);
                match not_started {
                    Some(message) => Err(ContainerError::NotStarted { id, message }),
                    None => Ok(()),
                }
            }
            ContainerRequest::Signal(id, signo) => {
                let container = self
                    .containers
                    .get(&id)
                    .ok_or_else(|| ContainerError::NotFound(id.clone()))?;
                let Ok(signal) = Signal::try_from(signo) else {
                    return Err(ContainerError::BadSignal { id, signo });
                };
                let running = container.state == State::Started;
                let proc = self
                    .sessions
                    .iter_mut()
                    .filter(|session| session.container.as_deref() == Some(id.as_str()))
                    .find_map(Session::proc_mut)
                    .filter(|proc| running && proc.exit.is_none());
                match proc {
                    Some(proc) => {
                        proc.signal(signal);
                        Ok(())
                    }
                    None => Err(ContainerError::WrongState {
                        id,
                        why: "it is not running",
                    }),
                }
            }
            ContainerRequest::Remove(id) => {
                self.containers.remove(&id)?;
                // Its session (closing, or never opened) goes with it.
                for session in &mut self.sessions[1..] {
                    if session.container.as_deref() == Some(id.as_str()) {
                        session.container = None;
                        session.phase = Phase::Done;
                    }
                }
                Ok(())
            }
        }
    }

    /// SIGTERM to every process now, SIGKILL after `grace`.
    fn shutdown(&mut self, grace: Duration) {
        diag!("shutdown requested: SIGTERM now, SIGKILL in {grace:?}");
        self.stopping = true;
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

/// The roots exec sessions may run in, by app or container name.
struct ExecRoots {
    /// The single app's, or the apps' of a pod of several apps.
    apps: Vec<(String, PathBuf)>,
    /// The containers' created by request.
    containers: Vec<(String, PathBuf)>,
    /// The capabilities and seccomp filter of each app and container, which exec sessions in
    /// its root get.
    security: Vec<(String, Security)>,
}

/// Checks an exec request's token and starts its command in `session`, in the root of the
/// container it names, else of the app it names (the first app's when it names none, or
/// when there is only one).
fn start_exec(session: &mut Session, request: ExecRequest, token: Option<&str>, roots: &ExecRoots) {
    let allowed = token.is_some_and(|token| exec::token_matches(token, &request.token));
    if !allowed {
        let _ = session.refuse("exec refused: wrong or missing token");
        return;
    }
    let container = request
        .app
        .as_ref()
        .and_then(|name| roots.containers.iter().find(|(id, _)| id == name));
    let apps = roots.apps.as_slice();
    let (target, root) = match (container, &request.app, apps) {
        (Some((id, root)), _, _) => (id.as_str(), root.as_path()),
        (None, _, [(app, only)]) => (app.as_str(), only.as_path()),
        (None, None, [(app, first), ..]) => (app.as_str(), first.as_path()),
        (None, Some(name), _) => match apps.iter().find(|(app, _)| app == name) {
            Some((app, root)) => (app.as_str(), root.as_path()),
            None => {
                let _ = session.refuse(&format!(
                    "exec refused: the pod has no app or container {name:?}"
                ));
                return;
            }
        },
        (None, None, []) => ("", Path::new("/")),
    };
    let no_restriction = Security::default();
    let security = roots
        .security
        .iter()
        .find(|(name, _)| name == target)
        .map_or(&no_restriction, |(_, security)| security);
    diag!("{}: running {:?}", session.name, request.command);
    let ready = Message::Control(Control::Ready {
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
    });
    if let Err(err) = session.send(&ready) {
        drop_session(session, &err);
        return;
    }
    session.start(&Job::from_exec(&request, security), root);
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
