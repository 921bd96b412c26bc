//! Running a command in a running VM (an exec session, see the protocol crate): connect to the
//! guest's CID on the agent's exec port, send the request with the VM's token, then relay like
//! `podvm boot` (output, stdin, signals, tty) until the agent reports how the command ended.
//! This is what `podvm exec` and `podvm enter` use.

use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;

use nix::sys::socket::VsockAddr;
use nix::sys::socket::{connect, shutdown, socket, AddressFamily, Shutdown, SockFlag, SockType};
use podvm_protocol::{Control, ExecRequest, ExitStatus, Message};

use crate::agent_link::{self, AgentLink, HostWriter};
use crate::exec_info::ExecInfo;
use crate::relay::{Relay, RelayError, RelayOptions};

/// Size of one read from the connection.
const READ_CHUNK: usize = 64 * 1024;

/// Errors of an exec session.
#[derive(Debug, thiserror::Error)]
pub enum ExecClientError {
    /// The VM could not be reached.
    #[error("cannot connect to the VM's agent at vsock {cid}:{port}: {source} (is the VM still running?)")]
    Connect {
        /// The guest CID.
        cid: u32,
        /// The port.
        port: u32,
        /// Why.
        source: nix::errno::Errno,
    },
    /// The request could not be sent.
    #[error("cannot send the exec request: {0}")]
    Send(podvm_protocol::ProtocolError),
    /// The relay failed to start.
    #[error(transparent)]
    Relay(#[from] RelayError),
    /// The agent refused or the session broke before an exit status came.
    #[error("the exec session ended without an exit status: {0}")]
    NoStatus(String),
}

/// Runs `request` in the VM described by `info`; returns how the command ended.
pub fn run(
    info: &ExecInfo,
    mut request: ExecRequest,
    options: &RelayOptions,
) -> Result<ExitStatus, ExecClientError> {
    let stream = connect_vsock(info)?;
    request.token = info.token.clone();
    let writer = HostWriter::new();
    writer.connect(stream.try_clone().map_err(|err| ExecClientError::Connect {
        cid: info.cid,
        port: info.port,
        source: nix::errno::Errno::from_raw(err.raw_os_error().unwrap_or(0)),
    })?);
    writer
        .send(&Message::Control(Control::Exec(request)))
        .map_err(ExecClientError::Send)?;
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

fn connect_vsock(info: &ExecInfo) -> Result<File, ExecClientError> {
    let error = |source| ExecClientError::Connect {
        cid: info.cid,
        port: info.port,
        source,
    };
    let fd = socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(error)?;
    connect(fd.as_raw_fd(), &VsockAddr::new(info.cid, info.port)).map_err(error)?;
    Ok(File::from(fd))
}

/// Feeds the agent's bytes to `link` until the agent closes the connection.
fn pump(mut stream: File, link: &mut AgentLink) {
    use std::io::Write;
    let mut buffer = vec![0u8; READ_CHUNK];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => {
                if let Err(err) = link.write_all(&buffer[..n]) {
                    eprintln!("podvm: exec: cannot deliver output: {err}");
                }
            }
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let _ = link.flush();
}
