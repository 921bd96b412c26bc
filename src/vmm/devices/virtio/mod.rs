//! virtio devices on the virtio-mmio transport (version 2).
//!
//! Each device sits in its own 4 KiB MMIO window in the MMIO hole and interrupts on its own GSI:
//!
//! ```text
//! index  device        window                     GSI
//! 0      virtio-rng    0xd000_0000..0xd000_1000   5
//! 1      virtio-vsock  0xd000_1000..0xd000_2000   6
//! 2+n    virtio-fs     one per shared directory   7+n
//! 2+s+k  virtio-net    one per NIC, after the s shares   7+s+k
//! ```
//!
//! The guest kernel learns about them from `virtio_mmio.device=4K@<base>:<gsi>` entries on its
//! command line ([`cmdline_entry`]). Register accesses are vCPU MMIO exits routed by
//! [`MmioBus`]; queue notifications never exit to user space: each queue's QueueNotify write is an
//! ioeventfd that wakes the device's worker thread ([`worker`]); interrupts are irqfds.

pub mod fs;
pub mod interrupt;
pub mod mmio;
pub mod net;
pub mod rng;
pub mod vhost_setup;
pub mod vsock;
pub mod worker;

use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

pub use self::interrupt::{Interrupt, SignalGuest};
pub use self::mmio::MmioBus;

/// Guest physical address of the first device window.
pub const MMIO_BASE: u64 = super::super::memory::MMIO_HOLE_START;
/// Size of one device window.
pub const MMIO_WINDOW: u64 = 0x1000;
/// GSI of the first device.
pub const FIRST_GSI: u32 = 5;
/// virtio feature bit: the device follows virtio 1.0 or later (required by the v2 transport).
pub const VIRTIO_F_VERSION_1: u32 = 32;

/// The MMIO window base of the device at `index`.
pub fn window_base(index: u32) -> u64 {
    MMIO_BASE + u64::from(index) * MMIO_WINDOW
}

/// The GSI of the device at `index`.
pub fn gsi(index: u32) -> u32 {
    FIRST_GSI + index
}

/// The kernel command line entry that makes the guest probe a device at `base` on `gsi`.
pub fn cmdline_entry(base: u64, gsi: u32) -> String {
    format!("virtio_mmio.device=4K@{base:#x}:{gsi}")
}

/// What a device gets when the driver sets DRIVER_OK.
pub struct Activation {
    /// Guest memory, to be accessed only through its checked accessors.
    pub mem: GuestMemoryMmap,
    /// The queues as the driver configured them.
    pub queues: Vec<virtio_queue::Queue>,
    /// One eventfd per queue, signalled when the driver notifies that queue.
    pub kicks: Vec<EventFd>,
    /// Raises the device's interrupt.
    pub interrupt: Interrupt,
    /// The features the driver accepted.
    pub acked_features: u64,
}

/// Why a device could not be activated.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// A queue the device needs is not ready or lies outside guest memory.
    #[error("{device}: queue {queue} is not ready or not inside guest memory")]
    BadQueue {
        /// Which device.
        device: &'static str,
        /// The queue index.
        queue: usize,
    },
    /// The device's worker or backend could not be set up.
    #[error("{device}: {what}: {source}")]
    Backend {
        /// Which device.
        device: &'static str,
        /// What was attempted.
        what: String,
        /// Why.
        source: std::io::Error,
    },
}

/// A virtio device behind the MMIO transport: type, features, config space, and what happens
/// when the driver starts (activate) or resets it.
pub trait VirtioDevice: Send {
    /// The virtio device id (4 = entropy, 19 = vsock).
    fn device_type(&self) -> u32;
    /// A short name for logs and errors.
    fn name(&self) -> &'static str;
    /// Largest size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Feature bits the device offers (the transport adds VIRTIO_F_VERSION_1).
    fn features(&self) -> u64;
    /// Reads device config space at `offset`; bytes past its end read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes device config space; devices with read-only config ignore it.
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// Starts the device with the driver's queues.
    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError>;
    /// Stops the device and forgets the queues (driver reset or VM teardown).
    fn reset(&mut self);
}

/// Copies `config[offset..]` into `data`, zero-filling what lies past the end.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if let Some(available) = config.get(start..) {
        let n = available.len().min(data.len());
        data[..n].copy_from_slice(&available[..n]);
    }
}
