//! vhost-net: claiming /dev/vhost-net and handing the rx/tx queues and the tap to the kernel.

use std::sync::Arc;

use vhost::net::VhostNet;
use vhost::vhost_kern::net::Net;
use vhost::VhostBackend;
use vm_memory::GuestMemoryMmap;

use super::super::worker::Serve;
use super::super::{vhost_setup, ActivateError, Activation};
use super::tap::Tap;
use super::QUEUE_SIZES;

/// A claimed /dev/vhost-net instance.
pub type Backend = Net<Arc<GuestMemoryMmap>>;

/// Opens /dev/vhost-net and makes this process its owner.
pub fn open(mem: &GuestMemoryMmap) -> Result<Backend, vhost::Error> {
    let backend = Net::new(Arc::new(mem.clone()))?;
    backend.set_owner()?;
    Ok(backend)
}

/// Gives vhost the memory table, both vrings and the tap; returns what the worker does (relay
/// vhost's interrupts).
pub fn start(
    backend: &Backend,
    tap: &Tap,
    activation: Activation,
    name: &'static str,
) -> Result<impl Serve, ActivateError> {
    // The offloads are between the driver and the tap, which parses the virtio-net header.
    let (calls, interrupt) =
        vhost_setup::start_vrings(backend, name, activation, QUEUE_SIZES.len())?;
    for index in 0..QUEUE_SIZES.len() {
        backend
            .set_backend(index, Some(tap.file()))
            .map_err(vhost_setup::backend_error(name, "VHOST_NET_SET_BACKEND"))?;
    }
    Ok(vhost_setup::relay_calls(name, calls, interrupt))
}

/// Detaches the tap from both queues (driver reset or VM teardown).
pub fn stop(backend: &Backend, tap: &str) {
    for index in 0..QUEUE_SIZES.len() {
        if let Err(err) = backend.set_backend(index, None) {
            eprintln!("podvm: virtio-net ({tap}): cannot detach the tap from vhost: {err}");
        }
    }
}
