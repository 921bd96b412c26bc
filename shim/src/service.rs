//! The task API v2 service containerd 1.6 calls (`containerd.task.v2.Task`): Create, Start,
//! Wait, Kill, Delete, State, Pids, Connect, Shutdown, CloseIO and Stats on the shim's one
//! task; Exec, and Start, Wait, Kill, Delete, State, ResizePty and CloseIO with an exec id, on
//! its exec processes ([`crate::exec_service`]); Pause, Resume, Checkpoint, Update and a
//! terminal for the task's own process answer "not supported yet".
//!
//! The task's pid, as containerd sees it, is the shim's: the VM (vCPUs and devices) runs in it.

use std::sync::Arc;

use containerd_shim::api::{
    CloseIORequest, ConnectRequest, ConnectResponse, CreateTaskRequest, CreateTaskResponse,
    DeleteRequest, DeleteResponse, Empty, ExecProcessRequest, KillRequest, PidsRequest,
    PidsResponse, ResizePtyRequest, ShutdownRequest, StartRequest, StartResponse, StateRequest,
    StateResponse, StatsRequest, StatsResponse, Status, WaitRequest, WaitResponse,
};
use containerd_shim::event::Event;
use containerd_shim::protos::events::task::{TaskCreate, TaskDelete, TaskExit, TaskIO, TaskStart};
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::protos::topics;
use containerd_shim::protos::types::task::ProcessInfo;
use containerd_shim::util::{convert_to_any, timestamp};
use containerd_shim::{ExitSignal, TtrpcContext, TtrpcResult};
use podvm::runtime::{ContainerStatus, Sandbox, SandboxError};

use crate::events::EventQueue;
use crate::metrics;
use crate::phase::Phase;
use crate::task::{self, Slot, Task, TaskError, LOST_EXIT_STATUS};

/// Signals that end a task whose process was never started.
const ENDING_SIGNALS: [u32; 5] = [1, 2, 3, 9, 15];

/// The task service.
pub struct Service {
    pub(crate) slot: Arc<Slot>,
    pub(crate) events: Arc<EventQueue>,
    exit: Arc<ExitSignal>,
}

impl Service {
    /// A service without a task yet; `exit` is signalled by Shutdown once the task is gone.
    pub fn new(events: EventQueue, exit: Arc<ExitSignal>) -> Self {
        Self {
            slot: Arc::default(),
            events: Arc::new(events),
            exit,
        }
    }
}

/// The pid containerd sees for the task and its execs: the shim's (the VM runs in it).
pub(crate) fn pid() -> u32 {
    std::process::id()
}

/// The task `id`, checked against the shim's.
pub(crate) fn the_task<'a>(
    task: &'a mut Option<Task>,
    id: &str,
) -> Result<&'a mut Task, TaskError> {
    match task {
        Some(task) if task.id == id => Ok(task),
        _ => Err(TaskError::NotFound(format!("task {id}"))),
    }
}

pub(crate) fn event<E: Event + Send + 'static>(
    event: E,
) -> Box<dyn containerd_shim::protos::protobuf::MessageDyn + Send> {
    Box::new(event)
}

impl containerd_shim::Task for Service {
    fn create(&self, _: &TtrpcContext, req: CreateTaskRequest) -> TtrpcResult<CreateTaskResponse> {
        let mut slot = self.slot.lock();
        if let Some(existing) = slot.as_ref() {
            return Err(TaskError::AlreadyExists(req.id, existing.id.clone()).into());
        }
        log::info!("create {} in {}", req.id, req.bundle);
        let created = task::create(&req)?;
        self.events.send(
            topics::TASK_CREATE_EVENT_TOPIC,
            event(TaskCreate {
                container_id: req.id.clone(),
                bundle: req.bundle.clone(),
                rootfs: req.rootfs.clone(),
                io: MessageField::some(TaskIO {
                    stdin: req.stdin.clone(),
                    stdout: req.stdout.clone(),
                    stderr: req.stderr.clone(),
                    terminal: req.terminal,
                    ..TaskIO::default()
                }),
                checkpoint: req.checkpoint.clone(),
                pid: pid(),
                ..TaskCreate::default()
            }),
        );
        *slot = Some(created);
        Ok(CreateTaskResponse {
            pid: pid(),
            ..CreateTaskResponse::default()
        })
    }

    fn start(&self, _: &TtrpcContext, req: StartRequest) -> TtrpcResult<StartResponse> {
        if !req.exec_id.is_empty() {
            return Ok(self.exec_start(&req.id, &req.exec_id)?);
        }
        let mut slot = self.slot.lock();
        let task = the_task(&mut slot, &req.id)?;
        if task.phase != Phase::Created {
            return Err(TaskError::Phase {
                id: req.id,
                why: "it was started already",
            }
            .into());
        }
        let (Some(sandbox), Some(io)) = (task.sandbox.clone(), task.io.take()) else {
            return Err(TaskError::Phase {
                id: req.id,
                why: "its VM is gone",
            }
            .into());
        };
        let started = sandbox.start(&task.guest_id, io);
        // A process that could not start (a missing command) still ends and is waited for.
        if sandbox.status(&task.guest_id).ok() == Some(ContainerStatus::Running) {
            task.phase = Phase::Running;
            task.monitor = Some(self.monitor(sandbox, task)?);
            self.events.send(
                topics::TASK_START_EVENT_TOPIC,
                event(TaskStart {
                    container_id: req.id.clone(),
                    pid: pid(),
                    ..TaskStart::default()
                }),
            );
        }
        started.map_err(|source| TaskError::Sandbox {
            id: req.id.clone(),
            source,
        })?;
        Ok(StartResponse {
            pid: pid(),
            ..StartResponse::default()
        })
    }

    fn wait(&self, _: &TtrpcContext, req: WaitRequest) -> TtrpcResult<WaitResponse> {
        if !req.exec_id.is_empty() {
            return Ok(self.exec_wait(&req.id, &req.exec_id)?);
        }
        let slot = self.slot.lock();
        let mut slot = self.slot.wait_exit(slot);
        let task = the_task(&mut slot, &req.id)?;
        let Phase::Exited(status, at) = &task.phase else {
            return Err(TaskError::NotFound(format!("task {}", req.id)).into());
        };
        Ok(WaitResponse {
            exit_status: *status,
            exited_at: MessageField::some(at.clone()),
            ..WaitResponse::default()
        })
    }

    fn kill(&self, _: &TtrpcContext, req: KillRequest) -> TtrpcResult<Empty> {
        if !req.exec_id.is_empty() {
            self.exec_kill(&req.id, &req.exec_id, req.signal)?;
            return Ok(Empty::default());
        }
        let mut slot = self.slot.lock();
        let task = the_task(&mut slot, &req.id)?;
        match task.phase {
            Phase::Created => {
                if ENDING_SIGNALS.contains(&req.signal) {
                    self.exited(task, 128 + req.signal);
                }
                Ok(Empty::default())
            }
            Phase::Exited(..) => Err(TaskError::NotFound(format!(
                "task {}: process already finished",
                req.id
            ))
            .into()),
            Phase::Running => {
                let sandbox = task.sandbox.clone();
                let guest_id = task.guest_id.clone();
                drop(slot);
                let signo = i32::try_from(req.signal).unwrap_or(i32::MAX);
                match sandbox.map(|s| s.signal(&guest_id, signo)) {
                    Some(Ok(())) => Ok(Empty::default()),
                    Some(Err(SandboxError::WrongState { .. })) | None => Err(TaskError::NotFound(
                        format!("task {}: process already finished", req.id),
                    )
                    .into()),
                    Some(Err(source)) => Err(TaskError::Sandbox { id: req.id, source }.into()),
                }
            }
        }
    }

    fn delete(&self, _: &TtrpcContext, req: DeleteRequest) -> TtrpcResult<DeleteResponse> {
        if !req.exec_id.is_empty() {
            return Ok(self.exec_delete(&req.id, &req.exec_id)?);
        }
        let mut slot = self.slot.lock();
        let task = the_task(&mut slot, &req.id)?;
        let (status, at) = match &task.phase {
            Phase::Running => {
                return Err(TaskError::Phase {
                    id: req.id,
                    why: "it is running: kill it first",
                }
                .into())
            }
            Phase::Created => (128 + 9, timestamp().unwrap_or_default()),
            Phase::Exited(status, at) => (*status, at.clone()),
        };
        let Some(mut task) = slot.take() else {
            return Err(TaskError::NotFound(format!("task {}", req.id)).into());
        };
        drop(slot);
        let torn_down = task::teardown(&mut task);
        self.events.send(
            topics::TASK_DELETE_EVENT_TOPIC,
            event(TaskDelete {
                container_id: task.id.clone(),
                pid: pid(),
                exit_status: status,
                exited_at: MessageField::some(at.clone()),
                ..TaskDelete::default()
            }),
        );
        self.slot.notify_exit();
        torn_down?;
        Ok(DeleteResponse {
            pid: pid(),
            exit_status: status,
            exited_at: MessageField::some(at),
            ..DeleteResponse::default()
        })
    }

    fn state(&self, _: &TtrpcContext, req: StateRequest) -> TtrpcResult<StateResponse> {
        if !req.exec_id.is_empty() {
            return Ok(self.exec_state(&req.id, &req.exec_id)?);
        }
        let mut slot = self.slot.lock();
        let task = the_task(&mut slot, &req.id)?;
        let (status, exit_status, exited_at) = match &task.phase {
            Phase::Created => (Status::CREATED, 0, MessageField::none()),
            Phase::Running => (Status::RUNNING, 0, MessageField::none()),
            Phase::Exited(code, at) => (Status::STOPPED, *code, MessageField::some(at.clone())),
        };
        Ok(StateResponse {
            id: task.id.clone(),
            bundle: task.bundle.to_string_lossy().into_owned(),
            pid: pid(),
            status: status.into(),
            stdin: task.stdio.stdin.clone(),
            stdout: task.stdio.stdout.clone(),
            stderr: task.stdio.stderr.clone(),
            terminal: false,
            exit_status,
            exited_at,
            ..StateResponse::default()
        })
    }

    fn pids(&self, _: &TtrpcContext, req: PidsRequest) -> TtrpcResult<PidsResponse> {
        let mut slot = self.slot.lock();
        let task = the_task(&mut slot, &req.id)?;
        let mut processes = vec![ProcessInfo {
            pid: pid(),
            ..ProcessInfo::default()
        }];
        // Each running exec, named by its exec id (it runs in the same VM: the same pid).
        for (exec_id, exec) in &task.execs {
            if exec.phase == Phase::Running {
                processes.push(ProcessInfo {
                    pid: pid(),
                    info: MessageField::some(crate::exec::process_details(exec_id)),
                    ..ProcessInfo::default()
                });
            }
        }
        Ok(PidsResponse {
            processes,
            ..PidsResponse::default()
        })
    }

    fn connect(&self, _: &TtrpcContext, _req: ConnectRequest) -> TtrpcResult<ConnectResponse> {
        Ok(ConnectResponse {
            shim_pid: pid(),
            task_pid: pid(),
            ..ConnectResponse::default()
        })
    }

    fn shutdown(&self, _: &TtrpcContext, _req: ShutdownRequest) -> TtrpcResult<Empty> {
        if self.slot.lock().is_none() {
            log::info!("shutdown: no task left, the shim exits");
            self.exit.signal();
        }
        Ok(Empty::default())
    }

    fn close_io(&self, _: &TtrpcContext, req: CloseIORequest) -> TtrpcResult<Empty> {
        if !req.exec_id.is_empty() {
            return Ok(self.exec_close_io(&req)?);
        }
        // The container's stdin is not forwarded (it reads end-of-file already).
        let mut slot = self.slot.lock();
        the_task(&mut slot, &req.id)?;
        Ok(Empty::default())
    }

    fn stats(&self, _: &TtrpcContext, req: StatsRequest) -> TtrpcResult<StatsResponse> {
        let mut slot = self.slot.lock();
        let task = the_task(&mut slot, &req.id)?;
        let Some(sandbox) = task.sandbox.as_ref() else {
            return Err(TaskError::NotFound(format!("task {}: its VM is gone", req.id)).into());
        };
        let metrics = metrics::of(&sandbox.stats());
        let any = convert_to_any(Box::new(metrics))
            .map_err(|err| containerd_shim::protos::ttrpc::Error::Others(err.to_string()))?;
        Ok(StatsResponse {
            stats: MessageField::some(any),
            ..StatsResponse::default()
        })
    }

    fn exec(&self, _: &TtrpcContext, req: ExecProcessRequest) -> TtrpcResult<Empty> {
        self.exec_add(&req)?;
        Ok(Empty::default())
    }

    fn resize_pty(&self, _: &TtrpcContext, req: ResizePtyRequest) -> TtrpcResult<Empty> {
        if req.exec_id.is_empty() {
            return Err(TaskError::Unimplemented("a terminal for the task's process").into());
        }
        Ok(self.exec_resize(&req)?)
    }
}

impl Service {
    /// Starts the thread that waits for the task's process, records its exit and tells
    /// containerd (TaskExit), then wakes the waiters.
    fn monitor(
        &self,
        sandbox: Arc<Sandbox>,
        task: &Task,
    ) -> Result<std::thread::JoinHandle<()>, TaskError> {
        let slot = self.slot.clone();
        let events = self.events.clone();
        let guest_id = task.guest_id.clone();
        let id = task.id.clone();
        std::thread::Builder::new()
            .name("task-wait".into())
            .spawn(move || {
                let status = match sandbox.wait(&guest_id, None) {
                    Ok(status) => task::exit_code(status),
                    Err(err) => {
                        log::error!("task {id}: no exit status: {err}");
                        LOST_EXIT_STATUS
                    }
                };
                drop(sandbox);
                let mut guard = slot.lock();
                if let Some(task) = guard.as_mut().filter(|t| t.id == id) {
                    exited_in(task, status, &events);
                }
                drop(guard);
                slot.notify_exit();
            })
            .map_err(|err| TaskError::Sandbox {
                id: task.id.clone(),
                source: SandboxError::Thread(err),
            })
    }

    /// Records the exit of a task that never started.
    fn exited(&self, task: &mut Task, status: u32) {
        exited_in(task, status, &self.events);
        self.slot.notify_exit();
    }
}

/// Marks `task` exited with `status` now and queues its TaskExit.
fn exited_in(task: &mut Task, status: u32, events: &EventQueue) {
    let at = timestamp().unwrap_or_default();
    task.phase = Phase::Exited(status, at.clone());
    events.send(
        topics::TASK_EXIT_EVENT_TOPIC,
        event(TaskExit {
            container_id: task.id.clone(),
            id: task.id.clone(),
            pid: pid(),
            exit_status: status,
            exited_at: MessageField::some(at),
            ..TaskExit::default()
        }),
    );
}
