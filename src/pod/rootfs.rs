//! An app's root filesystem for one pod run: a host overlayfs whose lower layer is the image's
//! rendered tree in the store (never modified) and whose upper and work directories live in the
//! pod, merged at rkt's path. The VM gets the merged directory over virtio-fs, so what the app
//! writes lands in the pod's upper directory.
//!
//! ```text
//! <pod>/overlay/<app>/upper                         the app's writes
//! <pod>/overlay/<app>/work                          overlayfs scratch
//! <pod>/stage1/rootfs/opt/stage2/<app>/rootfs       the merged tree (shared with the VM)
//! ```
//!
//! Without the privilege to mount (not root), the tree is copied into the merged path instead,
//! with a note. Mounts are undone when the run ends ([`AppRootfs`] drop), and [`unmount_below`]
//! clears leftovers of a crashed run before a pod directory is deleted.

use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// Errors while preparing or releasing an app's root filesystem.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    /// A directory could not be created.
    #[error("cannot create {path}: {source}")]
    Create {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The fallback copy failed.
    #[error("cannot copy the image tree {from} to {to}: {source}")]
    Copy {
        /// Source tree.
        from: PathBuf,
        /// Destination.
        to: PathBuf,
        /// Why.
        source: crate::tree_copy::CopyError,
    },
    /// A leftover mount could not be removed.
    #[error("cannot unmount {path} (left by an earlier run): {source}; unmount it by hand")]
    Unmount {
        /// The mount point.
        path: PathBuf,
        /// Why.
        source: Errno,
    },
    /// /proc/self/mountinfo could not be read.
    #[error("cannot read /proc/self/mountinfo to find leftover mounts: {0}")]
    Mountinfo(std::io::Error),
}

/// Directories the guest agent mounts on inside the app's root.
const MOUNT_POINTS: [&str; 4] = ["proc", "sys", "dev", "tmp"];

/// How the merged tree was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A host overlayfs mount (undone on drop).
    Overlay,
    /// A private copy of the image tree (no mount privilege).
    Copy,
}

/// The prepared root filesystem of one app; unmounted when dropped.
#[derive(Debug)]
pub struct AppRootfs {
    /// The merged tree to share with the VM.
    pub merged: PathBuf,
    /// Overlay or copy.
    pub kind: Kind,
}

/// `<pod>/stage1/rootfs/opt/stage2/<app>/rootfs`.
pub fn merged_path(pod_dir: &Path, app: &str) -> PathBuf {
    pod_dir
        .join("stage1/rootfs/opt/stage2")
        .join(app)
        .join("rootfs")
}

/// `<pod>/overlay/<app>/upper`.
pub fn upper_path(pod_dir: &Path, app: &str) -> PathBuf {
    pod_dir.join("overlay").join(app).join("upper")
}

impl AppRootfs {
    /// Builds the app's tree from the image tree `lower`: an overlay mount, or a copy when
    /// mounting is not permitted.
    pub fn prepare(pod_dir: &Path, app: &str, lower: &Path) -> Result<Self, RootfsError> {
        let merged = merged_path(pod_dir, app);
        let upper = upper_path(pod_dir, app);
        let work = pod_dir.join("overlay").join(app).join("work");
        for dir in [&merged, &upper, &work] {
            create_in_pod(dir)?;
        }
        let options = format!(
            "lowerdir={},upperdir={},workdir={}",
            escape(lower),
            escape(&upper),
            escape(&work)
        );
        // nosuid/nodev on the host: nothing the app creates can be a device or a setuid binary
        // for the host, whatever it is inside the VM.
        let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
        let prepared = match mount(
            Some("overlay"),
            &merged,
            Some("overlay"),
            flags,
            Some(options.as_str()),
        ) {
            Ok(()) => Self {
                merged,
                kind: Kind::Overlay,
            },
            Err(err) => {
                eprintln!(
                    "podvm: note: cannot mount an overlay on {} ({err}); the app gets a private \
                     copy of the image tree instead (slower to start, same isolation)",
                    merged.display()
                );
                crate::tree_copy::copy_tree(lower, &merged).map_err(|source| {
                    RootfsError::Copy {
                        from: lower.to_path_buf(),
                        to: merged.clone(),
                        source,
                    }
                })?;
                Self {
                    merged,
                    kind: Kind::Copy,
                }
            }
        };
        // The guest mounts proc, sys, dev and tmp there, even when the app's root is read-only.
        for dir in MOUNT_POINTS {
            let path = prepared.merged.join(dir);
            if std::fs::symlink_metadata(&path).is_err() {
                create(&path)?;
            }
        }
        Ok(prepared)
    }
}

impl Drop for AppRootfs {
    fn drop(&mut self) {
        if self.kind == Kind::Overlay {
            if let Err(err) = umount2(&self.merged, MntFlags::MNT_DETACH) {
                eprintln!(
                    "podvm: cannot unmount {}: {err}; `podvm rm`/`gc` will retry",
                    self.merged.display()
                );
            }
        }
    }
}

/// Creates `dir` below the pod dir: the directories leading to it root's alone (0700, like the
/// pod dir), `dir` itself with the usual mode, as it becomes the root the guest sees (an
/// overlay's root takes the upper dir's mode).
fn create_in_pod(dir: &Path) -> Result<(), RootfsError> {
    if let Some(parent) = dir.parent() {
        crate::private::create_dir_all(parent).map_err(|source| RootfsError::Create {
            path: parent.to_path_buf(),
            source,
        })?;
    }
    create(dir)
}

fn create(dir: &Path) -> Result<(), RootfsError> {
    std::fs::create_dir_all(dir).map_err(|source| RootfsError::Create {
        path: dir.to_path_buf(),
        source,
    })
}

/// Escapes the characters overlayfs options treat specially (`,` `:` `\`).
pub fn escape(path: &Path) -> String {
    let mut out = String::new();
    for c in path.to_string_lossy().chars() {
        if matches!(c, ',' | ':' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Unmounts everything mounted at or below `dir` (deepest first), e.g. the overlay of a run
/// that crashed, so the directory can be deleted without reaching into the image store.
pub fn unmount_below(dir: &Path) -> Result<usize, RootfsError> {
    // mountinfo has absolute, symlink-free paths; a relative or linked `dir` must match them.
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let mountinfo =
        std::fs::read_to_string("/proc/self/mountinfo").map_err(RootfsError::Mountinfo)?;
    let mut points: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape_mountinfo(field)))
        .filter(|point| point.starts_with(&dir))
        .collect();
    points.sort_by_key(|point| std::cmp::Reverse(point.components().count()));
    points.dedup();
    for point in &points {
        match umount2(point, MntFlags::MNT_DETACH) {
            Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
            Err(source) => {
                return Err(RootfsError::Unmount {
                    path: point.clone(),
                    source,
                })
            }
        }
    }
    Ok(points.len())
}

/// Decodes mountinfo's octal escapes (`\040` for a space).
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|_| bytes[i] == b'\\')
            .and_then(|digits| std::str::from_utf8(digits).ok())
            .and_then(|digits| u8::from_str_radix(digits, 8).ok());
        match octal {
            Some(byte) => {
                out.push(byte);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    #[test]
    fn paths_follow_rkts_layout() {
        let pod = Path::new("/var/lib/podvm/pods/run/u1");
        assert_eq!(
            merged_path(pod, "web"),
            Path::new("/var/lib/podvm/pods/run/u1/stage1/rootfs/opt/stage2/web/rootfs")
        );
        assert_eq!(
            upper_path(pod, "web"),
            Path::new("/var/lib/podvm/pods/run/u1/overlay/web/upper")
        );
    }

    #[test]
    fn mountinfo_escapes_and_overlay_option_escapes() {
        assert_eq!(unescape_mountinfo("/a\\040b/c"), "/a b/c");
        assert_eq!(unescape_mountinfo("/plain\\"), "/plain\\");
        assert_eq!(escape(Path::new("/a,b:c")), "/a\\,b\\:c");
    }

    #[test]
    fn overlay_keeps_the_lower_tree_untouched_and_unmounts_on_drop() {
        let dir = tempfile::tempdir().expect("tempdir");
        let lower = dir.path().join("image");
        std::fs::create_dir_all(lower.join("etc")).expect("lower");
        std::fs::write(lower.join("etc/conf"), b"image").expect("file");
        std::os::unix::fs::symlink("conf", lower.join("etc/link")).expect("link");
        let pod = dir.path().join("pod");
        let rootfs = AppRootfs::prepare(&pod, "app", &lower).expect("prepared");
        for private in [
            "stage1",
            "stage1/rootfs/opt/stage2/app",
            "overlay",
            "overlay/app",
        ] {
            let mode = std::fs::metadata(pod.join(private)).expect(private).mode();
            assert_eq!(mode & 0o7777, 0o700, "{private} is root's alone");
        }
        std::fs::write(rootfs.merged.join("etc/conf"), b"changed").expect("write");
        assert_eq!(
            std::fs::read(lower.join("etc/conf")).expect("lower"),
            b"image"
        );
        let upper = match rootfs.kind {
            Kind::Overlay => upper_path(&pod, "app"),
            Kind::Copy => rootfs.merged.clone(),
        };
        assert_eq!(
            std::fs::read(upper.join("etc/conf")).expect("upper"),
            b"changed"
        );
        assert_eq!(
            std::fs::read_link(rootfs.merged.join("etc/link")).expect("link"),
            Path::new("conf")
        );
        let (merged, kind) = (rootfs.merged.clone(), rootfs.kind);
        if kind == Kind::Overlay {
            // A crashed run leaves the mount: unmount_below finds and removes it.
            std::mem::forget(rootfs);
            assert_eq!(unmount_below(&pod).expect("unmounted"), 1);
        } else {
            eprintln!("note: overlay not mountable here, the copy fallback was tested");
            drop(rootfs);
        }
        assert!(!merged.join("etc").exists() || kind == Kind::Copy);
        assert_eq!(unmount_below(&pod).expect("nothing left"), 0);
    }

    #[test]
    fn leftovers_are_found_through_a_relative_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let point = dir.path().join("pod/stage1/left");
        std::fs::create_dir_all(&point).expect("mount point");
        if let Err(err) = mount(
            Some("tmpfs"),
            &point,
            Some("tmpfs"),
            MsFlags::empty(),
            None::<&str>,
        ) {
            eprintln!("skip: cannot mount a tmpfs here ({err}); needs root");
            return;
        }
        let cwd = std::env::current_dir().expect("cwd");
        let relative = pathdiff(&dir.path().join("pod"), &cwd);
        assert_eq!(unmount_below(&relative).expect("unmounted"), 1);
        std::fs::remove_dir_all(dir.path().join("pod")).expect("deletable once unmounted");
    }

    /// `target` relative to `base` (both absolute).
    fn pathdiff(target: &Path, base: &Path) -> PathBuf {
        let ups = base.components().count() - 1;
        let mut relative: PathBuf = std::iter::repeat_n("..", ups).collect();
        relative.push(target.strip_prefix("/").expect("absolute"));
        relative
    }
}
