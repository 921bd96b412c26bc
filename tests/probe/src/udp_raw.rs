//! `udp-raw SRC_IP DST_IP PORT PAYLOAD`: send one UDP datagram from any IPv4 source address the
//! test names, through a raw IP socket that takes the IP header as written (CAP_NET_RAW).
//! `set-mac IFACE MAC`: give the NIC another MAC (SIOCSIFHWADDR, CAP_NET_ADMIN; busybox's `ip`
//! needs AF_PACKET, which the guest kernel lacks). A hostile guest can do both; the host side
//! asserts what got through.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const SOURCE_PORT: u16 = 40000;

fn invalid(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, what)
}

fn parse_ip(text: &str) -> io::Result<Ipv4Addr> {
    text.parse()
        .map_err(|err| invalid(format!("IPv4 address {text}: {err}")))
}

/// The ones' complement sum of an IPv4 header.
fn checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// IPv4 + UDP (no UDP checksum, allowed over IPv4) around `payload`.
fn packet(src: Ipv4Addr, dst: Ipv4Addr, port: u16, payload: &[u8]) -> io::Result<Vec<u8>> {
    let udp_len = u16::try_from(8 + payload.len())
        .ok()
        .filter(|len| *len <= 1400)
        .ok_or_else(|| invalid(format!("payload of {} bytes", payload.len())))?;
    let total = udp_len + 20;
    let mut packet = vec![0x45, 0];
    packet.extend_from_slice(&total.to_be_bytes());
    packet.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0]); // id, DF, ttl, UDP, checksum
    packet.extend_from_slice(&src.octets());
    packet.extend_from_slice(&dst.octets());
    let sum = checksum(&packet);
    packet[10..12].copy_from_slice(&sum.to_be_bytes());
    packet.extend_from_slice(&SOURCE_PORT.to_be_bytes());
    packet.extend_from_slice(&port.to_be_bytes());
    packet.extend_from_slice(&udp_len.to_be_bytes());
    packet.extend_from_slice(&[0, 0]);
    packet.extend_from_slice(payload);
    Ok(packet)
}

/// Sends `packet` (with its IP header) to `dst`.
fn send(packet: &[u8], dst: Ipv4Addr) -> io::Result<()> {
    // SAFETY: socket() has no memory arguments; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::IPPROTO_RAW,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor owned by nothing else.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(dst.octets()),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: `packet` is readable for its length and `addr` is a sockaddr_in of the size given.
    let sent = unsafe {
        libc::sendto(
            socket.as_raw_fd(),
            packet.as_ptr().cast(),
            packet.len(),
            0,
            std::ptr::addr_of!(addr).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The `udp-raw` subcommand.
pub fn run(src: &str, dst: &str, port: &str, payload: &str) -> io::Result<()> {
    let (src, dst) = (parse_ip(src)?, parse_ip(dst)?);
    let port: u16 = port
        .parse()
        .map_err(|err| invalid(format!("port {port}: {err}")))?;
    send(&packet(src, dst, port, payload.as_bytes())?, dst)?;
    println!("sent from {src} to {dst}:{port}");
    Ok(())
}

/// Parses `aa:bb:cc:dd:ee:ff`.
fn parse_mac(text: &str) -> io::Result<[u8; 6]> {
    let bytes: Vec<u8> = text
        .split(':')
        .map(|part| u8::from_str_radix(part, 16))
        .collect::<Result<_, _>>()
        .map_err(|err| invalid(format!("MAC {text}: {err}")))?;
    bytes
        .try_into()
        .map_err(|_| invalid(format!("MAC {text}: not 6 bytes")))
}

/// The `set-mac` subcommand.
pub fn set_mac(iface: &str, mac: &str) -> io::Result<()> {
    let mac = parse_mac(mac)?;
    if iface.is_empty() || iface.len() >= libc::IFNAMSIZ {
        return Err(invalid(format!("interface name {iface:?}")));
    }
    // struct ifreq: the name (IFNAMSIZ bytes), then ifr_hwaddr: a sockaddr (family, data).
    let mut request = [0u8; 40];
    request[..iface.len()].copy_from_slice(iface.as_bytes());
    request[16..18].copy_from_slice(&libc::ARPHRD_ETHER.to_ne_bytes());
    request[18..24].copy_from_slice(&mac);
    // SAFETY: socket() has no memory arguments; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor owned by nothing else.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: `request` is a 40-byte struct ifreq the kernel reads.
    let done = unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFHWADDR, request.as_ptr()) };
    if done < 0 {
        return Err(io::Error::last_os_error());
    }
    println!("mac-now={}", mac.map(|b| format!("{b:02x}")).join(":"));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ip_header_checksums_to_zero() {
        let src = Ipv4Addr::new(10, 0, 0, 2);
        let packet = packet(src, Ipv4Addr::new(10, 0, 0, 1), 9, b"x").expect("packet");
        assert_eq!(checksum(&packet[..20]), 0);
        assert_eq!(packet.len(), 20 + 8 + 1);
        assert_eq!(&packet[12..16], &[10, 0, 0, 2]);
    }
}
