//! Packs the guest's initramfs: the agent as `/init` and optionally a host directory, as a
//! newc cpio archive (what the kernel unpacks into its rootfs). The boot spec is not in it (the
//! host sends it over the agent channel), so the archive of the agent alone is the same for
//! every VM: [`pack`] builds it once per agent binary and keeps it in memory. Only
//! [`pack_with_spec`] adds the spec, for VMMs that cannot send it.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

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

/// Which agent binary an archive was built from: the file's identity and modification time,
/// which change whenever the binary is rebuilt or replaced. (A content hash would cost as much
/// as the packing it saves: both read the whole agent.)
#[derive(Debug, Clone, PartialEq, Eq)]
struct AgentId {
    path: PathBuf,
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl AgentId {
    fn of(path: &Path) -> Result<Self, InitramfsError> {
        let meta = std::fs::metadata(path).map_err(|source| InitramfsError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        })
    }
}

/// The archive of the agent alone, for the agent it was built from, while some VM still holds
/// it: once every VM has loaded it into guest memory and let go, its memory is freed (a
/// pod's podvm boots one VM; the archive is megabytes of the VMM's resident memory otherwise).
static AGENT_ONLY: Mutex<Option<(AgentId, Weak<Vec<u8>>)>> = Mutex::new(None);

/// The initramfs podvm boots: the agent alone, the same for every VM and built once per agent
/// binary while VMs hold it; with `extra_dir` (`podvm boot --initrd-dir`), that tree first and the agent's
/// entries after it (they win), built afresh.
pub fn pack(agent: &Path, extra_dir: Option<&Path>) -> Result<Arc<Vec<u8>>, InitramfsError> {
    if extra_dir.is_some() {
        return build(agent, None, extra_dir).map(Arc::new);
    }
    let id = AgentId::of(agent)?;
    let mut cache = AGENT_ONLY
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some((built_from, archive)) = cache.as_ref() {
        if let Some(archive) = archive.upgrade().filter(|_| *built_from == id) {
            return Ok(archive);
        }
    }
    let archive = Arc::new(build(agent, None, None)?);
    *cache = Some((id, Arc::downgrade(&archive)));
    Ok(archive)
}

/// [`pack`] with the boot spec as JSON at [`BOOT_SPEC_PATH`], for a VMM other than podvm's,
/// which cannot send it over the agent channel (`podvm boot --dump-initramfs`, whose kernel
/// command line names the file).
pub fn pack_with_spec(
    agent: &Path,
    spec: &BootSpec,
    extra_dir: Option<&Path>,
) -> Result<Vec<u8>, InitramfsError> {
    build(agent, Some(spec), extra_dir)
}

/// Builds an initramfs: `extra_dir`'s tree first, then podvm's own entries, which win.
fn build(
    agent: &Path,
    spec: Option<&BootSpec>,
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
    if let Some(spec) = spec {
        archive.entry(
            BOOT_SPEC_PATH,
            S_IFREG | 0o644,
            &serde_json::to_vec(spec)?,
            (0, 0),
        )?;
    }
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

    /// Each entry's name and mode, in archive order.
    fn entries(archive: &[u8]) -> Vec<(String, u32)> {
        let mut names = Vec::new();
        let mut rest = archive;
        loop {
            let reader = cpio::NewcReader::new(rest).expect("entry");
            if reader.entry().is_trailer() {
                break;
            }
            names.push((reader.entry().name().to_string(), reader.entry().mode()));
            rest = reader.finish().expect("next");
        }
        names
    }

    #[test]
    fn packs_agent_and_tree_without_a_spec() {
        let dir = tempfile::tempdir().expect("tempdir");
        let agent = dir.path().join("agent");
        std::fs::write(&agent, b"\x7fELF fake agent").expect("write");
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("bin")).expect("mkdir");
        std::fs::write(tree.join("bin/busybox"), b"bb").expect("write");
        std::os::unix::fs::symlink("busybox", tree.join("bin/sh")).expect("symlink");
        let archive = pack(&agent, Some(&tree)).expect("pack");
        let names = entries(&archive);
        let find = |name: &str| names.iter().find(|(n, _)| n == name).map(|(_, mode)| *mode);
        assert_eq!(find("bin/sh"), Some(S_IFLNK | 0o777));
        assert_eq!(find("init"), Some(S_IFREG | 0o755));
        assert_eq!(find("dev/console"), Some(S_IFCHR | 0o600));
        assert_eq!(find("podvm/boot.json"), None, "the spec travels over vsock");
        let init_pos = names.iter().position(|(n, _)| n == "init").expect("init");
        let busybox_pos = names
            .iter()
            .position(|(n, _)| n == "bin/busybox")
            .expect("busybox");
        assert!(busybox_pos < init_pos, "the agent comes last so it wins");

        let spec = BootSpec {
            command: vec!["/bin/sh".into()],
            ..Default::default()
        };
        let foreign = pack_with_spec(&agent, &spec, Some(&tree)).expect("pack");
        let names = entries(&foreign);
        assert!(names.iter().any(|(n, _)| n == "podvm/boot.json"));
    }

    #[test]
    fn the_agent_alone_is_packed_once_per_agent_binary() {
        let dir = tempfile::tempdir().expect("tempdir");
        let agent = dir.path().join("agent");
        std::fs::write(&agent, b"\x7fELF agent one").expect("write");
        let first = pack(&agent, None).expect("pack");
        let again = pack(&agent, None).expect("pack");
        assert!(Arc::ptr_eq(&first, &again), "built once, then reused");
        assert_eq!(
            *first,
            build(&agent, None, None).expect("build"),
            "the same bytes every time"
        );
        // A rebuilt agent (another inode, size or time) gets a new archive.
        let rebuilt = dir.path().join("agent.new");
        std::fs::write(&rebuilt, b"\x7fELF agent number two").expect("write");
        std::fs::rename(&rebuilt, &agent).expect("replace");
        let second = pack(&agent, None).expect("pack");
        assert!(!Arc::ptr_eq(&first, &second));
        assert_eq!(*second, build(&agent, None, None).expect("build"));
    }
}
