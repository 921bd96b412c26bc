//! What wakes virtio-rng: the kick of its request queue, and nothing else.

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::super::worker::Worker;
use super::super::Interrupt;
use super::device::fill_requests;

/// Starts the worker that serves requests each time the driver kicks the queue.
pub fn start(
    mem: GuestMemoryMmap,
    mut queue: Queue,
    kick: EventFd,
    interrupt: Interrupt,
) -> std::io::Result<Worker> {
    Worker::spawn("virtio-rng".into(), vec![kick], move |_| {
        if let Err(err) = fill_requests(&mut queue, &mem, &interrupt) {
            // A broken queue is the driver's problem; the device stops serving it, the VM runs on.
            QUEUE_ERRORS.log(format_args!("{err}"));
        }
    })
}

/// Errors of queues the guest broke, rate-limited.
static QUEUE_ERRORS: crate::vmm::ratelog::RateLimitedLog =
    crate::vmm::ratelog::RateLimitedLog::new("virtio-rng");
