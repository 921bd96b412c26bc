//! Named network namespaces, as `ip netns` makes them: a namespace created by a short-lived
//! thread (`unshare(CLONE_NEWNET)`) is kept alive by bind-mounting its nsfs file onto
//! `/run/netns/<name>`; deleting it unmounts and unlinks that file. Work inside a namespace runs
//! on a thread that joined it ([`run_in`]), so the rest of podvm stays in the host's.

use std::fs::File;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};

/// Where named network namespaces live (shared with `ip netns`).
pub const NETNS_DIR: &str = "/run/netns";

/// Errors with network namespaces.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// A file system step failed.
    #[error("network namespace {path}: cannot {what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The namespace file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The namespace thread panicked.
    #[error("network namespace {0}: the worker thread died")]
    Thread(PathBuf),
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> NetnsError {
    let path = path.to_path_buf();
    move |source| NetnsError::Io { what, path, source }
}

/// The path of the namespace `name`.
pub fn path_of(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// Creates the network namespace at `path` (which must not exist).
pub fn create(path: &Path) -> Result<(), NetnsError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_err("create its directory", path))?;
    }
    File::options()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(io_err("create the mount point", path))?;
    let target = path.to_path_buf();
    let made = std::thread::scope(|scope| {
        scope
            .spawn(|| -> Result<(), NetnsError> {
                unshare(CloneFlags::CLONE_NEWNET)
                    .map_err(|e| io_err("unshare a new one", &target)(e.into()))?;
                mount(
                    Some("/proc/thread-self/ns/net"),
                    &target,
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                )
                .map_err(|e| io_err("bind-mount it", &target)(e.into()))
            })
            .join()
    });
    let result = made.unwrap_or_else(|_| Err(NetnsError::Thread(path.into())));
    if result.is_err() {
        let _ = std::fs::remove_file(path);
    }
    result
}

/// Deletes the namespace at `path`; a missing one is not an error. Its devices go with it once
/// nothing else holds it.
pub fn delete(path: &Path) -> Result<(), NetnsError> {
    match umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => {}
        Err(errno) => return Err(io_err("unmount", path)(errno.into())),
    }
    match std::fs::remove_file(path) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(io_err("remove", path)(err)),
        _ => Ok(()),
    }
}

/// Runs `work` on a thread inside the namespace at `path`; `wrap` turns a failure to get
/// there into the caller's error.
pub fn run_in<T: Send, E: Send>(
    path: &Path,
    wrap: impl Fn(NetnsError) -> E + Send + Sync,
    work: impl FnOnce() -> Result<T, E> + Send,
) -> Result<T, E> {
    let ns = File::open(path).map_err(|e| wrap(io_err("open", path)(e)))?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                setns(&ns, CloneFlags::CLONE_NEWNET)
                    .map_err(|e| wrap(io_err("enter", path)(e.into())))?;
                work()
            })
            .join()
            .unwrap_or_else(|_| Err(wrap(NetnsError::Thread(path.into()))))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_enter_and_delete_when_root() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: creating network namespaces needs root");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("podvm-test-ns");
        create(&path).expect("create");
        let host_ns = std::fs::read_link("/proc/thread-self/ns/net").expect("host ns");
        let inside = run_in(
            &path,
            |e| e,
            || -> Result<PathBuf, NetnsError> {
                Ok(std::fs::read_link("/proc/thread-self/ns/net").expect("ns link"))
            },
        )
        .expect("run in");
        assert_ne!(inside, host_ns);
        delete(&path).expect("delete");
        assert!(!path.exists());
        delete(&path).expect("idempotent");
    }
}
