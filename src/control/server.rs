//! The server side of a control socket: binds it private, accepts connections from root and
//! the supervisor's own user only, reads one bounded request within a time limit, asks the
//! [`Handler`] and answers; for `exec`, relays the session between the client and the agent,
//! and for `attach` between the client and the app's output and input.
//! See [`super`] for the protocol and its bounds.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::net::Shutdown;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::socket::{getsockopt, sockopt};
use podvm_protocol::{Control, ExecRequest, FrameDecoder, Message, Stream};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::attach::{ClientQueue, Next};
use super::proto::{self, LiveStatus, ProtoError, Request, Response};
use super::{ControlError, HeldDir};
use crate::vmm::ratelog::RateLimitedLog;

/// Most connections served at once (each exec session holds one).
pub const MAX_CONNECTIONS: usize = 16;
/// Time from connecting to a whole request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a client has to take a response before the server gives up on it.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// Size of one read from an exec session's client.
const SESSION_CHUNK: usize = 64 * 1024;
/// How often an attached client's output thread looks whether its client left.
const ATTACH_POLL: Duration = Duration::from_secs(1);
/// Pause after a failed accept (e.g. out of descriptors), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Refusals and broken connections: whoever connects can cause them, so they are rate-limited.
static LOG: RateLimitedLog = RateLimitedLog::new("control socket");

/// What the server asks of the VM's side.
pub trait Handler: Send + Sync {
    /// The VM's live state.
    fn status(&self) -> Result<LiveStatus, String>;
    /// Begins a graceful stop; returns the stop timeout.
    fn stop(&self) -> Result<Duration, String>;
    /// Opens an exec session with the agent and sends it `request` (with the VM's token);
    /// returns the agent connection, which then carries the session.
    fn exec(&self, request: ExecRequest) -> Result<File, String>;
    /// Attaches a client to the app: the queue of its output (ending with its exit).
    fn attach(&self) -> Result<Arc<ClientQueue>, String>;
    /// A frame an attached client sent: stdin data, `StdinClose`, `Signal` or `Resize`.
    fn attach_input(&self, message: Message) -> Result<(), String>;
}

/// The bounds the server puts on its clients.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most connections served at once.
    pub max_connections: usize,
    /// Time from connecting to a whole request.
    pub request_timeout: Duration,
    /// Time a client has to take a response.
    pub reply_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: MAX_CONNECTIONS,
            request_timeout: REQUEST_TIMEOUT,
            reply_timeout: REPLY_TIMEOUT,
        }
    }
}

/// A control socket being served; dropping it stops the server, cuts its connections and
/// removes the socket.
#[derive(Debug)]
pub struct ControlServer {
    dir: HeldDir,
    name: PathBuf,
    /// Device and inode of the socket bound, so only that one is removed.
    identity: (u64, u64),
    stop: Arc<EventFd>,
    accept: Option<JoinHandle<()>>,
    live: Arc<Connections>,
}

impl ControlServer {
    /// Serves `handler` on a new socket at `path` with the default [`Limits`].
    pub fn bind(path: &Path, handler: Arc<dyn Handler>) -> Result<Self, ControlError> {
        Self::bind_with(path, handler, Limits::default())
    }

    /// Serves `handler` on a new socket at `path` (mode 0600, see [`super`]); a socket left
    /// there by a VM that is gone is replaced.
    pub fn bind_with(
        path: &Path,
        handler: Arc<dyn Handler>,
        limits: Limits,
    ) -> Result<Self, ControlError> {
        let error = |source| ControlError::Bind {
            path: path.to_path_buf(),
            source,
        };
        let (dir, name) = HeldDir::of(path).map_err(error)?;
        let target = dir.entry(&name);
        clear_stale(&target, path)?;
        let listener = bind_private(&dir, &target).map_err(error)?;
        let meta = fs::symlink_metadata(&target).map_err(error)?;
        let mut server = Self {
            dir,
            name,
            identity: (meta.dev(), meta.ino()),
            stop: Arc::new(EventFd::new(EFD_NONBLOCK).map_err(ControlError::Thread)?),
            accept: None,
            live: Arc::new(Connections::default()),
        };
        listener.set_nonblocking(true).map_err(error)?;
        let accept = Acceptor {
            listener,
            stop: server.stop.clone(),
            live: server.live.clone(),
            handler,
            limits,
            path: path.to_path_buf(),
        };
        let thread = std::thread::Builder::new()
            .name("control-accept".into())
            .spawn(move || accept.run())
            .map_err(ControlError::Thread)?;
        server.accept = Some(thread);
        Ok(server)
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
        self.live.shut_all();
        let target = self.dir.entry(&self.name);
        let ours = fs::symlink_metadata(&target)
            .is_ok_and(|meta| (meta.dev(), meta.ino()) == self.identity);
        if ours {
            let _ = fs::remove_file(&target);
        }
    }
}

/// Refuses a path that holds something other than a socket, or the socket of a live server;
/// a dead server's socket may be replaced.
fn clear_stale(target: &Path, path: &Path) -> Result<(), ControlError> {
    let error = |source| ControlError::Bind {
        path: path.to_path_buf(),
        source,
    };
    match fs::symlink_metadata(target) {
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(error(err)),
        Ok(meta) if !meta.file_type().is_socket() => Err(ControlError::NotASocket {
            path: path.to_path_buf(),
        }),
        Ok(_) => match UnixStream::connect(target) {
            Ok(_) => Err(ControlError::InUse {
                path: path.to_path_buf(),
            }),
            Err(err) if err.kind() == io::ErrorKind::ConnectionRefused => Ok(()),
            Err(err) => Err(error(err)),
        },
    }
}

/// Binds a socket in a fresh 0700 directory in `dir`, makes it 0600 and renames it to
/// `target`: no one can connect to it before its mode is set, whatever the umask.
fn bind_private(dir: &HeldDir, target: &Path) -> io::Result<UnixListener> {
    let private = nix::unistd::mkdtemp(&dir.entry(Path::new(".control-XXXXXX")))?;
    let socket = private.join("s");
    let bound = UnixListener::bind(&socket).and_then(|listener| {
        fs::set_permissions(
            &socket,
            fs::Permissions::from_mode(crate::private::FILE_MODE),
        )?;
        fs::rename(&socket, target)?;
        Ok(listener)
    });
    let _ = fs::remove_file(&socket);
    let _ = fs::remove_dir(&private);
    bound
}

/// The connections being served, so that they can be counted and cut.
#[derive(Debug, Default)]
struct Connections {
    next: AtomicU64,
    open: Mutex<HashMap<u64, UnixStream>>,
}

impl Connections {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, UnixStream>> {
        self.open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn count(&self) -> usize {
        self.lock().len()
    }

    fn add(&self, conn: UnixStream) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, conn);
        id
    }

    fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// Shuts every open connection down, which ends the threads serving them.
    fn shut_all(&self) {
        for conn in self.lock().values() {
            let _ = conn.shutdown(Shutdown::Both);
        }
    }
}

/// The accept loop's state.
struct Acceptor {
    listener: UnixListener,
    stop: Arc<EventFd>,
    live: Arc<Connections>,
    handler: Arc<dyn Handler>,
    limits: Limits,
    path: PathBuf,
}

impl Acceptor {
    fn run(self) {
        loop {
            match crate::stoppable::wait_readable(self.listener.as_fd(), &self.stop) {
                Ok(true) => {}
                Ok(false) => return,
                Err(errno) => {
                    eprintln!(
                        "podvm: control socket {}: stops serving: {errno}",
                        self.path.display()
                    );
                    return;
                }
            }
            let conn = match self.listener.accept() {
                Ok((conn, _)) => conn,
                Err(err)
                    if matches!(
                        err.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) =>
                {
                    continue
                }
                Err(err) => {
                    LOG.log(format_args!(
                        "{}: cannot accept a connection: {err}",
                        self.path.display()
                    ));
                    std::thread::sleep(ACCEPT_BACKOFF);
                    continue;
                }
            };
            if let Err(why) = check_peer(&conn) {
                LOG.log(format_args!(
                    "{}: refused a connection from {why}",
                    self.path.display()
                ));
                turn_away(conn, &format!("permission denied: {why}"));
                continue;
            }
            if self.live.count() >= self.limits.max_connections {
                LOG.log(format_args!(
                    "{}: refused a connection: {} are open already",
                    self.path.display(),
                    self.limits.max_connections
                ));
                turn_away(conn, "busy: too many connections to this VM at once");
                continue;
            }
            self.spawn(conn);
        }
    }

    /// Serves `conn` on a thread of its own.
    fn spawn(&self, conn: UnixStream) {
        let Ok(registered) = conn.try_clone() else {
            return;
        };
        let id = self.live.add(registered);
        let (live, handler, limits) = (self.live.clone(), self.handler.clone(), self.limits);
        let spawned = std::thread::Builder::new()
            .name("control-conn".into())
            .spawn(move || {
                serve(conn, handler.as_ref(), limits);
                live.remove(id);
            });
        if let Err(err) = spawned {
            self.live.remove(id);
            LOG.log(format_args!(
                "{}: cannot serve a connection: {err}",
                self.path.display()
            ));
        }
    }
}

/// Whether the peer may use the socket: root, or the user the server runs as.
fn check_peer(conn: &UnixStream) -> Result<(), String> {
    let creds = getsockopt(conn, sockopt::PeerCredentials)
        .map_err(|errno| format!("a peer whose credentials cannot be read ({errno})"))?;
    let euid = nix::unistd::geteuid().as_raw();
    let uid = creds.uid();
    if uid == 0 || uid == euid {
        return Ok(());
    }
    let allowed = match euid {
        0 => "only root may use it".to_string(),
        _ => format!("only root and uid {euid} may use it"),
    };
    Err(format!("uid {uid} (pid {}): {allowed}", creds.pid()))
}

/// Answers a connection that is not served with an error, without waiting on the peer.
fn turn_away(mut conn: UnixStream, message: &str) {
    let _ = conn.set_nonblocking(true);
    let _ = proto::write_response(
        &mut conn,
        &Response::Error {
            message: message.to_string(),
        },
    );
}

/// Serves one connection: one request, one response (or an exec session).
fn serve(mut conn: UnixStream, handler: &dyn Handler, limits: Limits) {
    let _ = conn.set_write_timeout(Some(limits.reply_timeout));
    let request = proto::read_request(&mut Deadline {
        conn: &conn,
        at: Instant::now() + limits.request_timeout,
        limit: limits.request_timeout,
    });
    let request = match request {
        Ok(request) => request,
        Err(ProtoError::Closed) => return,
        Err(err) => {
            let message = err.to_string();
            let _ = proto::write_response(&mut conn, &Response::Error { message });
            return;
        }
    };
    let _ = conn.set_read_timeout(None);
    let response = match request {
        Request::Status => handler.status().map(Response::Status),
        Request::Stop => handler.stop().map(|timeout| Response::Stopping {
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        }),
        Request::Exec(request) => match handler.exec(request) {
            Ok(agent) => {
                if proto::write_response(&mut conn, &Response::Session).is_ok() {
                    // The session lasts as long as the command: no timeouts from here.
                    let _ = conn.set_write_timeout(None);
                    relay_session(conn, agent);
                }
                return;
            }
            Err(message) => Err(message),
        },
        Request::Attach => match handler.attach() {
            Ok(queue) => {
                if proto::write_response(&mut conn, &Response::Session).is_ok() {
                    let _ = conn.set_write_timeout(None);
                    relay_attach(conn, &queue, handler);
                }
                queue.finish();
                return;
            }
            Err(message) => Err(message),
        },
    };
    let response = response.unwrap_or_else(|message| Response::Error { message });
    let _ = proto::write_response(&mut conn, &response);
}

/// A reader of a connection that fails once `at` has passed.
struct Deadline<'a> {
    conn: &'a UnixStream,
    at: Instant,
    limit: Duration,
}

impl Read for Deadline<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let timed_out = || {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no whole request within {:?} of connecting", self.limit),
            )
        };
        let left = self.at.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timed_out());
        }
        self.conn.set_read_timeout(Some(left))?;
        match (&mut &*self.conn).read(buf) {
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => Err(timed_out()),
            other => other,
        }
    }
}

/// Relays an exec session: the agent's bytes to the client as they are, the client's frames
/// to the agent if they are ones a client may send; EOF both ways.
fn relay_session(client: UnixStream, agent: File) {
    let (Ok(mut from_agent), Ok(mut to_client)) = (agent.try_clone(), client.try_clone()) else {
        return;
    };
    let output = std::thread::Builder::new()
        .name("control-exec-out".into())
        .spawn(move || {
            let copied = io::copy(&mut from_agent, &mut to_client);
            let _ = to_client.shutdown(Shutdown::Write);
            if copied.is_err() {
                // The client is gone: the agent must not wait for it.
                let _ = nix::sys::socket::shutdown(
                    from_agent.as_raw_fd(),
                    nix::sys::socket::Shutdown::Both,
                );
            }
        });
    forward_client(&client, &agent);
    let _ = nix::sys::socket::shutdown(agent.as_raw_fd(), nix::sys::socket::Shutdown::Write);
    if let Ok(output) = output {
        let _ = output.join();
    }
}

/// Relays an attach session: the app's output from `queue` to the client, the client's frames
/// to the handler, until the VM ends or the client leaves.
fn relay_attach(client: UnixStream, queue: &Arc<ClientQueue>, handler: &dyn Handler) {
    let Ok(mut to_client) = client.try_clone() else {
        return;
    };
    let output = {
        let queue = queue.clone();
        std::thread::Builder::new()
            .name("control-attach-out".into())
            .spawn(move || {
                loop {
                    match queue.next(ATTACH_POLL) {
                        Next::Frame(message) => {
                            if message.write_to(&mut to_client).is_err() {
                                break;
                            }
                        }
                        Next::Idle => {}
                        Next::Closed => break,
                    }
                }
                let _ = to_client.shutdown(Shutdown::Write);
                queue.finish();
            })
    };
    read_client(&client, |message| {
        handler.attach_input(message).map_err(|why| {
            LOG.log(format_args!("ended an attach session: {why}"));
        })
    });
    // The client left: its output thread stops, even in the middle of a write.
    queue.finish();
    let _ = client.shutdown(Shutdown::Both);
    if let Ok(output) = output {
        let _ = output.join();
    }
}

/// Passes the client's frames to the agent until EOF, or until a frame a client may not send
/// (a second `Exec`, `Shutdown`, output) ends the session.
fn forward_client(client: &UnixStream, mut agent: &File) {
    read_client(client, |message| {
        message.write_to(&mut agent).map_err(|_| ())
    });
}

/// Reads a session client's frames until EOF and passes those a client may send to `deliver`;
/// another frame, a malformed one or a failed delivery ends the session.
fn read_client(mut client: &UnixStream, mut deliver: impl FnMut(Message) -> Result<(), ()>) {
    let mut decoder = FrameDecoder::new();
    let mut buffer = vec![0u8; SESSION_CHUNK];
    loop {
        let n = match client.read(&mut buffer) {
            Ok(0) => return,
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        decoder.push(&buffer[..n]);
        loop {
            match decoder.next_message() {
                Ok(Some(message)) if from_client(&message) => {
                    if deliver(message).is_err() {
                        return;
                    }
                }
                Ok(Some(message)) => {
                    LOG.log(format_args!(
                        "ended a session whose client sent {}",
                        describe(&message)
                    ));
                    return;
                }
                Ok(None) => break,
                Err(err) => {
                    LOG.log(format_args!("ended a session: its client sent {err}"));
                    return;
                }
            }
        }
    }
}

/// Whether a client may send `message` on a session.
fn from_client(message: &Message) -> bool {
    matches!(
        message,
        Message::Data(Stream::Stdin, _)
            | Message::Control(
                Control::StdinClose | Control::Signal { .. } | Control::Resize { .. }
            )
    )
}

/// A message named for a log line (never its payload).
fn describe(message: &Message) -> String {
    match message {
        Message::Data(stream, _) => format!("{stream:?} data"),
        Message::Control(control) => format!("a {} message", control.name()),
    }
}
