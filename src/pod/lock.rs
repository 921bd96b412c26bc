//! Pod locks: `flock` on the pod's root-owned lock file `<pod dir>/lock` (mode 0600, in the
//! pod's 0700 directory), which follows the pod across renames of its directory.
//!
//! Only root can open that file, so no other user can take a flock that makes a pod look busy
//! (a flock on the pod directory itself, as before, could be taken by anyone who could open it).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use super::{io_err, PodError, Result};

/// File name of the lock file inside a pod directory.
pub const LOCK_FILE: &str = "lock";

/// A held exclusive lock on a pod; released on drop.
#[derive(Debug)]
pub struct PodLock {
    _lock: Flock<File>,
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
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(PodLock { _lock: lock }),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Err(PodError::Busy(uuid.to_string())),
        Err((_, errno)) => Err(io_err("cannot lock", &lock_path)(errno.into())),
    }
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

/// Whether process `pid` holds the pod's lock, as `/proc/locks` reports flock holders.
pub fn is_held_by(dir: &Path, pid: u32) -> bool {
    let Ok(meta) = open(dir, false).and_then(|file| file.metadata()) else {
        return false;
    };
    let Ok(locks) = std::fs::read_to_string("/proc/locks") else {
        return false;
    };
    let id = format!(
        "{:02x}:{:02x}:{}",
        libc::major(meta.dev()),
        libc::minor(meta.dev()),
        meta.ino()
    );
    locks.lines().any(|line| holds(line, pid, &id))
}

/// Whether a `/proc/locks` line is a held flock of `pid` on the file `id` (`MAJ:MIN:INODE`):
/// `1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF`.
fn holds(line: &str, pid: u32, id: &str) -> bool {
    let fields: Vec<&str> = line.split_whitespace().collect();
    matches!(
        fields.as_slice(),
        [_, "FLOCK", _, _, holder, file, ..] if *holder == pid.to_string() && *file == id
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

    #[test]
    fn proc_locks_lines_are_matched_on_pid_and_file() {
        let line = "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF";
        assert!(holds(line, 1234, "08:01:5678"));
        assert!(!holds(line, 123, "08:01:5678"));
        assert!(!holds(line, 1234, "08:01:567"));
        assert!(!holds(
            "2: POSIX  ADVISORY  WRITE 1234 08:01:5678 0 EOF",
            1234,
            "08:01:5678"
        ));
    }
}
