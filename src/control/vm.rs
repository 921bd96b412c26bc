//! What a VM's supervisor answers on its control socket ([`VmControl`]): the VM's live state;
//! a graceful stop, handed to the relay as SIGTERM to podvm would be; and exec sessions, which
//! it opens to the agent itself with the exec token only it holds.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, VsockAddr};
use podvm_protocol::{Control, ExecRequest, Message, EXEC_PORT};

use super::proto::{LiveState, LiveStatus};
use super::server::{ControlServer, Handler};
use super::ControlError;
use crate::relay::SignalInjector;

/// A VM's side of its control socket.
#[derive(Debug)]
pub struct VmControl {
    /// The agent's exec token; `None`: the VM takes no exec sessions.
    token: Option<String>,
    signals: SignalInjector,
    stop_timeout: Duration,
    /// The guest's vsock CID and when the VM started, once it did.
    started: Mutex<Option<(u32, Instant)>>,
    stopping: AtomicBool,
}

impl VmControl {
    /// Serves a VM's control socket at `path`: exec sessions with `token`, stops through
    /// `signals` (the VM's relay) with `stop_timeout`. The socket goes when the server drops.
    pub fn serve(
        path: &Path,
        token: Option<String>,
        signals: SignalInjector,
        stop_timeout: Duration,
    ) -> Result<(ControlServer, Arc<VmControl>), ControlError> {
        let control = Arc::new(VmControl {
            token,
            signals,
            stop_timeout,
            started: Mutex::new(None),
            stopping: AtomicBool::new(false),
        });
        let server = ControlServer::bind(path, control.clone())?;
        Ok((server, control))
    }

    /// The VM was built: its guest has vsock CID `cid`.
    pub fn vm_started(&self, cid: u32) {
        *self.lock_started() = Some((cid, Instant::now()));
    }

    fn lock_started(&self) -> std::sync::MutexGuard<'_, Option<(u32, Instant)>> {
        self.started
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Handler for VmControl {
    fn status(&self) -> Result<LiveStatus, String> {
        let started = *self.lock_started();
        let state = match started {
            _ if self.stopping.load(Ordering::SeqCst) => LiveState::Stopping,
            None => LiveState::Starting,
            Some(_) => LiveState::Running,
        };
        let pid = std::process::id();
        Ok(LiveStatus {
            state,
            pid,
            vmm_pid: pid,
            uptime_secs: started.map_or(0, |(_, at)| at.elapsed().as_secs()),
        })
    }

    fn stop(&self) -> Result<Duration, String> {
        self.signals
            .send(libc::SIGTERM)
            .map_err(|err| format!("cannot pass the stop on to the app: {err}"))?;
        self.stopping.store(true, Ordering::SeqCst);
        Ok(self.stop_timeout)
    }

    fn exec(&self, mut request: ExecRequest) -> Result<File, String> {
        let Some(token) = &self.token else {
            return Err("this VM takes no exec sessions".into());
        };
        let Some((cid, _)) = *self.lock_started() else {
            return Err("the VM is still starting; try again in a moment".into());
        };
        let agent = connect_vsock(cid, EXEC_PORT).map_err(|errno| {
            format!("cannot reach the agent's exec service at vsock {cid}:{EXEC_PORT}: {errno}")
        })?;
        request.token = token.clone();
        Message::Control(Control::Exec(request))
            .write_to(&mut &agent)
            .map_err(|err| format!("cannot send the exec request to the agent: {err}"))?;
        Ok(agent)
    }
}

/// A stream connected to vsock `cid`:`port`.
fn connect_vsock(cid: u32, port: u32) -> Result<File, nix::errno::Errno> {
    let fd = socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    connect(fd.as_raw_fd(), &VsockAddr::new(cid, port))?;
    Ok(File::from(fd))
}
