//! The app's root filesystem from a virtio-fs share, laid out as rkt apps see it: the share is
//! mounted at `/opt/stage2/<app>/rootfs` with proc, sys, dev (a recursive bind of the agent's,
//! with pts and shm) and a fresh /tmp inside, `/etc/hosts` (and `/etc/resolv.conf` when the
//! spec has one) written if the image has none, and the hostname set. The command is then run
//! chrooted into it ([`enter`]); programs are looked up inside it with `openat2(RESOLVE_IN_ROOT)`
//! so absolute symlinks in the image (`/bin/sh -> /bin/busybox`) resolve as they will after the
//! chroot.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};
use podvm_protocol::RootfsSpec;

use crate::launch::LaunchError;

/// Where rkt puts app root filesystems.
const STAGE2: &str = "/opt/stage2";
/// The app name when the spec has none.
const DEFAULT_APP: &str = "app";

/// Errors while preparing the app's root filesystem.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    /// A mount point could not be created.
    #[error("cannot create mount point {path}: {source}")]
    MountPoint {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A mount failed.
    #[error("cannot mount {what} on {path}: {source}")]
    Mount {
        /// What was mounted (virtio-fs tag or file system type).
        what: String,
        /// The mount point.
        path: PathBuf,
        /// Why.
        source: Errno,
    },
    /// The app name would leave /opt/stage2.
    #[error("bad app name {0:?}: must be one path component")]
    AppName(String),
}

/// The app name of `spec` ("app" when empty).
fn app_name(spec: &RootfsSpec) -> &str {
    if spec.app.is_empty() {
        DEFAULT_APP
    } else {
        &spec.app
    }
}

/// `/opt/stage2/<app>/rootfs`.
pub fn mount_point(spec: &RootfsSpec) -> PathBuf {
    Path::new(STAGE2).join(app_name(spec)).join("rootfs")
}

/// `path` (absolute inside the app) as seen from the agent: below `root`.
pub fn inside(root: &Path, path: &Path) -> PathBuf {
    let relative: PathBuf = path
        .components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .collect();
    root.join(relative)
}

/// Mounts the share and everything inside it; returns the app's root directory.
pub fn prepare(spec: &RootfsSpec) -> Result<PathBuf, RootfsError> {
    let app = app_name(spec);
    if app.contains('/') || app == ".." || app == "." {
        return Err(RootfsError::AppName(app.to_string()));
    }
    let root = mount_point(spec);
    make_dir(&root)?;
    let read_only_now = spec.read_only && !spec.share_writable;
    let mut flags = MsFlags::empty();
    if read_only_now {
        flags |= MsFlags::MS_RDONLY;
    }
    mount(
        Some(spec.tag.as_str()),
        &root,
        Some("virtiofs"),
        flags,
        None::<&str>,
    )
    .map_err(|source| RootfsError::Mount {
        what: format!("virtio-fs tag {:?}", spec.tag),
        path: root.clone(),
        source,
    })?;
    mount_inside(&root, read_only_now)?;
    let hostname = spec.hostname.clone().unwrap_or_else(|| app.to_string());
    if let Err(err) = nix::unistd::sethostname(&hostname) {
        diag!("cannot set the hostname {hostname:?}: {err}");
    }
    if !read_only_now {
        let hosts = format!("127.0.0.1\tlocalhost\n::1\tlocalhost\n127.0.1.1\t{hostname}\n");
        write_if_absent(&root, "etc/hosts", &hosts);
        append_lines(&root, "etc/hosts", &spec.hosts_entries);
        if let Some(resolv) = &spec.resolv_conf {
            write_if_absent(&root, "etc/resolv.conf", resolv);
        }
    }
    Ok(root)
}

/// Makes the app's root read-only once it is set up (its volumes bound), when the spec asks for
/// a read-only root on a writable share. The mounts inside it keep their own flags.
pub fn seal(root: &Path, spec: &RootfsSpec) -> Result<(), RootfsError> {
    if !(spec.read_only && spec.share_writable) {
        return Ok(());
    }
    let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
    mount(None::<&str>, root, None::<&str>, flags, None::<&str>).map_err(|source| {
        RootfsError::Mount {
            what: "read-only remount".to_string(),
            path: root.to_path_buf(),
            source,
        }
    })
}

/// One mount inside the rootfs: source, target (relative), type, flags, data.
type InnerMount = (
    &'static str,
    &'static str,
    Option<&'static str>,
    MsFlags,
    Option<&'static str>,
);

const NOSUID_NODEV_NOEXEC: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

const INNER_MOUNTS: &[InnerMount] = &[
    ("proc", "proc", Some("proc"), NOSUID_NODEV_NOEXEC, None),
    ("sysfs", "sys", Some("sysfs"), NOSUID_NODEV_NOEXEC, None),
    (
        "cgroup2",
        "sys/fs/cgroup",
        Some("cgroup2"),
        NOSUID_NODEV_NOEXEC,
        None,
    ),
    (
        "/dev",
        "dev",
        None,
        MsFlags::MS_BIND.union(MsFlags::MS_REC),
        None,
    ),
    (
        "tmpfs",
        "tmp",
        Some("tmpfs"),
        MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        Some("mode=1777"),
    ),
];

fn mount_inside(root: &Path, read_only: bool) -> Result<(), RootfsError> {
    for (source, target, fstype, flags, data) in INNER_MOUNTS {
        let path = root.join(target);
        if !path.is_dir() {
            if read_only {
                diag!("read-only rootfs has no /{target}: not mounting {source} there");
                continue;
            }
            make_dir(&path)?;
        }
        mount(Some(*source), &path, *fstype, *flags, *data).map_err(|source| {
            RootfsError::Mount {
                what: fstype.unwrap_or("/dev (bind)").to_string(),
                path: path.clone(),
                source,
            }
        })?;
    }
    Ok(())
}

fn make_dir(path: &Path) -> Result<(), RootfsError> {
    std::fs::create_dir_all(path).map_err(|source| RootfsError::MountPoint {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes `root/relative` unless it exists (as anything, even a dangling symlink).
fn write_if_absent(root: &Path, relative: &str, contents: &str) {
    let path = root.join(relative);
    if std::fs::symlink_metadata(&path).is_ok() {
        return;
    }
    let result = path
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| std::fs::write(&path, contents));
    if let Err(err) = result {
        diag!("cannot write {}: {err}", path.display());
    }
}

/// Appends `lines` (`--hosts-entry`) to the regular file `root/relative`, never through a
/// symlink (which could point out of the app's root).
fn append_lines(root: &Path, relative: &str, lines: &[String]) {
    use std::io::Write;
    if lines.is_empty() {
        return;
    }
    let path = root.join(relative);
    if !std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_file()) {
        diag!(
            "{} is not a regular file: hosts entries not added",
            path.display()
        );
        return;
    }
    let text: String = lines.iter().map(|line| format!("{line}\n")).collect();
    let result = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .and_then(|mut file| file.write_all(text.as_bytes()));
    if let Err(err) = result {
        diag!("cannot add hosts entries to {}: {err}", path.display());
    }
}

/// The type and permission bits of `path` (absolute inside `root`), resolving symlinks and `..`
/// as if `root` were `/`.
pub fn stat_in_root(root: &Path, path: &Path) -> std::io::Result<libc::stat> {
    let root_dir = std::fs::File::open(root)?;
    let target = CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: open_how is three integers; all zeroes is a valid value.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = u64::try_from(libc::O_PATH | libc::O_CLOEXEC).expect("positive flags");
    how.resolve = libc::RESOLVE_IN_ROOT;
    // SAFETY: openat2 reads the NUL-terminated `target` and `how` (whose size is passed) and
    // returns a new descriptor or -1; nothing else is touched.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root_dir.as_raw_fd(),
            target.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    let fd = i32::try_from(fd).map_err(|_| std::io::Error::other("descriptor out of range"))?;
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by openat2 and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat writes one `stat` into `st`, which is large enough; checked below.
    if unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fstat succeeded, so it initialised `st`.
    Ok(unsafe { st.assume_init() })
}

/// Makes `command` chroot into `root` and change to `workdir` (inside it) just before exec.
pub fn enter(command: &mut Command, root: &Path, workdir: &Path) {
    let root = CString::new(root.as_os_str().as_bytes());
    let workdir = CString::new(workdir.as_os_str().as_bytes());
    // SAFETY: the closure runs in the forked child before exec and only makes async-signal-safe
    // system calls (chroot, chdir) on strings allocated before the fork.
    unsafe {
        command.pre_exec(move || {
            let (Ok(root), Ok(workdir)) = (&root, &workdir) else {
                return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
            };
            if libc::chroot(root.as_ptr()) != 0 || libc::chdir(workdir.as_ptr()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Finds the program as [`crate::launch::resolve`] does, but inside `root`: names with a slash
/// relative to `workdir`, others in each `path` entry. Returns the path inside the root.
pub fn resolve(
    root: &Path,
    program: &str,
    path: &str,
    workdir: &Path,
) -> Result<PathBuf, LaunchError> {
    if program.contains('/') {
        let candidate = workdir.join(program);
        return match stat_in_root(root, &candidate) {
            Ok(_) => Ok(candidate),
            Err(_) => Err(LaunchError::NoSuchFile(candidate)),
        };
    }
    let shown = format!("{path} inside {}", root.display());
    crate::launch::search_path(program, path, &shown, workdir, |candidate| {
        stat_in_root(root, candidate)
            .ok()
            .map(|st| (st.st_mode & libc::S_IFMT == libc::S_IFREG, st.st_mode))
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    #[test]
    fn paths_map_below_the_root_and_never_above() {
        let root = Path::new("/opt/stage2/app/rootfs");
        assert_eq!(inside(root, Path::new("/work/dir")), root.join("work/dir"));
        assert_eq!(inside(root, Path::new("/../../etc")), root.join("etc"));
        let spec = RootfsSpec::default();
        assert_eq!(mount_point(&spec), Path::new("/opt/stage2/app/rootfs"));
    }

    #[test]
    fn hosts_entries_are_appended_to_regular_files_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        write_if_absent(root, "etc/hosts", "127.0.0.1\tlocalhost\n");
        write_if_absent(root, "etc/hosts", "not written\n");
        append_lines(root, "etc/hosts", &["10.1.2.3\tdb".to_string()]);
        let hosts = std::fs::read_to_string(root.join("etc/hosts")).expect("hosts");
        assert_eq!(hosts, "127.0.0.1\tlocalhost\n10.1.2.3\tdb\n");
        symlink("/etc/hosts", root.join("etc/linked")).expect("link");
        append_lines(root, "etc/linked", &["10.9.9.9\tevil".to_string()]);
        let host_hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
        assert!(!host_hosts.contains("evil"));
    }

    #[test]
    fn absolute_symlinks_resolve_inside_the_root() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::create_dir(root.join("bin")).expect("bin");
        std::fs::write(root.join("bin/busybox"), b"x").expect("busybox");
        let exec = std::os::unix::fs::PermissionsExt::from_mode(0o755);
        std::fs::set_permissions(root.join("bin/busybox"), exec).expect("chmod");
        symlink("/bin/busybox", root.join("bin/sh")).expect("link");
        symlink("/../../../../bin/busybox", root.join("bin/up")).expect("link");
        for name in ["/bin/sh", "/bin/up"] {
            let st = stat_in_root(root, Path::new(name)).expect("resolved in root");
            assert_eq!(st.st_mode & libc::S_IFMT, libc::S_IFREG, "{name}");
        }
        // A link to something that exists only outside the root does not resolve.
        symlink("/proc/self", root.join("bin/out")).expect("link");
        assert!(stat_in_root(root, Path::new("/bin/out")).is_err());
        let found = resolve(root, "sh", "/usr/bin:/bin", Path::new("/")).expect("found");
        assert_eq!(found, Path::new("/bin/sh"));
        let err = resolve(root, "nope", "/bin", Path::new("/")).expect_err("missing");
        assert_eq!(err.exit_code(), 127);
    }
}
