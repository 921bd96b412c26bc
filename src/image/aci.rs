//! appc ACI images: a tar (plain, gzip, bzip2 or xz) holding `manifest` and `rootfs/`.
//!
//! In the store an ACI is one blob, used both as the image's "config" (so the image id is the
//! digest of the ACI file) and as its only layer (applied with the `rootfs/` prefix stripped);
//! its appc manifest is the image's manifest blob.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use serde::Deserialize;

use super::config::{AppDefaults, ConfigError, MountPoint, Port};

/// Media type recorded for ACI blobs.
pub const ACI_MEDIA_TYPE: &str = "application/vnd.appc.image.aci";
/// Media type recorded for appc image manifests.
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.appc.image.manifest+json";
/// Largest accepted appc manifest.
const MAX_MANIFEST: u64 = 1 << 20;

/// Errors reading an ACI.
#[derive(Debug, thiserror::Error)]
pub enum AciError {
    /// I/O error reading the file.
    #[error("ACI {image}: reading {path}: {source}")]
    Io {
        /// Image name.
        image: String,
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// No manifest entry.
    #[error("ACI {0}: no `manifest` entry (is it an appc image?)")]
    NoManifest(String),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ImageManifest {
    ac_kind: String,
    name: String,
    #[serde(default)]
    labels: Vec<NameValue>,
    app: Option<App>,
}

#[derive(Deserialize)]
struct NameValue {
    name: String,
    value: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct App {
    #[serde(default)]
    exec: Vec<String>,
    #[serde(default)]
    user: String,
    #[serde(default)]
    group: String,
    #[serde(default)]
    working_directory: String,
    #[serde(default)]
    environment: Vec<NameValue>,
    #[serde(default)]
    ports: Vec<AppPort>,
    #[serde(default)]
    mount_points: Vec<AciMountPoint>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AciMountPoint {
    name: String,
    path: String,
    #[serde(default)]
    read_only: bool,
}

#[derive(Deserialize)]
struct AppPort {
    name: String,
    protocol: String,
    port: u16,
}

/// Reads the `manifest` entry of the ACI at `path`.
pub fn read_manifest(image: &str, path: &Path) -> Result<Vec<u8>, AciError> {
    let io_e = |source| AciError::Io {
        image: image.to_string(),
        path: path.to_path_buf(),
        source,
    };
    let f = std::fs::File::open(path).map_err(io_e)?;
    let mut ar = tar::Archive::new(super::layer::decompress(f).map_err(io_e)?);
    for entry in ar.entries().map_err(io_e)? {
        let entry = entry.map_err(io_e)?;
        let p = entry.path_bytes();
        if p.as_ref() == b"manifest" || p.as_ref() == b"./manifest" {
            let mut data = Vec::new();
            entry
                .take(MAX_MANIFEST)
                .read_to_end(&mut data)
                .map_err(io_e)?;
            return Ok(data);
        }
    }
    Err(AciError::NoManifest(image.to_string()))
}

fn parse(image: &str, manifest: &[u8]) -> Result<ImageManifest, ConfigError> {
    serde_json::from_slice(manifest).map_err(|e| ConfigError::Parse {
        image: image.to_string(),
        source: e,
    })
}

/// The image's appc name with its version label (`example.com/app:1.0`), if it has one.
pub fn appc_name(image: &str, manifest: &[u8]) -> Result<String, ConfigError> {
    let m = parse(image, manifest)?;
    Ok(match m.labels.iter().find(|l| l.name == "version") {
        Some(v) => format!("{}:{}", m.name, v.value),
        None => m.name,
    })
}

/// The image's appc name without labels (`example.com/app`): what signatures are checked for.
pub fn image_name(image: &str, manifest: &[u8]) -> Result<String, ConfigError> {
    Ok(parse(image, manifest)?.name)
}

/// Translates an appc image manifest (rejecting non linux/amd64 images).
pub fn app_defaults(image: &str, manifest: &[u8]) -> Result<AppDefaults, ConfigError> {
    let m = parse(image, manifest)?;
    let labels: BTreeMap<String, String> =
        m.labels.into_iter().map(|l| (l.name, l.value)).collect();
    let os = labels.get("os").cloned().unwrap_or_else(|| "linux".into());
    let arch = labels
        .get("arch")
        .cloned()
        .unwrap_or_else(|| "amd64".into());
    if m.ac_kind != "ImageManifest" || os != "linux" || arch != "amd64" {
        return Err(ConfigError::Platform {
            image: image.to_string(),
            os: format!("{os} ({})", m.ac_kind),
            arch,
        });
    }
    let app = m.app.unwrap_or(App {
        exec: Vec::new(),
        user: String::new(),
        group: String::new(),
        working_directory: String::new(),
        environment: Vec::new(),
        ports: Vec::new(),
        mount_points: Vec::new(),
    });
    let or = |s: String, d: &str| if s.is_empty() { d.to_string() } else { s };
    Ok(AppDefaults {
        exec: app.exec.clone(),
        entrypoint: app.exec,
        cmd: Vec::new(),
        env: app
            .environment
            .into_iter()
            .map(|e| (e.name, e.value))
            .collect(),
        user: or(app.user, "0"),
        group: or(app.group, "0"),
        working_dir: or(app.working_directory, "/"),
        ports: app
            .ports
            .into_iter()
            .map(|p| Port {
                name: p.name,
                protocol: p.protocol,
                port: p.port,
            })
            .collect(),
        mount_points: app
            .mount_points
            .into_iter()
            .map(|m| MountPoint::checked(image, "app.mountPoints", m.name, m.path, m.read_only))
            .collect::<Result<_, _>>()?,
        labels,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn translates_appc_manifest() {
        let m = br#"{"acKind":"ImageManifest","acVersion":"0.8.11","name":"example.com/app",
            "labels":[{"name":"version","value":"1.0"},{"name":"os","value":"linux"},{"name":"arch","value":"amd64"}],
            "app":{"exec":["/bin/app","-v"],"user":"1000","group":"1000","workingDirectory":"/srv",
            "environment":[{"name":"A","value":"b"}],"ports":[{"name":"http","protocol":"tcp","port":80}],
            "mountPoints":[{"name":"data","path":"/var/data","readOnly":true}]}}"#;
        let d = app_defaults("t", m).expect("valid");
        assert_eq!(d.exec, vec!["/bin/app", "-v"]);
        assert_eq!((d.user.as_str(), d.working_dir.as_str()), ("1000", "/srv"));
        assert_eq!(d.ports[0].name, "http");
        assert_eq!(
            d.mount_points,
            vec![MountPoint {
                name: "data".into(),
                path: "/var/data".into(),
                read_only: true
            }]
        );
        assert_eq!(appc_name("t", m).expect("name"), "example.com/app:1.0");
        let arm = String::from_utf8_lossy(m).replace("amd64", "arm64");
        assert!(app_defaults("t", arm.as_bytes()).is_err());
    }
}
