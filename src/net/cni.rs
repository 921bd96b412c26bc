//! Running CNI plugins per the CNI spec (versions 0.3.x, 0.4.0 and 1.0.0, as Debian's
//! containernetworking-plugins speak): the command in `CNI_*` variables, the config on stdin,
//! the result (or a JSON error) on stdout. A network's plugin chain is ADDed in order, each
//! plugin getting the previous one's result as `prevResult`, and DELeted in reverse.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::config::NetworkConfig;

/// Where plugins are looked for unless `PODVM_CNI_PATH` says otherwise (Debian's, then the
/// upstream default).
pub const DEFAULT_CNI_PATH: &str = "/usr/lib/cni:/opt/cni/bin";

/// Errors running CNI plugins.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    /// The plugin binary is not in the CNI path.
    #[error("network {network}: CNI plugin {plugin:?} not found in {path}; install Debian's containernetworking-plugins or set PODVM_CNI_PATH")]
    NotFound {
        /// The network.
        network: String,
        /// The plugin type.
        plugin: String,
        /// The search path.
        path: String,
    },
    /// The plugin could not be run.
    #[error("network {network}: cannot run CNI plugin {plugin}: {source}")]
    Spawn {
        /// The network.
        network: String,
        /// The plugin binary.
        plugin: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The plugin reported an error.
    #[error("network {network}: CNI plugin {plugin} {command} failed: {message}")]
    Plugin {
        /// The network.
        network: String,
        /// The plugin type.
        plugin: String,
        /// ADD or DEL.
        command: &'static str,
        /// The plugin's message (its JSON error's `msg` and `details`, or its output).
        message: String,
    },
    /// The plugin's result did not parse.
    #[error(
        "network {network}: CNI plugin {plugin} returned a malformed result ({source}): {output}"
    )]
    Result {
        /// The network.
        network: String,
        /// The plugin type.
        plugin: String,
        /// Why.
        source: serde_json::Error,
        /// The output.
        output: String,
    },
}

/// A CNI result (the fields podvm uses; 0.3.x to 1.0.0).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniResult {
    /// Interfaces the plugins made.
    #[serde(default)]
    pub interfaces: Vec<CniInterface>,
    /// Addresses.
    #[serde(default)]
    pub ips: Vec<CniIp>,
    /// Routes.
    #[serde(default)]
    pub routes: Vec<CniRoute>,
    /// DNS settings.
    #[serde(default)]
    pub dns: CniDns,
}

/// An interface in a CNI result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniInterface {
    /// Its name.
    pub name: String,
    /// Its MAC address.
    #[serde(default)]
    pub mac: String,
    /// The netns it is in; empty for host-side interfaces.
    #[serde(default)]
    pub sandbox: String,
}

/// An address in a CNI result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniIp {
    /// `IP/prefix`.
    pub address: String,
    /// The gateway, if any.
    #[serde(default)]
    pub gateway: Option<String>,
    /// Index into `interfaces`.
    #[serde(default)]
    pub interface: Option<usize>,
}

/// A route in a CNI result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniRoute {
    /// Destination `IP/prefix`.
    pub dst: String,
    /// Next hop; absent: the gateway of the address of the same family.
    #[serde(default)]
    pub gw: Option<String>,
}

/// DNS settings in a CNI result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniDns {
    /// Name servers.
    #[serde(default)]
    pub nameservers: Vec<String>,
    /// Local domain.
    #[serde(default)]
    pub domain: Option<String>,
    /// Search domains.
    #[serde(default)]
    pub search: Vec<String>,
    /// Resolver options.
    #[serde(default)]
    pub options: Vec<String>,
}

/// The per-attachment parameters of a plugin call.
#[derive(Debug, Clone)]
pub struct Invocation<'a> {
    /// `CNI_CONTAINERID` (the pod uuid).
    pub container_id: &'a str,
    /// `CNI_NETNS`.
    pub netns: &'a Path,
    /// `CNI_IFNAME`.
    pub ifname: &'a str,
    /// `CNI_ARGS`.
    pub args: &'a str,
    /// `runtimeConfig` for plugins that declare the matching capability.
    pub runtime_config: &'a Value,
}

/// The CNI plugin search path.
pub fn cni_path() -> String {
    std::env::var("PODVM_CNI_PATH").unwrap_or_else(|_| DEFAULT_CNI_PATH.into())
}

/// ADDs the network's plugin chain; returns the last plugin's result.
pub fn add(net: &NetworkConfig, call: &Invocation<'_>) -> Result<CniResult, CniError> {
    let mut prev: Option<Value> = None;
    for index in 0..net.plugins.len() {
        let config = request(net, index, call, prev.as_ref());
        let output = exec(net, index, "ADD", call, &config)?;
        prev = Some(
            serde_json::from_slice(&output).map_err(|source| CniError::Result {
                network: net.name.clone(),
                plugin: net.plugin_type(index).into(),
                source,
                output: String::from_utf8_lossy(&output).into(),
            })?,
        );
    }
    let last = prev.unwrap_or(Value::Null);
    serde_json::from_value(last.clone()).map_err(|source| CniError::Result {
        network: net.name.clone(),
        plugin: net.plugin_type(net.plugins.len() - 1).into(),
        source,
        output: last.to_string(),
    })
}

/// DELetes the network's plugin chain in reverse order, with `prev` (the ADD result, if any)
/// as `prevResult`. Every plugin is called; the first error is returned.
pub fn del(
    net: &NetworkConfig,
    call: &Invocation<'_>,
    prev: Option<&Value>,
) -> Result<(), CniError> {
    let mut first_error = None;
    for index in (0..net.plugins.len()).rev() {
        let config = request(net, index, call, prev);
        if let Err(err) = exec(net, index, "DEL", call, &config) {
            first_error.get_or_insert(err);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// The stdin config of plugin `index`: its config, `prevResult`, and the `runtimeConfig` keys
/// of the capabilities it declares.
fn request(
    net: &NetworkConfig,
    index: usize,
    call: &Invocation<'_>,
    prev: Option<&Value>,
) -> Value {
    let mut config = net.plugin_config(index);
    let capabilities = config["capabilities"].clone();
    let Some(object) = config.as_object_mut() else {
        return config;
    };
    if let Some(prev) = prev {
        object.insert("prevResult".into(), prev.clone());
    }
    let mut runtime = serde_json::Map::new();
    if let (Some(caps), Some(given)) = (capabilities.as_object(), call.runtime_config.as_object()) {
        for (key, value) in given {
            if caps.get(key).and_then(Value::as_bool) == Some(true) {
                runtime.insert(key.clone(), value.clone());
            }
        }
    }
    if !runtime.is_empty() {
        object.insert("runtimeConfig".into(), Value::Object(runtime));
    }
    config
}

/// Runs plugin `index` with `command`; returns its stdout.
fn exec(
    net: &NetworkConfig,
    index: usize,
    command: &'static str,
    call: &Invocation<'_>,
    config: &Value,
) -> Result<Vec<u8>, CniError> {
    let plugin = net.plugin_type(index);
    let path = cni_path();
    let binary = find_plugin(plugin, &path).ok_or_else(|| CniError::NotFound {
        network: net.name.clone(),
        plugin: plugin.into(),
        path: path.clone(),
    })?;
    let spawn_err = |source| CniError::Spawn {
        network: net.name.clone(),
        plugin: binary.clone(),
        source,
    };
    let mut child = Command::new(&binary)
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", call.container_id)
        .env("CNI_NETNS", call.netns)
        .env("CNI_IFNAME", call.ifname)
        .env("CNI_ARGS", call.args)
        .env("CNI_PATH", &path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_err)?;
    if let Some(mut stdin) = child.stdin.take() {
        // A plugin that exits without reading its config fails below with its own message.
        let _ = stdin.write_all(config.to_string().as_bytes());
    }
    let output = child.wait_with_output().map_err(spawn_err)?;
    if output.status.success() {
        return Ok(output.stdout);
    }
    Err(CniError::Plugin {
        network: net.name.clone(),
        plugin: plugin.into(),
        command,
        message: error_message(&output.stdout, &output.stderr, output.status),
    })
}

/// The message of a failed plugin: its JSON error (`msg: details`), else its output.
pub fn error_message(stdout: &[u8], stderr: &[u8], status: std::process::ExitStatus) -> String {
    #[derive(Deserialize)]
    struct CniErrorJson {
        #[serde(default)]
        code: u32,
        #[serde(default)]
        msg: String,
        #[serde(default)]
        details: String,
    }
    if let Ok(err) = serde_json::from_slice::<CniErrorJson>(stdout) {
        if !err.msg.is_empty() {
            let details = if err.details.is_empty() {
                String::new()
            } else {
                format!(": {}", err.details)
            };
            return format!("{}{details} (CNI error code {})", err.msg, err.code);
        }
    }
    let text = [stdout, stderr]
        .iter()
        .map(|bytes| String::from_utf8_lossy(bytes).trim().to_string())
        .filter(|text| !text.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    if text.is_empty() {
        format!("{status} without output")
    } else {
        format!("{status}: {text}")
    }
}

/// The plugin binary `name` in the `:`-separated `path`.
fn find_plugin(name: &str, path: &str) -> Option<PathBuf> {
    if name.contains('/') {
        return None;
    }
    path.split(':')
        .filter(|dir| !dir.is_empty())
        .map(|dir| Path::new(dir).join(name))
        .find(|candidate| candidate.is_file())
}

/// The `runtimeConfig` podvm offers: port mappings for the portmap plugin.
pub fn runtime_config(ports: &[(u16, u16, String)]) -> Value {
    let mappings: Vec<Value> = ports
        .iter()
        .map(|(host, container, protocol)| {
            json!({"hostPort": host, "containerPort": container, "protocol": protocol})
        })
        .collect();
    json!({ "portMappings": mappings })
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;

    use super::*;
    use crate::net::config::builtins;

    #[test]
    fn results_of_both_versions_parse() {
        let v1 = r#"{"cniVersion":"1.0.0","interfaces":[{"name":"podvm0","mac":"aa:bb:cc:dd:ee:01"},
            {"name":"eth0","mac":"aa:bb:cc:dd:ee:02","sandbox":"/run/netns/x"}],
            "ips":[{"interface":1,"address":"172.16.28.5/24","gateway":"172.16.28.1"}],
            "routes":[{"dst":"0.0.0.0/0"}],"dns":{"nameservers":["9.9.9.9"]}}"#;
        let result: CniResult = serde_json::from_str(v1).expect("1.0.0");
        assert_eq!(result.ips[0].interface, Some(1));
        assert_eq!(result.routes[0].gw, None);
        assert_eq!(result.dns.nameservers, ["9.9.9.9"]);
        let v04 =
            r#"{"cniVersion":"0.4.0","ips":[{"version":"4","address":"10.0.0.2/8"}],"dns":{}}"#;
        let result: CniResult = serde_json::from_str(v04).expect("0.4.0");
        assert_eq!(result.ips[0].address, "10.0.0.2/8");
    }

    #[test]
    fn plugin_errors_show_their_message() {
        let status = std::process::ExitStatus::from_raw(1 << 8);
        let json = br#"{"cniVersion":"1.0.0","code":11,"msg":"failed to allocate","details":"range full"}"#;
        assert_eq!(
            error_message(json, b"", status),
            "failed to allocate: range full (CNI error code 11)"
        );
        assert!(error_message(b"", b"boom", status).ends_with("boom"));
    }

    #[test]
    fn runtime_config_only_for_declared_capabilities() {
        let net = &builtins()[0];
        let runtime = runtime_config(&[(8080, 80, "tcp".into())]);
        let call = Invocation {
            container_id: "c",
            netns: Path::new("/run/netns/x"),
            ifname: "eth0",
            args: "",
            runtime_config: &runtime,
        };
        let prev = json!({"cniVersion": "1.0.0"});
        let bridge = request(net, 0, &call, None);
        assert!(bridge.get("runtimeConfig").is_none() && bridge.get("prevResult").is_none());
        assert_eq!(bridge["name"], "default");
        let portmap = request(net, 1, &call, Some(&prev));
        assert_eq!(
            portmap["runtimeConfig"]["portMappings"][0]["hostPort"],
            8080
        );
        assert_eq!(portmap["prevResult"], prev);
    }
}
