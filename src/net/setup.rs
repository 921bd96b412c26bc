//! Making and unmaking a pod's network: netns, CNI ADD per network, then in the netns a stable
//! MAC on each CNI interface, a persistent tap and the tc redirect between them. Every step is
//! recorded in the pod directory before it is taken; a failed setup is undone at once, and
//! [`teardown`] undoes whatever the record lists (CNI DEL in reverse order, then the netns,
//! which takes the taps, veths and tc filters with it).

use std::path::{Path, PathBuf};

use podvm_protocol::{GuestInterface, GuestNetwork, GuestRoute};
use serde::Serialize;
use serde_json::Value;

use super::cni::{self, CniResult, Invocation};
use super::ports::{self, PortMapping};
use super::spec::NetRequest;
use super::state::{self, Attachment, NetState};
use super::{config, dns, link, netns, passt, tc, NetError, PodNetwork, StreamNic, Tap};
use crate::image::config::Port;

/// What `status` shows of one network of a running pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NetworkStatus {
    /// The network's name.
    pub name: String,
    /// The pod's interface (`eth0`, ...).
    pub ifname: String,
    /// Its addresses (CIDR).
    pub addresses: Vec<String>,
}

/// Makes the pod's network as `request` says; `image_ports` resolve named `--port`s. On
/// failure everything made so far is undone (and the error says what failed).
pub fn setup(
    pod_dir: &Path,
    uuid: &str,
    request: &NetRequest,
    image_ports: &[Port],
) -> Result<PodNetwork, NetError> {
    let resolv_conf = |results: &[CniResult]| {
        let dns: Vec<_> = results.iter().map(|r| r.dns.clone()).collect();
        dns::resolv_conf(&request.dns, &dns)
    };
    if request.networks.is_empty() {
        return Ok(PodNetwork {
            resolv_conf: resolv_conf(&[]),
            hosts_entries: request.hosts_entries.clone(),
            ..Default::default()
        });
    }
    if !nix::unistd::geteuid().is_root() {
        return rootless(uuid, request, image_ports, resolv_conf(&[]));
    }
    // A record left by a podvm killed during an earlier attempt is undone first.
    teardown(pod_dir, uuid)?;
    let dir = config::config_dir(request.config_dir.as_deref());
    let configs = request
        .networks
        .iter()
        .map(|net| config::find(&dir, &net.name))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| NetError::Config {
            uuid: uuid.into(),
            source,
        })?;
    let port_err = |source| NetError::Port {
        uuid: uuid.into(),
        source,
    };
    let mappings = ports::resolve(&request.ports, image_ports).map_err(port_err)?;
    ports::check_free(&mappings).map_err(port_err)?;
    // Pods live in <pods>/<state>/<uuid>.
    if let Some(pods_root) = pod_dir.parent().and_then(Path::parent) {
        ports::check_not_published(pods_root, uuid, &mappings).map_err(port_err)?;
    }

    let made = make(pod_dir, uuid, request, &configs, &mappings);
    let (netns, results) = match made {
        Ok(made) => made,
        Err(err) => {
            if let Err(undo) = teardown(pod_dir, uuid) {
                eprintln!("podvm: {undo}");
            }
            return Err(err);
        }
    };
    let taps = (0..configs.len())
        .map(|index| Tap {
            name: tap_name(index),
            mac: link::pod_mac(uuid, index),
        })
        .collect::<Vec<_>>();
    Ok(PodNetwork {
        netns: Some(netns),
        guest: Some(guest_network(&taps, &results)),
        taps,
        resolv_conf: resolv_conf(&results),
        hosts_entries: request.hosts_entries.clone(),
        stream: None,
    })
}

/// An ordinary user's pod: the default network through passt (see [`super::passt`]); any
/// other network needs root.
fn rootless(
    uuid: &str,
    request: &NetRequest,
    image_ports: &[Port],
    resolv_conf: Option<String>,
) -> Result<PodNetwork, NetError> {
    let only_default = matches!(request.networks.as_slice(), [net] if net.name == "default" && net.args.is_empty());
    if !only_default {
        return Err(NetError::Rootless {
            uuid: uuid.into(),
            networks: request.networks.iter().map(|n| n.name.clone()).collect(),
        });
    }
    let mappings =
        ports::resolve(&request.ports, image_ports).map_err(|source| NetError::Port {
            uuid: uuid.into(),
            source,
        })?;
    let passt = passt::start(uuid, &passt::runtime_base(), &mappings)?;
    let mac = link::pod_mac(uuid, 0);
    Ok(PodNetwork {
        guest: Some(passt::guest_network(&mac)),
        resolv_conf,
        hosts_entries: request.hosts_entries.clone(),
        stream: Some(StreamNic {
            passt: std::sync::Arc::new(passt),
            mac,
        }),
        ..Default::default()
    })
}

/// The steps that create something; the caller undoes them on error.
fn make(
    pod_dir: &Path,
    uuid: &str,
    request: &NetRequest,
    configs: &[config::NetworkConfig],
    mappings: &[PortMapping],
) -> Result<(PathBuf, Vec<CniResult>), NetError> {
    let netns_path = netns::path_of(&format!("podvm-{uuid}"));
    let mut record = NetState {
        uuid: uuid.into(),
        netns: Some(netns_path.clone()),
        attachments: Vec::new(),
    };
    state::write(pod_dir, &record)?;
    netns::create(&netns_path).map_err(|source| NetError::Netns {
        uuid: uuid.into(),
        source,
    })?;
    let port_table: Vec<(u16, u16, String)> = mappings
        .iter()
        .map(|m| (m.host, m.container, m.protocol.clone()))
        .collect();
    // Ports go to the first network whose chain can map them (the portmap capability).
    let ports_on = configs.iter().position(|net| {
        net.plugins
            .iter()
            .any(|p| p["capabilities"]["portMappings"] == Value::Bool(true))
    });
    let mut results = Vec::new();
    for (index, (net, attach)) in configs.iter().zip(&request.networks).enumerate() {
        let runtime_config = if Some(index) == ports_on {
            cni::runtime_config(&port_table)
        } else {
            cni::runtime_config(&[])
        };
        record.attachments.push(Attachment {
            network: net.name.clone(),
            cni_version: net.cni_version.clone(),
            plugins: net.plugins.clone(),
            ifname: if_name(index),
            tap: tap_name(index),
            args: attach.args.clone(),
            runtime_config,
            result: None,
        });
        state::write(pod_dir, &record)?;
        let attachment = &record.attachments[index];
        let result =
            cni::add(net, &invocation(uuid, &netns_path, attachment)).map_err(|source| {
                NetError::Cni {
                    uuid: uuid.into(),
                    source,
                }
            })?;
        record.attachments[index].result =
            Some(serde_json::to_value(&result).expect("a CNI result always serializes"));
        state::write(pod_dir, &record)?;
        results.push(result);
    }
    if !mappings.is_empty() && ports_on.is_none() {
        eprintln!("podvm: pod {uuid}: no network has the portmap plugin: --port has no effect");
    }
    connect_taps(uuid, &netns_path, &results)?;
    Ok((netns_path, results))
}

/// In the netns: for each network, the stable MAC on its interface, a persistent tap, and the
/// redirect between them that lets only the guest's own MAC and addresses out.
fn connect_taps(uuid: &str, netns_path: &Path, results: &[CniResult]) -> Result<(), NetError> {
    let link_err = |source| NetError::Link {
        uuid: uuid.into(),
        source,
    };
    let netns_err = |source| NetError::Netns {
        uuid: uuid.into(),
        source,
    };
    let tc_err = |source| NetError::Tc {
        uuid: uuid.into(),
        source,
    };
    netns::run_in(netns_path, netns_err, || {
        for (index, result) in results.iter().enumerate() {
            let (ifname, tap) = (if_name(index), tap_name(index));
            let mac = link::pod_mac(uuid, index);
            let guest = tc::GuestIdentity::from_cidrs(mac, &addresses_of(result, &ifname))
                .map_err(tc_err)?;
            link::set_mac(&ifname, mac).map_err(link_err)?;
            link::create_tap(&tap).map_err(link_err)?;
            link::set_up(&tap, true).map_err(link_err)?;
            let (veth, tap) = (
                link::index(&ifname).map_err(link_err)?,
                link::index(&tap).map_err(link_err)?,
            );
            tc::connect_guarded(veth, tap, &guest).map_err(tc_err)?;
        }
        Ok(())
    })
}

fn invocation<'a>(uuid: &'a str, netns: &'a Path, attachment: &'a Attachment) -> Invocation<'a> {
    Invocation {
        container_id: uuid,
        netns,
        ifname: &attachment.ifname,
        args: &attachment.args,
        runtime_config: &attachment.runtime_config,
    }
}

/// `eth<index>`: the CNI interface in the netns, and the guest's name for its NIC.
fn if_name(index: usize) -> String {
    format!("eth{index}")
}

/// `tap<index>`.
fn tap_name(index: usize) -> String {
    format!("tap{index}")
}

/// The addresses (CIDR) CNI gave interface `ifname` (or gave without naming an interface).
fn addresses_of(result: &CniResult, ifname: &str) -> Vec<String> {
    result
        .ips
        .iter()
        .filter(|ip| {
            ip.interface
                .and_then(|i| result.interfaces.get(i))
                .is_none_or(|iface| iface.name == ifname)
        })
        .map(|ip| ip.address.clone())
        .collect()
}

/// The guest's interfaces (named as in the netns, with the pod's MACs and the CNI addresses of
/// the netns-side interface) and routes (a route without a gateway takes the gateway of the
/// address of its family, as the CNI IPAM convention is).
fn guest_network(taps: &[Tap], results: &[CniResult]) -> GuestNetwork {
    let mut network = GuestNetwork::default();
    for (index, (tap, result)) in taps.iter().zip(results).enumerate() {
        let ifname = if_name(index);
        let addresses = addresses_of(result, &ifname);
        network.interfaces.push(GuestInterface {
            mac: podvm_protocol::mac::format_mac(&tap.mac),
            name: Some(ifname),
            addresses,
            mtu: None,
        });
        for route in &result.routes {
            let v6 = route.dst.contains(':');
            let gateway = route.gw.clone().or_else(|| {
                result
                    .ips
                    .iter()
                    .filter(|ip| ip.address.contains(':') == v6)
                    .find_map(|ip| ip.gateway.clone())
            });
            let route = GuestRoute {
                destination: route.dst.clone(),
                gateway,
            };
            if !network.routes.contains(&route) {
                network.routes.push(route);
            }
        }
    }
    network
}

/// Undoes whatever the pod's record lists: CNI DEL per network in reverse order, then the
/// netns. Idempotent; a pod without a record has nothing to undo. When a step fails the record
/// stays (with the error returned) so that a later `gc` tries again.
pub fn teardown(pod_dir: &Path, uuid: &str) -> Result<(), NetError> {
    let Some(record) = state::read(pod_dir)? else {
        return Ok(());
    };
    let mut errors = Vec::new();
    let netns = record.netns.clone().unwrap_or_default();
    for attachment in record.attachments.iter().rev() {
        let net = attachment.network_config();
        let call = invocation(&record.uuid, &netns, attachment);
        if let Err(err) = cni::del(&net, &call, attachment.result.as_ref()) {
            errors.push(err.to_string());
        }
    }
    if let Some(path) = &record.netns {
        if let Err(err) = netns::delete(path) {
            errors.push(err.to_string());
        }
    }
    if !errors.is_empty() {
        return Err(NetError::Teardown {
            uuid: uuid.into(),
            errors: errors.join("; "),
        });
    }
    state::remove(pod_dir)?;
    Ok(())
}

/// The networks of a pod that has a record (a running pod, or one not yet cleaned).
pub fn status(pod_dir: &Path) -> Vec<NetworkStatus> {
    let Ok(Some(record)) = state::read(pod_dir) else {
        return Vec::new();
    };
    record
        .attachments
        .iter()
        .map(|attachment| NetworkStatus {
            name: attachment.network.clone(),
            ifname: attachment.ifname.clone(),
            addresses: attachment
                .result
                .clone()
                .and_then(|value| serde_json::from_value::<CniResult>(value).ok())
                .map(|result| result.ips.into_iter().map(|ip| ip.address).collect())
                .unwrap_or_default(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_network_from_cni_results() {
        let result: CniResult = serde_json::from_str(
            r#"{"interfaces":[{"name":"podvm0"},{"name":"veth1"},{"name":"eth0","sandbox":"/x"}],
                "ips":[{"interface":2,"address":"172.16.28.7/24","gateway":"172.16.28.1"}],
                "routes":[{"dst":"0.0.0.0/0"},{"dst":"10.0.0.0/8","gw":"172.16.28.254"}]}"#,
        )
        .expect("result");
        let taps = [Tap {
            name: "tap0".into(),
            mac: [2, 1, 2, 3, 4, 5],
        }];
        let guest = guest_network(&taps, &[result]);
        assert_eq!(guest.interfaces[0].mac, "02:01:02:03:04:05");
        assert_eq!(guest.interfaces[0].name.as_deref(), Some("eth0"));
        assert_eq!(guest.interfaces[0].addresses, ["172.16.28.7/24"]);
        assert_eq!(guest.routes[0].gateway.as_deref(), Some("172.16.28.1"));
        assert_eq!(guest.routes[1].gateway.as_deref(), Some("172.16.28.254"));
    }

    #[test]
    fn none_needs_no_namespace_and_no_record() {
        let dir = tempfile::tempdir().expect("tempdir");
        let request = NetRequest {
            hosts_entries: vec!["10.1.2.3\tdb".into()],
            ..Default::default()
        };
        let network = setup(dir.path(), "u", &request, &[]).expect("none");
        assert_eq!(network.netns, None);
        assert!(network.taps.is_empty() && network.guest.is_none());
        assert_eq!(network.hosts_entries, ["10.1.2.3\tdb"]);
        assert!(!state::path(dir.path()).exists());
        teardown(dir.path(), "u").expect("nothing to undo");
    }

    #[test]
    fn unknown_network_makes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let request = NetRequest {
            networks: vec![super::super::spec::NetAttachment {
                name: "nope".into(),
                args: String::new(),
            }],
            config_dir: Some(dir.path().join("net.d")),
            ..Default::default()
        };
        let err = setup(dir.path(), "u", &request, &[]).expect_err("unknown");
        assert!(
            err.to_string()
                .starts_with("pod u: unknown network \"nope\""),
            "{err}"
        );
        assert!(!state::path(dir.path()).exists());
    }
}

#[cfg(test)]
mod host_tests {
    use std::process::Command;

    use super::*;
    use crate::net::spec::NetAttachment;

    /// A bridge network private to this test, with masquerade and port mappings.
    const CONFIG: &str = r#"{"cniVersion":"1.0.0","name":"podvmtest","plugins":[
        {"type":"bridge","bridge":"podvmtest0","isGateway":true,"ipMasq":true,
         "ipam":{"type":"host-local","ranges":[[{"subnet":"10.251.7.0/24"}]],"dataDir":"DATA"}},
        {"type":"portmap","capabilities":{"portMappings":true}}]}"#;

    fn nat_rules_of(uuid: &str) -> usize {
        let output = Command::new("iptables-save")
            .args(["-t", "nat"])
            .output()
            .expect("iptables-save");
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter(|line| line.contains(uuid))
            .count()
    }

    fn in_netns(netns: &Path, command: &str) -> String {
        let output = Command::new("ip")
            .arg("netns")
            .arg("exec")
            .arg(netns.file_name().expect("name"))
            .args(["sh", "-c", command])
            .output()
            .expect("ip netns exec");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    #[test]
    fn real_cni_bridge_with_tap_and_redirect_then_teardown() {
        let ready = nix::unistd::Uid::effective().is_root()
            && Path::new("/usr/lib/cni/bridge").exists()
            && Command::new("ip").arg("-V").output().is_ok()
            && Command::new("iptables-save").arg("-V").output().is_ok();
        if !ready {
            eprintln!(
                "skipped: needs root, /usr/lib/cni (containernetworking-plugins), ip, iptables"
            );
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let net_d = dir.path().join("net.d");
        std::fs::create_dir(&net_d).expect("net.d");
        let data = dir.path().join("ipam");
        std::fs::write(
            net_d.join("test.conflist"),
            CONFIG.replace("DATA", &data.display().to_string()),
        )
        .expect("config");
        let uuid = uuid::Uuid::new_v4().to_string();
        let request = NetRequest {
            networks: vec![NetAttachment {
                name: "podvmtest".into(),
                args: String::new(),
            }],
            ports: vec![crate::net::spec::parse_port("80:18999").expect("port")],
            config_dir: Some(net_d),
            ..Default::default()
        };
        let network = match setup(dir.path(), &uuid, &request, &[]) {
            Ok(network) => network,
            Err(NetError::Tc {
                source: tc::TcError::NoDropAction { .. },
                ..
            }) => {
                // This host's kernel (e.g. a minimal one without modules) has no tc gact.
                eprintln!(
                    "skipped the connected checks: this kernel has no tc gact action; \
                     checking that the refused setup leaves nothing once torn down"
                );
                teardown(dir.path(), &uuid).expect("teardown");
                assert!(!state::path(dir.path()).exists());
                assert_eq!(nat_rules_of(&uuid), 0);
                assert!(!std::path::Path::new(&format!("/run/netns/podvm-{uuid}")).exists());
                return;
            }
            Err(other) => panic!("setup: {other:?}"),
        };
        let rules = nat_rules_of(&uuid);
        assert!(
            rules >= 2,
            "masquerade and DNAT rules name the pod: {rules}"
        );
        let netns = network.netns.clone().expect("netns");
        assert!(netns.exists());
        let guest = network.guest.clone().expect("guest network");
        assert!(
            guest.interfaces[0].addresses[0].starts_with("10.251.7."),
            "{guest:?}"
        );
        let links = in_netns(&netns, "ip -o link show");
        assert!(
            links.contains("tap0") && links.contains(&guest.interfaces[0].mac),
            "{links}"
        );
        let filters = in_netns(
            &netns,
            "tc filter show dev eth0 ingress; tc filter show dev tap0 ingress",
        );
        assert_eq!(
            filters.matches("Redirect to device eth0").count(),
            2,
            "IPv4 and ARP of the guest's own address: {filters}"
        );
        assert!(
            filters.contains("Redirect to device tap0") && filters.contains("gact action drop"),
            "{filters}"
        );
        assert_eq!(
            status(dir.path())[0].addresses,
            guest.interfaces[0].addresses
        );
        teardown(dir.path(), &uuid).expect("teardown");
        assert!(!netns.exists() && !state::path(dir.path()).exists());
        assert_eq!(nat_rules_of(&uuid), 0);
        teardown(dir.path(), &uuid).expect("idempotent");
        let _ = Command::new("ip")
            .args(["link", "del", "podvmtest0"])
            .status();
    }
}
