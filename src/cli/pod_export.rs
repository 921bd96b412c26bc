//! `podvm export`: an app of an exited pod as an ACI (see [`crate::pod::export`]).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;

use crate::image::{self, ImageError};
use crate::pod::export::{self, ExportError};
use crate::pod::{lock, PodError, PodState, PodStore};
use crate::store::{Store, StoreError};

/// Flags of `podvm export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The app to export; needed when the pod has several.
    #[arg(long)]
    app: Option<String>,
    /// Replace FILE if it exists.
    #[arg(long)]
    overwrite: bool,
    /// The exited pod (a unique uuid prefix).
    uuid: String,
    /// The ACI to write.
    file: PathBuf,
}

/// Errors of `podvm export`.
#[derive(Debug, thiserror::Error)]
pub enum ExportCliError {
    /// The pod cannot be exported.
    #[error(transparent)]
    Pod(#[from] PodError),
    /// The image store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The app's image is gone or broken.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// Writing the ACI failed.
    #[error("pod {uuid}: {source}")]
    Export {
        /// The pod.
        uuid: String,
        /// Why.
        source: ExportError,
    },
}

/// Runs `podvm export`.
pub fn export(data_dir: &Path, args: ExportArgs) -> Result<ExitCode, ExportCliError> {
    let pods = PodStore::open(data_dir)?;
    let pod = pods.find(&args.uuid)?;
    if !matches!(pod.state, PodState::Exited | PodState::ExitedGarbage) {
        return Err(PodError::WrongState {
            uuid: pod.uuid.clone(),
            state: pod.state,
            hint: "only exited pods can be exported (`podvm stop` it first)",
        }
        .into());
    }
    // Held while exporting: `gc` cannot delete the pod under it.
    let _held = lock::try_lock(&pod.dir, &pod.uuid)?;
    let manifest = pods.manifest(&pod)?;
    let app = crate::pod::select_app(&pod.uuid, &manifest, args.app.as_deref())?;
    let store = Store::open(data_dir)?;
    let tree = image::prepare_named(&store, &app.image.id)?.rootfs;
    export::export_app(&pod.dir, app, &tree, &args.file, args.overwrite).map_err(|source| {
        ExportCliError::Export {
            uuid: pod.uuid.clone(),
            source,
        }
    })?;
    Ok(ExitCode::SUCCESS)
}
