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
//! - `mod.rs`: what the files below share (the queues, the virtio-net header length).
//! - `device.rs`: the device, features, the backend choice and activation (on the device core).
//! - `vhost_net.rs`: the vhost-net setup at activation; the worker relays vhost's call eventfds
//!   ([`vhost_setup::relay_calls`](super::vhost_setup::relay_calls)).
//! - `tap.rs`: opening a tap by name, optionally inside a network namespace.
//! - `userspace.rs`: the fallback backend's frame copying; needs only guest memory, a tap-like
//!   reader or writer and a [`SignalGuest`](super::SignalGuest).
//! - `event_handler.rs`: what wakes the fallback backend's worker: the rx and tx kicks and the
//!   tap.

mod device;
mod event_handler;
mod tap;
mod userspace;
mod vhost_net;

use std::path::PathBuf;

pub use self::device::{Net, NetError};
#[doc(hidden)]
pub use self::userspace::{transmit, Rx};

/// rx and tx queues (one pair, no control queue).
const QUEUE_SIZES: [u16; 2] = [256, 256];
/// Length of the virtio-net header before each frame (`virtio_net_hdr_mrg_rxbuf`, always
/// this size under VIRTIO_F_VERSION_1).
const VNET_HDR_LEN: usize = 12;

/// One guest NIC: a tap device on the host and the guest's MAC.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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
