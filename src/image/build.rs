//! `podvm image build`: an OCI image from a directory and a small spec (entrypoint, command,
//! environment, user, working directory, ports, labels), into the store. Reproducible: the
//! same directory and spec give the same digest — entries in name order, times set to the
//! epoch, gzip without a time or name, JSON with sorted keys, no creation date.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::json;
use sha2::{Digest as _, Sha256};

/// The largest spec file read.
const MAX_SPEC_BYTES: u64 = 1 << 20;

/// Errors of a build.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The spec file could not be read or parsed.
    #[error("image build spec {path}: {why}")]
    Spec {
        /// The file.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// The directory could not be read.
    #[error("image build: reading {path}: {source}")]
    Read {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The OCI layout could not be written.
    #[error("image build: writing {path}: {source}")]
    Write {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The image to build from cannot be built on.
    #[error("image build --from {image}: {why}")]
    Base {
        /// The image.
        image: String,
        /// Why.
        why: String,
    },
    /// The build pod's writes cannot become a layer.
    #[error("image build: {0}")]
    Upper(Box<super::upper_layer::UpperError>),
}

/// What the image runs, as the build spec gives it (every field optional).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildSpec {
    /// ENTRYPOINT.
    #[serde(default)]
    pub entrypoint: Vec<String>,
    /// CMD.
    #[serde(default)]
    pub cmd: Vec<String>,
    /// Environment, `KEY=VALUE`.
    #[serde(default)]
    pub env: Vec<String>,
    /// User (name or uid[:gid]).
    #[serde(default)]
    pub user: Option<String>,
    /// Working directory.
    #[serde(default)]
    pub workdir: Option<String>,
    /// Exposed ports, `80/tcp`.
    #[serde(default)]
    pub ports: Vec<String>,
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl BuildSpec {
    /// Reads the spec at `path` (JSON).
    pub fn read(path: &Path) -> Result<BuildSpec, BuildError> {
        let error = |why: String| BuildError::Spec {
            path: path.to_path_buf(),
            why,
        };
        let meta = std::fs::metadata(path).map_err(|err| error(err.to_string()))?;
        if meta.len() > MAX_SPEC_BYTES {
            return Err(error(format!("larger than {MAX_SPEC_BYTES} bytes")));
        }
        let text = std::fs::read(path).map_err(|err| error(err.to_string()))?;
        serde_json::from_slice(&text).map_err(|err| error(err.to_string()))
    }

    /// The OCI image config of this spec for a single layer with `diff_id`.
    fn config(&self, diff_id: &str) -> serde_json::Value {
        let ports: BTreeMap<&str, serde_json::Value> = self
            .ports
            .iter()
            .map(|port| (port.as_str(), json!({})))
            .collect();
        let mut config = serde_json::Map::new();
        let mut put = |key: &str, value: serde_json::Value| {
            config.insert(key.into(), value);
        };
        if !self.entrypoint.is_empty() {
            put("Entrypoint", json!(self.entrypoint));
        }
        if !self.cmd.is_empty() {
            put("Cmd", json!(self.cmd));
        }
        if !self.env.is_empty() {
            put("Env", json!(self.env));
        }
        if let Some(user) = &self.user {
            put("User", json!(user));
        }
        if let Some(workdir) = &self.workdir {
            put("WorkingDir", json!(workdir));
        }
        if !ports.is_empty() {
            put("ExposedPorts", json!(ports));
        }
        if !self.labels.is_empty() {
            put("Labels", json!(self.labels));
        }
        json!({
            "architecture": "amd64",
            "os": "linux",
            "config": config,
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        })
    }
}

/// The blobs of a built image, written as an OCI layout at `layout`; returns the manifest's
/// digest (`sha256:…`).
pub fn write_layout(dir: &Path, spec: &BuildSpec, layout: &Path) -> Result<String, BuildError> {
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).map_err(write_error(&blobs))?;
    let (layer, diff_id) = layer(dir)?;
    let layer_digest = put_blob(&blobs, &layer)?;
    let config = serde_json::to_vec(&spec.config(&diff_id)).map_err(json_error(layout))?;
    let layers = vec![json!({
        "mediaType": LAYER_MEDIA_TYPE,
        "digest": layer_digest,
        "size": layer.len(),
    })];
    finish_layout(layout, &config, layers)
}

/// The media type of the layers podvm builds.
pub(crate) const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// Writes `config` and the manifest of it and `layers` (their descriptors, blobs already in
/// `layout`) as blobs, then `index.json` and `oci-layout`; returns the manifest's digest.
pub(crate) fn finish_layout(
    layout: &Path,
    config: &[u8],
    layers: Vec<serde_json::Value>,
) -> Result<String, BuildError> {
    let blobs = layout.join("blobs/sha256");
    let config_digest = put_blob(&blobs, config)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config.len(),
        },
        "layers": layers,
    });
    let manifest = serde_json::to_vec(&manifest).map_err(json_error(layout))?;
    let manifest_digest = put_blob(&blobs, &manifest)?;
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": "latest"},
        }],
    });
    let files = [
        ("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec()),
        (
            "index.json",
            serde_json::to_vec(&index).map_err(json_error(layout))?,
        ),
    ];
    for (name, bytes) in files {
        let path = layout.join(name);
        std::fs::write(&path, bytes).map_err(write_error(&path))?;
    }
    Ok(manifest_digest)
}

/// The gzipped layer of `dir` and the digest of its tar (the diff id).
fn layer(dir: &Path) -> Result<(Vec<u8>, String), BuildError> {
    let mut tar = tar::Builder::new(Vec::new());
    append_tree(&mut tar, dir, Path::new(""))?;
    let tar = tar.into_inner().map_err(write_error(dir))?;
    let diff_id = sha256(&tar);
    let mut gzip = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::default());
    gzip.write_all(&tar).map_err(write_error(dir))?;
    let layer = gzip.finish().map_err(write_error(dir))?;
    Ok((layer, diff_id))
}

/// Appends the entries below `top/at`, in name order, with the epoch as their time; symlinks
/// are stored as links, never followed.
fn append_tree(tar: &mut tar::Builder<Vec<u8>>, top: &Path, at: &Path) -> Result<(), BuildError> {
    let here = top.join(at);
    let read_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| BuildError::Read { path, source }
    };
    let mut names: Vec<_> = std::fs::read_dir(&here)
        .map_err(read_error(&here))?
        .map(|entry| entry.map(|entry| entry.file_name()))
        .collect::<Result<_, _>>()
        .map_err(read_error(&here))?;
    names.sort();
    for name in names {
        let (path, inside) = (here.join(&name), at.join(&name));
        let meta = std::fs::symlink_metadata(&path).map_err(read_error(&path))?;
        let mut header = tar::Header::new_gnu();
        header.set_metadata_in_mode(&meta, tar::HeaderMode::Deterministic);
        header.set_mtime(0);
        let file_type = meta.file_type();
        if file_type.is_dir() {
            tar.append_data(&mut header, &inside, std::io::empty())
                .map_err(write_error(&path))?;
            append_tree(tar, top, &inside)?;
        } else if file_type.is_symlink() {
            let target = std::fs::read_link(&path).map_err(read_error(&path))?;
            tar.append_link(&mut header, &inside, &target)
                .map_err(write_error(&path))?;
        } else if file_type.is_file() {
            let file = std::fs::File::open(&path).map_err(read_error(&path))?;
            tar.append_data(&mut header, &inside, file)
                .map_err(write_error(&path))?;
        }
        // Sockets, fifos and devices have no place in a built image.
    }
    Ok(())
}

/// Writes `bytes` as a blob named by its digest; returns `sha256:…`.
pub(crate) fn put_blob(blobs: &Path, bytes: &[u8]) -> Result<String, BuildError> {
    let digest = sha256(bytes);
    let path = blobs.join(digest.trim_start_matches("sha256:"));
    std::fs::write(&path, bytes).map_err(write_error(&path))?;
    Ok(digest)
}

pub(crate) fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

pub(crate) fn write_error(path: &Path) -> impl FnOnce(std::io::Error) -> BuildError + '_ {
    move |source| BuildError::Write {
        path: path.to_path_buf(),
        source,
    }
}

pub(crate) fn json_error(path: &Path) -> impl FnOnce(serde_json::Error) -> BuildError + '_ {
    move |err| BuildError::Write {
        path: path.to_path_buf(),
        source: err.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(root: &Path) {
        std::fs::create_dir_all(root.join("bin")).expect("mkdir");
        std::fs::write(root.join("bin/tool"), "#!/bin/sh\necho built\n").expect("tool");
        std::os::unix::fs::symlink("tool", root.join("bin/alias")).expect("link");
    }

    #[test]
    fn the_same_tree_and_spec_give_the_same_digest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (first, second) = (dir.path().join("a"), dir.path().join("b"));
        tree(&first);
        std::thread::sleep(std::time::Duration::from_millis(1100));
        tree(&second);
        let spec = BuildSpec {
            entrypoint: vec!["/bin/tool".into()],
            labels: [("team".to_string(), "ci".to_string())].into(),
            ..BuildSpec::default()
        };
        let one = write_layout(&first, &spec, &dir.path().join("l1")).expect("build");
        let two = write_layout(&second, &spec, &dir.path().join("l2")).expect("build");
        assert_eq!(one, two, "times and order of the files do not matter");
        let other = BuildSpec {
            cmd: vec!["x".into()],
            ..BuildSpec::default()
        };
        let three = write_layout(&first, &other, &dir.path().join("l3")).expect("build");
        assert_ne!(one, three, "the spec does");
    }

    #[test]
    fn unknown_spec_fields_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("spec.json");
        std::fs::write(&path, r#"{"entrypoint":["/x"],"entrypint":["typo"]}"#).expect("spec");
        let err = BuildSpec::read(&path).expect_err("refused");
        assert!(err.to_string().contains("entrypint"), "{err}");
    }
}
