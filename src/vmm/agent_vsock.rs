//! Host end of the agent channel over vsock.
//!
//! Before the guest boots, the VMM's supervisor (see [`super::process`]) binds a listening
//! AF_VSOCK socket on a port the host kernel
//! picks (so VMs never clash) and passes it to the guest as `podvm.agent_port=<port>` on the
//! kernel command line; the agent connects to the host (CID 2) on that port. A reader thread
//! accepts only a connection from this VM's CID and feeds every byte to the agent sink (the
//! frame decoder), then closes the socket when the agent closes its side, which tells the agent
//! that everything arrived. The thread sleeps in poll(2) on the socket and a stop eventfd.
//! The sink gets a duplicate of the connection to write host-to-agent frames on.
//!
//! When the sink takes app sessions (a pod of several apps, see the protocol crate), the
//! listener stays open after the boot session: an acceptor thread takes every further
//! connection from the VM and pumps each into a sink of its own until the VM ends.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::thread::JoinHandle;

use nix::sys::socket::{
    accept, bind, getpeername, getsockname, listen, socket, AddressFamily, Backlog, SockFlag,
    SockType, VsockAddr,
};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Size of one read from the socket.
const READ_CHUNK: usize = 64 * 1024;
/// Connections the listener queues before the agent's later ones are refused (app sessions).
const BACKLOG: i32 = 64;

/// Errors while setting up the host end.
#[derive(Debug, thiserror::Error)]
pub enum AgentVsockError {
    /// The listening socket could not be created.
    #[error(
        "cannot listen for the guest agent on vsock ({what}): {source}; \
         is the vsock module loaded (`modprobe vhost_vsock`)?"
    )]
    Listen {
        /// The step that failed.
        what: &'static str,
        /// Why.
        source: nix::errno::Errno,
    },
    /// The reader thread could not be started.
    #[error("cannot start the agent channel reader: {0}")]
    Thread(std::io::Error),
}

/// Makes a sink for each further connection of the agent (an app session).
pub type SessionSinks = Box<dyn FnMut() -> Box<dyn Write + Send> + Send>;

/// Where the agent's bytes go; also told when the agent connected.
pub trait AgentSink: Write + Send {
    /// The agent connected; `stream` is a duplicate of the connection for writing to it.
    fn connected(&mut self, stream: File);

    /// Sinks for the agent's further connections (app sessions); `None` (the default)
    /// refuses them.
    fn app_sessions(&mut self) -> Option<SessionSinks> {
        None
    }
}

/// A listening vsock socket waiting for the agent.
pub struct AgentListener {
    socket: OwnedFd,
    port: u32,
}

impl AgentListener {
    /// Binds to any local CID on a port the kernel picks, and listens.
    pub fn bind() -> Result<Self, AgentVsockError> {
        let step = |what| move |source| AgentVsockError::Listen { what, source };
        let socket = socket(
            AddressFamily::Vsock,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(step("socket"))?;
        let any = VsockAddr::new(libc::VMADDR_CID_ANY, libc::VMADDR_PORT_ANY);
        bind(socket.as_raw_fd(), &any).map_err(step("bind"))?;
        listen(&socket, Backlog::new(BACKLOG).map_err(step("listen"))?).map_err(step("listen"))?;
        let port = getsockname::<VsockAddr>(socket.as_raw_fd())
            .map_err(step("getsockname"))?
            .port();
        Ok(Self { socket, port })
    }

    /// The port the agent must connect to.
    pub fn port(&self) -> u32 {
        self.port
    }

    /// Starts the thread that accepts the agent of guest `cid` and feeds `sink`.
    pub fn serve(self, cid: u32, sink: Box<dyn AgentSink>) -> Result<AgentReader, AgentVsockError> {
        let stop = EventFd::new(EFD_NONBLOCK).map_err(AgentVsockError::Thread)?;
        let stop_in_thread = stop.try_clone().map_err(AgentVsockError::Thread)?;
        let handle = std::thread::Builder::new()
            .name("agent-vsock".into())
            .spawn(move || {
                let mut sink = sink;
                let mut acceptor = None;
                if let Some(stream) = accept_from(&self.socket, cid, &stop_in_thread) {
                    match sink.app_sessions() {
                        Some(sinks) => {
                            acceptor = spawn_acceptor(self.socket, cid, &stop_in_thread, sinks)
                        }
                        None => drop(self.socket),
                    }
                    match stream.try_clone() {
                        Ok(writer) => sink.connected(writer),
                        Err(err) => eprintln!("podvm: agent channel: cannot duplicate: {err}"),
                    }
                    pump(stream, &stop_in_thread, sink.as_mut());
                }
                let _ = sink.flush();
                if let Some(acceptor) = acceptor {
                    let _ = acceptor.join();
                }
            })
            .map_err(AgentVsockError::Thread)?;
        Ok(AgentReader { stop, handle })
    }
}

/// The running reader thread.
pub struct AgentReader {
    stop: EventFd,
    handle: JoinHandle<()>,
}

impl AgentReader {
    /// Takes what is still readable, then stops the thread (the VM has ended).
    pub fn finish(self) {
        let _ = self.stop.write(1);
        let _ = self.handle.join();
    }
}

/// A stream connected to vsock `cid`:`port` (e.g. a guest's exec service).
pub fn connect(cid: u32, port: u32) -> Result<File, nix::errno::Errno> {
    let fd = socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    nix::sys::socket::connect(fd.as_raw_fd(), &VsockAddr::new(cid, port))?;
    Ok(File::from(fd))
}

/// Whether `fd` became readable (false: stopped, or the poll failed, which is reported).
fn wait(fd: BorrowedFd<'_>, stop: &EventFd) -> bool {
    crate::stoppable::wait_readable(fd, stop).unwrap_or_else(|err| {
        eprintln!("podvm: agent channel: poll failed: {err}");
        false
    })
}

/// Errors of what the guest can repeat at will (open sessions, send output), rate-limited.
static SESSIONS: crate::vmm::ratelog::RateLimitedLog =
    crate::vmm::ratelog::RateLimitedLog::new("agent channel");

/// Starts the thread that accepts the agent's app sessions until stopped, each pumped into a
/// sink from `sinks` by a thread of its own; it joins them before it ends.
fn spawn_acceptor(
    listener: OwnedFd,
    cid: u32,
    stop: &EventFd,
    mut sinks: SessionSinks,
) -> Option<JoinHandle<()>> {
    let stop = match stop.try_clone() {
        Ok(stop) => stop,
        Err(err) => {
            eprintln!("podvm: agent channel: cannot accept app sessions: {err}");
            return None;
        }
    };
    let spawned = std::thread::Builder::new()
        .name("agent-sessions".into())
        .spawn(move || {
            let mut pumps = Vec::new();
            while let Some(stream) = accept_from(&listener, cid, &stop) {
                let mut sink = sinks();
                let Ok(stop) = stop.try_clone() else {
                    SESSIONS.log(format_args!("cannot serve an app session"));
                    continue;
                };
                let pumped =
                    std::thread::Builder::new()
                        .name("agent-app".into())
                        .spawn(move || {
                            pump(stream, &stop, sink.as_mut());
                            let _ = sink.flush();
                        });
                match pumped {
                    Ok(handle) => pumps.push(handle),
                    Err(err) => SESSIONS.log(format_args!("cannot serve an app session: {err}")),
                }
            }
            for handle in pumps {
                let _ = handle.join();
            }
        });
    match spawned {
        Ok(handle) => Some(handle),
        Err(err) => {
            eprintln!("podvm: agent channel: cannot accept app sessions: {err}");
            None
        }
    }
}

/// Accepts connections until one comes from `cid`; `None` if stopped first.
fn accept_from(listener: &OwnedFd, cid: u32, stop: &EventFd) -> Option<File> {
    loop {
        if !wait(listener.as_fd(), stop) {
            return None;
        }
        let raw = match accept(listener.as_raw_fd()) {
            Ok(raw) => raw,
            Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => continue,
            Err(err) => {
                eprintln!("podvm: agent channel: accept failed: {err}");
                return None;
            }
        };
        // SAFETY: accept just returned this descriptor; nothing else owns it.
        let stream = unsafe { OwnedFd::from_raw_fd(raw) };
        match getpeername::<VsockAddr>(stream.as_raw_fd()) {
            Ok(peer) if peer.cid() == cid => return Some(File::from(stream)),
            // Another VM found the port: refuse it by closing, keep waiting for ours.
            _ => drop(stream),
        }
    }
}

/// Copies the agent's bytes into `sink` until the agent closes its side or we are stopped.
fn pump(mut stream: File, stop: &EventFd, sink: &mut dyn Write) {
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        if !wait(stream.as_fd(), stop) {
            drain_nonblocking(&mut stream, &mut buf, sink);
            return;
        }
        match stream.read(&mut buf) {
            Ok(0) => {
                // Close every duplicate (the host-to-agent writer holds one): the agent waits
                // for this before it powers off.
                let _ = nix::sys::socket::shutdown(
                    stream.as_raw_fd(),
                    nix::sys::socket::Shutdown::Both,
                );
                return;
            }
            Ok(n) => {
                if let Err(err) = sink.write_all(&buf[..n]) {
                    SESSIONS.log(format_args!("cannot deliver output: {err}"));
                }
            }
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) => {
                eprintln!("podvm: agent channel: read failed: {err}");
                return;
            }
        }
    }
}

fn drain_nonblocking(stream: &mut File, buf: &mut [u8], sink: &mut dyn Write) {
    let flags = nix::fcntl::OFlag::O_NONBLOCK;
    if nix::fcntl::fcntl(stream.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(flags)).is_err() {
        return;
    }
    while let Ok(n) = stream.read(buf) {
        if n == 0 || sink.write_all(&buf[..n]).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixStream;
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("test lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn pair() -> (UnixStream, File) {
        let (guest, host) = UnixStream::pair().expect("socketpair");
        (guest, File::from(OwnedFd::from(host)))
    }

    #[test]
    fn pump_delivers_everything_until_the_peer_closes() {
        let (mut guest, host) = pair();
        let stop = EventFd::new(EFD_NONBLOCK).expect("eventfd");
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let expected = data.clone();
        let writer = std::thread::spawn(move || {
            guest.write_all(&data).expect("write");
        });
        let mut sink = Shared::default();
        pump(host, &stop, &mut sink);
        writer.join().expect("writer");
        assert_eq!(*sink.0.lock().expect("lock"), expected);
    }

    #[test]
    fn stop_takes_what_is_already_there() {
        let (mut guest, host) = pair();
        guest.write_all(b"last words").expect("write");
        let stop = EventFd::new(EFD_NONBLOCK).expect("eventfd");
        stop.write(1).expect("stop");
        let mut sink = Shared::default();
        pump(host, &stop, &mut sink);
        assert_eq!(sink.0.lock().expect("lock").as_slice(), b"last words");
    }
}
