//! Per-app cgroups inside the VM: an app with resource limits (its appc isolators) runs in
//! `/sys/fs/cgroup/app-<name>` with `memory.max` and `cpu.max` set, so that one app of a pod
//! cannot starve the others of the VM's memory or CPU.
//!
//! The agent makes the cgroup and opens its `cgroup.procs` before forking; the child writes
//! `0` (itself) there before it execs, so the app and everything it starts are confined from
//! their first instruction.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::mount::{mount, MsFlags};
use podvm_protocol::AppLimits;

/// Where the agent mounts cgroup v2.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// Controllers the app cgroups use.
const CONTROLLERS: [&str; 3] = ["memory", "cpu", "pids"];
/// CPU accounting period for `cpu.max`, in microseconds.
const CPU_PERIOD_US: u64 = 100_000;

/// Errors of app cgroups.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// cgroup v2 could not be mounted.
    #[error("cannot mount cgroup2 at {CGROUP_ROOT}: {0}")]
    Mount(nix::Error),
    /// A cgroup file or directory could not be made or written.
    #[error("cannot {what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// An app's cgroup, made by [`prepare`].
pub struct AppCgroup {
    /// Its directory.
    pub dir: PathBuf,
    /// Its `cgroup.procs`, open for writing.
    pub procs: File,
}

/// Makes app `app`'s cgroup with `limits`; `None` when the app has no limits.
pub fn prepare(app: &str, limits: &AppLimits) -> Result<Option<AppCgroup>, CgroupError> {
    if limits.is_empty() {
        return Ok(None);
    }
    let root = Path::new(CGROUP_ROOT);
    if !root.join("cgroup.controllers").exists() {
        mount(
            Some("cgroup2"),
            root,
            Some("cgroup2"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            None::<&str>,
        )
        .map_err(CgroupError::Mount)?;
    }
    for controller in CONTROLLERS {
        // One by one: a controller the kernel lacks must not stop the others.
        let _ = std::fs::write(
            root.join("cgroup.subtree_control"),
            format!("+{controller}"),
        );
    }
    let dir = root.join(format!("app-{}", sanitize(app)));
    match std::fs::create_dir(&dir) {
        Err(err) if err.kind() != std::io::ErrorKind::AlreadyExists => {
            return Err(io_err("create", &dir, err));
        }
        _ => {}
    }
    if let Some(bytes) = limits.memory_bytes {
        write(&dir.join("memory.max"), &bytes.to_string())?;
        let swap = dir.join("memory.swap.max");
        if swap.exists() {
            write(&swap, "0")?;
        }
    }
    if let Some(millis) = limits.cpu_millis {
        let quota = (millis * CPU_PERIOD_US / 1000).max(1000);
        write(&dir.join("cpu.max"), &format!("{quota} {CPU_PERIOD_US}"))?;
    }
    if let Some(shares) = limits.cpu_shares {
        write(&dir.join("cpu.weight"), &cpu_weight(shares).to_string())?;
    }
    let procs = dir.join("cgroup.procs");
    let file = OpenOptions::new()
        .write(true)
        .open(&procs)
        .map_err(|err| io_err("open", &procs, err))?;
    Ok(Some(AppCgroup { dir, procs: file }))
}

/// cgroup v2 `cpu.weight` (1 to 10000, default 100) for cgroup v1 `cpu.shares` (2 to 262144,
/// default 1024), mapped linearly as runc and systemd map them.
fn cpu_weight(shares: u64) -> u64 {
    let shares = shares.clamp(2, 262_144);
    1 + (shares - 2) * 9999 / 262_142
}

/// Makes the command's child join the cgroup whose `cgroup.procs` is `procs` before it execs
/// (register this before hooks that drop privileges).
pub fn join_before_exec(command: &mut Command, procs: File) {
    // SAFETY: the hook only calls write(2) on a descriptor opened before the fork, which is
    // async-signal-safe; `procs` moves into the hook and stays open until the command is dropped.
    unsafe {
        command.pre_exec(move || {
            let me = b"0";
            if libc::write(procs.as_raw_fd(), me.as_ptr().cast(), me.len()) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The app name as a cgroup directory name (no `/`, no leading dot).
/// Removes app `app`'s cgroup, if it has one (its processes have all ended); a failure is only
/// logged.
pub fn remove(app: &str) {
    let dir = Path::new(CGROUP_ROOT).join(format!("app-{}", sanitize(app)));
    match std::fs::remove_dir(&dir) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => diag!("cannot remove the cgroup {}: {err}", dir.display()),
    }
}

fn sanitize(app: &str) -> String {
    let name: String = app
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.is_empty() {
        "app".into()
    } else {
        name
    }
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(|err| io_err("write", path, err))
}

fn io_err(what: &'static str, path: &Path, source: std::io::Error) -> CgroupError {
    CgroupError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_shares_map_to_weights_as_runc_maps_them() {
        assert_eq!(cpu_weight(2), 1);
        assert_eq!(cpu_weight(1024), 39);
        assert_eq!(cpu_weight(262_144), 10_000);
        assert_eq!(cpu_weight(1), 1, "clamped");
    }

    #[test]
    fn app_names_become_plain_directory_names() {
        assert_eq!(sanitize("web-1"), "web-1");
        assert_eq!(sanitize("../x"), "___x");
        assert_eq!(sanitize(""), "app");
    }

    #[test]
    fn no_limits_no_cgroup() {
        assert!(prepare("a", &AppLimits::default())
            .expect("nothing to do")
            .is_none());
    }
}
