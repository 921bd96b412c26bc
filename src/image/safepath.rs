//! Path safety for layer entries: parsing entry names and resolving paths inside a rootfs
//! without ever following a symlink out of it.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

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

/// Resolves `comps` (a directory path below `root`) to a real path whose every component is a
/// real directory inside `root`: symlinks met on the way are resolved as if `root` were `/`
/// (absolute targets restart at `root`, `..` stops at `root`). Missing directories are created
/// (mode 0755) when `create` is set; otherwise `Ok(None)` is returned for a missing path.
pub fn resolve_dir(root: &Path, comps: &[OsString], create: bool) -> io::Result<Option<PathBuf>> {
    let mut queue: std::collections::VecDeque<OsString> = comps.iter().cloned().collect();
    let mut stack: Vec<OsString> = Vec::new();
    let mut hops = 0;
    while let Some(c) = queue.pop_front() {
        if c.is_empty() || c == "." {
            continue;
        }
        if c == ".." {
            stack.pop();
            continue;
        }
        let mut p = root.to_path_buf();
        p.extend(&stack);
        p.push(&c);
        match fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => {
                hops += 1;
                if hops > MAX_HOPS {
                    return Err(io::Error::other(format!(
                        "too many levels of symlinks at {}",
                        p.display()
                    )));
                }
                let target = fs::read_link(&p)?;
                let bytes = target.as_os_str().as_bytes();
                if bytes.first() == Some(&b'/') {
                    stack.clear();
                }
                let mut new: Vec<OsString> = bytes
                    .split(|&b| b == b'/')
                    .map(|s| OsStr::from_bytes(s).to_os_string())
                    .collect();
                new.extend(queue.drain(..));
                queue = new.into();
            }
            Ok(m) if m.is_dir() => stack.push(c),
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::NotADirectory,
                    format!("{} is not a directory", p.display()),
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                fs::DirBuilder::new().mode(0o755).create(&p)?;
                stack.push(c);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        }
    }
    let mut p = root.to_path_buf();
    p.extend(&stack);
    Ok(Some(p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

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
