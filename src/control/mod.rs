//! A control socket per running VM, served by its supervisor: the `podvm run`, `run-prepared` or
//! `boot` process that holds the VM. A pod's is `<pod dir>/control.sock` ([`SOCKET_FILE`]);
//! `podvm boot --exec-info FILE` serves one at FILE. `podvm enter`, `stop`, `status` (of a
//! running pod), `attach` and `exec` are its clients ([`client`]); [`server`] serves it, [`vm`]
//! answers for the VM and [`attach`] fans the app's output out to attached clients.
//!
//! # Access
//!
//! The socket is bound in a fresh 0700 directory beside its path, set to 0600 and only then
//! renamed into place, so it is never reachable with a looser mode; a pod's also lies in the
//! pod's 0700 directory. On top of that the server checks every connection's peer credentials
//! (SO_PEERCRED): only root and the supervisor's own euid are served. Anyone else gets an
//! `error` frame, the refusal is logged (rate-limited) and the server goes on serving. Clients
//! check the server the same way, so a socket planted by another user gets no commands.
//! The exec token the agent asks for ([`podvm_protocol::BootSpec::exec_token`]) stays in the
//! supervisor's memory: it is never written to a file, and clients never see it.
//!
//! # Wire format (version 1)
//!
//! Every message is one frame:
//!
//! ```text
//! offset  size  field
//! 0       2     magic, the bytes "PC"
//! 2       1     control protocol version (currently 1); another version is refused
//! 3       1     kind: 1 = request (client to server), 2 = response (server to client)
//! 4       4     payload length, little endian, at most proto::MAX_FRAME (256 KiB)
//! 8       n     JSON of proto::Request or proto::Response, tagged by "type"
//! ```
//!
//! A connection carries one request and its response:
//!
//! ```text
//! {"type":"status"}  ->  {"type":"status","state":"running","pid":812,"vmm_pid":812,"uptime_secs":95}
//! {"type":"stop"}    ->  {"type":"stopping","timeout_ms":10000}
//! {"type":"exec","command":["/bin/sh"],"env":[],"tty":true,"app":"web",...}
//!                    ->  {"type":"session"}, then agent protocol frames both ways
//! {"type":"attach"}  ->  {"type":"session"}, then agent protocol frames both ways
//! any failure        ->  {"type":"error","message":"..."}, and the server closes
//! ```
//!
//! `status` says `starting` until the VM is built and its agent is up, then `running`, and
//! `stopping` once a `stop` came.
//!
//! `stop` does what SIGTERM to the supervisor does: the app gets SIGTERM through the agent and
//! the VM is stopped hard after the stop timeout. For `exec`, the supervisor opens the agent's
//! exec session itself (vsock, with the token), answers `session`, and from then on relays the
//! protocol crate's frames: the agent's output, `Error` and `Exited` to the client as they come;
//! from the client only stdin data, `StdinClose`, `Signal` and `Resize` (anything else ends the
//! session). EOF travels both ways, as on a direct exec session. An `attach` session carries
//! the app's output from the moment it attached (as podvm's own terminal shows it) and, when
//! the VM ends, the app's `Exited`; the client's `Signal`s go to the app as signals to the
//! supervisor would (stop timeout included), its stdin data and `StdinClose` only to an app
//! whose stdin the supervisor holds open for attached clients (`run --detach --interactive`).
//!
//! # Bounds
//!
//! Nothing a client does can hold the supervisor up: frames are at most 256 KiB and checked
//! from their header; at most [`server::MAX_CONNECTIONS`] connections are served at once
//! (more get a `busy` error); a request must arrive within [`server::REQUEST_TIMEOUT`] of
//! connecting and a response not read within [`server::REPLY_TIMEOUT`] is dropped. An exec
//! session lasts as long as its command, on threads of its own, and is cut when the VM ends; an
//! attached client that does not read is cut off after [`attach::CLIENT_BACKLOG`] bytes of
//! output, so the app never waits for it.

pub mod attach;
pub mod client;
pub mod proto;
pub mod server;
pub mod vm;

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The control socket's name in a pod's directory.
pub const SOCKET_FILE: &str = "control.sock";

/// Bytes of randomness in an exec token.
const TOKEN_BYTES: usize = 32;

/// Errors of the control socket, on either side.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The socket could not be created.
    #[error("cannot create the control socket {path}: {source}")]
    Bind {
        /// The socket's path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Another live server answers at the path.
    #[error("cannot create the control socket {path}: a running VM serves it already")]
    InUse {
        /// The socket's path.
        path: PathBuf,
    },
    /// Something that is not a socket is at the path.
    #[error("cannot create the control socket {path}: a file that is not a socket is there")]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// A server thread could not be started.
    #[error("cannot start the control socket's server: {0}")]
    Thread(std::io::Error),
    /// The client could not connect.
    #[error("cannot connect to the control socket {path}: {source} (is the VM still running?)")]
    Connect {
        /// The socket's path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The socket is served by a process of another user.
    #[error("the control socket {path} is served by uid {uid}, neither root nor this user: not using it")]
    ForeignServer {
        /// The socket's path.
        path: PathBuf,
        /// The server's uid.
        uid: u32,
    },
    /// A frame could not be exchanged.
    #[error("control socket {path}: {source}")]
    Protocol {
        /// The socket's path.
        path: PathBuf,
        /// Why.
        source: proto::ProtoError,
    },
    /// The supervisor answered with an error.
    #[error("the VM's supervisor refused: {message}")]
    Refused {
        /// What it said.
        message: String,
    },
    /// The VM's agent did not come up in time.
    #[error("the pod's VM at {path} is still starting after {waited:?}: its agent is not up (see `podvm status` and the pod's console log)")]
    NotUp {
        /// The socket's path.
        path: PathBuf,
        /// How long the client waited.
        waited: std::time::Duration,
    },
    /// No randomness for the exec token.
    #[error("cannot read /dev/urandom for the exec token: {0}")]
    Random(std::io::Error),
}

impl ControlError {
    /// Whether no server is there at all (no socket, or nobody listening on it): the VM ended,
    /// or its supervisor is an older podvm without a control socket.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            ControlError::Connect { source, .. }
                if matches!(source.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused)
        )
    }
}

/// A fresh random exec token (hex), for [`podvm_protocol::BootSpec::exec_token`].
pub fn new_token() -> Result<String, ControlError> {
    let mut bytes = [0u8; TOKEN_BYTES];
    File::open("/dev/urandom")
        .and_then(|mut random| random.read_exact(&mut bytes))
        .map_err(ControlError::Random)?;
    Ok(hex::encode(bytes))
}

/// A directory held open, whose entries are reached as `/proc/self/fd/N/NAME`: socket paths
/// stay short whatever the directory's path (AF_UNIX paths have at most 107 bytes), and the
/// entries are those of this directory even if it is renamed meanwhile.
#[derive(Debug)]
struct HeldDir {
    fd: OwnedFd,
}

impl HeldDir {
    /// Opens the directory `dir` (O_PATH: no read permission needed, only search).
    fn open(dir: &Path) -> std::io::Result<Self> {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(dir)?;
        Ok(Self { fd: file.into() })
    }

    /// The directory and the name of `path`, the directory opened.
    fn of(path: &Path) -> std::io::Result<(Self, PathBuf)> {
        let name = path
            .file_name()
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "no file name"))?;
        let dir = Self::open(path.parent().unwrap_or(Path::new(".")))?;
        Ok((dir, PathBuf::from(name)))
    }

    /// The short path of entry `name`.
    fn entry(&self, name: &Path) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd())).join(name)
    }
}

#[cfg(test)]
mod tests;
