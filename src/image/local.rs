//! Local image inputs: `oci:DIR[:tag]`, `oci-archive:FILE[:tag]`, `docker-archive:FILE`.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use oci_spec::image::ImageIndex;

use crate::store::record::BlobRef;
use crate::store::{Digest, Store};

/// Errors reading a local image.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// Filesystem error.
    #[error("{image}: {what} {path}: {source}")]
    Io {
        /// Image name.
        image: String,
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The layout or archive is malformed.
    #[error("{image}: {why}")]
    Invalid {
        /// Image name.
        image: String,
        /// What is wrong.
        why: String,
    },
}

/// Where the blobs of a local image are: digest → file.
pub struct LocalBlobs {
    /// Blob files by digest.
    pub files: HashMap<Digest, PathBuf>,
    /// The OCI layout directory (blobs not in `files` are looked up there).
    pub layout: Option<PathBuf>,
}

impl LocalBlobs {
    /// The file holding blob `d`.
    pub fn path(&self, d: &Digest) -> Option<PathBuf> {
        self.files.get(d).cloned().or_else(|| {
            self.layout
                .as_ref()
                .map(|l| l.join("blobs/sha256").join(d.hex()))
        })
    }
}

/// Splits `PATH[:tag]` (a `:` followed by no `/` ends the path).
pub fn split_tag(s: &str) -> (&str, Option<&str>) {
    match s.rfind(':') {
        Some(i) if !s[i + 1..].contains('/') && i > 0 => (&s[..i], Some(&s[i + 1..])),
        _ => (s, None),
    }
}

fn io_err<'a>(
    image: &'a str,
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> LocalError + 'a {
    move |source| LocalError::Io {
        image: image.to_string(),
        what,
        path: path.to_path_buf(),
        source,
    }
}

fn invalid(image: &str, why: impl Into<String>) -> LocalError {
    LocalError::Invalid {
        image: image.to_string(),
        why: why.into(),
    }
}

/// Picks the manifest descriptor for `tag` in an OCI layout's `index.json`.
pub fn oci_layout_manifest(
    image: &str,
    dir: &Path,
    tag: Option<&str>,
) -> Result<(BlobRef, LocalBlobs), LocalError> {
    let p = dir.join("index.json");
    let data = fs::read(&p).map_err(io_err(image, "reading OCI layout index", &p))?;
    let idx: ImageIndex = serde_json::from_slice(&data)
        .map_err(|e| invalid(image, format!("bad index.json: {e}")))?;
    let ms = idx.manifests();
    let name_of = |m: &oci_spec::image::Descriptor| {
        m.annotations()
            .as_ref()
            .and_then(|a| a.get("org.opencontainers.image.ref.name").cloned())
    };
    let chosen = match tag {
        Some(t) => ms.iter().find(|m| name_of(m).as_deref() == Some(t)),
        None if ms.len() == 1 => ms.first(),
        None => ms.iter().find(|m| name_of(m).as_deref() == Some("latest")),
    };
    let Some(m) = chosen else {
        let tags: Vec<String> = ms.iter().filter_map(name_of).collect();
        return Err(invalid(
            image,
            format!(
                "no manifest tagged {:?} (tags: {})",
                tag.unwrap_or("latest"),
                tags.join(", ")
            ),
        ));
    };
    let digest: Digest = m
        .digest()
        .to_string()
        .parse()
        .map_err(|e| invalid(image, format!("{e}")))?;
    let b = BlobRef {
        digest,
        media_type: m.media_type().to_string(),
        size: m.size(),
    };
    Ok((
        b,
        LocalBlobs {
            files: HashMap::new(),
            layout: Some(dir.to_path_buf()),
        },
    ))
}

/// Extracts an archive (tar, optionally compressed) into a new directory under the store's
/// `tmp/`. The caller removes it.
pub fn extract_archive(store: &Store, image: &str, file: &Path) -> Result<PathBuf, LocalError> {
    let f = fs::File::open(file).map_err(io_err(image, "opening archive", file))?;
    let dir = store
        .tmp_dir()
        .join(format!("archive-{}-{}", std::process::id(), unique()));
    crate::private::create_dir_all(&dir).map_err(io_err(image, "creating", &dir))?;
    let r = super::layer::decompress(f).map_err(io_err(image, "reading archive", file))?;
    let mut ar = tar::Archive::new(r);
    ar.set_preserve_permissions(false);
    if let Err(e) = ar.unpack(&dir) {
        let _ = fs::remove_dir_all(&dir);
        return Err(io_err(image, "extracting archive", file)(e));
    }
    Ok(dir)
}

fn unique() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerSaveEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// A `docker save` archive extracted in `dir`: builds an OCI manifest for it.
/// Returns the manifest bytes, the blob files and the archive's repo tags.
pub fn docker_archive_manifest(
    image: &str,
    dir: &Path,
) -> Result<(Vec<u8>, LocalBlobs, Vec<String>), LocalError> {
    let p = dir.join("manifest.json");
    let data = fs::read(&p).map_err(io_err(image, "reading docker archive manifest", &p))?;
    let entries: Vec<DockerSaveEntry> = serde_json::from_slice(&data)
        .map_err(|e| invalid(image, format!("bad manifest.json: {e}")))?;
    let [e] = entries.as_slice() else {
        return Err(invalid(
            image,
            format!(
                "archive holds {} images; exactly one is supported",
                entries.len()
            ),
        ));
    };
    let mut files = HashMap::new();
    let mut describe = |rel: &str, media: &str| -> Result<serde_json::Value, LocalError> {
        let comps = super::safepath::entry_components(rel.as_bytes())
            .map_err(|u| invalid(image, format!("{rel}: {u}")))?;
        let path: PathBuf = dir.join(comps.iter().collect::<PathBuf>());
        let f = fs::File::open(&path).map_err(io_err(image, "opening", &path))?;
        let (d, size) = Digest::of_reader(f).map_err(io_err(image, "reading", &path))?;
        let mut head = [0u8; 4];
        let n = io::Read::read(
            &mut fs::File::open(&path).map_err(io_err(image, "opening", &path))?,
            &mut head,
        )
        .map_err(io_err(image, "reading", &path))?;
        let media = if media.ends_with("tar") && head[..n].starts_with(&[0x1f, 0x8b]) {
            format!("{media}+gzip")
        } else {
            media.to_string()
        };
        files.insert(d.clone(), path);
        Ok(serde_json::json!({"mediaType": media, "digest": d.to_string(), "size": size}))
    };
    let config = describe(&e.config, "application/vnd.oci.image.config.v1+json")?;
    let layers = e
        .layers
        .iter()
        .map(|l| describe(l, "application/vnd.oci.image.layer.v1.tar"))
        .collect::<Result<Vec<_>, _>>()?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config,
        "layers": layers,
    });
    let bytes = serde_json::to_vec(&manifest).map_err(|e| invalid(image, e.to_string()))?;
    Ok((
        bytes,
        LocalBlobs {
            files,
            layout: None,
        },
        e.repo_tags.clone().unwrap_or_default(),
    ))
}

#[cfg(test)]
mod tests {
    use super::split_tag;

    #[test]
    fn tags() {
        assert_eq!(split_tag("/a/b:v1"), ("/a/b", Some("v1")));
        assert_eq!(split_tag("/a/b"), ("/a/b", None));
        assert_eq!(split_tag("./x:y/z"), ("./x:y/z", None));
    }
}
