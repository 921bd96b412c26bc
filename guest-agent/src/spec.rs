//! The boot spec: the host's first frame on the boot session ([`receive`]), or, for another
//! VMM and off the VM, a JSON file ([`load`]). Both are checked the same way ([`check`]).

use std::fs::File;
use std::io::Read;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use podvm_protocol::{BootSpec, Control, Message, ProtocolError, BOOT_SPEC_PARAM};

/// Errors while reading the boot spec.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The file is missing or unreadable.
    #[error("cannot read the boot spec {path}: {source}")]
    Read {
        /// The spec file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a valid spec.
    #[error("the boot spec {path} is not valid JSON for this agent: {source} (host and agent from different builds?)")]
    Parse {
        /// The spec file.
        path: PathBuf,
        /// Why.
        source: serde_json::Error,
    },
    /// The host sent nothing within the agent's patience.
    #[error("no boot spec from the host within {0:?}: the host must send it as the first frame of the boot session")]
    NotSent(Duration),
    /// The agent channel cannot be read, so the host's spec cannot arrive.
    #[error("the agent channel cannot be read, so the boot spec from the host cannot arrive")]
    Unreadable,
    /// The host closed the channel before it sent the spec.
    #[error("the host closed the agent channel before it sent the boot spec")]
    Closed,
    /// The host's first frame could not be read or decoded.
    #[error(
        "cannot read the boot spec from the host: {0} (host and agent from different builds?)"
    )]
    Frame(ProtocolError),
    /// The host's first frame was something else.
    #[error("the host's first frame was {0}, not the boot spec")]
    Unexpected(String),
    /// The spec names nothing to run.
    #[error("the boot spec {0} has an empty command: there is nothing to run")]
    EmptyCommand(String),
    /// A sandbox spec also names a workload.
    #[error("the boot spec {0} is a sandbox but has a command or apps: a sandbox runs only the containers created in it")]
    SandboxWithWorkload(String),
}

/// The spec file named by `podvm.boot_spec=<path>` on a kernel command line, if any (a VMM
/// other than podvm's, which cannot send the spec).
pub fn path_from_cmdline(cmdline: &str) -> Option<PathBuf> {
    cmdline
        .split_whitespace()
        .find_map(|word| word.strip_prefix(BOOT_SPEC_PARAM)?.strip_prefix('='))
        .filter(|path| !path.is_empty())
        .map(PathBuf::from)
}

/// Loads and checks the boot spec at `path`.
pub fn load(path: &Path) -> Result<BootSpec, SpecError> {
    let bytes = std::fs::read(path).map_err(|source| SpecError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(path, &bytes)
}

fn parse(path: &Path, bytes: &[u8]) -> Result<BootSpec, SpecError> {
    let spec: BootSpec = serde_json::from_slice(bytes).map_err(|source| SpecError::Parse {
        path: path.to_path_buf(),
        source,
    })?;
    check(spec, &path.display().to_string())
}

/// Reads the host's first frame from `input`, which must be [`Control::Boot`], waiting at most
/// `patience`; reads nothing beyond that frame (what follows belongs to the session).
pub fn receive(input: &File, patience: Duration) -> Result<BootSpec, SpecError> {
    let mut reader = Patient {
        file: input,
        deadline: Instant::now() + patience,
    };
    let message = match Message::read_from(&mut reader) {
        Ok(Some(message)) => message.check_from_host().map_err(SpecError::Frame)?,
        Ok(None) => return Err(SpecError::Closed),
        Err(ProtocolError::Io(err)) if err.kind() == std::io::ErrorKind::TimedOut => {
            return Err(SpecError::NotSent(patience))
        }
        Err(ProtocolError::Io(err)) if err.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Err(SpecError::Closed)
        }
        Err(err) => return Err(SpecError::Frame(err)),
    };
    match message {
        Message::Control(Control::Boot(spec)) => check(*spec, "from the host"),
        Message::Control(other) => Err(SpecError::Unexpected(other.name().to_string())),
        Message::Data(stream, _) => Err(SpecError::Unexpected(format!("{stream:?} data"))),
    }
}

/// The checks every spec passes, wherever it came from (`origin` names it in errors).
pub fn check(spec: BootSpec, origin: &str) -> Result<BootSpec, SpecError> {
    if spec.sandbox {
        if !spec.command.is_empty() || !spec.apps.is_empty() {
            return Err(SpecError::SandboxWithWorkload(origin.to_string()));
        }
        return Ok(spec);
    }
    if spec.apps.is_empty() && (spec.command.is_empty() || spec.command[0].is_empty()) {
        return Err(SpecError::EmptyCommand(origin.to_string()));
    }
    Ok(spec)
}

/// Reads from a descriptor until a deadline; past it, reads fail with `TimedOut`.
struct Patient<'a> {
    file: &'a File,
    deadline: Instant,
}

impl Read for Patient<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let left = self.deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(std::io::ErrorKind::TimedOut.into());
            }
            let timeout = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
            let mut fds = [PollFd::new(self.file.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, timeout) {
                Ok(0) | Err(Errno::EINTR) => continue,
                Ok(_) => {}
                Err(errno) => return Err(errno.into()),
            }
            match self.file.read(buf) {
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                other => return other,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::fd::OwnedFd;

    use super::*;

    #[test]
    fn valid_spec_parses() {
        let spec = parse(
            Path::new("x"),
            br#"{"command":["sh","-c","true"],"env":["A=1"],"workdir":null}"#,
        )
        .expect("valid");
        assert_eq!(spec.command, ["sh", "-c", "true"]);
        assert_eq!(spec.env, ["A=1"]);
        assert_eq!(spec.workdir, None);
    }

    #[test]
    fn only_a_command_line_that_names_a_spec_file_gives_one() {
        let cmdline = "console=ttyS0 podvm.agent_port=1027 podvm.boot_spec=/podvm/boot.json x";
        assert_eq!(
            path_from_cmdline(cmdline),
            Some(PathBuf::from("/podvm/boot.json"))
        );
        for none in [
            "console=ttyS0 podvm.agent_port=1027",
            "podvm.boot_spec=",
            "podvm.boot_specx=/a",
        ] {
            assert_eq!(path_from_cmdline(none), None, "{none}");
        }
    }

    #[test]
    fn bad_specs_say_why() {
        let err = parse(Path::new("/podvm/boot.json"), b"{nope").expect_err("invalid");
        assert!(err.to_string().contains("not valid JSON"), "{err}");
        let err = parse(
            Path::new("/podvm/boot.json"),
            br#"{"command":[],"env":[],"workdir":null}"#,
        )
        .expect_err("empty");
        assert!(err.to_string().contains("empty command"), "{err}");
        let err = load(Path::new("/nonexistent/boot.json")).expect_err("missing");
        assert!(err.to_string().contains("/nonexistent/boot.json"), "{err}");
    }

    fn pipe() -> (File, File) {
        let (read, write): (OwnedFd, OwnedFd) = nix::unistd::pipe().expect("pipe");
        (File::from(read), File::from(write))
    }

    fn frame(control: Control) -> Vec<u8> {
        Message::Control(control).encode().expect("encode")
    }

    #[test]
    fn the_spec_comes_as_the_first_frame_and_nothing_more_is_read() {
        let (read, mut write) = pipe();
        let spec = BootSpec {
            command: vec!["true".into()],
            ..BootSpec::default()
        };
        let mut bytes = frame(Control::Boot(Box::new(spec.clone())));
        let next = frame(Control::StdinClose);
        bytes.extend(&next);
        write.write_all(&bytes).expect("write");
        let received = receive(&read, Duration::from_secs(5)).expect("spec");
        assert_eq!(received, spec);
        drop(write);
        let mut rest = Vec::new();
        (&read).read_to_end(&mut rest).expect("rest");
        assert_eq!(rest, next, "the session's frames are left for the session");
    }

    #[test]
    fn a_spec_from_the_host_is_checked_as_a_file_is() {
        let (read, mut write) = pipe();
        write
            .write_all(&frame(Control::Boot(Box::default())))
            .expect("write");
        let err = receive(&read, Duration::from_secs(5)).expect_err("empty command");
        assert!(matches!(err, SpecError::EmptyCommand(_)), "{err}");
        assert!(err.to_string().contains("from the host"), "{err}");
    }

    #[test]
    fn a_sandbox_runs_nothing_of_its_own() {
        let sandbox = BootSpec {
            sandbox: true,
            ..BootSpec::default()
        };
        assert!(check(sandbox.clone(), "x").is_ok(), "no command needed");
        let with_command = BootSpec {
            command: vec!["sh".into()],
            ..sandbox
        };
        let err = check(with_command, "x").expect_err("a workload too");
        assert!(err.to_string().contains("is a sandbox"), "{err}");
    }

    #[test]
    fn silence_ends_after_the_patience_and_says_so() {
        let (read, _write) = pipe();
        let started = Instant::now();
        let err = receive(&read, Duration::from_millis(100)).expect_err("nothing sent");
        assert!(started.elapsed() >= Duration::from_millis(100));
        assert!(matches!(err, SpecError::NotSent(_)), "{err}");
        assert!(
            err.to_string().contains("no boot spec from the host"),
            "{err}"
        );
    }

    #[test]
    fn a_closed_channel_or_another_first_frame_is_refused() {
        let (read, write) = pipe();
        drop(write);
        let err = receive(&read, Duration::from_secs(5)).expect_err("closed");
        assert!(matches!(err, SpecError::Closed), "{err}");

        let (read, mut write) = pipe();
        write
            .write_all(&frame(Control::Signal { signo: 15 }))
            .expect("write");
        let err = receive(&read, Duration::from_secs(5)).expect_err("not a spec");
        assert!(
            err.to_string().contains("was signal, not the boot spec"),
            "{err}"
        );

        let (read, mut write) = pipe();
        let half = frame(Control::StdinClose);
        write.write_all(&half[..5]).expect("write");
        drop(write);
        let err = receive(&read, Duration::from_secs(5)).expect_err("torn");
        assert!(matches!(err, SpecError::Closed), "{err}");

        let (read, mut write) = pipe();
        write
            .write_all(&frame(Control::Ready {
                agent_version: "x".into(),
            }))
            .expect("write");
        let err = receive(&read, Duration::from_secs(5)).expect_err("wrong way");
        assert!(err.to_string().contains("other way"), "{err}");
    }
}
