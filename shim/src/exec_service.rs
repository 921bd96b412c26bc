//! The task API's requests about exec processes (a non-empty `exec_id`): Exec adds one
//! (TaskExecAdded), Start starts it in the task's VM (TaskExecStarted), a thread waits for its
//! end (TaskExit with the exec id), and Wait, Kill, State, ResizePty, CloseIO and Delete act
//! on it. Events are queued under the task's lock, so they reach containerd in this order.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use containerd_shim::api::{
    CloseIORequest, DeleteResponse, Empty, ExecProcessRequest, ResizePtyRequest, StartResponse,
    StateResponse, Status, WaitResponse,
};
use containerd_shim::protos::events::task::{TaskExecAdded, TaskExecStarted, TaskExit};
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::protos::topics;
use containerd_shim::util::timestamp;
use podvm::runtime::{ExecProcess, Io, SandboxError};

use crate::exec::{self, Exec, MAX_EXECS};
use crate::phase::{Phase, StdioPaths};
use crate::service::{event, pid, the_task, Service};
use crate::stdio;
use crate::task::{self, Task, TaskError, LOST_EXIT_STATUS};

/// Exec `exec_id` of `task`.
fn the_exec<'a>(task: &'a mut Task, exec_id: &str) -> Result<&'a mut Exec, TaskError> {
    let id = task.id.clone();
    task.execs
        .get_mut(exec_id)
        .ok_or_else(|| TaskError::NotFound(format!("task {id}: exec {exec_id}")))
}

fn stdio_error(id: &str) -> impl Fn(stdio::StdioError) -> TaskError + '_ {
    move |source| TaskError::Stdio {
        id: id.to_string(),
        source,
    }
}

impl Service {
    /// Exec: checks and records the exec (nothing starts until its Start).
    pub(crate) fn exec_add(&self, req: &ExecProcessRequest) -> Result<(), TaskError> {
        let spec =
            exec::parse(&req.exec_id, req.spec.as_ref(), req.terminal).map_err(|source| {
                TaskError::ExecSpec {
                    id: req.id.clone(),
                    source,
                }
            })?;
        let mut slot = self.slot.lock();
        let task = the_task(&mut slot, &req.id)?;
        if task.phase != Phase::Running {
            return Err(TaskError::Phase {
                id: req.id.clone(),
                why: "its process is not running",
            });
        }
        if task.execs.contains_key(&req.exec_id) {
            return Err(TaskError::AlreadyExists(
                format!("{} exec {}", req.id, req.exec_id),
                task.id.clone(),
            ));
        }
        if task.execs.len() >= MAX_EXECS {
            return Err(TaskError::TooManyExecs(req.id.clone()));
        }
        let stdin_stop = Arc::new(AtomicBool::new(false));
        let opened = open_stdio(req, stdin_stop.clone()).map_err(stdio_error(&req.id))?;
        let (io, stdin) = opened;
        task.execs.insert(
            req.exec_id.clone(),
            Exec {
                spec: Some(spec),
                stdio: StdioPaths {
                    stdin: req.stdin.clone(),
                    stdout: req.stdout.clone(),
                    stderr: req.stderr.clone(),
                },
                terminal: req.terminal,
                phase: Phase::Created,
                io: Some(io),
                stdin,
                stdin_stop,
                process: None,
            },
        );
        log::info!("exec {} added to task {}", req.exec_id, req.id);
        self.events.send(
            topics::TASK_EXEC_ADDED_EVENT_TOPIC,
            event(TaskExecAdded {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                ..TaskExecAdded::default()
            }),
        );
        Ok(())
    }

    /// Start of an exec: runs it in the task's container, with a thread waiting for its end.
    pub(crate) fn exec_start(&self, id: &str, exec_id: &str) -> Result<StartResponse, TaskError> {
        let mut slot = self.slot.lock();
        let task = the_task(&mut slot, id)?;
        let (Some(sandbox), Phase::Running) = (task.sandbox.clone(), &task.phase) else {
            return Err(TaskError::Phase {
                id: id.to_string(),
                why: "its process is not running",
            });
        };
        let guest_id = task.guest_id.clone();
        let exec = the_exec(task, exec_id)?;
        let (Some(spec), Some(io)) = (exec.spec.take(), exec.io.take()) else {
            return Err(TaskError::Phase {
                id: id.to_string(),
                why: "the exec was started already",
            });
        };
        let stdin = exec
            .stdin
            .take()
            .map(|source| Box::new(source) as Box<dyn std::io::Read + Send>);
        let process = sandbox
            .exec_start(&guest_id, spec.config, io, stdin)
            .map_err(|source| TaskError::Sandbox {
                id: id.to_string(),
                source,
            })?;
        let process = Arc::new(process);
        exec.process = Some(process.clone());
        exec.phase = Phase::Running;
        self.exec_monitor(id, exec_id, process)?;
        self.events.send(
            topics::TASK_EXEC_STARTED_EVENT_TOPIC,
            event(TaskExecStarted {
                container_id: id.to_string(),
                exec_id: exec_id.to_string(),
                pid: pid(),
                ..TaskExecStarted::default()
            }),
        );
        Ok(StartResponse {
            pid: pid(),
            ..StartResponse::default()
        })
    }

    /// The thread waiting for an exec's end: records it, queues its TaskExit, wakes waiters.
    fn exec_monitor(
        &self,
        id: &str,
        exec_id: &str,
        process: Arc<ExecProcess>,
    ) -> Result<(), TaskError> {
        let slot = self.slot.clone();
        let events = self.events.clone();
        let (id, exec_id) = (id.to_string(), exec_id.to_string());
        let task_id = id.clone();
        std::thread::Builder::new()
            .name("exec-wait".into())
            .spawn(move || {
                let status = match process.wait(None) {
                    Ok(status) => task::exit_code(status),
                    Err(err) => {
                        log::error!("task {id} exec {exec_id}: no exit status: {err}");
                        LOST_EXIT_STATUS
                    }
                };
                let mut guard = slot.lock();
                let exec = guard
                    .as_mut()
                    .filter(|task| task.id == id)
                    .and_then(|task| task.execs.get_mut(&exec_id));
                if let Some(exec) = exec {
                    exec.stdin_stop.store(true, Ordering::SeqCst);
                    let at = timestamp().unwrap_or_default();
                    exec.phase = Phase::Exited(status, at.clone());
                    events.send(
                        topics::TASK_EXIT_EVENT_TOPIC,
                        event(TaskExit {
                            container_id: id.clone(),
                            id: exec_id.clone(),
                            pid: pid(),
                            exit_status: status,
                            exited_at: MessageField::some(at),
                            ..TaskExit::default()
                        }),
                    );
                }
                drop(guard);
                slot.notify_exit();
            })
            .map(drop)
            .map_err(|err| TaskError::Sandbox {
                id: task_id,
                source: SandboxError::Thread(err),
            })
    }

    /// Wait for an exec: its exit status once it ended.
    pub(crate) fn exec_wait(&self, id: &str, exec_id: &str) -> Result<WaitResponse, TaskError> {
        let slot = self.slot.lock();
        let mut slot = self.slot.wait_until(slot, |task| {
            let exec = task
                .as_ref()
                .filter(|task| task.id == id)
                .and_then(|task| task.execs.get(exec_id));
            // Created execs are waited for too (containerd waits before it starts one).
            exec.is_none_or(|exec| matches!(exec.phase, Phase::Exited(..)))
        });
        let task = the_task(&mut slot, id)?;
        let exec = the_exec(task, exec_id)?;
        let Phase::Exited(status, at) = &exec.phase else {
            return Err(TaskError::NotFound(format!("task {id}: exec {exec_id}")));
        };
        Ok(WaitResponse {
            exit_status: *status,
            exited_at: MessageField::some(at.clone()),
            ..WaitResponse::default()
        })
    }

    /// Kill of an exec: the signal to its process group.
    pub(crate) fn exec_kill(&self, id: &str, exec_id: &str, signal: u32) -> Result<(), TaskError> {
        let mut slot = self.slot.lock();
        let task = the_task(&mut slot, id)?;
        let exec = the_exec(task, exec_id)?;
        let Some(process) = exec
            .process
            .clone()
            .filter(|_| exec.phase == Phase::Running)
        else {
            return Err(TaskError::NotFound(format!(
                "task {id}: exec {exec_id}: process already finished or not started"
            )));
        };
        drop(slot);
        let signo = i32::try_from(signal).unwrap_or(i32::MAX);
        process.signal(signo).map_err(|source| TaskError::Exec {
            id: id.to_string(),
            source,
        })
    }

    /// Delete of an exec that is not running.
    pub(crate) fn exec_delete(&self, id: &str, exec_id: &str) -> Result<DeleteResponse, TaskError> {
        let mut slot = self.slot.lock();
        let task = the_task(&mut slot, id)?;
        let exec = the_exec(task, exec_id)?;
        let (status, at) = match &exec.phase {
            Phase::Running => {
                return Err(TaskError::Phase {
                    id: id.to_string(),
                    why: "the exec is running: kill it first",
                })
            }
            Phase::Created => (128 + 9, timestamp().unwrap_or_default()),
            Phase::Exited(status, at) => (*status, at.clone()),
        };
        exec.stdin_stop.store(true, Ordering::SeqCst);
        task.execs.remove(exec_id);
        drop(slot);
        self.slot.notify_exit();
        Ok(DeleteResponse {
            pid: pid(),
            exit_status: status,
            exited_at: MessageField::some(at),
            ..DeleteResponse::default()
        })
    }

    /// State of an exec.
    pub(crate) fn exec_state(&self, id: &str, exec_id: &str) -> Result<StateResponse, TaskError> {
        let mut slot = self.slot.lock();
        let task = the_task(&mut slot, id)?;
        let bundle = task.bundle.to_string_lossy().into_owned();
        let exec = the_exec(task, exec_id)?;
        let (status, exit_status, exited_at) = match &exec.phase {
            Phase::Created => (Status::CREATED, 0, MessageField::none()),
            Phase::Running => (Status::RUNNING, 0, MessageField::none()),
            Phase::Exited(code, at) => (Status::STOPPED, *code, MessageField::some(at.clone())),
        };
        Ok(StateResponse {
            id: exec_id.to_string(),
            bundle,
            pid: pid(),
            status: status.into(),
            stdin: exec.stdio.stdin.clone(),
            stdout: exec.stdio.stdout.clone(),
            stderr: exec.stdio.stderr.clone(),
            terminal: exec.terminal,
            exit_status,
            exited_at,
            exec_id: exec_id.to_string(),
            ..StateResponse::default()
        })
    }

    /// ResizePty of an exec with a terminal.
    pub(crate) fn exec_resize(&self, req: &ResizePtyRequest) -> Result<Empty, TaskError> {
        let process = self.running_process(&req.id, &req.exec_id)?;
        let (Ok(rows), Ok(cols)) = (u16::try_from(req.height), u16::try_from(req.width)) else {
            return Err(TaskError::Phase {
                id: req.id.clone(),
                why: "a terminal size is at most 65535x65535",
            });
        };
        process
            .resize(rows, cols)
            .map_err(|source| TaskError::Exec {
                id: req.id.clone(),
                source,
            })?;
        Ok(Empty::default())
    }

    /// CloseIO of an exec: its stdin reads end-of-file.
    pub(crate) fn exec_close_io(&self, req: &CloseIORequest) -> Result<Empty, TaskError> {
        let process = match self.running_process(&req.id, &req.exec_id) {
            Ok(process) => process,
            // An exec that ended has no stdin left to close.
            Err(TaskError::Phase { .. }) => return Ok(Empty::default()),
            Err(err) => return Err(err),
        };
        process.close_stdin().map_err(|source| TaskError::Exec {
            id: req.id.clone(),
            source,
        })?;
        Ok(Empty::default())
    }

    fn running_process(&self, id: &str, exec_id: &str) -> Result<Arc<ExecProcess>, TaskError> {
        let mut slot = self.slot.lock();
        let task = the_task(&mut slot, id)?;
        let exec = the_exec(task, exec_id)?;
        exec.process
            .clone()
            .filter(|_| exec.phase == Phase::Running)
            .ok_or_else(|| TaskError::Phase {
                id: id.to_string(),
                why: "the exec is not running",
            })
    }
}

/// Opens an exec's outputs (one stream with a terminal) and its stdin.
fn open_stdio(
    req: &ExecProcessRequest,
    stdin_stop: Arc<AtomicBool>,
) -> Result<(Io, Option<stdio::FifoSource>), stdio::StdioError> {
    let stdout = stdio::open_output("stdout", &req.stdout)?;
    let stderr = if req.terminal {
        stdio::open_output("stderr", "")?
    } else {
        stdio::open_output("stderr", &req.stderr)?
    };
    let stdin = stdio::open_input(&req.stdin, stdin_stop)?;
    Ok((
        Io {
            stdout: Box::new(stdout),
            stderr: Box::new(stderr),
        },
        stdin,
    ))
}
