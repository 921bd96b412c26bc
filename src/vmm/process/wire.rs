//! The messages between a supervisor and its VMM process, on a `SOCK_SEQPACKET` socketpair:
//! one JSON message per packet (at most [`MAX_MESSAGE`] bytes), descriptors alongside as
//! SCM_RIGHTS. A packet that was cut (`MSG_TRUNC`), carries cut descriptors (`MSG_CTRUNC`) or
//! does not parse is an error; EOF is the other side gone.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::vmm::{VmConfig, VmStats};

/// Longest message either side sends or accepts.
pub const MAX_MESSAGE: usize = 64 * 1024;
/// Most descriptors one message carries.
pub const MAX_FDS: usize = 8;

/// From the supervisor to the VMM process.
#[derive(Debug, Serialize, Deserialize)]
pub enum ToVmm {
    /// The VM to run (the first message, and only once). Its descriptors, in this order:
    /// /dev/kvm, the kernel, the initramfs (a sealed memfd), the console's pipe, the share
    /// counters' page (a memfd sealed against resizing).
    Start(Box<StartVm>),
    /// Stop the VM at once, as if the guest had powered off.
    Kill,
}

/// What the VMM process needs besides its descriptors.
#[derive(Debug, Serialize, Deserialize)]
pub struct StartVm {
    /// The VM (its `initramfs` is the memfd; `kernel` only names the file in errors).
    pub config: VmConfig,
    /// The vsock port the supervisor listens on for the agent.
    pub agent_port: u32,
}

/// The descriptors of [`ToVmm::Start`], in their order.
pub const START_FDS: usize = 5;

/// From the VMM process to the supervisor.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum FromVmm {
    /// The VM is built and about to boot.
    Started {
        /// The guest's vsock CID.
        cid: u32,
        /// Where the guest RAM regions are mapped in the VMM process (for its live figures).
        guest_starts: Vec<u64>,
    },
    /// The VM ended (the last message).
    Ended(EndReport),
}

/// How the VM ended.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct EndReport {
    /// The figures measured just before teardown.
    pub stats: VmStats,
    /// The state of the vCPU whose exit ended the guest, if one did.
    pub guest_end: Option<String>,
    /// Why the VMM failed, if it did.
    pub failure: Option<Failure>,
}

/// A VMM failure, as the supervisor reports it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum Failure {
    /// A vCPU stopped the VM (the guest ran).
    Vcpu {
        /// The vCPU index.
        cpu: u8,
        /// What happened.
        reason: String,
    },
    /// The VM could not be built or run.
    Vmm {
        /// The VMM's error message.
        message: String,
    },
}

/// Errors of the wire.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The socket failed.
    #[error("{what}: {source}")]
    Socket {
        /// The step.
        what: &'static str,
        /// Why.
        source: nix::errno::Errno,
    },
    /// A message could not be encoded or decoded.
    #[error("bad message: {0}")]
    Json(#[from] serde_json::Error),
    /// A message is longer than [`MAX_MESSAGE`], or its descriptors were cut.
    #[error("message cut (longer than {MAX_MESSAGE} bytes, or more than {MAX_FDS} descriptors)")]
    Truncated,
    /// A message to send is too long.
    #[error("message of {0} bytes, longer than {MAX_MESSAGE}")]
    TooLong(usize),
}

/// Sends `message` with `fds` on `socket`.
pub fn send(
    socket: BorrowedFd<'_>,
    message: &impl Serialize,
    fds: &[BorrowedFd<'_>],
) -> Result<(), WireError> {
    let bytes = serde_json::to_vec(message)?;
    if bytes.len() > MAX_MESSAGE {
        return Err(WireError::TooLong(bytes.len()));
    }
    let raw: Vec<RawFd> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
    let rights = [ControlMessage::ScmRights(&raw)];
    let cmsgs: &[ControlMessage] = if raw.is_empty() { &[] } else { &rights };
    let iov = [IoSlice::new(&bytes)];
    loop {
        match sendmsg::<()>(
            socket.as_raw_fd(),
            &iov,
            cmsgs,
            MsgFlags::MSG_NOSIGNAL,
            None,
        ) {
            // A signal handler of the supervisor's (its relay) interrupted it: nothing was sent.
            Err(nix::errno::Errno::EINTR) => continue,
            Err(source) => {
                return Err(WireError::Socket {
                    what: "send",
                    source,
                })
            }
            Ok(_) => return Ok(()),
        }
    }
}

/// Receives one message and its descriptors; `None` at EOF.
pub fn recv<T: DeserializeOwned>(
    socket: BorrowedFd<'_>,
) -> Result<Option<(T, Vec<OwnedFd>)>, WireError> {
    let mut buffer = vec![0u8; MAX_MESSAGE];
    let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
    let (len, fds, flags) = {
        let mut iov = [IoSliceMut::new(&mut buffer)];
        let received = loop {
            match recvmsg::<()>(
                socket.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Err(nix::errno::Errno::EINTR) => continue,
                other => {
                    break other.map_err(|source| WireError::Socket {
                        what: "receive",
                        source,
                    })?
                }
            }
        };
        let mut fds = Vec::new();
        for cmsg in received.cmsgs().map_err(|source| WireError::Socket {
            what: "read descriptors",
            source,
        })? {
            if let ControlMessageOwned::ScmRights(raw) = cmsg {
                for fd in raw {
                    // SAFETY: the kernel just installed `fd` in this process for this message;
                    // nothing else owns it.
                    fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
        }
        (received.bytes, fds, received.flags)
    };
    if flags.intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC) {
        return Err(WireError::Truncated);
    }
    if len == 0 {
        return Ok(None);
    }
    let message = serde_json::from_slice(&buffer[..len])?;
    Ok(Some((message, fds)))
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Seek, Write};
    use std::os::fd::AsFd;

    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};

    use super::*;

    fn pair() -> (OwnedFd, OwnedFd) {
        socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .expect("socketpair")
    }

    #[test]
    fn a_message_and_its_descriptors_arrive_together() {
        let (a, b) = pair();
        let mut file = tempfile::tempfile().expect("tempfile");
        file.write_all(b"kernel").expect("write");
        let report = FromVmm::Started {
            cid: 7,
            guest_starts: vec![1, 2],
        };
        send(a.as_fd(), &report, &[file.as_fd()]).expect("send");
        let (got, fds) = recv::<FromVmm>(b.as_fd()).expect("recv").expect("message");
        assert_eq!(got, report);
        assert_eq!(fds.len(), 1);
        let mut received = std::fs::File::from(fds.into_iter().next().expect("fd"));
        received.rewind().expect("seek");
        let mut text = String::new();
        received.read_to_string(&mut text).expect("read");
        assert_eq!(text, "kernel");
        drop(a);
        assert!(recv::<FromVmm>(b.as_fd()).expect("eof").is_none());
    }

    #[test]
    fn a_message_too_long_or_malformed_is_refused() {
        let (a, b) = pair();
        let long = "x".repeat(MAX_MESSAGE + 1);
        assert!(matches!(
            send(a.as_fd(), &long, &[]),
            Err(WireError::TooLong(_))
        ));
        send(a.as_fd(), &"not a message", &[]).expect("send");
        assert!(matches!(
            recv::<FromVmm>(b.as_fd()),
            Err(WireError::Json(_))
        ));
    }
}
