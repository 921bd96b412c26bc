//! The client end of an exec session (see the protocol crate): once the VM's supervisor opened
//! the session over its control socket ([`crate::control::client::open_exec`]), relay like
//! `podvm boot` (output, stdin, signals, tty) until the agent reports how the command ended.
//! This is what `podvm exec` and `podvm enter` use.

use std::fs::File;
use std::os::fd::AsRawFd;

use nix::sys::socket::{shutdown, Shutdown};
use podvm_protocol::ExitStatus;

use crate::agent_link::{self, AgentLink, HostWriter};
use crate::relay::{Relay, RelayError, RelayOptions};

/// Errors of an exec session.
#[derive(Debug, thiserror::Error)]
pub enum ExecClientError {
    /// The session's connection could not be shared between its threads.
    #[error("cannot set up the exec session: {0}")]
    Setup(std::io::Error),
    /// The relay failed to start.
    #[error(transparent)]
    Relay(#[from] RelayError),
    /// The agent refused or the session broke before an exit status came.
    #[error("the exec session ended without an exit status: {0}")]
    NoStatus(String),
}

/// Relays the exec session on `stream` (the request already accepted); returns how the
/// command ended.
pub fn run(stream: File, options: &RelayOptions) -> Result<ExitStatus, ExecClientError> {
    let writer = HostWriter::new();
    writer.connect(stream.try_clone().map_err(ExecClientError::Setup)?);
    let hangup = stream.try_clone().ok();
    let on_timeout = stream.try_clone().ok();
    let relay = Relay::start(
        options,
        writer,
        Box::new(move || {
            if let Some(stream) = on_timeout {
                let _ = shutdown(stream.as_raw_fd(), Shutdown::Both);
            }
        }),
    )?;
    let (mut link, report) =
        AgentLink::new(Box::new(std::io::stdout()), Box::new(std::io::stderr()));
    pump(stream, &mut link);
    // The agent is done: a stdin pump still blocked on the connection must not wait for it.
    if let Some(stream) = hangup {
        let _ = shutdown(stream.as_raw_fd(), Shutdown::Both);
    }
    let timed_out = relay.finish();
    let report = agent_link::lock(&report).clone();
    if let Some(status) = report.exit {
        return Ok(status);
    }
    if let Some(signo) = timed_out {
        return Ok(ExitStatus::Signal(signo));
    }
    let mut reasons = report.agent_errors;
    reasons.extend(report.protocol_error);
    if reasons.is_empty() {
        reasons.push("the agent closed the connection".into());
    }
    Err(ExecClientError::NoStatus(reasons.join("; ")))
}

/// Feeds the agent's bytes to `link` until the agent closes the connection.
fn pump(stream: File, link: &mut AgentLink) {
    if let Err(err) = crate::runtime::session::pump(stream, link) {
        eprintln!("podvm: exec: cannot deliver output: {err}");
    }
}
