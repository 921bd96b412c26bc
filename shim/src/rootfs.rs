//! The task's root on the host: the snapshotter's mount that containerd passes with Create
//! (an `overlay` of the image's layers, or a `bind` of a directory for the native snapshotter),
//! mounted on the bundle's `rootfs` directory, which the podvm runtime then overlays into the
//! sandbox's share. Unmounted (with anything beneath it) when the task is deleted, or by the
//! `delete` subcommand after a crash.

use std::path::{Path, PathBuf};

use containerd_shim::protos::types::mount::Mount;
use nix::errno::Errno;
use nix::mount::{mount, MntFlags, MsFlags};

/// The most bytes of mount options the kernel takes in one page, less a margin.
const MAX_OPTION_BYTES: usize = 4096 - 512;

/// Errors mounting or unmounting the task's root.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    /// The mounts are not ones the shim takes.
    #[error("rootfs mounts: {0}")]
    Refused(String),
    /// The bundle's rootfs directory is not a plain directory.
    #[error("{path}: {why}")]
    Target {
        /// The directory.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// mount(2) failed.
    #[error("cannot mount the {typ} rootfs on {target}: {source}")]
    Mount {
        /// The mount's type.
        typ: String,
        /// The bundle's rootfs.
        target: PathBuf,
        /// Why.
        source: Errno,
    },
    /// The rootfs (or something beneath it) could not be unmounted.
    #[error("cannot unmount {target}: {reason}")]
    Unmount {
        /// The bundle's rootfs.
        target: PathBuf,
        /// Why.
        reason: String,
    },
}

/// Mounts containerd's rootfs mounts (none, or one `overlay` or `bind`) on `target`, nosuid and
/// nodev. None: the client filled the bundle's rootfs itself.
pub fn mount_all(mounts: &[Mount], target: &Path) -> Result<(), RootfsError> {
    let [m] = mounts else {
        return if mounts.is_empty() {
            Ok(())
        } else {
            Err(RootfsError::Refused(format!(
                "{} mounts: only one (overlay or bind) is supported",
                mounts.len()
            )))
        };
    };
    check_target(target)?;
    let (flags, data) = parse_options(&m.options);
    let typ = m.type_.as_str();
    let bind = flags.contains(MsFlags::MS_BIND);
    match typ {
        "overlay" if !bind => {}
        "bind" | "none" | "" if bind => {}
        _ => {
            return Err(RootfsError::Refused(format!(
                "type {typ:?} (options {:?}): only overlay and bind mounts are supported",
                m.options
            )))
        }
    }
    if data.len() > MAX_OPTION_BYTES {
        return Err(RootfsError::Refused(format!(
            "{} bytes of {typ} options: more than one mount takes (too many layers)",
            data.len()
        )));
    }
    let flags = flags | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    let failed = |source| RootfsError::Mount {
        typ: typ.to_string(),
        target: target.to_path_buf(),
        source,
    };
    let data = (!data.is_empty()).then_some(data.as_str());
    let fstype = (!bind).then_some(typ);
    mount(
        Some(m.source.as_str()),
        target,
        fstype,
        flags - MsFlags::MS_RDONLY,
        data,
    )
    .map_err(failed)?;
    if bind {
        // A bind mount takes nosuid, nodev and ro only on a remount.
        let remount = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | (flags & bind_attrs());
        if let Err(err) = mount(None::<&str>, target, None::<&str>, remount, None::<&str>) {
            let _ = nix::mount::umount2(target, MntFlags::MNT_DETACH);
            return Err(failed(err));
        }
    } else if flags.contains(MsFlags::MS_RDONLY) {
        let remount = MsFlags::MS_REMOUNT | flags;
        if let Err(err) = mount(None::<&str>, target, None::<&str>, remount, data) {
            let _ = nix::mount::umount2(target, MntFlags::MNT_DETACH);
            return Err(failed(err));
        }
    }
    Ok(())
}

fn bind_attrs() -> MsFlags {
    MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC
}

/// Unmounts `target` and everything mounted beneath it (a missing `target` is fine).
pub fn unmount_all(target: &Path) -> Result<(), RootfsError> {
    let failed = |reason: String| RootfsError::Unmount {
        target: target.to_path_buf(),
        reason,
    };
    let path = target
        .to_str()
        .ok_or_else(|| failed("not UTF-8".to_string()))?;
    containerd_shim::mount::umount_recursive(Some(path), MntFlags::MNT_DETACH.bits())
        .map_err(|err| failed(err.to_string()))
}

/// The bundle's rootfs must be a directory, not a symlink to one.
fn check_target(target: &Path) -> Result<(), RootfsError> {
    let why = match std::fs::symlink_metadata(target) {
        Ok(meta) if meta.file_type().is_dir() => return Ok(()),
        Ok(_) => "not a directory (or a symlink)".to_string(),
        Err(err) => err.to_string(),
    };
    Err(RootfsError::Target {
        path: target.to_path_buf(),
        why,
    })
}

/// containerd's mount options: the flags mount(2) takes, and the rest as the data string.
fn parse_options(options: &[String]) -> (MsFlags, String) {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for option in options {
        let (set, clear) = match option.as_str() {
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
            "bind" => (MsFlags::MS_BIND, MsFlags::empty()),
            "rbind" => (MsFlags::MS_BIND | MsFlags::MS_REC, MsFlags::empty()),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty()),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty()),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "dirsync" => (MsFlags::MS_DIRSYNC, MsFlags::empty()),
            // Flags that mount(2) would take as settings of the host's mounts are dropped.
            "suid" | "dev" | "exec" | "async" => continue,
            _ => {
                data.push(option.as_str());
                continue;
            }
        };
        flags = (flags | set) - clear;
    }
    (flags, data.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn overlay_options_are_data_and_flags_are_flags() {
        let (flags, data) = parse_options(&strings(&[
            "index=off",
            "workdir=/s/1/work",
            "upperdir=/s/1/fs",
            "lowerdir=/s/0/fs",
            "ro",
        ]));
        assert_eq!(flags, MsFlags::MS_RDONLY);
        assert_eq!(
            data,
            "index=off,workdir=/s/1/work,upperdir=/s/1/fs,lowerdir=/s/0/fs"
        );
        let (flags, data) = parse_options(&strings(&["rbind", "rw", "suid"]));
        assert_eq!(flags, MsFlags::MS_BIND | MsFlags::MS_REC);
        assert_eq!(data, "");
    }

    fn a_mount(typ: &str, options: &[&str]) -> Mount {
        Mount {
            type_: typ.to_string(),
            source: "/nowhere".to_string(),
            options: strings(options),
            ..Mount::default()
        }
    }

    #[test]
    fn other_types_and_several_mounts_are_refused_before_anything_is_mounted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = mount_all(&[a_mount("ext4", &[])], dir.path()).expect_err("ext4");
        assert!(err.to_string().contains("\"ext4\""), "{err}");
        let err = mount_all(&[a_mount("tmpfs", &["bind"])], dir.path()).expect_err("tmpfs");
        assert!(matches!(err, RootfsError::Refused(_)), "{err}");
        let two = [a_mount("overlay", &[]), a_mount("overlay", &[])];
        let err = mount_all(&two, dir.path()).expect_err("two");
        assert!(err.to_string().contains("2 mounts"), "{err}");
        assert!(mount_all(&[], dir.path()).is_ok(), "nothing to mount");
    }

    #[test]
    fn a_rootfs_that_is_a_symlink_is_not_mounted_on() {
        // The attack: the bundle's rootfs replaced by a link to a host directory, so that the
        // image would be mounted over it.
        let dir = tempfile::tempdir().expect("tempdir");
        let link = dir.path().join("rootfs");
        std::os::unix::fs::symlink("/etc", &link).expect("link");
        let err = mount_all(&[a_mount("overlay", &["lowerdir=/x"])], &link).expect_err("link");
        assert!(matches!(err, RootfsError::Target { .. }), "{err}");
    }
}
