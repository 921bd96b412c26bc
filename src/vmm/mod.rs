//! The VMM: builds a KVM microVM from a plain [`VmConfig`] and runs it to the end.
//!
//! The VMM runs in a process of its own, one per VM ([`process`]): its supervisor (the podvm
//! process of the pod or sandbox, which keeps everything privileged: CNI, cgroups, mounts, the
//! agent's vsock listener) starts `podvm __vmm` with the VM description and the opened
//! resources, and follows it to its end report. [`process::run`] is the entry callers use.
//!
//! [`run_vm`] (in the VMM process) is the composition root and reads top to bottom: create the
//! VM and its memory, load the kernel, describe the CPUs, attach the devices, start the vCPUs,
//! wait.

pub mod agent_vsock;
pub mod boot;
pub mod console_log;
pub mod cpu;
pub mod devices;
pub mod host;
pub mod memory;
pub mod mptable;
pub mod process;
pub mod ratelog;
pub mod seccomp;
pub mod stats;
pub mod vcpu;

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{mpsc, Arc, Mutex};

use kvm_bindings::{kvm_pit_config, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VmFd};

pub use self::stats::{LiveStats, VmStats};
use self::vcpu::VcpuEvent;

/// Most vCPUs a podvm guest may have.
pub const MAX_VCPUS: u8 = 64;
/// Address KVM needs for the TSS of real-mode emulation on Intel.
const TSS_ADDRESS: usize = 0xfffb_d000;

/// Everything needed to build and boot one microVM (plain data: it is sent to the VMM process
/// as JSON, the initramfs apart as a sealed memfd).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct VmConfig {
    /// The guest kernel (ELF vmlinux with a PVH entry).
    pub kernel: PathBuf,
    /// Whether the kernel was chosen by the user (allowed on PVM hosts, where the default is not).
    pub kernel_chosen_by_user: bool,
    /// Kernel command line.
    pub cmdline: String,
    /// The initramfs, a newc cpio archive (shared with other VMs of this process; let go once
    /// it is in guest memory).
    #[serde(skip)]
    pub initramfs: Arc<Vec<u8>>,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// Number of vCPUs.
    pub vcpus: u8,
    /// Host directories shared over virtio-fs, one device each, in window order after vsock.
    pub shares: Vec<devices::virtio::fs::FsShare>,
    /// Network cards (virtio-net over vhost-net and a tap), one device each, after the shares.
    pub nets: Vec<devices::virtio::net::NetConfig>,
}

/// Where the guest's byte streams go (in the supervisor, see [`process::run`]).
pub struct VmOutputs {
    /// The console (COM1).
    pub console: Box<dyn Write + Send>,
    /// The agent channel (vsock; see [`agent_vsock`]).
    pub agent: Box<dyn agent_vsock::AgentSink>,
    /// Called once the VM is built, before it boots, with a handle to it.
    pub on_start: Option<Box<dyn FnOnce(VmHandle) + Send>>,
}

/// The running VM as other threads see it: its vsock CID, its VMM process, its live figures,
/// and a way to stop it hard.
#[derive(Debug, Clone)]
pub struct VmHandle {
    cid: u32,
    pid: u32,
    stop: Stopper,
    live: Arc<stats::LiveSource>,
}

/// How a [`VmHandle`] stops its VM.
#[derive(Debug, Clone)]
enum Stopper {
    /// In the VMM process: the vCPUs' event channel.
    Vcpus(mpsc::Sender<VcpuEvent>),
    /// In the supervisor: a message to the VMM process (SIGKILL if it does not end).
    Process(Arc<process::KillSwitch>),
}

impl VmHandle {
    /// The guest's vsock CID.
    pub fn cid(&self) -> u32 {
        self.cid
    }

    /// The pid of the VMM process running the VM.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The VM's memory and vCPU time now.
    pub fn stats(&self) -> LiveStats {
        self.live.sample()
    }

    /// Where the guest RAM regions are mapped in the VMM process.
    pub fn guest_starts(&self) -> &[u64] {
        self.live.guest_starts()
    }

    /// Stops the VM at once, as if the guest had powered off (its processes get no warning).
    pub fn kill(&self) {
        match &self.stop {
            Stopper::Vcpus(events) => {
                let _ = events.send(VcpuEvent::Shutdown { state: None });
            }
            Stopper::Process(switch) => switch.kill(),
        }
    }
}

/// Errors that stop a VM from being built or from running.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// /dev/kvm is unusable.
    #[error(transparent)]
    Host(#[from] host::HostError),
    /// The host's KVM is PVM and the kernel is the stock one.
    #[error("{}", host::pvm_explanation())]
    PvmHost,
    /// Bad memory size.
    #[error("--memory {mib}: {reason}")]
    Memory {
        /// The requested size.
        mib: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// Bad vCPU count.
    #[error("--cpus {0}: a VM needs between 1 and {max} vCPUs", max = MAX_VCPUS)]
    Vcpus(u8),
    /// A KVM VM-level ioctl failed.
    #[error("KVM could not {what}: {source}")]
    Kvm {
        /// What was attempted.
        what: &'static str,
        /// Why.
        source: kvm_ioctls::Error,
    },
    /// Guest memory setup failed.
    #[error(transparent)]
    GuestMemory(#[from] memory::MemoryError),
    /// Loading kernel, initramfs or command line failed.
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    /// The MP table could not be written.
    #[error(transparent)]
    Mptable(#[from] mptable::MptableError),
    /// A device could not be created.
    #[error(transparent)]
    Device(#[from] devices::DeviceError),
    /// The vsock device could not be created.
    #[error(transparent)]
    Vsock(#[from] devices::virtio::vsock::VsockError),
    /// A virtio-fs device could not be created.
    #[error(transparent)]
    Fs(#[from] devices::virtio::fs::FsError),
    /// A virtio-net device could not be created (boxed: its messages carry tap and netns).
    #[error(transparent)]
    Net(Box<devices::virtio::net::NetError>),
    /// The host end of the agent channel could not be set up.
    #[error(transparent)]
    AgentChannel(#[from] agent_vsock::AgentVsockError),
    /// A vCPU could not be configured.
    #[error(transparent)]
    Cpu(#[from] cpu::CpuError),
    /// The VMM process could not be started, or ended without its report.
    #[error(transparent)]
    Process(#[from] process::ProcessError),
    /// A vCPU thread could not be started.
    #[error("cannot start the thread of vCPU {cpu}: {source}")]
    Thread {
        /// The vCPU index.
        cpu: u8,
        /// Why.
        source: std::io::Error,
    },
    /// The guest could not go on.
    #[error("vCPU {cpu} stopped the VM: {reason}")]
    VcpuFailed {
        /// The vCPU index.
        cpu: u8,
        /// What happened.
        reason: String,
    },
}

/// What the VMM process is handed opened by its supervisor.
#[derive(Debug)]
pub struct VmResources {
    /// /dev/kvm.
    pub kvm: File,
    /// The guest kernel (checked to be an ELF by [`boot::open_kernel`]).
    pub kernel: File,
    /// The initramfs (the VMM process maps the supervisor's memfd; `config.initramfs` is not
    /// used).
    pub initramfs: Box<dyn InitramfsBytes>,
    /// The vsock port the supervisor listens on for the agent (`podvm.agent_port=`).
    pub agent_port: u32,
}

/// The bytes of an initramfs the VMM loads (a mapping of the supervisor's memfd).
pub trait InitramfsBytes: AsRef<[u8]> + Send + std::fmt::Debug {}

impl<T: AsRef<[u8]> + Send + std::fmt::Debug> InitramfsBytes for T {}

/// Builds the VM described by `config` from `resources` and runs it until the guest shuts down
/// (in the VMM process; callers use [`process::run`]). `console` gets COM1's bytes; `on_start`
/// is called once the VM is built, before its vCPUs start.
///
/// Returns the memory figures measured just before teardown.
pub fn run_vm(
    config: VmConfig,
    resources: VmResources,
    console: Box<dyn Write + Send>,
    on_start: Box<dyn FnOnce(VmHandle) + Send>,
) -> Result<VmStats, VmmError> {
    check_resources(&config)?;
    let kvm = kvm_from_file(resources.kvm);
    let vm = create_vm(&kvm)?;
    let guest_memory = memory::create(config.memory_mib)?;
    memory::register(&vm, &guest_memory)?;
    let vsock = devices::virtio::vsock::Vsock::new(&guest_memory)?;
    let guest_cid = vsock.cid();
    // The passthrough file system clears the process umask when the guest mounts a share (it
    // applies the guest's umask itself); podvm's own files after the VM need it back.
    let umask = current_umask();
    let shares = create_shares(&config.shares)?;
    let nets = create_nets(&guest_memory, &config.nets)?;
    let mmio = Arc::new(attach_virtio(&vm, &guest_memory, vsock, shares, nets)?);
    let cmdline = format!(
        "{} {} {}={}",
        config.cmdline,
        mmio.cmdline(),
        podvm_protocol::AGENT_PORT_PARAM,
        resources.agent_port
    );
    let kernel = boot::load(
        &guest_memory,
        &config.kernel,
        resources.kernel,
        (*resources.initramfs).as_ref(),
        &cmdline,
    )?;
    // In guest memory now: the VMM's mapping goes (the guest's copy stays resident until its
    // kernel has unpacked and freed it).
    drop(resources.initramfs);
    mptable::write(&guest_memory, config.vcpus)?;
    let bus = Arc::new(Mutex::new(devices::PioBus::new(&vm, console)?));
    let cpuid = cpu::supported_cpuid(&kvm)?;
    let stop = Arc::new(AtomicBool::new(false));
    let (events_tx, events_rx) = mpsc::channel();
    let live = Arc::new(stats::LiveSource::new(&guest_memory));
    on_start(VmHandle {
        cid: guest_cid,
        pid: std::process::id(),
        stop: Stopper::Vcpus(events_tx.clone()),
        live: live.clone(),
    });
    let mut threads = Vec::with_capacity(usize::from(config.vcpus));
    for index in 0..config.vcpus {
        let vcpu = vm
            .create_vcpu(u64::from(index))
            .map_err(|source| VmmError::Kvm {
                what: "create a vCPU",
                source,
            })?;
        cpu::configure_common(&vcpu, &cpuid, index, config.vcpus)?;
        if index == 0 {
            cpu::configure_boot_cpu(&vcpu, &guest_memory, kernel.entry)?;
        }
        let buses = vcpu::Buses {
            pio: bus.clone(),
            mmio: mmio.clone(),
        };
        let vcpu = vcpu::Vcpu {
            fd: vcpu,
            index,
            live: live.clone(),
        };
        let thread = vcpu::spawn(vcpu, buses, stop.clone(), events_tx.clone())
            .map_err(|source| VmmError::Thread { cpu: index, source })?;
        threads.push(thread);
    }
    drop(events_tx);
    let ended = events_rx.recv();
    let stats = stats::measure(&guest_memory);
    vcpu::stop_all(threads, &stop);
    mmio.shutdown();
    nix::sys::stat::umask(umask);
    bus.lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .flush();
    match ended {
        Ok(VcpuEvent::Failed { cpu, reason }) => Err(VmmError::VcpuFailed { cpu, reason }),
        Ok(VcpuEvent::Shutdown { state }) => Ok(VmStats {
            guest_end: state,
            ..stats
        }),
        Err(_) => Ok(stats),
    }
}

/// KVM over the /dev/kvm the supervisor opened.
fn kvm_from_file(file: File) -> Kvm {
    use std::os::fd::IntoRawFd;
    // SAFETY: the descriptor is an open /dev/kvm (opened by the supervisor, checked by
    // `host::open_kvm`) that nothing else owns: `into_raw_fd` gave up the File's ownership.
    unsafe { <Kvm as std::os::fd::FromRawFd>::from_raw_fd(file.into_raw_fd()) }
}

/// The virtio devices, in window/GSI order (see [`devices::virtio`]).
fn attach_virtio(
    vm: &VmFd,
    guest_memory: &vm_memory::GuestMemoryMmap,
    vsock: devices::virtio::vsock::Vsock,
    shares: Vec<devices::virtio::fs::Fs>,
    nets: Vec<devices::virtio::net::Net>,
) -> Result<devices::virtio::MmioBus, VmmError> {
    let mut mmio = devices::virtio::MmioBus::new();
    let rng = devices::virtio::rng::Rng::new().map_err(devices::DeviceError::from)?;
    mmio.attach(vm, guest_memory, Box::new(rng))?;
    mmio.attach(vm, guest_memory, Box::new(vsock))?;
    for share in shares {
        mmio.attach(vm, guest_memory, Box::new(share))?;
    }
    for net in nets {
        mmio.attach(vm, guest_memory, Box::new(net))?;
    }
    Ok(mmio)
}

/// The process umask (reading it means setting it; it is set back at once).
fn current_umask() -> nix::sys::stat::Mode {
    let mask = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    nix::sys::stat::umask(mask);
    mask
}

/// One virtio-fs device per share; fails before the VM starts if a directory or tag is bad.
fn create_shares(
    shares: &[devices::virtio::fs::FsShare],
) -> Result<Vec<devices::virtio::fs::Fs>, VmmError> {
    let mut devices = Vec::with_capacity(shares.len());
    for (index, share) in shares.iter().enumerate() {
        if shares[..index].iter().any(|other| other.tag == share.tag) {
            return Err(devices::virtio::fs::FsError::Tag {
                tag: format!("{} (used twice)", share.tag),
            }
            .into());
        }
        devices.push(devices::virtio::fs::Fs::new(share)?);
    }
    Ok(devices)
}

/// One virtio-net device per NIC; fails before the VM starts if a tap, netns or MAC is bad.
fn create_nets(
    guest_memory: &vm_memory::GuestMemoryMmap,
    nets: &[devices::virtio::net::NetConfig],
) -> Result<Vec<devices::virtio::net::Net>, VmmError> {
    nets.iter()
        .map(|net| {
            devices::virtio::net::Net::new(guest_memory, net)
                .map_err(|e| VmmError::Net(Box::new(e)))
        })
        .collect()
}

/// The host checks the supervisor makes before it starts a VMM process.
pub(crate) fn check_host(config: &VmConfig) -> Result<(), VmmError> {
    host::check_kvm_access()?;
    if host::kvm_kind() == host::KvmKind::Pvm && !config.kernel_chosen_by_user {
        return Err(VmmError::PvmHost);
    }
    Ok(())
}

/// The VM's size is one this host can give.
pub(crate) fn check_resources(config: &VmConfig) -> Result<(), VmmError> {
    let mib = config.memory_mib;
    if mib < memory::MIN_MEMORY_MIB {
        let reason = format!("a VM needs at least {} MiB", memory::MIN_MEMORY_MIB);
        return Err(VmmError::Memory { mib, reason });
    }
    if let Some(host_bytes) = host::host_memory_bytes() {
        if mib.saturating_mul(1 << 20) > host_bytes {
            let reason = format!("more than this host has ({} MiB)", host_bytes >> 20);
            return Err(VmmError::Memory { mib, reason });
        }
    }
    if config.vcpus == 0 || config.vcpus > MAX_VCPUS {
        return Err(VmmError::Vcpus(config.vcpus));
    }
    Ok(())
}

fn create_vm(kvm: &Kvm) -> Result<VmFd, VmmError> {
    let kvm_error = |what| move |source| VmmError::Kvm { what, source };
    let vm = kvm.create_vm().map_err(kvm_error("create a VM"))?;
    vm.set_tss_address(TSS_ADDRESS)
        .map_err(kvm_error("set the TSS address"))?;
    vm.create_irq_chip()
        .map_err(kvm_error("create the in-kernel interrupt controller"))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit)
        .map_err(kvm_error("create the in-kernel PIT"))?;
    Ok(vm)
}
