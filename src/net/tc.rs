//! The tc redirect between a CNI veth and the VM's tap (the pattern of Kata Containers and
//! firecracker-containerd): an ingress qdisc on each device and a u32 filter matching every
//! frame whose mirred action redirects it to the other device's egress (u32 rather than matchall,
//! which some kernels lack). Equivalent to
//!
//! ```text
//! tc qdisc add dev eth0 ingress
//! tc filter add dev eth0 parent ffff: protocol all u32 match u8 0 0 \
//!     action mirred egress redirect dev tap0
//! ```
//!
//! (and the same from tap0 to eth0). From the tap (what the guest sends) only frames with the
//! pod's MAC and source addresses are redirected, everything else is dropped
//! ([`connect_guarded`]): a hostile guest cannot spoof another pod's or the host's addresses.
//! The rtnetlink messages are built here directly: they are a few fixed shapes, and podvm needs
//! no netlink library for them. Runs in the calling thread's network namespace.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const RTM_NEWQDISC: u16 = 36;
const RTM_NEWTFILTER: u16 = 44;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLMSG_ERROR: u16 = 2;
const TC_H_INGRESS: u32 = 0xffff_fff1;
const INGRESS_HANDLE: u32 = 0xffff_0000;
const TCA_KIND: u16 = 1;
const TCA_OPTIONS: u16 = 2;
const TCA_U32_SEL: u16 = 5;
const TCA_U32_ACT: u16 = 7;
const TC_U32_TERMINAL: u8 = 1;
const TCA_ACT_KIND: u16 = 1;
const TCA_ACT_OPTIONS: u16 = 2;
const TCA_MIRRED_PARMS: u16 = 2;
const TC_ACT_STOLEN: i32 = 4;
const TCA_EGRESS_REDIR: i32 = 1;
const TCA_GACT_PARMS: u16 = 2;
const TC_ACT_SHOT: i32 = 2;
const ETH_P_ALL: u16 = 0x0003;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IPV6: u16 = 0x86dd;
const FILTER_PRIO: u16 = 1;
/// The priority of the filter that drops what no earlier filter let through.
const DROP_PRIO: u16 = 0xfff0;
/// At most this many addresses per interface are allowed (a CNI result is input).
const MAX_ADDRESSES: usize = 64;

/// Errors setting up the redirect.
#[derive(Debug, thiserror::Error)]
pub enum TcError {
    /// The netlink socket failed.
    #[error("netlink: cannot {what}: {source}")]
    Socket {
        /// What was being done.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// The kernel refused a request.
    #[error("cannot {what} on device index {ifindex}: {source} (are the sch_ingress, cls_u32, act_mirred and act_gact modules available?)")]
    Refused {
        /// What was asked.
        what: &'static str,
        /// The device.
        ifindex: u32,
        /// The kernel's answer.
        source: std::io::Error,
    },
    /// The kernel has no tc `gact` action, so spoofed frames could not be dropped.
    #[error(
        "this kernel cannot drop the frames a guest must not send (tc action gact: {source}); \
         load it with `modprobe act_gact` (podvm connects no guest it cannot confine)"
    )]
    NoDropAction {
        /// The kernel's answer.
        source: std::io::Error,
    },
    /// An address of the pod's interface is not an IP address (with an optional prefix).
    #[error("the pod's interface address {address:?} is not an IP address")]
    BadAddress {
        /// The address as given (by a CNI result).
        address: String,
    },
    /// More addresses than an interface may have.
    #[error("the pod's interface has {count} addresses (at most {MAX_ADDRESSES})")]
    TooManyAddresses {
        /// How many there were.
        count: usize,
    },
}

/// What a pod's guest may send as on one interface: its MAC and its source addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestIdentity {
    /// The MAC of the guest's NIC (the pod's interface in the netns has the same).
    pub mac: [u8; 6],
    /// The guest's IPv4 addresses.
    pub ipv4: Vec<Ipv4Addr>,
    /// The guest's IPv6 addresses (link-local and the unspecified address are allowed besides).
    pub ipv6: Vec<Ipv6Addr>,
}

impl GuestIdentity {
    /// The identity of `mac` with `addresses` in CIDR notation (`172.16.28.5/24`) or bare.
    pub fn from_cidrs(mac: [u8; 6], addresses: &[String]) -> Result<Self, TcError> {
        if addresses.len() > MAX_ADDRESSES {
            return Err(TcError::TooManyAddresses {
                count: addresses.len(),
            });
        }
        let mut identity = GuestIdentity {
            mac,
            ipv4: Vec::new(),
            ipv6: Vec::new(),
        };
        for address in addresses {
            let ip = address.split('/').next().unwrap_or_default();
            match ip.parse::<IpAddr>() {
                Ok(IpAddr::V4(ip)) => identity.ipv4.push(ip),
                Ok(IpAddr::V6(ip)) => identity.ipv6.push(ip),
                Err(_) => {
                    return Err(TcError::BadAddress {
                        address: address.clone(),
                    })
                }
            }
        }
        Ok(identity)
    }
}

/// Connects the pod's `veth` and the guest's `tap`: every frame from the veth reaches the guest;
/// from the tap, only frames with `guest`'s MAC and source addresses (and ARP about them) reach
/// the veth, the rest is dropped.
pub fn connect_guarded(veth: u32, tap: u32, guest: &GuestIdentity) -> Result<(), TcError> {
    let socket = Netlink::open()?;
    socket.request("add an ingress qdisc", tap, &ingress_qdisc(tap))?;
    // The drop first: a kernel that cannot drop gets no guest connected at all.
    let drop = filter(tap, DROP_PRIO, ETH_P_ALL, &[Key::ANY], Action::Drop);
    socket
        .request("add the filter dropping spoofed frames", tap, &drop)
        .map_err(|err| match err {
            TcError::Refused { source, .. }
                if matches!(source.raw_os_error(), Some(libc::ENOENT | libc::EOPNOTSUPP)) =>
            {
                TcError::NoDropAction { source }
            }
            other => other,
        })?;
    for (prio, (protocol, keys)) in (FILTER_PRIO..).zip(&guest_filters(guest)) {
        let filter = filter(tap, prio, *protocol, keys, Action::Redirect(veth));
        socket.request("add an anti-spoofing filter", tap, &filter)?;
    }
    socket.request("add an ingress qdisc", veth, &ingress_qdisc(veth))?;
    socket.request("add a redirect filter", veth, &redirect_filter(veth, tap))
}

/// One u32 match: the 4 bytes at `off` (from the network header; negative reaches into the
/// Ethernet header) under `mask` equal `value`. Both are in wire order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Key {
    mask: [u8; 4],
    value: [u8; 4],
    off: i32,
}

impl Key {
    /// Matches every frame.
    const ANY: Key = Key {
        mask: [0; 4],
        value: [0; 4],
        off: 0,
    };

    /// The 4 bytes at `off` are `value`.
    fn exact(off: i32, value: [u8; 4]) -> Self {
        Key {
            mask: [0xff; 4],
            value,
            off,
        }
    }

    /// The first two bytes at `off` are `value`.
    fn first_half(off: i32, value: [u8; 2]) -> Self {
        Key {
            mask: [0xff, 0xff, 0, 0],
            value: [value[0], value[1], 0, 0],
            off,
        }
    }
}

/// What a filter does with a matching frame.
#[derive(Debug, Clone, Copy)]
enum Action {
    /// To the egress of this device.
    Redirect(u32),
    /// Dropped.
    Drop,
}

/// The (protocol, keys) of each filter that lets a frame of `guest` through.
fn guest_filters(guest: &GuestIdentity) -> Vec<(u16, Vec<Key>)> {
    let mac = guest.mac;
    // The Ethernet source address: bytes -8..-2 before the network header.
    let source_mac = [
        Key::exact(-8, [mac[0], mac[1], mac[2], mac[3]]),
        Key::first_half(-4, [mac[4], mac[5]]),
    ];
    let with_mac = |keys: &[Key]| -> Vec<Key> { source_mac.iter().chain(keys).copied().collect() };
    let mut filters = Vec::new();
    for ip in &guest.ipv4 {
        let ip = ip.octets();
        // IPv4: the source address at 12.
        filters.push((ETH_P_IP, with_mac(&[Key::exact(12, ip)])));
        // ARP for IPv4 over Ethernet: the sender's MAC at 8, its address at 14.
        let sender = [
            Key::exact(8, [mac[0], mac[1], mac[2], mac[3]]),
            Key::exact(12, [mac[4], mac[5], ip[0], ip[1]]),
            Key::first_half(16, [ip[2], ip[3]]),
        ];
        filters.push((ETH_P_ARP, with_mac(&sender)));
    }
    if !guest.ipv6.is_empty() {
        let link_local = Key {
            mask: [0xff, 0xc0, 0, 0],
            value: [0xfe, 0x80, 0, 0],
            off: 8,
        };
        filters.push((ETH_P_IPV6, with_mac(&[link_local])));
        let sources = guest.ipv6.iter().copied().chain([Ipv6Addr::UNSPECIFIED]);
        for ip in sources {
            // IPv6: the source address at 8..24, in four words.
            let keys: Vec<Key> = (8..)
                .step_by(4)
                .zip(ip.octets().chunks_exact(4))
                .map(|(off, word)| Key::exact(off, [word[0], word[1], word[2], word[3]]))
                .collect();
            filters.push((ETH_P_IPV6, with_mac(&keys)));
        }
    }
    filters
}

/// A netlink message under construction.
struct Message(Vec<u8>);

impl Message {
    /// A request of `kind` with a `tcmsg` header.
    fn tc(kind: u16, ifindex: u32, handle: u32, parent: u32, info: u32) -> Self {
        let mut buf = Vec::with_capacity(128);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // length, set by finish()
        buf.extend_from_slice(&kind.to_ne_bytes());
        let flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_EXCL | NLM_F_CREATE;
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&1u32.to_ne_bytes()); // sequence
        buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
        buf.extend_from_slice(&[0u8; 4]); // family AF_UNSPEC and padding
        buf.extend_from_slice(&ifindex.to_ne_bytes());
        buf.extend_from_slice(&handle.to_ne_bytes());
        buf.extend_from_slice(&parent.to_ne_bytes());
        buf.extend_from_slice(&info.to_ne_bytes());
        Self(buf)
    }

    /// Appends attribute `kind` with `data`, padded to 4 bytes.
    fn attr(&mut self, kind: u16, data: &[u8]) -> &mut Self {
        let len = u16::try_from(4 + data.len()).expect("attributes here are small");
        self.0.extend_from_slice(&len.to_ne_bytes());
        self.0.extend_from_slice(&kind.to_ne_bytes());
        self.0.extend_from_slice(data);
        self.pad();
        self
    }

    /// Appends a string attribute (NUL-terminated).
    fn string(&mut self, kind: u16, text: &str) -> &mut Self {
        let mut data = text.as_bytes().to_vec();
        data.push(0);
        self.attr(kind, &data)
    }

    /// Appends a nested attribute whose contents `fill` appends.
    fn nested(&mut self, kind: u16, fill: impl FnOnce(&mut Self)) -> &mut Self {
        let start = self.0.len();
        self.attr(kind, &[]);
        fill(self);
        let len = u16::try_from(self.0.len() - start).expect("attributes here are small");
        self.0[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        self
    }

    fn pad(&mut self) {
        while !self.0.len().is_multiple_of(4) {
            self.0.push(0);
        }
    }

    /// The message with its length set.
    fn finish(mut self) -> Vec<u8> {
        let len = u32::try_from(self.0.len()).expect("messages here are small");
        self.0[0..4].copy_from_slice(&len.to_ne_bytes());
        self.0
    }
}

/// `tc qdisc add dev IFINDEX ingress`.
fn ingress_qdisc(ifindex: u32) -> Vec<u8> {
    let mut msg = Message::tc(RTM_NEWQDISC, ifindex, INGRESS_HANDLE, TC_H_INGRESS, 0);
    msg.string(TCA_KIND, "ingress");
    msg.finish()
}

/// `tc filter add dev FROM parent ffff: protocol all u32 match u8 0 0 action mirred egress
/// redirect dev TO`.
fn redirect_filter(from: u32, to: u32) -> Vec<u8> {
    filter(
        from,
        FILTER_PRIO,
        ETH_P_ALL,
        &[Key::ANY],
        Action::Redirect(to),
    )
}

/// `tc filter add dev FROM parent ffff: prio PRIO protocol PROTOCOL u32 KEYS... action ...`.
fn filter(from: u32, prio: u16, protocol: u16, keys: &[Key], action: Action) -> Vec<u8> {
    // tcm_info: the priority above the protocol in network order.
    let info = (u32::from(prio) << 16) | u32::from(protocol.to_be());
    let mut msg = Message::tc(RTM_NEWTFILTER, from, 0, INGRESS_HANDLE, info);
    msg.string(TCA_KIND, "u32");
    msg.nested(TCA_OPTIONS, |options| {
        options.attr(TCA_U32_SEL, &selector(keys));
        options.nested(TCA_U32_ACT, |actions| {
            actions.nested(1, |entry| match action {
                Action::Redirect(to) => {
                    entry.string(TCA_ACT_KIND, "mirred");
                    entry.nested(TCA_ACT_OPTIONS, |mirred| {
                        mirred.attr(TCA_MIRRED_PARMS, &mirred_parms(to));
                    });
                }
                Action::Drop => {
                    entry.string(TCA_ACT_KIND, "gact");
                    entry.nested(TCA_ACT_OPTIONS, |gact| {
                        gact.attr(TCA_GACT_PARMS, &action_header(TC_ACT_SHOT));
                    });
                }
            });
        });
    });
    msg.finish()
}

/// `struct tc_u32_sel` (flags, offshift, nkeys, pad, offmask, off, offoff, hoff, hmask) with
/// its `struct tc_u32_key`s (mask, val, off, offmask): a frame matches when every key does.
fn selector(keys: &[Key]) -> Vec<u8> {
    let count = u8::try_from(keys.len()).expect("filters here have a few keys");
    let mut sel = vec![TC_U32_TERMINAL, 0, count, 0];
    sel.extend_from_slice(&[0u8; 12]); // offmask .. hmask
    for key in keys {
        sel.extend_from_slice(&key.mask);
        sel.extend_from_slice(&key.value);
        sel.extend_from_slice(&key.off.to_ne_bytes());
        sel.extend_from_slice(&0i32.to_ne_bytes()); // offmask
    }
    sel
}

/// `struct tc_mirred`: the generic action header (index, capab, action, refcnt, bindcnt), the
/// mirred action and the target device.
fn mirred_parms(to: u32) -> Vec<u8> {
    let mut parms = action_header(TC_ACT_STOLEN);
    parms.extend_from_slice(&TCA_EGRESS_REDIR.to_ne_bytes());
    parms.extend_from_slice(&to.to_ne_bytes());
    parms
}

/// The generic action header `tc_gen` (index, capab, action, refcnt, bindcnt): alone it is a
/// `struct tc_gact`.
fn action_header(action: i32) -> Vec<u8> {
    let mut header = Vec::with_capacity(28);
    header.extend_from_slice(&0u32.to_ne_bytes());
    header.extend_from_slice(&0u32.to_ne_bytes());
    header.extend_from_slice(&action.to_ne_bytes());
    header.extend_from_slice(&0i32.to_ne_bytes());
    header.extend_from_slice(&0i32.to_ne_bytes());
    header
}

/// An rtnetlink socket.
struct Netlink(OwnedFd);

impl Netlink {
    fn open() -> Result<Self, TcError> {
        // SAFETY: socket() has no memory arguments; the result is checked below.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(TcError::Socket {
                what: "open a socket",
                source: std::io::Error::last_os_error(),
            });
        }
        // SAFETY: `fd` is a fresh descriptor owned by nothing else.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Sends `message` and waits for the kernel's acknowledgement.
    fn request(&self, what: &'static str, ifindex: u32, message: &[u8]) -> Result<(), TcError> {
        // SAFETY: send() reads `message.len()` bytes from `message`.
        let sent = unsafe {
            libc::send(
                self.0.as_raw_fd(),
                message.as_ptr().cast(),
                message.len(),
                0,
            )
        };
        if sent < 0 {
            return Err(TcError::Socket {
                what: "send a request",
                source: std::io::Error::last_os_error(),
            });
        }
        let mut reply = [0u8; 4096];
        // SAFETY: recv() writes at most `reply.len()` bytes into `reply`.
        let got = unsafe {
            libc::recv(
                self.0.as_raw_fd(),
                reply.as_mut_ptr().cast(),
                reply.len(),
                0,
            )
        };
        let got = usize::try_from(got).map_err(|_| TcError::Socket {
            what: "read the answer",
            source: std::io::Error::last_os_error(),
        })?;
        match ack_errno(&reply[..got]) {
            Some(0) => Ok(()),
            Some(errno) => Err(TcError::Refused {
                what,
                ifindex,
                source: std::io::Error::from_raw_os_error(-errno),
            }),
            None => Err(TcError::Socket {
                what: "understand the answer",
                source: std::io::Error::other("no acknowledgement"),
            }),
        }
    }
}

/// The error code of an `NLMSG_ERROR` answer (0: acknowledged).
fn ack_errno(reply: &[u8]) -> Option<i32> {
    let kind = u16::from_ne_bytes(reply.get(4..6)?.try_into().ok()?);
    if kind != NLMSG_ERROR {
        return None;
    }
    Some(i32::from_ne_bytes(reply.get(16..20)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u16_at(buf: &[u8], at: usize) -> u16 {
        u16::from_ne_bytes(buf[at..at + 2].try_into().expect("2 bytes"))
    }

    #[test]
    fn qdisc_message_layout() {
        let msg = ingress_qdisc(7);
        assert_eq!(
            msg.len(),
            16 + 20 + 12,
            "header, tcmsg, \"ingress\\0\" attribute"
        );
        assert_eq!(
            u32::from_ne_bytes(msg[0..4].try_into().expect("4")) as usize,
            msg.len()
        );
        assert_eq!(u16_at(&msg, 4), RTM_NEWQDISC);
        assert_eq!(i32::from_ne_bytes(msg[20..24].try_into().expect("4")), 7);
        assert_eq!(&msg[40..48], b"ingress\0");
    }

    #[test]
    fn filter_nests_mirred_parms_to_the_target() {
        let msg = redirect_filter(3, 9);
        assert!(msg.len().is_multiple_of(4));
        assert_eq!(
            u32::from_ne_bytes(msg[0..4].try_into().expect("4")) as usize,
            msg.len()
        );
        // The last attribute is TCA_MIRRED_PARMS with the target index in its last 4 bytes.
        let parms = &msg[msg.len() - 32..];
        assert_eq!((u16_at(parms, 0), u16_at(parms, 2)), (32, TCA_MIRRED_PARMS));
        assert_eq!(u32::from_ne_bytes(parms[28..32].try_into().expect("4")), 9);
        // Every nested length covers exactly to the end of the message.
        let options_at = 16 + 20 + 8; // header, tcmsg, the "u32\0" attribute
        assert_eq!(u16_at(&msg, options_at + 2), TCA_OPTIONS);
        assert_eq!(u16_at(&msg, options_at + 6), TCA_U32_SEL);
        assert_eq!(
            u16_at(&msg, options_at + 4),
            4 + 32,
            "selector with one key"
        );
        assert_eq!(options_at + u16_at(&msg, options_at) as usize, msg.len());
    }

    const MAC: [u8; 6] = [0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0xee];

    #[test]
    fn a_v4_guest_may_send_ip_and_arp_from_its_own_mac_and_address_only() {
        let guest = GuestIdentity::from_cidrs(MAC, &["172.16.28.5/24".into()]).expect("parse");
        let filters = guest_filters(&guest);
        let mac = [
            Key::exact(-8, [0x02, 0xaa, 0xbb, 0xcc]),
            Key::first_half(-4, [0xdd, 0xee]),
        ];
        assert_eq!(filters.len(), 2, "IPv4 and ARP, no IPv6: {filters:?}");
        assert_eq!(filters[0].0, ETH_P_IP);
        assert_eq!(
            filters[0].1,
            [mac[0], mac[1], Key::exact(12, [172, 16, 28, 5])]
        );
        assert_eq!(filters[1].0, ETH_P_ARP);
        assert_eq!(
            filters[1].1,
            [
                mac[0],
                mac[1],
                Key::exact(8, [0x02, 0xaa, 0xbb, 0xcc]),
                Key::exact(12, [0xdd, 0xee, 172, 16]),
                Key::first_half(16, [28, 5]),
            ]
        );
    }

    #[test]
    fn a_v6_guest_may_also_send_from_link_local_and_unspecified() {
        let guest = GuestIdentity::from_cidrs(MAC, &["fd00::5/64".into()]).expect("parse");
        let filters = guest_filters(&guest);
        assert_eq!(filters.len(), 3, "{filters:?}");
        assert!(filters.iter().all(|(protocol, _)| *protocol == ETH_P_IPV6));
        assert_eq!(
            filters[1].1[2..],
            [
                Key::exact(8, [0xfd, 0, 0, 0]),
                Key::exact(12, [0; 4]),
                Key::exact(16, [0; 4]),
                Key::exact(20, [0, 0, 0, 5]),
            ]
        );
        assert_eq!(
            filters[2].1[2..],
            [
                Key::exact(8, [0; 4]),
                Key::exact(12, [0; 4]),
                Key::exact(16, [0; 4]),
                Key::exact(20, [0; 4]),
            ]
        );
    }

    #[test]
    fn a_guest_without_addresses_gets_no_filter_and_bad_addresses_are_refused() {
        let none = GuestIdentity::from_cidrs(MAC, &[]).expect("parse");
        assert!(guest_filters(&none).is_empty(), "only the drop filter");
        assert!(matches!(
            GuestIdentity::from_cidrs(MAC, &["10.0.0.1.2/8".into()]),
            Err(TcError::BadAddress { .. })
        ));
        let many: Vec<String> = (0..=MAX_ADDRESSES).map(|i| format!("10.0.{i}.1")).collect();
        assert!(matches!(
            GuestIdentity::from_cidrs(MAC, &many),
            Err(TcError::TooManyAddresses { .. })
        ));
    }

    #[test]
    fn the_drop_filter_is_a_gact_shot_with_the_protocol_in_network_order() {
        let msg = filter(4, DROP_PRIO, ETH_P_ALL, &[Key::ANY], Action::Drop);
        let info = u32::from_ne_bytes(msg[32..36].try_into().expect("4"));
        assert_eq!(info >> 16, u32::from(DROP_PRIO));
        assert_eq!((info & 0xffff) as u16, ETH_P_ALL.to_be());
        assert!(msg.windows(5).any(|w| w == b"gact\0"));
        // The last attribute is TCA_GACT_PARMS: a tc_gen whose action is TC_ACT_SHOT.
        let parms = &msg[msg.len() - 24..];
        assert_eq!((u16_at(parms, 0), u16_at(parms, 2)), (24, TCA_GACT_PARMS));
        assert_eq!(
            i32::from_ne_bytes(parms[12..16].try_into().expect("4")),
            TC_ACT_SHOT
        );
    }

    #[test]
    fn acknowledgements_are_read() {
        let mut ack = vec![0u8; 36];
        ack[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        assert_eq!(ack_errno(&ack), Some(0));
        ack[16..20].copy_from_slice(&(-17i32).to_ne_bytes());
        assert_eq!(ack_errno(&ack), Some(-17));
        assert_eq!(ack_errno(&[0; 4]), None);
    }
}
