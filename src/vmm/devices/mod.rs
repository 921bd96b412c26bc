//! Emulated devices and the port-I/O bus that routes vCPU exits to them.

mod serial;
pub mod virtio;

use std::io::Write;

pub use serial::{SerialPort, COM1_BASE, COM1_IRQ};

/// Errors from device setup.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// A device's worker thread could not be started (or filtered).
    #[error(transparent)]
    Worker(#[from] virtio::worker::WorkerError),
    /// An eventfd could not be created.
    #[error("cannot create an eventfd for {device}: {source}")]
    EventFd {
        /// Which device.
        device: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// KVM refused to wire an interrupt.
    #[error("cannot register the interrupt of {device} (GSI {gsi}) with KVM: {source}")]
    Irqfd {
        /// Which device.
        device: &'static str,
        /// The GSI.
        gsi: u32,
        /// Why.
        source: kvm_ioctls::Error,
    },
    /// KVM refused to wire a queue notification.
    #[error("cannot register the notification of {device} queue {queue} with KVM: {source}")]
    Ioeventfd {
        /// Which device.
        device: &'static str,
        /// The queue index.
        queue: u32,
        /// Why.
        source: kvm_ioctls::Error,
    },
}

/// The legacy devices on the port-I/O bus: one 16550 UART, COM1, carrying the guest console.
/// (The agent channel is vsock.)
pub struct PioBus {
    com1: SerialPort,
}

impl PioBus {
    /// Creates the UARTs, wiring their interrupts to the VM's in-kernel irqchip.
    pub fn new(vm: &kvm_ioctls::VmFd, console: Box<dyn Write + Send>) -> Result<Self, DeviceError> {
        Ok(Self {
            com1: SerialPort::new(vm, "COM1 (console)", COM1_BASE, COM1_IRQ, console)?,
        })
    }

    /// Handles a guest `in` instruction; unclaimed ports read as all ones.
    pub fn read(&mut self, port: u16, data: &mut [u8]) {
        let handled = self.com1.read(port, data);
        if !handled {
            data.fill(0xff);
        }
    }

    /// Handles a guest `out` instruction; writes to unclaimed ports are ignored.
    pub fn write(&mut self, port: u16, data: &[u8]) {
        let _ = self.com1.write(port, data);
    }

    /// Flushes the device outputs.
    pub fn flush(&mut self) {
        self.com1.flush();
    }
}
