//! What wakes virtio-fs: the kicks of its high-priority and request queues.

use std::sync::Arc;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::super::worker::Worker;
use super::super::Interrupt;
use super::queue::{process_queue, FsServer};

/// Starts the worker that answers the requests of queue `i` each time the driver kicks it.
pub fn start(
    name: String,
    mem: GuestMemoryMmap,
    mut queues: Vec<Queue>,
    kicks: Vec<EventFd>,
    interrupt: Interrupt,
    server: Arc<FsServer>,
) -> std::io::Result<Worker> {
    Worker::spawn(name, kicks, move |index| {
        let Some(queue) = queues.get_mut(index) else {
            return;
        };
        if let Err(err) = process_queue(queue, &mem, server.as_ref(), &interrupt) {
            // A broken queue is the driver's problem; the VM runs on.
            QUEUE_ERRORS.log(format_args!("{err}"));
        }
    })
}

/// Errors of queues the guest broke, rate-limited.
static QUEUE_ERRORS: crate::vmm::ratelog::RateLimitedLog =
    crate::vmm::ratelog::RateLimitedLog::new("virtio-fs queue");
