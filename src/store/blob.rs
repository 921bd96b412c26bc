//! Streaming, verified, resumable blob writes.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;

use nix::fcntl::{Flock, FlockArg};

use sha2::{Digest as _, Sha256};

use super::{io_err, sync_dir, Digest, Result, Store, StoreError};

/// A blob being written: `tmp/<hex>.partial`, exclusively locked, hashed as it is written.
///
/// [`BlobSink::commit`] verifies the digest and renames it into `blobs/`. Dropping it without
/// committing leaves the partial file for a later resume.
pub struct BlobSink {
    lock: Flock<File>,
    hasher: Sha256,
    written: u64,
    partial: PathBuf,
    dest: PathBuf,
    expected: Digest,
    size: Option<u64>,
    what: String,
}

impl BlobSink {
    /// Starts writing blob `expected` from scratch (discarding any partial file).
    pub fn create(
        store: &Store,
        expected: &Digest,
        size: Option<u64>,
        what: &str,
    ) -> Result<BlobSink> {
        loop {
            if let Some(mut s) = Self::open_partial(store, expected, size, what)? {
                s.restart()?;
                return Ok(s);
            }
        }
    }

    /// Opens blob `expected` for writing, resuming a partial file left by an interrupted fetch.
    /// Returns `None` if the blob is already in the store (possibly written by a concurrent
    /// fetch we waited for). [`BlobSink::offset`] tells where to resume.
    pub fn resume(
        store: &Store,
        expected: &Digest,
        size: Option<u64>,
        what: &str,
    ) -> Result<Option<BlobSink>> {
        loop {
            if store.has_blob(expected) {
                return Ok(None);
            }
            if let Some(s) = Self::open_partial(store, expected, size, what)? {
                return Ok(Some(s));
            }
        }
    }

    /// Opens and locks the partial file; `None` if it was renamed away while we waited.
    fn open_partial(
        store: &Store,
        expected: &Digest,
        size: Option<u64>,
        what: &str,
    ) -> Result<Option<BlobSink>> {
        let partial = store.tmp_dir().join(format!("{}.partial", expected.hex()));
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .mode(crate::private::FILE_MODE)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&partial)
            .map_err(io_err("opening partial blob", &partial))?;
        let lock = Flock::lock(f, FlockArg::LockExclusive).map_err(|(_, e)| StoreError::Io {
            what: "locking partial blob",
            path: partial.clone(),
            source: e.into(),
        })?;
        // Another process may have committed (renamed) the file while we waited for the lock.
        let ours = lock.metadata().map_err(io_err("stat", &partial))?.ino();
        match fs::symlink_metadata(&partial) {
            Ok(m) if m.ino() == ours => {}
            _ => return Ok(None),
        }
        let mut s = BlobSink {
            lock,
            hasher: Sha256::new(),
            written: 0,
            partial,
            dest: store.blob_path(expected),
            expected: expected.clone(),
            size,
            what: what.to_string(),
        };
        s.rehash_existing()?;
        Ok(Some(s))
    }

    /// Hashes the bytes already in the partial file and positions at its end.
    fn rehash_existing(&mut self) -> Result<()> {
        let mut f: &File = &self.lock;
        f.seek(SeekFrom::Start(0))
            .map_err(io_err("seeking", &self.partial))?;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = f
                .read(&mut buf)
                .map_err(io_err("reading partial blob", &self.partial))?;
            if n == 0 {
                break;
            }
            self.hasher.update(&buf[..n]);
            self.written += n as u64;
        }
        if self.size.is_some_and(|s| self.written > s) {
            self.restart()?;
        }
        Ok(())
    }

    /// Bytes already present (where a resumed download continues).
    pub fn offset(&self) -> u64 {
        self.written
    }

    /// Discards any content and starts over (e.g. the server ignored a Range request).
    pub fn restart(&mut self) -> Result<()> {
        let mut f: &File = &self.lock;
        f.set_len(0)
            .map_err(io_err("truncating partial blob", &self.partial))?;
        f.seek(SeekFrom::Start(0))
            .map_err(io_err("seeking", &self.partial))?;
        self.hasher = Sha256::new();
        self.written = 0;
        Ok(())
    }

    /// Maps a write error, naming the partial file.
    pub fn io_error(&self, e: io::Error) -> StoreError {
        match e.get_ref().and_then(|i| i.downcast_ref::<TooLargeMarker>()) {
            Some(_) => StoreError::TooLarge {
                what: self.what.clone(),
                expected: self.size.unwrap_or(0),
            },
            None => StoreError::Io {
                what: "writing blob",
                path: self.partial.clone(),
                source: e,
            },
        }
    }

    /// Verifies the digest, fsyncs and renames the blob into the store. On a mismatch the
    /// partial file is deleted and nothing is stored.
    pub fn commit(self) -> Result<()> {
        let written = self.written;
        let partial = self.partial.clone();
        let actual = Digest::from_hasher(self.hasher);
        let lock = self.lock;
        if actual != self.expected || self.size.is_some_and(|s| s != written) {
            let _ = fs::remove_file(&partial);
            return Err(StoreError::DigestMismatch {
                what: self.what,
                expected: self.expected,
                actual,
                size: written,
            });
        }
        lock.sync_all().map_err(io_err("syncing blob", &partial))?;
        lock.set_permissions(fs::Permissions::from_mode(0o400))
            .map_err(io_err("chmod blob", &partial))?;
        fs::rename(&partial, &self.dest).map_err(io_err("renaming blob into place", &self.dest))?;
        if let Some(d) = self.dest.parent() {
            sync_dir(d);
        }
        drop(lock);
        Ok(())
    }
}

#[derive(Debug)]
struct TooLargeMarker;
impl std::fmt::Display for TooLargeMarker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("more data than announced")
    }
}
impl std::error::Error for TooLargeMarker {}

impl Write for BlobSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(s) = self.size {
            if self.written + buf.len() as u64 > s {
                return Err(io::Error::other(TooLargeMarker));
            }
        }
        let n = (&*self.lock).write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
