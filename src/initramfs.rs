//! Packs the guest's initramfs: the agent as `/init`, its boot spec, and optionally a host
//! directory, as a newc cpio archive (what the kernel unpacks into its rootfs).

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use podvm_protocol::{BootSpec, BOOT_SPEC_PATH};

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

/// Errors while packing the initramfs.
#[derive(Debug, thiserror::Error)]
pub enum InitramfsError {
    /// A host file could not be read.
    #[error("cannot read {path} for the initramfs: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file is larger than newc allows.
    #[error("{0} is larger than 4 GiB, which an initramfs cannot hold")]
    TooLarge(PathBuf),
    /// The archive could not be written.
    #[error("cannot write the initramfs archive: {0}")]
    Write(#[from] std::io::Error),
    /// The boot spec could not be encoded.
    #[error("cannot encode the boot spec: {0}")]
    Spec(#[from] serde_json::Error),
}

/// A newc archive under construction.
struct Archive {
    out: Vec<u8>,
    next_ino: u32,
}

impl Archive {
    fn entry(
        &mut self,
        name: &str,
        mode: u32,
        data: &[u8],
        rdev: (u32, u32),
    ) -> Result<(), InitramfsError> {
        let size =
            u32::try_from(data.len()).map_err(|_| InitramfsError::TooLarge(PathBuf::from(name)))?;
        self.next_ino += 1;
        let mut writer = cpio::newc::Builder::new(name.trim_start_matches('/'))
            .ino(self.next_ino)
            .mode(mode)
            .nlink(1)
            .rdev_major(rdev.0)
            .rdev_minor(rdev.1)
            .write(&mut self.out, size);
        writer.write_all(data)?;
        writer.finish()?;
        Ok(())
    }

    fn dir(&mut self, name: &str) -> Result<(), InitramfsError> {
        self.entry(name, S_IFDIR | 0o755, &[], (0, 0))
    }

    fn finish(self) -> Result<Vec<u8>, InitramfsError> {
        Ok(cpio::newc::trailer(self.out)?)
    }
}

/// Builds the initramfs: `extra_dir`'s tree first, then podvm's own entries, which win.
pub fn pack(
    agent: &Path,
    spec: &BootSpec,
    extra_dir: Option<&Path>,
) -> Result<Vec<u8>, InitramfsError> {
    let mut archive = Archive {
        out: Vec::new(),
        next_ino: 0,
    };
    if let Some(dir) = extra_dir {
        add_tree(&mut archive, dir, "")?;
    }
    for dir in ["dev", "proc", "sys", "tmp", "run", "podvm"] {
        archive.dir(dir)?;
    }
    archive.entry("dev/console", S_IFCHR | 0o600, &[], (5, 1))?;
    let agent_bytes = read(agent)?;
    archive.entry("init", S_IFREG | 0o755, &agent_bytes, (0, 0))?;
    archive.entry(
        BOOT_SPEC_PATH,
        S_IFREG | 0o644,
        &serde_json::to_vec(spec)?,
        (0, 0),
    )?;
    archive.finish()
}

fn read(path: &Path) -> Result<Vec<u8>, InitramfsError> {
    std::fs::read(path).map_err(|source| InitramfsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Adds the contents of `dir` under `prefix`, in a stable order; sockets and devices are skipped.
fn add_tree(archive: &mut Archive, dir: &Path, prefix: &str) -> Result<(), InitramfsError> {
    let read_error = |source| InitramfsError::Read {
        path: dir.to_path_buf(),
        source,
    };
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(read_error)?
        .collect::<Result<_, _>>()
        .map_err(read_error)?;
    entries.sort_by_key(|entry| entry.file_name());
    for entry in entries {
        let path = entry.path();
        let name = format!("{prefix}{}", entry.file_name().to_string_lossy());
        let meta = std::fs::symlink_metadata(&path).map_err(|source| InitramfsError::Read {
            path: path.clone(),
            source,
        })?;
        let perms = meta.permissions().mode() & 0o7777;
        let kind = meta.file_type();
        if kind.is_dir() {
            archive.entry(&name, S_IFDIR | perms, &[], (0, 0))?;
            add_tree(archive, &path, &format!("{name}/"))?;
        } else if kind.is_symlink() {
            let target = std::fs::read_link(&path).map_err(|source| InitramfsError::Read {
                path: path.clone(),
                source,
            })?;
            archive.entry(
                &name,
                S_IFLNK | 0o777,
                target.as_os_str().as_encoded_bytes(),
                (0, 0),
            )?;
        } else if kind.is_file() {
            archive.entry(&name, S_IFREG | perms, &read(&path)?, (0, 0))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_agent_spec_and_tree() {
        let dir = tempfile::tempdir().expect("tempdir");
        let agent = dir.path().join("agent");
        std::fs::write(&agent, b"\x7fELF fake agent").expect("write");
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("bin")).expect("mkdir");
        std::fs::write(tree.join("bin/busybox"), b"bb").expect("write");
        std::os::unix::fs::symlink("busybox", tree.join("bin/sh")).expect("symlink");
        let spec = BootSpec {
            command: vec!["/bin/sh".into()],
            ..Default::default()
        };
        let archive = pack(&agent, &spec, Some(&tree)).expect("pack");

        let mut names = Vec::new();
        let mut rest = archive.as_slice();
        loop {
            let reader = cpio::NewcReader::new(rest).expect("entry");
            if reader.entry().is_trailer() {
                break;
            }
            names.push((reader.entry().name().to_string(), reader.entry().mode()));
            rest = reader.finish().expect("next");
        }
        let find = |name: &str| names.iter().find(|(n, _)| n == name).map(|(_, mode)| *mode);
        assert_eq!(find("bin/sh"), Some(S_IFLNK | 0o777));
        assert_eq!(find("init"), Some(S_IFREG | 0o755));
        assert_eq!(find("dev/console"), Some(S_IFCHR | 0o600));
        assert!(find("podvm/boot.json").is_some());
        let init_pos = names.iter().position(|(n, _)| n == "init").expect("init");
        let busybox_pos = names
            .iter()
            .position(|(n, _)| n == "bin/busybox")
            .expect("busybox");
        assert!(busybox_pos < init_pos, "the agent comes last so it wins");
    }
}
