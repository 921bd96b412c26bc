//! Manifests and indexes (OCI and Docker schema 2), parsed with `oci-spec`.

use oci_spec::image::{Arch, Descriptor, ImageIndex, ImageManifest, Os};

use crate::store::record::BlobRef;
use crate::store::Digest;

/// Media types accepted in `Accept` headers.
pub const ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.v2+json, \
application/vnd.docker.distribution.manifest.list.v2+json";

/// Errors understanding a manifest.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Not valid JSON of a known kind.
    #[error("{what}: cannot parse manifest: {why}")]
    Parse {
        /// Image name.
        what: String,
        /// What is wrong.
        why: String,
    },
    /// An index without linux/amd64.
    #[error("{what}: the image index has no linux/amd64 image (platforms: {platforms})")]
    NoPlatform {
        /// Image name.
        what: String,
        /// Platforms found.
        platforms: String,
    },
    /// A layer media type we cannot use.
    #[error("{what}: layer {digest} has unsupported media type {media_type}")]
    MediaType {
        /// Image name.
        what: String,
        /// Layer digest.
        digest: String,
        /// Media type.
        media_type: String,
    },
}

/// A parsed manifest document.
#[derive(Debug)]
pub enum Parsed {
    /// An image manifest: config and layers.
    Image {
        /// Manifest media type.
        media_type: String,
        /// The config blob.
        config: BlobRef,
        /// The layers, lowest first.
        layers: Vec<BlobRef>,
    },
    /// An index / manifest list, resolved to the linux/amd64 entry.
    Index {
        /// The chosen manifest.
        chosen: BlobRef,
    },
}

fn blob_ref(what: &str, d: &Descriptor) -> Result<BlobRef, ManifestError> {
    let digest: Digest = d
        .digest()
        .to_string()
        .parse()
        .map_err(|e| ManifestError::Parse {
            what: what.to_string(),
            why: format!("{e}"),
        })?;
    Ok(BlobRef {
        digest,
        media_type: d.media_type().to_string(),
        size: d.size(),
    })
}

/// Parses manifest bytes; `what` names the image in errors.
pub fn parse(what: &str, data: &[u8], header_type: Option<&str>) -> Result<Parsed, ManifestError> {
    let perr = |why: String| ManifestError::Parse {
        what: what.to_string(),
        why,
    };
    let v: serde_json::Value = serde_json::from_slice(data).map_err(|e| perr(e.to_string()))?;
    let media_type = v
        .get("mediaType")
        .and_then(|m| m.as_str())
        .or(header_type)
        .unwrap_or("application/vnd.oci.image.manifest.v1+json")
        .to_string();
    if v.get("manifests").is_some() {
        let idx: ImageIndex = serde_json::from_value(v).map_err(|e| perr(e.to_string()))?;
        return choose_platform(what, &idx).map(|chosen| Parsed::Index { chosen });
    }
    if v.get("schemaVersion").and_then(|s| s.as_u64()) == Some(1) {
        return Err(perr("Docker schema 1 manifests are not supported (push the image again with a current client)".into()));
    }
    let m: ImageManifest = serde_json::from_value(v).map_err(|e| perr(e.to_string()))?;
    let config = blob_ref(what, m.config())?;
    let mut layers = Vec::new();
    for l in m.layers() {
        let b = blob_ref(what, l)?;
        if b.media_type.contains("encrypted")
            || !(b.media_type.contains("tar") || b.media_type.contains("layer"))
        {
            return Err(ManifestError::MediaType {
                what: what.to_string(),
                digest: b.digest.to_string(),
                media_type: b.media_type,
            });
        }
        layers.push(b);
    }
    Ok(Parsed::Image {
        media_type,
        config,
        layers,
    })
}

fn choose_platform(what: &str, idx: &ImageIndex) -> Result<BlobRef, ManifestError> {
    let mut seen = Vec::new();
    for m in idx.manifests() {
        match m.platform() {
            Some(p) if *p.os() == Os::Linux && *p.architecture() == Arch::Amd64 => {
                return blob_ref(what, m)
            }
            Some(p) => seen.push(format!("{}/{}", p.os(), p.architecture())),
            None => seen.push("unknown".to_string()),
        }
    }
    Err(ManifestError::NoPlatform {
        what: what.to_string(),
        platforms: seen.join(", "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const H1: &str = "1111111111111111111111111111111111111111111111111111111111111111";
    const H2: &str = "2222222222222222222222222222222222222222222222222222222222222222";

    #[test]
    fn docker_manifest() {
        let m = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json",
            "config":{{"mediaType":"application/vnd.docker.container.image.v1+json","size":10,"digest":"sha256:{H1}"}},
            "layers":[{{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","size":20,"digest":"sha256:{H2}"}}]}}"#
        );
        match parse("t", m.as_bytes(), None).expect("parses") {
            Parsed::Image { config, layers, .. } => {
                assert_eq!(config.digest.hex(), H1);
                assert_eq!(layers.len(), 1);
                assert_eq!(layers[0].size, 20);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn index_picks_amd64() {
        let m = format!(
            r#"{{"schemaVersion":2,"manifests":[
            {{"mediaType":"application/vnd.oci.image.manifest.v1+json","size":1,"digest":"sha256:{H1}","platform":{{"os":"linux","architecture":"arm64"}}}},
            {{"mediaType":"application/vnd.oci.image.manifest.v1+json","size":2,"digest":"sha256:{H2}","platform":{{"os":"linux","architecture":"amd64"}}}}]}}"#
        );
        match parse("t", m.as_bytes(), None).expect("parses") {
            Parsed::Index { chosen } => assert_eq!(chosen.digest.hex(), H2),
            other => panic!("unexpected {other:?}"),
        }
        let only_arm = m.replace("amd64", "s390x");
        let e = parse("t", only_arm.as_bytes(), None).expect_err("no amd64");
        assert!(e.to_string().contains("linux/arm64"), "{e}");
    }
}
