//! Pod locks: `flock` on the pod directory itself, so the lock follows the pod across renames.

use std::fs::File;
use std::path::Path;

use nix::fcntl::{Flock, FlockArg};

use super::{io_err, PodError, Result};

/// A held exclusive lock on a pod directory; released on drop.
#[derive(Debug)]
pub struct PodLock {
    _lock: Flock<File>,
}

/// Takes the pod's exclusive lock without waiting; [`PodError::Busy`] if someone holds it.
pub fn try_lock(dir: &Path, uuid: &str) -> Result<PodLock> {
    let file = File::open(dir).map_err(io_err("cannot open pod directory", dir))?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(PodLock { _lock: lock }),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Err(PodError::Busy(uuid.to_string())),
        Err((_, errno)) => Err(io_err("cannot lock pod directory", dir)(errno.into())),
    }
}

/// Whether some process holds the pod's lock (probes by locking and releasing at once).
pub fn is_locked(dir: &Path) -> bool {
    let Ok(file) = File::open(dir) else {
        return false;
    };
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(_released_on_drop) => false,
        Err((_, errno)) => errno == nix::errno::Errno::EWOULDBLOCK,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_is_busy_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let held = try_lock(dir.path(), "p").expect("first lock");
        assert!(matches!(try_lock(dir.path(), "p"), Err(PodError::Busy(_))));
        assert!(is_locked(dir.path()));
        drop(held);
        assert!(!is_locked(dir.path()));
        try_lock(dir.path(), "p").expect("free again");
    }
}
