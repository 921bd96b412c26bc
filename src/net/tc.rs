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
//! (and the same from tap0 to eth0). The rtnetlink messages are built here directly: they are
//! two fixed shapes, and podvm needs no netlink library for them. Runs in the calling thread's
//! network namespace.

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
/// `htons(ETH_P_ALL)`.
const ETH_P_ALL_BE: u32 = 0x0300;
const FILTER_PRIO: u32 = 1;

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
    #[error("cannot {what} on device index {ifindex}: {source} (are the sch_ingress, cls_u32 and act_mirred modules available?)")]
    Refused {
        /// What was asked.
        what: &'static str,
        /// The device.
        ifindex: u32,
        /// The kernel's answer.
        source: std::io::Error,
    },
}

/// Redirects every frame arriving on `from` to the egress of `to` and back.
pub fn redirect_both_ways(a: u32, b: u32) -> Result<(), TcError> {
    let socket = Netlink::open()?;
    for (from, to) in [(a, b), (b, a)] {
        socket.request("add an ingress qdisc", from, &ingress_qdisc(from))?;
        socket.request("add a redirect filter", from, &redirect_filter(from, to))?;
    }
    Ok(())
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
    let info = (FILTER_PRIO << 16) | ETH_P_ALL_BE;
    let mut msg = Message::tc(RTM_NEWTFILTER, from, 0, INGRESS_HANDLE, info);
    msg.string(TCA_KIND, "u32");
    msg.nested(TCA_OPTIONS, |options| {
        options.attr(TCA_U32_SEL, &match_all_selector());
        options.nested(TCA_U32_ACT, |actions| {
            actions.nested(1, |action| {
                action.string(TCA_ACT_KIND, "mirred");
                action.nested(TCA_ACT_OPTIONS, |mirred| {
                    mirred.attr(TCA_MIRRED_PARMS, &mirred_parms(to));
                });
            });
        });
    });
    msg.finish()
}

/// `struct tc_u32_sel` (flags, offshift, nkeys, pad, offmask, off, offoff, hoff, hmask) with
/// one `struct tc_u32_key` (mask, val, off, offmask) of all zeroes: it matches every frame.
fn match_all_selector() -> Vec<u8> {
    let mut sel = vec![TC_U32_TERMINAL, 0, 1, 0];
    sel.extend_from_slice(&[0u8; 12]); // offmask .. hmask
    sel.extend_from_slice(&[0u8; 16]); // the key
    sel
}

/// `struct tc_mirred`: the generic action header (index, capab, action, refcnt, bindcnt), the
/// mirred action and the target device.
fn mirred_parms(to: u32) -> Vec<u8> {
    let mut parms = Vec::with_capacity(28);
    parms.extend_from_slice(&0u32.to_ne_bytes());
    parms.extend_from_slice(&0u32.to_ne_bytes());
    parms.extend_from_slice(&TC_ACT_STOLEN.to_ne_bytes());
    parms.extend_from_slice(&0i32.to_ne_bytes());
    parms.extend_from_slice(&0i32.to_ne_bytes());
    parms.extend_from_slice(&TCA_EGRESS_REDIR.to_ne_bytes());
    parms.extend_from_slice(&to.to_ne_bytes());
    parms
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
