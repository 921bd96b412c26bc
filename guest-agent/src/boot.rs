//! Early boot as PID 1: the kernel file systems and the console.

use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};

/// Errors while preparing the guest's file systems.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// A mount point could not be created.
    #[error("cannot create mount point {target}: {source}")]
    MountPoint {
        /// The directory.
        target: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// A mount failed.
    #[error(
        "cannot mount {fstype} on {target}: {source} (is it enabled in the guest kernel config?)"
    )]
    Mount {
        /// The file system type.
        fstype: &'static str,
        /// The mount point.
        target: &'static str,
        /// Why.
        source: Errno,
    },
}

/// One file system the agent mounts at boot.
struct Mount {
    fstype: &'static str,
    target: &'static str,
    flags: MsFlags,
    data: &'static str,
    /// Without it the workload cannot run; the others are conveniences.
    required: bool,
}

const NOSUID_NODEV: MsFlags = MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV);
const NOSUID_NODEV_NOEXEC: MsFlags = NOSUID_NODEV.union(MsFlags::MS_NOEXEC);

/// In mount order: `/dev` before its sub-mounts.
const MOUNTS: &[Mount] = &[
    Mount {
        fstype: "proc",
        target: "/proc",
        flags: NOSUID_NODEV_NOEXEC,
        data: "",
        required: true,
    },
    Mount {
        fstype: "sysfs",
        target: "/sys",
        flags: NOSUID_NODEV_NOEXEC,
        data: "",
        required: true,
    },
    Mount {
        fstype: "devtmpfs",
        target: "/dev",
        flags: MsFlags::MS_NOSUID,
        data: "mode=0755",
        required: true,
    },
    Mount {
        fstype: "devpts",
        target: "/dev/pts",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        data: "mode=0620,ptmxmode=0666",
        required: false,
    },
    Mount {
        fstype: "tmpfs",
        target: "/dev/shm",
        flags: NOSUID_NODEV,
        data: "mode=1777",
        required: false,
    },
    Mount {
        fstype: "tmpfs",
        target: "/tmp",
        flags: NOSUID_NODEV,
        data: "mode=1777",
        required: true,
    },
    Mount {
        fstype: "tmpfs",
        target: "/run",
        flags: NOSUID_NODEV,
        data: "mode=0755",
        required: true,
    },
];

/// Symlinks that devtmpfs does not provide but programs expect.
const DEV_LINKS: &[(&str, &str)] = &[
    ("/proc/self/fd", "/dev/fd"),
    ("/proc/self/fd/0", "/dev/stdin"),
    ("/proc/self/fd/1", "/dev/stdout"),
    ("/proc/self/fd/2", "/dev/stderr"),
];

/// Mounts proc, sysfs, devtmpfs, devpts and the tmpfs directories; already mounted ones are kept.
///
/// A failing optional mount (devpts, /dev/shm) is only logged.
pub fn mount_all() -> Result<(), BootError> {
    for entry in MOUNTS {
        match mount_one(entry) {
            Ok(()) => {}
            Err(err) if !entry.required => diag!("{err}; continuing without it"),
            Err(err) => return Err(err),
        }
    }
    for (target, link) in DEV_LINKS {
        if let Err(err) = std::os::unix::fs::symlink(target, link) {
            if err.kind() != std::io::ErrorKind::AlreadyExists {
                diag!("cannot create {link}: {err}");
            }
        }
    }
    Ok(())
}

fn mount_one(entry: &Mount) -> Result<(), BootError> {
    std::fs::create_dir_all(entry.target).map_err(|source| BootError::MountPoint {
        target: entry.target,
        source,
    })?;
    if is_mount_point(Path::new(entry.target)) {
        return Ok(());
    }
    let data = (!entry.data.is_empty()).then_some(entry.data);
    match mount(
        Some(entry.fstype),
        entry.target,
        Some(entry.fstype),
        entry.flags,
        data,
    ) {
        Ok(()) | Err(Errno::EBUSY) => Ok(()),
        Err(source) => Err(BootError::Mount {
            fstype: entry.fstype,
            target: entry.target,
            source,
        }),
    }
}

/// True if `path` lives on another device than its parent (something is mounted there).
fn is_mount_point(path: &Path) -> bool {
    let Some(parent) = path.parent() else {
        return false;
    };
    match (std::fs::metadata(path), std::fs::metadata(parent)) {
        (Ok(own), Ok(up)) => own.dev() != up.dev(),
        _ => false,
    }
}

/// Points stdin, stdout and stderr at `/dev/console` so diagnostics reach the console even if
/// the kernel could not open it for us.
pub fn attach_console() {
    let console = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open("/dev/console")
    {
        Ok(file) => file,
        Err(err) => {
            diag!("cannot open /dev/console: {err}; diagnostics may be lost");
            return;
        }
    };
    for target in 0..=2 {
        if let Err(err) = nix::unistd::dup2(console.as_raw_fd(), target) {
            diag!("cannot attach fd {target} to /dev/console: {err}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_are_detected() {
        // /proc is a mount point on every Linux host the tests run on; a plain directory is not.
        assert!(is_mount_point(Path::new("/proc")));
        let dir = tempfile::tempdir().expect("tempdir");
        let plain = dir.path().join("plain");
        std::fs::create_dir(&plain).expect("mkdir");
        assert!(!is_mount_point(&plain));
    }

    #[test]
    fn dev_comes_before_its_submounts() {
        let position = |target| MOUNTS.iter().position(|m| m.target == target);
        assert!(position("/dev") < position("/dev/pts"));
        assert!(position("/dev") < position("/dev/shm"));
    }
}
