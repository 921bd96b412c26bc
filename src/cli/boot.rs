//! `podvm boot`: the lowest-level diagnostic. Boots a microVM whose initramfs is the agent plus an
//! optional directory, runs one command and exits with its status.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use podvm_protocol::BootSpec;

use crate::agent_link::{self, AgentLink, LinkReport};
use crate::vmm::{self, VmConfig, VmOutputs};
use crate::{artifacts, initramfs};

/// Kernel command line every podvm guest gets: console on COM1 (the only UART), a reboot that
/// triple-faults (KVM reports it as a shutdown), and panics that reboot at once. The VMM appends
/// its virtio-mmio devices and the agent's vsock port.
const BASE_CMDLINE: &str = "console=ttyS0 8250.nr_uarts=1 reboot=t panic=-1 rdinit=/init";

/// Flags of `podvm boot`.
#[derive(Debug, Args)]
pub struct BootArgs {
    /// Guest kernel: an ELF vmlinux with a PVH entry (default: the one built by `make`).
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Guest agent binary packed as /init (default: the one built by `make`).
    #[arg(long)]
    agent: Option<PathBuf>,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1)]
    cpus: u8,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 256)]
    memory: u64,
    /// Show the guest console (kernel messages) on stderr.
    #[arg(long)]
    console: bool,
    /// Keep the guest console in this file (by default it is kept only when the boot fails).
    #[arg(long)]
    console_log: Option<PathBuf>,
    /// Directory whose tree is added to the initramfs (e.g. a busybox tree).
    #[arg(long)]
    initrd_dir: Option<PathBuf>,
    /// Environment variable for the command, KEY=VALUE (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Working directory of the command inside the guest.
    #[arg(long)]
    workdir: Option<String>,
    /// Write the initramfs podvm would boot to FILE and exit without booting (for comparisons
    /// with other VMMs and for debugging).
    #[arg(long, value_name = "FILE")]
    dump_initramfs: Option<PathBuf>,
    /// Print memory figures (process RSS, guest RAM touched, VMM overhead) as JSON on stderr.
    #[arg(long)]
    stats: bool,
    /// Extra kernel command line argument (repeatable).
    #[arg(long = "kernel-arg", value_name = "ARG")]
    kernel_args: Vec<String>,
    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<String>,
}

/// Errors of `podvm boot`.
#[derive(Debug, thiserror::Error)]
pub enum BootCmdError {
    /// A kernel or agent was not found.
    #[error(transparent)]
    Artifact(#[from] artifacts::ArtifactError),
    /// The initramfs could not be built.
    #[error(transparent)]
    Initramfs(#[from] initramfs::InitramfsError),
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
    /// An --env entry without `=`.
    #[error("--env {0}: expected KEY=VALUE")]
    BadEnv(String),
    /// The console log could not be created.
    #[error("cannot create the console log {path}: {source}")]
    ConsoleLog {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The initramfs could not be written out.
    #[error("cannot write the initramfs to {path}: {source}")]
    Dump {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The guest ended without an exit status.
    #[error("{reason}\n--- last guest console lines ({log}) ---\n{tail}")]
    NoStatus {
        /// What went wrong.
        reason: String,
        /// Where the console log was kept.
        log: String,
        /// Its last lines.
        tail: String,
    },
}

/// Runs `podvm boot`.
pub fn run(args: BootArgs) -> Result<ExitCode, BootCmdError> {
    if let Some(bad) = args.env.iter().find(|entry| !entry.contains('=')) {
        return Err(BootCmdError::BadEnv(bad.clone()));
    }
    let kernel_chosen_by_user = args.kernel.is_some();
    let kernel = match args.kernel.clone() {
        Some(path) => path,
        None => artifacts::kernel()?,
    };
    let agent = match args.agent.clone() {
        Some(path) => path,
        None => artifacts::agent()?,
    };
    let spec = BootSpec {
        command: args.command.clone(),
        env: args.env.clone(),
        workdir: args.workdir.clone(),
    };
    let initramfs = initramfs::pack(&agent, &spec, args.initrd_dir.as_deref())?;
    if let Some(path) = &args.dump_initramfs {
        std::fs::write(path, &initramfs).map_err(|source| BootCmdError::Dump {
            path: path.clone(),
            source,
        })?;
        println!("{}", kernel_cmdline(&args));
        return Ok(ExitCode::SUCCESS);
    }
    let cmdline = kernel_cmdline(&args);
    let config = VmConfig {
        kernel,
        kernel_chosen_by_user,
        cmdline,
        initramfs,
        memory_mib: args.memory,
        vcpus: args.cpus,
    };
    let (log_path, keep_log) = match &args.console_log {
        Some(path) => (path.clone(), true),
        None => (
            std::env::temp_dir().join(format!("podvm-boot-{}.console.log", std::process::id())),
            false,
        ),
    };
    let console = ConsoleSink::create(&log_path, args.console)?;
    let (link, report) = AgentLink::new(Box::new(std::io::stdout()), Box::new(std::io::stderr()));
    let outputs = VmOutputs {
        console: Box::new(console),
        agent: Box::new(link),
    };
    let stats = vmm::run(&config, outputs).map_err(|source| match source {
        vmm::VmmError::VcpuFailed { .. } => BootCmdError::GuestFailed {
            source,
            log: log_path.display().to_string(),
        },
        other => {
            let _ = std::fs::remove_file(&log_path);
            BootCmdError::Vmm(other)
        }
    })?;
    if args.stats {
        eprintln!(
            "podvm-stats: {}",
            serde_json::to_string(&stats).unwrap_or_default()
        );
    }
    let report = agent_link::lock(&report).clone();
    let code = exit_code(&report, &log_path)?;
    if !keep_log {
        let _ = std::fs::remove_file(&log_path);
    }
    Ok(code)
}

/// The guest kernel command line for these flags.
fn kernel_cmdline(args: &BootArgs) -> String {
    let mut cmdline = BASE_CMDLINE.to_string();
    if !args.console {
        cmdline.push_str(" quiet");
    }
    for arg in &args.kernel_args {
        cmdline.push(' ');
        cmdline.push_str(arg);
    }
    cmdline
}

/// Maps the agent's report to podvm's exit code, or explains why there is none.
fn exit_code(report: &LinkReport, log_path: &Path) -> Result<ExitCode, BootCmdError> {
    for message in &report.agent_errors {
        eprintln!("podvm: guest agent: {message}");
    }
    if let Some(status) = report.exit {
        let code = status.shell_code().clamp(0, 255);
        return Ok(ExitCode::from(
            u8::try_from(code).expect("clamped to 0..=255"),
        ));
    }
    let reason = if let Some(err) = &report.protocol_error {
        format!("the guest agent sent malformed data ({err}); host and agent may be from different builds")
    } else if report.agent_ready {
        "the guest stopped before the agent reported an exit status".to_string()
    } else {
        "the guest stopped before the agent started (kernel panic, or the kernel cannot run the agent)".to_string()
    };
    Err(BootCmdError::NoStatus {
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

/// The guest console: always into the log file, and to stderr when asked.
struct ConsoleSink {
    file: File,
    echo: bool,
}

impl ConsoleSink {
    fn create(path: &Path, echo: bool) -> Result<Self, BootCmdError> {
        let file = File::create(path).map_err(|source| BootCmdError::ConsoleLog {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Self { file, echo })
    }
}

impl Write for ConsoleSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file.write_all(buf)?;
        if self.echo {
            let mut stderr = std::io::stderr();
            stderr.write_all(buf)?;
            stderr.flush()?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}
