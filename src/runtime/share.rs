//! The sandbox's one virtio-fs share for the roots of its containers, and how the host fills
//! and empties a container's directory in it.
//!
//! ```text
//! <sandbox>/share/                 the share (tag [`SHARE_TAG`]), the guest's /podvm/shares/<tag>
//! <sandbox>/share/<id>/rootfs      a container's root: an overlay mount (or a copy)
//! <sandbox>/overlay/<id>/upper     its writes; never visible to the guest
//! <sandbox>/overlay/<id>/work      overlayfs scratch
//! ```
//!
//! The guest can write anywhere in the share, so after the share's own directory was opened
//! nothing in it is looked up by a path string: `<id>` and `rootfs` are created with mkdirat
//! in the descriptor of their parent (an existing entry, e.g. a symlink the guest planted, is
//! an error, never followed), the overlay is made with the mount API (fsopen, fsmount) and
//! moved onto the descriptor of `rootfs` (move_mount), and the descriptor of the mount is kept
//! to unmount exactly that mount later. Without the privilege to mount, the image tree is
//! copied into the descriptor of `rootfs` ([`crate::tree_copy::copy_into`]). Removal walks by
//! descriptors that never follow a symlink ([`dirfd::remove_tree`]). The overlay's upper and
//! work directories are outside the share, in the sandbox's private directory.

use std::ffi::{CString, OsStr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{umount2, MntFlags};
use nix::sys::stat::{mkdirat, Mode};

use crate::image::dirfd;
use crate::pod::rootfs;

/// The share's virtio-fs tag; the agent mounts it at `/podvm/shares/<tag>`.
pub const SHARE_TAG: &str = "containers";
/// Directories the guest agent mounts on inside a container's root.
const MOUNT_POINTS: [&str; 4] = ["proc", "sys", "dev", "tmp"];

// The mount API's constants (linux/mount.h); fixed by the kernel's ABI.
const FSOPEN_CLOEXEC: libc::c_uint = 1;
const FSCONFIG_SET_STRING: libc::c_uint = 1;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
const FSMOUNT_CLOEXEC: libc::c_uint = 1;
const MOUNT_ATTR_NOSUID: libc::c_uint = 0x2;
const MOUNT_ATTR_NODEV: libc::c_uint = 0x4;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
const MOVE_MOUNT_T_EMPTY_PATH: libc::c_uint = 0x40;

/// Errors of the share and of containers' roots in it.
#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    /// A directory of the sandbox could not be made or opened.
    #[error("cannot set up {path}: {source}")]
    Setup {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The container's directory could not be made in the share.
    #[error("container {id}: cannot {what} in the share: {source}")]
    Dir {
        /// The container.
        id: String,
        /// The step.
        what: &'static str,
        /// Why (EEXIST: something, perhaps planted by the guest, is there already).
        source: std::io::Error,
    },
    /// The image's root could not be opened.
    #[error("container {id}: cannot open the image root {path}: {source}")]
    Image {
        /// The container.
        id: String,
        /// The image's rootfs directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Neither an overlay nor a copy could fill the root.
    #[error("container {id}: cannot fill its root (overlay: {overlay}): {source}")]
    Fill {
        /// The container.
        id: String,
        /// Why the overlay was not possible.
        overlay: Errno,
        /// Why the copy failed.
        source: crate::tree_copy::CopyError,
    },
    /// The container's root could not be unmounted.
    #[error("container {id}: cannot unmount its root: {source}")]
    Unmount {
        /// The container.
        id: String,
        /// Why.
        source: Errno,
    },
    /// The container's directories could not be removed.
    #[error("container {id}: cannot remove its directories: {source}")]
    Remove {
        /// The container.
        id: String,
        /// Why.
        source: std::io::Error,
    },
}

/// The share of one sandbox.
#[derive(Debug)]
pub struct ContainerShare {
    /// `<sandbox>/share`, served to the guest.
    dir: PathBuf,
    /// `<sandbox>/overlay`, private.
    overlay_dir: PathBuf,
    share: OwnedFd,
    overlay: OwnedFd,
    sandbox: OwnedFd,
}

/// How a container's root was filled.
#[derive(Debug)]
enum Fill {
    /// An overlay mount; the descriptor is the mount's root.
    Overlay(OwnedFd),
    /// A copy of the image tree.
    Copy,
}

/// A container's filled root in the share; [`ContainerShare::release`] empties it.
#[derive(Debug)]
pub struct ContainerRoot {
    id: String,
    fill: Fill,
}

impl ContainerRoot {
    /// The root relative to the share, as the agent is told: `<id>/rootfs`.
    pub fn share_path(&self) -> String {
        format!("{}/rootfs", self.id)
    }

    /// Whether the root is an overlay mount (else a copy).
    pub fn is_overlay(&self) -> bool {
        matches!(self.fill, Fill::Overlay(_))
    }
}

impl ContainerShare {
    /// Creates `share` and `overlay` in the sandbox's directory `sandbox` (root's alone).
    pub fn create(sandbox: &Path) -> Result<Self, ShareError> {
        let setup = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ShareError::Setup { path, source }
        };
        let sandbox_fd = dirfd::open_root(sandbox).map_err(setup(sandbox))?;
        let dir = sandbox.join("share");
        let overlay_dir = sandbox.join("overlay");
        let mut opened = Vec::new();
        for (name, path) in [("share", &dir), ("overlay", &overlay_dir)] {
            mkdirat(
                Some(sandbox_fd.as_raw_fd()),
                name,
                Mode::from_bits_truncate(0o700),
            )
            .map_err(|errno| setup(path)(errno.into()))?;
            opened.push(dirfd::open_dir_at(&sandbox_fd, OsStr::new(name)).map_err(setup(path))?);
        }
        let overlay = opened
            .pop()
            .ok_or_else(|| setup(&overlay_dir)(Errno::EBADF.into()))?;
        let share = opened
            .pop()
            .ok_or_else(|| setup(&dir)(Errno::EBADF.into()))?;
        Ok(Self {
            dir,
            overlay_dir,
            share,
            overlay,
            sandbox: sandbox_fd,
        })
    }

    /// The share's host directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Fills `<id>/rootfs` from the image tree `image` (a rendered rootfs on the host): an
    /// overlay whose writes go to the private upper directory, else a copy. `id` must be a
    /// checked container id (one path component).
    pub fn fill(&self, id: &str, image: &Path) -> Result<ContainerRoot, ShareError> {
        let dir_error = |what| {
            move |source| ShareError::Dir {
                id: id.to_string(),
                what,
                source,
            }
        };
        let image_fd = dirfd::open_root(image).map_err(|source| ShareError::Image {
            id: id.to_string(),
            path: image.to_path_buf(),
            source,
        })?;
        let container = make_dir(&self.share, id).map_err(dir_error("create its directory"))?;
        let filled = self.fill_in(id, &image_fd, image, &container);
        if filled.is_err() {
            let _ = self.release(ContainerRoot {
                id: id.to_string(),
                fill: Fill::Copy,
            });
        }
        filled
    }

    /// [`Self::fill`] once the container's directory is made.
    fn fill_in(
        &self,
        id: &str,
        image_fd: &OwnedFd,
        image: &Path,
        container: &OwnedFd,
    ) -> Result<ContainerRoot, ShareError> {
        let dir_error = |what| {
            move |source| ShareError::Dir {
                id: id.to_string(),
                what,
                source,
            }
        };
        let root = make_dir(container, "rootfs").map_err(dir_error("create rootfs"))?;
        let fill = match self.mount_overlay(id, image, &root) {
            Ok(mount) => Fill::Overlay(mount),
            Err(overlay) => {
                crate::tree_copy::copy_into(image_fd, &root, crate::tree_copy::Fidelity::Faithful)
                    .map_err(|source| ShareError::Fill {
                        id: id.to_string(),
                        overlay,
                        source,
                    })?;
                Fill::Copy
            }
        };
        let filled = ContainerRoot {
            id: id.to_string(),
            fill,
        };
        let top = match &filled.fill {
            Fill::Overlay(mount) => mount,
            Fill::Copy => &root,
        };
        for point in MOUNT_POINTS {
            match mkdirat(
                Some(top.as_raw_fd()),
                point,
                Mode::from_bits_truncate(0o755),
            ) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(errno) => {
                    let _ = self.release(filled);
                    return Err(dir_error("create a mount point")(errno.into()));
                }
            }
        }
        Ok(filled)
    }

    /// Mounts an overlay of `image` (lower) with private upper and work directories onto
    /// the directory `target`; the mount's descriptor.
    fn mount_overlay(&self, id: &str, image: &Path, target: &OwnedFd) -> Result<OwnedFd, Errno> {
        let private = make_dir(&self.overlay, id).map_err(errno_of)?;
        for name in ["upper", "work"] {
            mkdirat(
                Some(private.as_raw_fd()),
                name,
                Mode::from_bits_truncate(0o755),
            )?;
        }
        let base = self.overlay_dir.join(id);
        let fs = fsopen("overlay")?;
        fsconfig_string(&fs, "lowerdir", &rootfs::escape(image))?;
        fsconfig_string(&fs, "upperdir", &rootfs::escape(&base.join("upper")))?;
        fsconfig_string(&fs, "workdir", &rootfs::escape(&base.join("work")))?;
        fsconfig_create(&fs)?;
        let mount = fsmount(&fs, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV)?;
        move_mount_onto(&mount, target)?;
        Ok(mount)
    }

    /// Empties a container's place: unmounts its overlay (the very mount [`Self::fill`]
    /// made), then removes `<id>` from the share and from the private overlay directory.
    pub fn release(&self, root: ContainerRoot) -> Result<(), ShareError> {
        let id = root.id.clone();
        if let Fill::Overlay(mount) = &root.fill {
            umount2(fd_path(mount).as_path(), MntFlags::MNT_DETACH).map_err(|source| {
                ShareError::Unmount {
                    id: id.clone(),
                    source,
                }
            })?;
        }
        drop(root);
        let remove = |dir: &OwnedFd| match dirfd::remove_tree(dir, OsStr::new(&id)) {
            Err(err) if err.raw_os_error() != Some(libc::ENOENT) => Err(ShareError::Remove {
                id: id.clone(),
                source: err,
            }),
            _ => Ok(()),
        };
        remove(&self.share)?;
        remove(&self.overlay)
    }

    /// Removes the share and the overlay directory (every container released first).
    pub fn destroy(self) -> Result<(), ShareError> {
        for (name, path) in [("share", &self.dir), ("overlay", &self.overlay_dir)] {
            match dirfd::remove_tree(&self.sandbox, OsStr::new(name)) {
                Err(err) if err.raw_os_error() != Some(libc::ENOENT) => {
                    return Err(ShareError::Setup {
                        path: path.clone(),
                        source: err,
                    })
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// Makes the directory `name` in `parent` (failing if anything is there) and opens it without
/// following a symlink.
fn make_dir(parent: &OwnedFd, name: &str) -> std::io::Result<OwnedFd> {
    mkdirat(
        Some(parent.as_raw_fd()),
        name,
        Mode::from_bits_truncate(0o755),
    )?;
    dirfd::open_dir_at(parent, OsStr::new(name))
}

fn errno_of(err: std::io::Error) -> Errno {
    Errno::from_raw(err.raw_os_error().unwrap_or(libc::EIO))
}

/// `/proc/self/fd/<fd>`: the object of `fd` itself, whatever its path is now.
fn fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

fn c_string(text: &str) -> Result<CString, Errno> {
    CString::new(text).map_err(|_| Errno::EINVAL)
}

/// The descriptor a mount API call returned, or its errno.
fn new_fd(ret: libc::c_long) -> Result<OwnedFd, Errno> {
    if ret < 0 {
        return Err(Errno::last());
    }
    let fd = RawFd::try_from(ret).map_err(|_| Errno::EBADF)?;
    // SAFETY: the syscall just returned this new descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn check(ret: libc::c_long) -> Result<(), Errno> {
    if ret < 0 {
        Err(Errno::last())
    } else {
        Ok(())
    }
}

fn fsopen(fs_type: &str) -> Result<OwnedFd, Errno> {
    let name = c_string(fs_type)?;
    // SAFETY: fsopen reads the NUL-terminated name, which outlives the call.
    new_fd(unsafe { libc::syscall(libc::SYS_fsopen, name.as_ptr(), FSOPEN_CLOEXEC) })
}

fn fsconfig_string(fs: &OwnedFd, key: &str, value: &str) -> Result<(), Errno> {
    let (key, value) = (c_string(key)?, c_string(value)?);
    // SAFETY: the descriptor is an fs context; key and value are NUL-terminated strings that
    // outlive the call.
    check(unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            FSCONFIG_SET_STRING,
            key.as_ptr(),
            value.as_ptr(),
            0,
        )
    })
}

fn fsconfig_create(fs: &OwnedFd) -> Result<(), Errno> {
    // SAFETY: the descriptor is an fs context; the command takes no pointers.
    check(unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            FSCONFIG_CMD_CREATE,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_void>(),
            0,
        )
    })
}

fn fsmount(fs: &OwnedFd, attributes: libc::c_uint) -> Result<OwnedFd, Errno> {
    // SAFETY: the descriptor is a created fs context; no pointers are passed.
    new_fd(unsafe {
        libc::syscall(
            libc::SYS_fsmount,
            fs.as_raw_fd(),
            FSMOUNT_CLOEXEC,
            attributes,
        )
    })
}

fn move_mount_onto(mount: &OwnedFd, target: &OwnedFd) -> Result<(), Errno> {
    let empty = c_string("")?;
    // SAFETY: both descriptors are open; the empty paths are NUL-terminated and outlive the
    // call (with the EMPTY_PATH flags the descriptors themselves are the source and target).
    check(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            mount.as_raw_fd(),
            empty.as_ptr(),
            target.as_raw_fd(),
            empty.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(dir: &Path) -> PathBuf {
        let image = dir.join("image");
        std::fs::create_dir_all(image.join("etc")).expect("image");
        std::fs::write(image.join("etc/hello"), b"image").expect("file");
        image
    }

    #[test]
    fn a_container_root_is_filled_in_the_share_and_released_without_a_trace() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sandbox = dir.path().join("sandbox");
        crate::private::create_dir(&sandbox).expect("sandbox");
        let image = image(dir.path());
        let share = ContainerShare::create(&sandbox).expect("share");
        let root = share.fill("web", &image).expect("filled");
        assert_eq!(root.share_path(), "web/rootfs");
        if !root.is_overlay() {
            eprintln!("note: overlay not mountable here, the copy fallback was tested");
        }
        let rootfs = share.dir().join("web/rootfs");
        assert_eq!(
            std::fs::read(rootfs.join("etc/hello")).expect("file"),
            b"image"
        );
        for point in MOUNT_POINTS {
            assert!(rootfs.join(point).is_dir(), "{point}");
        }
        std::fs::write(rootfs.join("etc/hello"), b"changed").expect("write");
        assert_eq!(
            std::fs::read(image.join("etc/hello")).expect("image"),
            b"image"
        );
        share.release(root).expect("released");
        assert!(!share.dir().join("web").exists());
        assert!(!sandbox.join("overlay/web").exists());
        share.destroy().expect("destroyed");
        assert_eq!(std::fs::read_dir(&sandbox).expect("dir").count(), 0);
    }

    #[test]
    fn a_symlink_planted_where_a_container_goes_is_never_followed() {
        // Attack: the guest writes in the share; it plants `<id>` as a link to a host directory
        // before the host adds container `<id>`.
        let dir = tempfile::tempdir().expect("tempdir");
        let sandbox = dir.path().join("sandbox");
        crate::private::create_dir(&sandbox).expect("sandbox");
        let victim = dir.path().join("victim");
        std::fs::create_dir(&victim).expect("victim");
        let share = ContainerShare::create(&sandbox).expect("share");
        std::os::unix::fs::symlink(&victim, share.dir().join("evil")).expect("plant");
        let err = share.fill("evil", &image(dir.path())).expect_err("refused");
        assert!(err.to_string().contains("container evil"), "{err}");
        assert_eq!(std::fs::read_dir(&victim).expect("victim").count(), 0);
    }
}
