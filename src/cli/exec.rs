//! `podvm exec`: runs a command in a VM that `podvm boot --exec-info FILE` started, through the
//! agent's exec service; exits with the command's status. (`podvm enter` builds on the same
//! client.)

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use podvm_protocol::ExecRequest;

use crate::exec_client::{self, ExecClientError};
use crate::exec_info::{self, ExecInfoError};
use crate::launch;
use crate::relay::RelayOptions;

/// Flags of `podvm exec`.
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// The exec info file the VM's `podvm boot --exec-info` writes.
    #[arg(long, value_name = "FILE")]
    exec_info: PathBuf,
    /// Run as this user (name from the guest's /etc/passwd, or a number).
    #[arg(long)]
    user: Option<String>,
    /// Run with this group (name from the guest's /etc/group, or a number).
    #[arg(long)]
    group: Option<String>,
    /// Environment variable for the command, KEY=VALUE (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Working directory of the command inside the guest.
    #[arg(long)]
    workdir: Option<String>,
    /// Give the command a terminal.
    #[arg(long, short = 't')]
    tty: bool,
    /// Forward stdin even when it is a terminal.
    #[arg(long, short = 'i')]
    interactive: bool,
    /// After forwarding a stop signal, wait this long before giving up on the command.
    #[arg(long, value_name = "DURATION", default_value = "10", value_parser = super::duration::parse)]
    stop_timeout: Duration,
    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<String>,
}

/// Errors of `podvm exec`.
#[derive(Debug, thiserror::Error)]
pub enum ExecCmdError {
    /// The exec info file is unusable.
    #[error(transparent)]
    Info(#[from] ExecInfoError),
    /// The session failed.
    #[error(transparent)]
    Session(#[from] ExecClientError),
}

/// Runs `podvm exec`.
pub fn run(args: ExecArgs) -> Result<ExitCode, ExecCmdError> {
    let info = exec_info::read(&args.exec_info)?;
    let request = ExecRequest {
        token: String::new(),
        command: args.command,
        env: args.env,
        workdir: args.workdir,
        user: args.user,
        group: args.group,
        tty: args.tty,
        app: None,
    };
    let options = RelayOptions::for_cli(args.interactive, args.tty, args.stop_timeout);
    let status = exec_client::run(&info, request, &options)?;
    Ok(ExitCode::from(launch::exit_code(status)))
}
