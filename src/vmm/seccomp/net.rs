//! The virtio-net worker: with vhost-net it relays vhost's calls (as `vhost.rs`); with the
//! userspace backend (no /dev/vhost-net) it moves frames between the queues and the tap
//! (net/event_handler.rs), which is read(2) and write(2)/writev(2) on the tap fd, pausing the
//! tap in its epoll set while the receive queue is full.

use super::rules::{group, Group};

/// The net worker's groups.
pub fn groups() -> Vec<Group> {
    vec![
        super::common::worker(),
        group(
            "userspace backend: pausing and resuming the tap in the worker's epoll set \
             (worker.rs Watch::set_paused)",
            &[libc::SYS_epoll_ctl],
        ),
    ]
}
