//! A faithful copy of a directory tree, for trees the host does not trust (an image's files):
//! every name is opened relative to its parent's descriptor and never through a symlink, so a
//! link in the tree cannot lead the copy out of it. Kept: file types (directories, regular
//! files, symlinks, fifos and device nodes), hard links within the tree, owners, permission bits
//! including setuid/setgid/sticky, and modification times. Sockets are skipped; without root,
//! so are device nodes and owners (the copy is the caller's), as the image store does.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::{fstatat, mkdirat, mknodat, utimensat, FileStat, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchownat, linkat, symlinkat, Gid, Uid};

use crate::image::dirfd;

/// A failed step of a copy: what was done, to which path (relative to the tree's top).
#[derive(Debug, thiserror::Error)]
#[error("cannot {what} {path}: {source}")]
pub struct CopyError {
    /// The step.
    pub what: &'static str,
    /// The path, relative to the top of the tree being copied or written.
    pub path: PathBuf,
    /// Why.
    #[source]
    pub source: Errno,
}

/// What a copy did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CopyReport {
    /// Entries copied (directories, files, links, nodes).
    pub entries: u64,
}

/// Opens the directory `relative` below `top` without following a symlink on the way
/// ([`dirfd::open_beneath`]); `/` and `..` components are dropped, so the walk stays below
/// `top`; `None` when some component is missing, not a directory or a symlink.
pub fn open_dir_below(top: &Path, relative: &Path) -> Result<Option<OwnedFd>, CopyError> {
    let failed = |path: &Path| {
        let path = path.to_path_buf();
        move |err: std::io::Error| CopyError {
            what: "open",
            path,
            source: errno_of(&err),
        }
    };
    let root = dirfd::open_root(top).map_err(failed(top))?;
    let below: PathBuf = relative
        .components()
        .filter_map(|component| match component {
            Component::Normal(name) => Some(name),
            _ => None,
        })
        .collect();
    dirfd::open_beneath(&root, &below).map_err(failed(relative))
}

/// Copies the tree `from` into `to` (created if missing; it should be empty).
pub fn copy_tree(from: &Path, to: &Path) -> Result<CopyReport, CopyError> {
    std::fs::create_dir_all(to).map_err(|err| CopyError {
        what: "create",
        path: to.to_path_buf(),
        source: errno_of(&err),
    })?;
    let from_fd = open_dir(None, from.as_os_str(), from)?;
    copy_contents(&from_fd, to)
}

/// Copies the contents of the open directory `from` into the existing directory `to`.
pub fn copy_contents(from: &OwnedFd, to: &Path) -> Result<CopyReport, CopyError> {
    let to_fd = open_dir(None, to.as_os_str(), to)?;
    copy_into(from, &to_fd, Fidelity::Faithful)
}

/// What a copy keeps of the entries' metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fidelity {
    /// Everything (owners and device nodes too when running as root): a faithful copy.
    Faithful,
    /// For files a hostile tree hands to the host (e.g. a job's artifacts): modes without
    /// setuid/setgid, times; no owners (the copy is the caller's), no device nodes.
    Untrusted,
}

/// Copies the contents of the open directory `from` into the open directory `to`, which also
/// takes `from`'s mode and times (and owner, if `fidelity` keeps owners).
pub fn copy_into(
    from: &OwnedFd,
    to_fd: &OwnedFd,
    fidelity: Fidelity,
) -> Result<CopyReport, CopyError> {
    let mut copier = Copier {
        to_top: to_fd.as_raw_fd(),
        links: HashMap::new(),
        report: CopyReport::default(),
        privileged: fidelity == Fidelity::Faithful && nix::unistd::geteuid().is_root(),
        mode_mask: match fidelity {
            Fidelity::Faithful => 0o7777,
            Fidelity::Untrusted => 0o1777,
        },
    };
    copier.copy_dir(from, to_fd, Path::new(""))?;
    let top = Path::new(".");
    let stat = nix::sys::stat::fstat(from.as_raw_fd()).map_err(fail("stat", top))?;
    copier.set_attributes(
        to_fd.as_raw_fd(),
        OsStr::new("."),
        top,
        &stat,
        SFlag::S_IFDIR,
    )?;
    Ok(copier.report)
}

fn open_dir(parent: Option<RawFd>, name: &OsStr, shown: &Path) -> Result<OwnedFd, CopyError> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = openat(parent, name, flags, Mode::empty()).map_err(fail("open", shown))?;
    // SAFETY: openat returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn fail<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(Errno) -> CopyError + 'a {
    move |source| CopyError {
        what,
        path: path.to_path_buf(),
        source,
    }
}

struct Copier {
    to_top: RawFd,
    /// (device, inode) of a source file with several links -> its copy, relative to `to_top`.
    links: HashMap<(u64, u64), PathBuf>,
    report: CopyReport,
    /// Running as root: owners are kept and device nodes made.
    privileged: bool,
    /// The permission bits kept.
    mode_mask: u32,
}

impl Copier {
    fn copy_dir(&mut self, from: &OwnedFd, to: &OwnedFd, at: &Path) -> Result<(), CopyError> {
        for name in entry_names(from, at)? {
            let path = at.join(&name);
            let stat = fstatat(
                Some(from.as_raw_fd()),
                name.as_os_str(),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(fail("stat", &path))?;
            self.copy_entry(from, to, &name, &path, &stat)?;
        }
        Ok(())
    }

    fn copy_entry(
        &mut self,
        from: &OwnedFd,
        to: &OwnedFd,
        name: &OsStr,
        path: &Path,
        stat: &FileStat,
    ) -> Result<(), CopyError> {
        let (src, dst) = (from.as_raw_fd(), to.as_raw_fd());
        let kind = SFlag::from_bits_truncate(stat.st_mode & SFlag::S_IFMT.bits());
        match kind {
            SFlag::S_IFDIR => {
                mkdirat(Some(dst), name, Mode::S_IRWXU).map_err(fail("create directory", path))?;
                let child_from = open_dir(Some(src), name, path)?;
                let child_to = open_dir(Some(dst), name, path)?;
                self.copy_dir(&child_from, &child_to, path)?;
            }
            SFlag::S_IFREG => {
                if self.link_again(stat, dst, name, path)? {
                    return Ok(());
                }
                copy_file(src, dst, name, path)?;
            }
            SFlag::S_IFLNK => {
                let target =
                    nix::fcntl::readlinkat(Some(src), name).map_err(fail("read link", path))?;
                symlinkat(target.as_os_str(), Some(dst), name)
                    .map_err(fail("create link", path))?;
            }
            SFlag::S_IFCHR | SFlag::S_IFBLK if !self.privileged => return Ok(()),
            SFlag::S_IFIFO | SFlag::S_IFCHR | SFlag::S_IFBLK => {
                let mode = Mode::from_bits_truncate(stat.st_mode & 0o777);
                mknodat(Some(dst), name, kind, mode, stat.st_rdev)
                    .map_err(fail("create node", path))?;
            }
            _ => return Ok(()),
        }
        self.report.entries += 1;
        self.set_attributes(dst, name, path, stat, kind)
    }

    /// Links `name` to the earlier copy of the same source file, if there is one; remembers
    /// this copy otherwise.
    fn link_again(
        &mut self,
        stat: &FileStat,
        dst: RawFd,
        name: &OsStr,
        path: &Path,
    ) -> Result<bool, CopyError> {
        if stat.st_nlink < 2 {
            return Ok(false);
        }
        let key = (stat.st_dev, stat.st_ino);
        if let Some(first) = self.links.get(&key) {
            linkat(
                Some(self.to_top),
                first.as_path(),
                Some(dst),
                Path::new(name),
                AtFlags::empty(),
            )
            .map_err(fail("link", path))?;
            self.report.entries += 1;
            return Ok(true);
        }
        self.links.insert(key, path.to_path_buf());
        Ok(false)
    }

    /// Owner first (it clears setuid bits), then the mode, then the times.
    fn set_attributes(
        &mut self,
        dst: RawFd,
        name: &OsStr,
        path: &Path,
        stat: &FileStat,
        kind: SFlag,
    ) -> Result<(), CopyError> {
        if self.privileged {
            let (uid, gid) = (Uid::from_raw(stat.st_uid), Gid::from_raw(stat.st_gid));
            fchownat(
                Some(dst),
                name,
                Some(uid),
                Some(gid),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(fail("set the owner of", path))?;
        }
        if kind != SFlag::S_IFLNK {
            let mode = Mode::from_bits_truncate(stat.st_mode & self.mode_mask);
            nix::sys::stat::fchmodat(
                Some(dst),
                name,
                mode,
                nix::sys::stat::FchmodatFlags::FollowSymlink,
            )
            .map_err(fail("set the mode of", path))?;
        }
        let atime = TimeSpec::new(stat.st_atime, stat.st_atime_nsec);
        let mtime = TimeSpec::new(stat.st_mtime, stat.st_mtime_nsec);
        utimensat(
            Some(dst),
            name,
            &atime,
            &mtime,
            UtimensatFlags::NoFollowSymlink,
        )
        .map_err(fail("set the times of", path))
    }
}

/// The names in the directory `dir` (without `.` and `..`).
fn entry_names(dir: &OwnedFd, at: &Path) -> Result<Vec<OsString>, CopyError> {
    let fd = nix::unistd::dup(dir.as_raw_fd()).map_err(fail("list", at))?;
    let mut listing = Dir::from_fd(fd).map_err(fail("list", at))?;
    let mut names = Vec::new();
    for entry in listing.iter() {
        let entry = entry.map_err(fail("list", at))?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(OsStr::from_bytes(name).to_os_string());
        }
    }
    Ok(names)
}

/// Copies the regular file `name` of directory `src` to a new file of directory `dst`.
fn copy_file(src: RawFd, dst: RawFd, name: &OsStr, path: &Path) -> Result<(), CopyError> {
    let read_flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let input = openat(Some(src), name, read_flags, Mode::empty()).map_err(fail("open", path))?;
    // SAFETY: openat returned a new descriptor that nothing else owns.
    let mut input = unsafe { File::from_raw_fd(input) };
    let write_flags =
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let output = openat(Some(dst), name, write_flags, Mode::S_IRUSR | Mode::S_IWUSR)
        .map_err(fail("create", path))?;
    // SAFETY: openat returned a new descriptor that nothing else owns.
    let mut output = unsafe { File::from_raw_fd(output) };
    std::io::copy(&mut input, &mut output).map_err(|err| CopyError {
        what: "copy",
        path: path.to_path_buf(),
        source: errno_of(&err),
    })?;
    Ok(())
}

fn errno_of(err: &std::io::Error) -> Errno {
    Errno::from_raw(err.raw_os_error().unwrap_or(libc::EIO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        let top = dir.path().join("image");
        std::fs::create_dir_all(top.join("data/sub")).expect("mkdir");
        std::fs::write(top.join("data/a.txt"), "a\n").expect("write");
        std::fs::hard_link(top.join("data/a.txt"), top.join("data/sub/hard.txt")).expect("link");
        std::fs::set_permissions(
            top.join("data/sub"),
            std::fs::Permissions::from_mode(0o2750),
        )
        .expect("chmod");
        std::fs::write(top.join("data/tool"), "#!/bin/sh\n").expect("write");
        std::fs::set_permissions(
            top.join("data/tool"),
            std::fs::Permissions::from_mode(0o4755),
        )
        .expect("chmod");
        std::os::unix::fs::symlink("/etc/passwd", top.join("data/abs")).expect("symlink");
        nix::unistd::mkfifo(&top.join("data/fifo"), Mode::from_bits_truncate(0o640)).expect("fifo");
        std::os::unix::fs::symlink("/etc", top.join("escape")).expect("symlink");
        dir
    }

    #[test]
    fn copies_types_modes_links_and_times() {
        let dir = tree();
        let top = dir.path().join("image");
        let to = dir.path().join("volume");
        std::fs::create_dir(&to).expect("mkdir");
        let from = open_dir_below(&top, Path::new("/data"))
            .expect("open")
            .expect("a dir");
        let report = copy_contents(&from, &to).expect("copy");
        assert_eq!(report.entries, 6);
        assert_eq!(
            std::fs::read_to_string(to.join("sub/hard.txt")).expect("read"),
            "a\n"
        );
        let (a, hard) = (
            std::fs::metadata(to.join("a.txt")).expect("stat"),
            std::fs::metadata(to.join("sub/hard.txt")).expect("stat"),
        );
        assert_eq!(a.ino(), hard.ino(), "hard link kept");
        assert_eq!(
            std::fs::metadata(to.join("tool")).expect("stat").mode() & 0o7777,
            0o4755
        );
        assert_eq!(
            std::fs::metadata(to.join("sub")).expect("stat").mode() & 0o7777,
            0o2750
        );
        assert_eq!(
            std::fs::read_link(to.join("abs")).expect("link"),
            Path::new("/etc/passwd")
        );
        let fifo = std::fs::symlink_metadata(to.join("fifo")).expect("stat");
        assert_eq!(fifo.mode() & 0o170777, 0o010640);
        let source = std::fs::metadata(top.join("data/a.txt")).expect("stat");
        assert_eq!(a.mtime(), source.mtime());
    }

    #[test]
    fn a_symlink_on_the_way_is_not_followed() {
        let dir = tree();
        let top = dir.path().join("image");
        assert!(open_dir_below(&top, Path::new("escape"))
            .expect("open")
            .is_none());
        assert!(open_dir_below(&top, Path::new("data/a.txt"))
            .expect("open")
            .is_none());
        assert!(open_dir_below(&top, Path::new("missing/x"))
            .expect("open")
            .is_none());
        assert!(open_dir_below(&top, Path::new("/data//sub/"))
            .expect("open")
            .is_some());
        // `..` is dropped, as the guest's path rules clamp it at the root.
        assert!(open_dir_below(&top, Path::new("../data"))
            .expect("open")
            .is_some());
    }
}
