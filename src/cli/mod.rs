//! Command line: clap definitions and dispatch to one module per verb.
//!
//! Exit codes: a verb that runs a workload exits with the workload's status (128 + N for a
//! signal); podvm's own failures exit with [`EXIT_PODVM_ERROR`], as Docker does.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod boot;
mod boot_net;
mod check;
mod detach;
mod duration;
mod exec;
mod fetch;
mod image;
mod image_build_from;
mod net;
mod pod_attach;
mod pod_cp;
mod pod_enter;
mod pod_export;
mod pod_gc;
mod pod_logs;
mod pod_manifest;
mod pod_stop;
mod pods;
mod prepare;
mod run;
mod run_timeout;
mod table;
mod trust;
mod version;

/// Exit code for errors of podvm itself (as opposed to the workload's status).
pub const EXIT_PODVM_ERROR: u8 = 125;

/// podvm: run containers as hardware-isolated microVMs, with rkt's verbs and flags.
#[derive(Debug, Parser)]
#[command(name = "podvm", version, about, propagate_version = true)]
pub struct Cli {
    /// Root of podvm's state (image store, pods): /var/lib/podvm for root,
    /// $XDG_DATA_HOME/podvm (~/.local/share/podvm) for other users.
    #[arg(
        long = "dir",
        global = true,
        env = "PODVM_DIR",
        default_value_os_t = default_data_dir(),
        hide_default_value = true
    )]
    pub data_dir: std::path::PathBuf,
    /// The verb.
    #[command(subcommand)]
    pub command: Command,
}

/// podvm's data dir when `--dir` is not given: the system's for root, the user's own for an
/// ordinary user (rootless podvm), as XDG's base directory spec places user data.
fn default_data_dir() -> std::path::PathBuf {
    let absolute = |var: &str| {
        std::env::var_os(var)
            .map(std::path::PathBuf::from)
            .filter(|dir| dir.is_absolute())
    };
    let system = std::path::PathBuf::from("/var/lib/podvm");
    if nix::unistd::geteuid().is_root() {
        return system;
    }
    match (absolute("XDG_DATA_HOME"), absolute("HOME")) {
        (Some(data), _) => data.join("podvm"),
        (None, Some(home)) => home.join(".local/share/podvm"),
        // No home to keep it in: the system's, whose error says to pass --dir.
        (None, None) => system,
    }
}

impl Cli {
    /// Parses the process's arguments (exits with clap's message on a bad command line), with
    /// the app flags listed in the help of `run` and `prepare`.
    pub fn parse_args() -> Cli {
        use clap::{CommandFactory, FromArgMatches};

        let with_app_flags = |verb: clap::Command| verb.after_help(prepare::app_flags_help());
        let matches = Cli::command()
            .mut_subcommand("run", with_app_flags)
            .mut_subcommand("prepare", with_app_flags)
            .get_matches();
        Cli::from_arg_matches(&matches).unwrap_or_else(|err| err.exit())
    }
}

/// podvm's verbs.
#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per process; boxing buys nothing
pub enum Command {
    /// Boot a microVM that runs one command with the guest agent (low-level diagnostic).
    Boot(boot::BootArgs),
    /// Run a command in a VM started with `podvm boot --exec-info FILE`; exits with its status.
    Exec(exec::ExecArgs),
    /// Report what this host can do and whether pods can run here.
    Check(check::CheckArgs),
    /// Fetch images into the store and print their ids.
    Fetch(fetch::FetchArgs),
    /// Manage images in the store.
    Image(image::ImageArgs),
    /// Trust an OpenPGP key to verify ACI signatures (for an image name prefix, or --root).
    Trust(trust::TrustArgs),
    /// Run a pod from images in a microVM in the foreground (exits with the app's status), or
    /// in the background with `--detach` (prints the pod's uuid).
    Run(run::RunArgs),
    /// Run a prepared pod in the foreground (exits with the app's status), or in the
    /// background with `--detach`.
    RunPrepared(run::RunPreparedArgs),
    /// The supervisor of a pod run `--detach` (started by podvm itself).
    #[command(hide = true)]
    Supervise(run::SuperviseArgs),
    /// Create a pod from images (fetching them as needed), ready for run-prepared.
    Prepare(prepare::PrepareArgs),
    /// List pods.
    List(pods::ListArgs),
    /// Show a pod's state, times, pid and app exit codes.
    Status(pods::StatusArgs),
    /// Print a pod's appc pod manifest.
    CatManifest(pods::CatManifestArgs),
    /// Run a command (default /bin/sh) in a running pod's app; exits with its status.
    Enter(pod_enter::EnterArgs),
    /// Follow a running pod's apps (output, stdin, signals); exits with the pod's status.
    Attach(pod_attach::AttachArgs),
    /// Stop running pods: SIGTERM to their apps through the agent, or `--force` to kill the VM.
    Stop(pod_stop::StopArgs),
    /// Print an app's recorded output (stdout and stderr apart); `--follow` while it runs.
    Logs(pod_logs::LogsArgs),
    /// Remove pods that are not running.
    Rm(pod_gc::RmArgs),
    /// Garbage-collect exited pods after a grace period, and leftovers of failed prepares.
    Gc(pod_gc::GcArgs),
    /// Write an app of an exited pod (its image with the pod's writes) as an ACI.
    Export(pod_export::ExportArgs),
    /// Copy a directory's contents into or out of a pod's app (`SRC UUID:DST`, `UUID:SRC DST`).
    Cp(pod_cp::CpArgs),
    /// Print podvm's version, its agent protocol version and the guest artifacts it boots.
    Version(version::VersionArgs),
}

/// Runs the parsed command line and maps its result to the process exit code.
pub fn run(cli: Cli) -> ExitCode {
    let result: Result<ExitCode, Box<dyn std::error::Error>> = match cli.command {
        Command::Boot(args) => boot::run(args).map_err(Into::into),
        Command::Check(args) => Ok(check::run(args)),
        Command::Exec(args) => exec::run(args).map_err(Into::into),
        Command::Fetch(args) => fetch::run(&cli.data_dir, args).map_err(Into::into),
        Command::Image(args) => image::run(&cli.data_dir, args).map_err(Into::into),
        Command::Trust(args) => trust::run(&cli.data_dir, args).map_err(Into::into),
        Command::Run(args) => run::run(&cli.data_dir, args).map_err(Into::into),
        Command::RunPrepared(args) => run::run_prepared(&cli.data_dir, args).map_err(Into::into),
        Command::Supervise(args) => run::supervise(&cli.data_dir, args).map_err(Into::into),
        Command::Prepare(args) => prepare::run(&cli.data_dir, args).map_err(Into::into),
        Command::List(args) => pods::list(&cli.data_dir, args).map_err(Into::into),
        Command::Status(args) => pods::status(&cli.data_dir, args).map_err(Into::into),
        Command::CatManifest(args) => pods::cat_manifest(&cli.data_dir, args).map_err(Into::into),
        Command::Enter(args) => pod_enter::enter(&cli.data_dir, args).map_err(Into::into),
        Command::Attach(args) => pod_attach::attach(&cli.data_dir, args).map_err(Into::into),
        Command::Stop(args) => pod_stop::stop(&cli.data_dir, args).map_err(Into::into),
        Command::Logs(args) => pod_logs::logs(&cli.data_dir, args).map_err(Into::into),
        Command::Rm(args) => pod_gc::rm(&cli.data_dir, args).map_err(Into::into),
        Command::Gc(args) => pod_gc::gc(&cli.data_dir, args).map_err(Into::into),
        Command::Export(args) => pod_export::export(&cli.data_dir, args).map_err(Into::into),
        Command::Cp(args) => pod_cp::cp(&cli.data_dir, args).map_err(Into::into),
        Command::Version(args) => Ok(version::run(args)),
    };
    result.unwrap_or_else(|err| {
        eprintln!("podvm: {err}");
        ExitCode::from(EXIT_PODVM_ERROR)
    })
}
