//! One session: a connection to the host and the one process it carries (see the protocol
//! crate's sessions section). Host frames become stdin bytes, signals and resizes; the process's
//! output becomes `Data` frames; its end becomes `Exited`.
//!
//! The transport is not known here: frames go to a sink and come from a readable descriptor the
//! caller provides.

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use podvm_protocol::{
    ContainerOp, ContainerSpec, Control, ExecRequest, ExitStatus, FrameDecoder, Message, Stream,
};

use crate::channel::ChannelError;
use crate::launch::{self, Job, LaunchError, Started};
use crate::oom::OomWatch;

/// Largest chunk of output carried by one frame (well under the protocol's limit).
pub const CHUNK: usize = 32 * 1024;
/// After the process exited, stop reading once its output stayed quiet this long
/// (processes it left behind may hold the pipes open forever).
pub const DRAIN_IDLE: Duration = Duration::from_millis(500);
/// After the process exited, stop reading after this long in any case.
pub const DRAIN_MAX: Duration = Duration::from_secs(5);
/// Stop reading the host while this much stdin waits for the app (back-pressure).
pub const STDIN_HIGH_WATER: usize = 1 << 20;
/// How long an exec connection may take to send its request, and to close at the end.
pub const EXEC_PATIENCE: Duration = Duration::from_secs(10);
/// What a closed stdin becomes on a terminal: the EOF character (^D).
const TERMINAL_EOF: u8 = 0x04;

/// Where a session's frames go.
pub type Sink = dyn FnMut(&Message) -> Result<(), ChannelError>;

/// Errors of one session.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The host cannot be told anything any more.
    #[error(transparent)]
    Sink(#[from] ChannelError),
    /// Reading the process's output failed.
    #[error("cannot read the process's {stream:?}: {source}")]
    Read {
        /// Which stream.
        stream: Stream,
        /// Why.
        source: std::io::Error,
    },
}

/// Where a session is in its life.
pub enum Phase {
    /// An exec connection that has not sent its request yet.
    AwaitExec {
        /// When it is dropped if it still has not.
        deadline: Instant,
    },
    /// The process runs (or its output is being drained).
    Running(Proc),
    /// A session without a process of its own that carries only control messages: the boot
    /// session of a pod of several apps (its `Signal` goes to every app).
    Control,
    /// `Exited` was sent; waiting for the host to close.
    Closing {
        /// When it is dropped anyway.
        deadline: Instant,
    },
    /// Nothing left to do.
    Done,
}

/// A running process and the agent's ends of its streams.
pub struct Proc {
    /// Its pid (also its process group).
    pub pid: Pid,
    /// Its stdin, until closed.
    pub stdin: Option<File>,
    /// Bytes from the host not yet written to stdin.
    pub queue: Vec<u8>,
    /// The host closed stdin; close it once the queue is written.
    pub closing_stdin: bool,
    /// Its output streams, `None` once at end of file.
    pub outputs: Vec<(Stream, Option<File>)>,
    /// The pty master, when it runs on a terminal.
    pub terminal: Option<File>,
    /// How and when it exited.
    pub exit: Option<(ExitStatus, Instant)>,
    /// When it last produced output.
    pub last_output: Instant,
    /// Where the OOM killer's kills among its processes are counted.
    oom: OomWatch,
}

impl Proc {
    fn new(started: Started) -> Self {
        Self {
            pid: started.pid,
            stdin: Some(started.stdin),
            queue: Vec::new(),
            closing_stdin: false,
            outputs: started
                .outputs
                .into_iter()
                .map(|(stream, file)| (stream, Some(file)))
                .collect(),
            terminal: started.terminal,
            exit: None,
            last_output: Instant::now(),
            oom: started.oom,
        }
    }

    /// Sends `signal` to its process group (or to it alone if the group is gone).
    pub fn signal(&self, signal: Signal) {
        if kill(Pid::from_raw(-self.pid.as_raw()), signal).is_err() {
            let _ = kill(self.pid, signal);
        }
    }

    /// Whether its output is finished: it exited and its pipes closed or went quiet.
    fn drained(&self, now: Instant) -> bool {
        let Some((_, since)) = self.exit else {
            return false;
        };
        let open = self.outputs.iter().any(|(_, file)| file.is_some());
        !open
            || now.duration_since(self.last_output) >= DRAIN_IDLE
            || now.duration_since(since) >= DRAIN_MAX
    }

    /// When [`Proc::drained`] may become true without any event.
    fn drain_deadline(&self) -> Option<Instant> {
        let (_, since) = self.exit?;
        Some((self.last_output + DRAIN_IDLE).min(since + DRAIN_MAX))
    }

    /// Writes queued stdin without blocking; closes stdin when asked and the queue is empty.
    pub fn write_stdin(&mut self) {
        if let Some(stdin) = self.stdin.as_mut() {
            while !self.queue.is_empty() {
                match stdin.write(&self.queue) {
                    Ok(n) => {
                        self.queue.drain(..n);
                    }
                    Err(err) if err.kind() == ErrorKind::Interrupted => {}
                    Err(err) if err.kind() == ErrorKind::WouldBlock => return,
                    // EPIPE: the app closed its stdin; what is left has nowhere to go.
                    Err(_) => {
                        self.queue.clear();
                        self.stdin = None;
                        return;
                    }
                }
            }
        } else {
            self.queue.clear();
        }
        if self.closing_stdin && self.terminal.is_none() {
            self.stdin = None;
        }
    }
}

/// A connection and its process.
pub struct Session {
    /// For diagnostics: `app` or `exec N`.
    pub name: String,
    send: Box<Sink>,
    /// The host's frames come from here; `None` after EOF or a protocol error.
    pub input: Option<File>,
    decoder: FrameDecoder,
    /// Where it is in its life.
    pub phase: Phase,
    /// Why its process did not start, if it did not.
    pub launch_error: Option<String>,
    /// How its process ended, once it did.
    pub status: Option<ExitStatus>,
    /// How many of its processes the OOM killer killed, once it ended.
    pub oom_kills: u64,
    /// Whether `Shutdown` and container requests are allowed here (the boot session only).
    pub is_boot: bool,
    /// The app or container whose session this is.
    pub container: Option<String>,
    /// Half-closes the connection at the end (exec sessions).
    finish: Option<Box<dyn FnMut()>>,
}

/// What a host message asks of the whole agent, beyond this session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Stop everything within this grace period and power off.
    Shutdown(Duration),
    /// Deliver this signal to every app (a `Signal` on the boot session of a pod of several
    /// apps).
    SignalApps(i32),
    /// A container request (on the boot session).
    Container(ContainerRequest),
}

/// A container request of the host (see the protocol crate's containers section).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerRequest {
    /// Create this container.
    Create(Box<ContainerSpec>),
    /// Start the container with this id.
    Start(String),
    /// Signal the container with this id.
    Signal(String, i32),
    /// Remove the container with this id.
    Remove(String),
}

impl ContainerRequest {
    /// The container it names.
    pub fn id(&self) -> &str {
        match self {
            ContainerRequest::Create(spec) => &spec.id,
            ContainerRequest::Start(id)
            | ContainerRequest::Signal(id, _)
            | ContainerRequest::Remove(id) => id,
        }
    }

    /// Which request it is, for the answer.
    pub fn op(&self) -> ContainerOp {
        match self {
            ContainerRequest::Create(_) => ContainerOp::Create,
            ContainerRequest::Start(_) => ContainerOp::Start,
            ContainerRequest::Signal(..) => ContainerOp::Signal,
            ContainerRequest::Remove(_) => ContainerOp::Remove,
        }
    }
}

impl Session {
    /// A session over `input` and `send`, in `phase`.
    pub fn new(name: String, send: Box<Sink>, input: Option<File>, phase: Phase) -> Self {
        Self {
            name,
            send,
            input,
            decoder: FrameDecoder::new(),
            phase,
            launch_error: None,
            status: None,
            oom_kills: 0,
            is_boot: false,
            container: None,
            finish: None,
        }
    }

    /// A session on a connection of its own (`stream`, a vsock or Unix socket): messages are
    /// written to it (errors name `target`), input is read from it, and once `Exited` is sent
    /// its write side is shut so the host sees the end.
    pub fn over_stream(
        name: String,
        target: String,
        stream: File,
        phase: Phase,
    ) -> std::io::Result<Self> {
        let mut writer = stream.try_clone()?;
        let closer = stream.try_clone()?;
        let send = Box::new(move |message: &Message| {
            message
                .write_to(&mut writer)
                .map_err(|source| ChannelError::Send {
                    target: target.clone(),
                    source,
                })
        });
        let finish = Box::new(move || {
            let _ =
                nix::sys::socket::shutdown(closer.as_raw_fd(), nix::sys::socket::Shutdown::Write);
        });
        Ok(Self::new(name, send, Some(stream), phase).with_finish(finish))
    }

    /// Half-closes the connection with `finish` once `Exited` is sent.
    pub fn with_finish(mut self, finish: Box<dyn FnMut()>) -> Self {
        self.finish = Some(finish);
        self
    }

    /// Sends a message to the host.
    pub fn send(&mut self, message: &Message) -> Result<(), ChannelError> {
        (self.send)(message)
    }

    /// Starts `job` (the app's root for user lookup is `root`); a failure becomes the session's
    /// exit status and error.
    pub fn start(&mut self, job: &Job<'_>, root: &Path) {
        match launch::spawn(job, root) {
            Ok(started) => self.phase = Phase::Running(Proc::new(started)),
            Err(err) => self.not_started(&err),
        }
    }

    fn not_started(&mut self, err: &LaunchError) {
        diag!("{}: {err}", self.name);
        self.launch_error = Some(err.to_string());
        self.status = Some(ExitStatus::Code(err.exit_code()));
        // Reported by `finish_if_done` as for any exit.
        self.phase = Phase::Running(Proc {
            pid: Pid::from_raw(0),
            stdin: None,
            queue: Vec::new(),
            closing_stdin: true,
            outputs: Vec::new(),
            terminal: None,
            exit: Some((ExitStatus::Code(err.exit_code()), Instant::now())),
            last_output: Instant::now(),
            oom: OomWatch::idle(),
        });
    }

    /// The running process, if any.
    pub fn proc_mut(&mut self) -> Option<&mut Proc> {
        match &mut self.phase {
            Phase::Running(proc) if proc.pid.as_raw() > 0 => Some(proc),
            _ => None,
        }
    }

    /// Whether the host's frames should be read now (not while stdin is backed up).
    pub fn wants_input(&self) -> bool {
        if self.input.is_none() || matches!(self.phase, Phase::Done) {
            return false;
        }
        match &self.phase {
            Phase::Running(proc) => proc.queue.len() < STDIN_HIGH_WATER,
            _ => true,
        }
    }

    /// Reads what the host sent and acts on it; returns what it asks of the whole agent, in
    /// order. `exec` checks and runs an exec request.
    pub fn read_input(
        &mut self,
        exec: &mut dyn FnMut(&mut Session, ExecRequest),
    ) -> Result<Vec<Request>, ChannelError> {
        let mut requests = Vec::new();
        let Some(input) = self.input.as_mut() else {
            return Ok(requests);
        };
        let mut buffer = [0u8; 64 * 1024];
        let n = match input.read(&mut buffer) {
            Ok(n) => n,
            Err(err) if matches!(err.kind(), ErrorKind::Interrupted | ErrorKind::WouldBlock) => {
                return Ok(requests)
            }
            Err(err) => {
                diag!("{}: reading from the host failed: {err}", self.name);
                0
            }
        };
        if n == 0 {
            self.input_closed();
            return Ok(requests);
        }
        self.decoder.push(&buffer[..n]);
        loop {
            let message = match self.decoder.next_message() {
                Ok(Some(message)) => message.check_from_host(),
                Ok(None) => break,
                Err(err) => Err(err),
            };
            match message {
                Ok(message) => requests.extend(self.handle(message, exec)?),
                Err(err) => {
                    let message = format!("{}: refusing the host's frames: {err}", self.name);
                    diag!("{message}");
                    self.send(&Message::Control(Control::Error { message }))?;
                    self.input = None;
                    self.input_closed();
                    break;
                }
            }
        }
        Ok(requests)
    }

    /// The host will send nothing more: stdin ends, an exec connection without a request goes.
    fn input_closed(&mut self) {
        self.input = None;
        match &mut self.phase {
            Phase::Running(proc) => {
                proc.closing_stdin = true;
                proc.write_stdin();
            }
            Phase::AwaitExec { .. } | Phase::Closing { .. } => self.phase = Phase::Done,
            Phase::Control | Phase::Done => {}
        }
    }

    /// Closes the process's stdin (apps of a pod of several apps read none).
    pub fn close_stdin(&mut self) {
        if let Some(proc) = self.proc_mut() {
            proc.closing_stdin = true;
            proc.write_stdin();
        }
    }

    fn handle(
        &mut self,
        message: Message,
        exec: &mut dyn FnMut(&mut Session, ExecRequest),
    ) -> Result<Option<Request>, ChannelError> {
        if matches!(self.phase, Phase::AwaitExec { .. }) {
            return match message {
                Message::Control(Control::Exec(request)) => {
                    exec(self, request);
                    Ok(None)
                }
                _ => self.refuse("the first frame of an exec session must be an exec request"),
            };
        }
        match message {
            Message::Data(_, bytes) => {
                if let Some(proc) = self.proc_mut() {
                    if proc.stdin.is_some() && !proc.closing_stdin {
                        proc.queue.extend_from_slice(&bytes);
                        proc.write_stdin();
                    }
                }
            }
            Message::Control(Control::StdinClose) => {
                if let Some(proc) = self.proc_mut() {
                    if proc.terminal.is_some() && !proc.closing_stdin {
                        proc.queue.push(TERMINAL_EOF);
                    }
                    proc.closing_stdin = true;
                    proc.write_stdin();
                }
            }
            Message::Control(Control::Signal { signo }) if matches!(self.phase, Phase::Control) => {
                return Ok(Some(Request::SignalApps(signo)));
            }
            Message::Control(Control::Signal { signo }) => self.deliver(signo)?,
            Message::Control(Control::Resize { rows, cols }) => self.resize(rows, cols),
            Message::Control(Control::Shutdown { grace_ms }) if self.is_boot => {
                return Ok(Some(Request::Shutdown(Duration::from_millis(grace_ms))));
            }
            Message::Control(Control::CreateContainer(spec)) if self.is_boot => {
                return Ok(Some(Request::Container(ContainerRequest::Create(spec))));
            }
            Message::Control(Control::StartContainer { id }) if self.is_boot => {
                return Ok(Some(Request::Container(ContainerRequest::Start(id))));
            }
            Message::Control(Control::SignalContainer { id, signo }) if self.is_boot => {
                return Ok(Some(Request::Container(ContainerRequest::Signal(
                    id, signo,
                ))));
            }
            Message::Control(Control::RemoveContainer { id }) if self.is_boot => {
                return Ok(Some(Request::Container(ContainerRequest::Remove(id))));
            }
            Message::Control(other) => {
                let message = format!("{}: ignoring {} here", self.name, other.name());
                self.send(&Message::Control(Control::Error { message }))?;
            }
        }
        Ok(None)
    }

    /// Answers `Error` and ends the session.
    pub fn refuse(&mut self, why: &str) -> Result<Option<Request>, ChannelError> {
        diag!("{}: {why}", self.name);
        self.send(&Message::Control(Control::Error {
            message: why.to_string(),
        }))?;
        self.close();
        Ok(None)
    }

    fn deliver(&mut self, signo: i32) -> Result<(), ChannelError> {
        let Ok(signal) = Signal::try_from(signo) else {
            let message = format!("{}: no such signal {signo}", self.name);
            return self.send(&Message::Control(Control::Error { message }));
        };
        if let Some(proc) = self.proc_mut() {
            if proc.exit.is_none() {
                proc.signal(signal);
            }
        }
        Ok(())
    }

    fn resize(&mut self, rows: u16, cols: u16) {
        let Some(terminal) = self.proc_mut().and_then(|proc| proc.terminal.as_ref()) else {
            return;
        };
        let size = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one winsize from the pointer, which is valid for the call.
        let result = unsafe { libc::ioctl(terminal.as_raw_fd(), libc::TIOCSWINSZ, &size) };
        if result < 0 {
            diag!("resize failed: {}", Errno::last());
        }
    }

    /// Forwards one chunk of output stream `index`; at end of file the stream closes.
    pub fn forward_output(&mut self, index: usize) -> Result<(), SessionError> {
        let Some(proc) = self.proc_mut() else {
            return Ok(());
        };
        let Some((stream, Some(file))) = proc.outputs.get_mut(index) else {
            return Ok(());
        };
        let stream = *stream;
        let mut buffer = vec![0u8; CHUNK];
        match file.read(&mut buffer) {
            // EIO: a pty whose slave side is closed everywhere.
            Ok(0) => proc.outputs[index].1 = None,
            Err(err) if err.raw_os_error() == Some(libc::EIO) => proc.outputs[index].1 = None,
            Ok(n) => {
                proc.last_output = Instant::now();
                buffer.truncate(n);
                self.send(&Message::Data(stream, buffer))?;
            }
            Err(err) if matches!(err.kind(), ErrorKind::Interrupted | ErrorKind::WouldBlock) => {}
            Err(source) => return Err(SessionError::Read { stream, source }),
        }
        Ok(())
    }

    /// Sends `Error` (if it did not start) and `Exited` once the process is done and drained.
    pub fn finish_if_done(&mut self, now: Instant) -> Result<bool, ChannelError> {
        let Phase::Running(proc) = &self.phase else {
            return Ok(false);
        };
        if !proc.drained(now) {
            return Ok(false);
        }
        let Some((status, _)) = proc.exit else {
            return Ok(false);
        };
        let oom_kills = proc.oom.kills(status);
        if let Some(message) = self.launch_error.clone() {
            self.send(&Message::Control(Control::Error { message }))?;
        }
        if oom_kills > 0 {
            diag!(
                "{}: the OOM killer killed {oom_kills} of its processes",
                self.name
            );
        }
        self.send(&Message::Control(Control::Exited { status, oom_kills }))?;
        self.status = Some(status);
        self.oom_kills = oom_kills;
        self.close();
        Ok(true)
    }

    /// Half-closes an exec connection and waits for the host to close; the boot session is
    /// drained when the agent powers off.
    pub fn close(&mut self) {
        match self.finish.as_mut() {
            Some(finish) => {
                finish();
                self.phase = Phase::Closing {
                    deadline: Instant::now() + EXEC_PATIENCE,
                };
            }
            None => self.phase = Phase::Done,
        }
    }

    /// The next moment something may happen without an event.
    pub fn deadline(&self) -> Option<Instant> {
        match &self.phase {
            Phase::AwaitExec { deadline } | Phase::Closing { deadline } => Some(*deadline),
            Phase::Running(proc) => proc.drain_deadline(),
            Phase::Control | Phase::Done => None,
        }
    }

    /// Drops an exec connection that overstayed its [`Session::deadline`].
    pub fn expire(&mut self, now: Instant) {
        if let Phase::AwaitExec { deadline } | Phase::Closing { deadline } = self.phase {
            if now >= deadline {
                self.phase = Phase::Done;
            }
        }
    }
}
