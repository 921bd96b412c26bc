//! `podvm exec`: runs a command in a VM that `podvm boot --exec-info FILE` started, through the
//! control socket at FILE (the VM's supervisor opens the agent's exec session); exits with the
//! command's status. (`podvm enter` builds on the same client.)

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use podvm_protocol::ExecRequest;

use crate::control::{self, ControlError};
use crate::exec_client::{self, ExecClientError};
use crate::launch;
use crate::relay::RelayOptions;

/// Flags of `podvm exec`.
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// The control socket the VM's `podvm boot --exec-info FILE` serves.
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
    /// The VM's control socket refused or failed.
    #[error(transparent)]
    Control(#[from] ControlError),
    /// The session failed.
    #[error(transparent)]
    Session(#[from] ExecClientError),
}

/// Runs `podvm exec`.
pub fn run(args: ExecArgs) -> Result<ExitCode, ExecCmdError> {
    let request = ExecRequest {
        token: String::new(),
        command: args.command,
        env: args.env,
        workdir: args.workdir,
        user: args.user,
        group: args.group,
        tty: args.tty,
        app: None,
        supplementary_gids: Vec::new(),
    };
    let options = RelayOptions::for_cli(args.interactive, args.tty, args.stop_timeout);
    let session = control::client::open_exec(&args.exec_info, request)?;
    let status = exec_client::run(session, &options)?;
    Ok(ExitCode::from(launch::exit_code(status)))
}
