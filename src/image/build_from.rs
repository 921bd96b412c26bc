//! `podvm image build --from IMAGE --run CMD`: the image IMAGE with one more layer, the writes
//! of a pod of IMAGE that ran the commands (its overlay upper directory, see
//! [`super::upper_layer`]), as an OCI layout.
//!
//! The base's layers are referenced as they are in the store (same blobs, digests and media
//! types); its config is kept with the new layer's diff id appended to `rootfs.diff_ids` and,
//! when it has a history, one entry naming the commands (no creation date). The layer is
//! streamed to its blob while its two digests are computed (the tar's, the diff id, and the
//! gzip's, the blob's), gzip without a time or name, so the same base and the same writes
//! give the same manifest digest.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::os::fd::OwnedFd;
use std::path::Path;

use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

use super::build::{finish_layout, json_error, write_error, BuildError, LAYER_MEDIA_TYPE};
use super::upper_layer::{self, UpperLimits, UpperReport};
use crate::store::{ImageRecord, Store};

/// Config media types of the images a build can start from (OCI and Docker images, not ACIs).
const CONFIG_TYPES: [&str; 2] = [
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
];

/// Writes `base` plus the layer of the upper directory `upper` as an OCI layout at `layout`;
/// `created_by` goes into the history. Returns the manifest's digest and what the layer holds.
pub fn write_layout_from(
    store: &Store,
    base: &ImageRecord,
    upper: &OwnedFd,
    created_by: &str,
    layout: &Path,
) -> Result<(String, UpperReport), BuildError> {
    let refuse = |why: String| BuildError::Base {
        image: base
            .names
            .first()
            .cloned()
            .unwrap_or_else(|| base.id.to_string()),
        why,
    };
    if !CONFIG_TYPES.contains(&base.config.media_type.as_str()) {
        return Err(refuse(format!(
            "its config is {}, not an OCI or Docker image config",
            base.config.media_type
        )));
    }
    let config = store
        .read_blob(&base.config.digest)
        .map_err(|err| refuse(err.to_string()))?;
    let mut config: Value =
        serde_json::from_slice(&config).map_err(|err| refuse(format!("bad config: {err}")))?;
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).map_err(write_error(&blobs))?;
    let (layer, report) = write_layer(upper, &blobs)?;
    let Some(diff_ids) = config
        .pointer_mut("/rootfs/diff_ids")
        .and_then(Value::as_array_mut)
    else {
        return Err(refuse("its config has no rootfs.diff_ids".into()));
    };
    diff_ids.push(json!(layer.diff_id));
    if let Some(history) = config.get_mut("history").and_then(Value::as_array_mut) {
        history.push(json!({"created_by": created_by, "comment": "podvm image build"}));
    }
    let config = serde_json::to_vec(&config).map_err(json_error(layout))?;
    let mut layers: Vec<Value> = base
        .layers
        .iter()
        .map(|blob| {
            json!({
                "mediaType": blob.media_type,
                "digest": blob.digest.to_string(),
                "size": blob.size,
            })
        })
        .collect();
    layers.push(json!({
        "mediaType": LAYER_MEDIA_TYPE,
        "digest": layer.digest,
        "size": layer.size,
    }));
    Ok((finish_layout(layout, &config, layers)?, report))
}

/// The new layer's blob.
struct Layer {
    /// `sha256:` of the tar.
    diff_id: String,
    /// `sha256:` of the gzipped tar (the blob).
    digest: String,
    /// The blob's size.
    size: u64,
}

/// Streams the layer of `upper` into a blob in `blobs`, named by its digest.
fn write_layer(upper: &OwnedFd, blobs: &Path) -> Result<(Layer, UpperReport), BuildError> {
    let partial = blobs.join("layer.partial");
    let file = File::create(&partial).map_err(write_error(&partial))?;
    let blob = Hashing::new(BufWriter::new(file));
    let gzip = flate2::GzBuilder::new()
        .mtime(0)
        .write(blob, flate2::Compression::default());
    let (tar, report) = upper_layer::write_layer(upper, Hashing::new(gzip), UpperLimits::default())
        .map_err(|err| BuildError::Upper(Box::new(err)))?;
    let (gzip, diff_id, _) = tar.finish();
    let blob = gzip.finish().map_err(write_error(&partial))?;
    let (mut file, digest, size) = blob.finish();
    file.flush().map_err(write_error(&partial))?;
    let path = blobs.join(digest.trim_start_matches("sha256:"));
    std::fs::rename(&partial, &path).map_err(write_error(&path))?;
    let layer = Layer {
        diff_id,
        digest,
        size,
    };
    Ok((layer, report))
}

/// A writer that hashes and counts what goes through it.
struct Hashing<W> {
    inner: W,
    hash: Sha256,
    len: u64,
}

impl<W: Write> Hashing<W> {
    fn new(inner: W) -> Self {
        Self {
            inner,
            hash: Sha256::new(),
            len: 0,
        }
    }

    /// The writer, the `sha256:` digest and the length of what was written.
    fn finish(self) -> (W, String, u64) {
        let digest = format!("sha256:{}", hex::encode(self.hash.finalize()));
        (self.inner, digest, self.len)
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        let written = buf.get(..n).unwrap_or(buf);
        self.hash.update(written);
        self.len += u64::try_from(n).unwrap_or(0);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use nix::sys::stat::{mknod, Mode, SFlag};

    use super::*;
    use crate::image::build::{write_layout, BuildSpec};
    use crate::image::{dirfd, fetch};

    fn import(store: &Store, tag: &str, layout: &Path) -> ImageRecord {
        let name = fetch::canonical_name(&format!("docker://{tag}")).expect("name");
        fetch::import_layout(store, &name, layout).expect("import")
    }

    #[test]
    fn the_pods_writes_and_deletions_go_on_top_of_the_base_reproducibly() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: an overlay whiteout (a 0:0 device) needs root");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("data")).expect("store");
        let tree = dir.path().join("base");
        std::fs::create_dir_all(tree.join("bin")).expect("mkdir");
        for file in ["bin/vi", "bin/sh"] {
            std::fs::write(tree.join(file), file).expect("file");
        }
        write_layout(&tree, &BuildSpec::default(), &dir.path().join("l0")).expect("base");
        let base = import(&store, "localhost/base:1", &dir.path().join("l0"));
        let upper = dir.path().join("upper");
        std::fs::create_dir_all(upper.join("bin")).expect("mkdir");
        std::fs::write(upper.join("built"), "built\n").expect("built");
        mknod(&upper.join("bin/vi"), SFlag::S_IFCHR, Mode::empty(), 0).expect("whiteout");
        let upper = dirfd::open_root(&upper).expect("open");
        let mut digests = Vec::new();
        for layout in ["l1", "l2"] {
            let layout = dir.path().join(layout);
            let (digest, report) =
                write_layout_from(&store, &base, &upper, "podvm image build --run x", &layout)
                    .expect("build");
            assert_eq!(report.entries, 3, "bin, bin/.wh.vi, built");
            digests.push((digest, layout));
        }
        assert_eq!(
            digests[0].0, digests[1].0,
            "the same writes, the same digest"
        );
        let built = import(&store, "localhost/built:1", &digests[0].1);
        assert_eq!(built.layers.len(), base.layers.len() + 1);
        assert_eq!(
            built.layers[0].digest, base.layers[0].digest,
            "the base's own"
        );
        let rootfs = crate::image::prepare(&store, &built)
            .expect("render")
            .rootfs;
        assert_eq!(
            std::fs::read_to_string(rootfs.join("built")).expect("built"),
            "built\n"
        );
        assert!(!rootfs.join("bin/vi").exists(), "deleted");
        assert!(rootfs.join("bin/sh").exists(), "kept");
    }
}
