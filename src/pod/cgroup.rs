//! A cgroup v2 per running pod, holding the podvm process that runs the pod's VM.
//!
//! The VM (guest RAM, vCPU threads, device workers, vhost kernel workers, which join their
//! owner's cgroups) then cannot take more memory, CPU time or tasks than the pod's size allows,
//! whatever the guest does; and `gc` finds and removes what a crashed run left behind.
//!
//! ```text
//! /sys/fs/cgroup/podvm/pod-<uuid>/   memory.max  = guest MiB + MEMORY_MARGIN_MIB
//!                                    cpu.max     = vCPUs x 100 ms per 100 ms
//!                                    pids.max    = TASKS_BASE + vCPUs
//! ```
//!
//! The process moves in before the VM is built and back to its original cgroup when the VM has
//! ended, so that the pod's cgroup can be removed (a cgroup with members cannot).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where cgroup v2 is mounted.
const CGROUP_MOUNT: &str = "/sys/fs/cgroup";
/// podvm's subtree under it.
const PODVM_GROUP: &str = "podvm";
/// Controllers a pod's cgroup uses (those the kernel offers).
const CONTROLLERS: [&str; 3] = ["memory", "cpu", "pids"];
/// Host memory the VMM may use beyond guest RAM: its own heap and stacks, device buffers,
/// virtio-fs and vsock bookkeeping, page cache of shared files (reclaimable).
const MEMORY_MARGIN_MIB: u64 = 192;
/// Tasks beyond one per vCPU: podvm's own threads (devices, relay, logs) and vhost workers.
const TASKS_BASE: u64 = 256;
/// CPU accounting period for `cpu.max`, in microseconds.
const CPU_PERIOD_US: u64 = 100_000;
/// How long `remove` waits for killed members to leave.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// Errors of pod cgroups.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// A cgroup file could not be read or written.
    #[error(
        "{what} {path}: {source} (is cgroup v2 mounted at /sys/fs/cgroup, and is podvm root?)"
    )]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The members of a leftover cgroup did not go away after `cgroup.kill`.
    #[error(
        "cgroup {0} still has processes after killing them; remove them and run `podvm gc` again"
    )]
    Busy(PathBuf),
}

type Result<T> = std::result::Result<T, CgroupError>;

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> CgroupError {
    let path = path.to_path_buf();
    move |source| CgroupError::Io { what, path, source }
}

/// The size a pod's cgroup allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CgroupLimits {
    /// Guest RAM in MiB (the VMM's margin is added).
    pub memory_mib: u64,
    /// vCPUs: the CPU time quota, and one task each.
    pub cpus: u8,
}

impl CgroupLimits {
    /// The `memory.max` value.
    fn memory_max(&self) -> String {
        ((self.memory_mib + MEMORY_MARGIN_MIB) << 20).to_string()
    }

    /// The `cpu.max` value.
    fn cpu_max(&self) -> String {
        format!(
            "{} {CPU_PERIOD_US}",
            u64::from(self.cpus.max(1)) * CPU_PERIOD_US
        )
    }

    /// The `pids.max` value.
    fn pids_max(&self) -> String {
        (TASKS_BASE + u64::from(self.cpus)).to_string()
    }
}

/// The cgroup directory of pod `uuid`.
pub fn path(uuid: &str) -> PathBuf {
    Path::new(CGROUP_MOUNT)
        .join(PODVM_GROUP)
        .join(format!("pod-{uuid}"))
}

/// The pod cgroup this process is in; when dropped, the process moves back to the cgroup it came
/// from and the pod's cgroup is removed.
#[derive(Debug)]
pub struct PodCgroup {
    dir: PathBuf,
    home: PathBuf,
}

impl PodCgroup {
    /// Creates pod `uuid`'s cgroup with `limits` and moves this whole process into it.
    pub fn enter(uuid: &str, limits: CgroupLimits) -> Result<PodCgroup> {
        let home = own_cgroup()?;
        let mount = Path::new(CGROUP_MOUNT);
        let parent = mount.join(PODVM_GROUP);
        let enabled = enable_controllers(mount, &CONTROLLERS)?;
        create_dir(&parent)?;
        let wanted: Vec<&str> = enabled.iter().map(String::as_str).collect();
        enable_controllers(&parent, &wanted)?;
        let dir = path(uuid);
        create_dir(&dir)?;
        let cgroup = PodCgroup { dir, home };
        cgroup.set("memory.max", &limits.memory_max())?;
        cgroup.set("memory.swap.max", "0")?;
        cgroup.set("cpu.max", &limits.cpu_max())?;
        cgroup.set("pids.max", &limits.pids_max())?;
        write(
            &cgroup.dir.join("cgroup.procs"),
            &std::process::id().to_string(),
        )?;
        Ok(cgroup)
    }

    /// Writes a limit file when the controller offers it (e.g. no `memory.swap.max` without swap
    /// accounting).
    fn set(&self, file: &str, value: &str) -> Result<()> {
        let path = self.dir.join(file);
        if path.exists() {
            write(&path, value)?;
        }
        Ok(())
    }

    /// Moves this process back to the cgroup it came from and removes the pod's cgroup.
    fn leave(&self) -> Result<()> {
        write(
            &self.home.join("cgroup.procs"),
            &std::process::id().to_string(),
        )?;
        remove_dir(&self.dir)
    }
}

impl Drop for PodCgroup {
    fn drop(&mut self) {
        if self.dir.exists() {
            if let Err(err) = self.leave() {
                eprintln!("podvm: cannot remove the pod's cgroup: {err}");
            }
        }
    }
}

/// Removes pod `uuid`'s cgroup if a crashed run left it: its processes are killed first
/// (`cgroup.kill`). Nothing to do is not an error.
pub fn remove(uuid: &str) -> Result<()> {
    let dir = path(uuid);
    if !dir.exists() {
        return Ok(());
    }
    let kill = dir.join("cgroup.kill");
    if kill.exists() && has_members(&dir)? {
        write(&kill, "1")?;
    }
    let deadline = Instant::now() + KILL_WAIT;
    while has_members(&dir)? {
        if Instant::now() >= deadline {
            return Err(CgroupError::Busy(dir));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    remove_dir(&dir)
}

fn has_members(dir: &Path) -> Result<bool> {
    let procs = dir.join("cgroup.procs");
    let text = fs::read_to_string(&procs).map_err(io_err("cannot read", &procs))?;
    Ok(!text.trim().is_empty())
}

/// This process's cgroup directory, from `/proc/self/cgroup` (`0::/path`).
fn own_cgroup() -> Result<PathBuf> {
    let file = Path::new("/proc/self/cgroup");
    let text = fs::read_to_string(file).map_err(io_err("cannot read", file))?;
    let relative = text
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .ok_or_else(|| CgroupError::Io {
            what: "no cgroup v2 entry in",
            path: file.to_path_buf(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        })?;
    Ok(Path::new(CGROUP_MOUNT).join(relative.trim_start_matches('/')))
}

/// Enables, one by one, the pod controllers the kernel offers in `group`'s subtree (one may be
/// refused, e.g. `cpu` while real-time tasks run elsewhere); returns those enabled.
fn enable_controllers(group: &Path, wanted: &[&str]) -> Result<Vec<String>> {
    let offered_path = group.join("cgroup.controllers");
    let offered =
        fs::read_to_string(&offered_path).map_err(io_err("cannot read", &offered_path))?;
    let control = group.join("cgroup.subtree_control");
    Ok(wanted
        .iter()
        .filter(|c| offered.split_whitespace().any(|o| o == **c))
        .filter(|c| fs::write(&control, format!("+{c}")).is_ok())
        .map(|c| c.to_string())
        .collect())
}

fn create_dir(dir: &Path) -> Result<()> {
    match fs::create_dir(dir) {
        Err(err) if err.kind() != std::io::ErrorKind::AlreadyExists => Err(CgroupError::Io {
            what: "cannot create cgroup",
            path: dir.to_path_buf(),
            source: err,
        }),
        _ => Ok(()),
    }
}

fn remove_dir(dir: &Path) -> Result<()> {
    match fs::remove_dir(dir) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(CgroupError::Io {
            what: "cannot remove cgroup",
            path: dir.to_path_buf(),
            source: err,
        }),
        _ => Ok(()),
    }
}

fn write(path: &Path, value: &str) -> Result<()> {
    fs::write(path, value).map_err(io_err("cannot write", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_the_guest_plus_the_vmm_margin() {
        let limits = CgroupLimits {
            memory_mib: 256,
            cpus: 2,
        };
        assert_eq!(limits.memory_max(), ((256 + 192) << 20).to_string());
        assert_eq!(limits.cpu_max(), "200000 100000");
        assert_eq!(limits.pids_max(), "258");
    }

    #[test]
    fn pod_cgroups_live_under_podvm() {
        assert_eq!(path("1234"), PathBuf::from("/sys/fs/cgroup/podvm/pod-1234"));
    }
}
