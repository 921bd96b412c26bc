//! virtio-net (device id 1) on the kernel's vhost-net backend (`/dev/vhost-net`) and a tap.
//!
//! One rx/tx queue pair per NIC, both handed to vhost: the guest's kicks (ioeventfds) go to the
//! vhost worker in the host kernel, which moves frames between the rings and the tap
//! (VHOST_NET_SET_BACKEND); its "used buffers" notifications come back on call eventfds that
//! this device's worker turns into the transport's interrupt. The tap is opened with
//! IFF_VNET_HDR and a 12-byte header, so checksum and TSO offloads the driver accepts pass
//! through (TUNSETOFFLOAD at activation). The config space holds the MAC.
//!
//! Without /dev/vhost-net (absent or not accessible) a userspace worker copies frames between
//! the tap and the queues instead, offering no offloads; `PODVM_NET_BACKEND=vhost|userspace`
//! forces either (vhost then fails with an error naming /dev/vhost-net).
//!
//! - `device.rs`: the device, features, the backend choice and activation.
//! - `vhost_net.rs`: the vhost-net setup at activation.
//! - `tap.rs`: opening a tap by name, optionally inside a network namespace.
//! - `userspace.rs`: the fallback backend's frame copying and worker.
//! - `event_handler.rs`: the worker woken by vhost's call eventfds.

mod device;
mod tap;
mod userspace;
mod vhost_net;

use std::path::PathBuf;

pub use self::device::{Net, NetError};
#[doc(hidden)]
pub use self::userspace::{transmit, Rx};

/// One guest NIC: a tap device on the host and the guest's MAC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    /// The tap's interface name (opened with TUNSETIFF; created if absent).
    pub tap: String,
    /// The network namespace file the tap lives in (e.g. `/run/netns/NAME`); the caller's
    /// when absent.
    pub netns: Option<PathBuf>,
    /// The guest's MAC address.
    pub mac: [u8; 6],
}

pub use podvm_protocol::mac::{format_mac, parse_mac};
