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
//!
//! Every device is built on [`DeviceCore`] (`device.rs`): its activation state, the check of
//! the driver's queues, the worker thread that alone holds guest memory and the queues, and
//! reset. A device directory adds only what is its own: config space, features, its queue
//! handling and its backend.

pub mod device;
pub mod fs;
pub mod interrupt;
pub mod mmio;
pub mod net;
pub mod rng;
pub mod vhost_setup;
pub mod vsock;
pub mod worker;

pub use self::device::{read_config_bytes, ActivateError, Activation, DeviceCore, VirtioDevice};
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
