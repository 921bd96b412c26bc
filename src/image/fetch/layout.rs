//! Images from local files: an OCI layout (`oci:`, and `oci-archive:` once extracted) or a
//! `docker save` archive (`docker-archive:`).

use std::path::Path;

use super::import::{ensure_blob, import, Source};
use super::options::FetchError;
use crate::image::local::{self, LocalBlobs};
use crate::image::manifest::{self, Parsed};
use crate::image::progress::Progress;
use crate::image::reference::DockerRef;
use crate::store::record::{BlobRef, ImageRecord};
use crate::store::Store;

pub fn import_local_manifest(
    store: &Store,
    name: &str,
    m: &BlobRef,
    blobs: &LocalBlobs,
    extra_names: Vec<String>,
) -> Result<ImageRecord, FetchError> {
    let mut desc = m.clone();
    loop {
        ensure_blob(store, &Source::Local(blobs), &desc, &Progress::bar("", 0))?;
        let bytes = store.read_blob(&desc.digest)?;
        match manifest::parse(name, &bytes, Some(&desc.media_type))? {
            Parsed::Index { chosen } => desc = chosen,
            parsed => {
                return import(
                    store,
                    name,
                    &Source::Local(blobs),
                    &bytes,
                    parsed,
                    extra_names,
                )
            }
        }
    }
}

pub fn import_docker_archive(
    store: &Store,
    name: &str,
    dir: &Path,
) -> Result<ImageRecord, FetchError> {
    let (bytes, blobs, tags) = local::docker_archive_manifest(name, dir)?;
    let mut names = Vec::new();
    for t in tags {
        if let Ok(r) = DockerRef::parse(&t) {
            names.push(r.to_string());
        }
    }
    store.put_bytes(&bytes, None, &format!("manifest of {name}"))?;
    let parsed = manifest::parse(name, &bytes, None)?;
    import(store, name, &Source::Local(&blobs), &bytes, parsed, names)
}
