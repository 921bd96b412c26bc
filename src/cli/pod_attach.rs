//! `podvm attach`: follows a running pod's apps from now on, as `podvm run` shows them (their
//! stdout and stderr; what came before is in `podvm logs`), and exits with the pod's status when
//! it ends. Signals to `attach` (Ctrl-C, SIGTERM, ...) go to the app as `run` passes them on,
//! unless `--sig-proxy=false`: then Ctrl-C ends `attach` alone and the pod keeps running. Stdin
//! reaches the app only in a pod run `--detach --interactive`; its end closes the app's stdin.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use clap::{ArgAction, Args};

use super::pods;
use crate::control::{self, ControlError};
use crate::exec_client::{self, ExecClientError};
use crate::launch;
use crate::pod::status::EndCause;
use crate::pod::{PodError, PodStore};
use crate::relay::RelayOptions;

/// After passing a stop signal on, how long `attach` waits for the pod's end on its own (the
/// pod's supervisor applies the pod's stop timeout itself).
const ATTACH_STOP_TIMEOUT: Duration = Duration::from_secs(600);

/// After a session ended without an exit status, how long `attach` waits for the pod's podvm
/// to record why.
const ENDED_WAIT: Duration = Duration::from_secs(10);

/// Flags of `podvm attach`.
#[derive(Debug, Args)]
pub struct AttachArgs {
    /// The running pod (a unique uuid prefix).
    uuid: String,
    /// Forward stdin even when it is a terminal (it is forwarded when it is not).
    #[arg(long, short = 'i')]
    interactive: bool,
    /// Pass signals to `attach` on to the app (the default, as `run` does); with
    /// `--sig-proxy=false`, Ctrl-C detaches and leaves the pod running.
    #[arg(long = "sig-proxy", value_name = "BOOL", default_value_t = true, action = ArgAction::Set)]
    sig_proxy: bool,
}

/// Errors of the verbs that open a session in a running pod over its control socket
/// (`attach`, `enter`).
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The pod is not there or not running.
    #[error(transparent)]
    Pod(#[from] PodError),
    /// The pod's control socket refused or failed.
    #[error(transparent)]
    Control(#[from] ControlError),
    /// The session failed.
    #[error(transparent)]
    Session(#[from] ExecClientError),
    /// The pod ended without an exit status (its guest died, or its podvm was killed).
    #[error(
        "pod {uuid} ended without an exit status: {reason} (cause: {cause}){}",
        last_line.as_ref().map(|line| format!("; the guest's last console line: {line}")).unwrap_or_default()
    )]
    PodEnded {
        /// The pod.
        uuid: String,
        /// The first line of the reason `status` gives.
        reason: String,
        /// The cause `status` names.
        cause: EndCause,
        /// The guest's last console line, when there is one.
        last_line: Option<String>,
    },
}

/// Runs `podvm attach`.
pub fn attach(data_dir: &Path, args: AttachArgs) -> Result<ExitCode, SessionError> {
    let pods = PodStore::open(data_dir)?;
    let pod = pods.find(&args.uuid)?;
    pod.expect_running(
        "only running pods can be attached to (`podvm logs` shows what an app wrote)",
    )?;
    let session = control::client::open_attach(&pod.dir.join(control::SOCKET_FILE))?;
    let options = RelayOptions {
        // Watching does not close the app's stdin; the end of a forwarded stdin does.
        hold_stdin: true,
        forward_signals: args.sig_proxy,
        ..RelayOptions::for_cli(args.interactive, false, ATTACH_STOP_TIMEOUT)
    };
    let status = match exec_client::run(session, &options) {
        Ok(status) => status,
        Err(ExecClientError::NoStatus(why)) => return Err(ended(&pods, &pod.uuid, why)),
        Err(err) => return Err(err.into()),
    };
    Ok(ExitCode::from(launch::exit_code(status)))
}

/// The error of a session that ended without an exit status: why the pod ended, as `status`
/// names it, once its podvm recorded that (or is found gone); else the session's own reason.
fn ended(pods: &PodStore, uuid: &str, why: String) -> SessionError {
    let view = match pods::view_once_ended(pods, uuid, ENDED_WAIT) {
        Ok(view) => view,
        Err(_) => return ExecClientError::NoStatus(why).into(),
    };
    match (view.status.reason, view.status.cause) {
        (Some(reason), Some(cause)) => SessionError::PodEnded {
            uuid: view.uuid,
            reason: reason.lines().next().unwrap_or_default().to_string(),
            cause,
            last_line: view.console_last_line,
        },
        _ => ExecClientError::NoStatus(why).into(),
    }
}
