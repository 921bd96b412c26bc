//! Image config (OCI / Docker) → the defaults of an app in a pod.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The fields of an OCI / Docker image config that podvm uses. Parsed leniently (unlike
/// `oci_spec::image::ImageConfiguration`, which requires `history`, absent from many images).
#[derive(Debug, Deserialize)]
struct ImageConfig {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
    #[serde(default)]
    config: Option<RunConfig>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RunConfig {
    user: Option<String>,
    exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
    env: Option<Vec<String>>,
    entrypoint: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
    working_dir: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    volumes: Option<BTreeMap<String, serde_json::Value>>,
}

/// Errors reading an image config.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config blob is not a valid image config.
    #[error("image {image}: invalid image config: {source}")]
    Parse {
        /// Image name.
        image: String,
        /// The cause.
        source: serde_json::Error,
    },
    /// Not a linux/amd64 image.
    #[error("image {image} is for {os}/{arch}, not linux/amd64")]
    Platform {
        /// Image name.
        image: String,
        /// Its OS.
        os: String,
        /// Its architecture.
        arch: String,
    },
    /// A mount point the image declares has a name or path podvm refuses (names end up in host
    /// paths of the pod, so they must be ACNames).
    #[error("image {image}: {field} {value:?}: {why}; refusing the image")]
    MountPoint {
        /// Image name.
        image: String,
        /// The manifest field (`app.mountPoints`, `config.Volumes`).
        field: &'static str,
        /// The value found there.
        value: String,
        /// What is wrong.
        why: String,
    },
}

/// A port the image exposes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Port {
    /// A name for it, `<proto>-<port>` as rkt names docker ports (e.g. `tcp-80`).
    pub name: String,
    /// `tcp` or `udp`.
    pub protocol: String,
    /// The port number.
    pub port: u16,
}

/// A directory the image expects a volume on (appc `mountPoints`, OCI `Volumes`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MountPoint {
    /// Its name (OCI volumes: `volume-` and the path, e.g. `volume-var-lib-data`).
    pub name: String,
    /// Absolute path inside the app.
    pub path: String,
    /// Whether the app only reads it.
    pub read_only: bool,
}

/// Longest accepted mount point path, in bytes.
const MAX_MOUNT_PATH: usize = 4096;

impl MountPoint {
    /// A mount point of image `image` as its manifest declares it in `field`: `name` must be an
    /// ACName and `path` absolute, without NUL bytes or `..` components.
    pub fn checked(
        image: &str,
        field: &'static str,
        name: String,
        path: String,
        read_only: bool,
    ) -> Result<Self, ConfigError> {
        let refuse = |value: &str, why: String| ConfigError::MountPoint {
            image: image.to_string(),
            field,
            value: value.chars().take(MAX_MOUNT_PATH).collect(),
            why,
        };
        super::acname::check(&name)
            .map_err(|err| refuse(&name, format!("mount point name: {}", err.why)))?;
        if let Some(why) = mount_path_problem(&path) {
            return Err(refuse(&path, format!("mount point {name}: {why}")));
        }
        Ok(Self {
            name,
            path,
            read_only,
        })
    }

    /// The mount point of an OCI `Volumes` entry, named as docker2aci names it
    /// (`/var/lib/data` is `volume-var-lib-data`).
    pub fn from_oci(image: &str, path: &str) -> Result<Self, ConfigError> {
        let name = super::acname::sanitize(&format!("volume-{path}"), "volume");
        Self::checked(image, "config.Volumes", name, path.to_string(), false)
    }
}

/// What makes `path` unfit as a mount point inside an app, if anything.
fn mount_path_problem(path: &str) -> Option<&'static str> {
    if !path.starts_with('/') {
        Some("the path must be absolute")
    } else if path.len() > MAX_MOUNT_PATH {
        Some("the path is too long")
    } else if path.contains('\0') {
        Some("the path contains a NUL byte")
    } else if path.split('/').any(|component| component == "..") {
        Some("the path has a `..` component")
    } else {
        None
    }
}

/// What an image says about how to run its app; the pods code starts from these and applies
/// command-line overrides (`--exec`, `--user`, `--set-env`, ...).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AppDefaults {
    /// The command to run: entrypoint followed by cmd (may be empty: then `--exec` is needed).
    pub exec: Vec<String>,
    /// The image's entrypoint alone.
    pub entrypoint: Vec<String>,
    /// The image's cmd alone (the arguments `--` replaces).
    pub cmd: Vec<String>,
    /// Environment, in image order (`NAME`, `value`).
    pub env: Vec<(String, String)>,
    /// User (name or uid), `0` when unset.
    pub user: String,
    /// Group (name or gid), `0` when no user is set; empty for a user without a group: the
    /// user's primary group (OCI image spec).
    pub group: String,
    /// Working directory, `/` when unset.
    pub working_dir: String,
    /// Exposed ports.
    pub ports: Vec<Port>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Where the app expects volumes.
    pub mount_points: Vec<MountPoint>,
}

/// Parses a config blob and translates it (rejecting non linux/amd64 images).
pub fn app_defaults(image: &str, config_blob: &[u8]) -> Result<AppDefaults, ConfigError> {
    let cfg: ImageConfig = serde_json::from_slice(config_blob).map_err(|e| ConfigError::Parse {
        image: image.to_string(),
        source: e,
    })?;
    let (os, arch) = (cfg.os, cfg.architecture);
    if os != "linux" || arch != "amd64" {
        return Err(ConfigError::Platform {
            image: image.to_string(),
            os,
            arch,
        });
    }
    let mut d = AppDefaults {
        user: "0".into(),
        group: "0".into(),
        working_dir: "/".into(),
        ..AppDefaults::default()
    };
    let Some(c) = cfg.config else {
        return Ok(d);
    };
    d.entrypoint = c.entrypoint.unwrap_or_default();
    d.cmd = c.cmd.unwrap_or_default();
    d.exec = d.entrypoint.iter().chain(&d.cmd).cloned().collect();
    for e in c.env.iter().flatten() {
        let (k, v) = e.split_once('=').unwrap_or((e, ""));
        d.env.push((k.to_string(), v.to_string()));
    }
    if let Some(u) = c.user.as_deref().filter(|u| !u.is_empty()) {
        let (user, group) = u.split_once(':').unwrap_or((u, ""));
        d.user = user.to_string();
        d.group = group.to_string();
    }
    if let Some(w) = c.working_dir.as_deref().filter(|w| !w.is_empty()) {
        d.working_dir = w.to_string();
    }
    for p in c.exposed_ports.iter().flatten().map(|(k, _)| k) {
        let (num, proto) = p.split_once('/').unwrap_or((p, "tcp"));
        if let Ok(port) = num.parse() {
            d.ports.push(Port {
                name: format!("{proto}-{port}"),
                protocol: proto.to_string(),
                port,
            });
        }
    }
    d.labels = c.labels.unwrap_or_default();
    d.mount_points = c
        .volumes
        .iter()
        .flatten()
        .map(|(path, _)| MountPoint::from_oci(image, path))
        .collect::<Result<_, _>>()?;
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Attack: an image config whose `Volumes` path climbs out of the app's root or is not
    /// absolute; refused when the image is read, naming the image and the field.
    #[test]
    fn volumes_that_climb_or_are_relative_are_refused() {
        for path in ["/../../etc", "/data/../../..", "relative/dir", "/a\\u0000b"] {
            let cfg = format!(
                r#"{{"architecture":"amd64","os":"linux","config":{{"Volumes":{{"{path}":{{}}}}}}}}"#
            );
            let err = app_defaults("evil-image", cfg.as_bytes()).expect_err(path);
            let text = err.to_string();
            assert!(
                text.contains("evil-image") && text.contains("config.Volumes"),
                "{text}"
            );
        }
        let ok = br#"{"architecture":"amd64","os":"linux","config":{"Volumes":{"/var//lib/Data.d/":{}}}}"#;
        let d = app_defaults("t", ok).expect("valid");
        assert_eq!(d.mount_points[0].name, "volume-var-lib-data-d");
    }

    #[test]
    fn translates_docker_config() {
        let cfg =
            br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},
            "config":{"Entrypoint":["/bin/sh","-c"],"Cmd":["echo hi"],"Env":["PATH=/bin","EMPTY="],
            "User":"1000:100","WorkingDir":"/srv","ExposedPorts":{"80/tcp":{},"53/udp":{}},
            "Labels":{"a":"b"},"Volumes":{"/var/lib/data":{}}}}"#;
        let d = app_defaults("t", cfg).expect("valid");
        assert_eq!(d.exec, vec!["/bin/sh", "-c", "echo hi"]);
        assert_eq!(d.env[0], ("PATH".to_string(), "/bin".to_string()));
        assert_eq!(d.env[1].1, "");
        assert_eq!(
            (d.user.as_str(), d.group.as_str(), d.working_dir.as_str()),
            ("1000", "100", "/srv")
        );
        assert!(d.ports.iter().any(|p| p.name == "udp-53" && p.port == 53));
        assert_eq!(d.labels.get("a").map(String::as_str), Some("b"));
        assert_eq!(d.mount_points[0].name, "volume-var-lib-data");
        assert_eq!(d.mount_points[0].path, "/var/lib/data");
        let named = String::from_utf8_lossy(cfg).replace("1000:100", "app");
        let d = app_defaults("t", named.as_bytes()).expect("valid");
        assert_eq!((d.user.as_str(), d.group.as_str()), ("app", ""));
        let arm = String::from_utf8_lossy(cfg).replace("amd64", "arm64");
        assert!(app_defaults("t", arm.as_bytes()).is_err());
    }
}
