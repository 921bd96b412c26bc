//! The common tail of every fetch: with the manifest parsed and its blobs reachable (a
//! registry or a local layout), check the declared sizes, store config and layers, render the
//! layers as they arrive, and record the image.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};

use super::options::{FetchError, MAX_CONFIG};
use crate::image::aci;
use crate::image::local::{LocalBlobs, LocalError};
use crate::image::manifest::{ManifestError, Parsed};
use crate::image::progress::Progress;
use crate::image::registry::Client;
use crate::image::render::{ensure_rendered_with, RenderError};
use crate::store::record::{now, BlobRef, ImageRecord};
use crate::store::{Digest, Store, StoreError};

/// Parallel layer downloads.
const PARALLEL: usize = 4;

/// Where blobs come from.
pub enum Source<'a> {
    Registry(&'a Client),
    Local(&'a LocalBlobs),
}

/// Common tail: blobs, config, render, record.
/// Validates, renders and records an image whose manifest is parsed (blobs from `src`).
pub fn import(
    store: &Store,
    name: &str,
    src: &Source,
    manifest_bytes: &[u8],
    parsed: Parsed,
    extra_names: Vec<String>,
) -> Result<ImageRecord, FetchError> {
    let Parsed::Image {
        media_type,
        config,
        layers,
    } = parsed
    else {
        return Err(ManifestError::Parse {
            what: name.to_string(),
            why: "nested image index".into(),
        }
        .into());
    };
    if config.media_type != aci::ACI_MEDIA_TYPE && config.size > MAX_CONFIG {
        return Err(FetchError::DeclaredTooLarge {
            image: name.to_string(),
            what: "config",
            digest: config.digest.clone(),
            size: config.size,
            max: MAX_CONFIG,
            hint: "",
        });
    }
    let max_layer = crate::image::layer::Limits::from_env().max_bytes;
    if let Some(l) = layers.iter().find(|l| l.size > max_layer) {
        // A compressed layer larger than what the whole image may expand to cannot be valid.
        return Err(FetchError::DeclaredTooLarge {
            image: name.to_string(),
            what: "layer",
            digest: l.digest.clone(),
            size: l.size,
            max: max_layer,
            hint: " (PODVM_IMAGE_MAX_BYTES sets the limit)",
        });
    }
    ensure_blob(store, src, &config, &Progress::bar("config", config.size))?;
    if config.media_type == aci::ACI_MEDIA_TYPE {
        aci::app_defaults(name, manifest_bytes)?;
    } else {
        crate::image::config::app_defaults(name, &store.read_blob(&config.digest)?)?;
    }
    let total = layers.iter().map(|l| l.size).sum();
    let progress = Progress::bar("downloading", total);
    download_and_render(store, src, name, &config.digest, &layers, &progress)?;
    progress.finish();
    let mut names = vec![name.to_string()];
    names.extend(extra_names);
    let t = now();
    let rec = ImageRecord {
        id: config.digest.clone(),
        names,
        manifest: BlobRef {
            digest: crate::store::Digest::of_bytes(manifest_bytes),
            media_type,
            size: manifest_bytes.len() as u64,
        },
        config,
        layers,
        import_time: t,
        last_used: t,
    };
    Ok(store.save_record(&rec)?)
}

/// Downloads the layers in parallel while rendering them in order as they arrive.
fn download_and_render(
    store: &Store,
    src: &Source,
    name: &str,
    id: &Digest,
    layers: &[BlobRef],
    progress: &Progress,
) -> Result<(), FetchError> {
    let next = AtomicUsize::new(0);
    // (layers done, first download error)
    let state: Mutex<(Vec<bool>, Option<FetchError>)> =
        Mutex::new((vec![false; layers.len()], None));
    let changed = Condvar::new();
    let rendered = std::thread::scope(|s| {
        for _ in 0..PARALLEL.min(layers.len()) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(b) = layers.get(i) else { break };
                let r = ensure_blob(store, src, b, progress);
                let failed = r.is_err();
                if let Ok(mut g) = state.lock() {
                    match r {
                        Ok(()) => g.0[i] = true,
                        Err(e) => {
                            g.1.get_or_insert(e);
                        }
                    }
                }
                changed.notify_all();
                if failed {
                    next.store(layers.len(), Ordering::SeqCst);
                    break;
                }
            });
        }
        let ready = |i: usize| -> Result<(), RenderError> {
            let mut g = state
                .lock()
                .map_err(|_| RenderError::Aborted(name.to_string()))?;
            loop {
                if g.1.is_some() {
                    return Err(RenderError::Aborted(name.to_string()));
                }
                if g.0[i] {
                    return Ok(());
                }
                g = changed
                    .wait(g)
                    .map_err(|_| RenderError::Aborted(name.to_string()))?;
            }
        };
        let r = ensure_rendered_with(store, name, id, layers, &ready);
        if r.is_err() {
            // Stop starting downloads; those under way finish (and stay for a later fetch).
            next.store(layers.len(), Ordering::SeqCst);
        }
        r
    });
    if let Ok((_, Some(e))) = state.into_inner() {
        return Err(e);
    }
    rendered?;
    Ok(())
}

pub fn ensure_blob(
    store: &Store,
    src: &Source,
    b: &BlobRef,
    progress: &Progress,
) -> Result<(), FetchError> {
    if store.has_blob(&b.digest) {
        progress.inc(b.size);
        return Ok(());
    }
    match src {
        Source::Registry(c) => Ok(c.fetch_blob(store, b, progress)?),
        Source::Local(l) => {
            let path = l
                .path(&b.digest)
                .ok_or_else(|| StoreError::MissingBlob(b.digest.clone()))?;
            let f = std::fs::File::open(&path).map_err(|e| LocalError::Io {
                image: String::new(),
                what: "opening blob",
                path: path.clone(),
                source: e,
            })?;
            let mut r = progress.wrap_read(f);
            store.put_reader(
                &mut r,
                &b.digest,
                Some(b.size),
                &format!("blob {} ({})", b.digest, path.display()),
            )?;
            Ok(())
        }
    }
}
