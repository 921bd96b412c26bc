//! What wakes virtio-net in the VMM: vhost's call eventfds for rx and tx, which become the
//! transport's interrupt (InterruptStatus bit and irqfd).

use vmm_sys_util::eventfd::EventFd;

use super::super::worker::Worker;
use super::super::{Interrupt, SignalGuest};

/// Starts the worker that relays vhost's "used buffers" notifications to the guest.
pub fn start(calls: Vec<EventFd>, interrupt: Interrupt) -> std::io::Result<Worker> {
    Worker::spawn("virtio-net".into(), calls, move |_| {
        if let Err(err) = interrupt.signal_used_queue() {
            eprintln!("podvm: virtio-net: cannot interrupt the guest: {err}");
        }
    })
}
