//! Staging host files into a batch's payload directory.

use std::io;
use std::path::{Component, Path, PathBuf};

/// One thing to put into the payload, relative to its root.
#[derive(Debug, Clone)]
pub(super) enum Item {
    File {
        src: PathBuf,
        dest: PathBuf,
    },
    Dir {
        src: PathBuf,
        dest: PathBuf,
    },
    Bytes {
        dest: PathBuf,
        data: Vec<u8>,
        executable: bool,
    },
}

impl Item {
    pub(super) fn file(src: impl AsRef<Path>, dest: impl AsRef<Path>) -> Item {
        Item::File {
            src: src.as_ref().to_path_buf(),
            dest: relative(dest.as_ref()),
        }
    }

    pub(super) fn dir(src: impl AsRef<Path>, dest: impl AsRef<Path>) -> Item {
        Item::Dir {
            src: src.as_ref().to_path_buf(),
            dest: relative(dest.as_ref()),
        }
    }

    pub(super) fn bytes(
        dest: impl AsRef<Path>,
        data: impl Into<Vec<u8>>,
        executable: bool,
    ) -> Item {
        Item::Bytes {
            dest: relative(dest.as_ref()),
            data: data.into(),
            executable,
        }
    }

    /// Copies the item under `root`; on failure names the path involved.
    pub(super) fn stage(&self, root: &Path) -> Result<(), (PathBuf, io::Error)> {
        match self {
            Item::File { src, dest } => copy_file(src, &root.join(dest)),
            Item::Dir { src, dest } => copy_dir(src, &root.join(dest)),
            Item::Bytes {
                dest,
                data,
                executable,
            } => {
                let to = root.join(dest);
                make_parent(&to)?;
                std::fs::write(&to, data).map_err(|e| (to.clone(), e))?;
                let mode = if *executable { 0o755 } else { 0o644 };
                let perms = std::os::unix::fs::PermissionsExt::from_mode(mode);
                std::fs::set_permissions(&to, perms).map_err(|e| (to, e))
            }
        }
    }
}

/// `dest` must stay inside the payload: no absolute paths, no `..`.
fn relative(dest: &Path) -> PathBuf {
    assert!(
        dest.components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir)),
        "payload destination {} must be relative without `..`",
        dest.display()
    );
    dest.to_path_buf()
}

fn make_parent(to: &Path) -> Result<(), (PathBuf, io::Error)> {
    match to.parent() {
        Some(parent) => std::fs::create_dir_all(parent).map_err(|e| (parent.to_path_buf(), e)),
        None => Ok(()),
    }
}

fn copy_file(src: &Path, to: &Path) -> Result<(), (PathBuf, io::Error)> {
    make_parent(to)?;
    std::fs::copy(src, to)
        .map(|_| ())
        .map_err(|e| (src.to_path_buf(), e))
}

/// Recursive copy; symlinks are recreated as symlinks.
fn copy_dir(src: &Path, to: &Path) -> Result<(), (PathBuf, io::Error)> {
    std::fs::create_dir_all(to).map_err(|e| (to.to_path_buf(), e))?;
    let entries = std::fs::read_dir(src).map_err(|e| (src.to_path_buf(), e))?;
    for entry in entries {
        let entry = entry.map_err(|e| (src.to_path_buf(), e))?;
        let (from, dest) = (entry.path(), to.join(entry.file_name()));
        let kind = entry.file_type().map_err(|e| (from.clone(), e))?;
        if kind.is_dir() {
            copy_dir(&from, &dest)?;
        } else if kind.is_symlink() {
            let target = std::fs::read_link(&from).map_err(|e| (from.clone(), e))?;
            std::os::unix::fs::symlink(target, &dest).map_err(|e| (dest, e))?;
        } else {
            copy_file(&from, &dest)?;
        }
    }
    Ok(())
}
