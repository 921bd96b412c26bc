//! The exec service: a listening socket for exec sessions (see the protocol crate's sessions
//! section). In the VM it is vsock port [`podvm_protocol::EXEC_PORT`]; off the VM (tests) a Unix
//! socket named by `PODVM_AGENT_EXEC_SOCKET`. Each accepted connection is one session whose first
//! frame must be an exec request carrying the VM's token.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::sys::socket::{
    accept4, bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, UnixAddr, VsockAddr,
};

/// Errors of the exec service.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The listening socket could not be set up.
    #[error("cannot listen for exec sessions on {target} ({what}): {source}")]
    Listen {
        /// The address.
        target: String,
        /// The step that failed.
        what: &'static str,
        /// Why.
        source: Errno,
    },
}

/// A listening socket for exec sessions.
pub struct ExecListener {
    socket: OwnedFd,
}

impl ExecListener {
    /// Listens on vsock `port` of any local CID.
    pub fn vsock(port: u32) -> Result<Self, ExecError> {
        let address = VsockAddr::new(libc::VMADDR_CID_ANY, port);
        Self::listen(
            AddressFamily::Vsock,
            &address,
            &format!("vsock port {port}"),
        )
    }

    /// Listens on a Unix socket at `path` (off the VM).
    pub fn unix(path: &Path) -> Result<Self, ExecError> {
        let target = path.display().to_string();
        let address = UnixAddr::new(path).map_err(|source| ExecError::Listen {
            target: target.clone(),
            what: "address",
            source,
        })?;
        Self::listen(AddressFamily::Unix, &address, &target)
    }

    fn listen(
        family: AddressFamily,
        address: &dyn nix::sys::socket::SockaddrLike,
        target: &str,
    ) -> Result<Self, ExecError> {
        let step = |what| {
            move |source| ExecError::Listen {
                target: target.to_string(),
                what,
                source,
            }
        };
        let socket = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)
            .map_err(step("socket"))?;
        bind(socket.as_raw_fd(), address).map_err(step("bind"))?;
        listen(&socket, Backlog::new(8).map_err(step("listen"))?).map_err(step("listen"))?;
        Ok(Self { socket })
    }

    /// The descriptor that becomes readable when a session connects.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }

    /// Accepts one pending connection; `None` if there was none after all.
    pub fn accept(&self) -> Option<File> {
        match accept4(self.socket.as_raw_fd(), SockFlag::SOCK_CLOEXEC) {
            // SAFETY: accept4 just returned this descriptor; nothing else owns it.
            Ok(raw) => Some(File::from(unsafe { OwnedFd::from_raw_fd(raw) })),
            Err(err) => {
                diag!("exec: accept failed: {err}");
                None
            }
        }
    }
}

/// Compares a presented token with the VM's in time independent of where they differ.
pub fn token_matches(expected: &str, given: &str) -> bool {
    let (expected, given) = (expected.as_bytes(), given.as_bytes());
    if expected.is_empty() || expected.len() != given.len() {
        return false;
    }
    expected
        .iter()
        .zip(given)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_must_match_exactly() {
        assert!(token_matches("s3cret", "s3cret"));
        assert!(!token_matches("s3cret", "s3creT"));
        assert!(!token_matches("s3cret", "s3cre"));
        assert!(!token_matches("", ""));
    }

    #[test]
    fn a_unix_listener_accepts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("exec.sock");
        let listener = ExecListener::unix(&path).expect("listen");
        let _client = std::os::unix::net::UnixStream::connect(&path).expect("connect");
        assert!(listener.accept().is_some());
    }
}
