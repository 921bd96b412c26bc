//! virtio-vsock (device id 19) on the kernel's vhost-vsock backend (`/dev/vhost-vsock`).
//!
//! The rx and tx queues are handed to vhost: the guest's kicks (ioeventfds) go straight to the
//! vhost worker in the host kernel and never wake the VMM. vhost's "used buffers" notifications
//! come back on call eventfds that this device's worker turns into the transport's interrupt
//! (virtio-mmio needs InterruptStatus set before the GSI fires). The event queue stays in the
//! VMM and is unused (it only carries transport resets, e.g. after a snapshot).
//!
//! - `device.rs`: the device, guest CID allocation and the vhost setup at activation; its worker
//!   relays vhost's call eventfds ([`vhost_setup::relay_calls`](super::vhost_setup::relay_calls)).

mod device;

pub use self::device::{Vsock, VsockError};
