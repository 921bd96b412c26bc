//! Pod volumes in the guest: each volume's virtio-fs share is mounted once at
//! `/podvm/volumes/<name>` ([`mount_all`]); every app root that mounts it gets a bind mount at
//! its target, created when missing, read-only when the volume or the mount says so
//! ([`bind_into`]). Apps of one pod that mount the same volume share its files.

use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};
use podvm_protocol::{MountSpec, VolumeSpec};

use crate::rootfs;

/// Where the agent mounts the pod's volumes.
const VOLUMES: &str = "/podvm/volumes";

/// Errors while mounting volumes.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// A directory could not be created.
    #[error("cannot create {path} for a volume: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A mount failed.
    #[error("cannot mount volume {volume} on {path}: {source}")]
    Mount {
        /// The volume.
        volume: String,
        /// The mount point.
        path: PathBuf,
        /// Why.
        source: Errno,
    },
    /// A mount names a volume the pod does not have.
    #[error("no volume {0:?} in the boot spec")]
    Unknown(String),
    /// The target resolves (through a symlink) outside the app's root.
    #[error("mount target {target} resolves to {resolved}, outside the app's root")]
    Escapes {
        /// The target inside the app.
        target: String,
        /// Where it led.
        resolved: PathBuf,
    },
    /// A name would leave the volumes directory.
    #[error("bad volume name {0:?}: must be one path component")]
    Name(String),
}

/// Where volume `name` is mounted in the agent's root.
fn path_of(name: &str) -> Result<PathBuf, VolumeError> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(VolumeError::Name(name.to_string()));
    }
    Ok(Path::new(VOLUMES).join(name))
}

/// Mounts every volume's share at `/podvm/volumes/<name>`.
pub fn mount_all(volumes: &[VolumeSpec]) -> Result<(), VolumeError> {
    for volume in volumes {
        let path = path_of(&volume.name)?;
        make_dir(&path)?;
        let flags = if volume.read_only {
            MsFlags::MS_RDONLY
        } else {
            MsFlags::empty()
        };
        mount(
            Some(volume.tag.as_str()),
            &path,
            Some("virtiofs"),
            flags,
            None::<&str>,
        )
        .map_err(|source| VolumeError::Mount {
            volume: volume.name.clone(),
            path: path.clone(),
            source,
        })?;
    }
    Ok(())
}

/// Binds the volumes `mounts` names into the app root `root`.
pub fn bind_into(
    root: &Path,
    mounts: &[MountSpec],
    volumes: &[VolumeSpec],
) -> Result<(), VolumeError> {
    for spec in mounts {
        let volume = volumes
            .iter()
            .find(|volume| volume.name == spec.volume)
            .ok_or_else(|| VolumeError::Unknown(spec.volume.clone()))?;
        let source = path_of(&volume.name)?;
        let target = rootfs::inside(root, Path::new(&spec.target));
        make_dir(&target)?;
        // A symlink in the image must not carry the mount out of the app's root.
        let resolved = std::fs::canonicalize(&target).map_err(|source| VolumeError::Dir {
            path: target.clone(),
            source,
        })?;
        if !resolved.starts_with(root) {
            return Err(VolumeError::Escapes {
                target: spec.target.clone(),
                resolved,
            });
        }
        let failed = |source| VolumeError::Mount {
            volume: volume.name.clone(),
            path: target.clone(),
            source,
        };
        mount(
            Some(&source),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(failed)?;
        if volume.read_only || spec.read_only {
            let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
            mount(None::<&str>, &target, None::<&str>, flags, None::<&str>).map_err(failed)?;
        }
    }
    Ok(())
}

fn make_dir(path: &Path) -> Result<(), VolumeError> {
    std::fs::create_dir_all(path).map_err(|source| VolumeError::Dir {
        path: path.to_path_buf(),
        source,
    })
}
