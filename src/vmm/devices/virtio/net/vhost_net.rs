//! vhost-net: claiming /dev/vhost-net and handing the rx/tx queues and the tap to the kernel.

use std::sync::Arc;

use vhost::net::VhostNet;
use vhost::vhost_kern::net::Net;
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, GuestMemory, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::super::worker::Worker;
use super::super::{ActivateError, Activation};
use super::device::QUEUE_SIZES;
use super::event_handler;
use super::tap::Tap;

/// A claimed /dev/vhost-net instance.
pub type Backend = Net<Arc<GuestMemoryMmap>>;

/// Opens /dev/vhost-net and makes this process its owner.
pub fn open(mem: &GuestMemoryMmap) -> Result<Backend, vhost::Error> {
    let backend = Net::new(Arc::new(mem.clone()))?;
    backend.set_owner()?;
    Ok(backend)
}

/// Gives vhost the memory table, both vrings and the tap; returns the worker that relays
/// vhost's interrupts.
pub fn start(
    backend: &Backend,
    tap: &Tap,
    activation: Activation,
    name: &'static str,
) -> Result<Worker, ActivateError> {
    let backend_error = |what: &str| {
        let what = what.to_string();
        move |err: vhost::Error| ActivateError::Backend {
            device: name,
            what,
            source: std::io::Error::other(err.to_string()),
        }
    };
    let Activation {
        mem,
        queues,
        kicks,
        interrupt,
        acked_features,
    } = activation;
    // vhost only knows the ring features (and MRG_RXBUF, VERSION_1); the offloads are
    // between the driver and the tap, which parses the virtio-net header itself.
    let features = acked_features
        & backend
            .get_features()
            .map_err(backend_error("VHOST_GET_FEATURES"))?;
    backend
        .set_features(features)
        .map_err(backend_error("VHOST_SET_FEATURES"))?;
    backend
        .set_mem_table(&memory_table(&mem))
        .map_err(backend_error("VHOST_SET_MEM_TABLE"))?;
    let mut calls = Vec::with_capacity(QUEUE_SIZES.len());
    for (index, (queue, kick)) in queues.iter().zip(&kicks).enumerate() {
        if !queue.ready() || !queue.is_valid(&mem) {
            return Err(ActivateError::BadQueue {
                device: name,
                queue: index,
            });
        }
        let call = EventFd::new(EFD_NONBLOCK).map_err(|source| ActivateError::Backend {
            device: name,
            what: "cannot create a call eventfd".into(),
            source,
        })?;
        setup_vring(backend, index, queue, kick, &call).map_err(backend_error("set up a vring"))?;
        calls.push(call);
    }
    for index in 0..QUEUE_SIZES.len() {
        backend
            .set_backend(index, Some(tap.file()))
            .map_err(backend_error("VHOST_NET_SET_BACKEND"))?;
    }
    event_handler::start(calls, interrupt).map_err(|source| ActivateError::Backend {
        device: name,
        what: "cannot start the worker thread".into(),
        source,
    })
}

/// Detaches the tap from both queues (driver reset or VM teardown).
pub fn stop(backend: &Backend, tap: &str) {
    for index in 0..QUEUE_SIZES.len() {
        if let Err(err) = backend.set_backend(index, None) {
            eprintln!("podvm: virtio-net ({tap}): cannot detach the tap from vhost: {err}");
        }
    }
}

/// Hands queue `index` to vhost.
fn setup_vring(
    backend: &Backend,
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
