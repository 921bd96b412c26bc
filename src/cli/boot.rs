//! `podvm boot`: the lowest-level diagnostic. Boots a microVM whose initramfs is the agent plus an
//! optional directory, runs one command and exits with its status.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use podvm_protocol::{BootSpec, RootfsSpec};

use crate::control::{self, ControlError};
use crate::launch::{self, LaunchError, LaunchPlan};
use crate::relay::RelayOptions;
use crate::vmm::devices::virtio::fs::FsShare;

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
    /// Run the command chrooted into this host directory, shared with the guest over virtio-fs
    /// (not packed into the initramfs). Writes land in DIR.
    #[arg(long, value_name = "DIR")]
    rootfs: Option<PathBuf>,
    /// Share the --rootfs directory read-only (writes fail with EROFS in the guest).
    #[arg(long, requires = "rootfs")]
    rootfs_ro: bool,
    /// Environment variable for the command, KEY=VALUE (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Working directory of the command inside the guest.
    #[arg(long)]
    workdir: Option<String>,
    /// Write the initramfs podvm would boot to FILE, plus the boot spec at /podvm/boot.json
    /// (another VMM cannot send it over the agent channel), print the kernel command line (which
    /// names that file) and exit without booting (for comparisons with other VMMs and for
    /// debugging).
    #[arg(long, value_name = "FILE")]
    dump_initramfs: Option<PathBuf>,
    /// Print memory figures (process RSS, guest RAM touched, VMM overhead) as JSON on stderr.
    #[arg(long)]
    stats: bool,
    /// Extra kernel command line argument (repeatable).
    #[arg(long = "kernel-arg", value_name = "ARG")]
    kernel_args: Vec<String>,
    /// Run the command as this user: a name from the guest's /etc/passwd, or a number.
    #[arg(long)]
    user: Option<String>,
    /// Run the command with this group: a name from the guest's /etc/group, or a number.
    #[arg(long)]
    group: Option<String>,
    /// Give the command a terminal (a pty in the guest); the host terminal goes raw meanwhile.
    #[arg(long, short = 't')]
    tty: bool,
    /// Forward stdin even when it is a terminal (it is always forwarded when it is not).
    #[arg(long, short = 'i')]
    interactive: bool,
    /// After forwarding SIGTERM/SIGINT/SIGQUIT, wait this long for the command to exit before
    /// killing the VM (seconds, or e.g. 1500ms).
    #[arg(long, value_name = "DURATION", default_value = "10", value_parser = super::duration::parse)]
    stop_timeout: Duration,
    /// Accept exec sessions: serve the VM's control socket at FILE (mode 0600, root and this
    /// user only) while the VM runs, for `podvm exec --exec-info FILE`.
    #[arg(long, value_name = "FILE")]
    exec_info: Option<PathBuf>,
    /// Guest networking (one NIC).
    #[command(flatten)]
    net: super::boot_net::NetArgs,
    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<String>,
}

/// Errors of `podvm boot`.
#[derive(Debug, thiserror::Error)]
pub enum BootCmdError {
    /// The launch failed.
    #[error(transparent)]
    Launch(#[from] LaunchError),
    /// The --rootfs directory is unusable.
    #[error("--rootfs {path}: {reason}")]
    Rootfs {
        /// The directory as given.
        path: PathBuf,
        /// What is wrong and what to do.
        reason: String,
    },
    /// The exec token could not be made.
    #[error(transparent)]
    Control(#[from] ControlError),
    /// An --env entry without `=`.
    #[error("--env {0}: expected KEY=VALUE")]
    BadEnv(String),
    /// The network flags are unusable.
    #[error(transparent)]
    Net(#[from] super::boot_net::NetArgsError),
    /// The initramfs could not be written out.
    #[error("cannot write the initramfs to {path}: {source}")]
    Dump {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Runs `podvm boot`.
pub fn run(args: BootArgs) -> Result<ExitCode, BootCmdError> {
    if let Some(bad) = args.env.iter().find(|entry| !entry.contains('=')) {
        return Err(BootCmdError::BadEnv(bad.clone()));
    }
    let (rootfs, shares) = match &args.rootfs {
        Some(dir) => rootfs_share(dir, args.rootfs_ro)?,
        None => (None, Vec::new()),
    };
    let (nets, network) = args.net.resolve()?;
    let exec_token = match &args.exec_info {
        Some(_) => Some(control::new_token()?),
        None => None,
    };
    let plan = LaunchPlan {
        kernel: args.kernel,
        agent: args.agent,
        spec: BootSpec {
            command: args.command,
            env: args.env,
            workdir: args.workdir,
            rootfs,
            user: args.user,
            group: args.group,
            tty: args.tty,
            exec_token,
            network,
            ..BootSpec::default()
        },
        initrd_dir: args.initrd_dir,
        cpus: args.cpus,
        memory_mib: args.memory,
        console: args.console,
        console_log: args.console_log,
        kernel_args: args.kernel_args,
        app_log: None,
        shares,
        nets,
        relay: RelayOptions::for_cli(args.interactive, args.tty, args.stop_timeout),
        control: args.exec_info,
        ..LaunchPlan::default()
    };
    if let Some(path) = &args.dump_initramfs {
        let (initramfs, cmdline) = launch::foreign_boot_media(&plan)?;
        std::fs::write(path, initramfs).map_err(|source| BootCmdError::Dump {
            path: path.clone(),
            source,
        })?;
        println!("{cmdline}");
        return Ok(ExitCode::SUCCESS);
    }
    let outcome = launch::launch(&plan)?;
    if args.stats {
        eprintln!(
            "podvm-stats: {}",
            serde_json::to_string(&outcome.stats).unwrap_or_default()
        );
    }
    Ok(ExitCode::from(launch::exit_code(outcome.status)))
}

/// The virtio-fs tag of the `--rootfs` share.
pub const ROOTFS_TAG: &str = "rootfs";

/// The boot spec's rootfs and the share behind it, after checking `dir`.
fn rootfs_share(
    dir: &Path,
    read_only: bool,
) -> Result<(Option<RootfsSpec>, Vec<FsShare>), BootCmdError> {
    let error = |reason: String| BootCmdError::Rootfs {
        path: dir.to_path_buf(),
        reason,
    };
    let host_dir = std::fs::canonicalize(dir).map_err(|err| {
        error(format!(
            "cannot resolve it to an absolute path: {err} (give an existing directory)"
        ))
    })?;
    if !host_dir.is_dir() {
        return Err(error(format!(
            "{} is not a directory (give the root directory of the app's file tree)",
            host_dir.display()
        )));
    }
    let spec = RootfsSpec {
        tag: ROOTFS_TAG.into(),
        read_only,
        ..RootfsSpec::default()
    };
    let share = FsShare {
        tag: ROOTFS_TAG.into(),
        host_dir,
        read_only,
    };
    Ok((Some(spec), vec![share]))
}
