//! The app's root filesystem from a virtio-fs share, laid out as rkt apps see it: the share is
//! mounted at `/opt/stage2/<app>/rootfs` with proc, sys, dev (a recursive bind of the agent's,
//! with pts and shm) and a fresh /tmp inside, `/etc/hosts` (and `/etc/resolv.conf` when the
//! spec has one) written if the image has none, and the hostname set. The command is then run
//! chrooted into it ([`enter`]); programs are looked up inside it ([`stat_in_root`]) with
//! `openat2(RESOLVE_IN_ROOT)` so absolute symlinks in the image (`/bin/sh -> /bin/busybox`)
//! resolve as they will after the chroot.
//!
//! A container's root is a directory of a share mounted at boot ([`mount_share`]), found
//! beneath the share without following any symlink ([`open_beneath`]) and bound at
//! `/opt/stage2/<id>/rootfs` ([`prepare_in_share`]) with the same mounts inside as an app's.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use podvm_protocol::RootfsSpec;

/// Where rkt puts app root filesystems (and podvm containers' roots).
pub const STAGE2: &str = "/opt/stage2";
/// Where the agent mounts the shares that hold containers' roots.
pub const SHARES: &str = "/podvm/shares";
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
    /// A container's root could not be unmounted.
    #[error("cannot unmount {path}: {source}")]
    Unmount {
        /// The mount point.
        path: PathBuf,
        /// Why.
        source: Errno,
    },
    /// A share's tag or a container's id cannot name a directory.
    #[error("bad name {0:?}: must be one path component")]
    Name(String),
    /// A root's location inside its share is not a plain relative path.
    #[error("{path:?} {why}")]
    BadPath {
        /// The location as given.
        path: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A root's location inside its share cannot be opened as a directory beneath it.
    #[error("{path:?}: {why}")]
    NotBeneath {
        /// The location as given.
        path: String,
        /// Why, in words.
        why: String,
    },
}

impl RootfsError {
    /// Whether the location was at fault (rather than a mount that failed).
    pub fn is_bad_location(&self) -> bool {
        matches!(
            self,
            RootfsError::BadPath { .. } | RootfsError::NotBeneath { .. } | RootfsError::Name(_)
        )
    }
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

/// Mounts the virtio-fs share `tag` at `<SHARES>/<tag>`; returns that directory.
pub fn mount_share(tag: &str, read_only: bool) -> Result<PathBuf, RootfsError> {
    one_component(tag)?;
    let dir = Path::new(SHARES).join(tag);
    make_dir(&dir)?;
    let flags = if read_only {
        MsFlags::MS_RDONLY
    } else {
        MsFlags::empty()
    };
    mount(Some(tag), &dir, Some("virtiofs"), flags, None::<&str>).map_err(|source| {
        RootfsError::Mount {
            what: format!("virtio-fs tag {tag:?}"),
            path: dir.clone(),
            source,
        }
    })?;
    Ok(dir)
}

/// Checks that `path` is a plain relative path: no absolute, `..` or `.` components (empty:
/// the share's root).
pub fn check_relative(path: &str) -> Result<&Path, RootfsError> {
    let bad = |why| RootfsError::BadPath {
        path: path.to_string(),
        why,
    };
    if path.contains('\0') {
        return Err(bad("contains a NUL byte"));
    }
    if path.starts_with('/') {
        return Err(bad("is absolute: give it relative to the share"));
    }
    for part in path.split('/') {
        match part {
            ".." => return Err(bad("has a '..' component: it would leave the share")),
            "." => return Err(bad("has a '.' component")),
            _ => {}
        }
    }
    Ok(Path::new(path))
}

/// Opens the directory `path` (relative, [`check_relative`]) beneath the share directory
/// `share` as an `O_PATH` descriptor: `openat2` with `RESOLVE_BENEATH` (it cannot leave the
/// share, not even through `..` a rename put there) and `RESOLVE_NO_SYMLINKS` (no symlink is
/// followed on the way, into the share or out of it).
pub fn open_beneath(share: &Path, path: &str) -> Result<OwnedFd, RootfsError> {
    let relative = check_relative(path)?;
    let relative = if relative.as_os_str().is_empty() {
        Path::new(".")
    } else {
        relative
    };
    let not_beneath = |why: String| RootfsError::NotBeneath {
        path: path.to_string(),
        why,
    };
    let share_dir = std::fs::File::open(share)
        .map_err(|err| not_beneath(format!("cannot open the share {}: {err}", share.display())))?;
    let resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
    openat2(
        &share_dir,
        relative,
        libc::O_PATH | libc::O_DIRECTORY,
        resolve,
    )
    .map_err(|err| {
        not_beneath(match err.raw_os_error().map(Errno::from_raw) {
            Some(Errno::ELOOP) => {
                "a symlink is on the way (roots are found without following any)".into()
            }
            Some(Errno::EXDEV) => "it leads out of the share".into(),
            Some(Errno::ENOTDIR) => "it is not a directory".into(),
            Some(Errno::ENOENT) => "no such directory in the share".into(),
            _ => err.to_string(),
        })
    })
}

/// Binds the directory `dir` ([`open_beneath`]) at `<stage2>/<id>/rootfs` ([`STAGE2`] in the
/// VM) with proc, sys, dev and /tmp inside (their mount points are made unless the share is
/// read-only), then makes it read-only when asked; returns the mount point. On failure nothing
/// stays mounted.
pub fn prepare_in_share(
    stage2: &Path,
    id: &str,
    dir: &OwnedFd,
    share_read_only: bool,
    read_only: bool,
) -> Result<PathBuf, RootfsError> {
    one_component(id)?;
    let root = stage2.join(id).join("rootfs");
    make_dir(&root)?;
    let source = format!("/proc/self/fd/{}", dir.as_raw_fd());
    let flags = MsFlags::MS_BIND | MsFlags::MS_REC;
    mount(
        Some(source.as_str()),
        &root,
        None::<&str>,
        flags,
        None::<&str>,
    )
    .map_err(|source| RootfsError::Mount {
        what: "the container's directory (bind)".to_string(),
        path: root.clone(),
        source,
    })?;
    let furnished = mount_inside(&root, share_read_only).and_then(|()| {
        if !read_only {
            return Ok(());
        }
        let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        mount(None::<&str>, &root, None::<&str>, flags, None::<&str>).map_err(|source| {
            RootfsError::Mount {
                what: "read-only remount".to_string(),
                path: root.clone(),
                source,
            }
        })
    });
    if let Err(err) = furnished {
        if let Err(undo) = release(&root) {
            diag!("{undo}");
        }
        return Err(err);
    }
    Ok(root)
}

/// Unmounts a container's root and everything mounted inside it, and removes its mount point.
pub fn release(root: &Path) -> Result<(), RootfsError> {
    umount2(root, MntFlags::MNT_DETACH).map_err(|source| RootfsError::Unmount {
        path: root.to_path_buf(),
        source,
    })?;
    let _ = std::fs::remove_dir(root);
    if let Some(parent) = root.parent() {
        let _ = std::fs::remove_dir(parent);
    }
    Ok(())
}

fn one_component(name: &str) -> Result<(), RootfsError> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(RootfsError::Name(name.to_string()));
    }
    Ok(())
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

/// Opens `path` relative to the directory `dir` with `openat2(2)`: `flags` as for open(2),
/// `resolve` the `RESOLVE_*` rules for every step of the way.
pub fn openat2(
    dir: &std::fs::File,
    path: &Path,
    flags: i32,
    resolve: u64,
) -> std::io::Result<OwnedFd> {
    let target = CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: open_how is three integers; all zeroes is a valid value.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = u64::try_from(flags | libc::O_CLOEXEC).map_err(|_| Errno::EINVAL)?;
    how.resolve = resolve;
    // SAFETY: openat2 reads the NUL-terminated `target` and `how` (whose size is passed) and
    // returns a new descriptor or -1; nothing else is touched.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
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
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The type and permission bits of `path` (absolute inside `root`), resolving symlinks and `..`
/// as if `root` were `/`.
pub fn stat_in_root(root: &Path, path: &Path) -> std::io::Result<libc::stat> {
    let root_dir = std::fs::File::open(root)?;
    let fd = openat2(&root_dir, path, libc::O_PATH, libc::RESOLVE_IN_ROOT)?;
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
    fn a_containers_location_is_a_plain_relative_path() {
        for good in ["", "a", "a/b", "web-1/rootfs", "a//b"] {
            assert!(check_relative(good).is_ok(), "{good:?}");
        }
        for bad in [
            "/", "/etc", "..", "../x", "a/../b", "a/..", ".", "./a", "a/./b", "a\0b",
        ] {
            let err = check_relative(bad).expect_err(bad);
            assert!(err.is_bad_location(), "{bad:?}: {err}");
        }
    }

    #[test]
    fn a_containers_root_is_found_beneath_its_share_without_symlinks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let share = dir.path().join("share");
        std::fs::create_dir_all(share.join("one/rootfs")).expect("mkdir");
        std::fs::create_dir_all(dir.path().join("outside")).expect("mkdir");
        std::fs::write(share.join("file"), b"x").expect("file");
        symlink("/", share.join("abs")).expect("link");
        symlink("../outside", share.join("up")).expect("link");
        symlink("one", share.join("inside")).expect("link");
        assert!(open_beneath(&share, "one/rootfs").is_ok());
        assert!(open_beneath(&share, "").is_ok(), "the share's root itself");
        for (bad, why) in [
            ("abs", "symlink"),
            ("up", "symlink"),
            ("inside/rootfs", "symlink"),
            ("file", "not a directory"),
            ("missing", "no such directory"),
            ("../outside", "'..'"),
        ] {
            let err = open_beneath(&share, bad).expect_err(bad);
            assert!(err.is_bad_location(), "{bad}: {err}");
            assert!(err.to_string().contains(why), "{bad}: {err}");
        }
    }

    /// Set for the helper run of [`container_root_in_a_private_mount_namespace`]: the file it
    /// creates when it passed.
    const NAMESPACE_ENV: &str = "PODVM_AGENT_TEST_MOUNT_NS";

    /// Mounts a container's root as the agent does in the VM, in a helper process with a
    /// private mount namespace (`unshare`), so nothing reaches the host's mounts. Needs root
    /// and util-linux's `unshare`; without them it says so and passes.
    #[test]
    fn a_containers_root_is_bound_furnished_sealed_and_released() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipping: mounting needs root");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let passed = dir.path().join("passed");
        let exe = std::env::current_exe().expect("test binary");
        let status = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "--"])
            .arg(exe)
            .args([
                "--exact",
                "rootfs::tests::container_root_in_a_private_mount_namespace",
                "--ignored",
                "--test-threads=1",
            ])
            .env(NAMESPACE_ENV, &passed)
            .status();
        match status {
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                eprintln!("skipping: no unshare(1)");
            }
            Err(err) => panic!("cannot run unshare: {err}"),
            Ok(status) => {
                assert!(status.success(), "the helper failed: {status}");
                assert!(passed.exists(), "the helper ran no test");
            }
        }
    }

    #[test]
    #[ignore = "run by a_containers_root_is_bound_furnished_sealed_and_released, in a private mount namespace"]
    fn container_root_in_a_private_mount_namespace() {
        // Run by hand (`-- --ignored`) it would mount in the host's namespace: it does not.
        let Some(passed) = std::env::var_os(NAMESPACE_ENV) else {
            return;
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let share = dir.path().join("share");
        std::fs::create_dir_all(share.join("c/etc")).expect("mkdir");
        std::fs::write(share.join("c/marker"), b"from the host").expect("marker");
        let stage2 = dir.path().join("stage2");
        let fd = open_beneath(&share, "c").expect("beneath");
        let root = prepare_in_share(&stage2, "c1", &fd, false, true).expect("prepared");
        assert_eq!(root, stage2.join("c1/rootfs"));
        let marker = std::fs::read(root.join("marker")).expect("the share's files");
        assert_eq!(marker, b"from the host");
        assert!(root.join("proc/self").exists(), "proc inside");
        assert!(root.join("dev/null").exists(), "dev inside");
        let err = std::fs::write(root.join("new"), b"x").expect_err("read-only root");
        assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
        std::fs::write(root.join("tmp/scratch"), b"x").expect("its own /tmp is writable");
        assert!(
            share.join("c/proc").is_dir(),
            "mount points made in the share"
        );
        release(&root).expect("released");
        assert!(!stage2.join("c1").exists(), "mount point removed");
        assert!(share.join("c/marker").exists(), "the host's files stay");
        let err = prepare_in_share(&stage2, "../x", &fd, false, false).expect_err("bad id");
        assert!(err.is_bad_location(), "{err}");
        std::fs::write(passed, b"").expect("passed");
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
    }
}
