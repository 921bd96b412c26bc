//! Path safety for layer entries: parsing entry names and resolving paths inside a rootfs
//! without ever following a symlink out of it.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use nix::sys::stat::SFlag;

use super::dirfd;

/// Longest accepted entry path, in bytes.
pub const MAX_PATH: usize = 4096;
/// Longest accepted path component, in bytes.
pub const MAX_NAME: usize = 255;
/// Most symlinks followed while resolving one path.
const MAX_HOPS: usize = 40;

/// Why an entry name is unsafe.
#[derive(Debug, PartialEq, Eq)]
pub enum Unsafe {
    /// Contains a `..` component.
    DotDot,
    /// Starts with `/`.
    Absolute,
    /// Too long.
    TooLong,
    /// Contains a NUL byte.
    Nul,
}

impl std::fmt::Display for Unsafe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Unsafe::DotDot => "path contains a `..` component",
            Unsafe::Absolute => "path is absolute",
            Unsafe::TooLong => "path or path component is too long",
            Unsafe::Nul => "path contains a NUL byte",
        })
    }
}

/// Splits a tar entry name into safe components (`.` and empty components dropped).
/// An empty result means the root directory itself.
pub fn entry_components(raw: &[u8]) -> Result<Vec<OsString>, Unsafe> {
    if raw.len() > MAX_PATH {
        return Err(Unsafe::TooLong);
    }
    if raw.contains(&0) {
        return Err(Unsafe::Nul);
    }
    if raw.first() == Some(&b'/') {
        return Err(Unsafe::Absolute);
    }
    let mut out = Vec::new();
    for c in raw.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err(Unsafe::DotDot),
            c if c.len() > MAX_NAME => return Err(Unsafe::TooLong),
            c => out.push(OsStr::from_bytes(c).to_os_string()),
        }
    }
    Ok(out)
}

/// Whether a relative symlink target, seen from the directory `parent` (components below the
/// root), climbs above the root.
pub fn symlink_escapes(parent: &[OsString], target: &[u8]) -> bool {
    if target.first() == Some(&b'/') {
        // Absolute targets are resolved against the container's root, never the host's.
        return false;
    }
    let mut depth = parent.len() as isize;
    for c in target.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                depth -= 1;
                if depth < 0 {
                    return true;
                }
            }
            _ => depth += 1,
        }
    }
    false
}

/// A directory resolved beneath a rootfs: an open descriptor on it and its path below the
/// root with every symlink resolved (a key and a label, never to be resolved again by path).
#[derive(Debug)]
pub struct Resolved {
    /// The directory, opened without following a symlink.
    pub fd: OwnedFd,
    /// Its path below the root; every component a real directory when it was resolved.
    pub rel: PathBuf,
}

/// Resolves `comps` (a directory path below the root `root`) to an open real directory inside
/// it: symlinks met on the way are resolved as if the root were `/` (absolute targets restart
/// at the root, `..` stops at the root), by descriptors opened with `O_NOFOLLOW` from `root`,
/// so nothing outside the root is ever reached (the semantics of openat2's `RESOLVE_IN_ROOT`,
/// with creation). Missing directories are created (mode 0755) when `create` is set;
/// otherwise `Ok(None)` is returned for a missing path.
pub fn resolve_dir_at(
    root: &OwnedFd,
    comps: &[OsString],
    create: bool,
) -> io::Result<Option<Resolved>> {
    let mut queue: VecDeque<OsString> = comps.iter().cloned().collect();
    let mut stack: Vec<OsString> = Vec::new();
    let mut cur = root.try_clone()?;
    let mut hops = 0;
    let shown = |stack: &[OsString], c: &OsStr| {
        let mut p: PathBuf = stack.iter().collect();
        p.push(c);
        p
    };
    while let Some(c) = queue.pop_front() {
        if c.is_empty() || c == "." {
            continue;
        }
        if c == ".." {
            stack.pop();
            let rel: PathBuf = stack.iter().collect();
            cur = dirfd::open_beneath(root, &rel)?.ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{} vanished while resolving", rel.display()),
                )
            })?;
            continue;
        }
        match dirfd::open_dir_at(&cur, &c) {
            Ok(next) => {
                cur = next;
                stack.push(c);
                continue;
            }
            Err(e) if !dirfd::is_gone(&e) => return Err(e),
            Err(_) => {}
        }
        match dirfd::stat_at(&cur, &c)? {
            Some(st) if dirfd::kind(&st) == SFlag::S_IFLNK => {
                hops += 1;
                if hops > MAX_HOPS {
                    return Err(io::Error::other(format!(
                        "too many levels of symlinks at {}",
                        shown(&stack, &c).display()
                    )));
                }
                let target = dirfd::readlink_at(&cur, &c)?;
                let bytes = target.as_bytes();
                if bytes.first() == Some(&b'/') {
                    stack.clear();
                    cur = root.try_clone()?;
                }
                let mut new: VecDeque<OsString> = bytes
                    .split(|&b| b == b'/')
                    .map(|s| OsStr::from_bytes(s).to_os_string())
                    .collect();
                new.extend(queue.drain(..));
                queue = new;
            }
            Some(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::NotADirectory,
                    format!("{} is not a directory", shown(&stack, &c).display()),
                ))
            }
            None if create => {
                dirfd::mkdir_at(&cur, &c, 0o755)?;
                cur = dirfd::open_dir_at(&cur, &c)?;
                stack.push(c);
            }
            None => return Ok(None),
        }
    }
    Ok(Some(Resolved {
        fd: cur,
        rel: stack.iter().collect(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;
    use std::path::Path;

    /// [`resolve_dir_at`] from the directory `root`, returning the resolved directory's path.
    fn resolve_dir(root: &Path, comps: &[OsString], create: bool) -> io::Result<Option<PathBuf>> {
        let fd = dirfd::open_root(root)?;
        Ok(resolve_dir_at(&fd, comps, create)?.map(|r| {
            let mut p = root.to_path_buf();
            p.extend(r.rel.components());
            p
        }))
    }

    fn comps(s: &str) -> Vec<OsString> {
        entry_components(s.as_bytes()).expect("safe")
    }

    #[test]
    fn entry_names() {
        assert_eq!(comps("./a//b/./c"), vec!["a", "b", "c"]);
        assert!(comps("./").is_empty());
        assert_eq!(entry_components(b"a/../../etc"), Err(Unsafe::DotDot));
        assert_eq!(entry_components(b"/etc/passwd"), Err(Unsafe::Absolute));
        assert_eq!(entry_components(&[b'a'; 300]), Err(Unsafe::TooLong));
        assert_eq!(entry_components(&vec![b'a'; 5000]), Err(Unsafe::TooLong));
    }

    #[test]
    fn symlink_escape_detection() {
        assert!(!symlink_escapes(&comps("bin"), b"busybox"));
        assert!(!symlink_escapes(&comps("usr/bin"), b"../lib/x"));
        assert!(!symlink_escapes(&comps("usr/bin"), b"/etc/passwd"));
        assert!(symlink_escapes(&comps("bin"), b"../../etc/passwd"));
        assert!(symlink_escapes(&[], b".."));
    }

    #[test]
    fn resolves_symlinks_inside_root() {
        let t = tempfile::tempdir().expect("tempdir");
        let root = t.path().join("root");
        fs::create_dir_all(root.join("usr/lib")).expect("mkdir");
        symlink("/usr/lib", root.join("lib")).expect("symlink");
        symlink("../../../../..", root.join("up")).expect("symlink");
        symlink("/", root.join("abs")).expect("symlink");
        let r = resolve_dir(&root, &comps("lib"), false).expect("resolve");
        assert_eq!(r, Some(root.join("usr/lib")));
        // Escapes are clamped at the root, never reaching the host.
        assert_eq!(
            resolve_dir(&root, &comps("up/tmp"), true).expect("resolve"),
            Some(root.join("tmp"))
        );
        assert_eq!(
            resolve_dir(&root, &comps("abs"), false).expect("resolve"),
            Some(root.clone())
        );
        assert_eq!(
            resolve_dir(&root, &comps("nope"), false).expect("resolve"),
            None
        );
        symlink("loop2", root.join("loop1")).expect("symlink");
        symlink("loop1", root.join("loop2")).expect("symlink");
        assert!(resolve_dir(&root, &comps("loop1"), false).is_err());
    }
}
