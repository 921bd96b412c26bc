//! Network flags of `run` and `prepare` (stored in the pod manifest as the
//! [`NET_ANNOTATION`] annotation) and the glue that makes and unmakes a pod's network around
//! its VM (`run`, `run-prepared`) and when a dead pod is cleaned (`gc`, `rm`, `stop --force`).

use std::path::PathBuf;

use clap::Args;

use crate::image::config::Port;
use crate::net::spec::{self, DnsRequest, SpecError};
use crate::net::{self, config, NetError, NetRequest, PodNetwork, NET_ANNOTATION};
use crate::pod::manifest::{NameValue, PodManifest};
use crate::pod::{Pod, PodError, PodStore};
use crate::vmm::devices::virtio::net::{NetBackend, NetConfig};

/// Network flags (rkt's), shared by `run` and `prepare`.
#[derive(Debug, Clone, Args)]
pub struct NetFlags {
    /// Networks to join: `default` (bridge podvm0 with NAT, the default), `default-restricted`
    /// (host only), `none` (loopback only), or a network from the config directory, with CNI
    /// arguments as `NAME:K=V;K2=V2`. Repeat the flag or give a comma list for several.
    /// `host` is refused: a pod is a VM with its own network stack; use --port instead.
    #[arg(long = "net", value_name = "NAME[:ARGS]")]
    net: Vec<String>,
    /// Directory of CNI network configs (*.conf, *.conflist) [default: $PODVM_NET_CONFIG or
    /// /etc/podvm/net.d].
    #[arg(long = "net-config", value_name = "DIR")]
    net_config: Option<PathBuf>,
    /// Publish a port on the host: NAME:HOSTPORT (a port the image exposes, e.g. tcp-80) or
    /// CONTAINERPORT:HOSTPORT[/tcp|/udp] (repeatable).
    #[arg(long = "port", value_name = "PORT:HOSTPORT")]
    port: Vec<String>,
    /// Name server for the pod's /etc/resolv.conf (repeatable); `host` copies the host's
    /// resolv.conf, `none` writes none. Default: what the network's CNI result says.
    #[arg(long = "dns", value_name = "IP")]
    dns: Vec<String>,
    /// DNS search domain (repeatable).
    #[arg(long = "dns-search", value_name = "DOMAIN")]
    dns_search: Vec<String>,
    /// resolv.conf option, e.g. ndots:2 (repeatable).
    #[arg(long = "dns-opt", value_name = "OPTION")]
    dns_opt: Vec<String>,
    /// DNS local domain.
    #[arg(long = "dns-domain", value_name = "DOMAIN")]
    dns_domain: Option<String>,
    /// Extra /etc/hosts entry IP=HOSTNAME (repeatable); `host` copies the host's /etc/hosts.
    #[arg(long = "hosts-entry", value_name = "IP=HOSTNAME")]
    hosts_entry: Vec<String>,
}

/// Errors in network flags.
#[derive(Debug, thiserror::Error)]
pub enum NetFlagsError {
    /// A flag does not parse.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// A network is unknown or its config is malformed.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
}

impl NetFlags {
    /// The request these flags make, checked (networks exist, configs parse).
    pub fn request(&self) -> Result<NetRequest, NetFlagsError> {
        let networks = spec::parse_nets(&self.net)?;
        let ports = self
            .port
            .iter()
            .map(|p| spec::parse_port(p))
            .collect::<Result<Vec<_>, _>>()?;
        if networks.is_empty() && !ports.is_empty() {
            return Err(SpecError::PortWithoutNetwork.into());
        }
        spec::check_dns(&self.dns)?;
        let dir = config::config_dir(self.net_config.as_deref());
        for network in &networks {
            config::find(&dir, &network.name)?;
        }
        Ok(NetRequest {
            networks,
            ports,
            dns: DnsRequest {
                servers: self.dns.clone(),
                search: self.dns_search.clone(),
                options: self.dns_opt.clone(),
                domain: self.dns_domain.clone(),
            },
            hosts_entries: spec::parse_hosts_entries(&self.hosts_entry)?,
            config_dir: self.net_config.clone(),
        })
    }

    /// The request as the pod manifest annotation.
    pub fn annotation(&self) -> Result<NameValue, NetFlagsError> {
        let request = self.request()?;
        Ok(NameValue {
            name: NET_ANNOTATION.into(),
            value: serde_json::to_string(&request).expect("a request always serializes"),
        })
    }
}

/// Releases a pod's network when dropped (the pod is found again: it moves between states).
#[derive(Debug)]
pub struct Release {
    pods: PodStore,
    uuid: String,
}

impl Drop for Release {
    fn drop(&mut self) {
        if let Err(err) = self.pods.find(&self.uuid).and_then(|pod| release(&pod)) {
            eprintln!("podvm: {err}");
        }
    }
}

/// Makes the pod's network from its manifest (before its VM starts); it is released when the
/// returned [`Release`] drops.
pub fn setup(
    pods: &PodStore,
    pod: &Pod,
    manifest: &PodManifest,
    image_ports: &[Port],
) -> Result<(PodNetwork, Release), NetError> {
    let annotation = manifest.annotation(NET_ANNOTATION);
    let request = net::request_from_annotation(&pod.uuid, annotation.as_deref())?;
    let network = net::setup(&pod.dir, &pod.uuid, &request, image_ports)?;
    let release = Release {
        pods: pods.clone(),
        uuid: pod.uuid.clone(),
    };
    Ok((network, release))
}

/// The VM's NICs: one virtio-net device on each tap of the pod's netns, with the tap's MAC; or
/// (rootless) one on passt's socket.
pub fn vm_nets(network: &PodNetwork) -> Vec<NetConfig> {
    let taps = network.taps.iter().map(|tap| NetConfig {
        backend: NetBackend::Tap {
            name: tap.name.clone(),
            netns: network.netns.clone(),
        },
        mac: tap.mac,
    });
    let stream = network.stream.iter().map(|nic| NetConfig {
        backend: NetBackend::UnixStream {
            path: nic.passt.socket().to_path_buf(),
        },
        mac: nic.mac,
    });
    taps.chain(stream).collect()
}

/// Undoes the network of `pod` (nothing if it has none); the error keeps the pod for a later
/// `gc`.
pub fn release(pod: &Pod) -> Result<(), PodError> {
    net::teardown(&pod.dir, &pod.uuid).map_err(|err| PodError::Io {
        what: "cannot release the network of pod in",
        path: pod.dir.clone(),
        source: std::io::Error::other(err.to_string()),
    })
}

/// `networks=NAME:ip4=ADDR,...` for `status` (rkt's format), when the pod has networks.
pub fn status_line(networks: &[net::NetworkStatus]) -> Option<String> {
    if networks.is_empty() {
        return None;
    }
    let items: Vec<String> = networks
        .iter()
        .flat_map(|net| {
            net.addresses.iter().map(move |address| {
                let ip = address.split('/').next().unwrap_or(address);
                let family = if ip.contains(':') { "ip6" } else { "ip4" };
                format!("{}:{family}={ip}", net.name)
            })
        })
        .collect();
    Some(format!("networks={}", items.join(",")))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        net: NetFlags,
    }

    fn flags(line: &str) -> NetFlags {
        Cli::try_parse_from(std::iter::once("x").chain(line.split_whitespace()))
            .expect("flags parse")
            .net
    }

    #[test]
    fn flags_make_a_request_that_round_trips_through_the_manifest() {
        let net = flags("--net default --port 80:8080 --dns 1.2.3.4 --dns-search a.example --hosts-entry 10.1.2.3=db");
        let annotation = net.annotation().expect("annotation");
        assert_eq!(annotation.name, NET_ANNOTATION);
        let request = net::request_from_annotation("u", Some(&annotation.value)).expect("parse");
        assert_eq!(request.networks[0].name, "default");
        assert_eq!(request.ports[0].host_port, 8080);
        assert_eq!(request.dns.servers, ["1.2.3.4"]);
        assert_eq!(request.hosts_entries, ["10.1.2.3\tdb"]);
    }

    #[test]
    fn bad_flags_fail_before_any_pod_exists() {
        for bad in [
            "--net host",
            "--net none --port 80:8080",
            "--net nosuchnet",
            "--dns x",
            "--port 80",
        ] {
            assert!(flags(bad).request().is_err(), "{bad}");
        }
        let none = net::request_from_annotation("u", None).expect("default");
        assert_eq!(none.networks[0].name, "default");
    }

    #[test]
    fn status_lists_addresses_by_family() {
        let networks = [net::NetworkStatus {
            name: "default".into(),
            ifname: "eth0".into(),
            addresses: vec!["172.16.28.5/24".into(), "fd00::5/64".into()],
        }];
        assert_eq!(
            status_line(&networks).as_deref(),
            Some("networks=default:ip4=172.16.28.5,default:ip6=fd00::5")
        );
        assert_eq!(status_line(&[]), None);
    }
}
