//! Pods on disk, in rkt's state model.
//!
//! ```text
//! <dir>/pods/embryo/<uuid>          being created
//! <dir>/pods/prepare/<uuid>         being prepared (locked); unlocked here = aborted prepare
//! <dir>/pods/prepared/<uuid>        ready for run-prepared
//! <dir>/pods/run/<uuid>             running while its directory is locked, exited otherwise
//! <dir>/pods/exited-garbage/<uuid>  exited and marked by gc; deleted after the grace period
//! <dir>/pods/garbage/<uuid>         to be deleted
//! ```
//!
//! A pod moves between states by an atomic rename of its directory. Liveness is a held `flock`
//! on the pod directory itself (it survives renames), so a crashed podvm leaves a pod that reads
//! as exited and that `gc` can clean. Every pod directory holds the appc pod manifest (`pod`)
//! and `status.json`.

pub mod cgroup;
pub mod copy;
pub mod export;
pub mod lock;
pub mod logs;
pub mod manifest;
pub mod resources;
pub mod rootfs;
pub mod security;
pub mod state;
pub mod status;
pub mod store;
pub mod syscalls;
pub mod volumes;

pub use self::state::PodState;
pub use self::store::{Pod, PodStore};

/// The app of pod `uuid` that `name` names, or its only app when no name is given.
pub fn select_app<'a>(
    uuid: &str,
    manifest: &'a manifest::PodManifest,
    name: Option<&str>,
) -> Result<&'a manifest::RuntimeApp> {
    let found = match (name, manifest.apps.as_slice()) {
        (Some(name), apps) => apps.iter().find(|app| app.name == name),
        (None, [only]) => Some(only),
        (None, _) => None,
    };
    found.ok_or_else(|| PodError::NoSuchApp {
        uuid: uuid.to_string(),
        app: name.unwrap_or_default().to_string(),
        apps: manifest
            .apps
            .iter()
            .map(|app| app.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

use std::path::PathBuf;

/// Errors of the pod store.
#[derive(Debug, thiserror::Error)]
pub enum PodError {
    /// File system failure on a pod path.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// No pod matches.
    #[error("no pod matches {0:?}: `podvm list` shows the pods")]
    NotFound(String),
    /// The prefix matches several pods.
    #[error("{prefix:?} matches {count} pods: give more of the uuid")]
    Ambiguous {
        /// The prefix.
        prefix: String,
        /// How many matched.
        count: usize,
    },
    /// The data dir is not podvm's (another user's) or could not be made private.
    #[error(transparent)]
    Private(#[from] crate::private::PrivateError),
    /// The pod's cgroup could not be made or removed.
    #[error(transparent)]
    Cgroup(#[from] cgroup::CgroupError),
    /// The pod's supervisor could not be reached or refused over its control socket.
    #[error(transparent)]
    Control(#[from] crate::control::ControlError),
    /// Another podvm command holds the pod.
    #[error("pod {0} is busy: another podvm command holds it (running, or being changed)")]
    Busy(String),
    /// The pid a running pod recorded is not (or no longer) its podvm process.
    #[error(
        "pod {uuid}: process {pid} is not the pod's podvm ({why}); the pod's podvm is gone, so \
         nothing was signalled (`podvm status {uuid}` shows the pod)"
    )]
    NotThePodsProcess {
        /// The pod.
        uuid: String,
        /// The recorded pid.
        pid: u32,
        /// What did not match.
        why: String,
    },
    /// A stopped pod's podvm did not let go of it in time.
    #[error("pod {0} did not stop: its podvm process still holds it; check `podvm status {0}`")]
    StopTimeout(String),
    /// The pod has no app of that name (or several apps and none was named).
    #[error("pod {uuid} has no app {app:?}: pass --app with one of: {apps}")]
    NoSuchApp {
        /// The pod.
        uuid: String,
        /// The name given (empty when none was).
        app: String,
        /// The pod's apps.
        apps: String,
    },
    /// The pod is not in a state the command accepts.
    #[error("pod {uuid} is {state}: {hint}")]
    WrongState {
        /// The pod.
        uuid: String,
        /// Its state.
        state: PodState,
        /// What to do.
        hint: &'static str,
    },
    /// An app's root filesystem could not be prepared or released.
    #[error(transparent)]
    Rootfs(#[from] rootfs::RootfsError),
    /// A pod file did not parse.
    #[error("pod {uuid}: malformed {file}: {source}")]
    Malformed {
        /// The pod.
        uuid: String,
        /// Which file.
        file: &'static str,
        /// Why.
        source: serde_json::Error,
    },
}

/// Result of pod store operations.
pub type Result<T> = std::result::Result<T, PodError>;

/// Wraps an I/O error with what was done and on which path.
pub(crate) fn io_err(
    what: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> PodError {
    let path = path.into();
    move |source| PodError::Io { what, path, source }
}
