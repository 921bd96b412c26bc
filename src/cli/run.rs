//! `podvm run` and `podvm run-prepared`: run a pod's app in a microVM in the foreground, record
//! its exit in the pod, and exit with the app's status (never 0 for a failed app); or, with
//! `--detach`, hand the pod to a supervisor in the background ([`super::detach`]: the hidden
//! `podvm supervise`) and print its uuid.
//!
//! The pod's lock is held for the VM's lifetime, so `list`/`status` see it running, and a
//! killed podvm leaves a pod that reads as exited. Each app's root filesystem is a copy-on-write
//! overlay of the store's image tree ([`AppRootfs`]), shared with the VM over virtio-fs (one
//! share per app), so the app's writes land in the pod's upper directory and the store never
//! changes. A single app runs on the agent's boot session (stdin, terminal); several apps each
//! get an app session, and rkt's rule applies: the first app that fails stops the others and
//! its code is `run`'s (see the protocol crate).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use podvm_protocol::{AppSpec, BootSpec, MountSpec, RootfsSpec, VolumeSpec};
use serde::{Deserialize, Serialize};

use super::detach::{self, DetachError};
use super::net;
use super::prepare::{self, PrepareArgs, PrepareError};
use super::run_timeout::{Watchdog, EXIT_TIMEOUT};
use crate::control::{self, ControlError};
use crate::image::{self, ImageError};
use crate::launch::{self, LaunchError, LaunchPlan};
use crate::net::PodNetwork;
use crate::pod::cgroup::{CgroupLimits, PodCgroup};
use crate::pod::copy::{self, CopySpec, PodCopyError};
use crate::pod::lock::{self, PodLock};
use crate::pod::logs::{self, AppLog};
use crate::pod::manifest::RuntimeApp;
use crate::pod::resources;
use crate::pod::rootfs::AppRootfs;
use crate::pod::status::{now, AppExit, EndCause, PodStatus, PodUsage};
use crate::pod::volumes::{self, Volume, VolumeKind};
use crate::pod::{Pod, PodError, PodState, PodStore};
use crate::relay::RelayOptions;
use crate::store::{Store, StoreError};
use crate::vmm::devices::virtio::fs::FsShare;

/// The virtio-fs tag of the app's root filesystem.
const ROOTFS_TAG: &str = "rootfs";

/// Guest memory of a pod whose apps set no memory limit, in MiB.
const DEFAULT_VM_MIB: u64 = 256;

/// VM flags shared by `run` and `run-prepared` (JSON for a detached supervisor).
#[derive(Debug, Args, Serialize, Deserialize)]
pub struct VmFlags {
    /// Guest kernel (default: the one built by `make`); on PVM hosts, a PVM-aware kernel.
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Guest agent (default: the one built by `make`).
    #[arg(long)]
    agent: Option<PathBuf>,
    /// Show the guest console (kernel messages) on stderr.
    #[arg(long)]
    console: bool,
    /// Guest memory in MiB (default: the sum of the apps' `--memory` plus 128 MiB for the
    /// guest, at least 256; 256 when no app has a limit).
    #[arg(long = "vm-memory")]
    vm_memory: Option<u64>,
    /// Number of vCPUs (default: the sum of the apps' `--cpu`, rounded up; 1 without limits).
    #[arg(long = "vm-cpus")]
    vm_cpus: Option<u8>,
    /// Attach the app to this terminal (a pty when stdin is one; stdin forwarded in any case).
    /// With `--detach`: keep the app's stdin open for `podvm attach` (no pty).
    #[arg(long, short = 'i')]
    interactive: bool,
    /// Run the pod in the background: print its uuid once it runs, and return. Its apps'
    /// output goes to their logs (`podvm logs`) and to `podvm attach UUID`; `podvm stop` ends it.
    #[arg(long, short = 'd')]
    detach: bool,
    /// After SIGTERM/SIGINT (e.g. `podvm stop`), how long the app may take to exit before the
    /// VM is stopped hard (seconds, or e.g. `1500ms`).
    #[arg(long = "stop-timeout", value_name = "DURATION", default_value = "10", value_parser = super::duration::parse)]
    stop_timeout: Duration,
    /// Cap of each app's log in the pod (`podvm logs`), e.g. 10Mi or 1G; output past it is
    /// dropped from the log (not from the terminal) and `podvm logs` says how much.
    #[arg(long = "log-max", value_name = "SIZE", default_value = "100Mi", value_parser = parse_size)]
    log_max: u64,
    /// Run the pod even if its cgroup limits (memory, CPU time, tasks) cannot be set, e.g.
    /// without cgroup v2: the VM can then take as much of the host as it wants. Without this
    /// flag such a pod does not start.
    #[arg(long = "allow-unlimited")]
    allow_unlimited: bool,
    /// Stop the pod once it has run this long (e.g. `60s`, `10m`), as `podvm stop` does: the
    /// app gets SIGTERM, and the VM is stopped hard after `--stop-timeout`. podvm then exits
    /// with 124, as timeout(1), and `status` says why.
    #[arg(long, value_name = "DURATION", value_parser = super::duration::parse)]
    #[serde(default)]
    timeout: Option<Duration>,
    /// Remove the pod and everything it held once it has ended (the exit code is kept).
    #[arg(long)]
    #[serde(default)]
    rm: bool,
    /// Copy the contents of host directory HOST into GUEST in the (first) app's root before
    /// the VM starts (repeatable); GUEST's missing directories are made.
    #[arg(long = "copy-in", value_name = "HOST:GUEST", value_parser = copy_in_flag)]
    #[serde(default)]
    copy_in: Vec<String>,
    /// Copy the contents of GUEST in the (first) app's root into host directory HOST once the
    /// VM has ended, whatever its outcome (repeatable); the files are the caller's, without
    /// setuid/setgid bits or device nodes.
    #[arg(long = "copy-out", value_name = "GUEST:HOST", value_parser = copy_out_flag)]
    #[serde(default)]
    copy_out: Vec<String>,
}

/// A `--copy-in` value, checked.
fn copy_in_flag(text: &str) -> Result<String, String> {
    CopySpec::copy_in(text)
        .map(|_| text.to_string())
        .map_err(|err| err.to_string())
}

/// A `--copy-out` value, checked.
fn copy_out_flag(text: &str) -> Result<String, String> {
    CopySpec::copy_out(text)
        .map(|_| text.to_string())
        .map_err(|err| err.to_string())
}

/// A byte size flag: 100Mi, 10M, 1Gi, 4096.
fn parse_size(text: &str) -> Result<u64, String> {
    resources::memory_bytes(text)
        .map_err(|_| format!("{text:?}: expected a size such as 100Mi, 10M, 1Gi or 4096"))
}

/// Flags of `podvm run-prepared`.
#[derive(Debug, Args)]
pub struct RunPreparedArgs {
    /// The prepared pod (a unique uuid prefix).
    uuid: String,
    #[command(flatten)]
    vm: VmFlags,
}

/// Flags of the hidden `podvm supervise`: a detached pod's supervisor, which reads the VM
/// flags as JSON from its stdin ([`super::detach`]).
#[derive(Debug, Args)]
pub struct SuperviseArgs {
    /// The prepared pod.
    uuid: String,
    /// The descriptor of the pod's lock, held for it by the `--detach` that started this.
    #[arg(long = "lock-fd")]
    lock_fd: i32,
}

/// Flags of `podvm run`: those of `prepare`, then the VM's.
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    vm: VmFlags,
    #[command(flatten)]
    prepare: PrepareArgs,
}

/// Errors of the run verbs.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A `--copy-in` or `--copy-out` failed.
    #[error(transparent)]
    Copy(#[from] PodCopyError),
    /// The `--timeout` watchdog could not be started.
    #[error("cannot start the --timeout watchdog: {0}")]
    Watchdog(std::io::Error),
    /// Preparing the pod failed.
    #[error(transparent)]
    Prepare(#[from] PrepareError),
    /// Pod store failure.
    #[error(transparent)]
    Pod(#[from] PodError),
    /// Image store failure.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The app's image failed.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The VM failed.
    #[error("pod {uuid}: {source}")]
    Launch {
        /// The pod.
        uuid: String,
        /// Why.
        source: LaunchError,
    },
    /// The pod's network could not be made.
    #[error(transparent)]
    Net(#[from] crate::net::NetError),
    /// The exec token could not be made.
    #[error(transparent)]
    Control(#[from] ControlError),
    /// A volume could not be set up.
    #[error(transparent)]
    Volume(#[from] volumes::VolumeError),
    /// The pod's supervisor could not go to the background.
    #[error(transparent)]
    Detach(#[from] DetachError),
    /// An app's capability or seccomp isolators are invalid.
    #[error(transparent)]
    Security(#[from] crate::pod::security::SecurityError),
    /// A detached supervisor got no usable VM flags.
    #[error("podvm {verb}: cannot read the VM flags from stdin: {why}", verb = detach::SUPERVISE_VERB)]
    SuperviseFlags {
        /// Why.
        why: String,
    },
    /// The pod's cgroup limits could not be set, so it did not start.
    #[error(
        "pod {uuid} did not start: its cgroup limits (memory, CPU, tasks) cannot be set: \
         {source}\n(podvm needs cgroup v2 with the memory, cpu and pids controllers, and to be \
         the only process in its cgroup when run as a systemd service; `--allow-unlimited` runs \
         the pod without limits anyway)"
    )]
    NoLimits {
        /// The pod.
        uuid: String,
        /// Why.
        source: crate::pod::cgroup::CgroupError,
    },
    /// What the pod asks for is not supported yet.
    #[error("pod {uuid}: {what} is not supported; run it with a single app")]
    Unsupported {
        /// The pod.
        uuid: String,
        /// What.
        what: String,
    },
}

/// Runs `podvm run`: prepare, then run the prepared pod.
pub fn run(data_dir: &Path, args: RunArgs) -> Result<ExitCode, RunError> {
    // The lock taken when the pod was created is held until it has run: a `gc` (or any other
    // command) in between would otherwise find the prepared pod unlocked, take it, and make
    // this `run` fail as busy.
    let (uuid, held) = prepare::prepare_locked(data_dir, &args.prepare)?;
    if let Some(path) = args.prepare.uuid_file() {
        std::fs::write(path, format!("{uuid}\n")).map_err(|source| PrepareError::UuidFile {
            path: path.to_path_buf(),
            source,
        })?;
    }
    let result = start_pod(data_dir, &uuid, &args.vm, Some(held));
    if result.is_err() {
        // A pod `run` prepared but could not start is not left behind for `run-prepared`.
        let pods = PodStore::open(data_dir)?;
        if let Some(pod) = pods
            .find(&uuid)
            .ok()
            .filter(|pod| pod.state == PodState::Prepared)
        {
            let _ = pods.delete(&pod);
        }
    }
    result
}

/// Runs `podvm run-prepared`.
pub fn run_prepared(data_dir: &Path, args: RunPreparedArgs) -> Result<ExitCode, RunError> {
    start_pod(data_dir, &args.uuid, &args.vm, None)
}

/// Runs the prepared pod `prefix` in the foreground, or with `--detach` in the background;
/// `held` is its lock when the caller holds it already.
fn start_pod(
    data_dir: &Path,
    prefix: &str,
    vm: &VmFlags,
    held: Option<PodLock>,
) -> Result<ExitCode, RunError> {
    match vm.detach {
        true => run_detached(data_dir, prefix, vm, held),
        false => run_then_remove(data_dir, prefix, vm, held, false),
    }
}

/// [`run_pod`], then with `--rm` the pod's removal (once its VM, mounts and network are gone);
/// the run's result is kept, a failed removal only reported.
fn run_then_remove(
    data_dir: &Path,
    prefix: &str,
    vm: &VmFlags,
    held: Option<PodLock>,
    detached: bool,
) -> Result<ExitCode, RunError> {
    let result = run_pod(data_dir, prefix, vm, held, detached);
    if vm.rm {
        let pods = PodStore::open(data_dir)?;
        let removed = pods
            .find(prefix)
            .and_then(|pod| super::pod_gc::remove(&pods, &pod));
        match removed {
            // (a pod that never started is removed by `run` already)
            Ok(_) | Err(PodError::NotFound(_)) => {}
            Err(err) => eprintln!("podvm: --rm: {err}"),
        }
    }
    result
}

/// Runs the hidden `podvm supervise`: a detached pod's supervisor, handed the pod's lock by
/// the `--detach` that started it.
pub fn supervise(data_dir: &Path, args: SuperviseArgs) -> Result<ExitCode, RunError> {
    let flags = detach::read_flags().map_err(|err| RunError::SuperviseFlags {
        why: err.to_string(),
    })?;
    let vm: VmFlags = serde_json::from_slice(&flags).map_err(|err| RunError::SuperviseFlags {
        why: err.to_string(),
    })?;
    let pods = PodStore::open(data_dir)?;
    let pod = find_prepared(&pods, &args.uuid)?;
    let held = detach::adopt_lock(&pod, args.lock_fd)?;
    run_then_remove(data_dir, &pod.uuid, &vm, Some(held), true)
}

/// `--detach`: starts the pod's supervisor in the background, hands it the pod's lock (`held`,
/// or taken here) and prints the pod's uuid once the pod runs.
fn run_detached(
    data_dir: &Path,
    prefix: &str,
    vm: &VmFlags,
    held: Option<PodLock>,
) -> Result<ExitCode, RunError> {
    let pods = PodStore::open(data_dir)?;
    let pod = find_prepared(&pods, prefix)?;
    let held = match held {
        Some(held) => held,
        None => lock::try_lock(&pod.dir, &pod.uuid)?,
    };
    let flags = serde_json::to_vec(vm).expect("VM flags always serialize");
    detach::start(data_dir, &pods, &pod, &held, &flags)?;
    // The supervisor holds the lock now, through the descriptor it inherited.
    held.hand_over();
    println!("{}", pod.uuid);
    Ok(ExitCode::SUCCESS)
}

/// The prepared pod `prefix` names.
fn find_prepared(pods: &PodStore, prefix: &str) -> Result<Pod, PodError> {
    let prepared = pods.find(prefix)?;
    if prepared.state != PodState::Prepared {
        let hint = "only prepared pods run; `podvm prepare` makes one";
        return Err(PodError::WrongState {
            uuid: prepared.uuid,
            state: prepared.state,
            hint,
        });
    }
    Ok(prepared)
}

/// Runs the prepared pod `prefix` until its VM ends, as its supervisor: in the foreground
/// (podvm's terminal is the app's), or `detached` (output to the logs and attached clients);
/// `held` is its lock when the caller holds it already.
fn run_pod(
    data_dir: &Path,
    prefix: &str,
    vm: &VmFlags,
    held: Option<PodLock>,
    detached: bool,
) -> Result<ExitCode, RunError> {
    let pods = PodStore::open(data_dir)?;
    let prepared = find_prepared(&pods, prefix)?;
    let _held = match held {
        Some(held) => held,
        None => lock::try_lock(&prepared.dir, &prepared.uuid)?,
    };
    let manifest = pods.manifest(&prepared)?;
    check_apps(&prepared, &manifest.apps, vm)?;
    let store = Store::open(data_dir)?;
    let mut images = Vec::new();
    for app in &manifest.apps {
        images.push(image::prepare_named(&store, &app.image.id)?);
    }
    let (sized_mib, sized_cpus) = resources::vm_size(
        manifest.apps.iter().flat_map(|app| &app.app.isolators),
        DEFAULT_VM_MIB,
    );
    let (cpus, memory_mib) = (
        vm.vm_cpus.unwrap_or(sized_cpus),
        vm.vm_memory.unwrap_or(sized_mib),
    );
    // Before anything else is made for the pod: a pod that cannot get its limits stays
    // prepared (and `run` removes it). Left when `cgroup` drops, after the VM.
    let cgroup = enter_cgroup(&prepared, memory_mib, cpus, vm.allow_unlimited)?;
    let image_ports: Vec<_> = images
        .iter()
        .flat_map(|image| image.defaults.ports.clone())
        .collect();
    // Made while the pod is still prepared (a failure leaves no running pod); released when
    // `_network` drops, after the VM, whatever happened.
    let (network, _network) = net::setup(&pods, &prepared, &manifest, &image_ports)?;
    let pod = pods.transition(&prepared, "run")?;
    // Copy-on-write over the store's trees; unmounted when `rootfs` drops after the VM.
    let mut rootfs = Vec::new();
    for (app, image) in manifest.apps.iter().zip(&images) {
        rootfs
            .push(AppRootfs::prepare(&pod.dir, &app.name, &image.rootfs).map_err(PodError::from)?);
    }
    let mut status = pods.status(&pod)?;
    status.started = Some(now());
    status.pid = Some(std::process::id());
    status.unlimited = cgroup.is_none();
    status.seccomp = Some(crate::vmm::seccomp::Mode::current().as_str().to_string());
    pods.write_status(&pod, &status)?;

    let relay = match detached {
        // Attached clients feed an interactive detached app's stdin.
        true => RelayOptions {
            hold_stdin: vm.interactive,
            stop_timeout: vm.stop_timeout,
            ..RelayOptions::default()
        },
        false => {
            let interactive = vm.interactive && std::io::stdin().is_terminal();
            RelayOptions::for_cli(vm.interactive, interactive, vm.stop_timeout)
        }
    };
    let hostname = manifest
        .annotation(prepare::HOSTNAME_ANNOTATION)
        .unwrap_or_else(|| format!("podvm-{}", pod.uuid));
    let app_roots: Vec<(&Path, &[volumes::Mount])> = manifest
        .apps
        .iter()
        .zip(&rootfs)
        .map(|(app, rootfs)| (rootfs.merged.as_path(), app.mounts.as_slice()))
        .collect();
    let (extra_shares, volume_specs) = volume_shares(&pod, &manifest.volumes, &app_roots)?;
    let mut shares: Vec<FsShare> = rootfs
        .iter()
        .enumerate()
        .map(|(index, rootfs)| FsShare {
            tag: rootfs_tag(index),
            host_dir: rootfs.merged.clone(),
            // Writes land in the pod's own upper dir; the agent makes a `--readonly-rootfs`
            // root read-only once its mount points and /etc files are in place.
            read_only: false,
        })
        .collect();
    shares.extend(extra_shares);
    let mut spec = BootSpec {
        tty: relay.tty,
        exec_token: Some(control::new_token()?),
        network: network.guest.clone(),
        volumes: volume_specs,
        ..BootSpec::default()
    };
    let mut app_log = None;
    let mut app_logs = Vec::new();
    if let [app] = manifest.apps.as_slice() {
        spec.command = app.app.exec.clone();
        spec.env = app.app.env_entries();
        spec.workdir = Some(app.app.working_directory.clone());
        spec.rootfs = Some(rootfs_spec(app, 0, &hostname, &network));
        spec.user = non_empty(&app.app.user);
        spec.group = non_empty(&app.app.group);
        spec.limits = resources::app_limits(&app.app.isolators);
        spec.security = crate::pod::security::security(&app.app.isolators)?;
        spec.supplementary_gids = app.app.supplementary_gids.clone();
        app_log = Some(open_app_log(&pod, &app.name, vm.log_max)?);
    } else {
        for (index, app) in manifest.apps.iter().enumerate() {
            spec.apps.push(app_spec(app, index, &hostname, &network)?);
            app_logs.push((app.name.clone(), open_app_log(&pod, &app.name, vm.log_max)?));
        }
        spec.stop_grace_ms = Some(u64::try_from(vm.stop_timeout.as_millis()).unwrap_or(u64::MAX));
    }
    let plan = LaunchPlan {
        kernel: vm.kernel.clone(),
        agent: vm.agent.clone(),
        spec,
        initrd_dir: None,
        cpus,
        memory_mib,
        console: vm.console,
        console_log: Some(pod.dir.join("console.log")),
        kernel_args: Vec::new(),
        app_log,
        app_logs,
        shares,
        nets: net::vm_nets(&network),
        relay,
        control: Some(pod.dir.join(control::SOCKET_FILE)),
        detached,
    };
    if let Some(first) = rootfs.first() {
        for text in &vm.copy_in {
            copy::copy_in(&first.merged, &CopySpec::copy_in(text)?)?;
        }
    }
    let watchdog = match vm.timeout {
        Some(limit) => Some(
            Watchdog::start(pod.dir.join(control::SOCKET_FILE), limit)
                .map_err(RunError::Watchdog)?,
        ),
        None => None,
    };
    let vm_started = Instant::now();
    let outcome = launch::launch(&plan);
    let timed_out = watchdog.is_some_and(Watchdog::finish);
    let mut usage = PodUsage {
        wall_ms: u64::try_from(vm_started.elapsed().as_millis()).unwrap_or(u64::MAX),
        cgroup: cgroup.as_ref().map(PodCgroup::usage).unwrap_or_default(),
        ..PodUsage::default()
    };
    if let Ok(outcome) = &outcome {
        usage.guest_memory_kib = Some(outcome.stats.guest_resident_kib);
        usage.vmm_peak_rss_kib = Some(outcome.stats.process_peak_rss_kib);
    }
    let shares = crate::vmm::devices::virtio::fs::share_bytes();
    usage.set_share_bytes(shares.read, shares.written);
    // (the network, released after this function, still has its taps)
    usage.add_net_bytes(&pod.dir);
    status.usage = Some(usage);
    // Read before the cgroup goes: the kernel's OOM killer picks the VMM process.
    let oom_kills = crate::pod::cgroup::oom_kills(&pod.uuid).filter(|&kills| kills > 0);
    let copied_out = copy_out(vm, rootfs.first());
    drop(cgroup);
    status.finished = Some(now());
    if timed_out {
        let limit = vm.timeout.unwrap_or_default();
        status.reason = Some(format!(
            "timeout: the pod ran past its --timeout of {limit:?} and was stopped"
        ));
        status.cause = Some(EndCause::Timeout);
        pods.write_status(&pod, &status)?;
        copied_out?;
        return Ok(ExitCode::from(EXIT_TIMEOUT));
    }
    match outcome {
        Ok(outcome) => {
            let exit_code = launch::exit_code(outcome.status);
            let apps = match manifest.apps.as_slice() {
                [app] => vec![AppExit::new(
                    &app.name,
                    i32::from(exit_code),
                    outcome.oom_kills,
                )],
                _ => outcome
                    .apps
                    .iter()
                    .map(|(name, status)| {
                        let kills = outcome.app_oom_kills.iter().find(|(app, _)| app == name);
                        AppExit::new(name, status.shell_code(), kills.map_or(0, |k| k.1))
                    })
                    .collect(),
            };
            for line in status.record_apps(apps) {
                eprintln!("podvm: {line}");
            }
            pods.write_status(&pod, &status)?;
            copied_out?;
            Ok(ExitCode::from(exit_code))
        }
        Err(source) => {
            status.reason = Some(source.to_string());
            status.cause = source.cause();
            if let Some(vmm_pid) = source.vmm_killed_by_seccomp() {
                return seccomp_killed(&pods, &pod, status, vmm_pid, source);
            }
            if let Some(kills) = oom_kills.filter(|_| source.vmm_killed()) {
                status.reason = Some(format!(
                    "killed by the kernel's OOM killer: {source} in the pod's cgroup, which \
                     reached its memory limit (memory.events: oom_kill {kills})"
                ));
                status.cause = Some(EndCause::OomKilled);
            }
            pods.write_status(&pod, &status)?;
            Err(RunError::Launch {
                uuid: pod.uuid,
                source,
            })
        }
    }
}

/// The exit code of a `podvm run` whose VMM its seccomp filter killed: as a shell reports a
/// command killed by SIGSYS.
pub const EXIT_SECCOMP: u8 = 128 + libc::SIGSYS as u8;

/// Records that the pod's VMM process `vmm_pid` was killed by its seccomp filter (seen by
/// reaping it: SIGSYS), with the thread and call from the kernel's log when it has them, and
/// ends `podvm run` with [`EXIT_SECCOMP`].
fn seccomp_killed(
    pods: &PodStore,
    pod: &Pod,
    mut status: PodStatus,
    vmm_pid: u32,
    source: LaunchError,
) -> Result<ExitCode, RunError> {
    use crate::vmm::seccomp::audit;
    let kill = audit::await_kill(vmm_pid);
    let process = format!("the pod's VMM process {vmm_pid}");
    let reason = audit::reason(&process, kill.as_ref());
    status.reason = Some(reason.clone());
    status.cause = Some(EndCause::Seccomp);
    pods.write_status(pod, &status)?;
    eprintln!("podvm: pod {}: {reason}\n{source}", pod.uuid);
    Ok(ExitCode::from(EXIT_SECCOMP))
}

/// `--copy-out`s from the app's root once its VM has ended; all are tried, the first failure
/// is returned.
fn copy_out(vm: &VmFlags, root: Option<&AppRootfs>) -> Result<(), RunError> {
    let Some(root) = root else { return Ok(()) };
    let mut first_error = None;
    for text in &vm.copy_out {
        let copied = CopySpec::copy_out(text).and_then(|spec| copy::copy_out(&root.merged, &spec));
        match (copied, &first_error) {
            (Ok(_), _) => {}
            (Err(err), None) => first_error = Some(err),
            // The first failure is the run's error; later ones are told here.
            (Err(err), Some(_)) => eprintln!("podvm: --copy-out {text}: {err}"),
        }
    }
    first_error.map_or(Ok(()), |err| Err(err.into()))
}

/// Moves podvm into the pod's cgroup, sized for the VM. Without its limits the pod does not
/// start, unless `allow_unlimited` (`--allow-unlimited`): then it runs unconfined, with a warning.
fn enter_cgroup(
    pod: &Pod,
    memory_mib: u64,
    cpus: u8,
    allow_unlimited: bool,
) -> Result<Option<PodCgroup>, RunError> {
    let limits = CgroupLimits { memory_mib, cpus };
    match PodCgroup::enter(&pod.uuid, limits) {
        Ok(cgroup) => Ok(Some(cgroup)),
        Err(err) if allow_unlimited => {
            eprintln!(
                "podvm: warning: pod {} runs without its cgroup limits (--allow-unlimited): {err}",
                pod.uuid
            );
            Ok(None)
        }
        Err(source) => Err(RunError::NoLimits {
            uuid: pod.uuid.clone(),
            source,
        }),
    }
}

/// The virtio-fs tag of the root filesystem of the pod's app number `index`.
fn rootfs_tag(index: usize) -> String {
    match index {
        0 => ROOTFS_TAG.to_string(),
        _ => format!("{ROOTFS_TAG}-{index}"),
    }
}

/// How the agent mounts the root filesystem of the pod's app number `index`.
fn rootfs_spec(app: &RuntimeApp, index: usize, hostname: &str, network: &PodNetwork) -> RootfsSpec {
    RootfsSpec {
        tag: rootfs_tag(index),
        read_only: app.read_only_root_fs,
        share_writable: true,
        app: app.name.clone(),
        hostname: Some(hostname.to_string()),
        resolv_conf: network.resolv_conf.clone(),
        hosts_entries: network.hosts_entries.clone(),
        mounts: app
            .mounts
            .iter()
            .map(|mount| MountSpec {
                volume: mount.volume.clone(),
                target: mount.path.clone(),
                read_only: false,
            })
            .collect(),
    }
}

/// The pod's volumes as virtio-fs shares and as the agent mounts them; empty volumes get their
/// directory in the pod, filled with the image's files at the path of the first app mounting
/// it (`app_roots`: each app's root tree and mounts).
fn volume_shares(
    pod: &Pod,
    volumes: &[Volume],
    app_roots: &[(&Path, &[volumes::Mount])],
) -> Result<(Vec<FsShare>, Vec<VolumeSpec>), RunError> {
    let mut shares = Vec::new();
    let mut specs = Vec::new();
    for (index, volume) in volumes.iter().enumerate() {
        let host_dir = volumes::host_dir(&pod.dir, volume)?;
        if volume.kind == VolumeKind::Empty && create_empty_volume(&host_dir)? {
            volumes::populate(&host_dir, &volume.name, app_roots)?;
        }
        shares.push(FsShare {
            tag: volumes::tag(index),
            host_dir,
            read_only: volume.read_only,
        });
        specs.push(VolumeSpec {
            name: volume.name.clone(),
            tag: volumes::tag(index),
            read_only: volume.read_only,
        });
    }
    Ok((shares, specs))
}

/// Creates an empty volume's directory in the pod (its parent made if missing); false when it
/// was there already (a pod run again keeps what its volumes hold).
fn create_empty_volume(dir: &Path) -> Result<bool, PodError> {
    let failed = |source| PodError::Io {
        what: "cannot create the volume's directory",
        path: dir.to_path_buf(),
        source,
    };
    if let Some(parent) = dir.parent() {
        crate::private::create_dir_all(parent).map_err(failed)?;
    }
    match std::fs::create_dir(dir) {
        Ok(()) => Ok(true),
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(err) => Err(failed(err)),
    }
}

/// The app number `index` of a pod of several apps, as the agent runs it.
fn app_spec(
    app: &RuntimeApp,
    index: usize,
    hostname: &str,
    network: &PodNetwork,
) -> Result<AppSpec, crate::pod::security::SecurityError> {
    Ok(AppSpec {
        name: app.name.clone(),
        command: app.app.exec.clone(),
        env: app.app.env_entries(),
        workdir: Some(app.app.working_directory.clone()),
        rootfs: Some(rootfs_spec(app, index, hostname, network)),
        user: non_empty(&app.app.user),
        group: non_empty(&app.app.group),
        limits: resources::app_limits(&app.app.isolators),
        security: crate::pod::security::security(&app.app.isolators)?,
        supplementary_gids: app.app.supplementary_gids.clone(),
    })
}

/// The app's log in the pod directory, for `podvm logs`, capped at `max` bytes.
fn open_app_log(pod: &Pod, app: &str, max: u64) -> Result<AppLog, RunError> {
    let path = logs::path(&pod.dir, app);
    AppLog::create(&path, max).map_err(|source| {
        RunError::Pod(PodError::Io {
            what: "cannot create the app log",
            path,
            source,
        })
    })
}

/// `None` for an empty user or group field (the image's default: root).
fn non_empty(text: &str) -> Option<String> {
    (!text.is_empty()).then(|| text.to_string())
}

/// Whether the pod's apps can run together: at least one, and a terminal only for one.
fn check_apps(pod: &Pod, apps: &[RuntimeApp], vm: &VmFlags) -> Result<(), RunError> {
    let unsupported = |what: String| RunError::Unsupported {
        uuid: pod.uuid.clone(),
        what,
    };
    match apps {
        [] => Err(unsupported("a pod without apps".into())),
        [_] => Ok(()),
        _ if vm.interactive => Err(unsupported(format!(
            "--interactive with {} apps (stdin and a terminal go to one app)",
            apps.len()
        ))),
        _ => Ok(()),
    }
}
