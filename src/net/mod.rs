//! Pod networking on the host: each pod gets its own network namespace, joined to CNI networks
//! (Debian's containernetworking-plugins) as a container would be; in that namespace a tap per
//! network is connected to the CNI veth by a tc redirect, and the VM's virtio-net device uses
//! the tap. The guest takes over the veth's identity: its MAC (set to one stable per pod) and
//! its addresses and routes from the CNI result (see [`PodNetwork::guest`]).
//!
//! [`setup::setup`] makes all of it and [`setup::teardown`] undoes it, driven by a record in the
//! pod directory written before each step ([`state`]), so a pod whose podvm was killed is
//! cleaned by `gc`. `--net=host` is refused: a VM has its own kernel and network stack.
//!
//! An ordinary user's pod (no root: no CNI, namespaces or taps) gets the default network from
//! passt instead ([`passt`]): a passt process of the user per pod, which the VM's NIC reaches
//! over a UNIX stream socket.

pub mod cni;
pub mod config;
pub mod dns;
pub mod link;
pub mod netns;
pub mod passt;
pub mod ports;
pub mod setup;
pub mod spec;
pub mod state;
pub mod stats;
pub mod tc;

use std::path::PathBuf;
use std::sync::Arc;

use podvm_protocol::GuestNetwork;

pub use self::setup::{setup, status, teardown, NetworkStatus};
pub use self::spec::{NetRequest, NET_ANNOTATION};

/// Errors of pod networking: what failed, for which pod.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A network config problem.
    #[error("pod {uuid}: {source}")]
    Config {
        /// The pod.
        uuid: String,
        /// Why.
        source: config::ConfigError,
    },
    /// A `--port` problem.
    #[error("pod {uuid}: {source}")]
    Port {
        /// The pod.
        uuid: String,
        /// Why.
        source: ports::PortError,
    },
    /// An ordinary user asked for CNI networks: CNI, namespaces and taps need root.
    #[error(
        "pod {uuid}: network {} needs root (CNI plugins, a network namespace, taps); a \
         rootless pod runs with the default network (user-mode, through passt) or --net=none",
        networks.join(",")
    )]
    Rootless {
        /// The pod.
        uuid: String,
        /// The networks asked for.
        networks: Vec<String>,
    },
    /// passt (rootless networking) failed.
    #[error(transparent)]
    Passt(#[from] passt::PasstError),
    /// A CNI plugin failed.
    #[error("pod {uuid}: {source}")]
    Cni {
        /// The pod.
        uuid: String,
        /// Why.
        source: cni::CniError,
    },
    /// The network namespace failed.
    #[error("pod {uuid}: {source}")]
    Netns {
        /// The pod.
        uuid: String,
        /// Why.
        source: netns::NetnsError,
    },
    /// A device step failed.
    #[error("pod {uuid}: {source}")]
    Link {
        /// The pod.
        uuid: String,
        /// Why.
        source: link::LinkError,
    },
    /// The tc redirect failed.
    #[error("pod {uuid}: {source}")]
    Tc {
        /// The pod.
        uuid: String,
        /// Why.
        source: tc::TcError,
    },
    /// The record in the pod directory failed.
    #[error(transparent)]
    State(#[from] state::StateError),
    /// The network request stored in the pod does not parse.
    #[error("pod {uuid}: malformed {NET_ANNOTATION} annotation: {source}")]
    Request {
        /// The pod.
        uuid: String,
        /// Why.
        source: serde_json::Error,
    },
    /// Steps of a teardown failed (each listed); the record is kept so that `gc` retries.
    #[error("pod {uuid}: network teardown incomplete: {errors}; `podvm gc` retries")]
    Teardown {
        /// The pod.
        uuid: String,
        /// What failed.
        errors: String,
    },
}

/// A tap the VM's virtio-net device opens (by name, inside [`PodNetwork::netns`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tap {
    /// The tap's name in the pod's netns.
    pub name: String,
    /// The guest NIC's MAC (the veth's, stable per pod).
    pub mac: [u8; 6],
}

/// What the VM needs of the pod's network.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodNetwork {
    /// The pod's network namespace (`None` with `--net=none`).
    pub netns: Option<PathBuf>,
    /// One tap per network, in order (the guest's eth0, eth1, ...).
    pub taps: Vec<Tap>,
    /// Interfaces and routes for the agent (`None`: loopback only).
    pub guest: Option<GuestNetwork>,
    /// The pod's /etc/resolv.conf.
    pub resolv_conf: Option<String>,
    /// Extra /etc/hosts lines.
    pub hosts_entries: Vec<String>,
    /// A rootless pod's NIC on passt (then there is no netns and no tap).
    pub stream: Option<StreamNic>,
}

/// A guest NIC whose frames go to passt over a UNIX stream socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamNic {
    /// The pod's passt (stopped when the last handle drops).
    pub passt: Arc<passt::Passt>,
    /// The guest NIC's MAC (stable per pod).
    pub mac: [u8; 6],
}

/// The pod's network request from its manifest annotation (absent: the default network).
pub fn request_from_annotation(uuid: &str, value: Option<&str>) -> Result<NetRequest, NetError> {
    match value {
        None => Ok(NetRequest {
            networks: spec::parse_nets(&[]).expect("the default request parses"),
            ..Default::default()
        }),
        Some(text) => serde_json::from_str(text).map_err(|source| NetError::Request {
            uuid: uuid.into(),
            source,
        }),
    }
}
