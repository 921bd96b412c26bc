//! A live sandbox: a VM booted with the agent and no workload, whose containers are added,
//! started, signalled, waited for, exec'd into and removed while it runs, then stopped with
//! everything it made on the host.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use podvm_protocol::{
    BootSpec, ContainerErrorKind, ContainerOp, ContainerRootfs, ContainerSpec, Control,
    ExecRequest, ExitStatus, IdError, Message, ShareSpec, EXEC_PORT,
};

use super::boot;
use super::config::{
    ContainerConfig, ContainerStatus, ExecConfig, Io, SandboxConfig, SandboxStats,
};
use super::exec::ExecProcess;
use super::session::{Events, SessionError, Waited};
use super::share::{ContainerRoot, ContainerShare, ShareError, SHARE_TAG};
use crate::agent_link::{AgentLink, HostWriter};
use crate::vmm::devices::virtio::fs::FsShare;
use crate::vmm::{self, VmConfig, VmHandle, VmOutputs, VmStats, VmmError};
use crate::{artifacts, initramfs};

/// How long after the grace period of a stop the VM may take to power off before it is killed.
const POWER_OFF_PATIENCE: Duration = Duration::from_secs(30);

/// Errors of the runtime; each names what failed.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The sandbox directory could not be made or removed.
    #[error("sandbox {path}: {what}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The step.
        what: &'static str,
        /// Why.
        source: io::Error,
    },
    /// A kernel or agent was not found.
    #[error(transparent)]
    Artifact(#[from] artifacts::ArtifactError),
    /// The initramfs could not be built.
    #[error(transparent)]
    Initramfs(#[from] initramfs::InitramfsError),
    /// The boot spec could not be encoded.
    #[error("cannot encode the boot spec: {0}")]
    Spec(podvm_protocol::ProtocolError),
    /// The VM's thread could not be started.
    #[error("cannot start the VM's thread: {0}")]
    Thread(io::Error),
    /// The VM could not be built, or failed while it ran.
    #[error(transparent)]
    Vmm(#[from] VmmError),
    /// The agent did not come up.
    #[error("the sandbox's agent did not come up: {reason}\n--- last guest console lines ---\n{console}")]
    Boot {
        /// What happened instead.
        reason: String,
        /// The end of the guest's console log.
        console: String,
    },
    /// The share of the containers' roots failed.
    #[error(transparent)]
    Share(#[from] ShareError),
    /// A container id is invalid.
    #[error("container {id:?}: bad id: {source}")]
    BadId {
        /// The id.
        id: String,
        /// What is wrong.
        source: IdError,
    },
    /// A container with the id exists.
    #[error("container {0}: the sandbox has one with this id already")]
    Exists(String),
    /// No container has the id.
    #[error("container {0}: no such container in the sandbox")]
    NotFound(String),
    /// The request is not possible in the container's state.
    #[error("container {id}: {why}")]
    WrongState {
        /// The container.
        id: String,
        /// Why not.
        why: &'static str,
    },
    /// A wait ran out of time.
    #[error("container {id}: still running after {waited:?}")]
    StillRunning {
        /// The container.
        id: String,
        /// How long the wait was.
        waited: Duration,
    },
    /// What is asked is not supported yet.
    #[error("container {id}: {what} is not supported yet")]
    Unsupported {
        /// The container.
        id: String,
        /// What.
        what: &'static str,
    },
    /// The agent refused a request, or did not answer.
    #[error(transparent)]
    Request(#[from] SessionError),
    /// An exec session failed.
    #[error("container {id}: exec: {reason}")]
    Exec {
        /// The container.
        id: String,
        /// Why.
        reason: String,
    },
    /// The VM ended while the request waited.
    #[error("the sandbox's VM has ended")]
    VmEnded,
}

/// One container of the sandbox.
#[derive(Debug)]
struct Entry {
    root: Option<ContainerRoot>,
    status: ContainerStatus,
}

/// A running sandbox; see the module docs. Dropping it without [`Sandbox::stop`] kills the VM
/// and removes what it made, silently.
#[derive(Debug)]
pub struct Sandbox {
    dir: PathBuf,
    config: SandboxConfig,
    share: Option<ContainerShare>,
    containers: Mutex<BTreeMap<String, Entry>>,
    events: Arc<Events>,
    writer: Arc<HostWriter>,
    vm: VmHandle,
    thread: Option<JoinHandle<Result<VmStats, VmmError>>>,
    token: String,
    started: Instant,
}

impl Sandbox {
    /// Boots the sandbox's VM: the agent alone, waiting for containers, with the share of
    /// their roots mounted. Returns once the agent is up.
    pub fn create(config: SandboxConfig) -> Result<Self, SandboxError> {
        // A fresh directory of its own (never one that is there already: it is removed at
        // the end), root's alone.
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&config.dir)
            .map_err(|source| SandboxError::Dir {
                path: config.dir.clone(),
                what: "create",
                source,
            })?;
        let share = match ContainerShare::create(&config.dir) {
            Ok(share) => share,
            Err(err) => {
                let _ = std::fs::remove_dir(&config.dir);
                return Err(err.into());
            }
        };
        Self::boot(config, share)
    }

    fn boot(config: SandboxConfig, share: ContainerShare) -> Result<Self, SandboxError> {
        let dir = config.dir.clone();
        let token = uuid::Uuid::new_v4().simple().to_string();
        let booted = start_vm(&config, &share, &token);
        let (vm, thread, events, writer) = match booted {
            Ok(started) => started,
            Err(err) => {
                let _ = share.destroy();
                let _ = remove_sandbox_dir(&dir);
                return Err(err);
            }
        };
        let sandbox = Self {
            dir,
            share: Some(share),
            containers: Mutex::new(BTreeMap::new()),
            events,
            writer,
            vm,
            thread: Some(thread),
            token,
            started: Instant::now(),
            config,
        };
        let reason = match sandbox.events.wait_ready(sandbox.config.boot_timeout) {
            Waited::Done(()) => return Ok(sandbox),
            Waited::VmEnded => "the VM ended".to_string(),
            Waited::TimedOut => format!("no agent within {:?}", sandbox.config.boot_timeout),
        };
        let console = console_tail(&sandbox.dir.join("console.log"), 25);
        let mut sandbox = sandbox;
        match sandbox.teardown(false) {
            Err(SandboxError::Vmm(err)) => Err(SandboxError::Vmm(err)),
            _ => Err(SandboxError::Boot { reason, console }),
        }
    }

    /// The sandbox's private directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The guest's vsock CID.
    pub fn cid(&self) -> u32 {
        self.vm.cid()
    }

    fn table(&self) -> MutexGuard<'_, BTreeMap<String, Entry>> {
        self.containers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn share(&self) -> Result<&ContainerShare, SandboxError> {
        self.share.as_ref().ok_or(SandboxError::VmEnded)
    }

    fn request(&self, id: &str, op: ContainerOp, message: Control) -> Result<(), SandboxError> {
        let timeout = self.config.request_timeout;
        Ok(self
            .events
            .request(&self.writer, id, op, message, timeout)?)
    }

    /// Adds a container: fills its root in the share from the image tree, then has the agent
    /// create it (its process waits for [`Self::start`]).
    pub fn add_container(&self, config: ContainerConfig) -> Result<(), SandboxError> {
        let id = config.id.clone();
        podvm_protocol::check_container_id(&id).map_err(|source| SandboxError::BadId {
            id: id.clone(),
            source,
        })?;
        if config.process.stdin {
            return Err(SandboxError::Unsupported {
                id,
                what: "stdin for a container",
            });
        }
        if self.table().contains_key(&id) {
            return Err(SandboxError::Exists(id));
        }
        let share = self.share()?;
        let root = share.fill(&id, &config.rootfs)?;
        let spec = ContainerSpec {
            id: id.clone(),
            rootfs: ContainerRootfs {
                share: SHARE_TAG.to_string(),
                path: root.share_path(),
                read_only: config.read_only,
            },
            process: config.process,
        };
        let created = self.request(
            &id,
            ContainerOp::Create,
            Control::CreateContainer(Box::new(spec)),
        );
        if let Err(err) = created {
            let _ = share.release(root);
            return Err(err);
        }
        self.table().insert(
            id,
            Entry {
                root: Some(root),
                status: ContainerStatus::Created,
            },
        );
        Ok(())
    }

    /// Starts a created container's process; its output goes to `io`.
    pub fn start(&self, id: &str, io: Io) -> Result<(), SandboxError> {
        self.expect(id, ContainerStatus::Created, "it was started already")?;
        self.events.set_outputs(id, (io.stdout, io.stderr));
        let request = Control::StartContainer { id: id.to_string() };
        if let Err(err) = self.request(id, ContainerOp::Start, request) {
            // A process that could not start still ends (127 or 126) and can be waited for.
            if matches!(
                err,
                SandboxError::Request(SessionError::Refused {
                    kind: ContainerErrorKind::BadProcess,
                    ..
                })
            ) {
                self.set_status(id, ContainerStatus::Running);
            }
            return Err(err);
        }
        self.set_status(id, ContainerStatus::Running);
        Ok(())
    }

    /// Waits until a started container's process ended and all its output was written;
    /// `None` waits as long as it takes (or until the VM ends).
    pub fn wait(&self, id: &str, timeout: Option<Duration>) -> Result<ExitStatus, SandboxError> {
        match self.status(id)? {
            ContainerStatus::Exited(status) => return Ok(status),
            ContainerStatus::Created => {
                return Err(SandboxError::WrongState {
                    id: id.to_string(),
                    why: "it was not started",
                })
            }
            ContainerStatus::Running => {}
        }
        match self.events.wait_exit(id, timeout) {
            Waited::Done(status) => {
                self.set_status(id, ContainerStatus::Exited(status));
                Ok(status)
            }
            Waited::VmEnded => Err(SandboxError::VmEnded),
            Waited::TimedOut => Err(SandboxError::StillRunning {
                id: id.to_string(),
                waited: timeout.unwrap_or_default(),
            }),
        }
    }

    /// Sends signal `signo` to a running container's process group.
    pub fn signal(&self, id: &str, signo: i32) -> Result<(), SandboxError> {
        self.expect(id, ContainerStatus::Running, "it is not running")?;
        let request = Control::SignalContainer {
            id: id.to_string(),
            signo,
        };
        self.request(id, ContainerOp::Signal, request)
    }

    /// Runs a command in a container's root until it ends; its output goes to `io`, its stdin
    /// is closed ([`Self::exec_start`] and [`ExecProcess::wait`]).
    pub fn exec(&self, id: &str, exec: ExecConfig, io: Io) -> Result<ExitStatus, SandboxError> {
        let process = self.exec_start(id, exec, io, None)?;
        process.wait(None).map_err(|err| SandboxError::Exec {
            id: id.to_string(),
            reason: err.to_string(),
        })
    }

    /// Starts a command in a container's root and returns at once with its handle; its
    /// output goes to `io`, its stdin comes from `stdin` (closed at once when `None`).
    pub fn exec_start(
        &self,
        id: &str,
        exec: ExecConfig,
        io: Io,
        stdin: Option<Box<dyn Read + Send>>,
    ) -> Result<ExecProcess, SandboxError> {
        self.status(id)?;
        let failed = |reason: String| SandboxError::Exec {
            id: id.to_string(),
            reason,
        };
        let stream = vmm::agent_vsock::connect(self.vm.cid(), EXEC_PORT)
            .map_err(|errno| failed(format!("cannot reach the agent's exec service: {errno}")))?;
        let request = ExecRequest {
            token: self.token.clone(),
            command: exec.command,
            env: exec.env,
            workdir: exec.workdir,
            user: exec.user,
            group: exec.group,
            tty: exec.tty,
            supplementary_gids: exec.supplementary_gids,
            app: Some(id.to_string()),
        };
        Message::Control(Control::Exec(request))
            .write_to(&mut &stream)
            .map_err(|err| failed(format!("cannot send the request: {err}")))?;
        ExecProcess::start(id, stream, io, stdin)
            .map_err(|err| failed(format!("cannot start its threads: {err}")))
    }

    /// Removes a container that is not running: the agent unmounts and forgets it, then its
    /// root is emptied out of the share.
    pub fn remove(&self, id: &str) -> Result<(), SandboxError> {
        if self.status(id)? == ContainerStatus::Running {
            return Err(SandboxError::WrongState {
                id: id.to_string(),
                why: "it is running: signal it and wait for its end first",
            });
        }
        let request = Control::RemoveContainer { id: id.to_string() };
        self.request(id, ContainerOp::Remove, request)?;
        let root = self.table().remove(id).and_then(|entry| entry.root);
        self.events.forget(id);
        if let Some(root) = root {
            self.share()?.release(root)?;
        }
        Ok(())
    }

    /// A container's status.
    pub fn status(&self, id: &str) -> Result<ContainerStatus, SandboxError> {
        self.table()
            .get(id)
            .map(|entry| entry.status)
            .ok_or_else(|| SandboxError::NotFound(id.to_string()))
    }

    /// The sandbox's figures now: the VM's memory and vCPU time, its containers.
    pub fn stats(&self) -> SandboxStats {
        let live = self.vm.stats();
        let mut containers = (0, 0, 0);
        for entry in self.table().values() {
            match entry.status {
                ContainerStatus::Created => containers.0 += 1,
                ContainerStatus::Running => containers.1 += 1,
                ContainerStatus::Exited(_) => containers.2 += 1,
            }
        }
        SandboxStats {
            uptime: self.started.elapsed(),
            memory_mib: self.config.memory_mib,
            guest_resident_kib: live.memory.guest_resident_kib,
            process_rss_kib: live.memory.process_rss_kib,
            vcpu_time_ms: live.vcpu_time_ms,
            vcpus: live.vcpus,
            containers,
        }
    }

    /// Stops the sandbox: the agent stops every process (SIGTERM, SIGKILL after the grace
    /// period) and powers off (the VM is killed if it does not), then every container's root
    /// is unmounted and the sandbox's directory removed.
    pub fn stop(mut self) -> Result<(), SandboxError> {
        self.teardown(true)
    }

    fn expect(
        &self,
        id: &str,
        want: ContainerStatus,
        why: &'static str,
    ) -> Result<(), SandboxError> {
        if self.status(id)? == want {
            Ok(())
        } else {
            Err(SandboxError::WrongState {
                id: id.to_string(),
                why,
            })
        }
    }

    fn set_status(&self, id: &str, status: ContainerStatus) {
        if let Some(entry) = self.table().get_mut(id) {
            entry.status = status;
        }
    }

    /// Ends the VM (gracefully: by the agent), then removes what the sandbox made; the first
    /// error, after doing all it can.
    fn teardown(&mut self, graceful: bool) -> Result<(), SandboxError> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        let mut first_error = None;
        if graceful {
            let grace_ms = u64::try_from(self.config.stop_grace.as_millis()).unwrap_or(u64::MAX);
            let shutdown = Message::Control(Control::Shutdown { grace_ms });
            let patience = self.config.stop_grace + POWER_OFF_PATIENCE;
            let sent = self.writer.send(&shutdown).is_ok();
            if !sent || !self.events.wait_vm_end(patience) {
                self.vm.kill();
            }
        } else {
            self.vm.kill();
        }
        match thread.join() {
            Ok(Ok(_)) => {}
            Ok(Err(err)) => first_error = Some(SandboxError::Vmm(err)),
            Err(_) => first_error = Some(SandboxError::VmEnded),
        }
        self.events.vm_ended();
        let roots: Vec<ContainerRoot> = std::mem::take(&mut *self.table())
            .into_values()
            .filter_map(|entry| entry.root)
            .collect();
        if let Some(share) = self.share.take() {
            for root in roots {
                if let Err(err) = share.release(root) {
                    first_error.get_or_insert(err.into());
                }
            }
            if let Err(err) = share.destroy() {
                first_error.get_or_insert(err.into());
            }
        }
        if let Err(source) = remove_sandbox_dir(&self.dir) {
            first_error.get_or_insert(SandboxError::Dir {
                path: self.dir.clone(),
                what: "remove",
                source,
            });
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = self.teardown(false);
    }
}

/// The running VM's parts: its handle, its thread, the agent's events and the writer of the
/// boot session.
type Started = (
    VmHandle,
    JoinHandle<Result<VmStats, VmmError>>,
    Arc<Events>,
    Arc<HostWriter>,
);

/// Starts the VM: a thread of its own starts the VM's VMM process and follows it to its end
/// (the VMM process dies with that thread); returns once the VM is built (not yet booted).
fn start_vm(
    config: &SandboxConfig,
    share: &ContainerShare,
    token: &str,
) -> Result<Started, SandboxError> {
    let spec = BootSpec {
        sandbox: true,
        shares: vec![ShareSpec {
            tag: SHARE_TAG.to_string(),
            read_only: false,
        }],
        exec_token: Some(token.to_string()),
        stop_grace_ms: u64::try_from(config.stop_grace.as_millis()).ok(),
        ..BootSpec::default()
    };
    let kernel = match &config.kernel {
        Some(path) => path.clone(),
        None => artifacts::kernel()?,
    };
    let agent = match &config.agent {
        Some(path) => path.clone(),
        None => artifacts::agent()?,
    };
    let vm_config = VmConfig {
        kernel,
        kernel_chosen_by_user: config.kernel.is_some(),
        cmdline: boot::kernel_cmdline(true, &config.kernel_args),
        initramfs: initramfs::pack(&agent, None)?,
        memory_mib: config.memory_mib,
        vcpus: config.cpus,
        shares: vec![FsShare {
            tag: SHARE_TAG.to_string(),
            host_dir: share.dir().to_path_buf(),
            read_only: false,
        }],
        nets: Vec::new(),
    };
    let log = config.dir.join("console.log");
    let console =
        boot::create_console_log(&log, None, true).map_err(|source| SandboxError::Dir {
            path: log.clone(),
            what: "create the console log",
            source,
        })?;
    let frame = Message::Control(Control::Boot(Box::new(spec)))
        .encode()
        .map_err(SandboxError::Spec)?;
    let events = Events::new();
    let writer = HostWriter::new();
    let (link, _report) = AgentLink::new(Box::new(io::sink()), Box::new(io::sink()));
    let link = link
        .with_boot_spec(frame)
        .with_writer(writer.clone())
        .with_apps(events.outputs())
        .with_control_hook(events.hook());
    let (handle_tx, handle_rx) = mpsc::channel();
    let ended = events.clone();
    let thread = std::thread::Builder::new()
        .name("sandbox-vm".into())
        .spawn(move || {
            let outputs = VmOutputs {
                console: Box::new(console),
                agent: Box::new(link),
                on_start: Some(Box::new(move |handle: VmHandle| {
                    let _ = handle_tx.send(handle);
                })),
            };
            let result = vmm::process::run(vm_config, outputs);
            ended.vm_ended();
            result
        })
        .map_err(SandboxError::Thread)?;
    match handle_rx.recv() {
        Ok(handle) => Ok((handle, thread, events, writer)),
        Err(_) => Err(match thread.join() {
            Ok(Err(err)) => SandboxError::Vmm(err),
            _ => SandboxError::VmEnded,
        }),
    }
}

/// Removes the sandbox's directory once its share is gone: the console log, then itself.
fn remove_sandbox_dir(dir: &Path) -> io::Result<()> {
    match std::fs::remove_file(dir.join("console.log")) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => return Err(err),
        _ => {}
    }
    std::fs::remove_dir(dir)
}

/// The last `lines` lines of the console log.
fn console_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read(path)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sandbox_can_be_shared_between_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<Sandbox>();
    }

    #[test]
    fn a_sandbox_that_cannot_boot_leaves_no_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sandbox_dir = dir.path().join("sandbox");
        let config = SandboxConfig {
            dir: sandbox_dir.clone(),
            kernel: Some(dir.path().join("no-such-kernel")),
            agent: Some(dir.path().join("no-such-agent")),
            ..SandboxConfig::default()
        };
        let err = Sandbox::create(config).expect_err("no agent to pack");
        assert!(matches!(err, SandboxError::Initramfs(_)), "{err}");
        assert!(!sandbox_dir.exists(), "{err}");
    }

    #[test]
    fn an_existing_directory_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = SandboxConfig {
            dir: dir.path().to_path_buf(),
            ..SandboxConfig::default()
        };
        let err = Sandbox::create(config).expect_err("exists");
        assert!(matches!(err, SandboxError::Dir { .. }), "{err}");
        assert!(dir.path().exists(), "what was there stays");
    }
}
