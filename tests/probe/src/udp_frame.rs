//! `udp-frame IFACE SRC_MAC SRC_IP DST_IP PORT PAYLOAD`: send one UDP datagram as a raw
//! Ethernet frame built by hand on IFACE (AF_PACKET), with whatever source MAC and IPv4 address
//! the test gives, to DST_IP's MAC as the guest's ARP table knows it (the caller pings DST_IP
//! first). A hostile guest can do exactly this; the host side asserts what got through.

use std::ffi::CString;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const ETH_P_IP: u16 = 0x0800;
const SOURCE_PORT: u16 = 40000;

fn invalid(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, what)
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

fn parse_ip(text: &str) -> io::Result<Ipv4Addr> {
    text.parse()
        .map_err(|err| invalid(format!("IPv4 address {text}: {err}")))
}

/// The MAC of `ip` in /proc/net/arp (a complete entry).
fn neighbour_mac(ip: Ipv4Addr) -> io::Result<[u8; 6]> {
    let table = std::fs::read_to_string("/proc/net/arp")?;
    table
        .lines()
        .skip(1)
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .find(|cols| cols.len() >= 4 && cols[0] == ip.to_string() && cols[2] == "0x2")
        .map(|cols| parse_mac(cols[3]))
        .unwrap_or_else(|| Err(invalid(format!("no ARP entry for {ip}: ping it first"))))
}

/// The ones' complement sum of the IPv4 header.
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

/// Ethernet + IPv4 + UDP (no UDP checksum, allowed over IPv4) around `payload`.
fn frame(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    port: u16,
    payload: &[u8],
) -> Vec<u8> {
    let udp_len = u16::try_from(8 + payload.len()).expect("small payload");
    let total = udp_len + 20;
    let mut frame = Vec::with_capacity(14 + usize::from(total));
    frame.extend_from_slice(&dst_mac);
    frame.extend_from_slice(&src_mac);
    frame.extend_from_slice(&ETH_P_IP.to_be_bytes());
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0]); // id, DF, ttl, UDP, checksum
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let sum = checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    frame.extend_from_slice(&ip);
    frame.extend_from_slice(&SOURCE_PORT.to_be_bytes());
    frame.extend_from_slice(&port.to_be_bytes());
    frame.extend_from_slice(&udp_len.to_be_bytes());
    frame.extend_from_slice(&[0, 0]);
    frame.extend_from_slice(payload);
    frame
}

/// Sends `frame` out of interface `iface`.
fn send(iface: &str, frame: &[u8]) -> io::Result<()> {
    let name = CString::new(iface).map_err(|err| invalid(format!("interface {iface}: {err}")))?;
    // SAFETY: `name` is NUL-terminated.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: socket() has no memory arguments; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor owned by nothing else.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: an all-zero sockaddr_ll is valid; the fields are set below.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_ifindex = i32::try_from(index).map_err(|_| invalid(format!("index {index}")))?;
    addr.sll_halen = 6;
    addr.sll_addr[..6].copy_from_slice(&frame[..6]);
    // SAFETY: `frame` is readable for its length and `addr` is a sockaddr_ll of the size given.
    let sent = unsafe {
        libc::sendto(
            socket.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            std::ptr::addr_of!(addr).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The `udp-frame` subcommand.
pub fn run(
    iface: &str,
    src_mac: &str,
    src: &str,
    dst: &str,
    port: &str,
    payload: &str,
) -> io::Result<()> {
    let (src_mac, src, dst) = (parse_mac(src_mac)?, parse_ip(src)?, parse_ip(dst)?);
    let port: u16 = port
        .parse()
        .map_err(|err| invalid(format!("port {port}: {err}")))?;
    let frame = frame(
        neighbour_mac(dst)?,
        src_mac,
        src,
        dst,
        port,
        payload.as_bytes(),
    );
    send(iface, &frame)?;
    println!("sent {} bytes from {src} to {dst}:{port}", frame.len());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ip_header_checksums_to_zero() {
        let f = frame(
            [1; 6],
            [2; 6],
            Ipv4Addr::new(10, 0, 0, 2),
            Ipv4Addr::new(10, 0, 0, 1),
            9,
            b"x",
        );
        assert_eq!(checksum(&f[14..34]), 0);
        assert_eq!(f.len(), 14 + 20 + 8 + 1);
        assert_eq!(
            parse_mac("02:aa:bb:cc:dd:ee").expect("mac"),
            [2, 0xaa, 0xbb, 0xcc, 0xdd, 0xee]
        );
    }
}
