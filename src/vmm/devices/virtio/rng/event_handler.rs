//! What wakes virtio-rng: the kick of its request queue, and nothing else.

use super::super::worker::Serve;
use super::super::Activation;
use super::queue::fill_requests;

/// What the worker does: serve the requests each time the driver kicks the queue.
pub fn serve(activation: Activation) -> impl Serve {
    activation.serve_queues(|queue, mem, interrupt| {
        if let Err(err) = fill_requests(queue, mem, interrupt) {
            // A broken queue is the driver's problem; the device stops serving it, the VM runs on.
            QUEUE_ERRORS.log(format_args!("{err}"));
        }
    })
}

/// Errors of queues the guest broke, rate-limited.
static QUEUE_ERRORS: crate::vmm::ratelog::RateLimitedLog =
    crate::vmm::ratelog::RateLimitedLog::new("virtio-rng");
