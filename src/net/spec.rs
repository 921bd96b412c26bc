//! What a pod asks of the network, from the command line: `--net`, `--port`, `--dns*`,
//! `--hosts-entry`. Parsed at `prepare` time and stored in the pod manifest (one annotation, see
//! [`NET_ANNOTATION`]) so that `run-prepared` uses the same request.

use serde::{Deserialize, Serialize};

/// Pod annotation holding the JSON of a [`NetRequest`].
pub const NET_ANNOTATION: &str = "podvm.io/network";

/// Errors in network flags.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// `--net=host` cannot be given to a VM.
    #[error(
        "--net=host is not supported: a pod is a VM with its own kernel and cannot share the \
         host's network stack; use --net=default (the default) with --port NAME:HOSTPORT to \
         reach the pod's services from the host"
    )]
    HostNetwork,
    /// A `--net` value that does not parse.
    #[error("--net {value:?}: {why}; expected default, none, NAME or NAME:K=V;K2=V2")]
    Net {
        /// The value.
        value: String,
        /// What is wrong.
        why: &'static str,
    },
    /// A `--port` value that does not parse.
    #[error(
        "--port {value:?}: {why}; expected NAME:HOSTPORT or CONTAINERPORT:HOSTPORT[/tcp|/udp]"
    )]
    Port {
        /// The value.
        value: String,
        /// What is wrong.
        why: &'static str,
    },
    /// A `--hosts-entry` value that does not parse.
    #[error("--hosts-entry {value:?}: expected IP=HOSTNAME (or `host`)")]
    HostsEntry {
        /// The value.
        value: String,
    },
    /// A `--dns` value that is no IP address.
    #[error("--dns {value:?}: expected an IP address, `host` or `none`")]
    Dns {
        /// The value.
        value: String,
    },
    /// Ports with `--net=none`.
    #[error("--port needs a network: it cannot be used with --net=none")]
    PortWithoutNetwork,
}

/// One network the pod joins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetAttachment {
    /// Network name (`default`, `default-restricted` or a config's `name`).
    pub name: String,
    /// CNI_ARGS for its plugins (`K=V;K2=V2`), empty when none.
    #[serde(default)]
    pub args: String,
}

/// A `--port`: a container port (by image port name or number) published on a host port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortRequest {
    /// Image port name (e.g. `tcp-80`, `http`) or a number.
    pub container: String,
    /// Host port.
    pub host_port: u16,
    /// `tcp` or `udp`; `None` for a named port (the image says).
    #[serde(default)]
    pub protocol: Option<String>,
}

/// How the pod's /etc/resolv.conf is made.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsRequest {
    /// `--dns` servers; `host` copies the host's resolv.conf, `none` writes none.
    #[serde(default)]
    pub servers: Vec<String>,
    /// `--dns-search`.
    #[serde(default)]
    pub search: Vec<String>,
    /// `--dns-opt`.
    #[serde(default)]
    pub options: Vec<String>,
    /// `--dns-domain`.
    #[serde(default)]
    pub domain: Option<String>,
}

/// Everything the pod asked of the network.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetRequest {
    /// Networks, in order (the first gets `eth0`); empty means `--net=none`.
    pub networks: Vec<NetAttachment>,
    /// Published ports.
    #[serde(default)]
    pub ports: Vec<PortRequest>,
    /// DNS.
    #[serde(default)]
    pub dns: DnsRequest,
    /// Extra /etc/hosts lines (`IP NAME`).
    #[serde(default)]
    pub hosts_entries: Vec<String>,
    /// Directory of network configs (`--net-config`).
    #[serde(default)]
    pub config_dir: Option<std::path::PathBuf>,
}

/// Parses the `--net` values (each may be a comma list): none given means `default`.
pub fn parse_nets(values: &[String]) -> Result<Vec<NetAttachment>, SpecError> {
    let mut nets: Vec<NetAttachment> = Vec::new();
    let items: Vec<&str> = values
        .iter()
        .flat_map(|value| split_net_list(value))
        .collect();
    if items.is_empty() {
        return Ok(vec![NetAttachment {
            name: "default".into(),
            args: String::new(),
        }]);
    }
    for item in &items {
        let (name, args) = item.split_once(':').unwrap_or((item, ""));
        let bad = |why| SpecError::Net {
            value: (*item).to_string(),
            why,
        };
        match name {
            "host" => return Err(SpecError::HostNetwork),
            "none" if items.len() > 1 => return Err(bad("`none` cannot be combined")),
            "none" => return Ok(Vec::new()),
            "" => return Err(bad("empty network name")),
            _ => {}
        }
        if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(bad(
                "a network name has only letters, digits, `-`, `_`, `.`",
            ));
        }
        if args
            .split(';')
            .any(|pair| !pair.is_empty() && !pair.contains('='))
        {
            return Err(bad("CNI arguments are K=V pairs separated by `;`"));
        }
        if nets.iter().any(|n| n.name == name) {
            return Err(bad("network given twice"));
        }
        nets.push(NetAttachment {
            name: name.into(),
            args: args.into(),
        });
    }
    Ok(nets)
}

/// Splits `a,b:K=V;K2=V2,c` at the commas that start a new network (CNI_ARGS have none).
fn split_net_list(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// Parses one `--port`.
pub fn parse_port(value: &str) -> Result<PortRequest, SpecError> {
    let bad = |why| SpecError::Port {
        value: value.to_string(),
        why,
    };
    let (container, host) = value.rsplit_once(':').ok_or_else(|| bad("no `:`"))?;
    let (host, protocol) = match host.split_once('/') {
        Some((port, proto @ ("tcp" | "udp"))) => (port, Some(proto.to_string())),
        Some(_) => return Err(bad("the protocol is tcp or udp")),
        None => (host, None),
    };
    let host_port: u16 = host
        .parse()
        .ok()
        .filter(|port| *port != 0)
        .ok_or_else(|| bad("the host port is a number from 1 to 65535"))?;
    if container.is_empty() {
        return Err(bad("empty container port"));
    }
    let numeric = container.chars().all(|c| c.is_ascii_digit());
    if numeric && container.parse::<u16>().ok().filter(|p| *p != 0).is_none() {
        return Err(bad("the container port is a number from 1 to 65535"));
    }
    if !numeric && protocol.is_some() {
        return Err(bad("a named port takes its protocol from the image"));
    }
    let protocol = protocol.or_else(|| numeric.then(|| "tcp".to_string()));
    Ok(PortRequest {
        container: container.into(),
        host_port,
        protocol,
    })
}

/// Parses `--hosts-entry` values into /etc/hosts lines; `host` takes the host's /etc/hosts.
pub fn parse_hosts_entries(values: &[String]) -> Result<Vec<String>, SpecError> {
    let mut lines = Vec::new();
    for value in values {
        if value == "host" {
            let text = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
            lines.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(String::from),
            );
            continue;
        }
        let bad = || SpecError::HostsEntry {
            value: value.clone(),
        };
        let (ip, name) = value.split_once('=').ok_or_else(bad)?;
        if ip.parse::<std::net::IpAddr>().is_err()
            || name.is_empty()
            || name.chars().any(|c| c.is_whitespace())
        {
            return Err(bad());
        }
        lines.push(format!("{ip}\t{name}"));
    }
    Ok(lines)
}

/// Checks `--dns` values: IP addresses, or one of `host`, `none`.
pub fn check_dns(servers: &[String]) -> Result<(), SpecError> {
    for server in servers {
        let special = matches!(server.as_str(), "host" | "none") && servers.len() == 1;
        if !special && server.parse::<std::net::IpAddr>().is_err() {
            return Err(SpecError::Dns {
                value: server.clone(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(values: &[&str]) -> Vec<String> {
        values.iter().map(|v| v.to_string()).collect()
    }

    #[test]
    fn nets_default_none_names_args_and_lists() {
        assert_eq!(parse_nets(&[]).expect("ok")[0].name, "default");
        assert!(parse_nets(&strings(&["none"])).expect("ok").is_empty());
        let nets = parse_nets(&strings(&["default,mynet:IP=10.1.0.9;X=1", "other"])).expect("ok");
        let names: Vec<&str> = nets.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["default", "mynet", "other"]);
        assert_eq!(nets[1].args, "IP=10.1.0.9;X=1");
    }

    #[test]
    fn bad_nets_are_refused_with_the_alternative() {
        let host = parse_nets(&strings(&["host"])).expect_err("host");
        assert!(host.to_string().contains("--port"), "{host}");
        for bad in ["none,default", "a:b", "bad/name", "x,x"] {
            assert!(parse_nets(&strings(&[bad])).is_err(), "{bad}");
        }
    }

    #[test]
    fn ports_by_name_or_number() {
        let named = parse_port("http:8080").expect("named");
        assert_eq!((named.container.as_str(), named.host_port), ("http", 8080));
        assert_eq!(named.protocol, None);
        let numbered = parse_port("53:5353/udp").expect("numbered");
        assert_eq!(numbered.protocol.as_deref(), Some("udp"));
        assert_eq!(
            parse_port("80:8080").expect("tcp").protocol.as_deref(),
            Some("tcp")
        );
        for bad in [
            "80",
            "80:0",
            "80:99999",
            ":80",
            "80:81/sctp",
            "http:81/udp",
            "0:80",
        ] {
            assert!(parse_port(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hosts_entries_and_dns_are_checked() {
        let lines = parse_hosts_entries(&strings(&["10.1.2.3=db"])).expect("ok");
        assert_eq!(lines, ["10.1.2.3\tdb"]);
        assert!(parse_hosts_entries(&strings(&["db=10.1.2.3"])).is_err());
        assert!(check_dns(&strings(&["1.2.3.4", "::1"])).is_ok());
        assert!(check_dns(&strings(&["host"])).is_ok());
        assert!(check_dns(&strings(&["host", "1.2.3.4"])).is_err());
        assert!(check_dns(&strings(&["dns.example"])).is_err());
    }
}
