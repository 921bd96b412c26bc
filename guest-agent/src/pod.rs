//! Pods of several apps (the boot spec's `apps`; see the protocol crate's sessions section):
//! every app's root is mounted, then each app gets its own connection to the host (an app
//! session, opened like the boot session, first frame `App`), and [`workload::run_pod`] runs
//! them under rkt's rule.
//!
//! Off the VM (tests) app sessions connect to the Unix socket named by
//! `PODVM_AGENT_APP_SOCKET`.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use podvm_protocol::{AppSpec, BootSpec, Control, Message, HOST_CID};

use crate::channel::ChannelError;
use crate::power::Role;
use crate::rootfs::{self, RootfsError};
use crate::session::{Phase, Session};
use crate::volumes::{self, VolumeError};
use crate::vsock::{self, VsockChannel};
use crate::workload::{self, ExecService, Outcome, PodApp, WorkloadError};

/// Environment variable naming the Unix socket app sessions connect to off the VM.
pub const APP_SOCKET_ENV: &str = "PODVM_AGENT_APP_SOCKET";
/// The app root when the host shares none: the agent's own root.
const AGENT_ROOT: &str = "/";

/// Errors that keep a pod of several apps from starting.
#[derive(Debug, thiserror::Error)]
pub enum PodError {
    /// An app's root filesystem could not be mounted.
    #[error("cannot prepare the root filesystem of app {app}: {source}")]
    Rootfs {
        /// The app.
        app: String,
        /// Why.
        source: RootfsError,
    },
    /// The pod's volumes could not be mounted.
    #[error(transparent)]
    Volumes(#[from] VolumeError),
    /// A volume could not be mounted into an app's root.
    #[error("cannot mount a volume into app {app}: {source}")]
    Mount {
        /// The app.
        app: String,
        /// Why.
        source: VolumeError,
    },
    /// An app session could not be opened.
    #[error("cannot open the session of app {app}: {source}")]
    Connect {
        /// The app.
        app: String,
        /// Why.
        source: ChannelError,
    },
    /// Off the VM, no socket was named for app sessions.
    #[error("no {APP_SOCKET_ENV} to open app sessions on (off the VM)")]
    NoAppSocket,
    /// Two apps share a name.
    #[error("two apps are named {0:?}; app names must be unique")]
    DuplicateName(String),
    /// Supervising the apps failed.
    #[error(transparent)]
    Workload(#[from] WorkloadError),
}

/// Mounts every app's root, opens the app sessions and runs the apps until all ended.
pub fn run(
    role: Role,
    spec: &BootSpec,
    boot: Session,
    exec: Option<ExecService>,
) -> Result<Outcome, PodError> {
    volumes::mount_all(&spec.volumes)?;
    let mut apps = Vec::new();
    for (index, app) in spec.apps.iter().enumerate() {
        if spec.apps[..index]
            .iter()
            .any(|other| other.name == app.name)
        {
            return Err(PodError::DuplicateName(app.name.clone()));
        }
        let root = match &app.rootfs {
            Some(rootfs) => {
                let root = rootfs::prepare(rootfs).map_err(|source| PodError::Rootfs {
                    app: app.name.clone(),
                    source,
                })?;
                volumes::bind_into(&root, &rootfs.mounts, &spec.volumes).map_err(|source| {
                    PodError::Mount {
                        app: app.name.clone(),
                        source,
                    }
                })?;
                rootfs::seal(&root, rootfs).map_err(|source| PodError::Rootfs {
                    app: app.name.clone(),
                    source,
                })?;
                root
            }
            None => PathBuf::from(AGENT_ROOT),
        };
        apps.push(root);
    }
    let mut sessions = Vec::new();
    for (app, root) in spec.apps.iter().zip(apps) {
        let session = app_session(role, app)?;
        sessions.push(PodApp { session, root });
    }
    Ok(workload::run_pod(spec, boot, exec, sessions)?)
}

/// Opens `app`'s session and names the app on it.
fn app_session(role: Role, app: &AppSpec) -> Result<Session, PodError> {
    let connect_error = |source| PodError::Connect {
        app: app.name.clone(),
        source,
    };
    let stream = connect(role, &app.name)?;
    let io_error = |source: std::io::Error| {
        connect_error(ChannelError::Open {
            target: format!("app session {}", app.name),
            source,
        })
    };
    let target = format!("app session {}", app.name);
    let mut session =
        Session::over_stream(app.name.clone(), target, stream, Phase::Done).map_err(io_error)?;
    session
        .send(&Message::Control(Control::App {
            name: app.name.clone(),
        }))
        .map_err(connect_error)?;
    Ok(session)
}

/// A new connection to the host for app `app`: vsock in the VM, the Unix socket off it.
fn connect(role: Role, app: &str) -> Result<File, PodError> {
    let connect_error = |source| PodError::Connect {
        app: app.to_string(),
        source,
    };
    match (role, std::env::var_os(APP_SOCKET_ENV)) {
        (_, Some(path)) => {
            let stream = UnixStream::connect(&path).map_err(|source| {
                connect_error(ChannelError::Open {
                    target: PathBuf::from(path).display().to_string(),
                    source,
                })
            })?;
            Ok(File::from(OwnedFd::from(stream)))
        }
        (Role::Init, None) => {
            let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
            let port = vsock::port_from_cmdline(&cmdline).ok_or_else(|| {
                connect_error(ChannelError::Open {
                    target: format!("app session {app}"),
                    source: std::io::Error::other(format!(
                        "no {} on the kernel command line",
                        podvm_protocol::AGENT_PORT_PARAM
                    )),
                })
            })?;
            let channel = VsockChannel::connect(HOST_CID, port).map_err(connect_error)?;
            Ok(channel.into_stream())
        }
        (Role::Process, None) => Err(PodError::NoAppSocket),
    }
}
