//! The network flags of `podvm boot` (`--tap`, `--tap-netns`, `--mac`, `--guest-ip`,
//! `--guest-gateway`): one guest NIC on an existing or new host tap, for testing without CNI.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::Args;
use podvm_protocol::{GuestInterface, GuestNetwork, GuestRoute};

use crate::vmm::devices::virtio::net::{format_mac, parse_mac, NetBackend, NetConfig};

/// Name the guest interface gets.
pub const GUEST_IFNAME: &str = "eth0";

/// Network flags of `podvm boot`.
#[derive(Debug, Args)]
pub struct NetArgs {
    /// Give the guest a NIC (virtio-net over vhost-net) on this host tap device; the tap is
    /// created if it does not exist (it then vanishes with the VM). Configure the host side
    /// yourself (e.g. `ip addr add 10.0.0.1/24 dev NAME; ip link set NAME up`). Without
    /// /dev/vhost-net podvm moves the frames itself (slower); PODVM_NET_BACKEND=vhost|userspace
    /// forces either.
    #[arg(long, value_name = "NAME")]
    tap: Option<String>,
    /// The network namespace file the tap lives in (e.g. /run/netns/NAME).
    #[arg(long, value_name = "PATH", requires = "tap")]
    tap_netns: Option<PathBuf>,
    /// The guest NIC's MAC address, aa:bb:cc:dd:ee:ff (default: a random locally administered
    /// one).
    #[arg(long, value_name = "MAC", requires = "tap", value_parser = parse_mac_arg)]
    mac: Option<[u8; 6]>,
    /// Address of the guest's eth0 in CIDR notation, e.g. 10.0.0.2/24 or fd00::2/64
    /// (repeatable); the agent configures it before the command starts. Without it, eth0 is
    /// only brought up.
    #[arg(long = "guest-ip", value_name = "CIDR", requires = "tap", value_parser = parse_cidr_arg)]
    guest_ips: Vec<String>,
    /// MTU of the guest's eth0 (default: the device's, 1500).
    #[arg(long, value_name = "BYTES", requires = "tap")]
    guest_mtu: Option<u32>,
    /// The guest's default gateway, e.g. 10.0.0.1 (an IPv6 one makes the IPv6 default route).
    #[arg(long, value_name = "IP", requires = "guest_ips", value_parser = parse_ip_arg)]
    guest_gateway: Option<String>,
}

/// Errors of the network flags.
#[derive(Debug, thiserror::Error)]
pub enum NetArgsError {
    /// The --tap-netns file does not exist.
    #[error(
        "--tap-netns {path}: {source} (give a network namespace file such as /run/netns/NAME)"
    )]
    Netns {
        /// The path given.
        path: PathBuf,
        /// Why it is unusable.
        source: std::io::Error,
    },
    /// No randomness for a MAC.
    #[error("cannot pick a random MAC for the guest NIC: {0} (pass --mac)")]
    Random(std::io::Error),
}

impl NetArgs {
    /// The VM's NICs and the guest's network configuration these flags ask for.
    pub fn resolve(&self) -> Result<(Vec<NetConfig>, Option<GuestNetwork>), NetArgsError> {
        let Some(tap) = &self.tap else {
            return Ok((Vec::new(), None));
        };
        if let Some(path) = &self.tap_netns {
            std::fs::metadata(path).map_err(|source| NetArgsError::Netns {
                path: path.clone(),
                source,
            })?;
        }
        let mac = match self.mac {
            Some(mac) => mac,
            None => random_mac().map_err(NetArgsError::Random)?,
        };
        let nic = NetConfig {
            backend: NetBackend::Tap {
                name: tap.clone(),
                netns: self.tap_netns.clone(),
            },
            mac,
        };
        let network = GuestNetwork {
            interfaces: vec![GuestInterface {
                mac: format_mac(&mac),
                name: Some(GUEST_IFNAME.into()),
                addresses: self.guest_ips.clone(),
                mtu: self.guest_mtu,
            }],
            routes: self
                .guest_gateway
                .iter()
                .map(|gateway| GuestRoute {
                    destination: if gateway.contains(':') {
                        "::/0"
                    } else {
                        "0.0.0.0/0"
                    }
                    .into(),
                    gateway: Some(gateway.clone()),
                })
                .collect(),
        };
        Ok((vec![nic], Some(network)))
    }
}

/// A random unicast, locally administered MAC (02:xx:xx:xx:xx:xx style).
fn random_mac() -> std::io::Result<[u8; 6]> {
    let mut mac = [0u8; 6];
    crate::vmm::devices::virtio::rng::getrandom(&mut mac)?;
    mac[0] = (mac[0] & 0xfc) | 0x02;
    Ok(mac)
}

fn parse_mac_arg(text: &str) -> Result<[u8; 6], String> {
    let mac = parse_mac(text)
        .ok_or_else(|| format!("{text:?} is not a MAC address (expected aa:bb:cc:dd:ee:ff)"))?;
    if mac[0] & 1 != 0 || mac == [0; 6] {
        return Err(format!(
            "{text} is a multicast or all-zero address; a NIC needs a unicast MAC such as 02:00:00:00:00:01"
        ));
    }
    Ok(mac)
}

fn parse_cidr_arg(text: &str) -> Result<String, String> {
    let bad = || format!("{text:?} is not an IP address with a prefix length (e.g. 10.0.0.2/24)");
    let (addr, prefix) = text.split_once('/').ok_or_else(bad)?;
    let max = match addr.parse::<IpAddr>().map_err(|_| bad())? {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    };
    match prefix.parse::<u8>() {
        Ok(length) if length <= max => Ok(text.to_string()),
        _ => Err(bad()),
    }
}

fn parse_ip_arg(text: &str) -> Result<String, String> {
    text.parse::<IpAddr>()
        .map(|_| text.to_string())
        .map_err(|_| format!("{text:?} is not an IP address (e.g. 10.0.0.1)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(tap: Option<&str>) -> NetArgs {
        NetArgs {
            tap: tap.map(str::to_string),
            tap_netns: None,
            mac: Some([2, 0, 0, 0, 0, 9]),
            guest_ips: vec!["10.0.0.2/24".into()],
            guest_mtu: Some(1400),
            guest_gateway: Some("10.0.0.1".into()),
        }
    }

    #[test]
    fn flags_become_one_nic_and_its_guest_configuration() {
        let (nics, network) = args(Some("tap7")).resolve().expect("valid");
        assert_eq!(
            nics,
            [NetConfig {
                backend: NetBackend::Tap {
                    name: "tap7".into(),
                    netns: None,
                },
                mac: [2, 0, 0, 0, 0, 9]
            }]
        );
        let network = network.expect("a network");
        assert_eq!(network.interfaces[0].mac, "02:00:00:00:00:09");
        assert_eq!(network.interfaces[0].name.as_deref(), Some("eth0"));
        assert_eq!(network.interfaces[0].addresses, ["10.0.0.2/24"]);
        assert_eq!(network.interfaces[0].mtu, Some(1400));
        assert_eq!(network.routes[0].destination, "0.0.0.0/0");
        assert_eq!(network.routes[0].gateway.as_deref(), Some("10.0.0.1"));
    }

    #[test]
    fn no_tap_means_no_network() {
        let (nics, network) = args(None).resolve().expect("valid");
        assert!(nics.is_empty());
        assert!(network.is_none());
    }

    #[test]
    fn a_missing_netns_file_is_named() {
        let mut flags = args(Some("tap0"));
        flags.tap_netns = Some("/nonexistent/netns/podvm".into());
        let err = flags.resolve().expect_err("no such file");
        assert!(
            err.to_string().contains("/nonexistent/netns/podvm"),
            "{err}"
        );
    }

    #[test]
    fn random_macs_are_unicast_and_local() {
        let mac = random_mac().expect("entropy");
        assert_eq!(mac[0] & 0x03, 0x02);
    }

    #[test]
    fn argument_parsers_reject_what_the_guest_could_not_use() {
        assert!(parse_mac_arg("02:00:00:00:00:01").is_ok());
        assert!(parse_mac_arg("01:00:00:00:00:01").is_err());
        assert!(parse_mac_arg("nonsense").is_err());
        assert!(parse_cidr_arg("10.0.0.2/24").is_ok());
        assert!(parse_cidr_arg("fd00::2/64").is_ok());
        for bad in [
            "10.0.0.2",
            "10.0.0.2/33",
            "10.0.0/24",
            "x/24",
            "fd00::2/129",
        ] {
            assert!(parse_cidr_arg(bad).is_err(), "{bad}");
        }
        assert!(parse_ip_arg("10.0.0.1").is_ok());
        assert!(parse_ip_arg("10.0.0.1/24").is_err());
    }
}
