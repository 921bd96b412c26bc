//! The virtio-net device: features, config space (the MAC), the backend choice and activation.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use vm_memory::GuestMemoryMmap;

use super::super::worker::Serve;
use super::super::{read_config_bytes, ActivateError, Activation, DeviceCore, VirtioDevice};
use super::stream::StreamPort;
use super::tap::{offload, Tap, TapError};
use super::userspace::MAX_FRAME;
use super::{
    event_handler, format_mac, vhost_net, NetBackend, NetConfig, QUEUE_SIZES, VNET_HDR_LEN,
};
use crate::vmm::seccomp::ThreadKind;

/// Environment variable choosing the backend: `vhost`, `userspace`, or unset for vhost-net with
/// the userspace fallback when /dev/vhost-net is absent or not accessible.
pub const BACKEND_ENV: &str = "PODVM_NET_BACKEND";

/// virtio device id of a network card.
pub const DEVICE_TYPE: u32 = 1;

/// virtio-net feature bits.
pub mod feature {
    /// The device handles packets with partial checksums (guest -> host).
    pub const CSUM: u32 = 0;
    /// The driver handles packets with partial checksums (host -> guest).
    pub const GUEST_CSUM: u32 = 1;
    /// The device has a MAC address in its config space.
    pub const MAC: u32 = 5;
    /// The driver can receive TSOv4 packets.
    pub const GUEST_TSO4: u32 = 7;
    /// The driver can receive TSOv6 packets.
    pub const GUEST_TSO6: u32 = 8;
    /// The device can receive TSOv4 packets.
    pub const HOST_TSO4: u32 = 11;
    /// The device can receive TSOv6 packets.
    pub const HOST_TSO6: u32 = 12;
    /// The driver can merge receive buffers.
    pub const MRG_RXBUF: u32 = 15;
    /// Indirect descriptors (served by vhost).
    pub const RING_INDIRECT_DESC: u32 = 28;
    /// Used/available event index (served by vhost).
    pub const RING_EVENT_IDX: u32 = 29;
}

/// What the userspace backend offers: the MAC only (no offloads, no mergeable buffers), so every
/// frame fits one receive buffer.
const USERSPACE_FEATURES: [u32; 1] = [feature::MAC];

/// Everything offered to the driver with vhost-net.
const OFFERED_FEATURES: [u32; 10] = [
    feature::CSUM,
    feature::GUEST_CSUM,
    feature::MAC,
    feature::GUEST_TSO4,
    feature::GUEST_TSO6,
    feature::HOST_TSO4,
    feature::HOST_TSO6,
    feature::MRG_RXBUF,
    feature::RING_INDIRECT_DESC,
    feature::RING_EVENT_IDX,
];

/// Errors while creating the network device.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The device's worker thread could not be started (or filtered).
    #[error("virtio-net: {0}")]
    Worker(#[from] super::super::worker::WorkerError),
    /// /dev/vhost-net is missing or not usable.
    #[error(
        "cannot set up vhost-net for tap {tap} ({what}): {source}; load the vhost_net module \
         (`modprobe vhost_net`) and make /dev/vhost-net accessible"
    )]
    Vhost {
        /// The tap of this NIC.
        tap: String,
        /// What was attempted.
        what: &'static str,
        /// Why.
        source: vhost::Error,
    },
    /// The tap could not be opened.
    #[error(transparent)]
    Tap(#[from] TapError),
    /// The user-mode network stack's socket could not be connected.
    #[error(
        "cannot connect to the user-mode network (passt) at {path}: {source}; is its passt \
         process still running?"
    )]
    Stream {
        /// The socket.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The backend variable has an unknown value.
    #[error("{BACKEND_ENV}={value}: expected `vhost` or `userspace` (or leave it unset)")]
    BackendChoice {
        /// The value found.
        value: String,
    },
    /// The MAC is not usable by a NIC.
    #[error("MAC {mac} for tap {tap} is {why}; use a unicast address such as 02:xx:xx:xx:xx:xx")]
    Mac {
        /// The MAC, formatted.
        mac: String,
        /// The tap.
        tap: String,
        /// What is wrong.
        why: &'static str,
    },
}

/// Who moves frames between the queues and the tap.
enum Backend {
    /// The kernel's vhost-net; the worker relays its interrupts.
    Vhost(vhost_net::Backend),
    /// The worker thread, in podvm.
    Userspace,
}

/// The host side of the NIC, opened.
enum Host {
    /// A tap, with whoever moves its frames.
    Tap {
        /// The tap.
        tap: Tap,
        /// vhost-net or the userspace worker.
        backend: Backend,
    },
    /// A connected stream socket to passt, served by the userspace worker.
    Stream(UnixStream),
}

/// One virtio-net NIC backed by a tap and vhost-net (or, without it, a userspace worker), or by
/// a stream socket to a user-mode network stack.
pub struct Net {
    mac: [u8; 6],
    host: Host,
    core: DeviceCore,
}

impl Net {
    /// Opens the host side of `config`: a tap and /dev/vhost-net, or the userspace backend when
    /// vhost-net is unavailable or [`BACKEND_ENV`] asks for it; or connects the stream socket.
    pub fn new(mem: &GuestMemoryMmap, config: &NetConfig) -> Result<Self, NetError> {
        check_mac(config)?;
        let host = match &config.backend {
            NetBackend::Tap { name, netns } => {
                let tap = Tap::open(name, netns.as_deref())?;
                let choice = std::env::var(BACKEND_ENV).unwrap_or_default();
                let backend = open_backend(mem, name, &choice)?;
                Host::Tap { tap, backend }
            }
            NetBackend::UnixStream { path } => Host::Stream(connect(path)?),
        };
        Ok(Self {
            mac: config.mac,
            host,
            core: DeviceCore::new("virtio-net", ThreadKind::Net)?,
        })
    }
}

/// Connects to the stream socket at `path`, non-blocking.
fn connect(path: &Path) -> Result<UnixStream, NetError> {
    let stream_error = |source| NetError::Stream {
        path: path.to_path_buf(),
        source,
    };
    let stream = UnixStream::connect(path).map_err(stream_error)?;
    stream.set_nonblocking(true).map_err(stream_error)?;
    Ok(stream)
}

/// Starts the worker for `host`; returns what it does.
fn start(
    name: &'static str,
    host: &Host,
    activation: Activation,
) -> Result<Box<dyn Serve>, ActivateError> {
    let backend_error = |what: &str, source| ActivateError::Backend {
        device: name,
        what: what.into(),
        source,
    };
    let (tap, backend) = match host {
        Host::Tap { tap, backend } => (tap, backend),
        Host::Stream(stream) => {
            let stream = stream
                .try_clone()
                .map_err(|source| backend_error("cannot duplicate the stream socket", source))?;
            // As a File, reads are read(2) (a UnixStream's are recvfrom(2)): the net worker's
            // seccomp filter allows the same calls as for a tap.
            let file = std::fs::File::from(std::os::fd::OwnedFd::from(stream));
            let port = StreamPort::new(file, MAX_FRAME - VNET_HDR_LEN);
            return Ok(Box::new(event_handler::Frames::new(activation, port)));
        }
    };
    // The tap gets the offloads the driver accepted.
    tap.set_offload(tap_offloads(activation.acked_features))
        .map_err(|err| {
            let source = std::io::Error::other(err.to_string());
            backend_error("cannot set the tap's offloads", source)
        })?;
    match backend {
        Backend::Vhost(vhost) => Ok(Box::new(vhost_net::start(vhost, tap, activation, name)?)),
        Backend::Userspace => {
            let tap = tap
                .file()
                .try_clone()
                .map_err(|source| backend_error("cannot duplicate the tap fd", source))?;
            Ok(Box::new(event_handler::Frames::new(activation, tap)))
        }
    }
}

/// vhost-net, or the userspace backend as `choice` (the value of [`BACKEND_ENV`]) and the host
/// allow.
fn open_backend(mem: &GuestMemoryMmap, tap: &str, choice: &str) -> Result<Backend, NetError> {
    let vhost_error = |what| {
        let tap = tap.to_string();
        move |source| NetError::Vhost { tap, what, source }
    };
    match choice {
        "userspace" => return Ok(Backend::Userspace),
        "" | "vhost" => {}
        _ => {
            return Err(NetError::BackendChoice {
                value: choice.to_string(),
            })
        }
    }
    let backend = match vhost_net::open(mem) {
        Ok(backend) => backend,
        Err(vhost::Error::VhostOpen(err))
            if choice.is_empty()
                && matches!(
                    err.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied
                ) =>
        {
            eprintln!(
                "podvm: virtio-net ({tap}): cannot open /dev/vhost-net ({err}); frames go through \
                 podvm instead (slower; `modprobe vhost_net` for the fast path)"
            );
            return Ok(Backend::Userspace);
        }
        Err(err) => return Err(vhost_error("open /dev/vhost-net and claim it")(err)),
    };
    Ok(Backend::Vhost(backend))
}

/// Refuses MACs a NIC cannot have (multicast, all zeros).
fn check_mac(config: &NetConfig) -> Result<(), NetError> {
    let why = if config.mac == [0; 6] {
        Some("all zeros")
    } else if config.mac[0] & 1 != 0 {
        Some("a multicast address (lowest bit of the first byte set)")
    } else {
        None
    };
    match why {
        Some(why) => Err(NetError::Mac {
            mac: format_mac(&config.mac),
            tap: config.backend.describe(),
            why,
        }),
        None => Ok(()),
    }
}

/// The feature bits of `bits`.
fn offered_features(bits: &[u32]) -> u64 {
    bits.iter().fold(0, |features, bit| features | (1 << bit))
}

/// The tap offloads matching the receive offloads the driver accepted.
pub fn tap_offloads(acked_features: u64) -> u32 {
    let has = |bit: u32| acked_features & (1 << bit) != 0;
    if !has(feature::GUEST_CSUM) {
        return 0;
    }
    let mut flags = offload::CSUM;
    if has(feature::GUEST_TSO4) {
        flags |= offload::TSO4;
    }
    if has(feature::GUEST_TSO6) {
        flags |= offload::TSO6;
    }
    flags
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        DEVICE_TYPE
    }

    fn name(&self) -> &'static str {
        self.core.name()
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        match self.host {
            Host::Tap {
                backend: Backend::Vhost(_),
                ..
            } => offered_features(&OFFERED_FEATURES),
            _ => offered_features(&USERSPACE_FEATURES),
        }
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_net_config { u8 mac[6]; le16 status; ... }: only the MAC is offered.
        read_config_bytes(&self.mac, offset, data);
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        let name = self.core.name();
        self.core
            .activate(activation, 0..QUEUE_SIZES.len(), |activation| {
                start(name, &self.host, activation)
            })
    }

    fn reset(&mut self) {
        self.core.reset_with(|| {
            if let Host::Tap {
                tap,
                backend: Backend::Vhost(vhost),
            } = &self.host
            {
                vhost_net::stop(vhost, tap.name());
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(mac: [u8; 6]) -> NetConfig {
        NetConfig {
            backend: NetBackend::Tap {
                name: "tap0".into(),
                netns: None,
            },
            mac,
        }
    }

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(vm_memory::GuestAddress(0), 0x10_0000)]).expect("memory")
    }

    #[test]
    fn the_backend_choice_is_checked_and_a_missing_vhost_net_is_named() {
        let mem = memory();
        let err = open_backend(&mem, "tap0", "kernel")
            .err()
            .expect("unknown choice");
        assert!(
            err.to_string().contains("PODVM_NET_BACKEND=kernel"),
            "{err}"
        );
        assert!(matches!(
            open_backend(&mem, "tap0", "userspace"),
            Ok(Backend::Userspace)
        ));
        if std::path::Path::new("/dev/vhost-net").exists() {
            eprintln!("skipping the missing-vhost-net half: this host has /dev/vhost-net");
            return;
        }
        let err = open_backend(&mem, "tap0", "vhost")
            .err()
            .expect("no vhost-net");
        let text = err.to_string();
        assert!(
            text.contains("/dev/vhost-net") && text.contains("tap0"),
            "{text}"
        );
        assert!(text.contains("modprobe vhost_net"), "{text}");
        // Unforced, the userspace backend takes over.
        assert!(matches!(
            open_backend(&mem, "tap0", ""),
            Ok(Backend::Userspace)
        ));
    }

    #[test]
    fn bad_macs_are_refused_with_the_tap_named() {
        let zero = check_mac(&config([0; 6])).expect_err("all zeros");
        assert!(zero.to_string().contains("all zeros"), "{zero}");
        assert!(zero.to_string().contains("tap0"), "{zero}");
        let multicast = check_mac(&config([1, 0, 0, 0, 0, 1])).expect_err("multicast");
        assert!(
            multicast.to_string().contains("01:00:00:00:00:01"),
            "{multicast}"
        );
        assert!(check_mac(&config([2, 0, 0, 0, 0, 1])).is_ok());
    }

    #[test]
    fn tap_offloads_follow_the_guests_receive_features() {
        assert_eq!(tap_offloads(0), 0);
        // TSO without checksum offload is meaningless: nothing is enabled.
        assert_eq!(tap_offloads(1 << feature::GUEST_TSO4), 0);
        let all =
            (1 << feature::GUEST_CSUM) | (1 << feature::GUEST_TSO4) | (1 << feature::GUEST_TSO6);
        assert_eq!(
            tap_offloads(all),
            offload::CSUM | offload::TSO4 | offload::TSO6
        );
        assert_eq!(tap_offloads(1 << feature::GUEST_CSUM), offload::CSUM);
    }

    #[test]
    fn features_offer_the_mac_and_mergeable_buffers_but_no_control_queue() {
        let offered = offered_features(&OFFERED_FEATURES);
        assert_ne!(offered & (1 << feature::MAC), 0);
        assert_ne!(offered & (1 << feature::MRG_RXBUF), 0);
        // VIRTIO_NET_F_CTRL_VQ (17) and MQ (22) would need queues this device does not have.
        assert_eq!(offered & ((1 << 17) | (1 << 22)), 0);
    }
}
