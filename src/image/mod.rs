//! Images: references, registry client, local inputs, layer application and rendering, and
//! translation of image configs into app defaults.
//!
//! What the pods code uses:
//! ```ignore
//! let store = Store::open(&data_dir)?;
//! let rec = image::fetch::fetch(&store, &opts, "docker://busybox")?; // or image::resolve(&store, "busybox")
//! let img = image::prepare(&store, &rec)?; // img.rootfs: rendered tree; img.defaults: AppDefaults
//! ```

pub mod aci;
pub mod acname;
pub mod auth;
pub mod build;
pub mod build_from;
pub mod config;
pub mod dirfd;
pub mod discovery;
pub mod fetch;
pub mod http;
pub mod layer;
pub mod local;
pub mod manifest;
mod progress;
pub mod reference;
pub mod registry;
pub mod render;
pub mod safepath;
pub mod signature;
pub mod trust;
pub mod upper_layer;

use std::path::PathBuf;

pub use config::AppDefaults;

use crate::store::{ImageRecord, Store, StoreError};

/// Errors of the image layer as a whole.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// Fetch failure.
    #[error(transparent)]
    Fetch(#[from] fetch::FetchError),
    /// Store failure.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Render failure.
    #[error(transparent)]
    Render(#[from] render::RenderError),
    /// Config failure.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// Local input failure.
    #[error(transparent)]
    Local(#[from] local::LocalError),
}

/// An image ready for a pod: its record, rendered rootfs and app defaults.
#[derive(Debug, Clone)]
pub struct PreparedImage {
    /// The store's record.
    pub record: ImageRecord,
    /// The rendered rootfs tree (shared, read-only by convention: pods must not modify it).
    pub rootfs: PathBuf,
    /// What the image config says about running its app.
    pub defaults: AppDefaults,
}

/// Finds an image in the store by name (as given to `fetch`, or canonical) or id.
pub fn resolve(store: &Store, query: &str) -> Result<ImageRecord, ImageError> {
    let canonical = fetch::canonical_name(query).ok();
    Ok(store.find(query, canonical.as_deref())?)
}

/// [`prepare`] of the image `query` names (a pod manifest's image id, say).
pub fn prepare_named(store: &Store, query: &str) -> Result<PreparedImage, ImageError> {
    prepare(store, &resolve(store, query)?)
}

/// Renders (if not cached) the image's rootfs and reads its app defaults; marks it used.
pub fn prepare(store: &Store, rec: &ImageRecord) -> Result<PreparedImage, ImageError> {
    let name = rec
        .names
        .first()
        .cloned()
        .unwrap_or_else(|| rec.id.to_string());
    let _lock = store.lock(false)?;
    let rootfs = render::ensure_rendered(store, &name, &rec.id, &rec.layers)?;
    let defaults = defaults_for(store, &name, &rec.manifest, &rec.config)?;
    store.touch_record(&rec.id)?;
    Ok(PreparedImage {
        record: rec.clone(),
        rootfs,
        defaults,
    })
}

/// The app defaults of an image from its config blob (or, for an ACI, its appc manifest).
pub fn defaults_for(
    store: &Store,
    name: &str,
    manifest: &crate::store::record::BlobRef,
    config_blob: &crate::store::record::BlobRef,
) -> Result<AppDefaults, ImageError> {
    Ok(if config_blob.media_type == aci::ACI_MEDIA_TYPE {
        aci::app_defaults(name, &store.read_blob(&manifest.digest)?)?
    } else {
        config::app_defaults(name, &store.read_blob(&config_blob.digest)?)?
    })
}
