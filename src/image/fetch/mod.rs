//! Fetching images into the store: resolve the input, download/copy verified blobs, validate
//! and render the layers, then record the image.
//!
//! One way down: [`fetch`] picks the source module ([`docker`] registries, [`layout`] local
//! OCI layouts and archives, [`aci`] appc images), each of which hands the parsed manifest to
//! [`import`]; every module uses the [`options`] types.

mod aci;
mod docker;
mod import;
mod layout;
mod options;

use std::path::{Path, PathBuf};

pub use self::options::{FetchError, FetchOptions, PullPolicy};
use crate::image::reference::DockerRef;
use crate::image::{discovery, local, ImageError};
use crate::store::record::ImageRecord;
use crate::store::{Store, StoreError};

/// Imports the image tagged `latest` in the OCI layout at `dir` under `name` (a canonical
/// name, e.g. `docker://localhost/tool:1`), as `image build` does with what it built.
pub fn import_layout(store: &Store, name: &str, dir: &Path) -> Result<ImageRecord, ImageError> {
    let _lock = store.lock(false)?;
    let (manifest, blobs) =
        local::oci_layout_manifest(name, dir, Some("latest")).map_err(FetchError::from)?;
    Ok(layout::import_local_manifest(
        store,
        name,
        &manifest,
        &blobs,
        Vec::new(),
    )?)
}

/// Fetches `input` into the store (obeying the pull policy) and returns its record.
pub fn fetch(store: &Store, opts: &FetchOptions, input: &str) -> Result<ImageRecord, ImageError> {
    let name = canonical_name(input)?;
    if opts.pull_policy != PullPolicy::Update {
        match store.find(input, Some(&name)) {
            Ok(rec) => {
                store.touch_record(&rec.id)?;
                return Ok(rec);
            }
            Err(StoreError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
        if opts.pull_policy == PullPolicy::Never {
            return Err(FetchError::NotInStore(input.to_string()).into());
        }
    }
    let _lock = store.lock(false)?;
    let rec = if input.starts_with("docker://") {
        docker::fetch_docker(store, opts, &name)?
    } else if let Some(rest) = input.strip_prefix("oci:") {
        let (dir, tag) = local::split_tag(rest);
        let (m, blobs) = local::oci_layout_manifest(&name, Path::new(dir), tag)?;
        layout::import_local_manifest(store, &name, &m, &blobs, Vec::new())?
    } else if let Some(rest) = input.strip_prefix("oci-archive:") {
        let (file, tag) = local::split_tag(rest);
        let dir = local::extract_archive(store, &name, Path::new(file))?;
        let r = local::oci_layout_manifest(&name, &dir, tag)
            .map_err(FetchError::from)
            .and_then(|(m, blobs)| {
                layout::import_local_manifest(store, &name, &m, &blobs, Vec::new())
            });
        let _ = std::fs::remove_dir_all(&dir);
        r?
    } else if let Some(file) = input.strip_prefix("docker-archive:") {
        let dir = local::extract_archive(store, &name, Path::new(file))?;
        let r = layout::import_docker_archive(store, &name, &dir);
        let _ = std::fs::remove_dir_all(&dir);
        r?
    } else if input.starts_with("https://") || input.starts_with("http://") {
        aci::from_url(store, opts, &name)?
    } else if name.ends_with(".aci") || input.starts_with("file://") {
        aci::from_file(store, opts, &name, Path::new(&name))?
    } else if discovery::is_discoverable(input) {
        aci::discovered(store, opts, input, &name)?
    } else {
        return Err(FetchError::Unsupported(input.to_string(), "").into());
    };
    Ok(rec)
}

/// The canonical store name of an input (absolute paths for local inputs).
pub fn canonical_name(input: &str) -> Result<String, FetchError> {
    if input.starts_with("docker://") {
        return Ok(DockerRef::parse(input)?.to_string());
    }
    for prefix in ["oci:", "oci-archive:", "docker-archive:"] {
        if let Some(rest) = input.strip_prefix(prefix) {
            let (path, tag) = if prefix == "docker-archive:" {
                (rest, None)
            } else {
                local::split_tag(rest)
            };
            let abs = std::path::absolute(path).unwrap_or_else(|_| PathBuf::from(path));
            let tag = tag.map(|t| format!(":{t}")).unwrap_or_default();
            return Ok(format!("{prefix}{}{tag}", abs.display()));
        }
    }
    if input.starts_with("https://") || input.starts_with("http://") {
        if !input.ends_with(".aci") {
            return Err(FetchError::Unsupported(
                input.to_string(),
                "; URLs must name an .aci file",
            ));
        }
        return Ok(input.to_string());
    }
    if let Some(path) = input
        .strip_prefix("file://")
        .or(input.ends_with(".aci").then_some(input))
    {
        let abs = std::path::absolute(path).unwrap_or_else(|_| PathBuf::from(path));
        return Ok(abs.display().to_string());
    }
    if discovery::is_discoverable(input) {
        let mut app = discovery::AppName::parse(input)?;
        app.labels
            .entry("version".into())
            .or_insert_with(|| "latest".into());
        return Ok(app.canonical());
    }
    Ok(input.to_string())
}
