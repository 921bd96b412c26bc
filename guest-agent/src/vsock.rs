//! The agent channel over vsock: the agent connects to the host (CID 2) on the port the host
//! put on the kernel command line (see the protocol crate's transport section).

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{
    connect, shutdown, socket, AddressFamily, Shutdown, SockFlag, SockType, VsockAddr,
};
use podvm_protocol::{Message, AGENT_PORT_PARAM};

use crate::channel::{Channel, ChannelError};

/// How long the agent keeps trying to reach the host while the vsock device comes up.
const CONNECT_PATIENCE: Duration = Duration::from_secs(5);
/// Pause between connection attempts.
const CONNECT_RETRY: Duration = Duration::from_millis(20);
/// How long the agent waits at the end for the host to confirm it read everything.
const CLOSE_PATIENCE: Duration = Duration::from_secs(10);

/// The port in `podvm.agent_port=<port>` on a kernel command line, if any.
pub fn port_from_cmdline(cmdline: &str) -> Option<u32> {
    cmdline
        .split_whitespace()
        .find_map(|word| word.strip_prefix(AGENT_PORT_PARAM)?.strip_prefix('='))
        .and_then(|port| port.parse().ok())
}

/// A connected vsock stream to the host.
pub struct VsockChannel {
    stream: File,
    name: String,
}

impl VsockChannel {
    /// Connects to `cid`:`port`, retrying briefly while the transport is not up yet.
    pub fn connect(cid: u32, port: u32) -> Result<Self, ChannelError> {
        let name = format!("vsock {cid}:{port}");
        let open_error = |errno: Errno| ChannelError::Open {
            target: name.clone(),
            source: std::io::Error::from(errno),
        };
        let started = Instant::now();
        loop {
            let fd = socket(
                AddressFamily::Vsock,
                SockType::Stream,
                SockFlag::SOCK_CLOEXEC,
                None,
            )
            .map_err(open_error)?;
            match connect(fd.as_raw_fd(), &VsockAddr::new(cid, port)) {
                Ok(()) => {
                    return Ok(Self {
                        stream: File::from(fd),
                        name,
                    })
                }
                Err(Errno::EINTR | Errno::ENODEV | Errno::ECONNRESET | Errno::ETIMEDOUT)
                    if started.elapsed() < CONNECT_PATIENCE =>
                {
                    std::thread::sleep(CONNECT_RETRY)
                }
                Err(errno) => return Err(open_error(errno)),
            }
        }
    }
}

impl VsockChannel {
    /// The connection itself (an app session carries its frames on it directly).
    pub fn into_stream(self) -> File {
        self.stream
    }
}

impl Channel for VsockChannel {
    fn send(&mut self, message: &Message) -> Result<(), ChannelError> {
        message
            .write_to(&mut self.stream)
            .map_err(|source| ChannelError::Send {
                target: self.name.clone(),
                source,
            })
    }

    fn input(&self) -> Result<File, ChannelError> {
        self.stream
            .try_clone()
            .map_err(|source| ChannelError::Open {
                target: format!("{} (reading side)", self.name),
                source,
            })
    }

    /// Half-closes the stream and waits until the host has read everything and closed its side.
    fn drain(&mut self) -> Result<(), ChannelError> {
        let drain_error = |source| ChannelError::Drain {
            target: self.name.clone(),
            source,
        };
        shutdown(self.stream.as_raw_fd(), Shutdown::Write)
            .map_err(|errno| drain_error(errno.into()))?;
        let deadline = Instant::now() + CLOSE_PATIENCE;
        let mut buf = [0u8; 256];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let millis = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
            if millis == 0 {
                return Err(drain_error(std::io::ErrorKind::TimedOut.into()));
            }
            let mut fds = [PollFd::new(self.stream.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::from(millis)) {
                Ok(0) | Err(Errno::EINTR) => continue,
                Ok(_) => {}
                Err(errno) => return Err(drain_error(errno.into())),
            }
            match self.stream.read(&mut buf) {
                Ok(0) => return Ok(()),
                // The host sends nothing yet; anything it sends now is ignored.
                Ok(_) => {}
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                Err(err) => return Err(drain_error(err)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_is_found_among_other_parameters() {
        let cmdline =
            "console=ttyS0 quiet virtio_mmio.device=4K@0xd0000000:5 podvm.agent_port=1027 x";
        assert_eq!(port_from_cmdline(cmdline), Some(1027));
    }

    #[test]
    fn missing_or_bad_port_is_none() {
        assert_eq!(port_from_cmdline("console=ttyS0"), None);
        assert_eq!(port_from_cmdline("podvm.agent_port=abc"), None);
        assert_eq!(port_from_cmdline("podvm.agent_portx=5"), None);
    }
}
