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
//!
//! Run as a systemd service (`systemd-run -p Delegate=yes podvm run ...`, or a unit's `ExecStart=`
//! with `Delegate=yes`, which hands the unit its cgroup controllers), podvm's
//! cgroup is the unit's, `<slice>/<name>.service`; there the pod's cgroup goes below it instead,
//! `<slice>/<name>.service/pod-<uuid>`, with the controllers enabled in the unit's cgroup while
//! the pod runs. The VM so stays in its unit: systemd keeps tracking, accounting and stopping
//! it, and the journal, which names a process's unit from its cgroup path, keeps attributing the
//! pod's stdout and stderr to the unit (`journalctl -u`). A crashed run's cgroup there goes
//! with the unit's, which systemd removes when the unit stops.
//!
//! Run by an ordinary user (rootless), podvm cannot write `/sys/fs/cgroup/podvm`; its pods'
//! cgroups go below its own cgroup when that one is delegated to the user, i.e. owned by the
//! user, as systemd makes it for `systemd-run --user --scope -p Delegate=yes podvm run ...`
//! (`.../user@<uid>.service/app.slice/run-<id>.scope/pod-<uuid>`). Without a delegated cgroup
//! the pod does not start (its limits cannot be set) and the error says how to get one.
//! The processes in that scope (the user's podvm runs, `run --detach`'s waiting parent) first
//! move to a leaf of it, `<scope>/podvm-init`, and go back there after their pod: cgroup v2
//! lets a cgroup hand controllers to children only while it has no processes of its own, and
//! the controllers stay enabled for the user's other pods.

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
/// The leaf, below a rootless podvm's delegated cgroup, that holds the cgroup's processes when
/// they are not in a pod's.
const ROOTLESS_LEAF: &str = "podvm-init";
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
    /// Run by an ordinary user whose cgroup is not delegated to it: no cgroup of its own to put
    /// the pod's under.
    #[error(
        "cgroup {home} is not delegated to uid {uid} (a rootless podvm puts its pods' cgroups \
         below its own): run podvm in a delegated cgroup, e.g. `systemd-run --user --scope -p \
         Delegate=yes podvm run ...`"
    )]
    NotDelegated {
        /// podvm's own cgroup.
        home: PathBuf,
        /// The user podvm runs as.
        uid: u32,
    },
    /// The pod's cgroup lacks a controller, so one of its limits cannot be set.
    #[error(
        "no {file} in {dir}: {}",
        match below_unit {
            true => "the controller cannot be enabled below podvm's systemd unit (give the unit \
                     Delegate=yes, e.g. `systemd-run -p Delegate=yes podvm run ...`, and run \
                     podvm itself as the unit's only process)",
            false => "the kernel does not offer that controller to /sys/fs/cgroup/podvm",
        }
    )]
    NoController {
        /// The limit file.
        file: String,
        /// The pod's cgroup.
        dir: PathBuf,
        /// Whether the cgroup is below podvm's systemd service.
        below_unit: bool,
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

/// The cgroup directory of pod `uuid` in podvm's shared group (not run as a systemd service).
pub fn path(uuid: &str) -> PathBuf {
    Path::new(CGROUP_MOUNT)
        .join(PODVM_GROUP)
        .join(format!("pod-{uuid}"))
}

/// How many processes of pod `uuid`'s cgroup (in podvm's shared group) the kernel's OOM killer
/// killed, from its `memory.events`; `None` when the cgroup or the count is not there.
pub fn oom_kills(uuid: &str) -> Option<u64> {
    let events = fs::read_to_string(path(uuid).join("memory.events")).ok()?;
    events
        .lines()
        .find_map(|line| line.strip_prefix("oom_kill "))
        .and_then(|count| count.trim().parse().ok())
}

/// Whether `cgroup`, a process's cgroup v2 path as `/proc/<pid>/cgroup` names it, is one pod
/// `uuid`'s cgroup can have: `/podvm/pod-<uuid>`, or `<unit>.service/pod-<uuid>` below a
/// systemd service (see the module docs).
pub fn is_pods(cgroup: &Path, uuid: &str) -> bool {
    let name = format!("pod-{uuid}");
    if uuid.is_empty() || cgroup.file_name() != Some(std::ffi::OsStr::new(&name)) {
        return false;
    }
    cgroup.parent().is_some_and(|parent| {
        parent.file_name() == Some(std::ffi::OsStr::new(PODVM_GROUP))
            || is_service(parent)
            || is_scope(parent)
    })
}

/// The cgroup v2 path of process `pid` (`/...`, relative to the cgroup mount), from
/// `/proc/<pid>/cgroup`.
pub fn of_process(pid: u32) -> Result<PathBuf> {
    let file = PathBuf::from(format!("/proc/{pid}/cgroup"));
    let text = fs::read_to_string(&file).map_err(io_err("cannot read", &file))?;
    text.lines()
        .find_map(|line| line.strip_prefix("0::"))
        .map(PathBuf::from)
        .ok_or_else(|| CgroupError::Io {
            what: "no cgroup v2 entry in",
            path: file,
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        })
}

/// True if `cgroup` is a systemd service's (its last component names a `.service` unit).
fn is_service(cgroup: &Path) -> bool {
    is_unit(cgroup, ".service")
}

/// True if `cgroup` is a systemd scope's (`systemd-run --scope`).
fn is_scope(cgroup: &Path) -> bool {
    is_unit(cgroup, ".scope")
}

/// True if the last component of `cgroup` names a systemd unit of the kind `suffix`.
fn is_unit(cgroup: &Path, suffix: &str) -> bool {
    cgroup
        .file_name()
        .and_then(|name| name.to_str())
        .and_then(|name| name.strip_suffix(suffix))
        .is_some_and(|unit| !unit.is_empty())
}

/// The cgroup a rootless podvm in `own` puts its pods below: `own`, or its parent when `own`
/// is the [`ROOTLESS_LEAF`] an earlier pod moved the delegated cgroup's processes to (a shell in
/// the scope, and every podvm it starts afterwards, are there).
fn rootless_home(own: PathBuf, euid: u32) -> PathBuf {
    let in_leaf = own.file_name() == Some(std::ffi::OsStr::new(ROOTLESS_LEAF));
    match (in_leaf && euid != 0, own.parent()) {
        (true, Some(parent)) => parent.to_path_buf(),
        _ => own,
    }
}

/// Whether pods' cgroups go below `home`, podvm's own cgroup, for a podvm running as `euid`,
/// rather than in the shared group.
fn below_home(home: &Path, euid: u32) -> Result<bool> {
    use std::os::unix::fs::MetadataExt as _;
    let owner = || {
        Ok(fs::metadata(home)
            .map_err(io_err("cannot read", home))?
            .uid())
    };
    placement(home, euid, owner)
}

/// [`below_home`] for a podvm running as `euid`, `home_owner` giving the owner of `home`: for
/// root, when `home` is a systemd service's; for an ordinary user, always, and `home` must be a
/// scope or service delegated to the user (owned by it), else [`CgroupError::NotDelegated`].
fn placement(home: &Path, euid: u32, home_owner: impl FnOnce() -> Result<u32>) -> Result<bool> {
    if euid == 0 {
        return Ok(is_service(home));
    }
    match (is_scope(home) || is_service(home)) && home_owner()? == euid {
        true => Ok(true),
        false => Err(CgroupError::NotDelegated {
            home: home.to_path_buf(),
            uid: euid,
        }),
    }
}

/// Where pod `uuid`'s cgroup goes for a podvm running in cgroup `home`: below it when
/// `below_home`, else [`path`] (see the module docs).
fn dir_for(home: &Path, below_home: bool, uuid: &str) -> PathBuf {
    match below_home {
        true => home.join(format!("pod-{uuid}")),
        false => path(uuid),
    }
}

/// Creates the shared `/sys/fs/cgroup/podvm` with the pod controllers enabled on the way.
fn prepare_podvm_group() -> Result<()> {
    let mount = Path::new(CGROUP_MOUNT);
    let parent = mount.join(PODVM_GROUP);
    let enabled = enable_controllers(mount, &CONTROLLERS)?;
    create_dir(&parent)?;
    let wanted: Vec<&str> = enabled.iter().map(String::as_str).collect();
    enable_controllers(&parent, &wanted)?;
    Ok(())
}

/// What a pod's cgroup counted for its VMM and vCPUs; `None` where the kernel has no such file
/// or field (e.g. `memory.peak` before Linux 5.19).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CgroupUsage {
    /// User CPU time (`cpu.stat` user_usec), microseconds.
    pub cpu_user_usec: Option<u64>,
    /// System CPU time (`cpu.stat` system_usec), microseconds.
    pub cpu_system_usec: Option<u64>,
    /// Peak memory (`memory.peak`), bytes.
    pub memory_peak_bytes: Option<u64>,
    /// Processes the kernel OOM-killed in it (`memory.events` oom_kill).
    pub oom_kills: Option<u64>,
}

/// What the cgroup at `dir` counted.
pub fn usage_of(dir: &Path) -> CgroupUsage {
    let read = |file: &str| fs::read_to_string(dir.join(file)).unwrap_or_default();
    let field = |text: &str, key: &str| {
        text.lines().find_map(|line| {
            line.strip_prefix(key)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
    };
    let (cpu, events) = (read("cpu.stat"), read("memory.events"));
    CgroupUsage {
        cpu_user_usec: field(&cpu, "user_usec"),
        cpu_system_usec: field(&cpu, "system_usec"),
        memory_peak_bytes: read("memory.peak").trim().parse().ok(),
        oom_kills: field(&events, "oom_kill"),
    }
}

/// What pod `uuid`'s cgroup counted, found through process `pid` in it (its VMM); `None` when
/// that process is not in the pod's cgroup (gone, or a pod run without limits).
pub fn usage_of_process(pid: u32, uuid: &str) -> Option<CgroupUsage> {
    let cgroup = of_process(pid).ok().filter(|dir| is_pods(dir, uuid))?;
    let relative = cgroup.strip_prefix("/").unwrap_or(&cgroup);
    Some(usage_of(&Path::new(CGROUP_MOUNT).join(relative)))
}

/// The pod cgroup this process is in; when dropped, the process moves back to the cgroup it came
/// from and the pod's cgroup is removed.
#[derive(Debug)]
pub struct PodCgroup {
    dir: PathBuf,
    home: PathBuf,
    /// Controllers podvm enabled in `home`'s subtree (a service's cgroup) for the pod's cgroup.
    enabled_in_home: Vec<String>,
    /// Where this process goes back to when not `home` (rootless: [`ROOTLESS_LEAF`]).
    leaf: Option<PathBuf>,
}

impl PodCgroup {
    /// Creates pod `uuid`'s cgroup with `limits` and moves this whole process into it.
    pub fn enter(uuid: &str, limits: CgroupLimits) -> Result<PodCgroup> {
        let euid = nix::unistd::geteuid().as_raw();
        let home = rootless_home(own_cgroup()?, euid);
        let below_home = below_home(&home, euid)?;
        let dir = dir_for(&home, below_home, uuid);
        if !below_home {
            prepare_podvm_group()?;
        }
        create_dir(&dir)?;
        let rootless = below_home && euid != 0;
        let mut cgroup = PodCgroup {
            dir,
            home,
            enabled_in_home: Vec::new(),
            leaf: None,
        };
        if rootless {
            let leaf = cgroup.home.join(ROOTLESS_LEAF);
            create_dir(&leaf)?;
            move_members(&cgroup.home, &leaf)?;
            enable_controllers(&cgroup.home, &CONTROLLERS)?;
            cgroup.leaf = Some(leaf);
        }
        write(
            &cgroup.dir.join("cgroup.procs"),
            &std::process::id().to_string(),
        )?;
        if below_home && !rootless {
            // Only now: a cgroup with processes of its own cannot hand controllers to children.
            cgroup.enabled_in_home = enable_controllers(&cgroup.home, &CONTROLLERS)?;
        }
        // Every limit or none: a pod whose cgroup lacks a controller does not start.
        cgroup.set("memory.max", &limits.memory_max(), true)?;
        cgroup.set("memory.swap.max", "0", false)?;
        cgroup.set("cpu.max", &limits.cpu_max(), true)?;
        cgroup.set("pids.max", &limits.pids_max(), true)?;
        Ok(cgroup)
    }

    /// What the pod's cgroup counted so far.
    pub fn usage(&self) -> CgroupUsage {
        usage_of(&self.dir)
    }

    /// Writes a limit file; one that is not `required` may be missing (e.g. no
    /// `memory.swap.max` without swap accounting).
    fn set(&self, file: &str, value: &str, required: bool) -> Result<()> {
        let path = self.dir.join(file);
        match path.exists() {
            true => write(&path, value),
            false if required => Err(CgroupError::NoController {
                file: file.to_string(),
                dir: self.dir.clone(),
                below_unit: self.dir.parent() != Some(&Path::new(CGROUP_MOUNT).join(PODVM_GROUP)),
            }),
            false => Ok(()),
        }
    }

    /// Moves this process back to the cgroup it came from and removes the pod's cgroup.
    fn leave(&self) -> Result<()> {
        if let Some(leaf) = &self.leaf {
            write(&leaf.join("cgroup.procs"), &std::process::id().to_string())?;
            return remove_dir(&self.dir);
        }
        // (the home cgroup takes its process back only without controllers for children)
        let control = self.home.join("cgroup.subtree_control");
        for controller in &self.enabled_in_home {
            write(&control, &format!("-{controller}"))?;
        }
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

/// Moves every process of cgroup `from` to cgroup `to` (one that exits meanwhile is skipped).
fn move_members(from: &Path, to: &Path) -> Result<()> {
    let procs = from.join("cgroup.procs");
    let text = fs::read_to_string(&procs).map_err(io_err("cannot read", &procs))?;
    let target = to.join("cgroup.procs");
    for pid in text.split_whitespace() {
        match fs::write(&target, pid) {
            Err(err) if err.raw_os_error() != Some(libc::ESRCH) => {
                return Err(io_err("cannot write", &target)(err))
            }
            _ => {}
        }
    }
    Ok(())
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

    #[test]
    fn usage_reads_cpu_time_peak_memory_and_oom_kills() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("cpu.stat"),
            "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n",
        )
        .expect("cpu.stat");
        std::fs::write(dir.path().join("memory.peak"), "4096\n").expect("memory.peak");
        std::fs::write(
            dir.path().join("memory.events"),
            "low 0\noom 1\noom_kill 2\n",
        )
        .expect("memory.events");
        let usage = usage_of(dir.path());
        assert_eq!(usage.cpu_user_usec, Some(1000));
        assert_eq!(usage.cpu_system_usec, Some(500));
        assert_eq!(usage.memory_peak_bytes, Some(4096));
        assert_eq!(usage.oom_kills, Some(2), "oom_kill, not oom");
        assert_eq!(usage_of(&dir.path().join("gone")), CgroupUsage::default());
    }

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

    #[test]
    fn only_the_pods_own_cgroups_are_taken_for_it() {
        for pods in [
            "/podvm/pod-1234",
            "/system.slice/pod-exit.service/pod-1234",
            "/podvm-systemd/system.slice/pod-term.service/pod-1234",
        ] {
            assert!(is_pods(Path::new(pods), "1234"), "{pods}");
        }
        for other in [
            "/podvm/pod-12345",
            "/podvm/pod-123",
            "/user.slice/user-0.slice/session-1.scope",
            "/user.slice/pod-1234",
            "/pod-1234",
            "/system.slice/.service/pod-1234",
            "/",
        ] {
            assert!(!is_pods(Path::new(other), "1234"), "{other}");
        }
        assert!(!is_pods(Path::new("/podvm/pod-"), ""));
    }

    #[test]
    fn a_systemd_service_keeps_its_pods_cgroup_below_its_own() {
        let unit = Path::new("/sys/fs/cgroup/system.slice/pod-exit.service");
        let root = |home: &Path| placement(home, 0, || panic!("root never asks the owner"));
        assert!(root(unit).expect("root"));
        assert_eq!(
            dir_for(unit, true, "1234"),
            PathBuf::from("/sys/fs/cgroup/system.slice/pod-exit.service/pod-1234")
        );
        assert_eq!(dir_for(unit, false, "1234"), path("1234"));
        for elsewhere in [
            "/sys/fs/cgroup",
            "/sys/fs/cgroup/user.slice/user-0.slice/session-1.scope",
            "/sys/fs/cgroup/system.slice",
            "/sys/fs/cgroup/.service",
            "/sys/fs/cgroup/podvm/pod-9",
        ] {
            assert!(!root(Path::new(elsewhere)).expect("root"), "{elsewhere}");
        }
    }

    #[test]
    fn a_rootless_podvm_needs_a_scope_delegated_to_it() {
        let scope = Path::new("/sys/fs/cgroup/user.slice/user@1000.service/app.slice/run-r1.scope");
        assert!(placement(scope, 1000, || Ok(1000)).expect("delegated"));
        let service = Path::new("/sys/fs/cgroup/user.slice/user@1000.service");
        assert!(placement(service, 1000, || Ok(1000)).expect("delegated"));
        // A login session's scope belongs to root: not delegated.
        let session = Path::new("/sys/fs/cgroup/user.slice/user-1000.slice/session-3.scope");
        let err = placement(session, 1000, || Ok(0)).expect_err("root's scope");
        assert!(
            err.to_string().contains("systemd-run --user --scope"),
            "{err}"
        );
        // Owned by the user but no unit of systemd's: not taken either.
        let plain = Path::new("/sys/fs/cgroup/mine");
        assert!(placement(plain, 1000, || Ok(1000)).is_err());
        assert!(is_pods(&scope.join("pod-1234"), "1234"));
    }
}
