//! One task and its VM: what Create makes (the bundle's rootfs mounted, a sandbox booted with
//! the container added), its phase (created, running, exited), the thread that waits for its
//! process, and the teardown that Delete (or a failed Create) runs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use containerd_shim::api::CreateTaskRequest;
use containerd_shim::protos::ttrpc;
use podvm::runtime::{
    ContainerConfig, ExecError, ExitStatus, Io, Sandbox, SandboxConfig, SandboxError,
};
use sha2::{Digest, Sha256};

use crate::exec::{Exec, ExecSpecError, MAX_EXECS};
use crate::phase::{Phase, StdioPaths};
use crate::rootfs::{self, RootfsError};
use crate::spec::{self, SpecError};
use crate::stdio::{self, StdioError};

/// The sandbox's directory in the bundle (made by the runtime, removed by its stop).
pub const SANDBOX_DIR: &str = "podvm";
/// The status reported for a task whose VM ended without its exit (containerd's own choice
/// for a dead shim).
pub const LOST_EXIT_STATUS: u32 = 255;

/// Errors of the task's requests; each maps to a ttrpc status containerd understands.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// The bundle's spec is unreadable or asks for something refused.
    #[error("task {id}: {source}")]
    Spec {
        /// The task.
        id: String,
        /// Why.
        source: SpecError,
    },
    /// The task's stdout or stderr could not be opened.
    #[error("task {id}: {source}")]
    Stdio {
        /// The task.
        id: String,
        /// Why.
        source: StdioError,
    },
    /// The rootfs could not be mounted or unmounted.
    #[error("task {id}: {source}")]
    Rootfs {
        /// The task.
        id: String,
        /// Why.
        source: RootfsError,
    },
    /// The runtime failed.
    #[error("task {id}: {source}")]
    Sandbox {
        /// The task.
        id: String,
        /// Why.
        source: SandboxError,
    },
    /// No such task (or exec process) in this shim.
    #[error("{0}: not found")]
    NotFound(String),
    /// The shim has its task already (one per shim).
    #[error("task {0}: this shim runs task {1} already")]
    AlreadyExists(String, String),
    /// The request does not fit the task's phase.
    #[error("task {id}: {why}")]
    Phase {
        /// The task.
        id: String,
        /// Why not.
        why: &'static str,
    },
    /// An exec's request is refused.
    #[error("task {id}: {source}")]
    ExecSpec {
        /// The task.
        id: String,
        /// Why.
        source: ExecSpecError,
    },
    /// The task holds [`MAX_EXECS`] exec processes already.
    #[error("task {0}: it holds {MAX_EXECS} exec processes already: delete some first")]
    TooManyExecs(String),
    /// An exec process failed.
    #[error("task {id}: {source}")]
    Exec {
        /// The task.
        id: String,
        /// Why.
        source: ExecError,
    },
    /// Not supported yet.
    #[error("{0} is not supported yet by the podvm shim")]
    Unimplemented(&'static str),
}

impl From<TaskError> for ttrpc::Error {
    fn from(err: TaskError) -> Self {
        let code = match &err {
            TaskError::NotFound(_) => ttrpc::Code::NOT_FOUND,
            TaskError::AlreadyExists(..) => ttrpc::Code::ALREADY_EXISTS,
            TaskError::Phase { .. } => ttrpc::Code::FAILED_PRECONDITION,
            TaskError::Unimplemented(_) => ttrpc::Code::UNIMPLEMENTED,
            TaskError::Spec { .. } | TaskError::Stdio { .. } | TaskError::ExecSpec { .. } => {
                ttrpc::Code::INVALID_ARGUMENT
            }
            TaskError::TooManyExecs(_) => ttrpc::Code::RESOURCE_EXHAUSTED,
            TaskError::Rootfs { .. } | TaskError::Sandbox { .. } | TaskError::Exec { .. } => {
                ttrpc::Code::INTERNAL
            }
        };
        log::error!("{err}");
        ttrpc::Error::RpcStatus(ttrpc::get_status(code, err.to_string()))
    }
}

/// The shim's one task.
pub struct Task {
    /// containerd's id of the task.
    pub id: String,
    /// The bundle directory.
    pub bundle: PathBuf,
    /// Its stdio.
    pub stdio: StdioPaths,
    /// Where it is.
    pub phase: Phase,
    /// The container's id in the sandbox.
    pub guest_id: String,
    /// Its VM.
    pub sandbox: Option<Arc<Sandbox>>,
    /// Its opened outputs, until Start hands them over.
    pub io: Option<Io>,
    /// The thread waiting for its process.
    pub monitor: Option<JoinHandle<()>>,
    /// Its exec processes by exec id, until deleted.
    pub execs: BTreeMap<String, Exec>,
}

/// The task behind a lock, and the condition Wait sleeps on until it exits.
#[derive(Default)]
pub struct Slot {
    task: Mutex<Option<Task>>,
    exited: Condvar,
}

impl Slot {
    /// The task, locked.
    pub fn lock(&self) -> MutexGuard<'_, Option<Task>> {
        self.task.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes the waiters after the phase changed to exited.
    pub fn notify_exit(&self) {
        self.exited.notify_all();
    }

    /// Waits, with the lock held in `guard`, until `done` holds.
    pub fn wait_until<'a>(
        &'a self,
        mut guard: MutexGuard<'a, Option<Task>>,
        mut done: impl FnMut(&Option<Task>) -> bool,
    ) -> MutexGuard<'a, Option<Task>> {
        while !done(&guard) {
            guard = self.exited.wait(guard).unwrap_or_else(|p| p.into_inner());
        }
        guard
    }

    /// Waits, with the lock held in `guard`, until the task has exited or is gone.
    pub fn wait_exit<'a>(
        &'a self,
        mut guard: MutexGuard<'a, Option<Task>>,
    ) -> MutexGuard<'a, Option<Task>> {
        while matches!(&*guard, Some(task) if !matches!(task.phase, Phase::Exited(..))) {
            guard = self.exited.wait(guard).unwrap_or_else(|p| p.into_inner());
        }
        guard
    }
}

/// The container's id in the sandbox: the task's id when it is an appc ACName the agent
/// takes, else one derived from it (containerd's ids may have capitals, `_` and `.`).
pub fn guest_id(task_id: &str) -> String {
    if podvm_protocol::check_container_id(task_id).is_ok() {
        return task_id.to_string();
    }
    let digest = Sha256::digest(task_id.as_bytes());
    let hex: String = digest.iter().take(12).map(|b| format!("{b:02x}")).collect();
    format!("task-{hex}")
}

/// A task's exit status as containerd reports it: the code, or 128+N for signal N.
pub fn exit_code(status: ExitStatus) -> u32 {
    u32::try_from(status.shell_code()).unwrap_or(LOST_EXIT_STATUS)
}

/// Builds the task of `req`: reads and checks the spec, opens the outputs, mounts the rootfs,
/// boots the VM and adds the container. Everything made is undone on failure.
pub fn create(req: &CreateTaskRequest) -> Result<Task, TaskError> {
    let id = req.id.clone();
    let bundle = PathBuf::from(&req.bundle);
    let spec = spec::read(&bundle)
        .and_then(|spec| spec::translate(&spec))
        .map_err(|source| TaskError::Spec {
            id: id.clone(),
            source,
        })?;
    if req.terminal {
        return Err(TaskError::Unimplemented("a terminal (ctr run -t)"));
    }
    let open = |stream, path: &str| {
        stdio::open_output(stream, path).map_err(|source| TaskError::Stdio {
            id: id.clone(),
            source,
        })
    };
    let io = Io {
        stdout: Box::new(open("stdout", &req.stdout)?),
        stderr: Box::new(open("stderr", &req.stderr)?),
    };
    let rootfs_dir = bundle.join("rootfs");
    rootfs::mount_all(&req.rootfs, &rootfs_dir).map_err(|source| TaskError::Rootfs {
        id: id.clone(),
        source,
    })?;
    let guest_id = guest_id(&id);
    let sandbox = boot(&bundle, &rootfs_dir, &guest_id, spec).map_err(|source| {
        let _ = rootfs::unmount_all(&rootfs_dir);
        TaskError::Sandbox {
            id: id.clone(),
            source,
        }
    })?;
    Ok(Task {
        id,
        bundle,
        stdio: StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
        },
        phase: Phase::Created,
        guest_id,
        sandbox: Some(Arc::new(sandbox)),
        io: Some(io),
        monitor: None,
        execs: BTreeMap::new(),
    })
}

/// Boots the task's VM and adds its container (the VM is stopped again if that fails).
fn boot(
    bundle: &Path,
    rootfs: &Path,
    guest_id: &str,
    spec: spec::TaskSpec,
) -> Result<Sandbox, SandboxError> {
    let sandbox = Sandbox::create(SandboxConfig {
        dir: bundle.join(SANDBOX_DIR),
        cpus: spec.cpus,
        memory_mib: spec.memory_mib,
        ..SandboxConfig::default()
    })?;
    let added = sandbox.add_container(ContainerConfig {
        id: guest_id.to_string(),
        rootfs: rootfs.to_path_buf(),
        process: spec.process,
        read_only: spec.read_only,
    });
    match added {
        Ok(()) => Ok(sandbox),
        Err(err) => {
            if let Err(stop) = sandbox.stop() {
                log::error!("stopping the sandbox after a failed create: {stop}");
            }
            Err(err)
        }
    }
}

/// Tears a task down once its process ended (or never started): joins its waiting thread,
/// removes the container, stops the VM, unmounts the rootfs. The first error, after doing all.
pub fn teardown(task: &mut Task) -> Result<(), TaskError> {
    for exec in task.execs.values() {
        exec.stdin_stop
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }
    if let Some(monitor) = task.monitor.take() {
        let _ = monitor.join();
    }
    let mut first = None;
    if let Some(sandbox) = task.sandbox.take() {
        match Arc::try_unwrap(sandbox) {
            Ok(sandbox) => {
                if let Err(err) = sandbox.remove(&task.guest_id) {
                    log::warn!("task {}: removing its container: {err}", task.id);
                }
                if let Err(source) = sandbox.stop() {
                    first.get_or_insert(TaskError::Sandbox {
                        id: task.id.clone(),
                        source,
                    });
                }
            }
            Err(_) => log::error!("task {}: its sandbox is still in use", task.id),
        }
    }
    if let Err(source) = rootfs::unmount_all(&task.bundle.join("rootfs")) {
        first.get_or_insert(TaskError::Rootfs {
            id: task.id.clone(),
            source,
        });
    }
    first.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containerd_ids_the_agent_refuses_get_a_stable_derived_one() {
        assert_eq!(guest_id("t1"), "t1");
        let derived = guest_id("My_Task.1");
        assert!(
            podvm_protocol::check_container_id(&derived).is_ok(),
            "{derived}"
        );
        assert_eq!(derived, guest_id("My_Task.1"));
        assert_ne!(derived, guest_id("My_Task.2"));
    }

    #[test]
    fn exit_codes_are_the_shells() {
        assert_eq!(exit_code(ExitStatus::Code(3)), 3);
        assert_eq!(exit_code(ExitStatus::Signal(9)), 137);
    }
}
