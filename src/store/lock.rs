//! Whole-store advisory lock (flock).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use nix::fcntl::{Flock, FlockArg};

use super::{io_err, Result, StoreError};

/// A held store lock; released on drop.
#[derive(Debug)]
pub struct StoreLock {
    _lock: Flock<File>,
}

impl StoreLock {
    /// Blocks until the lock at `path` is held (shared or exclusive).
    pub fn acquire(path: &Path, exclusive: bool) -> Result<StoreLock> {
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(crate::private::FILE_MODE)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .map_err(io_err("opening lock file", path))?;
        let arg = if exclusive {
            FlockArg::LockExclusive
        } else {
            FlockArg::LockShared
        };
        let lock = Flock::lock(f, arg).map_err(|(_, e)| StoreError::Io {
            what: "locking",
            path: path.to_path_buf(),
            source: e.into(),
        })?;
        Ok(StoreLock { _lock: lock })
    }
}
