//! 16550A UART on the port-I/O bus, emulated by vm-superio, interrupting through an irqfd.

use std::io::Write;

use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::DeviceError;

/// I/O base of COM1.
pub const COM1_BASE: u16 = 0x3f8;
/// Interrupt line of COM1.
pub const COM1_IRQ: u32 = 4;
/// Number of registers of a UART.
const REGISTERS: u16 = 8;

/// Raises the UART's interrupt by writing to an eventfd registered as an irqfd.
pub struct IrqTrigger(EventFd);

impl Trigger for IrqTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// One UART at a fixed I/O base.
pub struct SerialPort {
    base: u16,
    uart: Serial<IrqTrigger, vm_superio::serial::NoEvents, Box<dyn Write + Send>>,
}

impl SerialPort {
    /// Creates the UART and registers its interrupt with the VM.
    pub fn new(
        vm: &kvm_ioctls::VmFd,
        device: &'static str,
        base: u16,
        gsi: u32,
        out: Box<dyn Write + Send>,
    ) -> Result<Self, DeviceError> {
        let event =
            EventFd::new(EFD_NONBLOCK).map_err(|source| DeviceError::EventFd { device, source })?;
        vm.register_irqfd(&event, gsi)
            .map_err(|source| DeviceError::Irqfd {
                device,
                gsi,
                source,
            })?;
        Ok(Self {
            base,
            uart: Serial::new(IrqTrigger(event), out),
        })
    }

    fn offset(&self, port: u16) -> Option<u8> {
        let offset = port.checked_sub(self.base)?;
        (offset < REGISTERS).then(|| u8::try_from(offset).expect("offset below 8"))
    }

    /// Serves a read if `port` is one of this UART's registers.
    pub fn read(&mut self, port: u16, data: &mut [u8]) -> bool {
        let Some(offset) = self.offset(port) else {
            return false;
        };
        if let Some(first) = data.first_mut() {
            *first = self.uart.read(offset);
        }
        true
    }

    /// Serves a write if `port` is one of this UART's registers.
    pub fn write(&mut self, port: u16, data: &[u8]) -> bool {
        let Some(offset) = self.offset(port) else {
            return false;
        };
        if let Some(value) = data.first() {
            // A failed interrupt or output write loses at most this byte; the guest carries on.
            let _ = self.uart.write(offset, *value);
        }
        true
    }

    /// Flushes the output sink.
    pub fn flush(&mut self) {
        let _ = self.uart.writer_mut().flush();
    }
}
