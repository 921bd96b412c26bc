//! The client side of a control socket: connect (checking that root or this user serves it),
//! send one request, read the answer. `exec` and `attach` hand back the connection, which then
//! carries the session ([`crate::exec_client`] relays it).

use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::socket::{getsockopt, sockopt};
use podvm_protocol::ExecRequest;

use super::proto::{self, LiveState, LiveStatus, ProtoError, Request, Response};
use super::{ControlError, HeldDir};

/// How long the client waits for the supervisor to take a request and answer it.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// How often [`wait_until_up`] asks.
const UP_POLL: Duration = Duration::from_millis(100);

/// The VM's live state.
pub fn status(path: &Path) -> Result<LiveStatus, ControlError> {
    let request = Request::Status;
    match ask(path, &request)? {
        (_, Response::Status(status)) => Ok(status),
        (_, other) => Err(unexpected(path, &request, &other)),
    }
}

/// Waits until the VM's agent is up (its live state is past `starting`), for at most `limit`:
/// a pod that `status` shows running may still be booting, or its supervisor may not have bound
/// the socket yet. After `limit`, the last connect error, or [`ControlError::NotUp`].
pub fn wait_until_up(path: &Path, limit: Duration) -> Result<(), ControlError> {
    let deadline = Instant::now() + limit;
    loop {
        let last_error = match status(path) {
            Ok(LiveStatus {
                state: LiveState::Starting,
                ..
            }) => None,
            Ok(_) => return Ok(()),
            Err(err @ ControlError::Connect { .. }) => Some(err),
            Err(err) => return Err(err),
        };
        if Instant::now() >= deadline {
            return Err(last_error.unwrap_or_else(|| ControlError::NotUp {
                path: path.to_path_buf(),
                waited: limit,
            }));
        }
        std::thread::sleep(UP_POLL);
    }
}

/// Asks the supervisor to stop the VM gracefully; returns its stop timeout.
pub fn stop(path: &Path) -> Result<Duration, ControlError> {
    let request = Request::Stop;
    match ask(path, &request)? {
        (_, Response::Stopping { timeout_ms }) => Ok(Duration::from_millis(timeout_ms)),
        (_, other) => Err(unexpected(path, &request, &other)),
    }
}

/// Opens an exec session in the VM; the returned connection carries it (agent protocol
/// frames, see [`super`]).
pub fn open_exec(path: &Path, request: ExecRequest) -> Result<File, ControlError> {
    open_session(path, Request::Exec(request))
}

/// Sends `request` and, once the supervisor answers `session`, returns the connection without
/// time limits.
fn open_session(path: &Path, request: Request) -> Result<File, ControlError> {
    match ask(path, &request)? {
        (conn, Response::Session) => {
            let clear = conn
                .set_read_timeout(None)
                .and_then(|()| conn.set_write_timeout(None));
            clear.map_err(|source| ControlError::Connect {
                path: path.to_path_buf(),
                source,
            })?;
            Ok(File::from(OwnedFd::from(conn)))
        }
        (_, other) => Err(unexpected(path, &request, &other)),
    }
}

/// Attaches to the VM's app; the returned connection carries its output and takes stdin and
/// signals (agent protocol frames, see [`super`]).
pub fn open_attach(path: &Path) -> Result<File, ControlError> {
    open_session(path, Request::Attach)
}

/// Connects, sends `request` and reads the answer; an `error` answer is
/// [`ControlError::Refused`].
fn ask(path: &Path, request: &Request) -> Result<(UnixStream, Response), ControlError> {
    let protocol = |source| ControlError::Protocol {
        path: path.to_path_buf(),
        source,
    };
    let mut conn = connect(path)?;
    // A refused peer finds the server's answer waiting even if its request could not go out.
    let sent = proto::write_request(&mut conn, request);
    match (proto::read_response(&mut conn), sent) {
        (Ok(Response::Error { message }), _) => Err(ControlError::Refused { message }),
        (Ok(response), Ok(())) => Ok((conn, response)),
        (_, Err(err)) | (Err(err), Ok(())) => Err(protocol(err)),
    }
}

/// Connects to the socket at `path` and checks who serves it.
fn connect(path: &Path) -> Result<UnixStream, ControlError> {
    let error = |source| ControlError::Connect {
        path: path.to_path_buf(),
        source,
    };
    let (dir, name) = HeldDir::of(path).map_err(error)?;
    let conn = UnixStream::connect(dir.entry(&name)).map_err(error)?;
    let server =
        getsockopt(&conn, sockopt::PeerCredentials).map_err(|errno| error(errno.into()))?;
    let uid = server.uid();
    if uid != 0 && uid != nix::unistd::geteuid().as_raw() {
        return Err(ControlError::ForeignServer {
            path: path.to_path_buf(),
            uid,
        });
    }
    conn.set_read_timeout(Some(CLIENT_TIMEOUT))
        .and_then(|()| conn.set_write_timeout(Some(CLIENT_TIMEOUT)))
        .map_err(error)?;
    Ok(conn)
}

fn unexpected(path: &Path, request: &Request, got: &Response) -> ControlError {
    ControlError::Protocol {
        path: path.to_path_buf(),
        source: ProtoError::Unexpected {
            request: request.name(),
            got: got.name(),
        },
    }
}
