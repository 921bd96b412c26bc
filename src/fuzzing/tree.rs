//! The host-side oracle: a scratch directory with a sentinel tree beside the directory under
//! test, and snapshots that show whether anything outside that directory changed.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// What a snapshot records of one file: type and mode bits, owner, size, mtime, content of
/// regular files and targets of symlinks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    mode: u32,
    uid: u32,
    gid: u32,
    nlink: u64,
    size: u64,
    mtime: (i64, i64),
    content: Vec<u8>,
}

/// A tree's nodes by path relative to its root (`""` is the root itself).
pub type Snapshot = BTreeMap<PathBuf, Node>;

/// Records `root` and everything beneath it, without following symlinks.
pub fn snapshot(root: &Path) -> Snapshot {
    let mut nodes = Snapshot::new();
    walk(root, Path::new(""), &mut nodes);
    nodes
}

fn walk(root: &Path, rel: &Path, nodes: &mut Snapshot) {
    let path = root.join(rel);
    let Ok(meta) = fs::symlink_metadata(&path) else {
        return;
    };
    let content = if meta.file_type().is_file() {
        fs::read(&path).unwrap_or_default()
    } else if meta.file_type().is_symlink() {
        fs::read_link(&path)
            .map(|t| t.into_os_string().into_vec())
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    nodes.insert(
        rel.to_path_buf(),
        Node {
            mode: meta.mode(),
            uid: meta.uid(),
            gid: meta.gid(),
            nlink: if meta.is_dir() { 0 } else { meta.nlink() },
            size: if meta.is_dir() { 0 } else { meta.size() },
            mtime: (meta.mtime(), meta.mtime_nsec()),
            content,
        },
    );
    if meta.is_dir() {
        let mut names: Vec<OsString> = fs::read_dir(&path)
            .map(|dir| dir.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        names.sort();
        for name in names {
            walk(root, &rel.join(name), nodes);
        }
    }
}

/// A private scratch directory `base` holding the directory under test (`base/<name>`,
/// recreated empty for every input) and a sentinel tree (`base/sentinel`) that nothing may
/// change.
pub struct Scratch {
    /// The scratch directory.
    pub base: PathBuf,
    /// The directory under test (rootfs, share).
    pub dir: PathBuf,
    /// The sentinel tree beside it.
    pub sentinel: PathBuf,
    before: Snapshot,
    base_mode: (u32, u32, u32),
    /// Held for one input: the replay tests run a target on several threads at once.
    in_use: Mutex<()>,
}

impl Scratch {
    /// Makes the scratch directory, with `name` as the directory under test.
    pub fn new(name: &str) -> Scratch {
        remove_stale();
        let pid = std::process::id();
        let template = std::env::temp_dir().join(format!("podvm-fuzz-{pid}-XXXXXX"));
        let base = nix::unistd::mkdtemp(&template).expect("scratch directory");
        let sentinel = base.join("sentinel");
        make_sentinel(&sentinel);
        let before = snapshot(&sentinel);
        let base_mode = owner_mode(&base);
        Scratch {
            dir: base.join(name),
            base,
            sentinel,
            before,
            base_mode,
            in_use: Mutex::new(()),
        }
    }

    /// Takes the scratch for one input (other threads wait until the returned guard is dropped)
    /// and empties the directory under test (recreating it with mode 0755).
    pub fn reset(&self) -> MutexGuard<'_, ()> {
        let guard = self.in_use.lock().unwrap_or_else(PoisonError::into_inner);
        if fs::symlink_metadata(&self.dir).is_ok() {
            make_removable(&self.dir);
            let _ = fs::remove_dir_all(&self.dir);
            let _ = fs::remove_file(&self.dir);
        }
        fs::create_dir(&self.dir).expect("directory under test");
        fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o755)).expect("chmod");
        guard
    }

    /// Panics with what changed if anything outside the directory under test did: the
    /// sentinel tree, the scratch directory's owner and mode, or its list of entries.
    pub fn check(&self, what: &str) {
        let after = snapshot(&self.sentinel);
        if after != self.before {
            let changed: Vec<_> = after
                .iter()
                .filter(|(path, node)| self.before.get(*path) != Some(node))
                .map(|(path, node)| format!("{}: {node:?}", path.display()))
                .chain(
                    self.before
                        .keys()
                        .filter(|path| !after.contains_key(*path))
                        .map(|path| format!("{}: removed", path.display())),
                )
                .collect();
            panic!("{what} changed the sentinel beside it: {changed:?}");
        }
        assert_eq!(
            owner_mode(&self.base),
            self.base_mode,
            "{what} changed the owner or mode of the directory around it"
        );
        let mut names: Vec<OsString> = fs::read_dir(&self.base)
            .expect("scratch directory")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        names.sort();
        let expected = [
            self.dir.file_name().map(OsString::from),
            Some(OsString::from("sentinel")),
        ];
        let mut expected: Vec<OsString> = expected.into_iter().flatten().collect();
        expected.sort();
        assert!(
            names.iter().all(|n| expected.contains(n)),
            "{what} created entries beside it: {names:?}"
        );
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        make_removable(&self.base);
        let _ = fs::remove_dir_all(&self.base);
    }
}

/// Removes the scratch directories of processes that are gone (a scratch directory lives as
/// long as its process: the targets keep it in a static, which is never dropped).
fn remove_stale() {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("podvm-fuzz-")
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new("/proc").join(pid.to_string()).exists() {
            make_removable(&entry.path());
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

fn owner_mode(path: &Path) -> (u32, u32, u32) {
    let meta = fs::symlink_metadata(path).expect("scratch directory");
    (meta.uid(), meta.gid(), meta.mode())
}

/// Gives every directory beneath `path` owner rwx so that an unprivileged run can remove it.
fn make_removable(path: &Path) {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return;
    };
    if meta.is_dir() {
        let _ = fs::set_permissions(path, fs::Permissions::from_mode(0o700));
        if let Ok(dir) = fs::read_dir(path) {
            for entry in dir.flatten() {
                make_removable(&entry.path());
            }
        }
    }
}

fn make_sentinel(sentinel: &Path) {
    fs::create_dir(sentinel).expect("sentinel");
    fs::write(sentinel.join("f"), b"sentinel file\n").expect("sentinel file");
    fs::create_dir(sentinel.join("d")).expect("sentinel dir");
    fs::write(sentinel.join("d/g"), b"nested\n").expect("sentinel nested file");
    symlink("f", sentinel.join("l")).expect("sentinel symlink");
    fs::set_permissions(sentinel.join("d"), fs::Permissions::from_mode(0o700)).expect("chmod");
    fs::set_permissions(sentinel.join("f"), fs::Permissions::from_mode(0o640)).expect("chmod");
}
