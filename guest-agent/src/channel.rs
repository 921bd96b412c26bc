//! The agent channel: ships protocol frames to the host.
//!
//! The transport sits behind [`Channel`]: vsock in the VM (`vsock.rs`), a file descriptor
//! (stdout, a pipe, a file or a terminal) off the VM, without touching command handling. The active channel lives in a process-wide slot so the
//! panic hook can still send its last words.

use std::fs::File;
use std::io::{IsTerminal, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, TryLockError};

use nix::sys::termios::{self, ControlFlags, SetArg};
use podvm_protocol::{Message, ProtocolError};

/// Errors of the agent channel.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// The channel could not be opened.
    #[error("cannot open the agent channel {target}: {source}")]
    Open {
        /// What was opened.
        target: String,
        /// Why.
        source: std::io::Error,
    },
    /// The serial line could not be put into raw mode.
    #[error("cannot put the agent channel {target} into raw mode: {source}")]
    RawMode {
        /// The terminal device.
        target: String,
        /// Why.
        source: nix::errno::Errno,
    },
    /// A frame could not be sent.
    #[error("cannot send a frame on the agent channel {target}: {source}")]
    Send {
        /// The channel.
        target: String,
        /// Why.
        source: ProtocolError,
    },
    /// Pending bytes could not be flushed to the host.
    #[error("cannot drain the agent channel {target}: {source}")]
    Drain {
        /// The channel.
        target: String,
        /// Why.
        source: std::io::Error,
    },
    /// No channel was installed, or it is in use by a crashing caller.
    #[error("the agent channel is not available")]
    Unavailable,
}

/// A transport for protocol frames towards the host.
pub trait Channel: Send {
    /// Sends one message as a frame.
    fn send(&mut self, message: &Message) -> Result<(), ChannelError>;
    /// Waits until every byte sent so far has left the guest.
    fn drain(&mut self) -> Result<(), ChannelError>;
    /// A descriptor to read the host's frames from (a duplicate; the channel keeps its own).
    fn input(&self) -> Result<File, ChannelError>;
}

/// Where the frames go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The agent's own standard output (for off-VM tests).
    Stdout,
    /// A device or file; a terminal is switched to raw mode.
    Path(PathBuf),
}

impl Target {
    /// Parses `stdout` or a path (e.g. `/dev/ttyS1`, `/dev/fd/3`).
    pub fn parse(text: &str) -> Self {
        match text {
            "stdout" | "-" => Target::Stdout,
            path => Target::Path(PathBuf::from(path)),
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Stdout => f.write_str("stdout"),
            Target::Path(path) => write!(f, "{}", path.display()),
        }
    }
}

/// A channel over a file descriptor: a serial port, a pipe or a file. Off the VM, when frames
/// go to stdout, the host's frames are read from stdin.
pub struct FdChannel {
    file: File,
    name: String,
    terminal: bool,
}

impl FdChannel {
    /// Opens the target; a terminal is put into raw 8N1 mode without flow control.
    pub fn open(target: &Target) -> Result<Self, ChannelError> {
        let name = target.to_string();
        let open_error = |source| ChannelError::Open {
            target: name.clone(),
            source,
        };
        let file = match target {
            Target::Stdout => File::from(
                std::io::stdout()
                    .as_fd()
                    .try_clone_to_owned()
                    .map_err(open_error)?,
            ),
            Target::Path(path) => std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NOCTTY)
                .open(path)
                .map_err(open_error)?,
        };
        let terminal = file.is_terminal();
        if terminal {
            make_raw(&file).map_err(|source| ChannelError::RawMode {
                target: name.clone(),
                source,
            })?;
        }
        Ok(Self {
            file,
            name,
            terminal,
        })
    }
}

/// Raw mode: no echo, no line discipline, no CR/LF translation, 8 data bits, no parity, one stop
/// bit, modem lines and hardware flow control ignored.
fn make_raw(file: &File) -> Result<(), nix::errno::Errno> {
    let mut attrs = termios::tcgetattr(file)?;
    termios::cfmakeraw(&mut attrs);
    attrs.control_flags &= !(ControlFlags::CSTOPB | ControlFlags::CRTSCTS);
    attrs.control_flags |= ControlFlags::CLOCAL | ControlFlags::CREAD;
    termios::tcsetattr(file, SetArg::TCSANOW, &attrs)
}

impl Channel for FdChannel {
    fn send(&mut self, message: &Message) -> Result<(), ChannelError> {
        message
            .write_to(&mut self.file)
            .map_err(|source| ChannelError::Send {
                target: self.name.clone(),
                source,
            })
    }

    fn drain(&mut self) -> Result<(), ChannelError> {
        let result = if self.terminal {
            termios::tcdrain(&self.file).map_err(std::io::Error::from)
        } else {
            self.file.flush()
        };
        result.map_err(|source| ChannelError::Drain {
            target: self.name.clone(),
            source,
        })
    }

    fn input(&self) -> Result<File, ChannelError> {
        let duplicate = if self.name == "stdout" {
            std::io::stdin()
                .as_fd()
                .try_clone_to_owned()
                .map(File::from)
        } else {
            self.file.try_clone()
        };
        duplicate.map_err(|source| ChannelError::Open {
            target: format!("{} (reading side)", self.name),
            source,
        })
    }
}

/// The channel in use, shared with the panic hook.
static ACTIVE: Mutex<Option<Box<dyn Channel>>> = Mutex::new(None);

fn active() -> MutexGuard<'static, Option<Box<dyn Channel>>> {
    ACTIVE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Makes `channel` the one [`send`] and [`drain`] use.
pub fn install(channel: Box<dyn Channel>) {
    *active() = Some(channel);
}

/// Sends a message on the installed channel.
pub fn send(message: &Message) -> Result<(), ChannelError> {
    active()
        .as_mut()
        .ok_or(ChannelError::Unavailable)?
        .send(message)
}

/// Runs `f` on the installed channel unless it is busy (a panic in the middle of a send).
fn try_with(
    f: impl FnOnce(&mut dyn Channel) -> Result<(), ChannelError>,
) -> Result<(), ChannelError> {
    let mut guard = match ACTIVE.try_lock() {
        Ok(guard) => guard,
        Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
        Err(TryLockError::WouldBlock) => return Err(ChannelError::Unavailable),
    };
    f(guard.as_deref_mut().ok_or(ChannelError::Unavailable)?)
}

/// A descriptor to read the host's frames from, on the installed channel.
pub fn input() -> Result<File, ChannelError> {
    active().as_ref().ok_or(ChannelError::Unavailable)?.input()
}

/// Sends a message if the channel is free; for error paths that must not block or tear a frame.
pub fn try_send(message: &Message) -> Result<(), ChannelError> {
    try_with(|channel| channel.send(message))
}

/// Waits until everything sent has left the guest (never blocks on a busy channel).
pub fn drain() -> Result<(), ChannelError> {
    try_with(|channel| channel.drain())
}

#[cfg(test)]
mod tests {
    use super::*;
    use podvm_protocol::{Control, FrameDecoder, Stream};
    use std::io::Read;

    #[test]
    fn targets_parse() {
        assert_eq!(Target::parse("stdout"), Target::Stdout);
        assert_eq!(
            Target::parse("/dev/ttyS1"),
            Target::Path(PathBuf::from("/dev/ttyS1"))
        );
    }

    #[test]
    fn a_file_channel_writes_decodable_frames() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("frames");
        std::fs::write(&path, b"").expect("create");
        let mut channel = FdChannel::open(&Target::Path(path.clone())).expect("open");
        assert!(!channel.terminal);
        let sent = vec![
            Message::Data(Stream::Stdout, b"a\nb\r\n".to_vec()),
            Message::Control(Control::Error {
                message: "x".into(),
            }),
        ];
        for message in &sent {
            channel.send(message).expect("send");
        }
        channel.drain().expect("drain");
        let mut bytes = Vec::new();
        File::open(&path)
            .expect("reopen")
            .read_to_end(&mut bytes)
            .expect("read");
        let mut decoder = FrameDecoder::new();
        decoder.push(&bytes);
        let mut received = Vec::new();
        while let Some(message) = decoder.next_message().expect("valid frames") {
            received.push(message);
        }
        assert_eq!(received, sent);
    }

    #[test]
    fn a_missing_device_names_itself() {
        let err = FdChannel::open(&Target::Path(PathBuf::from("/nonexistent/ttyS9")))
            .err()
            .expect("must fail");
        assert!(err.to_string().contains("/nonexistent/ttyS9"), "{err}");
    }
}
