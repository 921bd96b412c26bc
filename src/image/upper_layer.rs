//! A pod's overlay upper directory (what its app wrote) as one OCI layer tar, for
//! `podvm image build --from IMAGE --run CMD`.
//!
//! The upper directory is the host overlayfs's record of the guest's writes: new and changed
//! entries as themselves, deletions as whiteouts (a character device 0:0, which the virtio-fs
//! guard never lets the guest make itself), and directories that replace a lower one as
//! opaque (`trusted.overlay.opaque` = `y`, an xattr the guest cannot set). In the layer they
//! become OCI's: a deletion is an empty file `.wh.NAME` and an opaque directory holds
//! `.wh..wh..opq`. Directories the overlay redirected and metadata-only copies (the
//! `trusted.overlay.redirect` and `trusted.overlay.metacopy` features, which podvm's mounts do
//! not enable) cannot be written as a layer and are refused.
//!
//! What the guest wrote is hostile. The walk holds each directory by a descriptor and opens
//! every entry by one name relative to it with `O_NOFOLLOW` (never a path string, never
//! through a symlink; a symlink is stored as a link with its target as text), a file is
//! opened non-blocking and checked to be the regular file the listing said, and it
//! contributes exactly the size it had then. Entries, depth and file bytes are bounded
//! ([`UpperLimits`]). Sockets, fifos and device nodes are left out, as `image build` of a
//! directory does. The files podvm itself writes into an app's root (`/etc/hosts`,
//! `/etc/resolv.conf`, `/etc/hostname`) are left out too, as Docker leaves them out of a
//! `RUN`'s layer: they name the build's pod, not the image.
//!
//! Reproducible: entries in byte order of their names, times at the epoch, owners root,
//! permission bits kept (setuid and setgid dropped).

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::fcntl::{openat, OFlag};
use nix::sys::stat::{fstat, Mode, SFlag};

use super::dirfd;

/// Entries podvm writes into an app's root for the pod's own sake, left out of the layer.
const POD_FILES: [&str; 3] = ["etc/hosts", "etc/resolv.conf", "etc/hostname"];
/// The overlay xattr that marks an opaque directory.
const OPAQUE_XATTR: &[u8] = b"trusted.overlay.opaque\0";
/// Overlay xattrs whose entries cannot be written as a layer.
const REFUSED_XATTRS: [&[u8]; 2] = [b"trusted.overlay.redirect\0", b"trusted.overlay.metacopy\0"];
/// The OCI whiteout prefix and the opaque marker.
const WHITEOUT: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

/// Bounds of one walk.
#[derive(Debug, Clone, Copy)]
pub struct UpperLimits {
    /// Entries (files, directories, links, whiteouts).
    pub max_entries: u64,
    /// Directory depth below the upper directory.
    pub max_depth: usize,
    /// Bytes of regular files.
    pub max_bytes: u64,
}

impl Default for UpperLimits {
    fn default() -> Self {
        Self {
            max_entries: 1_000_000,
            max_depth: 256,
            max_bytes: 16 << 30,
        }
    }
}

/// What a walk put in the layer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UpperReport {
    /// Entries written (whiteouts included).
    pub entries: u64,
    /// Bytes of regular files.
    pub bytes: u64,
    /// Entries left out (sockets, fifos, devices, podvm's own files).
    pub skipped: u64,
}

/// Errors of the walk; each names the entry, relative to the upper directory.
#[derive(Debug, thiserror::Error)]
pub enum UpperError {
    /// An entry could not be read.
    #[error("the pod's writes: cannot {what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The entry.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The tree is past a bound or in a form a layer cannot hold.
    #[error("the pod's writes: {path}: {why}")]
    Refused {
        /// The entry.
        path: PathBuf,
        /// Why.
        why: String,
    },
}

/// Writes the upper directory `upper` as a tar layer into `out`; returns the writer (the
/// tar finished) and what went in.
pub fn write_layer<W: Write>(
    upper: &OwnedFd,
    out: W,
    limits: UpperLimits,
) -> Result<(W, UpperReport), UpperError> {
    let mut walker = Walker {
        tar: tar::Builder::new(out),
        limits,
        report: UpperReport::default(),
    };
    walker.walk(upper, Path::new(""), 0)?;
    let report = walker.report;
    let out = walker
        .tar
        .into_inner()
        .map_err(io_error("finish", Path::new("")))?;
    Ok((out, report))
}

struct Walker<W: Write> {
    tar: tar::Builder<W>,
    limits: UpperLimits,
    report: UpperReport,
}

impl<W: Write> Walker<W> {
    fn walk(&mut self, dir: &OwnedFd, at: &Path, depth: usize) -> Result<(), UpperError> {
        let mut names: Vec<OsString> = dirfd::list(dir)
            .map_err(io_error("list", at))?
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        names.sort();
        for name in names {
            let path = at.join(&name);
            if POD_FILES.iter().any(|file| path == Path::new(file)) {
                self.report.skipped += 1;
                continue;
            }
            self.entry(dir, &name, &path, depth)?;
        }
        Ok(())
    }

    fn entry(
        &mut self,
        dir: &OwnedFd,
        name: &OsStr,
        path: &Path,
        depth: usize,
    ) -> Result<(), UpperError> {
        let Some(stat) = dirfd::stat_at(dir, name).map_err(io_error("stat", path))? else {
            return Ok(());
        };
        let kind = dirfd::kind(&stat);
        let mode = stat.st_mode & 0o1777;
        match kind {
            SFlag::S_IFCHR if stat.st_rdev == 0 => {
                let mut whiteout = OsString::from(WHITEOUT);
                whiteout.push(name);
                let at = path.parent().unwrap_or(Path::new("")).join(whiteout);
                self.append(&at, tar::EntryType::Regular, 0o644, io::empty(), 0)
            }
            SFlag::S_IFDIR => {
                if depth >= self.limits.max_depth {
                    return Err(refused(path, "deeper than the build allows"));
                }
                let sub = dirfd::open_dir_at(dir, name).map_err(io_error("open", path))?;
                refuse_overlay_features(&sub, path)?;
                self.append(path, tar::EntryType::Directory, mode, io::empty(), 0)?;
                if has_xattr(&sub, OPAQUE_XATTR, b"y") {
                    self.append(
                        &path.join(OPAQUE),
                        tar::EntryType::Regular,
                        0o644,
                        io::empty(),
                        0,
                    )?;
                }
                self.walk(&sub, path, depth + 1)
            }
            SFlag::S_IFREG => self.file(dir, name, path, &stat, mode),
            SFlag::S_IFLNK => {
                let target = dirfd::readlink_at(dir, name).map_err(io_error("read", path))?;
                self.count(path)?;
                let mut header = header(tar::EntryType::Symlink, 0o777, 0);
                self.tar
                    .append_link(&mut header, path, Path::new(&target))
                    .map_err(io_error("write", path))
            }
            _ => {
                self.report.skipped += 1;
                Ok(())
            }
        }
    }

    /// A regular file: opened by its name without following anything, checked to be the
    /// file that was listed, and read for exactly the size it had.
    fn file(
        &mut self,
        dir: &OwnedFd,
        name: &OsStr,
        path: &Path,
        listed: &nix::sys::stat::FileStat,
        mode: u32,
    ) -> Result<(), UpperError> {
        let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
        let fd = openat(Some(dir.as_raw_fd()), name, flags, Mode::empty())
            .map_err(|errno| io_error("open", path)(errno.into()))?;
        // SAFETY: openat returned a new descriptor that nothing else owns.
        let file = unsafe { File::from_raw_fd(fd) };
        let opened =
            fstat(file.as_raw_fd()).map_err(|errno| io_error("stat", path)(errno.into()))?;
        if dirfd::kind(&opened) != SFlag::S_IFREG
            || (opened.st_dev, opened.st_ino) != (listed.st_dev, listed.st_ino)
        {
            return Err(refused(path, "changed while it was read"));
        }
        let fd = OwnedFd::from(file.try_clone().map_err(io_error("open", path))?);
        refuse_overlay_features(&fd, path)?;
        let size = u64::try_from(opened.st_size).unwrap_or(0);
        self.report.bytes = self.report.bytes.saturating_add(size);
        if self.report.bytes > self.limits.max_bytes {
            return Err(refused(
                path,
                &format!("the files pass {} bytes", self.limits.max_bytes),
            ));
        }
        let exact = Exact {
            inner: file.take(size),
            left: size,
        };
        self.append(path, tar::EntryType::Regular, mode, exact, size)
    }

    fn append(
        &mut self,
        path: &Path,
        kind: tar::EntryType,
        mode: u32,
        data: impl Read,
        size: u64,
    ) -> Result<(), UpperError> {
        self.count(path)?;
        let mut header = header(kind, mode, size);
        self.tar
            .append_data(&mut header, path, data)
            .map_err(io_error("write", path))
    }

    fn count(&mut self, path: &Path) -> Result<(), UpperError> {
        self.report.entries += 1;
        if self.report.entries > self.limits.max_entries {
            return Err(refused(
                path,
                &format!("more than {} entries", self.limits.max_entries),
            ));
        }
        Ok(())
    }
}

/// A header with the build's fixed owners and time.
fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_size(size);
    header
}

/// Reads exactly `left` bytes: a file that shrank since it was measured is an error, not a
/// short entry that would misalign the archive.
struct Exact<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && self.left > 0 && !buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the file shrank while it was read",
            ));
        }
        self.left -= u64::try_from(n).unwrap_or(u64::MAX).min(self.left);
        Ok(n)
    }
}

/// Whether `fd` has the xattr `name` (NUL-terminated) with the value `value`.
fn has_xattr(fd: &OwnedFd, name: &[u8], value: &[u8]) -> bool {
    let mut buf = [0u8; 16];
    // SAFETY: `name` is NUL-terminated, and fgetxattr writes at most `buf.len()` bytes into
    // the buffer we own.
    let n = unsafe {
        libc::fgetxattr(
            fd.as_raw_fd(),
            name.as_ptr().cast(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    usize::try_from(n).is_ok_and(|n| buf.get(..n) == Some(value))
}

/// Whether `fd` has the xattr `name` (NUL-terminated) at all.
fn xattr_present(fd: &OwnedFd, name: &[u8]) -> bool {
    // SAFETY: `name` is NUL-terminated; a zero size asks for the value's length only.
    let n = unsafe {
        libc::fgetxattr(
            fd.as_raw_fd(),
            name.as_ptr().cast(),
            std::ptr::null_mut(),
            0,
        )
    };
    n >= 0
}

fn refuse_overlay_features(fd: &OwnedFd, path: &Path) -> Result<(), UpperError> {
    for name in REFUSED_XATTRS {
        if xattr_present(fd, name) {
            let shown = String::from_utf8_lossy(name.strip_suffix(b"\0").unwrap_or(name));
            return Err(refused(
                path,
                &format!("has {shown}, which a layer cannot express"),
            ));
        }
    }
    Ok(())
}

fn refused(path: &Path, why: &str) -> UpperError {
    UpperError::Refused {
        path: path.to_path_buf(),
        why: why.to_string(),
    }
}

fn io_error(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> UpperError {
    let path = path.to_path_buf();
    move |source| UpperError::Io { what, path, source }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::os::unix::fs::{symlink, PermissionsExt};

    use super::*;

    /// Path -> (type, mode, link target or contents) of the layer's entries, in order.
    fn entries(tar_bytes: &[u8]) -> Vec<(String, char, u32, String)> {
        let mut archive = tar::Archive::new(tar_bytes);
        let mut out = Vec::new();
        for entry in archive.entries().expect("entries") {
            let mut entry = entry.expect("entry");
            let header = entry.header().clone();
            assert_eq!((header.uid().ok(), header.gid().ok()), (Some(0), Some(0)));
            assert_eq!(header.mtime().ok(), Some(0));
            let path = entry.path().expect("path").display().to_string();
            let kind = match header.entry_type() {
                tar::EntryType::Directory => 'd',
                tar::EntryType::Symlink => 'l',
                _ => 'f',
            };
            let mut text = String::new();
            match entry.link_name().expect("link") {
                Some(target) => text = target.display().to_string(),
                None => {
                    entry.read_to_string(&mut text).expect("contents");
                }
            }
            out.push((path, kind, header.mode().expect("mode"), text));
        }
        out
    }

    fn layer(upper: &Path, limits: UpperLimits) -> Result<(Vec<u8>, UpperReport), UpperError> {
        let fd = dirfd::open_root(upper).expect("open");
        write_layer(&fd, Vec::new(), limits)
    }

    #[test]
    fn writes_are_entries_in_name_order_and_links_stay_links() {
        let dir = tempfile::tempdir().expect("tempdir");
        let upper = dir.path().join("upper");
        std::fs::create_dir_all(upper.join("b/sub")).expect("mkdir");
        std::fs::write(upper.join("built"), "built\n").expect("file");
        std::fs::write(upper.join("b/sub/x"), "x").expect("file");
        std::fs::set_permissions(
            upper.join("b/sub/x"),
            std::fs::Permissions::from_mode(0o4755),
        )
        .expect("chmod");
        // Attack: the guest leaves a link to a host file, hoping the build reads through it.
        let secret = dir.path().join("host-secret");
        std::fs::write(&secret, "host secret").expect("secret");
        symlink(&secret, upper.join("a-link")).expect("link");
        std::fs::create_dir_all(upper.join("etc")).expect("etc");
        std::fs::write(upper.join("etc/hosts"), "127.0.1.1 pod-uuid").expect("hosts");
        let (tar, report) = layer(&upper, UpperLimits::default()).expect("layer");
        let got = entries(&tar);
        let names: Vec<&str> = got.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(names, ["a-link", "b", "b/sub", "b/sub/x", "built", "etc"]);
        assert_eq!(got[0].1, 'l');
        assert_eq!(
            got[0].3,
            secret.display().to_string(),
            "a link, not the host file"
        );
        assert!(!got.iter().any(|e| e.3.contains("host secret")));
        assert_eq!(got[3].2, 0o755, "setuid dropped");
        assert_eq!(got[4].3, "built\n");
        assert_eq!(report.skipped, 1, "/etc/hosts is the pod's");
        assert_eq!(
            std::fs::read_to_string(&secret).expect("secret"),
            "host secret"
        );
    }

    #[test]
    fn deletions_become_whiteouts_and_opaque_dirs_say_so() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: overlay whiteouts (0:0 devices) and trusted.* xattrs need root");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let upper = dir.path().join("upper");
        std::fs::create_dir_all(upper.join("bin")).expect("mkdir");
        std::fs::create_dir_all(upper.join("opaque")).expect("mkdir");
        nix::sys::stat::mknod(
            &upper.join("bin/vi"),
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o600),
            0,
        )
        .expect("whiteout");
        let opaque = dirfd::open_root(&upper.join("opaque")).expect("open");
        // SAFETY: the name and value are valid for the call.
        let set = unsafe {
            libc::fsetxattr(
                opaque.as_raw_fd(),
                OPAQUE_XATTR.as_ptr().cast(),
                b"y".as_ptr().cast(),
                1,
                0,
            )
        };
        assert_eq!(set, 0, "trusted.overlay.opaque set as root");
        let (tar, _) = layer(&upper, UpperLimits::default()).expect("layer");
        let names: BTreeMap<String, char> = entries(&tar).into_iter().map(|e| (e.0, e.1)).collect();
        assert_eq!(names.get("bin/.wh.vi"), Some(&'f'), "{names:?}");
        assert!(!names.contains_key("bin/vi"), "{names:?}");
        assert_eq!(names.get("opaque/.wh..wh..opq"), Some(&'f'), "{names:?}");
    }

    #[test]
    fn entries_depth_and_bytes_are_bounded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let upper = dir.path().join("upper");
        std::fs::create_dir_all(upper.join("a/b/c")).expect("mkdir");
        std::fs::write(upper.join("big"), vec![0u8; 4096]).expect("file");
        let tight = |limits: UpperLimits| layer(&upper, limits).expect_err("refused").to_string();
        let roomy = UpperLimits::default();
        let err = tight(UpperLimits {
            max_entries: 2,
            ..roomy
        });
        assert!(err.contains("more than 2 entries"), "{err}");
        let err = tight(UpperLimits {
            max_depth: 2,
            ..roomy
        });
        assert!(err.contains("deeper"), "{err}");
        let err = tight(UpperLimits {
            max_bytes: 100,
            ..roomy
        });
        assert!(err.contains("big") && err.contains("100 bytes"), "{err}");
    }
}
