//! `--port` to port mappings: named ports looked up among the image's exposed ports (rkt names
//! docker ports `tcp-80`), numbers taken as they are; host ports checked to be free.

use std::path::Path;

use crate::image::config::Port;

use super::spec::PortRequest;

/// Errors resolving ports.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    /// The image has no port of that name.
    #[error("--port {name}:{host_port}: the image exposes no port named {name:?}; its ports: {known} (or give CONTAINERPORT:HOSTPORT)")]
    UnknownName {
        /// The name.
        name: String,
        /// The host port.
        host_port: u16,
        /// The image's port names.
        known: String,
    },
    /// The host port is taken.
    #[error("--port: host port {port}/{protocol} is already in use on this host ({source}); pick another host port")]
    InUse {
        /// The port.
        port: u16,
        /// tcp or udp.
        protocol: String,
        /// The bind error.
        source: std::io::Error,
    },
    /// Another pod publishes the host port.
    #[error("--port: host port {port}/{protocol} is already published by pod {pod}; pick another host port or stop that pod")]
    Published {
        /// The port.
        port: u16,
        /// tcp or udp.
        protocol: String,
        /// The other pod.
        pod: String,
    },
    /// Two `--port` flags want the same host port.
    #[error("--port: host port {0} is given twice")]
    Duplicate(u16),
}

/// A resolved mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortMapping {
    /// Host port.
    pub host: u16,
    /// Port in the pod.
    pub container: u16,
    /// `tcp` or `udp`.
    pub protocol: String,
}

/// Resolves the requests against the image's ports.
pub fn resolve(
    requests: &[PortRequest],
    image_ports: &[Port],
) -> Result<Vec<PortMapping>, PortError> {
    let mut mappings: Vec<PortMapping> = Vec::new();
    for request in requests {
        let mapping = match request.container.parse::<u16>() {
            Ok(container) => PortMapping {
                host: request.host_port,
                container,
                protocol: request.protocol.clone().unwrap_or_else(|| "tcp".into()),
            },
            Err(_) => {
                let port = image_ports
                    .iter()
                    .find(|port| port.name == request.container)
                    .ok_or_else(|| PortError::UnknownName {
                        name: request.container.clone(),
                        host_port: request.host_port,
                        known: known(image_ports),
                    })?;
                PortMapping {
                    host: request.host_port,
                    container: port.port,
                    protocol: port.protocol.clone(),
                }
            }
        };
        if mappings
            .iter()
            .any(|m| m.host == mapping.host && m.protocol == mapping.protocol)
        {
            return Err(PortError::Duplicate(mapping.host));
        }
        mappings.push(mapping);
    }
    Ok(mappings)
}

fn known(ports: &[Port]) -> String {
    if ports.is_empty() {
        return "none".into();
    }
    ports
        .iter()
        .map(|p| format!("{} ({}/{})", p.name, p.port, p.protocol))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Checks that each host port can be bound on this host (no server listens there).
pub fn check_free(mappings: &[PortMapping]) -> Result<(), PortError> {
    for mapping in mappings {
        let address = ("0.0.0.0", mapping.host);
        let bound = if mapping.protocol == "udp" {
            std::net::UdpSocket::bind(address).map(drop)
        } else {
            std::net::TcpListener::bind(address).map(drop)
        };
        bound.map_err(|source| PortError::InUse {
            port: mapping.host,
            protocol: mapping.protocol.clone(),
            source,
        })?;
    }
    Ok(())
}

/// Checks that no other pod's network record (`<pods>/*/*/net.json`: running pods, and killed
/// ones `gc` has not cleaned yet, whose NAT rules still stand) maps one of these host ports.
pub fn check_not_published(
    pods_root: &Path,
    uuid: &str,
    mappings: &[PortMapping],
) -> Result<(), PortError> {
    let records = std::fs::read_dir(pods_root)
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|state| {
            std::fs::read_dir(state.path())
                .into_iter()
                .flatten()
                .flatten()
        })
        .filter(|pod| pod.file_name().to_str() != Some(uuid))
        .filter_map(|pod| Some((pod.file_name(), super::state::read(&pod.path()).ok()??)));
    for (pod, record) in records {
        for attachment in &record.attachments {
            let published = attachment.runtime_config["portMappings"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            for mapping in mappings {
                let taken = published.iter().any(|p| {
                    p["hostPort"].as_u64() == Some(u64::from(mapping.host))
                        && p["protocol"].as_str() == Some(mapping.protocol.as_str())
                });
                if taken {
                    return Err(PortError::Published {
                        port: mapping.host,
                        protocol: mapping.protocol.clone(),
                        pod: pod.to_string_lossy().into_owned(),
                    });
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::spec::parse_port;

    fn image_ports() -> Vec<Port> {
        vec![Port {
            name: "tcp-80".into(),
            protocol: "tcp".into(),
            port: 80,
        }]
    }

    #[test]
    fn names_resolve_through_the_image() {
        let requests = [
            parse_port("tcp-80:8080").expect("named"),
            parse_port("53:5353/udp").expect("numbered"),
        ];
        let mappings = resolve(&requests, &image_ports()).expect("resolve");
        assert_eq!(
            mappings[0],
            PortMapping {
                host: 8080,
                container: 80,
                protocol: "tcp".into()
            }
        );
        assert_eq!(mappings[1].protocol, "udp");
        let err =
            resolve(&[parse_port("http:8080").expect("p")], &image_ports()).expect_err("unknown");
        assert!(err.to_string().contains("tcp-80 (80/tcp)"), "{err}");
        let twice = [
            parse_port("80:8080").expect("p"),
            parse_port("81:8080").expect("p"),
        ];
        assert!(matches!(
            resolve(&twice, &[]),
            Err(PortError::Duplicate(8080))
        ));
    }

    #[test]
    fn a_port_another_pod_publishes_is_refused() {
        let root = tempfile::tempdir().expect("tempdir");
        let other = root.path().join("run/other-pod");
        std::fs::create_dir_all(&other).expect("pod dir");
        let record = crate::net::state::NetState {
            uuid: "other-pod".into(),
            netns: None,
            attachments: vec![crate::net::state::Attachment {
                runtime_config: crate::net::cni::runtime_config(&[(8080, 80, "tcp".into())]),
                ..Default::default()
            }],
        };
        crate::net::state::write(&other, &record).expect("record");
        let wanted = |host, protocol: &str| PortMapping {
            host,
            container: 80,
            protocol: protocol.into(),
        };
        let err =
            check_not_published(root.path(), "me", &[wanted(8080, "tcp")]).expect_err("taken");
        assert!(err.to_string().contains("pod other-pod"), "{err}");
        check_not_published(
            root.path(),
            "me",
            &[wanted(8080, "udp"), wanted(8081, "tcp")],
        )
        .expect("free");
        check_not_published(root.path(), "other-pod", &[wanted(8080, "tcp")]).expect("itself");
    }

    #[test]
    fn a_listening_port_is_in_use() {
        let listener = std::net::TcpListener::bind("0.0.0.0:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let mapping = PortMapping {
            host: port,
            container: 80,
            protocol: "tcp".into(),
        };
        let err = check_free(std::slice::from_ref(&mapping)).expect_err("in use");
        assert!(err.to_string().contains(&port.to_string()), "{err}");
        drop(listener);
        check_free(&[mapping]).expect("free again");
    }
}
