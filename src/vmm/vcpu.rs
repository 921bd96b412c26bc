//! vCPU threads: each runs KVM_RUN in a loop, routes port I/O to the bus, and reports how the
//! guest ended. The VMM stops them by setting a flag and kicking them out of KVM_RUN with a signal.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use super::devices::virtio::MmioBus;
use super::devices::PioBus;

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
    /// The guest reset or shut down (with `reboot=t`, every guest reboot ends here).
    Shutdown,
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

/// Starts a thread that runs `vcpu` until the guest ends or `stop` is set.
pub fn spawn(
    mut vcpu: VcpuFd,
    cpu: u8,
    buses: Buses,
    stop: Arc<AtomicBool>,
    events: Sender<VcpuEvent>,
) -> std::io::Result<VcpuThread> {
    register_signal_handler(SIGRTMIN(), kick_handler).map_err(std::io::Error::other)?;
    let handle = std::thread::Builder::new()
        .name(format!("vcpu{cpu}"))
        .spawn(move || {
            if let Some(event) = run_loop(&mut vcpu, cpu, &buses, &stop) {
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
            Ok(VcpuExit::Shutdown) | Ok(VcpuExit::SystemEvent(..)) | Ok(VcpuExit::Hlt) => {
                return Some(VcpuEvent::Shutdown)
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

fn lock(bus: &Mutex<PioBus>) -> MutexGuard<'_, PioBus> {
    // A panicking vCPU thread aborts the process (panic = "abort"), so poison is harmless here.
    bus.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}
