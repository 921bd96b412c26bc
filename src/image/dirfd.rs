//! Descriptor-relative file operations for writing an image's rootfs: every name handled here
//! is one path component looked up in a directory the caller opened beneath the rootfs, and
//! none of these functions follows a symlink, so a tree that turns a directory into a symlink
//! cannot lead them out of it. Errors are plain [`io::Error`]s; callers add the image, layer
//! and entry.

use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

use nix::dir::{Dir, Type};
use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::{
    fchmod, fchmodat, fstat, fstatat, futimens, mkdirat, mknodat, utimensat, FchmodatFlags,
    FileStat, Mode, SFlag, UtimensatFlags,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchown, fchownat, linkat, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};

/// Flags of every directory opened here: readable (for listing, fchmod, futimens), never
/// through a symlink.
const DIR_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

fn owned(fd: std::os::fd::RawFd) -> OwnedFd {
    // SAFETY: `fd` was just returned by a successful openat and nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Opens the directory at `path` (a path of podvm's own, e.g. the rootfs being rendered); its
/// last component must not be a symlink.
pub fn open_root(path: &Path) -> io::Result<OwnedFd> {
    Ok(owned(openat(None, path, DIR_FLAGS, Mode::empty())?))
}

/// Opens the directory `name` in `dir`; fails with `ELOOP` or `ENOTDIR` if it is a symlink or
/// not a directory.
pub fn open_dir_at(dir: &OwnedFd, name: &OsStr) -> io::Result<OwnedFd> {
    Ok(owned(openat(
        Some(dir.as_raw_fd()),
        name,
        DIR_FLAGS,
        Mode::empty(),
    )?))
}

/// Whether `e` says a path component is missing, a symlink or not a directory.
pub fn is_gone(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error().map(Errno::from_raw),
        Some(Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP)
    )
}

/// Opens the directory `rel` below `root` by a walk that follows no symlink (not even one of
/// the image's own); `None` when a component is missing, a symlink or not a directory, e.g.
/// because a later entry replaced an ancestor.
pub fn open_beneath(root: &OwnedFd, rel: &Path) -> io::Result<Option<OwnedFd>> {
    let mut cur = root.try_clone()?;
    for c in rel.components() {
        let Component::Normal(name) = c else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a plain relative path", rel.display()),
            ));
        };
        match open_dir_at(&cur, name) {
            Ok(next) => cur = next,
            Err(e) if is_gone(&e) => return Ok(None),
            Err(e) => return Err(e),
        }
    }
    Ok(Some(cur))
}

/// `lstat` of `name` in `dir`; `None` if it does not exist.
pub fn stat_at(dir: &OwnedFd, name: &OsStr) -> io::Result<Option<FileStat>> {
    match fstatat(Some(dir.as_raw_fd()), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The file type bits of `st`.
pub fn kind(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits())
}

/// Creates the directory `name` in `dir`.
pub fn mkdir_at(dir: &OwnedFd, name: &OsStr, mode: u32) -> io::Result<()> {
    Ok(mkdirat(
        Some(dir.as_raw_fd()),
        name,
        Mode::from_bits_truncate(mode),
    )?)
}

/// Creates the new regular file `name` in `dir` (mode 0600, `EEXIST` if anything is there,
/// symlinks included).
pub fn create_file_at(dir: &OwnedFd, name: &OsStr) -> io::Result<File> {
    let flags =
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = openat(
        Some(dir.as_raw_fd()),
        name,
        flags,
        Mode::from_bits_truncate(0o600),
    )?;
    Ok(File::from(owned(fd)))
}

/// Creates the symlink `name` in `dir`, pointing at `target` (stored as is, never resolved).
pub fn symlink_at(target: &OsStr, dir: &OwnedFd, name: &OsStr) -> io::Result<()> {
    Ok(symlinkat(target, Some(dir.as_raw_fd()), name)?)
}

/// Reads the symlink `name` in `dir`.
pub fn readlink_at(dir: &OwnedFd, name: &OsStr) -> io::Result<OsString> {
    Ok(nix::fcntl::readlinkat(Some(dir.as_raw_fd()), name)?)
}

/// Makes `name` in `dir` a hard link to `src_name` in `src_dir` (a symlink is linked itself,
/// never followed).
pub fn link_at(src_dir: &OwnedFd, src_name: &OsStr, dir: &OwnedFd, name: &OsStr) -> io::Result<()> {
    Ok(linkat(
        Some(src_dir.as_raw_fd()),
        Path::new(src_name),
        Some(dir.as_raw_fd()),
        Path::new(name),
        AtFlags::empty(),
    )?)
}

/// Creates the device node or FIFO `name` in `dir` (mode 0600).
pub fn mknod_at(dir: &OwnedFd, name: &OsStr, kind: SFlag, dev: libc::dev_t) -> io::Result<()> {
    Ok(mknodat(
        Some(dir.as_raw_fd()),
        name,
        kind,
        Mode::from_bits_truncate(0o600),
        dev,
    )?)
}

/// Changes the owner of `name` in `dir` (of a symlink itself, never its target).
pub fn chown_at(dir: &OwnedFd, name: &OsStr, uid: u32, gid: u32) -> io::Result<()> {
    Ok(fchownat(
        Some(dir.as_raw_fd()),
        name,
        Some(Uid::from_raw(uid)),
        Some(Gid::from_raw(gid)),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    )?)
}

/// Sets the permission bits (setuid/setgid/sticky included) of `name` in `dir`, which must not
/// be a symlink: fchmodat2(AT_SYMLINK_NOFOLLOW) refuses one atomically (`EOPNOTSUPP`); on
/// kernels without it (before 6.6, or a seccomp filter refusing it with `ENOSYS` or `EPERM`)
/// the entry is checked with lstat first (see [`chmod_checked`]).
pub fn chmod_at(dir: &OwnedFd, name: &OsStr, mode: u32) -> io::Result<()> {
    let c = CString::new(name.as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "name contains a NUL byte"))?;
    // SAFETY: fchmodat2 reads the NUL-terminated string `c`, alive for the call; the other
    // arguments are plain integers. It only changes the mode of the entry it names.
    let r = unsafe {
        libc::syscall(
            libc::SYS_fchmodat2,
            dir.as_raw_fd(),
            c.as_ptr(),
            mode & 0o7777,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r == 0 {
        return Ok(());
    }
    match Errno::last() {
        Errno::ENOSYS | Errno::EPERM => chmod_checked(dir, name, mode),
        e => Err(e.into()),
    }
}

/// [`chmod_at`] without fchmodat2: pins the entry with an `O_PATH|O_NOFOLLOW` descriptor,
/// refuses it if that is a symlink, and changes the mode of exactly that inode through its
/// `/proc/self/fd` link (which names the open file, not a path), so no name is resolved twice
/// and a symlink swapped in between is never followed. Fails closed without /proc.
fn chmod_checked(dir: &OwnedFd, name: &OsStr, mode: u32) -> io::Result<()> {
    let fd = owned(openat(
        Some(dir.as_raw_fd()),
        name,
        OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?);
    if kind(&fstat(fd.as_raw_fd())?) == SFlag::S_IFLNK {
        return Err(Errno::EOPNOTSUPP.into());
    }
    let link = format!("/proc/self/fd/{}", fd.as_raw_fd());
    Ok(fchmodat(
        None,
        link.as_str(),
        Mode::from_bits_truncate(mode & 0o7777),
        FchmodatFlags::FollowSymlink,
    )?)
}

/// Sets the access and modification times of `name` in `dir` (of a symlink itself).
pub fn set_times_at(dir: &OwnedFd, name: &OsStr, secs: i64) -> io::Result<()> {
    let t = TimeSpec::new(secs, 0);
    Ok(utimensat(
        Some(dir.as_raw_fd()),
        name,
        &t,
        &t,
        UtimensatFlags::NoFollowSymlink,
    )?)
}

/// The access and modification times of the open file `fd`.
pub fn times(fd: &OwnedFd) -> io::Result<(TimeSpec, TimeSpec)> {
    let st = fstat(fd.as_raw_fd())?;
    Ok((
        TimeSpec::new(st.st_atime, st.st_atime_nsec),
        TimeSpec::new(st.st_mtime, st.st_mtime_nsec),
    ))
}

/// Sets the access and modification times of the open file `fd`.
pub fn set_times(fd: &OwnedFd, (atime, mtime): (TimeSpec, TimeSpec)) -> io::Result<()> {
    Ok(futimens(fd.as_raw_fd(), &atime, &mtime)?)
}

/// Sets the owner (when given), mode and mtime of the open directory `fd`.
pub fn set_dir_meta(
    fd: &OwnedFd,
    owner: Option<(u32, u32)>,
    mode: u32,
    secs: i64,
) -> io::Result<()> {
    if let Some((u, g)) = owner {
        fchown(
            fd.as_raw_fd(),
            Some(Uid::from_raw(u)),
            Some(Gid::from_raw(g)),
        )?;
    }
    // chown clears setuid/setgid, so the mode comes after it.
    fchmod(fd.as_raw_fd(), Mode::from_bits_truncate(mode & 0o7777))?;
    let t = TimeSpec::new(secs, 0);
    Ok(futimens(fd.as_raw_fd(), &t, &t)?)
}

/// The names in the open directory `dir` (without `.` and `..`), each with whether it is a
/// directory (not following symlinks). Lists through a fresh descriptor, so that `dir`'s own
/// position is untouched.
pub fn list(dir: &OwnedFd) -> io::Result<Vec<(OsString, bool)>> {
    let fresh = open_dir_at(dir, OsStr::new("."))?;
    let mut d = Dir::from(fresh)?;
    let mut out = Vec::new();
    for entry in d.iter() {
        let entry = entry?;
        let name = OsStr::from_bytes(entry.file_name().to_bytes());
        if name == "." || name == ".." {
            continue;
        }
        let is_dir = match entry.file_type() {
            Some(t) => t == Type::Directory,
            None => stat_at(dir, name)?.is_some_and(|st| kind(&st) == SFlag::S_IFDIR),
        };
        out.push((name.to_os_string(), is_dir));
    }
    Ok(out)
}

/// Removes the non-directory `name` from `dir`.
pub fn unlink_file(dir: &OwnedFd, name: &OsStr) -> io::Result<()> {
    Ok(unlinkat(
        Some(dir.as_raw_fd()),
        name,
        UnlinkatFlags::NoRemoveDir,
    )?)
}

/// (device, inode) of an open file.
fn id(fd: &OwnedFd) -> io::Result<(u64, u64)> {
    let st = fstat(fd.as_raw_fd())?;
    Ok((st.st_dev, st.st_ino))
}

/// Unlinks the non-directories in `dir` and returns the names of its subdirectories.
fn clear_files(dir: &OwnedFd) -> io::Result<Vec<OsString>> {
    let mut subdirs = Vec::new();
    for (name, is_dir) in list(dir)? {
        if is_dir {
            subdirs.push(name);
        } else {
            unlink_file(dir, &name)?;
        }
    }
    Ok(subdirs)
}

/// One directory on the way down [`remove_tree`].
struct Level {
    /// Its name in its parent.
    name: OsString,
    /// (device, inode) of its parent, checked when going back up through `..`.
    parent: (u64, u64),
    /// Subdirectories still to remove.
    pending: Vec<OsString>,
}

/// Removes the directory `name` of `dir` and everything in it, descending by descriptors that
/// never follow a symlink. Only one descriptor is open at a time (plus `dir`), whatever the
/// depth: the way back up is `..`, checked against the parent's recorded inode.
pub fn remove_tree(dir: &OwnedFd, name: &OsStr) -> io::Result<()> {
    let mut cur = open_dir_at(dir, name)?;
    let mut levels = vec![Level {
        name: name.to_os_string(),
        parent: id(dir)?,
        pending: clear_files(&cur)?,
    }];
    while let Some(top) = levels.last_mut() {
        if let Some(sub) = top.pending.pop() {
            let here = id(&cur)?;
            let next = open_dir_at(&cur, &sub)?;
            let pending = clear_files(&next)?;
            levels.push(Level {
                name: sub,
                parent: here,
                pending,
            });
            cur = next;
            continue;
        }
        let Some(done) = levels.pop() else { break };
        if levels.is_empty() {
            drop(cur);
            return Ok(unlinkat(
                Some(dir.as_raw_fd()),
                done.name.as_os_str(),
                UnlinkatFlags::RemoveDir,
            )?);
        }
        let up = open_dir_at(&cur, OsStr::new(".."))?;
        if id(&up)? != done.parent {
            return Err(io::Error::other(format!(
                "directory {:?} moved while it was being removed",
                done.name
            )));
        }
        unlinkat(
            Some(up.as_raw_fd()),
            done.name.as_os_str(),
            UnlinkatFlags::RemoveDir,
        )?;
        cur = up;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};

    #[test]
    fn remove_tree_stays_inside_and_handles_depth() {
        let t = tempfile::tempdir().expect("tempdir");
        let outside = t.path().join("outside");
        fs::create_dir(&outside).expect("mkdir");
        fs::write(outside.join("keep"), b"keep").expect("write");
        let top = t.path().join("top");
        let mut deep = top.join("victim");
        for i in 0..300 {
            deep.push(format!("d{i}"));
        }
        fs::create_dir_all(&deep).expect("mkdir -p");
        fs::write(deep.join("f"), b"x").expect("write");
        symlink(&outside, top.join("victim/d0/out")).expect("symlink");
        symlink(&outside, deep.join("out")).expect("symlink");
        let root = open_root(&top).expect("open");
        remove_tree(&root, OsStr::new("victim")).expect("removes");
        assert!(!top.join("victim").exists());
        assert_eq!(fs::read(outside.join("keep")).expect("kept"), b"keep");
        // A symlink to a directory is not removed through.
        symlink(&outside, top.join("link")).expect("symlink");
        assert!(remove_tree(&root, OsStr::new("link")).is_err());
        assert_eq!(fs::read(outside.join("keep")).expect("kept"), b"keep");
    }

    #[test]
    fn metadata_calls_never_follow_symlinks() {
        let t = tempfile::tempdir().expect("tempdir");
        let target = t.path().join("target");
        fs::write(&target, b"t").expect("write");
        fs::set_permissions(&target, fs::Permissions::from_mode(0o640)).expect("chmod");
        let before = fs::metadata(&target).expect("stat");
        let dir = t.path().join("dir");
        fs::create_dir(&dir).expect("mkdir");
        symlink(&target, dir.join("l")).expect("symlink");
        let d = open_root(&dir).expect("open");
        assert!(chmod_at(&d, OsStr::new("l"), 0o777).is_err());
        set_times_at(&d, OsStr::new("l"), 1000).expect("utimes on the link");
        assert!(open_dir_at(&d, OsStr::new("l")).is_err());
        let after = fs::metadata(&target).expect("stat");
        assert_eq!(after.mode(), before.mode());
        assert_eq!(after.mtime(), before.mtime());
        assert_eq!(
            fs::symlink_metadata(dir.join("l")).expect("l").mtime(),
            1000
        );
        assert!(chmod_checked(&d, OsStr::new("l"), 0o777).is_err());
        let after = fs::metadata(&target).expect("stat");
        assert_eq!(after.mode(), before.mode());
        fs::write(dir.join("f"), b"f").expect("write");
        chmod_at(&d, OsStr::new("f"), 0o4750).expect("chmod");
        assert_eq!(
            fs::metadata(dir.join("f")).expect("f").permissions().mode() & 0o7777,
            0o4750
        );
        chmod_checked(&d, OsStr::new("f"), 0o2711).expect("chmod");
        assert_eq!(
            fs::metadata(dir.join("f")).expect("f").permissions().mode() & 0o7777,
            0o2711
        );
    }
}
