//! podvm guest agent: PID 1 inside the microVM.
//!
//! Boot order: mount the kernel file systems, attach the console, open the agent channel (vsock
//! to the host, on the port given as `podvm.agent_port=` on the kernel command line; without
//! it, the second serial port if the VMM has one), send `Ready`, receive the boot spec (the
//! host's first frame; another VMM's initramfs carries it in a file the kernel command line
//! names, `podvm.boot_spec=/podvm/boot.json`), run its command (or the apps of a pod, `pod.rs`,
//! or nothing in a sandbox) in an event loop (`workload.rs`) that relays stdin, output, signals
//! and resizes, serves exec sessions (when the spec carries an exec token) and the host's
//! container requests (`container.rs`), send `Exited`, and end the VM (after the host confirmed
//! it read everything).
//!
//! Off the VM (any PID but 1) nothing is mounted and nothing reboots, which lets tests run the
//! real workload and channel code: `PODVM_AGENT_CHANNEL` names the channel (`stdout`, the
//! default off the VM, with the host's frames read from stdin, or a path), and the boot spec
//! comes as in the VM, as the first frame the host side writes (to stdin on `stdout`), unless
//! `PODVM_AGENT_SPEC` names a JSON file to read it from instead (then every frame on stdin
//! belongs to the session). `PODVM_AGENT_EXEC_SOCKET` names a Unix socket to serve exec
//! sessions on, `PODVM_AGENT_APP_SOCKET` the Unix socket app and container sessions connect to,
//! and `PODVM_AGENT_SHARES` the directory whose subdirectories stand for the boot spec's shares
//! (nothing is mounted off the VM).

#[macro_use]
mod log;
mod boot;
mod cgroup;
mod channel;
mod container;
mod exec;
mod launch;
mod net;
mod oom;
mod pod;
mod power;
mod reaper;
mod rootfs;
mod security;
mod session;
mod spec;
mod users;
mod volumes;
mod vsock;
mod workload;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use podvm_protocol::{BootSpec, Control, Message, BOOT_SPEC_PATIENCE_MS, EXEC_PORT};

use crate::channel::{Channel, ChannelError, FdChannel, Target};
use crate::container::Containers;
use crate::exec::ExecListener;
use crate::power::Role;
use crate::session::{Phase, Session};
use crate::workload::ExecService;

/// Environment variable naming a boot spec file off the VM.
const SPEC_ENV: &str = "PODVM_AGENT_SPEC";
/// Environment variable naming the channel target.
const CHANNEL_ENV: &str = "PODVM_AGENT_CHANNEL";
/// Environment variable naming a Unix socket for exec sessions off the VM.
const EXEC_SOCKET_ENV: &str = "PODVM_AGENT_EXEC_SOCKET";
/// The app root when the host shares none: the agent's own (initramfs) root.
const AGENT_ROOT: &str = "/";
/// The channel when the kernel command line names no vsock port (VMMs other than podvm).
const SERIAL_FALLBACK: &str = "/dev/ttyS1";
/// Exit code off the VM when the agent itself failed (bad spec, broken channel).
const EXIT_AGENT_FAILED: i32 = 1;
/// Exit code off the VM after a panic.
const EXIT_AGENT_PANICKED: i32 = 101;

/// Errors that end the agent before the workload finished.
#[derive(Debug, thiserror::Error)]
enum AgentError {
    /// Boot preparation failed.
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    /// The channel failed.
    #[error(transparent)]
    Channel(#[from] ChannelError),
    /// The host did not say where to reach it.
    #[error(
        "no {} on the kernel command line and no {SERIAL_FALLBACK}: the host must pass its \
         vsock port",
        podvm_protocol::AGENT_PORT_PARAM
    )]
    NoAgentPort,
    /// Supervising the workload failed.
    #[error(transparent)]
    Workload(#[from] workload::WorkloadError),
    /// A pod of several apps could not run.
    #[error(transparent)]
    Pod(#[from] pod::PodError),
}

fn main() {
    let role = Role::detect();
    install_panic_hook(role);
    let code = match run(role) {
        Ok(code) => code,
        Err(err) => {
            diag!("fatal: {err}");
            report_error(format!("guest agent failed: {err}"));
            EXIT_AGENT_FAILED
        }
    };
    power::end(role, code)
}

/// Logs a panic, tells the host if the channel is free, and ends the VM instead of returning.
fn install_panic_hook(role: Role) {
    std::panic::set_hook(Box::new(move |info| {
        diag!("crashed: {info}");
        report_error(format!("guest agent crashed: {info}"));
        power::end(role, EXIT_AGENT_PANICKED)
    }));
}

/// Sends an `Error` control message if possible; failures are only logged.
fn report_error(message: String) {
    if let Err(err) = channel::try_send(&Message::Control(Control::Error { message })) {
        diag!("could not report the error to the host: {err}");
    }
}

/// The channel to the host: `PODVM_AGENT_CHANNEL` if set, else vsock in the VM and stdout off it.
fn open_channel(role: Role) -> Result<Box<dyn Channel>, AgentError> {
    if let Ok(text) = std::env::var(CHANNEL_ENV) {
        return Ok(Box::new(FdChannel::open(&Target::parse(&text))?));
    }
    match role {
        Role::Init => {
            let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
            if let Some(port) = vsock::port_from_cmdline(&cmdline) {
                let channel = vsock::VsockChannel::connect(podvm_protocol::HOST_CID, port)?;
                return Ok(Box::new(channel));
            }
            // Fallback for other VMMs (e.g. the QEMU boot benchmark): a second UART, if any.
            let serial = Target::Path(PathBuf::from(SERIAL_FALLBACK));
            if std::path::Path::new(SERIAL_FALLBACK).exists() {
                return Ok(Box::new(FdChannel::open(&serial)?));
            }
            Err(AgentError::NoAgentPort)
        }
        Role::Process => Ok(Box::new(FdChannel::open(&Target::Stdout)?)),
    }
}

/// The boot spec: from a file off the VM when `PODVM_AGENT_SPEC` names one, and in the VM of
/// another VMM when the kernel command line names one (`podvm.boot_spec=`); otherwise the
/// host's first frame on `input`.
fn boot_spec(role: Role, input: Option<&File>) -> Result<BootSpec, spec::SpecError> {
    let file = match role {
        Role::Process => std::env::var_os(SPEC_ENV).map(PathBuf::from),
        Role::Init => {
            let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
            spec::path_from_cmdline(&cmdline)
        }
    };
    if let Some(path) = file {
        return spec::load(&path);
    }
    let input = input.ok_or(spec::SpecError::Unreadable)?;
    spec::receive(input, Duration::from_millis(BOOT_SPEC_PATIENCE_MS))
}

/// The agent's life up to the end of the workload; returns the exit code for [`Role::Process`].
fn run(role: Role) -> Result<i32, AgentError> {
    match role {
        Role::Init => {
            boot::mount_all()?;
            boot::attach_console();
        }
        Role::Process => {
            // Orphans of the workload come to us, as they would to PID 1.
            if let Err(err) = nix::sys::prctl::set_child_subreaper(true) {
                diag!("cannot become a child subreaper: {err}");
            }
        }
    }
    channel::install(open_channel(role)?);
    channel::send(&Message::Control(Control::Ready {
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
    }))?;
    let input = match channel::input() {
        Ok(input) => Some(input),
        Err(err) => {
            diag!("{err}; the workload gets no stdin and no signals");
            None
        }
    };
    let spec = match boot_spec(role, input.as_ref()) {
        Ok(spec) => spec,
        Err(err) => return refuse_boot(None, &err),
    };
    if role == Role::Init {
        if let Err(err) = net::configure(spec.network.as_ref()) {
            return refuse_boot(Some("cannot configure the guest network"), &err);
        }
    }
    if !spec.apps.is_empty() || spec.sandbox {
        return run_pod(role, &spec, input);
    }
    let containers = match Containers::new(role, &spec.shares) {
        Ok(containers) => containers,
        Err(err) => return refuse_boot(Some("cannot mount the shares for containers"), &err),
    };
    let root = match &spec.rootfs {
        Some(rootfs) => match rootfs::prepare(rootfs) {
            Ok(root) => root,
            Err(err) => return refuse_boot(Some("cannot prepare the app's root filesystem"), &err),
        },
        None => PathBuf::from(AGENT_ROOT),
    };
    if let Err(err) = mount_volumes(&spec, &root) {
        return refuse_boot(Some("cannot mount the pod's volumes"), &err);
    }
    if let Some(rootfs) = &spec.rootfs {
        if let Err(err) = rootfs::seal(&root, rootfs) {
            return refuse_boot(Some("cannot make the app's root read-only"), &err);
        }
    }
    let boot = Session::new(
        "app".to_string(),
        Box::new(channel::send),
        input,
        Phase::Done,
    );
    let outcome = workload::run(&spec, boot, exec_service(role, &spec), &root, containers)?;
    diag!("workload exited: {:?}", outcome.status);
    Ok(0)
}

/// Tells the host why the boot cannot go on (`what`: the step, before the error) and gives
/// the agent's failure status.
fn refuse_boot(what: Option<&str>, err: &dyn std::fmt::Display) -> Result<i32, AgentError> {
    diag!("{err}");
    let message = match what {
        Some(what) => format!("{what}: {err}"),
        None => err.to_string(),
    };
    channel::send(&Message::Control(Control::Error { message }))?;
    Ok(EXIT_AGENT_FAILED)
}

/// Mounts the pod's volumes and binds those the app mounts into its root.
fn mount_volumes(spec: &BootSpec, root: &Path) -> Result<(), volumes::VolumeError> {
    if spec.volumes.is_empty() {
        return Ok(());
    }
    volumes::mount_all(&spec.volumes)?;
    let mounts = spec
        .rootfs
        .as_ref()
        .map_or(&[][..], |rootfs| &rootfs.mounts);
    volumes::bind_into(root, mounts, &spec.volumes)
}

/// Runs a pod of several apps or a sandbox (see `pod.rs`); the boot session carries only
/// control messages.
fn run_pod(role: Role, spec: &BootSpec, input: Option<File>) -> Result<i32, AgentError> {
    let boot = Session::new(
        "pod".to_string(),
        Box::new(channel::send),
        input,
        Phase::Control,
    );
    let outcome = pod::run(role, spec, boot, exec_service(role, spec))?;
    diag!("pod exited: {:?}", outcome.status);
    Ok(0)
}

/// The exec listener, when the spec carries a token: vsock in the VM, a Unix socket off it.
fn exec_service(role: Role, spec: &BootSpec) -> Option<ExecService> {
    let token = spec.exec_token.clone()?;
    let listener = match role {
        Role::Init => ExecListener::vsock(EXEC_PORT),
        Role::Process => ExecListener::unix(Path::new(&std::env::var_os(EXEC_SOCKET_ENV)?)),
    };
    match listener {
        Ok(listener) => Some(ExecService { listener, token }),
        Err(err) => {
            diag!("{err}; exec sessions are unavailable");
            None
        }
    }
}
