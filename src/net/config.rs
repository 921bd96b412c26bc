//! CNI network configurations: `*.conf` (one plugin) and `*.conflist` (a plugin chain) files in
//! the config directory (default [`DEFAULT_CONFIG_DIR`], `--net-config DIR` or
//! `PODVM_NET_CONFIG`), plus the built-in networks `default` and `default-restricted`. A file's
//! network wins over a built-in of the same name; among files, the first by file name wins.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

/// Where podvm looks for network configs.
pub const DEFAULT_CONFIG_DIR: &str = "/etc/podvm/net.d";
/// The CNI version of the built-in networks.
const BUILTIN_CNI_VERSION: &str = "1.0.0";

/// Errors loading network configs.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config directory exists but cannot be read.
    #[error("cannot read the network config directory {path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A config file cannot be read or is malformed.
    #[error("network config {path}: {why}; fix or remove the file")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// No network of that name.
    #[error("unknown network {name:?}: not in {dir} (*.conf, *.conflist) and not built in; known networks: {known}")]
    Unknown {
        /// The name asked for.
        name: String,
        /// The config directory searched.
        dir: PathBuf,
        /// The names found.
        known: String,
    },
}

/// A network: a name and a chain of plugins (a `.conf` is a chain of one).
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkConfig {
    /// The network's name.
    pub name: String,
    /// Its `cniVersion`.
    pub cni_version: String,
    /// The plugin configs, in order.
    pub plugins: Vec<Value>,
    /// The file it came from; `None` for a built-in.
    pub source: Option<PathBuf>,
}

impl NetworkConfig {
    /// The config plugin `index` receives: its own object with the network's name and version.
    pub fn plugin_config(&self, index: usize) -> Value {
        let mut config = self.plugins[index].clone();
        if let Some(object) = config.as_object_mut() {
            object.insert("name".into(), json!(self.name));
            object.insert("cniVersion".into(), json!(self.cni_version));
        }
        config
    }

    /// The `type` of plugin `index`.
    pub fn plugin_type(&self, index: usize) -> &str {
        self.plugins[index]["type"].as_str().unwrap_or_default()
    }
}

/// The config directory: `dir` if given, else `PODVM_NET_CONFIG`, else [`DEFAULT_CONFIG_DIR`].
pub fn config_dir(dir: Option<&Path>) -> PathBuf {
    dir.map(Path::to_path_buf)
        .or_else(|| std::env::var_os("PODVM_NET_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_DIR))
}

/// Finds the network `name` in `dir` or among the built-ins.
pub fn find(dir: &Path, name: &str) -> Result<NetworkConfig, ConfigError> {
    let mut all = load_dir(dir)?;
    all.extend(builtins());
    if let Some(found) = all.iter().position(|net| net.name == name) {
        return Ok(all.swap_remove(found));
    }
    let mut known: Vec<String> = all.into_iter().map(|net| net.name).collect();
    known.dedup();
    Err(ConfigError::Unknown {
        name: name.into(),
        dir: dir.into(),
        known: known.join(", "),
    })
}

/// The networks defined by files in `dir` (none if it does not exist), in file name order.
pub fn load_dir(dir: &Path) -> Result<Vec<NetworkConfig>, ConfigError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(ConfigError::Dir {
                path: dir.into(),
                source,
            })
        }
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| {
            matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("conf" | "conflist" | "json")
            )
        })
        .collect();
    paths.sort();
    paths.iter().map(|path| load_file(path)).collect()
}

/// Reads one `.conf` or `.conflist` file.
pub fn load_file(path: &Path) -> Result<NetworkConfig, ConfigError> {
    let malformed = |why: String| ConfigError::Malformed {
        path: path.into(),
        why,
    };
    let text = std::fs::read_to_string(path).map_err(|err| malformed(err.to_string()))?;
    let value: Value =
        serde_json::from_str(&text).map_err(|err| malformed(format!("not JSON: {err}")))?;
    let is_list = path.extension().and_then(|e| e.to_str()) == Some("conflist");
    parse(value, is_list, Some(path.into())).map_err(malformed)
}

/// Checks and normalises a parsed config (a conflist when `is_list`).
fn parse(value: Value, is_list: bool, source: Option<PathBuf>) -> Result<NetworkConfig, String> {
    let name = value["name"]
        .as_str()
        .filter(|n| !n.is_empty())
        .ok_or("no \"name\"")?
        .to_string();
    let cni_version = value["cniVersion"]
        .as_str()
        .ok_or("no \"cniVersion\"")?
        .to_string();
    let plugins = if is_list {
        value["plugins"]
            .as_array()
            .filter(|p| !p.is_empty())
            .ok_or("a .conflist needs a non-empty \"plugins\" array")?
            .clone()
    } else {
        vec![value]
    };
    for (index, plugin) in plugins.iter().enumerate() {
        if plugin["type"].as_str().is_none_or(str::is_empty) {
            return Err(format!("plugin {} has no \"type\"", index + 1));
        }
    }
    Ok(NetworkConfig {
        name,
        cni_version,
        plugins,
        source,
    })
}

/// `default` (bridge `podvm0` on 172.16.28.0/24 with masquerade and a default route, as rkt's)
/// and `default-restricted` (bridge `podvm1` on 172.17.0.0/16: the host only, no route out).
pub fn builtins() -> Vec<NetworkConfig> {
    let bridge = |name: &str, bridge: &str, subnet: &str, outbound: bool| NetworkConfig {
        name: name.into(),
        cni_version: BUILTIN_CNI_VERSION.into(),
        plugins: vec![
            json!({
                "type": "bridge",
                "bridge": bridge,
                "isGateway": true,
                "isDefaultGateway": outbound,
                "ipMasq": outbound,
                "hairpinMode": true,
                "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]]},
            }),
            json!({"type": "portmap", "capabilities": {"portMappings": true}, "snat": true}),
        ],
        source: None,
    };
    vec![
        bridge("default", "podvm0", "172.16.28.0/24", true),
        bridge("default-restricted", "podvm1", "172.17.0.0/16", false),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_override_builtins_and_lists_are_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("10-mine.conflist"),
            r#"{"cniVersion":"0.4.0","name":"mine","plugins":[{"type":"ptp"},{"type":"portmap"}]}"#,
        )
        .expect("write");
        std::fs::write(
            dir.path().join("20-default.conf"),
            r#"{"cniVersion":"1.0.0","name":"default","type":"bridge","bridge":"x0"}"#,
        )
        .expect("write");
        let mine = find(dir.path(), "mine").expect("mine");
        assert_eq!(mine.plugins.len(), 2);
        assert_eq!(mine.plugin_type(1), "portmap");
        let config = mine.plugin_config(0);
        assert_eq!(
            (config["name"].as_str(), config["cniVersion"].as_str()),
            (Some("mine"), Some("0.4.0"))
        );
        let default = find(dir.path(), "default").expect("default");
        assert_eq!(default.plugins[0]["bridge"], "x0");
        assert!(default.source.is_some());
        let restricted = find(dir.path(), "default-restricted").expect("builtin");
        assert_eq!(restricted.plugins[0]["isDefaultGateway"], false);
        assert_eq!(restricted.source, None);
    }

    #[test]
    fn unknown_and_malformed_configs_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = find(dir.path(), "nope").expect_err("unknown");
        let text = err.to_string();
        assert!(
            text.contains("\"nope\"") && text.contains("default-restricted"),
            "{text}"
        );
        std::fs::write(dir.path().join("bad.conf"), "{not json").expect("write");
        let err = find(dir.path(), "default").expect_err("malformed");
        assert!(err.to_string().contains("bad.conf"), "{err}");
        std::fs::write(
            dir.path().join("bad.conf"),
            r#"{"cniVersion":"1.0.0","name":"x"}"#,
        )
        .expect("write");
        assert!(find(dir.path(), "x")
            .expect_err("no type")
            .to_string()
            .contains("type"));
        std::fs::write(dir.path().join("bad.conf"), "").expect("write");
        std::fs::remove_file(dir.path().join("bad.conf")).expect("rm");
        assert!(find(&dir.path().join("missing"), "default").is_ok());
    }
}
