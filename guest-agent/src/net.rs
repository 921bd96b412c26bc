//! Guest networking before the app starts: `lo` up (127.0.0.1/8), then each interface of the
//! boot spec's [`GuestNetwork`] found by MAC in /sys/class/net, renamed, given its MTU, brought
//! up and given its addresses, then the routes.
//!
//! Everything goes through the classic interface ioctls on a datagram socket (SIOCSIFNAME,
//! SIOCSIFMTU, SIOCSIFFLAGS, SIOCSIFADDR/SIOCSIFNETMASK for IPv4, `in6_ifreq` for IPv6,
//! SIOCADDRT): no netlink, no tools in the guest image. Extra IPv4 addresses become aliases
//! (`eth0:1`, ...), as ifconfig would make them. A failure stops the boot with an error naming the
//! interface: the app never runs on a half-configured network.

mod parse;
mod sys;

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use podvm_protocol::{GuestInterface, GuestNetwork, GuestRoute};

pub use self::parse::{parse_cidr, parse_mac, Cidr};
use self::sys::Sockets;

/// Where the kernel lists network interfaces.
const SYSFS_NET: &str = "/sys/class/net";
/// The loopback interface.
const LOOPBACK: &str = "lo";
/// Prefix of the temporary names used while swapping interface names.
const TEMPORARY_PREFIX: &str = "podvmtmp";

/// Errors configuring the guest network.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A value of the spec does not parse.
    #[error("network spec: {what} {value:?} is invalid: {reason}")]
    Spec {
        /// Which field.
        what: &'static str,
        /// The value.
        value: String,
        /// What is wrong.
        reason: String,
    },
    /// No interface has the MAC the host gave.
    #[error(
        "no network interface with MAC {mac} (interfaces: {found}); the VM lacks the \
         virtio-net device the host announced, or the guest kernel has no VIRTIO_NET"
    )]
    NoInterface {
        /// The MAC wanted.
        mac: String,
        /// What /sys/class/net lists ("name mac, ...").
        found: String,
    },
    /// /sys/class/net could not be read.
    #[error("cannot list network interfaces in {path}: {source}")]
    Sysfs {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A socket for the configuration ioctls could not be created.
    #[error("cannot create an {family} socket to configure the network: {source}")]
    Socket {
        /// "IPv4" or "IPv6".
        family: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// A configuration step failed.
    #[error("cannot {what} on {interface}: {source}")]
    Configure {
        /// What was attempted (e.g. "add address 10.0.0.2/24").
        what: String,
        /// The interface.
        interface: String,
        /// Why.
        source: std::io::Error,
    },
    /// A route could not be added.
    #[error("cannot add route {destination}{via}: {source}")]
    Route {
        /// The destination.
        destination: String,
        /// " via GATEWAY" or " dev IFNAME".
        via: String,
        /// Why.
        source: std::io::Error,
    },
}

/// Brings up `lo` and then applies `network`, if any.
pub fn configure(network: Option<&GuestNetwork>) -> Result<(), NetError> {
    let needs_v6 = network.is_some_and(uses_ipv6);
    let sockets = Sockets::open(needs_v6)?;
    let loopback = Cidr {
        addr: IpAddr::from([127, 0, 0, 1]),
        prefix: 8,
    };
    sockets.set_ipv4(LOOPBACK, 0, &loopback)?;
    sockets.set_up(LOOPBACK)?;
    let Some(network) = network else {
        return Ok(());
    };
    // Everything is parsed and found before anything changes.
    let mut current = Vec::with_capacity(network.interfaces.len());
    let mut addresses = Vec::with_capacity(network.interfaces.len());
    for interface in &network.interfaces {
        current.push(find_interface(Path::new(SYSFS_NET), interface)?);
        addresses.push(parse_addresses(interface)?);
    }
    let names = rename_all(&sockets, &network.interfaces, current)?;
    for ((interface, name), addresses) in network.interfaces.iter().zip(&names).zip(&addresses) {
        configure_interface(&sockets, interface.mtu, name, addresses)?;
    }
    for route in &network.routes {
        add_route(&sockets, route, names.first().map(String::as_str))?;
    }
    Ok(())
}

/// Whether any address or route of `network` is IPv6.
fn uses_ipv6(network: &GuestNetwork) -> bool {
    let addresses = network
        .interfaces
        .iter()
        .flat_map(|interface| &interface.addresses);
    let routes = network.routes.iter().map(|route| &route.destination);
    addresses.chain(routes).any(|text| text.contains(':'))
}

/// The current name of the interface with `interface`'s MAC.
fn find_interface(sysfs: &Path, interface: &GuestInterface) -> Result<String, NetError> {
    let mac = parse_mac(&interface.mac).ok_or_else(|| NetError::Spec {
        what: "interface MAC",
        value: interface.mac.clone(),
        reason: "expected aa:bb:cc:dd:ee:ff".into(),
    })?;
    find_by_mac(sysfs, &mac)
}

/// Gives each interface its wanted name; returns the final names. With several renames, every
/// interface first moves to a temporary name, so that swapped names (eth0 <-> eth1) work.
fn rename_all(
    sockets: &Sockets,
    interfaces: &[GuestInterface],
    mut names: Vec<String>,
) -> Result<Vec<String>, NetError> {
    let moves: Vec<(usize, &str)> = interfaces
        .iter()
        .zip(&names)
        .enumerate()
        .filter_map(|(index, (interface, name))| {
            let wanted = interface.name.as_deref()?;
            (wanted != name).then_some((index, wanted))
        })
        .collect();
    if moves.len() > 1 {
        for (index, _) in &moves {
            let temporary = format!("{TEMPORARY_PREFIX}{index}");
            sockets.rename(&names[*index], &temporary)?;
            names[*index] = temporary;
        }
    }
    for (index, wanted) in moves {
        sockets.rename(&names[index], wanted)?;
        names[index] = wanted.to_string();
    }
    Ok(names)
}

/// The addresses of `interface`, parsed.
fn parse_addresses(interface: &GuestInterface) -> Result<Vec<Cidr>, NetError> {
    interface
        .addresses
        .iter()
        .map(|text| {
            parse_cidr(text).map_err(|reason| NetError::Spec {
                what: "address",
                value: text.clone(),
                reason,
            })
        })
        .collect()
}

/// Sets the MTU of interface `name`, brings it up and gives it its addresses.
fn configure_interface(
    sockets: &Sockets,
    mtu: Option<u32>,
    name: &str,
    addresses: &[Cidr],
) -> Result<(), NetError> {
    if let Some(mtu) = mtu {
        sockets.set_mtu(name, mtu)?;
    }
    sockets.set_up(name)?;
    let mut aliases = 0;
    for address in addresses {
        match address.addr {
            IpAddr::V4(_) => {
                sockets.set_ipv4(name, aliases, address)?;
                aliases += 1;
            }
            IpAddr::V6(_) => sockets.add_ipv6(name, address)?,
        }
    }
    Ok(())
}

/// Adds `route`; a route without gateway goes out of `link` (the first interface).
fn add_route(sockets: &Sockets, route: &GuestRoute, link: Option<&str>) -> Result<(), NetError> {
    let spec_error = |what, value: &str, reason| NetError::Spec {
        what,
        value: value.to_string(),
        reason,
    };
    let destination = parse_cidr(&route.destination)
        .map_err(|reason| spec_error("route destination", &route.destination, reason))?;
    let gateway = match &route.gateway {
        Some(text) => Some(
            text.parse::<IpAddr>()
                .map_err(|err| spec_error("route gateway", text, err.to_string()))?,
        ),
        None => None,
    };
    if gateway.is_some_and(|gateway| gateway.is_ipv4() != destination.addr.is_ipv4()) {
        return Err(spec_error(
            "route",
            &route.destination,
            "the gateway and the destination are of different IP versions".into(),
        ));
    }
    let device = if gateway.is_none() { link } else { None };
    sockets
        .add_route(&destination, gateway, device)
        .map_err(|source| NetError::Route {
            destination: route.destination.clone(),
            via: match (&route.gateway, device) {
                (Some(gateway), _) => format!(" via {gateway}"),
                (None, Some(device)) => format!(" dev {device}"),
                (None, None) => String::new(),
            },
            source,
        })
}

/// The name of the interface whose `address` file in `sysfs` holds `mac`.
fn find_by_mac(sysfs: &Path, mac: &[u8; 6]) -> Result<String, NetError> {
    let entries = std::fs::read_dir(sysfs).map_err(|source| NetError::Sysfs {
        path: sysfs.to_path_buf(),
        source,
    })?;
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let address = std::fs::read_to_string(entry.path().join("address")).unwrap_or_default();
        if parse_mac(address.trim()).as_ref() == Some(mac) {
            return Ok(name);
        }
        found.push(format!("{name} {}", address.trim()));
    }
    found.sort();
    Err(NetError::NoInterface {
        mac: parse::format_mac(mac),
        found: if found.is_empty() {
            "none".into()
        } else {
            found.join(", ")
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_sysfs(entries: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, mac) in entries {
            std::fs::create_dir(dir.path().join(name)).expect("mkdir");
            std::fs::write(dir.path().join(name).join("address"), format!("{mac}\n"))
                .expect("write");
        }
        dir
    }

    #[test]
    fn interfaces_are_found_by_mac_in_any_case() {
        let sysfs = fake_sysfs(&[("lo", "00:00:00:00:00:00"), ("eth0", "02:aa:bb:cc:dd:ee")]);
        let mac = parse_mac("02:AA:BB:CC:DD:EE").expect("valid");
        assert_eq!(find_by_mac(sysfs.path(), &mac).expect("found"), "eth0");
    }

    #[test]
    fn a_missing_mac_lists_what_exists() {
        let sysfs = fake_sysfs(&[("eth0", "02:aa:bb:cc:dd:ee")]);
        let err = find_by_mac(sysfs.path(), &[2, 0, 0, 0, 0, 1]).expect_err("absent");
        let text = err.to_string();
        assert!(text.contains("02:00:00:00:00:01"), "{text}");
        assert!(text.contains("eth0 02:aa:bb:cc:dd:ee"), "{text}");
    }

    #[test]
    fn ipv6_is_needed_only_when_the_spec_has_some() {
        let mut network = GuestNetwork {
            interfaces: vec![GuestInterface {
                mac: "02:00:00:00:00:01".into(),
                addresses: vec!["10.0.0.2/24".into()],
                ..GuestInterface::default()
            }],
            routes: vec![GuestRoute {
                destination: "0.0.0.0/0".into(),
                gateway: Some("10.0.0.1".into()),
            }],
        };
        assert!(!uses_ipv6(&network));
        network.interfaces[0].addresses.push("fd00::2/64".into());
        assert!(uses_ipv6(&network));
    }
}

#[cfg(test)]
#[path = "net/netns_tests.rs"]
mod netns_tests;
