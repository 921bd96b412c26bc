//! The worker of a vhost device (virtio-vsock): the kernel moves the data; the worker only
//! turns vhost's call eventfds into the device's interrupt (vhost_setup.rs `relay_calls`),
//! reads and writes of eventfds that `common.rs` allows.

use super::rules::Group;

/// The vhost relay worker's groups.
pub fn groups() -> Vec<Group> {
    vec![super::common::worker()]
}
