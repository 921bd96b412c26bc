//! `podvm cp`: copies a directory's contents into or out of an app's root in a pod, running,
//! prepared or exited (`podvm cp SRC UUID:DST`, `podvm cp UUID:SRC DST`); modes and times are
//! kept. The app's tree is walked as `--copy-in` / `--copy-out` walk it ([`crate::pod::copy`]):
//! never through a symlink, and what comes out is the caller's, without setuid/setgid bits.
//!
//! A running pod's tree is its live overlay (the guest may see new files only once its
//! file-system cache times out); a prepared or exited pod's is mounted for the copy and
//! unmounted after it, with the pod locked meanwhile.

use std::path::Path;
use std::process::ExitCode;

use clap::Args;

use crate::image::{self, ImageError};
use crate::pod::copy::{self, CopySpec, PodCopyError};
use crate::pod::rootfs::{self, AppRootfs, RootfsError};
use crate::pod::{lock, PodError, PodState, PodStore};
use crate::store::{Store, StoreError};

/// Flags of `podvm cp`.
#[derive(Debug, Args)]
pub struct CpArgs {
    /// The app, when the pod has several.
    #[arg(long)]
    app: Option<String>,
    /// What to copy: a host directory, or UUID:DIR in the pod.
    source: String,
    /// Where to: UUID:DIR in the pod, or a host directory.
    dest: String,
}

/// Errors of `podvm cp`.
#[derive(Debug, thiserror::Error)]
pub enum CpError {
    /// Neither side, or both, name a pod.
    #[error("podvm cp: exactly one of SOURCE and DEST is UUID:DIR (got {from:?} and {dest:?})")]
    Sides {
        /// The source given.
        from: String,
        /// The destination given.
        dest: String,
    },
    /// The pod cannot be copied to or from.
    #[error(transparent)]
    Pod(#[from] PodError),
    /// The app's image is gone or broken.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The image store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The app's tree could not be mounted.
    #[error(transparent)]
    Rootfs(#[from] RootfsError),
    /// The copy failed.
    #[error(transparent)]
    Copy(#[from] PodCopyError),
}

/// Which way a copy goes.
enum Direction {
    In,
    Out,
}

/// Runs `podvm cp`.
pub fn cp(data_dir: &Path, args: CpArgs) -> Result<ExitCode, CpError> {
    let (direction, prefix, spec) = match (pod_side(&args.source), pod_side(&args.dest)) {
        (None, Some((prefix, guest))) => (
            Direction::In,
            prefix,
            CopySpec::copy_in(&format!("{}:{guest}", args.source))?,
        ),
        (Some((prefix, guest)), None) => (
            Direction::Out,
            prefix,
            CopySpec::copy_out(&format!("{guest}:{}", args.dest))?,
        ),
        _ => {
            return Err(CpError::Sides {
                from: args.source.clone(),
                dest: args.dest.clone(),
            })
        }
    };
    let pods = PodStore::open(data_dir)?;
    let pod = pods.find(prefix)?;
    let manifest = pods.manifest(&pod)?;
    let app = crate::pod::select_app(&pod.uuid, &manifest, args.app.as_deref())?;
    // A running pod's tree is mounted by its supervisor; any other's is mounted here, with the
    // pod locked so that nothing runs or removes it meanwhile.
    let (_held, _mounted, root) = match pod.state {
        PodState::Running => (None, None, rootfs::merged_path(&pod.dir, &app.name)),
        PodState::Prepared | PodState::Exited | PodState::ExitedGarbage => {
            let held = lock::try_lock(&pod.dir, &pod.uuid)?;
            let store = Store::open(data_dir)?;
            let tree = image::prepare_named(&store, &app.image.id)?.rootfs;
            let mounted = AppRootfs::prepare(&pod.dir, &app.name, &tree)?;
            let root = mounted.merged.clone();
            (Some(held), Some(mounted), root)
        }
        state => {
            return Err(PodError::WrongState {
                uuid: pod.uuid.clone(),
                state,
                hint: "podvm cp takes prepared, running and exited pods",
            }
            .into())
        }
    };
    match direction {
        Direction::In => copy::copy_in(&root, &spec)?,
        Direction::Out => copy::copy_out(&root, &spec)?,
    };
    Ok(ExitCode::SUCCESS)
}

/// `(pod, path)` of a `UUID:PATH` argument; `None` for a host path (one with a `/` before any
/// `:`, or none at all).
fn pod_side(text: &str) -> Option<(&str, &str)> {
    let (prefix, path) = text.split_once(':')?;
    let is_uuid_prefix =
        !prefix.is_empty() && prefix.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
    is_uuid_prefix.then_some((prefix, path))
}

#[cfg(test)]
mod tests {
    use super::pod_side;

    #[test]
    fn a_uuid_prefix_before_the_colon_names_the_pod() {
        assert_eq!(pod_side("3f2a:/out"), Some(("3f2a", "/out")));
        assert_eq!(pod_side("3f2a-9b:/out"), Some(("3f2a-9b", "/out")));
        assert_eq!(pod_side("./build:/x"), None);
        assert_eq!(pod_side("/srv/data"), None);
        assert_eq!(pod_side("artifacts"), None);
    }
}
