//! The virtio-net worker: with vhost-net it relays vhost's calls (as `vhost.rs`); with the
//! userspace backend (no /dev/vhost-net) it moves frames between the queues and the tap
//! (net/event_handler.rs), which is read(2) and write(2)/writev(2) on the tap fd, pausing the
//! tap in its epoll set while the receive queue is full. With the unix-stream backend (rootless
//! pods, passt) the same read(2)/write(2) go to the stream socket, and a frame passt took in
//! part waits (bounded) in poll(2) for room for the rest (net/stream.rs).

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
        group(
            "unix-stream backend: waiting, bounded, for room to finish a frame the socket took \
             in part (net/stream.rs StreamPort::wait_writable)",
            &[libc::SYS_poll, libc::SYS_ppoll],
        ),
    ]
}
