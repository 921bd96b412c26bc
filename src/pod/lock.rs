//! Pod locks: `flock` on the pod's root-owned lock file `<pod dir>/lock` (mode 0600, in the
//! pod's 0700 directory), which follows the pod across renames of its directory.
//!
//! Only root can open that file, so no other user can take a flock that makes a pod look busy
//! (a flock on the pod directory itself, as before, could be taken by anyone who could open it).
//!
//! A flock belongs to an open file description: a process that inherits the descriptor (a
//! detached pod's supervisor, from the `run --detach` that locked the pod) holds the lock too,
//! with no moment in which it is free, and [`adopt`] takes it over.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use super::{io_err, PodError, Result};

/// File name of the lock file inside a pod directory.
pub const LOCK_FILE: &str = "lock";

/// A held exclusive lock on a pod; released on drop (unless a process it was handed to still
/// holds its descriptor).
#[derive(Debug)]
pub struct PodLock {
    lock: Flock<File>,
}

impl PodLock {
    /// The descriptor whose open file description holds the lock.
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.lock.as_fd()
    }

    /// Lets go of the lock without releasing it, for the processes that inherited its
    /// descriptor (a detached supervisor): dropping it would release it for them as well, an
    /// unlock acting on the open file description they share.
    pub fn hand_over(self) {
        let fd = self.lock.as_raw_fd();
        std::mem::forget(self.lock);
        // SAFETY: the forgotten Flock owned `fd` and will never close or unlock it; this takes
        // its place as the descriptor's only owner, and closes it without unlocking.
        drop(unsafe { OwnedFd::from_raw_fd(fd) });
    }
}

/// The lock file of the pod in `dir`.
pub fn path(dir: &Path) -> PathBuf {
    dir.join(LOCK_FILE)
}

/// Opens the pod's lock file without following a symlink; `create` makes it (mode 0600) when a
/// pod made by an older podvm has none.
fn open(dir: &Path, create: bool) -> std::io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(create)
        .create(create)
        .mode(crate::private::FILE_MODE)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path(dir))?;
    if !file.metadata()?.file_type().is_file() {
        return Err(std::io::Error::other(
            "the pod's lock is not a regular file",
        ));
    }
    Ok(file)
}

/// Takes the pod's exclusive lock without waiting; [`PodError::Busy`] if someone holds it.
pub fn try_lock(dir: &Path, uuid: &str) -> Result<PodLock> {
    let lock_path = path(dir);
    let file = open(dir, true).map_err(io_err("cannot open the pod's lock", &lock_path))?;
    exclusive(file, uuid, &lock_path)
}

/// Locks `file` (the pod's lock file at `lock_path`) exclusively without waiting.
fn exclusive(file: File, uuid: &str, lock_path: &Path) -> Result<PodLock> {
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(PodLock { lock }),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Err(PodError::Busy(uuid.to_string())),
        Err((_, errno)) => Err(io_err("cannot lock", lock_path)(errno.into())),
    }
}

/// Takes over the lock of the pod in `dir` that the inherited descriptor `fd` holds: it must
/// be that pod's lock file, and its open file description must hold the lock already (locking
/// it again is then a no-op; a descriptor of any other holder is [`PodError::Busy`]).
pub fn adopt(dir: &Path, uuid: &str, fd: OwnedFd) -> Result<PodLock> {
    let lock_path = path(dir);
    let file = File::from(fd);
    let given = file
        .metadata()
        .map_err(io_err("cannot inspect the inherited lock of", &lock_path))?;
    let pods = open(dir, false)
        .and_then(|own| own.metadata())
        .map_err(io_err("cannot open the pod's lock", &lock_path))?;
    if (given.dev(), given.ino()) != (pods.dev(), pods.ino()) {
        return Err(io_err(
            "the inherited descriptor is not the lock",
            &lock_path,
        )(std::io::ErrorKind::InvalidInput.into()));
    }
    if !is_locked(dir) {
        // Nobody holds it: the descriptor was not handed over locked.
        return Err(io_err(
            "the inherited descriptor does not hold the lock",
            &lock_path,
        )(std::io::ErrorKind::InvalidInput.into()));
    }
    exclusive(file, uuid, &lock_path)
}

/// Whether some process holds the pod's lock (probes by locking and releasing at once).
pub fn is_locked(dir: &Path) -> bool {
    let Ok(file) = open(dir, false) else {
        return false;
    };
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(_released_on_drop) => false,
        Err((_, errno)) => errno == nix::errno::Errno::EWOULDBLOCK,
    }
}

/// Whether process `pid` holds the pod's lock: `/proc/locks` names it as the lock's taker, or
/// one of its descriptors holds it (`/proc/<pid>/fdinfo`: a lock handed down to it).
pub fn is_held_by(dir: &Path, pid: u32) -> bool {
    let Ok(meta) = open(dir, false).and_then(|file| file.metadata()) else {
        return false;
    };
    let id = format!(
        "{:02x}:{:02x}:{}",
        libc::major(meta.dev()),
        libc::minor(meta.dev()),
        meta.ino()
    );
    let taker = std::fs::read_to_string("/proc/locks")
        .is_ok_and(|locks| locks.lines().any(|line| holds(line, Some(pid), &id)));
    taker || holds_through_descriptor(pid, &id)
}

/// Whether one of process `pid`'s descriptors holds a flock on the file `id`: each
/// `/proc/<pid>/fdinfo/<fd>` lists the locks of that descriptor's open file description
/// (`lock:\t1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF`, the pid being the taker's).
fn holds_through_descriptor(pid: u32, id: &str) -> bool {
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return false;
    };
    entries.flatten().any(|entry| {
        std::fs::read_to_string(entry.path()).is_ok_and(|info| {
            info.lines()
                .filter_map(|line| line.strip_prefix("lock:"))
                .any(|line| holds(line, None, id))
        })
    })
}

/// Whether a `/proc/locks` line is a held flock (taken by `pid`, if given) on the file `id`
/// (`MAJ:MIN:INODE`): `1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF`.
fn holds(line: &str, pid: Option<u32>, id: &str) -> bool {
    let fields: Vec<&str> = line.split_whitespace().collect();
    matches!(
        fields.as_slice(),
        [_, "FLOCK", _, _, holder, file, ..]
            if pid.is_none_or(|pid| *holder == pid.to_string()) && *file == id
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_is_busy_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(!is_locked(dir.path()), "no lock file yet: free");
        let held = try_lock(dir.path(), "p").expect("first lock");
        assert!(matches!(try_lock(dir.path(), "p"), Err(PodError::Busy(_))));
        assert!(is_locked(dir.path()));
        assert!(is_held_by(dir.path(), std::process::id()));
        assert!(!is_held_by(dir.path(), 1));
        drop(held);
        assert!(!is_locked(dir.path()));
        assert!(!is_held_by(dir.path(), std::process::id()));
        try_lock(dir.path(), "p").expect("free again");
        let mode = std::fs::metadata(path(dir.path())).expect("lock").mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_lock_symlinked_elsewhere_is_refused() {
        // Attack: the lock path points at another file, so locking (and creating) goes there.
        let dir = tempfile::tempdir().expect("tempdir");
        let elsewhere = dir.path().join("elsewhere");
        std::os::unix::fs::symlink(&elsewhere, path(dir.path())).expect("symlink");
        assert!(matches!(
            try_lock(dir.path(), "p"),
            Err(PodError::Io { .. })
        ));
        assert!(!elsewhere.exists(), "nothing created through the link");
    }

    /// The handover `run --detach` does: the lock goes to a child with its descriptor (here
    /// as its stdin), the locker lets go of its own without releasing it, and the child holds
    /// it alone; a descriptor of that open file description can be adopted, no other.
    #[test]
    fn a_lock_handed_to_a_child_is_held_by_it_and_can_be_adopted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let held = try_lock(dir.path(), "p").expect("lock");
        let dup = || held.as_fd().try_clone_to_owned().expect("dup");
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .stdin(File::from(dup()))
            .spawn()
            .expect("sleep");
        let kept = dup();
        held.hand_over();
        assert!(is_locked(dir.path()), "handed over, not released");
        assert!(is_held_by(dir.path(), child.id()), "through its stdin");
        let other = open(dir.path(), false).expect("open");
        assert!(
            matches!(adopt(dir.path(), "p", other.into()), Err(PodError::Busy(_))),
            "a descriptor that does not hold it takes nothing"
        );
        let elsewhere = File::open("/dev/null").expect("null");
        assert!(matches!(
            adopt(dir.path(), "p", elsewhere.into()),
            Err(PodError::Io { .. })
        ));
        let adopted = adopt(dir.path(), "p", kept).expect("the same open file description");
        drop(adopted);
        assert!(!is_locked(dir.path()), "released for every holder");
        child.kill().expect("kill");
        child.wait().expect("reap");
    }

    #[test]
    fn proc_locks_lines_are_matched_on_pid_and_file() {
        let line = "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF";
        assert!(holds(line, Some(1234), "08:01:5678"));
        assert!(holds(line, None, "08:01:5678"));
        assert!(!holds(line, Some(123), "08:01:5678"));
        assert!(!holds(line, None, "08:01:567"));
        assert!(!holds(
            "2: POSIX  ADVISORY  WRITE 1234 08:01:5678 0 EOF",
            None,
            "08:01:5678"
        ));
    }
}
