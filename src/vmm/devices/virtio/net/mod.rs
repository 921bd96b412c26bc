//! virtio-net (device id 1) on the kernel's vhost-net backend (`/dev/vhost-net`) and a tap.
//!
//! One rx/tx queue pair per NIC, both handed to vhost: the guest's kicks (ioeventfds) go to the
//! vhost worker in the host kernel, which moves frames between the rings and the tap
//! (VHOST_NET_SET_BACKEND); its "used buffers" notifications come back on call eventfds that
//! this device's worker turns into the transport's interrupt. The tap is opened with
//! IFF_VNET_HDR and a 12-byte header, so checksum and TSO offloads the driver accepts pass
//! through (TUNSETOFFLOAD at activation). The config space holds the MAC.
//!
//! A NIC can instead be backed by a connected UNIX stream socket to a user-mode network stack
//! (passt in its qemu mode, for pods of an ordinary user): the userspace worker serves it the
//! same way, through [`stream::StreamPort`], which frames and unframes.
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
//! - `event_handler.rs`: what wakes the userspace worker: the rx and tx kicks and the frame
//!   port (the tap, or the stream socket).
//! - `stream.rs`: the unix-stream backend (rootless pods): frames to and from passt over a UNIX
//!   stream socket, each behind a 4-byte big-endian length, bounded by the device's buffer.

mod device;
mod event_handler;
pub mod stream;
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

/// One guest NIC: where its frames go on the host, and the guest's MAC.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NetConfig {
    /// The host side of the NIC.
    pub backend: NetBackend,
    /// The guest's MAC address.
    pub mac: [u8; 6],
}

/// The host side of a guest NIC.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum NetBackend {
    /// A tap device, served by vhost-net or the userspace worker.
    Tap {
        /// The tap's interface name (opened with TUNSETIFF; created if absent).
        name: String,
        /// The network namespace file the tap lives in (e.g. `/run/netns/NAME`); the
        /// caller's when absent.
        netns: Option<PathBuf>,
    },
    /// A user-mode network stack listening on this UNIX stream socket (passt's qemu mode:
    /// length-prefixed frames), served by the userspace worker.
    UnixStream {
        /// The socket's path.
        path: PathBuf,
    },
}

impl NetBackend {
    /// What names this NIC's host side in messages: the tap's name or the socket's path.
    pub fn describe(&self) -> String {
        match self {
            Self::Tap { name, .. } => name.clone(),
            Self::UnixStream { path } => path.display().to_string(),
        }
    }
}

pub use podvm_protocol::mac::{format_mac, parse_mac};
