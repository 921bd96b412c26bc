//! The image store: content-addressed blobs, image records and rendered rootfs trees.
//!
//! Layout under `<PODVM_DIR>/images/`:
//!
//! ```text
//! lock                       flock: shared while fetching/rendering, exclusive for rm/gc
//! blobs/sha256/<hex>         verified blobs (manifests, configs, layers), read-only files
//! records/<hex>.json         one image record per image; <hex> = the image id's digest
//! trees/<hex>/rootfs         rendered rootfs of the image (layers applied), complete or absent
//! tmp/                       partial downloads (<hex>.partial, resumable) and trees being rendered
//! ```
//!
//! The image id is `sha256:<hex>` of the image's config blob (the "image ID" of docker), so the
//! same image fetched from a registry, an OCI layout or a docker archive is one image. Blobs are
//! written to `tmp/` while being hashed, verified against the expected digest, fsync'd and
//! atomically renamed into `blobs/`: a blob whose content does not match its digest is never
//! visible in `blobs/`.

mod blob;
pub mod digest;
mod lock;
mod maint;
pub mod record;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

pub use blob::BlobSink;
pub use digest::Digest;
pub use lock::StoreLock;
pub use record::ImageRecord;

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Filesystem error on a store path.
    #[error("image store: {what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// Content did not hash to the expected digest; nothing was stored.
    #[error("digest mismatch for {what}: expected {expected}, got {actual} ({size} bytes); the content was discarded")]
    DigestMismatch {
        /// What was being stored.
        what: String,
        /// Expected digest.
        expected: Digest,
        /// Actual digest.
        actual: Digest,
        /// Bytes received.
        size: u64,
    },
    /// Content was larger than announced.
    #[error("{what}: got more than the announced {expected} bytes; the content was discarded")]
    TooLarge {
        /// What was being stored.
        what: String,
        /// Announced size.
        expected: u64,
    },
    /// A record file is corrupt.
    #[error("image store: corrupt image record {path}: {source}")]
    BadRecord {
        /// The record file.
        path: PathBuf,
        /// The cause.
        source: serde_json::Error,
    },
    /// The data dir is not podvm's (another user's) or could not be made private.
    #[error(transparent)]
    Private(#[from] crate::private::PrivateError),
    /// No image matches.
    #[error("no image {0:?} in the store (see `podvm image list`; fetch it with `podvm fetch`)")]
    NotFound(String),
    /// Several images match a prefix.
    #[error("image id prefix {0:?} is ambiguous: use more digits")]
    Ambiguous(String),
    /// The blob is missing.
    #[error("blob {0} is missing from the store (fetch the image again)")]
    MissingBlob(Digest),
}

/// Result alias of the store.
pub type Result<T> = std::result::Result<T, StoreError>;

pub(crate) fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |source| StoreError::Io { what, path, source }
}

/// An open image store.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// Opens (creating if needed) the image store under `data_dir` (`--dir`/PODVM_DIR).
    pub fn open(data_dir: &Path) -> Result<Store> {
        let root = data_dir.join("images");
        crate::private::ensure_dir(data_dir)?;
        crate::private::ensure_dir(&root)?;
        for sub in ["blobs", "blobs/sha256", "records", "trees", "tmp"] {
            crate::private::ensure_dir(&root.join(sub))?;
        }
        Ok(Store { root })
    }

    /// The store's root directory (`<data_dir>/images`).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Directory of temporary files (same filesystem as the blobs, for atomic renames).
    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// Path of a blob (whether or not it exists).
    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(d.hex())
    }

    /// Whether a blob is present.
    pub fn has_blob(&self, d: &Digest) -> bool {
        self.blob_path(d).is_file()
    }

    /// Opens a blob for reading.
    pub fn open_blob(&self, d: &Digest) -> Result<fs::File> {
        fs::File::open(self.blob_path(d)).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => StoreError::MissingBlob(d.clone()),
            _ => StoreError::Io {
                what: "opening blob",
                path: self.blob_path(d),
                source: e,
            },
        })
    }

    /// Reads a whole (small) blob.
    pub fn read_blob(&self, d: &Digest) -> Result<Vec<u8>> {
        let mut f = self.open_blob(d)?;
        let mut v = Vec::new();
        io::Read::read_to_end(&mut f, &mut v)
            .map_err(io_err("reading blob", &self.blob_path(d)))?;
        Ok(v)
    }

    /// Stores `data` as a blob, returning its digest (verifying against `expected` if given).
    pub fn put_bytes(&self, data: &[u8], expected: Option<&Digest>, what: &str) -> Result<Digest> {
        let actual = Digest::of_bytes(data);
        if let Some(e) = expected {
            if *e != actual {
                return Err(StoreError::DigestMismatch {
                    what: what.to_string(),
                    expected: e.clone(),
                    actual,
                    size: data.len() as u64,
                });
            }
        }
        if self.has_blob(&actual) {
            return Ok(actual);
        }
        let mut sink = BlobSink::create(self, &actual, None, what)?;
        io::Write::write_all(&mut sink, data).map_err(io_err("writing blob", &self.tmp_dir()))?;
        sink.commit()?;
        Ok(actual)
    }

    /// Stores everything `r` yields as blob `expected` (verified; never stored if it differs).
    pub fn put_reader(
        &self,
        r: &mut dyn io::Read,
        expected: &Digest,
        size: Option<u64>,
        what: &str,
    ) -> Result<()> {
        if self.has_blob(expected) {
            return Ok(());
        }
        let mut sink = BlobSink::create(self, expected, size, what)?;
        copy_large(r, &mut sink, size).map_err(|e| sink.io_error(e))?;
        sink.commit()
    }

    /// Path of an image's rendered tree directory (containing `rootfs/`).
    pub fn tree_dir(&self, id: &Digest) -> PathBuf {
        self.root.join("trees").join(id.hex())
    }

    /// Takes the store lock: `exclusive` for rm/gc, shared otherwise.
    pub fn lock(&self, exclusive: bool) -> Result<StoreLock> {
        StoreLock::acquire(&self.root.join("lock"), exclusive)
    }

    /// Lists all blobs in the store.
    pub fn list_blobs(&self) -> Result<Vec<Digest>> {
        let dir = self.root.join("blobs/sha256");
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).map_err(io_err("listing", &dir))? {
            let e = e.map_err(io_err("listing", &dir))?;
            if let Some(d) = e
                .file_name()
                .to_str()
                .and_then(|n| Digest::from_hex(n).ok())
            {
                out.push(d);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Removes a blob (gc).
    pub fn remove_blob(&self, d: &Digest) -> Result<()> {
        let p = self.blob_path(d);
        fs::remove_file(&p).map_err(io_err("removing blob", &p))
    }
}

/// Like `io::copy` with a buffer of up to 1 MiB (`hint`: expected size, if known): far fewer
/// syscalls for large blobs and files.
pub fn copy_large(
    r: &mut dyn io::Read,
    w: &mut dyn io::Write,
    hint: Option<u64>,
) -> io::Result<u64> {
    let size = hint.map_or(1 << 20, |h| h.saturating_add(1).clamp(8 << 10, 1 << 20));
    let mut buf = vec![0u8; size as usize];
    let mut total = 0u64;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        // Fill the buffer further before writing when the reader returns small chunks.
        let mut filled = n;
        while filled < buf.len() / 2 {
            match r.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(m) => filled += m,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        w.write_all(&buf[..filled])?;
        total += filled as u64;
    }
}

/// Writes `data` to `path` atomically (a fresh 0600 temp file in the same directory, fsync,
/// rename).
pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    let _ = fs::remove_file(&tmp);
    let mut f = crate::private::create_file(&tmp, true).map_err(io_err("creating", &tmp))?;
    f.write_all(data).map_err(io_err("writing", &tmp))?;
    f.sync_all().map_err(io_err("syncing", &tmp))?;
    fs::rename(&tmp, path).map_err(io_err("renaming into place", path))?;
    sync_dir(dir);
    Ok(())
}

/// fsyncs a directory so that renames in it are durable (best effort).
pub fn sync_dir(dir: &Path) {
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_and_mismatch() {
        let t = tempfile::tempdir().expect("tempdir");
        let s = Store::open(t.path()).expect("open");
        let d = s.put_bytes(b"hello", None, "test").expect("put");
        assert!(s.has_blob(&d));
        assert_eq!(s.read_blob(&d).expect("read"), b"hello");
        let wrong = Digest::of_bytes(b"other");
        let err = s
            .put_reader(&mut &b"hello!"[..], &wrong, None, "test blob")
            .expect_err("mismatch must fail");
        assert!(err.to_string().contains("digest mismatch"), "{err}");
        assert!(!s.has_blob(&wrong));
        assert_eq!(s.list_blobs().expect("list"), vec![d]);
        let tmp: Vec<_> = fs::read_dir(s.tmp_dir()).expect("tmp").collect();
        assert!(tmp.is_empty(), "temp files left: {tmp:?}");
    }
}
