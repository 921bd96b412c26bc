//! The interface and route ioctls, on datagram sockets, with the kernel's structs spelled out
//! (`struct ifreq`, `struct in6_ifreq`, `struct rtentry`, `struct in6_rtmsg` on x86_64).

use std::ffi::CString;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};

use super::{Cidr, NetError};

/// Longest interface name (IFNAMSIZ - 1).
const MAX_IFNAME: usize = 15;
/// Route flags.
const RTF_UP: u16 = 0x0001;
const RTF_GATEWAY: u16 = 0x0002;

/// `struct ifreq`: a name and a 24-byte union (only the bytes a request uses are set).
#[repr(C)]
struct IfReq {
    name: [u8; 16],
    data: [u8; 24],
}

/// `struct in6_ifreq`.
#[repr(C)]
struct In6IfReq {
    addr: [u8; 16],
    prefixlen: u32,
    ifindex: libc::c_int,
}

/// `struct rtentry` (the three sockaddrs as 16 raw bytes each).
#[repr(C)]
struct RtEntry {
    pad1: libc::c_ulong,
    dst: [u8; 16],
    gateway: [u8; 16],
    genmask: [u8; 16],
    flags: libc::c_ushort,
    pad2: libc::c_short,
    pad3: libc::c_ulong,
    pad4: *mut libc::c_void,
    metric: libc::c_short,
    dev: *const libc::c_char,
    mtu: libc::c_ulong,
    window: libc::c_ulong,
    irtt: libc::c_ushort,
}

/// `struct in6_rtmsg`.
#[repr(C)]
struct In6RtMsg {
    dst: [u8; 16],
    src: [u8; 16],
    gateway: [u8; 16],
    rtype: u32,
    dst_len: u16,
    src_len: u16,
    metric: u32,
    info: libc::c_ulong,
    flags: u32,
    ifindex: libc::c_int,
}

/// The sockets the ioctls go through: IPv4 always, IPv6 when the spec has IPv6.
pub struct Sockets {
    v4: OwnedFd,
    v6: Option<OwnedFd>,
}

impl Sockets {
    /// Opens the IPv4 socket and, if `ipv6`, the IPv6 one.
    pub fn open(ipv6: bool) -> Result<Self, NetError> {
        let open = |family, name| {
            socket(family, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None).map_err(|errno| {
                NetError::Socket {
                    family: name,
                    source: errno.into(),
                }
            })
        };
        Ok(Self {
            v4: open(AddressFamily::Inet, "IPv4")?,
            v6: if ipv6 {
                Some(open(AddressFamily::Inet6, "IPv6")?)
            } else {
                None
            },
        })
    }

    /// Renames interface `from` to `to` (it must be down).
    pub fn rename(&self, from: &str, to: &str) -> Result<(), NetError> {
        let mut request = ifreq(from)?;
        request.data[..16].copy_from_slice(&name_bytes(to)?);
        ioctl(&self.v4, libc::SIOCSIFNAME, &mut request)
            .map_err(configure(&format!("rename it to {to}"), from))
    }

    /// Sets the MTU.
    pub fn set_mtu(&self, name: &str, mtu: u32) -> Result<(), NetError> {
        let what = format!("set MTU {mtu}");
        let value = libc::c_int::try_from(mtu).map_err(|_| NetError::Spec {
            what: "MTU",
            value: mtu.to_string(),
            reason: "too large".into(),
        })?;
        let mut request = ifreq(name)?;
        request.data[..4].copy_from_slice(&value.to_ne_bytes());
        ioctl(&self.v4, libc::SIOCSIFMTU, &mut request).map_err(configure(&what, name))
    }

    /// Sets IFF_UP.
    pub fn set_up(&self, name: &str) -> Result<(), NetError> {
        let mut request = ifreq(name)?;
        ioctl(&self.v4, libc::SIOCGIFFLAGS, &mut request).map_err(configure("read flags", name))?;
        let flags = i16::from_ne_bytes([request.data[0], request.data[1]]);
        let up = flags | i16::try_from(libc::IFF_UP).expect("IFF_UP is bit 0");
        request.data[..2].copy_from_slice(&up.to_ne_bytes());
        ioctl(&self.v4, libc::SIOCSIFFLAGS, &mut request).map_err(configure("bring it up", name))
    }

    /// Whether IFF_UP is set (for tests).
    #[cfg(test)]
    pub fn is_up(&self, name: &str) -> Result<bool, NetError> {
        let mut request = ifreq(name)?;
        ioctl(&self.v4, libc::SIOCGIFFLAGS, &mut request).map_err(configure("read flags", name))?;
        let flags = i16::from_ne_bytes([request.data[0], request.data[1]]);
        Ok(i32::from(flags) & libc::IFF_UP != 0)
    }

    /// The MTU (for tests).
    #[cfg(test)]
    pub fn mtu(&self, name: &str) -> Result<i32, NetError> {
        let mut request = ifreq(name)?;
        ioctl(&self.v4, libc::SIOCGIFMTU, &mut request).map_err(configure("read the MTU", name))?;
        Ok(i32::from_ne_bytes([
            request.data[0],
            request.data[1],
            request.data[2],
            request.data[3],
        ]))
    }

    /// Sets IPv4 address `cidr` on `name` (alias `name:N` for N > 0).
    pub fn set_ipv4(&self, name: &str, alias: u32, cidr: &Cidr) -> Result<(), NetError> {
        let label = match alias {
            0 => name.to_string(),
            n => format!("{name}:{n}"),
        };
        let (IpAddr::V4(addr), Some(mask)) = (cidr.addr, cidr.netmask_v4()) else {
            return Ok(());
        };
        let what = format!("add address {addr}/{}", cidr.prefix);
        let mut request = ifreq(&label)?;
        request.data[..16].copy_from_slice(&sockaddr_in(addr));
        ioctl(&self.v4, libc::SIOCSIFADDR, &mut request).map_err(configure(&what, &label))?;
        request.data[..16].copy_from_slice(&sockaddr_in(mask));
        ioctl(&self.v4, libc::SIOCSIFNETMASK, &mut request).map_err(configure(&what, &label))
    }

    /// Adds IPv6 address `cidr` on `name`.
    pub fn add_ipv6(&self, name: &str, cidr: &Cidr) -> Result<(), NetError> {
        let IpAddr::V6(addr) = cidr.addr else {
            return Ok(());
        };
        let what = format!("add address {addr}/{}", cidr.prefix);
        let mut request = In6IfReq {
            addr: addr.octets(),
            prefixlen: u32::from(cidr.prefix),
            ifindex: self.index(name)?,
        };
        ioctl(self.v6()?, libc::SIOCSIFADDR, &mut request).map_err(configure(&what, name))
    }

    /// Adds a route to `destination` via `gateway`, or out of `device` without one.
    pub fn add_route(
        &self,
        destination: &Cidr,
        gateway: Option<IpAddr>,
        device: Option<&str>,
    ) -> std::io::Result<()> {
        let flags = RTF_UP | if gateway.is_some() { RTF_GATEWAY } else { 0 };
        match destination.addr {
            IpAddr::V4(addr) => {
                let device = device
                    .map(|name| CString::new(name).map_err(std::io::Error::other))
                    .transpose()?;
                let gateway = match gateway {
                    Some(IpAddr::V4(gateway)) => sockaddr_in(gateway),
                    _ => [0; 16],
                };
                let mut entry = RtEntry {
                    pad1: 0,
                    dst: sockaddr_in(addr),
                    gateway,
                    genmask: sockaddr_in(destination.netmask_v4().unwrap_or(Ipv4Addr::UNSPECIFIED)),
                    flags,
                    pad2: 0,
                    pad3: 0,
                    pad4: std::ptr::null_mut(),
                    metric: 0,
                    dev: device
                        .as_ref()
                        .map_or(std::ptr::null(), |name| name.as_ptr()),
                    mtu: 0,
                    window: 0,
                    irtt: 0,
                };
                ioctl(&self.v4, libc::SIOCADDRT, &mut entry)
            }
            IpAddr::V6(addr) => {
                let ifindex = match device {
                    Some(name) => self.index(name).map_err(std::io::Error::other)?,
                    None => 0,
                };
                let gateway = match gateway {
                    Some(IpAddr::V6(gateway)) => gateway.octets(),
                    _ => [0; 16],
                };
                let mut message = In6RtMsg {
                    dst: addr.octets(),
                    src: [0; 16],
                    gateway,
                    rtype: 0,
                    dst_len: u16::from(destination.prefix),
                    src_len: 0,
                    metric: 0,
                    info: 0,
                    flags: u32::from(flags),
                    ifindex,
                };
                let socket = self.v6().map_err(std::io::Error::other)?;
                ioctl(socket, libc::SIOCADDRT, &mut message)
            }
        }
    }

    fn v6(&self) -> Result<&OwnedFd, NetError> {
        self.v6.as_ref().ok_or_else(|| NetError::Socket {
            family: "IPv6",
            source: std::io::Error::other("not opened: the spec was thought to be IPv4 only"),
        })
    }

    /// The interface index of `name`.
    fn index(&self, name: &str) -> Result<libc::c_int, NetError> {
        let mut request = ifreq(name)?;
        ioctl(&self.v4, libc::SIOCGIFINDEX, &mut request)
            .map_err(configure("look up its index", name))?;
        let bytes = [
            request.data[0],
            request.data[1],
            request.data[2],
            request.data[3],
        ];
        Ok(libc::c_int::from_ne_bytes(bytes))
    }
}

/// A `Configure` error for `what` on `interface`.
fn configure<'a>(
    what: &'a str,
    interface: &'a str,
) -> impl FnOnce(std::io::Error) -> NetError + 'a {
    move |source| NetError::Configure {
        what: what.to_string(),
        interface: interface.to_string(),
        source,
    }
}

/// An ifreq for `name` with an empty union.
fn ifreq(name: &str) -> Result<IfReq, NetError> {
    Ok(IfReq {
        name: name_bytes(name)?,
        data: [0; 24],
    })
}

/// `name` NUL-padded to IFNAMSIZ, if it is a valid interface name.
fn name_bytes(name: &str) -> Result<[u8; 16], NetError> {
    if name.is_empty()
        || name.len() > MAX_IFNAME
        || name
            .bytes()
            .any(|b| b == 0 || b == b'/' || b.is_ascii_whitespace())
    {
        return Err(NetError::Spec {
            what: "interface name",
            value: name.to_string(),
            reason: format!("1 to {MAX_IFNAME} bytes without '/', NUL or spaces"),
        });
    }
    let mut bytes = [0u8; 16];
    bytes[..name.len()].copy_from_slice(name.as_bytes());
    Ok(bytes)
}

/// `struct sockaddr_in` for `addr`, port 0.
fn sockaddr_in(addr: Ipv4Addr) -> [u8; 16] {
    let mut bytes = [0u8; 16];
    let family = u16::try_from(libc::AF_INET).expect("AF_INET is 2");
    bytes[..2].copy_from_slice(&family.to_ne_bytes());
    bytes[4..8].copy_from_slice(&addr.octets());
    bytes
}

/// Runs ioctl `request` on `socket` with `arg`.
fn ioctl<T>(socket: &OwnedFd, request: libc::c_ulong, arg: &mut T) -> std::io::Result<()> {
    // SAFETY: every caller passes the repr(C) struct the kernel reads and writes for `request`
    // (ifreq, in6_ifreq, rtentry or in6_rtmsg, sizes checked by the tests); it lives across the
    // call and any pointer inside it (rtentry's device name) points to a live C string.
    let ret = unsafe { libc::ioctl(socket.as_raw_fd(), request, std::ptr::from_mut(arg)) };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn structs_have_the_kernels_sizes() {
        assert_eq!(std::mem::size_of::<IfReq>(), 40);
        assert_eq!(std::mem::size_of::<In6IfReq>(), 24);
        assert_eq!(std::mem::size_of::<RtEntry>(), 120);
        assert_eq!(std::mem::size_of::<In6RtMsg>(), 80);
    }

    #[test]
    fn sockaddr_in_is_family_port_address() {
        let bytes = sockaddr_in(Ipv4Addr::new(10, 0, 0, 2));
        assert_eq!(&bytes[..8], &[2, 0, 0, 0, 10, 0, 0, 2]);
        assert_eq!(&bytes[8..], &[0; 8]);
    }

    #[test]
    fn interface_names_are_checked_before_any_ioctl() {
        assert!(name_bytes("eth0").is_ok());
        for bad in ["", "a-name-far-too-long", "a/b", "a b"] {
            let err = name_bytes(bad).expect_err(bad);
            assert!(err.to_string().contains("interface name"), "{err}");
        }
    }
}
