//! podvm's data dir is root's alone: directories 0700, files 0600, created so (never a looser
//! mode tightened later), and a data dir left looser by an older podvm is tightened when opened.
//!
//! Pod manifests hold the apps' environment (including `--set-env` secrets), logs hold their
//! output, and a readable pod directory lets anyone take a flock on it; so nothing under the data
//! dir is readable, listable or lockable by other users. Inside the image store's rendered trees
//! and the pods' overlay trees the image's own modes stay (the guest sees them): only the
//! directories containing them are private.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Mode of every directory podvm creates in its data dir.
pub const DIR_MODE: u32 = 0o700;
/// Mode of every file podvm creates in its data dir.
pub const FILE_MODE: u32 = 0o600;

/// Errors making or opening a private directory.
#[derive(Debug, thiserror::Error)]
pub enum PrivateError {
    /// The user running podvm may not use the directory (it is another user's, normally root's).
    #[error(
        "{path}: permission denied: podvm's data dir is private to its owner (uid {owner}, mode \
         0700); run podvm as that user (e.g. with sudo), or pass --dir for a data dir of your own"
    )]
    Denied {
        /// The directory.
        path: PathBuf,
        /// Its owner, when it could be seen (else the owner of the nearest visible parent).
        owner: u32,
    },
    /// The path exists but is not a directory (or is a symlink, which podvm never follows here).
    #[error("{path} is not a directory (podvm does not follow symlinks in its data dir)")]
    NotADirectory {
        /// The path.
        path: PathBuf,
    },
    /// Another I/O failure.
    #[error("cannot {what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

/// The owner of `path` or, if it cannot be seen, of its nearest visible ancestor.
fn visible_owner(path: &Path) -> u32 {
    path.ancestors()
        .find_map(|p| fs::symlink_metadata(p).ok())
        .map_or(0, |m| m.uid())
}

/// Maps an I/O error on `path` to [`PrivateError`], naming a permission problem as such.
pub fn error(what: &'static str, path: &Path, source: io::Error) -> PrivateError {
    match source.kind() {
        io::ErrorKind::PermissionDenied => PrivateError::Denied {
            path: path.to_path_buf(),
            owner: visible_owner(path),
        },
        _ => PrivateError::Io {
            what,
            path: path.to_path_buf(),
            source,
        },
    }
}

/// Makes `path` (and missing parents) as 0700 directories; an existing one must be a real
/// directory owned by this user, and is tightened to 0700 if it is looser.
pub fn ensure_dir(path: &Path) -> Result<(), PrivateError> {
    match fs::symlink_metadata(path) {
        Ok(meta) => tighten(path, &meta),
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            match DirBuilder::new()
                .recursive(true)
                .mode(DIR_MODE)
                .create(path)
            {
                Ok(()) => {
                    let meta = fs::symlink_metadata(path)
                        .map_err(|source| error("inspect", path, source))?;
                    tighten(path, &meta)
                }
                Err(source) => Err(error("create directory", path, source)),
            }
        }
        Err(source) => Err(error("inspect", path, source)),
    }
}

/// Checks that `path` (`meta`) is a directory of this user's, and chmods it to 0700 if looser.
fn tighten(path: &Path, meta: &fs::Metadata) -> Result<(), PrivateError> {
    if !meta.file_type().is_dir() {
        return Err(PrivateError::NotADirectory {
            path: path.to_path_buf(),
        });
    }
    if meta.uid() != nix::unistd::geteuid().as_raw() {
        return Err(PrivateError::Denied {
            path: path.to_path_buf(),
            owner: meta.uid(),
        });
    }
    if meta.mode() & 0o7777 != DIR_MODE {
        fs::set_permissions(path, fs::Permissions::from_mode(DIR_MODE))
            .map_err(|source| error("chmod 0700", path, source))?;
    }
    Ok(())
}

/// Creates the directory `path` (its parent exists) with mode 0700; an existing one is fine.
pub fn create_dir(path: &Path) -> io::Result<()> {
    match DirBuilder::new().mode(DIR_MODE).create(path) {
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => Ok(()),
        other => other,
    }
}

/// Creates a directory and its missing parents, each with mode 0700.
pub fn create_dir_all(path: &Path) -> io::Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(path)
}

/// Opens `path` for writing with mode 0600, not following a symlink there, close-on-exec:
/// `new` = it must not exist yet (O_EXCL); otherwise it is created or truncated.
pub fn create_file(path: &Path, new: bool) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options
        .write(true)
        .mode(FILE_MODE)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC);
    if new {
        options.create_new(true);
    } else {
        options.create(true).truncate(true);
    }
    options.open(path)
}

/// Opens `path` for appending, creating it with mode 0600; never through a symlink.
pub fn append_file(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(FILE_MODE)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// Writes `bytes` to `path` as a 0600 file, atomically (a fresh temp file beside it, synced and
/// renamed into place).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let mut file = create_file(&tmp, true)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::symlink_metadata(path).expect("stat").mode() & 0o7777
    }

    #[test]
    fn dirs_are_made_private_and_loose_ones_tightened() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let deep = tmp.path().join("a/b");
        ensure_dir(&deep).expect("create");
        assert_eq!(mode(&tmp.path().join("a")), 0o700);
        assert_eq!(mode(&deep), 0o700);
        fs::set_permissions(&deep, fs::Permissions::from_mode(0o755)).expect("loosen");
        ensure_dir(&deep).expect("tighten");
        assert_eq!(mode(&deep), 0o700);
    }

    #[test]
    fn a_symlink_is_not_taken_for_the_data_dir() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(tmp.path(), &link).expect("symlink");
        assert!(matches!(
            ensure_dir(&link),
            Err(PrivateError::NotADirectory { .. })
        ));
    }

    #[test]
    fn files_are_0600_and_never_written_through_a_symlink() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let file = tmp.path().join("f");
        write_atomic(&file, b"x").expect("write");
        assert_eq!(mode(&file), 0o600);
        let victim = tmp.path().join("victim");
        fs::write(&victim, b"keep").expect("victim");
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&victim, &link).expect("symlink");
        assert!(create_file(&link, false).is_err());
        assert!(append_file(&link).is_err());
        assert!(create_file(&link, true).is_err());
        assert_eq!(fs::read(&victim).expect("read"), b"keep");
    }
}
