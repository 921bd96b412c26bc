//! vCPU threads: each runs KVM_RUN in a loop, routes port I/O to the bus, and reports how the
//! guest ended. The VMM stops them by setting a flag and kicking them out of KVM_RUN with a signal.
//! Each thread installs the vCPU seccomp filter ([`super::seccomp`]) before its first KVM_RUN.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use super::devices::virtio::MmioBus;
use super::devices::PioBus;
use super::seccomp::{self, ThreadKind};

/// The buses a vCPU routes its I/O exits to.
#[derive(Clone)]
pub struct Buses {
    /// Port I/O: the UARTs.
    pub pio: Arc<Mutex<PioBus>>,
    /// MMIO: the virtio devices' register windows.
    pub mmio: Arc<MmioBus>,
}

/// Why a vCPU thread stopped running the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VcpuEvent {
    /// The guest reset or shut down (with `reboot=t`, every guest reboot ends here); `state`
    /// is where the vCPU that ended it was (none when the VMM stopped the VM itself).
    Shutdown {
        /// The vCPU's registers at the exit, for the error when no exit status came.
        state: Option<String>,
    },
    /// KVM failed or the guest did something the VMM cannot handle.
    Failed {
        /// The vCPU index.
        cpu: u8,
        /// What happened.
        reason: String,
    },
}

/// A running vCPU thread.
pub struct VcpuThread {
    handle: JoinHandle<()>,
}

/// One vCPU to run: its KVM descriptor, its index, and where its thread registers for the
/// VM's live figures.
pub struct Vcpu {
    /// The KVM vCPU.
    pub fd: VcpuFd,
    /// Its index.
    pub index: u8,
    /// The VM's live figures.
    pub live: Arc<super::stats::LiveSource>,
}

/// Starts a thread that runs `vcpu` until the guest ends or `stop` is set.
pub fn spawn(
    vcpu: Vcpu,
    buses: Buses,
    stop: Arc<AtomicBool>,
    events: Sender<VcpuEvent>,
) -> std::io::Result<VcpuThread> {
    register_signal_handler(SIGRTMIN(), kick_handler).map_err(std::io::Error::other)?;
    let Vcpu {
        fd: mut vcpu,
        index: cpu,
        live,
    } = vcpu;
    let handle = std::thread::Builder::new()
        .name(format!("vcpu{cpu}"))
        .spawn(move || {
            live.register_vcpu_thread();
            // Filtered before the first KVM_RUN: the guest reaches nothing of this thread
            // before. A filter that cannot be installed stops the VM (fail closed).
            let thread = format!("vcpu{cpu}");
            let event = match seccomp::install(ThreadKind::Vcpu, &thread) {
                Ok(()) => {
                    #[cfg(feature = "seccomp-test-trigger")]
                    seccomp::trigger::fire(seccomp::trigger::Site::Vcpu);
                    run_loop(&mut vcpu, cpu, &buses, &stop)
                }
                Err(err) => Some(VcpuEvent::Failed {
                    cpu,
                    reason: err.to_string(),
                }),
            };
            if let Some(event) = event {
                // The receiver only disappears once the VMM is tearing down anyway.
                let _ = events.send(event);
            }
        })?;
    Ok(VcpuThread { handle })
}

/// Stops every thread: sets the flag, then kicks each one until it has left KVM_RUN.
pub fn stop_all(threads: Vec<VcpuThread>, stop: &AtomicBool) {
    stop.store(true, Ordering::SeqCst);
    for thread in threads {
        while !thread.handle.is_finished() {
            // A kick that lands just before KVM_RUN is entered is lost, hence the loop.
            let _ = thread.handle.kill(SIGRTMIN());
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = thread.handle.join();
    }
}

fn run_loop(vcpu: &mut VcpuFd, cpu: u8, buses: &Buses, stop: &AtomicBool) -> Option<VcpuEvent> {
    let failed = |reason: String| Some(VcpuEvent::Failed { cpu, reason });
    while !stop.load(Ordering::SeqCst) {
        match vcpu.run() {
            Ok(VcpuExit::IoIn(port, data)) => lock(&buses.pio).read(port, data),
            Ok(VcpuExit::IoOut(port, data)) => lock(&buses.pio).write(port, data),
            Ok(VcpuExit::MmioRead(addr, data)) => buses.mmio.read(addr, data),
            Ok(VcpuExit::MmioWrite(addr, data)) => buses.mmio.write(addr, data),
            Ok(exit @ (VcpuExit::Shutdown | VcpuExit::SystemEvent(..) | VcpuExit::Hlt)) => {
                let exit = format!("{exit:?}");
                return Some(VcpuEvent::Shutdown {
                    state: Some(describe_end(cpu, &exit, vcpu)),
                });
            }
            Ok(VcpuExit::FailEntry(reason, _)) => {
                return failed(format!(
                    "KVM could not enter the guest (hardware reason {reason:#x})"
                ))
            }
            Ok(VcpuExit::InternalError) => {
                return failed(
                    "KVM internal error (instruction emulation failure: is this a PVM host \
                     running a stock kernel?)"
                        .to_string(),
                )
            }
            Ok(other) => return failed(format!("unhandled vCPU exit {other:?}")),
            Err(err) if err.errno() == libc::EINTR || err.errno() == libc::EAGAIN => {}
            Err(err) => return failed(format!("KVM_RUN failed: {err}")),
        }
    }
    None
}

/// Where vCPU `cpu` was when `exit` ended the guest: enough to tell a clean reboot from a
/// guest that reset itself (a triple fault) and where.
fn describe_end(cpu: u8, exit: &str, vcpu: &VcpuFd) -> String {
    match (vcpu.get_regs(), vcpu.get_sregs()) {
        (Ok(regs), Ok(sregs)) => describe_state(cpu, exit, &regs, &sregs),
        _ => format!("vCPU {cpu}: {exit} (registers unreadable)"),
    }
}

/// One line of the vCPU state that matters for a reset: the instruction, the stack, the last
/// page fault address and the paging and interrupt tables.
fn describe_state(
    cpu: u8,
    exit: &str,
    regs: &kvm_bindings::kvm_regs,
    sregs: &kvm_bindings::kvm_sregs,
) -> String {
    format!(
        "vCPU {cpu}: {exit} at rip {:#x} rsp {:#x} rflags {:#x} cr0 {:#x} cr2 {:#x} cr3 {:#x} \
         cr4 {:#x} idt {:#x}/{:#x} gdt {:#x}/{:#x}",
        regs.rip,
        regs.rsp,
        regs.rflags,
        sregs.cr0,
        sregs.cr2,
        sregs.cr3,
        sregs.cr4,
        sregs.idt.base,
        sregs.idt.limit,
        sregs.gdt.base,
        sregs.gdt.limit
    )
}

fn lock(bus: &Mutex<PioBus>) -> MutexGuard<'_, PioBus> {
    // A panicking vCPU thread aborts the process (panic = "abort"), so poison is harmless here.
    bus.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_end_state_names_the_vcpu_exit_and_registers() {
        let regs = kvm_bindings::kvm_regs {
            rip: 0xffff_ffff_8100_29fd,
            rsp: 0xffff_c900_0001_3f00,
            ..Default::default()
        };
        let mut sregs = kvm_bindings::kvm_sregs {
            cr2: 0xdead_b000,
            cr3: 0x0123_4000,
            ..Default::default()
        };
        sregs.idt.base = 0xffff_fe00_0000_0000;
        sregs.idt.limit = 0xfff;
        let line = describe_state(0, "Shutdown", &regs, &sregs);
        assert!(
            line.starts_with("vCPU 0: Shutdown at rip 0xffffffff810029fd"),
            "{line}"
        );
        for part in [
            "cr2 0xdeadb000",
            "cr3 0x1234000",
            "idt 0xfffffe0000000000/0xfff",
        ] {
            assert!(line.contains(part), "{part} in {line}");
        }
    }
}
