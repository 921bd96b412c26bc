//! Network devices by ioctl, in the calling thread's network namespace: a persistent tap for
//! the VM's virtio-net device, a device's index, flags (up) and MAC address.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `TUNSETIFF` (`_IOW('T', 202, int)`).
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
/// `TUNSETPERSIST` (`_IOW('T', 203, int)`).
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
/// tap (ethernet frames), no packet info header, with a virtio-net header (for vhost-net).
const TAP_FLAGS: libc::c_short =
    (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;

/// Errors with network devices.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// An ioctl or open failed.
    #[error("device {device}: cannot {what}: {source}")]
    Io {
        /// The device.
        device: String,
        /// What was being done.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// A device name that does not fit `IFNAMSIZ`.
    #[error("device name {0:?} is too long (at most 15 bytes)")]
    Name(String),
}

/// A zeroed `ifreq` carrying `name`.
fn ifreq(name: &str) -> Result<libc::ifreq, LinkError> {
    // SAFETY: ifreq is plain old data (a name array and a union of integers); zeroes are valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= req.ifr_name.len() || bytes.contains(&0) {
        return Err(LinkError::Name(name.into()));
    }
    for (slot, byte) in req.ifr_name.iter_mut().zip(bytes) {
        *slot = *byte as libc::c_char;
    }
    Ok(req)
}

fn last_error(device: &str, what: &'static str) -> LinkError {
    LinkError::Io {
        device: device.into(),
        what,
        source: std::io::Error::last_os_error(),
    }
}

/// Runs `request` on `req` through a datagram socket of the current namespace.
fn socket_ioctl(
    device: &str,
    what: &'static str,
    request: libc::c_ulong,
    req: &mut libc::ifreq,
) -> Result<(), LinkError> {
    // SAFETY: socket() has no memory arguments; the result is checked below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(last_error(device, "open a socket"));
    }
    // SAFETY: `fd` is a fresh descriptor owned by nothing else.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: the interface ioctls read and write one ifreq, which `req` points to.
    if unsafe { libc::ioctl(socket.as_raw_fd(), request, req as *mut libc::ifreq) } < 0 {
        return Err(last_error(device, what));
    }
    Ok(())
}

/// Creates the persistent tap `name` (it stays when podvm closes it, until deleted or its
/// namespace goes).
pub fn create_tap(name: &str) -> Result<(), LinkError> {
    let path = c"/dev/net/tun";
    // SAFETY: open() reads the NUL-terminated path; the result is checked below.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(last_error(
            name,
            "open /dev/net/tun (is the tun module loaded?)",
        ));
    }
    // SAFETY: `fd` is a fresh descriptor owned by nothing else.
    let tun = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_flags = TAP_FLAGS;
    // SAFETY: TUNSETIFF reads and writes one ifreq, which `req` points to.
    if unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETIFF, &mut req as *mut libc::ifreq) } < 0 {
        return Err(last_error(name, "create the tap"));
    }
    // SAFETY: TUNSETPERSIST takes an integer argument, no memory.
    if unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETPERSIST, 1 as libc::c_ulong) } < 0 {
        return Err(last_error(name, "make the tap persistent"));
    }
    Ok(())
}

/// The index of device `name`.
pub fn index(name: &str) -> Result<u32, LinkError> {
    let c_name = std::ffi::CString::new(name).map_err(|_| LinkError::Name(name.into()))?;
    // SAFETY: if_nametoindex reads the NUL-terminated name.
    match unsafe { libc::if_nametoindex(c_name.as_ptr()) } {
        0 => Err(last_error(name, "find it")),
        index => Ok(index),
    }
}

/// Sets device `name` up or down.
pub fn set_up(name: &str, up: bool) -> Result<(), LinkError> {
    let mut req = ifreq(name)?;
    socket_ioctl(name, "read its flags", libc::SIOCGIFFLAGS, &mut req)?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    let mut flags = unsafe { req.ifr_ifru.ifru_flags };
    let up_flag = libc::IFF_UP as libc::c_short;
    if up {
        flags |= up_flag;
    } else {
        flags &= !up_flag;
    }
    req.ifr_ifru.ifru_flags = flags;
    socket_ioctl(name, "set its flags", libc::SIOCSIFFLAGS, &mut req)
}

/// Sets the MAC address of device `name` (taking it down and up again).
pub fn set_mac(name: &str, mac: [u8; 6]) -> Result<(), LinkError> {
    set_up(name, false)?;
    let mut req = ifreq(name)?;
    // SAFETY: sockaddr is plain old data; zeroes are valid.
    let mut addr: libc::sockaddr = unsafe { std::mem::zeroed() };
    addr.sa_family = libc::ARPHRD_ETHER;
    for (slot, byte) in addr.sa_data.iter_mut().zip(mac) {
        *slot = byte as libc::c_char;
    }
    req.ifr_ifru.ifru_hwaddr = addr;
    socket_ioctl(name, "set its MAC address", libc::SIOCSIFHWADDR, &mut req)?;
    set_up(name, true)
}

/// A stable, locally administered unicast MAC for network `index` of pod `uuid`.
pub fn pod_mac(uuid: &str, index: usize) -> [u8; 6] {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!("{uuid}/{index}").as_bytes());
    [0x02, digest[0], digest[1], digest[2], digest[3], digest[4]]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_are_stable_local_unicast() {
        let mac = pod_mac("1b4e28ba-2fa1-11d2-883f-0016d3cca427", 0);
        assert_eq!(mac, pod_mac("1b4e28ba-2fa1-11d2-883f-0016d3cca427", 0));
        assert_ne!(mac, pod_mac("1b4e28ba-2fa1-11d2-883f-0016d3cca427", 1));
        assert_eq!(mac[0] & 0x03, 0x02, "locally administered, unicast");
    }

    #[test]
    fn long_names_are_refused() {
        assert!(matches!(
            ifreq("a-very-long-device-name"),
            Err(LinkError::Name(_))
        ));
        assert!(ifreq("tap0").is_ok());
    }
}
