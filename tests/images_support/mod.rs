//! Helpers shared by the `images_*` tests: running the real `podvm` binary and comparing trees.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Content limit for test fetches (the bomb fixture expands to 5 GiB).
pub const MAX_BYTES: &str = "2147483648";

/// A `podvm` command with `--dir DIR`.
pub fn podvm_cmd(dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_podvm"));
    c.arg("--dir").arg(dir);
    c.env("PODVM_IMAGE_MAX_BYTES", MAX_BYTES);
    c.env_remove("DOCKER_CONFIG");
    c
}

/// Runs `podvm --dir DIR ARGS...`.
pub fn podvm(dir: &Path, args: &[&str]) -> Output {
    podvm_cmd(dir).args(args).output().expect("podvm runs")
}

/// Runs podvm and asserts success; returns stdout.
pub fn podvm_ok(dir: &Path, args: &[&str]) -> String {
    let out = podvm(dir, args);
    assert!(
        out.status.success(),
        "podvm {args:?} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs podvm and asserts failure; returns stderr.
pub fn podvm_err(dir: &Path, args: &[&str]) -> String {
    let out = podvm(dir, args);
    assert!(
        !out.status.success(),
        "podvm {args:?} should have failed; stdout:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Fetch flags for the local plain-http registry.
pub const INSECURE: &str = "--insecure-options=image,http";

/// Asserts `id` is one `sha256:<64 hex>` line and returns it.
pub fn image_id(stdout: &str) -> String {
    let id = stdout.trim().to_string();
    let hex = id.strip_prefix("sha256:").unwrap_or("");
    assert!(
        hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
        "fetch printed {stdout:?}, not an image id"
    );
    id
}

/// What is compared for each path of a tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    nlink: u64,
    content: Option<Vec<u8>>,
    target: Option<PathBuf>,
    rdev: u64,
}

fn walk(root: &Path, rel: &Path, out: &mut BTreeMap<PathBuf, Node>) {
    let p = root.join(rel);
    let m = fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("stat {}: {e}", p.display()));
    let ft = m.file_type();
    let kind = if ft.is_dir() {
        "dir"
    } else if ft.is_symlink() {
        "symlink"
    } else if ft.is_file() {
        "file"
    } else if ft.is_fifo() {
        "fifo"
    } else if ft.is_char_device() {
        "char"
    } else if ft.is_block_device() {
        "block"
    } else {
        "other"
    };
    out.insert(
        rel.to_path_buf(),
        Node {
            kind,
            mode: m.mode() & 0o7777,
            uid: m.uid(),
            gid: m.gid(),
            mtime: if ft.is_symlink() { 0 } else { m.mtime() },
            nlink: if ft.is_file() { m.nlink() } else { 0 },
            content: ft.is_file().then(|| fs::read(&p).expect("read file")),
            target: ft
                .is_symlink()
                .then(|| fs::read_link(&p).expect("readlink")),
            rdev: m.rdev(),
        },
    );
    if ft.is_dir() {
        let mut names: Vec<_> = fs::read_dir(&p)
            .expect("read_dir")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        names.sort();
        for n in names {
            walk(root, &rel.join(n), out);
        }
    }
}

/// A map path → node of the tree under `root`.
pub fn tree(root: &Path) -> BTreeMap<PathBuf, Node> {
    let mut out = BTreeMap::new();
    walk(root, Path::new(""), &mut out);
    out
}

/// Asserts two trees are identical (type, mode, owner, mtime, links, content, symlink target).
pub fn assert_same_tree(ours: &Path, reference: &Path) {
    let a = tree(ours);
    let b = tree(reference);
    let mut diffs = Vec::new();
    // Directories created implicitly (no entry of their own) get the unpack time as mtime in
    // both trees: recent mtimes on both sides count as equal.
    let recent = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64 - 3600)
        .unwrap_or(0);
    let same = |m: &Node, n: &Node| {
        m == n
            || (m.kind == "dir" && m.mtime > recent && n.mtime > recent && {
                let mut m2 = Node { ..m.clone() };
                m2.mtime = n.mtime;
                m2 == *n
            })
    };
    for (p, n) in &b {
        match a.get(p) {
            None => diffs.push(format!("missing {}", p.display())),
            Some(m) if !same(m, n) => diffs.push(format!(
                "differs {}: ours {m:?} vs umoci {n:?}",
                p.display()
            )),
            _ => {}
        }
    }
    for p in a.keys().filter(|p| !b.contains_key(*p)) {
        diffs.push(format!("extra {}", p.display()));
    }
    let shown: Vec<String> = diffs
        .iter()
        .take(10)
        .map(|d| d.chars().take(400).collect())
        .collect();
    assert!(
        diffs.is_empty(),
        "{} difference(s):\n{}",
        diffs.len(),
        shown.join("\n")
    );
    assert!(a.len() > 1, "empty tree {}", ours.display());
}

/// `umoci unpack` of `oci:LAYOUT:latest` into `dest`; returns the rootfs.
pub fn umoci_unpack(layout: &Path, dest: &Path) -> PathBuf {
    let out = Command::new("umoci")
        .arg("unpack")
        .arg("--image")
        .arg(format!("{}:latest", layout.display()))
        .arg(dest)
        .output()
        .expect("umoci runs");
    assert!(
        out.status.success(),
        "umoci unpack failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    dest.join("rootfs")
}
