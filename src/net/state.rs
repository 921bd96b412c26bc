//! The record of a pod's network in its directory (`net.json`), written BEFORE each step that
//! creates something (the netns, each CNI ADD), so that teardown — after a normal exit, a failed
//! setup, or by `gc` after a `kill -9` — knows everything that may exist and undoes it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::config::NetworkConfig;

/// The file name in the pod directory.
pub const STATE_FILE: &str = "net.json";

/// Errors with the record.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// It cannot be read or written.
    #[error("pod network record {path}: cannot {what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// It does not parse.
    #[error("pod network record {path} is malformed ({source}); remove the pod's netns ({netns_hint}) by hand, then the file")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// Where pod namespaces are.
        netns_hint: &'static str,
        /// Why.
        source: serde_json::Error,
    },
}

/// One network attachment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Attachment {
    /// The network's name.
    pub network: String,
    /// Its `cniVersion`.
    pub cni_version: String,
    /// Its plugin chain, as used for ADD (DEL needs the same).
    pub plugins: Vec<Value>,
    /// The interface in the netns (`eth0`, ...).
    pub ifname: String,
    /// The tap connected to it (`tap0`, ...).
    pub tap: String,
    /// CNI_ARGS.
    #[serde(default)]
    pub args: String,
    /// The runtimeConfig given (port mappings).
    #[serde(default)]
    pub runtime_config: Value,
    /// The ADD result, once ADD succeeded.
    #[serde(default)]
    pub result: Option<Value>,
}

impl Attachment {
    /// The network config this attachment was made with.
    pub fn network_config(&self) -> NetworkConfig {
        NetworkConfig {
            name: self.network.clone(),
            cni_version: self.cni_version.clone(),
            plugins: self.plugins.clone(),
            source: None,
        }
    }
}

/// The pod's network record.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NetState {
    /// The pod (CNI_CONTAINERID).
    pub uuid: String,
    /// The pod's network namespace, once its creation started.
    pub netns: Option<PathBuf>,
    /// The attachments whose ADD started, in order.
    pub attachments: Vec<Attachment>,
}

/// The record's path in `pod_dir`.
pub fn path(pod_dir: &Path) -> PathBuf {
    pod_dir.join(STATE_FILE)
}

/// Reads the record; `None` when the pod has none.
pub fn read(pod_dir: &Path) -> Result<Option<NetState>, StateError> {
    let path = path(pod_dir);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StateError::Io {
                what: "read",
                path,
                source,
            })
        }
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| StateError::Malformed {
            path,
            netns_hint: super::netns::NETNS_DIR,
            source,
        })
}

/// Writes the record atomically and durably.
pub fn write(pod_dir: &Path, state: &NetState) -> Result<(), StateError> {
    let path = path(pod_dir);
    let bytes = serde_json::to_vec_pretty(state).expect("the record always serializes");
    let io = |what| {
        let path = path.clone();
        move |source| StateError::Io { what, path, source }
    };
    crate::private::write_atomic(&path, &bytes).map_err(io("write"))
}

/// Removes the record (a missing one is fine).
pub fn remove(pod_dir: &Path) -> Result<(), StateError> {
    let path = path(pod_dir);
    match std::fs::remove_file(&path) {
        Err(source) if source.kind() != std::io::ErrorKind::NotFound => Err(StateError::Io {
            what: "remove",
            path,
            source,
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_absence() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(read(dir.path()).expect("read"), None);
        let state = NetState {
            uuid: "u".into(),
            netns: Some("/run/netns/podvm-u".into()),
            attachments: vec![Attachment {
                network: "default".into(),
                ifname: "eth0".into(),
                ..Default::default()
            }],
        };
        write(dir.path(), &state).expect("write");
        assert_eq!(read(dir.path()).expect("read"), Some(state));
        remove(dir.path()).expect("remove");
        remove(dir.path()).expect("idempotent");
        std::fs::write(path(dir.path()), "{").expect("write");
        assert!(read(dir.path())
            .expect_err("malformed")
            .to_string()
            .contains("net.json"));
    }
}
