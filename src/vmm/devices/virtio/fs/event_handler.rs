//! What wakes virtio-fs: the kicks of its high-priority and request queues.

use std::sync::Arc;

use super::super::worker::Serve;
use super::super::Activation;
use super::queue::{process_queue, FsServer, ShareRoot};

/// What the worker does: answer the requests of queue `i` each time the driver kicks it
/// (`root`: the share's root, synced on the guest's FUSE_SYNCFS).
pub fn serve(activation: Activation, server: Arc<FsServer>, root: Arc<ShareRoot>) -> impl Serve {
    activation.serve_queues(move |queue, mem, interrupt| {
        if let Err(err) = process_queue(queue, mem, server.as_ref(), root.as_ref(), interrupt) {
            // A broken queue is the driver's problem; the VM runs on.
            QUEUE_ERRORS.log(format_args!("{err}"));
        }
    })
}

/// Errors of queues the guest broke, rate-limited.
static QUEUE_ERRORS: crate::vmm::ratelog::RateLimitedLog =
    crate::vmm::ratelog::RateLimitedLog::new("virtio-fs queue");
