//! Rendering an image's layers into a cached rootfs tree (`trees/<id>/rootfs`).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::layer::{Applier, LayerError, Limits};
use super::progress::Progress;
use crate::store::record::BlobRef;
use crate::store::{Digest, Store, StoreError};

/// Errors rendering.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// A layer could not be applied.
    #[error(transparent)]
    Layer(#[from] LayerError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A layer's uncompressed content differs from the image config's diff id.
    #[error("image {image}: layer {layer} uncompresses to {actual}, but the image config says {expected}; refusing the image")]
    DiffId {
        /// Image name.
        image: String,
        /// Layer (compressed) digest.
        layer: Digest,
        /// diff id from the config.
        expected: Digest,
        /// Actual digest of the uncompressed stream.
        actual: Digest,
    },
    /// A layer could not be obtained (the cause is reported by the caller).
    #[error("image {0}: a layer download failed")]
    Aborted(String),
    /// Filesystem error on the tree.
    #[error("image {image}: {what} {path}: {source}")]
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
}

/// Returns the rendered rootfs of image `id` (whose layers are `layers`), rendering it first
/// if it is not cached. Rendering happens in `tmp/` and the finished tree is renamed into
/// `trees/`, so a tree in `trees/` is always complete.
pub fn ensure_rendered(
    store: &Store,
    name: &str,
    id: &Digest,
    layers: &[BlobRef],
) -> Result<PathBuf, RenderError> {
    ensure_rendered_with(store, name, id, layers, &|_| Ok(()))
}

/// Like [`ensure_rendered`], calling `ready(i)` before applying layer `i`: it blocks until
/// the layer's blob is in the store (so that rendering overlaps with downloads).
pub fn ensure_rendered_with(
    store: &Store,
    name: &str,
    id: &Digest,
    layers: &[BlobRef],
    ready: &dyn Fn(usize) -> Result<(), RenderError>,
) -> Result<PathBuf, RenderError> {
    let dest = store.tree_dir(id);
    let rootfs = dest.join("rootfs");
    if rootfs.is_dir() {
        return Ok(rootfs);
    }
    let io_e = |what, path: &Path| {
        let (image, path) = (name.to_string(), path.to_path_buf());
        move |source| RenderError::Io {
            image,
            what,
            path,
            source,
        }
    };
    let work = store
        .tmp_dir()
        .join(format!("render-{}-{}", id.hex(), std::process::id()));
    if work.exists() {
        fs::remove_dir_all(&work).map_err(io_e("removing stale", &work))?;
    }
    let work_rootfs = work.join("rootfs");
    // The tree's own directory is root's alone (0700); the rootfs in it keeps the image's modes.
    crate::private::create_dir_all(&work).map_err(io_e("creating", &work))?;
    fs::create_dir(&work_rootfs).map_err(io_e("creating", &work_rootfs))?;
    let result = apply_all(store, name, id, &work_rootfs, layers, ready);
    if let Err(e) = result {
        let _ = fs::remove_dir_all(&work);
        return Err(e);
    }
    match fs::rename(&work, &dest) {
        Ok(()) => {}
        // A concurrent render of the same image won: use its tree.
        Err(_) if rootfs.is_dir() => {
            let _ = fs::remove_dir_all(&work);
        }
        Err(e) => {
            let _ = fs::remove_dir_all(&work);
            return Err(io_e("renaming rendered tree to", &dest)(e));
        }
    }
    crate::store::sync_dir(&store.root().join("trees"));
    Ok(rootfs)
}

fn apply_all(
    store: &Store,
    name: &str,
    id: &Digest,
    rootfs: &Path,
    layers: &[BlobRef],
    ready: &dyn Fn(usize) -> Result<(), RenderError>,
) -> Result<(), RenderError> {
    let mut applier = Applier::new(rootfs, name, Limits::from_env());
    let diff_ids = diff_ids(store, id, layers);
    let total = layers.iter().map(|l| l.size).sum();
    let progress = Progress::bar("unpacking", total);
    for (i, l) in layers.iter().enumerate() {
        ready(i)?;
        let f = store.open_blob(&l.digest)?;
        let is_aci = l.media_type == super::aci::ACI_MEDIA_TYPE;
        applier.set_prefix(is_aci.then_some(&b"rootfs/"[..]));
        let diff_id = applier.apply(&l.digest.to_string(), l.size, progress.wrap_read(f))?;
        if let Some(want) = diff_ids.get(i) {
            if *want != diff_id {
                return Err(RenderError::DiffId {
                    image: name.to_string(),
                    layer: l.digest.clone(),
                    expected: want.clone(),
                    actual: diff_id,
                });
            }
        }
    }
    progress.finish();
    applier.finish()?;
    Ok(())
}

/// The `rootfs.diff_ids` of the image config `id` (the image id is its config's digest), when
/// there is one per layer. Empty for ACIs and configs without them (nothing to check).
fn diff_ids(store: &Store, id: &Digest, layers: &[BlobRef]) -> Vec<Digest> {
    #[derive(serde::Deserialize)]
    struct Config {
        rootfs: Option<RootFs>,
    }
    #[derive(serde::Deserialize)]
    struct RootFs {
        #[serde(default)]
        diff_ids: Vec<Digest>,
    }
    if layers
        .iter()
        .any(|l| l.media_type == super::aci::ACI_MEDIA_TYPE)
    {
        return Vec::new();
    }
    let ids = store
        .read_blob(id)
        .ok()
        .and_then(|b| serde_json::from_slice::<Config>(&b).ok())
        .and_then(|c| c.rootfs)
        .map(|r| r.diff_ids)
        .unwrap_or_default();
    if ids.len() == layers.len() {
        ids
    } else {
        Vec::new()
    }
}
