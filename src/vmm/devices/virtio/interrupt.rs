//! The interrupt of one virtio-mmio device: the InterruptStatus bits the driver reads, and the
//! irqfd that raises the device's GSI.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

/// InterruptStatus bit: a queue has new used buffers.
pub const INT_VRING: u32 = 1;

/// Lets queue code tell the driver about used buffers without knowing how interrupts work.
pub trait SignalGuest {
    /// Marks used buffers pending and raises the interrupt.
    fn signal_used_queue(&self) -> std::io::Result<()>;
}

/// Raises a device's interrupt; cheap to clone, shared by the transport and the device worker.
#[derive(Clone)]
pub struct Interrupt {
    status: Arc<AtomicU32>,
    irqfd: Arc<EventFd>,
}

impl Interrupt {
    /// An interrupt that writes `irqfd` (registered with KVM as an irqfd) to raise the GSI.
    pub fn new(irqfd: EventFd) -> Self {
        Self {
            status: Arc::new(AtomicU32::new(0)),
            irqfd: Arc::new(irqfd),
        }
    }

    /// The InterruptStatus register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// The driver acknowledged the bits in `mask` (InterruptACK).
    pub fn ack(&self, mask: u32) {
        self.status.fetch_and(!mask, Ordering::SeqCst);
    }

    /// Clears all pending bits (device reset).
    pub fn clear(&self) {
        self.status.store(0, Ordering::SeqCst);
    }

    fn raise(&self, bits: u32) -> std::io::Result<()> {
        self.status.fetch_or(bits, Ordering::SeqCst);
        self.irqfd.write(1)
    }
}

impl SignalGuest for Interrupt {
    fn signal_used_queue(&self) -> std::io::Result<()> {
        self.raise(INT_VRING)
    }
}

#[cfg(test)]
mod tests {
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    use super::*;

    #[test]
    fn signal_sets_status_and_fires_the_eventfd_until_acked() {
        let fd = EventFd::new(EFD_NONBLOCK).expect("eventfd");
        let interrupt = Interrupt::new(fd.try_clone().expect("clone"));
        assert_eq!(interrupt.status(), 0);
        interrupt.signal_used_queue().expect("signal");
        assert_eq!(interrupt.status(), INT_VRING);
        assert_eq!(fd.read().expect("fired"), 1);
        interrupt.ack(INT_VRING);
        assert_eq!(interrupt.status(), 0);
    }
}
