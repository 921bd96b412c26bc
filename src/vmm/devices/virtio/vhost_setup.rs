//! What the vhost-backed devices (vhost-vsock, vhost-net) share: negotiating features with the
//! kernel backend, giving it the guest memory table and the driver's vrings, and relaying its
//! "used buffers" notifications (call eventfds) to the guest as the device's interrupt.

use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, GuestMemory, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::worker::{Kicks, Serve};
use super::{ActivateError, Activation, Interrupt, SignalGuest};

/// The error for vhost call `what` of `device`.
pub fn backend_error(
    device: &'static str,
    what: &str,
) -> impl FnOnce(vhost::Error) -> ActivateError {
    let what = what.to_string();
    move |err| ActivateError::Backend {
        device,
        what,
        source: std::io::Error::other(err.to_string()),
    }
}

/// Hands the first `count` queues of `activation` (checked by the device core) to `backend`:
/// the features both sides know, the memory table, then each vring with its kick and a new call
/// eventfd. Returns the calls (for [`relay_calls`]) and the interrupt.
pub fn start_vrings<B: VhostBackend>(
    backend: &B,
    device: &'static str,
    activation: Activation,
    count: usize,
) -> Result<(Vec<EventFd>, Interrupt), ActivateError> {
    let Activation {
        mem,
        queues,
        kicks,
        interrupt,
        acked_features,
    } = activation;
    // vhost knows only ring features (and the device's own); the rest stays between the driver
    // and the VMM (or, for net, the tap).
    let features = acked_features
        & backend
            .get_features()
            .map_err(backend_error(device, "VHOST_GET_FEATURES"))?;
    backend
        .set_features(features)
        .map_err(backend_error(device, "VHOST_SET_FEATURES"))?;
    backend
        .set_mem_table(&memory_table(&mem))
        .map_err(backend_error(device, "VHOST_SET_MEM_TABLE"))?;
    let mut calls = Vec::with_capacity(count);
    for (index, (queue, kick)) in queues.iter().zip(&kicks).take(count).enumerate() {
        let call = EventFd::new(EFD_NONBLOCK).map_err(|source| ActivateError::Backend {
            device,
            what: "cannot create a call eventfd".into(),
            source,
        })?;
        setup_vring(backend, index, queue, kick, &call)
            .map_err(backend_error(device, "set up a vring"))?;
        calls.push(call);
    }
    Ok((calls, interrupt))
}

/// What the worker of a vhost device does: turn vhost's call eventfds into the device's
/// interrupt.
pub fn relay_calls(device: &'static str, calls: Vec<EventFd>, interrupt: Interrupt) -> impl Serve {
    Kicks::new(calls, move |_| {
        if let Err(err) = interrupt.signal_used_queue() {
            eprintln!("podvm: {device}: cannot interrupt the guest: {err}");
        }
    })
}

/// Hands queue `index` to vhost.
fn setup_vring<B: VhostBackend>(
    backend: &B,
    index: usize,
    queue: &Queue,
    kick: &EventFd,
    call: &EventFd,
) -> Result<(), vhost::Error> {
    let config = VringConfigData {
        queue_max_size: queue.max_size(),
        queue_size: queue.size(),
        flags: 0,
        desc_table_addr: queue.desc_table(),
        used_ring_addr: queue.used_ring(),
        avail_ring_addr: queue.avail_ring(),
        log_addr: None,
    };
    backend.set_vring_num(index, queue.size())?;
    backend.set_vring_addr(index, &config)?;
    backend.set_vring_base(index, 0)?;
    backend.set_vring_call(index, call)?;
    backend.set_vring_kick(index, kick)
}

/// The guest memory regions as vhost's memory table.
fn memory_table(mem: &GuestMemoryMmap) -> Vec<VhostUserMemoryRegionInfo> {
    mem.iter()
        .map(|region| VhostUserMemoryRegionInfo {
            guest_phys_addr: region.start_addr().raw_value(),
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
            mmap_offset: 0,
            mmap_handle: -1,
        })
        .collect()
}
