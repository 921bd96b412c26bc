//! `podvm enter`: runs a command (default `/bin/sh`) in a running pod's app, through the guest
//! agent's exec service (no SSH, unlike rkt's kvm stage1), which the pod's supervisor opens for
//! it over the pod's control socket; exits with the command's status.

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use podvm_protocol::ExecRequest;

use super::pod_attach::SessionError;
use crate::control;
use crate::exec_client;
use crate::launch;
use crate::pod::PodStore;
use crate::relay::RelayOptions;

/// How long an entered command may take to exit after podvm forwarded a stop signal.
const ENTER_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// How long `enter` waits for the agent of a pod that is still booting.
const AGENT_UP_WAIT: Duration = Duration::from_secs(30);

/// Flags of `podvm enter`.
#[derive(Debug, Args)]
pub struct EnterArgs {
    /// The app to enter; needed when the pod has several.
    #[arg(long)]
    app: Option<String>,
    /// The running pod (a unique uuid prefix).
    uuid: String,
    /// Command and arguments (default: /bin/sh); a terminal is given when stdin is one.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

/// Runs `podvm enter`.
pub fn enter(data_dir: &Path, args: EnterArgs) -> Result<ExitCode, SessionError> {
    let pods = PodStore::open(data_dir)?;
    let pod = pods.find(&args.uuid)?;
    pod.expect_running("only running pods can be entered")?;
    let manifest = pods.manifest(&pod)?;
    let app = crate::pod::select_app(&pod.uuid, &manifest, args.app.as_deref())?;
    let command = if args.command.is_empty() {
        vec!["/bin/sh".to_string()]
    } else {
        args.command
    };
    let tty = std::io::stdin().is_terminal();
    let request = ExecRequest {
        token: String::new(),
        command,
        env: app.app.env_entries(),
        workdir: None,
        user: None,
        group: None,
        tty,
        app: Some(app.name.clone()),
        supplementary_gids: Vec::new(),
    };
    let options = RelayOptions::for_cli(false, tty, ENTER_STOP_TIMEOUT);
    let socket = pod.dir.join(control::SOCKET_FILE);
    control::client::wait_until_up(&socket, AGENT_UP_WAIT)?;
    let session = control::client::open_exec(&socket, request)?;
    let status = exec_client::run(session, &options)?;
    Ok(ExitCode::from(launch::exit_code(status)))
}
