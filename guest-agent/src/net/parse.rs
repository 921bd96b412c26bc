//! Parsing what the host writes in the boot spec: MAC addresses and CIDR prefixes.

use std::net::{IpAddr, Ipv4Addr};

/// An address with its prefix length, e.g. `10.0.0.2/24` or `fd00::2/64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// The address.
    pub addr: IpAddr,
    /// The prefix length (0..=32 for IPv4, 0..=128 for IPv6).
    pub prefix: u8,
}

impl Cidr {
    /// The IPv4 netmask of the prefix (`None` for IPv6).
    pub fn netmask_v4(&self) -> Option<Ipv4Addr> {
        match self.addr {
            IpAddr::V4(_) => {
                let bits = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                Some(Ipv4Addr::from(bits))
            }
            IpAddr::V6(_) => None,
        }
    }
}

/// Parses `ADDRESS/PREFIX`; the reason on failure.
pub fn parse_cidr(text: &str) -> Result<Cidr, String> {
    let (addr, prefix) = text
        .split_once('/')
        .ok_or_else(|| "expected ADDRESS/PREFIX, e.g. 10.0.0.2/24".to_string())?;
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| format!("{addr:?} is not an IP address"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = prefix
        .parse::<u8>()
        .ok()
        .filter(|prefix| *prefix <= max)
        .ok_or_else(|| format!("prefix length {prefix:?} is not a number from 0 to {max}"))?;
    Ok(Cidr { addr, prefix })
}

pub use podvm_protocol::mac::{format_mac, parse_mac};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_parse_with_their_netmask() {
        let cidr = parse_cidr("10.88.0.5/16").expect("valid");
        assert_eq!(cidr.addr, IpAddr::from([10, 88, 0, 5]));
        assert_eq!(cidr.prefix, 16);
        assert_eq!(cidr.netmask_v4(), Some(Ipv4Addr::new(255, 255, 0, 0)));
        let host = parse_cidr("10.0.0.2/32").expect("valid");
        assert_eq!(host.netmask_v4(), Some(Ipv4Addr::new(255, 255, 255, 255)));
        let any = parse_cidr("0.0.0.0/0").expect("valid");
        assert_eq!(any.netmask_v4(), Some(Ipv4Addr::new(0, 0, 0, 0)));
        let odd = parse_cidr("192.168.1.9/23").expect("valid");
        assert_eq!(odd.netmask_v4(), Some(Ipv4Addr::new(255, 255, 254, 0)));
        let v6 = parse_cidr("fd00::2/64").expect("valid");
        assert_eq!(v6.prefix, 64);
        assert_eq!(v6.netmask_v4(), None);
    }

    #[test]
    fn bad_cidrs_say_what_is_wrong() {
        for (text, needle) in [
            ("10.0.0.2", "ADDRESS/PREFIX"),
            ("10.0.0/24", "not an IP address"),
            ("10.0.0.2/33", "0 to 32"),
            ("fd00::2/129", "0 to 128"),
            ("10.0.0.2/x", "not a number"),
        ] {
            let reason = parse_cidr(text).expect_err(text);
            assert!(reason.contains(needle), "{text}: {reason}");
        }
    }
}
