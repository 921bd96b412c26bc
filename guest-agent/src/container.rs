//! Containers: a process in a root of its own, known by an id, created, started, signalled and
//! removed while the VM runs (see the protocol crate's containers section). The apps of a pod
//! of several apps are containers too, created at boot from the boot spec: one table
//! ([`Containers`]) admits both (unique ids, at most [`MAX_CONTAINERS`]), and one
//! [`Containers::start`] opens a container's session and starts its process there, whose end
//! the supervisor (`workload.rs`) reports.
//!
//! A container's session is a connection to the host opened when it starts, like an app
//! session (first frame `App` with its id): vsock in the VM, off the VM the Unix socket named
//! by `PODVM_AGENT_APP_SOCKET`.
//!
//! Off the VM nothing is mounted: the boot spec's shares are the directories
//! `$PODVM_AGENT_SHARES/<tag>`, and a container's root is its directory there, checked as in
//! the VM.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use podvm_protocol::{
    check_container_id, AppSpec, ContainerErrorKind, ContainerSpec, Control, ExitStatus, IdError,
    Message, ProcessSpec, ShareSpec, VolumeSpec, HOST_CID, MAX_CONTAINERS,
};

use crate::channel::ChannelError;
use crate::launch::Job;
use crate::power::Role;
use crate::rootfs::{self, RootfsError};
use crate::session::{Phase, Session};
use crate::volumes::{self, VolumeError};
use crate::vsock::{self, VsockChannel};

/// Environment variable naming the Unix socket app and container sessions connect to off
/// the VM.
pub const APP_SOCKET_ENV: &str = "PODVM_AGENT_APP_SOCKET";
/// Environment variable naming the directory that stands for the mounted shares off the VM.
pub const SHARES_ENV: &str = "PODVM_AGENT_SHARES";
/// The app root when the host shares none: the agent's own root.
const AGENT_ROOT: &str = "/";

/// Errors of containers and of the apps created as containers; each names its container.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// The id cannot be a container id.
    #[error("container {id:?}: bad id: {source}")]
    BadId {
        /// The id as given.
        id: String,
        /// What is wrong with it.
        source: IdError,
    },
    /// An app or container has the id already.
    #[error("container {0}: an app or container has this id already")]
    Exists(String),
    /// No container has the id.
    #[error("container {0}: no such container")]
    NotFound(String),
    /// The table is full.
    #[error("container {0}: the VM holds {MAX_CONTAINERS} apps and containers already")]
    TooMany(String),
    /// The root names a share the VM does not have.
    #[error("container {id}: no share {share:?} (the boot spec's shares: {known:?})")]
    NoShare {
        /// The container.
        id: String,
        /// The share named.
        share: String,
        /// The shares there are.
        known: Vec<String>,
    },
    /// The root could not be found or mounted.
    #[error("container {id}: root {what}: {source}")]
    Root {
        /// The container.
        id: String,
        /// The share and path, or the app's share.
        what: String,
        /// Why.
        source: RootfsError,
    },
    /// A volume could not be mounted into an app's root.
    #[error("app {id}: cannot mount a volume into its root: {source}")]
    Volume {
        /// The app.
        id: String,
        /// Why.
        source: VolumeError,
    },
    /// The process names no program.
    #[error("container {0}: its command is empty: there is nothing to run")]
    EmptyCommand(String),
    /// The process did not start (its session reports 127 or 126 as its end).
    #[error("container {id}: {message}")]
    NotStarted {
        /// The container.
        id: String,
        /// Why.
        message: String,
    },
    /// No such signal.
    #[error("container {id}: no such signal {signo}")]
    BadSignal {
        /// The container.
        id: String,
        /// The number given.
        signo: i32,
    },
    /// The container's state does not allow the request.
    #[error("container {id}: {why}")]
    WrongState {
        /// The container.
        id: String,
        /// Why not.
        why: &'static str,
    },
    /// The container's session could not be opened.
    #[error("container {id}: cannot open its session: {source}")]
    Session {
        /// The container.
        id: String,
        /// Why.
        source: ChannelError,
    },
    /// A share of the boot spec could not be mounted (or, off the VM, is not a directory).
    #[error("cannot mount the share {tag:?} for containers: {source}")]
    Share {
        /// The share's tag.
        tag: String,
        /// Why.
        source: RootfsError,
    },
    /// Off the VM, no directory stands for the shares.
    #[error("the boot spec has shares, but no {SHARES_ENV} names their directory (off the VM)")]
    NoSharesDir,
}

impl ContainerError {
    /// The kind the host is told.
    pub fn kind(&self) -> ContainerErrorKind {
        match self {
            ContainerError::BadId { .. } => ContainerErrorKind::BadId,
            ContainerError::Exists(_) => ContainerErrorKind::Exists,
            ContainerError::NotFound(_) => ContainerErrorKind::NotFound,
            ContainerError::TooMany(_) => ContainerErrorKind::TooMany,
            ContainerError::NoShare { .. } => ContainerErrorKind::BadRootfs,
            ContainerError::Root { source, .. } if source.is_bad_location() => {
                ContainerErrorKind::BadRootfs
            }
            ContainerError::EmptyCommand(_) | ContainerError::NotStarted { .. } => {
                ContainerErrorKind::BadProcess
            }
            ContainerError::BadSignal { .. } => ContainerErrorKind::BadSignal,
            ContainerError::WrongState { .. } => ContainerErrorKind::WrongState,
            ContainerError::Root { .. }
            | ContainerError::Volume { .. }
            | ContainerError::Session { .. }
            | ContainerError::Share { .. }
            | ContainerError::NoSharesDir => ContainerErrorKind::Failed,
        }
    }
}

/// Where a container came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// An app of the boot spec (a pod of several apps): under rkt's rule, never removed.
    App,
    /// A `CreateContainer` request.
    Request,
}

/// Where a container is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Its root is ready; its process waits for `StartContainer`.
    Created,
    /// Its process was started (and may have ended without being reported yet).
    Started,
    /// Its process ended and the host was told.
    Ended(ExitStatus),
}

/// One container.
#[derive(Debug)]
pub struct Container {
    /// Its id (an app's name).
    pub id: String,
    /// Its root directory, as the agent sees it.
    pub root: PathBuf,
    /// Its process.
    pub process: ProcessSpec,
    /// Where it came from.
    pub origin: Origin,
    /// Where it is in its life.
    pub state: State,
    /// The mount point to release when it is removed (a created container in the VM).
    mounted: Option<PathBuf>,
}

/// Every app and container of the VM, in the order they were created.
pub struct Containers {
    role: Role,
    /// Each share's tag, directory and whether it is read-only.
    shares: Vec<(String, PathBuf, bool)>,
    list: Vec<Container>,
}

impl Containers {
    /// An empty table over `shares`, which are mounted now (in the VM) or found below
    /// `$PODVM_AGENT_SHARES` (off it).
    pub fn new(role: Role, shares: &[ShareSpec]) -> Result<Self, ContainerError> {
        let mut mounted = Vec::new();
        for share in shares {
            let dir = match role {
                Role::Init => {
                    rootfs::mount_share(&share.tag, share.read_only).map_err(|source| {
                        ContainerError::Share {
                            tag: share.tag.clone(),
                            source,
                        }
                    })?
                }
                Role::Process => {
                    let base = std::env::var_os(SHARES_ENV).ok_or(ContainerError::NoSharesDir)?;
                    let dir = Path::new(&base).join(&share.tag);
                    rootfs::open_beneath(Path::new(&base), &share.tag).map_err(|source| {
                        ContainerError::Share {
                            tag: share.tag.clone(),
                            source,
                        }
                    })?;
                    dir
                }
            };
            mounted.push((share.tag.clone(), dir, share.read_only));
        }
        Ok(Self {
            role,
            shares: mounted,
            list: Vec::new(),
        })
    }

    /// The container with this id.
    pub fn get(&self, id: &str) -> Option<&Container> {
        self.list.iter().find(|container| container.id == id)
    }

    fn get_mut(&mut self, id: &str) -> Option<&mut Container> {
        self.list.iter_mut().find(|container| container.id == id)
    }

    /// Every app and container, in the order they were created.
    pub fn iter(&self) -> impl Iterator<Item = &Container> {
        self.list.iter()
    }

    /// Whether a new one named `id` fits: a unique id, room in the table.
    fn admit(&self, id: &str) -> Result<(), ContainerError> {
        if self.get(id).is_some() {
            return Err(ContainerError::Exists(id.to_string()));
        }
        if self.list.len() >= MAX_CONTAINERS {
            return Err(ContainerError::TooMany(id.to_string()));
        }
        Ok(())
    }

    /// Adds an app of the boot spec: its share mounted at `/opt/stage2/<app>/rootfs` (or the
    /// agent's root), the pod's `volumes` it mounts bound into it, sealed read-only if asked.
    pub fn add_app(&mut self, app: &AppSpec, volumes: &[VolumeSpec]) -> Result<(), ContainerError> {
        self.admit(&app.name)?;
        let root = match &app.rootfs {
            Some(rootfs) => {
                let root_error = |source| ContainerError::Root {
                    id: app.name.clone(),
                    what: format!("(share {:?})", rootfs.tag),
                    source,
                };
                let root = rootfs::prepare(rootfs).map_err(root_error)?;
                volumes::bind_into(&root, &rootfs.mounts, volumes).map_err(|source| {
                    ContainerError::Volume {
                        id: app.name.clone(),
                        source,
                    }
                })?;
                rootfs::seal(&root, rootfs).map_err(root_error)?;
                root
            }
            None => PathBuf::from(AGENT_ROOT),
        };
        self.list.push(Container {
            id: app.name.clone(),
            root,
            process: app.process(),
            origin: Origin::App,
            state: State::Created,
            mounted: None,
        });
        Ok(())
    }

    /// Creates a container by request: its id checked, its root found beneath its share
    /// without following symlinks and (in the VM) bound at `/opt/stage2/<id>/rootfs`.
    pub fn create(&mut self, spec: &ContainerSpec) -> Result<(), ContainerError> {
        let id = spec.id.clone();
        check_container_id(&id).map_err(|source| ContainerError::BadId {
            id: id.clone(),
            source,
        })?;
        self.admit(&id)?;
        if spec.process.command.first().is_none_or(String::is_empty) {
            return Err(ContainerError::EmptyCommand(id));
        }
        let location = &spec.rootfs;
        let Some((_, share_dir, share_read_only)) = self
            .shares
            .iter()
            .find(|(tag, _, _)| *tag == location.share)
        else {
            return Err(ContainerError::NoShare {
                id,
                share: location.share.clone(),
                known: self.shares.iter().map(|(tag, _, _)| tag.clone()).collect(),
            });
        };
        let root_error = |source| ContainerError::Root {
            id: id.clone(),
            what: format!("{:?} in share {:?}", location.path, location.share),
            source,
        };
        let dir = rootfs::open_beneath(share_dir, &location.path).map_err(root_error)?;
        let (root, mounted) = match self.role {
            Role::Init => {
                let root = rootfs::prepare_in_share(
                    Path::new(rootfs::STAGE2),
                    &id,
                    &dir,
                    *share_read_only,
                    location.read_only,
                )
                .map_err(root_error)?;
                (root.clone(), Some(root))
            }
            Role::Process => (share_dir.join(&location.path), None),
        };
        diag!("container {id}: created in {}", root.display());
        self.list.push(Container {
            id,
            root,
            process: spec.process.clone(),
            origin: Origin::Request,
            state: State::Created,
            mounted,
        });
        Ok(())
    }

    /// Starts a created container: opens its session and starts its process there (stdin
    /// closed unless [`ProcessSpec::stdin`]). A process that cannot start still gives a
    /// session, whose `launch_error` says why and which reports its end (127 or 126).
    pub fn start(&mut self, id: &str) -> Result<Session, ContainerError> {
        let role = self.role;
        let container = self
            .get_mut(id)
            .ok_or_else(|| ContainerError::NotFound(id.to_string()))?;
        if container.state != State::Created {
            return Err(ContainerError::WrongState {
                id: id.to_string(),
                why: "it was started already",
            });
        }
        let mut session = open_session(role, id).map_err(|source| ContainerError::Session {
            id: id.to_string(),
            source,
        })?;
        session.container = Some(id.to_string());
        session.start(
            &Job::from_process(&container.process, &container.id),
            &container.root,
        );
        if !container.process.stdin {
            session.close_stdin();
        }
        container.state = State::Started;
        Ok(session)
    }

    /// Records that a started container's process ended; whether the host must be told (a
    /// container created by request whose end was not recorded yet).
    pub fn ended(&mut self, id: &str, status: ExitStatus) -> bool {
        let Some(container) = self.get_mut(id) else {
            return false;
        };
        if container.state != State::Started {
            return false;
        }
        container.state = State::Ended(status);
        container.origin == Origin::Request
    }

    /// Forgets a container created by request that is not running: its root is unmounted
    /// and its cgroup removed (in the VM).
    pub fn remove(&mut self, id: &str) -> Result<(), ContainerError> {
        let index = self
            .list
            .iter()
            .position(|container| container.id == id)
            .ok_or_else(|| ContainerError::NotFound(id.to_string()))?;
        let container = &self.list[index];
        let why = match (container.origin, container.state) {
            (Origin::App, _) => Some("it is an app of the pod, not removable"),
            (_, State::Started) => Some("it is running: signal it and wait for its end first"),
            _ => None,
        };
        if let Some(why) = why {
            return Err(ContainerError::WrongState {
                id: id.to_string(),
                why,
            });
        }
        if let Some(root) = &container.mounted {
            rootfs::release(root).map_err(|source| ContainerError::Root {
                id: id.to_string(),
                what: root.display().to_string(),
                source,
            })?;
        }
        if self.role == Role::Init && !container.process.limits.is_empty() {
            crate::cgroup::remove(id);
        }
        diag!("container {id}: removed");
        self.list.remove(index);
        Ok(())
    }
}

/// Opens the session of app or container `id` and names it there (first frame `App`).
fn open_session(role: Role, id: &str) -> Result<Session, ChannelError> {
    let target = format!("session of {id}");
    let stream = connect(role, &target)?;
    let mut session = Session::over_stream(id.to_string(), target.clone(), stream, Phase::Done)
        .map_err(|source| ChannelError::Open { target, source })?;
    session.send(&Message::Control(Control::App {
        name: id.to_string(),
    }))?;
    Ok(session)
}

/// A new connection to the host: vsock in the VM, the Unix socket off it.
fn connect(role: Role, target: &str) -> Result<File, ChannelError> {
    let open_error = |source| ChannelError::Open {
        target: target.to_string(),
        source,
    };
    match (role, std::env::var_os(APP_SOCKET_ENV)) {
        (_, Some(path)) => {
            let stream = UnixStream::connect(&path).map_err(|source| ChannelError::Open {
                target: PathBuf::from(path).display().to_string(),
                source,
            })?;
            Ok(File::from(OwnedFd::from(stream)))
        }
        (Role::Init, None) => {
            let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
            let port = vsock::port_from_cmdline(&cmdline).ok_or_else(|| {
                open_error(std::io::Error::other(format!(
                    "no {} on the kernel command line",
                    podvm_protocol::AGENT_PORT_PARAM
                )))
            })?;
            Ok(VsockChannel::connect(HOST_CID, port)?.into_stream())
        }
        (Role::Process, None) => Err(open_error(std::io::Error::other(format!(
            "no {APP_SOCKET_ENV} to open sessions on (off the VM)"
        )))),
    }
}

#[cfg(test)]
mod tests {
    use podvm_protocol::ContainerRootfs;

    use super::*;

    fn table(dir: &Path) -> Containers {
        Containers {
            role: Role::Process,
            shares: vec![("s".into(), dir.to_path_buf(), false)],
            list: Vec::new(),
        }
    }

    fn spec(id: &str, path: &str) -> ContainerSpec {
        ContainerSpec {
            id: id.into(),
            rootfs: ContainerRootfs {
                share: "s".into(),
                path: path.into(),
                read_only: false,
            },
            process: ProcessSpec {
                command: vec!["true".into()],
                ..ProcessSpec::default()
            },
        }
    }

    #[test]
    fn requests_are_checked_and_every_refusal_names_the_container() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("a")).expect("mkdir");
        let mut containers = table(dir.path());
        containers.create(&spec("a", "a")).expect("create");
        let mut no_command = spec("c", "a");
        no_command.process.command.clear();
        let mut other_share = spec("d", "a");
        other_share.rootfs.share = "t".into();
        let cases = [
            (spec("A", "a"), ContainerErrorKind::BadId),
            (spec("a", "a"), ContainerErrorKind::Exists),
            (spec("b", "../a"), ContainerErrorKind::BadRootfs),
            (spec("b", "/a"), ContainerErrorKind::BadRootfs),
            (spec("b", "missing"), ContainerErrorKind::BadRootfs),
            (no_command, ContainerErrorKind::BadProcess),
            (other_share, ContainerErrorKind::BadRootfs),
        ];
        for (spec, kind) in cases {
            let err = containers.create(&spec).expect_err(&spec.id);
            assert_eq!(err.kind(), kind, "{err}");
            assert!(err.to_string().contains(&spec.id), "{err}");
        }
        assert_eq!(containers.iter().count(), 1);
    }

    #[test]
    fn the_table_is_bounded_and_apps_cannot_be_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut containers = table(dir.path());
        containers
            .add_app(
                &AppSpec {
                    name: "app".into(),
                    command: vec!["true".into()],
                    ..AppSpec::default()
                },
                &[],
            )
            .expect("app");
        for n in 1..MAX_CONTAINERS {
            containers
                .create(&spec(&format!("c{n}"), ""))
                .expect("room");
        }
        let err = containers.create(&spec("one-more", "")).expect_err("full");
        assert_eq!(err.kind(), ContainerErrorKind::TooMany);
        let err = containers.remove("app").expect_err("an app");
        assert_eq!(err.kind(), ContainerErrorKind::WrongState);
        containers.remove("c1").expect("created, never started");
        let err = containers.remove("c1").expect_err("gone");
        assert_eq!(err.kind(), ContainerErrorKind::NotFound);
        containers
            .create(&spec("one-more", ""))
            .expect("room again");
        let Err(err) = containers.start("nope") else {
            panic!("started an unknown container");
        };
        assert_eq!(err.kind(), ContainerErrorKind::NotFound);
    }
}
