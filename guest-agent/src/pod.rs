//! Pods of several apps and sandboxes (the boot spec's `apps`, or `sandbox`; see the protocol
//! crate's sessions section): the pod's volumes and shares are mounted, every app is created as
//! a container ([`Containers::add_app`]), and [`workload::run_pod`] starts each on its own
//! session and runs them under rkt's rule, taking container requests meanwhile. A sandbox has
//! no apps: it runs the containers the host creates until `Shutdown`.

use podvm_protocol::BootSpec;

use crate::container::{ContainerError, Containers};
use crate::power::Role;
use crate::session::Session;
use crate::volumes::{self, VolumeError};
use crate::workload::{self, ExecService, Outcome, WorkloadError};

/// Errors that keep a pod of several apps from starting.
#[derive(Debug, thiserror::Error)]
pub enum PodError {
    /// The pod's volumes could not be mounted.
    #[error(transparent)]
    Volumes(#[from] VolumeError),
    /// The shares for containers could not be mounted, or an app could not be created.
    #[error(transparent)]
    App(#[from] ContainerError),
    /// Supervising the apps failed.
    #[error(transparent)]
    Workload(#[from] WorkloadError),
}

/// Mounts every app's root and runs the apps, each on its session, until all ended (a
/// sandbox: until `Shutdown`).
pub fn run(
    role: Role,
    spec: &BootSpec,
    boot: Session,
    exec: Option<ExecService>,
) -> Result<Outcome, PodError> {
    volumes::mount_all(&spec.volumes)?;
    let mut containers = Containers::new(role, &spec.shares)?;
    for app in &spec.apps {
        containers.add_app(app, &spec.volumes)?;
    }
    Ok(workload::run_pod(spec, boot, exec, containers)?)
}
