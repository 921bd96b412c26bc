//! What a VM's supervisor answers on its control socket ([`VmControl`]): the VM's live state;
//! a graceful stop, handed to the relay as SIGTERM to podvm would be; exec sessions, which it
//! opens to the agent itself with the exec token only it holds; and attached clients, who get
//! the app's output and whose signals reach the app as podvm's own would (their stdin only
//! when the VM holds the app's stdin open for them: a detached interactive pod).

use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use podvm_protocol::{Control, ExecRequest, ExitStatus, Message, Stream, EXEC_PORT};

use super::attach::{ClientQueue, OutputHub};
use super::proto::{LiveState, LiveStatus};
use super::server::{ControlServer, Handler};
use super::ControlError;
use crate::agent_link::HostWriter;
use crate::relay::SignalInjector;

/// How often a wait for the agent looks whether the VM ended meanwhile.
const AGENT_POLL: Duration = Duration::from_secs(1);

/// How long an exec waits for the agent's exec service once the agent is up.
const EXEC_SERVICE_WAIT: Duration = Duration::from_secs(5);
/// How often it tries meanwhile.
const EXEC_SERVICE_POLL: Duration = Duration::from_millis(50);

/// A VM's side of its control socket.
#[derive(Debug)]
pub struct VmControl {
    /// The agent's exec token; `None`: the VM takes no exec sessions.
    token: Option<String>,
    signals: SignalInjector,
    stop_timeout: Duration,
    /// The app's output for attached clients.
    hub: Arc<OutputHub>,
    /// The host's side of the agent's boot session: connected once the agent is up.
    agent: Arc<HostWriter>,
    /// Attached clients feed the app's stdin (through `agent`).
    feeds_stdin: bool,
    /// The guest's vsock CID and when the VM started, once it did.
    started: Mutex<Option<(u32, Instant)>>,
    stopping: AtomicBool,
    /// The VMM process's pid (0 until it runs).
    vmm_pid: AtomicU32,
}

impl VmControl {
    /// A VM's side: exec sessions with `token`, stops and attached clients' signals through
    /// `signals` (the VM's relay) with `stop_timeout`, attached clients' output from `hub`;
    /// `agent` is the host's side of the agent's boot session.
    pub fn new(
        token: Option<String>,
        signals: SignalInjector,
        stop_timeout: Duration,
        hub: Arc<OutputHub>,
        agent: Arc<HostWriter>,
    ) -> Self {
        VmControl {
            token,
            signals,
            stop_timeout,
            hub,
            agent,
            feeds_stdin: false,
            started: Mutex::new(None),
            stopping: AtomicBool::new(false),
            vmm_pid: AtomicU32::new(0),
        }
    }

    /// Attached clients' stdin goes to the app (the VM's relay leaves the app's stdin open for
    /// them).
    pub fn feeding_stdin(mut self) -> Self {
        self.feeds_stdin = true;
        self
    }

    /// Waits until the agent is up (true), or the VM ended first (false).
    fn wait_for_agent(&self) -> bool {
        while !self.agent.wait_connected(AGENT_POLL) {
            if self.hub.has_ended() {
                return false;
            }
        }
        true
    }

    /// Serves the control socket at `path`; it goes when the server drops.
    pub fn serve(self, path: &Path) -> Result<(ControlServer, Arc<VmControl>), ControlError> {
        let control = Arc::new(self);
        let server = ControlServer::bind(path, control.clone())?;
        Ok((server, control))
    }

    /// The VM was built: its guest has vsock CID `cid`, its VMM process is `vmm_pid`.
    pub fn vm_started(&self, cid: u32, vmm_pid: u32) {
        *self.lock_started() = Some((cid, Instant::now()));
        self.vmm_pid.store(vmm_pid, Ordering::SeqCst);
    }

    /// The VM ended, its app with `status` if known: attached clients get it last.
    pub fn vm_ended(&self, status: Option<ExitStatus>) {
        self.hub.end(status);
    }

    /// Connects to the agent's exec service. The agent binds it just after its boot session is
    /// up, so a connection refused in that moment is tried again, for at most
    /// [`EXEC_SERVICE_WAIT`] and while the VM lives.
    fn connect_exec(&self, cid: u32) -> Result<File, String> {
        let deadline = Instant::now() + EXEC_SERVICE_WAIT;
        loop {
            match crate::vmm::agent_vsock::connect(cid, EXEC_PORT) {
                Ok(agent) => return Ok(agent),
                Err(Errno::ECONNRESET | Errno::ECONNREFUSED)
                    if Instant::now() < deadline && !self.hub.has_ended() =>
                {
                    std::thread::sleep(EXEC_SERVICE_POLL);
                }
                Err(errno) => {
                    return Err(format!(
                        "cannot reach the agent's exec service at vsock {cid}:{EXEC_PORT}: {errno}"
                    ))
                }
            }
        }
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
        // Running once the agent is up: then exec and attached clients' stdin reach the app.
        let state = match started {
            _ if self.stopping.load(Ordering::SeqCst) => LiveState::Stopping,
            Some(_) if self.agent.wait_connected(Duration::ZERO) => LiveState::Running,
            _ => LiveState::Starting,
        };
        let pid = std::process::id();
        // Counted by the VMM process, in a page it shares with this supervisor.
        let shares = crate::vmm::devices::virtio::fs::share_bytes();
        // Before the VMM process runs, the supervisor stands for it.
        let vmm_pid = match self.vmm_pid.load(Ordering::SeqCst) {
            0 => pid,
            vmm_pid => vmm_pid,
        };
        Ok(LiveStatus {
            state,
            pid,
            vmm_pid,
            uptime_secs: started.map_or(0, |(_, at)| at.elapsed().as_secs()),
            share_read_bytes: shares.read,
            share_written_bytes: shares.written,
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
        let agent = self.connect_exec(cid)?;
        request.token = token.clone();
        Message::Control(Control::Exec(request))
            .write_to(&mut &agent)
            .map_err(|err| format!("cannot send the exec request to the agent: {err}"))?;
        Ok(agent)
    }

    fn attach(&self) -> Result<Arc<ClientQueue>, String> {
        self.hub
            .subscribe()
            .ok_or_else(|| "the VM has ended".to_string())
    }

    fn attach_input(&self, message: Message) -> Result<(), String> {
        match message {
            Message::Control(Control::Signal { signo }) => self
                .signals
                .send(signo)
                .map_err(|err| format!("cannot pass signal {signo} on to the app: {err}")),
            Message::Data(Stream::Stdin, _) | Message::Control(Control::StdinClose) => {
                // Without a stdin held open for attached clients, the app's stdin is podvm's
                // own or closed: the client's is dropped.
                if !self.feeds_stdin {
                    return Ok(());
                }
                if !self.wait_for_agent() {
                    return Err("the VM ended".into());
                }
                self.agent
                    .send(&message)
                    .map_err(|err| format!("cannot pass stdin on to the app: {err}"))
            }
            // No terminal for attached clients: nothing to resize.
            _ => Ok(()),
        }
    }
}
