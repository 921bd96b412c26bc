//! The `delete` subcommand: what containerd runs after a shim died, with the bundle. The VM
//! died with the shim (it ran in the shim's process); what outlives it on the host is mounts:
//! the containers' overlays in the sandbox's share and the rootfs. They are unmounted, then the
//! sandbox's directory is removed (without following a symlink the guest may have planted,
//! and only once nothing is mounted beneath it).

use std::io;
use std::path::{Path, PathBuf};

use containerd_shim::api::DeleteResponse;
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::util::timestamp;

use crate::rootfs::{self, RootfsError};
use crate::task::SANDBOX_DIR;

/// The exit status reported for the task of a dead shim: killed (128 + SIGKILL).
const KILLED: u32 = 128 + 9;

/// Errors of the cleanup.
#[derive(Debug, thiserror::Error)]
pub enum CleanupError {
    /// Something could not be unmounted.
    #[error(transparent)]
    Unmount(#[from] RootfsError),
    /// A mount is still beneath the sandbox's directory: it is not removed.
    #[error("{0}: still mounted beneath it; not removed")]
    StillMounted(PathBuf),
    /// The sandbox's directory could not be removed.
    #[error("cannot remove {path}: {source}")]
    Remove {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

/// Cleans the bundle `bundle` up after its shim died.
pub fn bundle(bundle: &Path) -> Result<DeleteResponse, CleanupError> {
    let sandbox = bundle.join(SANDBOX_DIR);
    rootfs::unmount_all(&sandbox)?;
    if mounted_beneath(&sandbox) {
        return Err(CleanupError::StillMounted(sandbox));
    }
    match std::fs::remove_dir_all(&sandbox) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => {
            return Err(CleanupError::Remove {
                path: sandbox,
                source: err,
            })
        }
        _ => {}
    }
    rootfs::unmount_all(&bundle.join("rootfs"))?;
    Ok(DeleteResponse {
        pid: 0,
        exit_status: KILLED,
        exited_at: MessageField::some(timestamp().unwrap_or_default()),
        ..DeleteResponse::default()
    })
}

/// Whether anything is mounted at or beneath `dir` (unreadable mountinfo counts as yes).
fn mounted_beneath(dir: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return true;
    };
    let prefix = dir.to_string_lossy();
    info.lines()
        .filter_map(|line| line.split(' ').nth(4))
        .any(|point| point == prefix || point.starts_with(&format!("{prefix}/")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bundle_without_leftovers_is_cleaned_and_reported_killed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sandbox = dir.path().join(SANDBOX_DIR);
        std::fs::create_dir_all(sandbox.join("share/t1/rootfs")).expect("mkdir");
        std::fs::create_dir(dir.path().join("rootfs")).expect("mkdir");
        // The attack: the guest planted a link to a host directory in its share.
        let victim = tempfile::tempdir().expect("victim");
        std::fs::write(victim.path().join("keep"), b"host file").expect("write");
        std::os::unix::fs::symlink(victim.path(), sandbox.join("share/t1/rootfs/escape"))
            .expect("link");
        let response = bundle(dir.path()).expect("cleaned");
        assert_eq!(response.exit_status, KILLED);
        assert!(!sandbox.exists());
        assert!(
            victim.path().join("keep").exists(),
            "the link was not followed"
        );
        assert!(
            dir.path().join("rootfs").exists(),
            "containerd removes the bundle itself"
        );
        bundle(dir.path()).expect("a second cleanup finds nothing to do");
    }

    /// Mounts a tmpfs on `dir` (root only); false with the reason printed when it cannot.
    fn tmpfs_on(dir: &Path) -> bool {
        match nix::mount::mount(
            Some("tmpfs"),
            dir,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        ) {
            Ok(()) => true,
            Err(err) => {
                eprintln!("skipped: cannot mount a tmpfs (needs root): {err}");
                false
            }
        }
    }

    #[test]
    fn what_a_dead_shim_left_mounted_is_unmounted_before_anything_is_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join(SANDBOX_DIR).join("share/t1/rootfs");
        let rootfs = dir.path().join("rootfs");
        std::fs::create_dir_all(&root).expect("mkdir");
        std::fs::create_dir(&rootfs).expect("mkdir");
        if !tmpfs_on(&rootfs) {
            return;
        }
        // The image's files, which a removal must never reach through the mount.
        std::fs::write(rootfs.join("image-file"), b"x").expect("write");
        assert!(tmpfs_on(&root));
        bundle(dir.path()).expect("cleaned");
        assert!(!mounted_beneath(dir.path()), "nothing mounted is left");
        assert!(!dir.path().join(SANDBOX_DIR).exists());
        assert!(rootfs.is_dir() && !rootfs.join("image-file").exists());
    }
}
