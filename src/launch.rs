//! Launching one workload in a microVM: the pipeline `podvm boot` and pods share.
//!
//! A [`LaunchPlan`] names the kernel, agent, boot spec, extra initramfs tree and VM size; [`launch`]
//! packs the initramfs (the agent alone, the same for every VM), runs the VM with the console
//! going to a log file, sends the boot spec as the first frame once the agent connects, relays
//! the agent's output one way and podvm's stdin and signals the other (see [`crate::relay`]), and
//! returns how the workload ended.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use podvm_protocol::{BootSpec, Control, ExitStatus, Message, Stream};

use crate::agent_link::{self, AgentLink, AppOutputs, HostWriter, LinkReport};
use crate::control::attach::{AppTerminal, OutputHub};
use crate::control::server::ControlServer;
use crate::control::vm::VmControl;
use crate::pod::logs::{AppLog, LogStream};
use crate::pod::status::EndCause;
use crate::relay::{Relay, RelayError, RelayOptions};
use crate::vmm::console_log::{self, ConsoleLog};
use crate::vmm::{self, VmConfig, VmHandle, VmOutputs, VmStats};
use crate::{artifacts, initramfs};

/// After the stop timeout asked the agent to kill everything, how long before the VM is killed.
const KILL_AFTER: Duration = Duration::from_secs(5);

/// Root's private run-time directory for console logs of VMs that are not pods.
const RUN_DIR: &str = "/run/podvm";

/// Everything needed to run one workload in a VM.
#[derive(Debug, Clone, Default)]
pub struct LaunchPlan {
    /// Guest kernel; the built one when `None`.
    pub kernel: Option<PathBuf>,
    /// Guest agent; the built one when `None`.
    pub agent: Option<PathBuf>,
    /// What the agent runs.
    pub spec: BootSpec,
    /// A tree added to the initramfs (the workload's root filesystem).
    pub initrd_dir: Option<PathBuf>,
    /// vCPUs.
    pub cpus: u8,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// Echo the console to stderr.
    pub console: bool,
    /// Keep the console log here (otherwise one in a fresh private directory, kept only on
    /// failure).
    pub console_log: Option<PathBuf>,
    /// Extra kernel command line arguments.
    pub kernel_args: Vec<String>,
    /// Also record the workload's output in this app log (pods).
    pub app_log: Option<AppLog>,
    /// A pod of several apps (`spec.apps`): each app's log, by app name.
    pub app_logs: Vec<(String, AppLog)>,
    /// Host directories shared with the guest over virtio-fs.
    pub shares: Vec<vmm::devices::virtio::fs::FsShare>,
    /// Guest network cards (virtio-net on host taps).
    pub nets: Vec<vmm::devices::virtio::net::NetConfig>,
    /// How podvm's stdin, signals and terminal reach the app.
    pub relay: RelayOptions,
    /// Serve the VM's control socket here while it runs (exec sessions need `spec.exec_token`).
    pub control: Option<PathBuf>,
    /// The app's output goes to its logs and attached clients only, not to podvm's stdout
    /// and stderr (`run --detach`).
    pub detached: bool,
}

/// How a launch ended.
#[derive(Debug, Clone)]
pub struct LaunchOutcome {
    /// The workload's exit (in a pod of several apps: that of the first app that failed, else
    /// code 0).
    pub status: ExitStatus,
    /// In a pod of several apps: each app's exit, in the order they were reported.
    pub apps: Vec<(String, ExitStatus)>,
    /// Processes of the workload the guest kernel's OOM killer killed (all apps').
    pub oom_kills: u64,
    /// In a pod of several apps: each app's OOM kills, when it had some.
    pub app_oom_kills: Vec<(String, u64)>,
    /// Memory figures of the VMM.
    pub stats: VmStats,
}

/// Errors of a launch.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// A kernel or agent was not found.
    #[error(transparent)]
    Artifact(#[from] artifacts::ArtifactError),
    /// The initramfs could not be built.
    #[error(transparent)]
    Initramfs(#[from] initramfs::InitramfsError),
    /// The boot spec does not fit in a frame.
    #[error("cannot encode the boot spec for the agent: {0}")]
    Spec(podvm_protocol::ProtocolError),
    /// The VM could not be built.
    #[error(transparent)]
    Vmm(vmm::VmmError),
    /// The VM failed while the guest ran.
    #[error("{source}\n(guest console log: {log})")]
    GuestFailed {
        /// Why.
        source: vmm::VmmError,
        /// Where the console log was kept.
        log: String,
    },
    /// The console log could not be created.
    #[error("cannot create the console log {path}: {source}")]
    ConsoleLog {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The stdin/signal relay could not start.
    #[error(transparent)]
    Relay(#[from] RelayError),
    /// The control socket could not be served.
    #[error(transparent)]
    Control(#[from] crate::control::ControlError),
    /// The guest ended without an exit status.
    #[error("{reason}\n--- last guest console lines ({log}) ---\n{tail}")]
    NoStatus {
        /// What ended the guest.
        cause: EndCause,
        /// What went wrong.
        reason: String,
        /// Where the console log was kept.
        log: String,
        /// Its last lines.
        tail: String,
    },
}

impl LaunchError {
    /// Whether the VMM process was killed by a signal (SIGKILL, the OOM killer's included).
    pub fn vmm_killed(&self) -> bool {
        matches!(
            self,
            LaunchError::Vmm(vmm::VmmError::Process(
                vmm::process::ProcessError::Killed { .. }
            ))
        )
    }

    /// The VMM process's pid when its seccomp filter killed it (it died of SIGSYS, which
    /// only a filter's SECCOMP_RET_KILL_PROCESS sends it: no one else may signal it but its
    /// supervisor and root).
    pub fn vmm_killed_by_seccomp(&self) -> Option<u32> {
        match self {
            LaunchError::Vmm(vmm::VmmError::Process(vmm::process::ProcessError::Killed {
                pid,
                signo: libc::SIGSYS,
                ..
            })) => Some(*pid),
            _ => None,
        }
    }

    /// What ended the guest, when the launch failed because of the guest or the VMM.
    pub fn cause(&self) -> Option<EndCause> {
        if self.vmm_killed_by_seccomp().is_some() {
            return Some(EndCause::Seccomp);
        }
        match self {
            LaunchError::NoStatus { cause, .. } => Some(*cause),
            LaunchError::Vmm(_) | LaunchError::GuestFailed { .. } => Some(EndCause::VmmError),
            _ => None,
        }
    }
}

/// The initramfs and kernel command line the plan boots with.
pub fn boot_media(plan: &LaunchPlan) -> Result<(Arc<Vec<u8>>, String), LaunchError> {
    let agent = match &plan.agent {
        Some(path) => path.clone(),
        None => artifacts::agent()?,
    };
    let initramfs = initramfs::pack(&agent, plan.initrd_dir.as_deref())?;
    Ok((initramfs, kernel_cmdline(plan)))
}

/// [`boot_media`] for another VMM, which cannot send the boot spec: it is packed in too, and
/// the command line names it.
pub fn foreign_boot_media(plan: &LaunchPlan) -> Result<(Vec<u8>, String), LaunchError> {
    let agent = match &plan.agent {
        Some(path) => path.clone(),
        None => artifacts::agent()?,
    };
    let initramfs = initramfs::pack_with_spec(&agent, &plan.spec, plan.initrd_dir.as_deref())?;
    let cmdline = format!(
        "{} {}={}",
        kernel_cmdline(plan),
        podvm_protocol::BOOT_SPEC_PARAM,
        podvm_protocol::BOOT_SPEC_PATH
    );
    Ok((initramfs, cmdline))
}

/// Runs the plan's workload in a VM until it ends.
pub fn launch(plan: &LaunchPlan) -> Result<LaunchOutcome, LaunchError> {
    // First: its exec and start-up overlap what follows (it waits for its VM).
    let spawned = vmm::process::Spawned::start().map_err(LaunchError::Vmm)?;
    let kernel = match &plan.kernel {
        Some(path) => path.clone(),
        None => artifacts::kernel()?,
    };
    let (initramfs, cmdline) = boot_media(plan)?;
    vmm::process::trace::mark("media packed");
    let config = VmConfig {
        kernel,
        kernel_chosen_by_user: plan.kernel.is_some(),
        cmdline,
        initramfs,
        memory_mib: plan.memory_mib,
        vcpus: plan.cpus,
        shares: plan.shares.clone(),
        nets: plan.nets.clone(),
    };
    let (log_path, keep_log) = match &plan.console_log {
        Some(path) => (path.clone(), true),
        None => (private_console_log()?, false),
    };
    let console = create_console_log(&log_path, plan.console, !keep_log)?;
    let terminal = AppTerminal {
        detached: plan.detached,
        hub: plan
            .control
            .as_ref()
            .map(|_| Arc::new(OutputHub::default())),
    };
    let (stdout, stderr): (Box<dyn Write + Send>, Box<dyn Write + Send>) = match &plan.app_log {
        Some(log) => (
            Box::new(log.tee(LogStream::Stdout, terminal.writer(Stream::Stdout))),
            Box::new(log.tee(LogStream::Stderr, terminal.writer(Stream::Stderr))),
        ),
        None => (
            terminal.writer(Stream::Stdout),
            terminal.writer(Stream::Stderr),
        ),
    };
    let spec_frame = Message::Control(Control::Boot(Box::new(plan.spec.clone())))
        .encode()
        .map_err(LaunchError::Spec)?;
    let (mut link, report) = AgentLink::new(stdout, stderr);
    link = link.with_boot_spec(spec_frame);
    if !plan.spec.apps.is_empty() {
        link = link.with_apps(app_outputs(&plan.app_logs, &terminal));
    }
    let writer = HostWriter::new();
    let vm: Arc<Mutex<Option<VmHandle>>> = Arc::new(Mutex::new(None));
    let relay = Relay::start(&plan.relay, writer.clone(), stop_hard(&writer, &vm))?;
    let (control, vm_control) = match serve_control(plan, &relay, &writer, terminal.hub) {
        Ok(served) => served.unzip(),
        Err(err) => {
            relay.finish();
            return Err(err.into());
        }
    };
    let started = vm_control.clone();
    let outputs = VmOutputs {
        console: Box::new(console),
        agent: Box::new(link.with_writer(writer)),
        on_start: Some(Box::new(move |handle: VmHandle| {
            if let Some(vm_control) = started {
                vm_control.vm_started(handle.cid(), handle.pid());
            }
            *lock_any(&vm) = Some(handle);
        })),
    };
    let run = vmm::process::run_in(spawned, config, outputs);
    let timed_out = relay.finish();
    if let Some(vm_control) = vm_control {
        let exit = agent_link::lock(&report).exit;
        vm_control.vm_ended(timed_out.map(ExitStatus::Signal).or(exit));
    }
    // The socket goes with the VM; its sessions are cut.
    drop(control);
    let stats = run.map_err(|source| match source {
        vmm::VmmError::VcpuFailed { .. } => LaunchError::GuestFailed {
            source,
            log: log_path.display().to_string(),
        },
        other => {
            if !keep_log {
                discard_console_log(&log_path);
            }
            LaunchError::Vmm(other)
        }
    })?;
    for log in plan
        .app_log
        .iter()
        .chain(plan.app_logs.iter().map(|(_, log)| log))
    {
        if let Err(err) = log.finish() {
            eprintln!("podvm: cannot finish the app log: {err}");
        }
    }
    let report = agent_link::lock(&report).clone();
    let status = match timed_out {
        // The app was killed because it ignored the signal: report the signal, as a shell would.
        Some(signo) => ExitStatus::Signal(signo),
        None => exit_status(&report, stats.guest_end.as_deref(), &log_path)?,
    };
    if !keep_log {
        discard_console_log(&log_path);
    }
    Ok(LaunchOutcome {
        status,
        stats,
        apps: report.app_exits,
        oom_kills: report.oom_kills,
        app_oom_kills: report.app_oom_kills,
    })
}

/// A console log path no other user can predict, read or plant: `console.log` in a fresh
/// private directory (mkdtemp, mode 0700) under `$XDG_RUNTIME_DIR` when it is this user's,
/// else `/run/podvm` for root, else the temp dir. Kept when the boot fails, for the error.
fn private_console_log() -> Result<PathBuf, LaunchError> {
    let euid = nix::unistd::geteuid();
    let runtime = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|dir| {
            std::fs::symlink_metadata(dir).is_ok_and(|meta| {
                use std::os::unix::fs::MetadataExt;
                meta.is_dir() && meta.uid() == euid.as_raw() && meta.mode() & 0o077 == 0
            })
        });
    let base = match runtime {
        Some(dir) => dir,
        None if euid.is_root() => {
            let run = PathBuf::from(RUN_DIR);
            crate::private::ensure_dir(&run).map_err(|err| LaunchError::ConsoleLog {
                path: run.clone(),
                source: std::io::Error::other(err.to_string()),
            })?;
            run
        }
        None => std::env::temp_dir(),
    };
    console_log_under(&base)
}

/// `console.log` in a fresh directory of mode 0700 (mkdtemp) in `base`.
fn console_log_under(base: &Path) -> Result<PathBuf, LaunchError> {
    let template = base.join("console-XXXXXX");
    let dir = nix::unistd::mkdtemp(&template).map_err(|errno| LaunchError::ConsoleLog {
        path: template.clone(),
        source: errno.into(),
    })?;
    Ok(dir.join("console.log"))
}

/// Removes a console log of [`private_console_log`] and its directory.
fn discard_console_log(path: &Path) {
    let _ = std::fs::remove_file(path);
    if let Some(dir) = path.parent() {
        let _ = std::fs::remove_dir(dir);
    }
}

/// The VM's control socket, if the plan has one: its server and the VM's side of it.
fn serve_control(
    plan: &LaunchPlan,
    relay: &Relay,
    writer: &Arc<HostWriter>,
    hub: Option<Arc<OutputHub>>,
) -> Result<Option<(ControlServer, Arc<VmControl>)>, crate::control::ControlError> {
    let Some(path) = plan.control.as_deref() else {
        return Ok(None);
    };
    let token = plan.spec.exec_token.clone();
    let hub = hub.unwrap_or_default();
    let stop_timeout = plan.relay.stop_timeout;
    let mut control = VmControl::new(token, relay.injector(), stop_timeout, hub, writer.clone());
    if plan.relay.hold_stdin {
        control = control.feeding_stdin();
    }
    control.serve(path).map(Some)
}

/// Where each app of a pod of several apps writes: the app terminal (podvm's stdout and stderr,
/// attached clients), and the app's log when it has one.
fn app_outputs(logs: &[(String, AppLog)], terminal: &AppTerminal) -> AppOutputs {
    let logs = logs.to_vec();
    let terminal = terminal.clone();
    Arc::new(move |name: &str| {
        let (stdout, stderr) = (
            terminal.writer(Stream::Stdout),
            terminal.writer(Stream::Stderr),
        );
        match logs.iter().find(|(app, _)| app == name) {
            Some((_, log)) => (
                Box::new(log.tee(LogStream::Stdout, stdout)),
                Box::new(log.tee(LogStream::Stderr, stderr)),
            ),
            None => (stdout, stderr),
        }
    })
}

/// What the stop timeout does: ask the agent to SIGKILL everything and power off
/// (`Shutdown` with no grace), and kill the VM itself if it is still there [`KILL_AFTER`] later.
fn stop_hard(
    writer: &Arc<HostWriter>,
    vm: &Arc<Mutex<Option<VmHandle>>>,
) -> Box<dyn FnOnce() + Send> {
    let (writer, vm) = (writer.clone(), vm.clone());
    Box::new(move || {
        let shutdown = Message::Control(Control::Shutdown { grace_ms: 0 });
        let spawned = std::thread::Builder::new()
            .name("stop-vm".into())
            .spawn(move || {
                let _ = writer.send(&shutdown);
                std::thread::sleep(KILL_AFTER);
                if let Some(handle) = lock_any(&vm).as_ref() {
                    handle.kill();
                }
            });
        if let Err(err) = spawned {
            eprintln!("podvm: cannot stop the VM: {err}");
        }
    })
}

fn lock_any<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn kernel_cmdline(plan: &LaunchPlan) -> String {
    crate::runtime::boot::kernel_cmdline(!plan.console, &plan.kernel_args)
}

/// The workload's exit from the agent's report, or why there is none.
fn exit_status(
    report: &LinkReport,
    guest_end: Option<&str>,
    log_path: &Path,
) -> Result<ExitStatus, LaunchError> {
    if let Some(err) = &report.spec_error {
        eprintln!("podvm: cannot send the boot spec to the guest agent: {err}");
    }
    for message in &report.agent_errors {
        eprintln!("podvm: guest agent: {message}");
    }
    if let Some(status) = report.exit {
        return Ok(status);
    }
    let console = std::fs::read(log_path)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default();
    let death = console_log::guest_death_line(&console);
    let (cause, reason) = if let Some(err) = &report.protocol_error {
        (
            EndCause::AgentProtocol,
            format!("the guest agent sent malformed data ({err}); host and agent may be from different builds"),
        )
    } else if let Some(line) = death {
        let when = if report.agent_ready {
            "reported an exit status"
        } else {
            "started"
        };
        (
            EndCause::GuestPanic,
            format!("the guest kernel died before the agent {when}: {line}"),
        )
    } else if report.agent_ready {
        // Nothing from the guest kernel: the CPU reset it (a triple fault). The vCPU state says
        // where, except on AMD-V, where KVM shows the reset state instead.
        let end = guest_end.map(|end| format!(" ({end})")).unwrap_or_default();
        (
            EndCause::TripleFault,
            format!(
                "the guest stopped before the agent reported an exit status: it was reset with \
                 nothing on its console (a triple fault){end}"
            ),
        )
    } else {
        let end = guest_end.map(|end| format!(" ({end})")).unwrap_or_default();
        (
            EndCause::NoAgent,
            format!(
                "the guest stopped before the agent started (the kernel cannot run the agent, \
                 or it was reset with nothing on its console){end}"
            ),
        )
    };
    Err(LaunchError::NoStatus {
        cause,
        reason,
        log: log_path.display().to_string(),
        tail: log_tail(log_path, 25),
    })
}

fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The shell-style exit code (0..=255) of a workload's exit.
pub fn exit_code(status: ExitStatus) -> u8 {
    u8::try_from(status.shell_code().clamp(0, 255)).expect("clamped to 0..=255")
}

/// Creates the guest's console log at `path` (see [`ConsoleLog`]: bounded, the last lines
/// always kept), echoed to stderr with `echo`: 0600, never through a symlink, and with `new`
/// only if nothing is there yet (O_EXCL). A pod's is in its private directory, others in a
/// fresh private one (see [`private_console_log`]).
fn create_console_log(path: &Path, echo: bool, new: bool) -> Result<ConsoleLog, LaunchError> {
    let echo: Option<Box<dyn Write + Send>> = if echo {
        Some(Box::new(std::io::stderr()))
    } else {
        None
    };
    crate::runtime::boot::create_console_log(path, echo, new).map_err(|source| {
        LaunchError::ConsoleLog {
            path: path.to_path_buf(),
            source,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn a_guest_that_ends_without_a_status_says_where_its_vcpu_was() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("console.log");
        std::fs::write(&log, "Run /init as init process\n").expect("log");
        let report = LinkReport {
            agent_ready: true,
            ..Default::default()
        };
        let end = "vCPU 0: Shutdown at rip 0xffffffff81000000";
        let err = exit_status(&report, Some(end), &log).expect_err("no status");
        assert_eq!(err.cause(), Some(EndCause::TripleFault));
        let text = err.to_string();
        assert!(
            text.contains(
                "the guest stopped before the agent reported an exit status: it was reset with \
                 nothing on its console (a triple fault) (vCPU 0: Shutdown at rip"
            ),
            "{text}"
        );
        assert!(text.contains("Run /init as init process"), "{text}");
        let report = LinkReport::default();
        let err = exit_status(&report, Some(end), &log).expect_err("no status");
        assert_eq!(err.cause(), Some(EndCause::NoAgent));
        assert!(
            err.to_string().starts_with(
                "the guest stopped before the agent started (the kernel cannot run the agent, \
                 or it was reset with nothing on its console) (vCPU 0: Shutdown at rip"
            ),
            "{err}"
        );
    }

    #[test]
    fn a_guest_kernel_that_died_is_named_with_its_first_panic_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("console.log");
        std::fs::write(
            &log,
            "[    1.0] Run /init as init process\n\
             [    9.5] Kernel panic - not syncing: Fatal exception in interrupt\n\
             [    9.5] Kernel Offset: disabled\n",
        )
        .expect("log");
        for (ready, when) in [(true, "reported an exit status"), (false, "started")] {
            let report = LinkReport {
                agent_ready: ready,
                ..Default::default()
            };
            let err = exit_status(&report, Some("vCPU 0: Shutdown"), &log).expect_err("none");
            assert_eq!(err.cause(), Some(EndCause::GuestPanic));
            let text = err.to_string();
            assert!(
                text.starts_with(&format!(
                    "the guest kernel died before the agent {when}: Kernel panic - not \
                     syncing: Fatal exception in interrupt\n"
                )),
                "{text}"
            );
        }
    }

    #[test]
    fn a_console_log_outside_pods_is_in_a_fresh_private_directory() {
        // Attack: another user plants a symlink (or reads the file) at a predictable /tmp path.
        let base = tempfile::tempdir().expect("tempdir");
        let first = console_log_under(base.path()).expect("first");
        let second = console_log_under(base.path()).expect("second");
        assert_ne!(first.parent(), second.parent(), "not predictable");
        let dir = first.parent().expect("dir");
        assert_eq!(std::fs::metadata(dir).expect("dir").mode() & 0o7777, 0o700);
        create_console_log(&first, false, true).expect("create");
        assert_eq!(
            std::fs::metadata(&first).expect("log").mode() & 0o7777,
            0o600
        );
        assert!(
            create_console_log(&first, false, true).is_err(),
            "O_EXCL: an existing file is never reused"
        );
        discard_console_log(&first);
        assert!(!dir.exists(), "the directory goes with the log");
    }
}
