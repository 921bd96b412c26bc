//! Fetching images into the store: resolve the input, download/copy verified blobs, validate
//! and render the layers, then record the image.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};

use super::aci;
use super::discovery;
use super::fetch_aci;
use super::local::{self, LocalBlobs, LocalError};
use super::manifest::{self, ManifestError, Parsed};
use super::progress::Progress;
use super::reference::{DockerRef, ReferenceError};
use super::registry::{Client, RegistryError};
use super::render::{ensure_rendered_with, RenderError};
use super::ImageError;
use crate::store::record::{now, BlobRef, ImageRecord};
use crate::store::{Digest, Store, StoreError};

/// Parallel layer downloads.
const PARALLEL: usize = 4;

/// Largest image config (OCI/Docker config JSON) accepted: it is read into memory.
pub const MAX_CONFIG: u64 = 16 << 20;

/// When to contact the remote (rkt's `--pull-policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum PullPolicy {
    /// Use the store if the image is there, fetch otherwise.
    #[default]
    New,
    /// Always fetch (updating the name to the remote's current image).
    Update,
    /// Only use the store.
    Never,
}

/// Options of a fetch.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// Allow plain-http registries, discovery and downloads (`--insecure-options=http`).
    pub insecure_http: bool,
    /// Accept any TLS certificate (`--insecure-options=tls`).
    pub insecure_tls: bool,
    /// Allow images without signature verification (`--insecure-options=image`); required for
    /// `docker://` images.
    pub insecure_image: bool,
    /// Pull policy.
    pub pull_policy: PullPolicy,
    /// podvm's data dir (for `auth.d/`).
    pub data_dir: PathBuf,
}

/// Errors of a fetch.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Bad reference.
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    /// Registry failure.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// Bad manifest.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// Local input failure.
    #[error(transparent)]
    Local(#[from] LocalError),
    /// Store failure.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Render (layer validation) failure.
    #[error(transparent)]
    Render(#[from] RenderError),
    /// Config failure.
    #[error(transparent)]
    Config(#[from] super::config::ConfigError),
    /// docker:// without `--insecure-options=image`.
    #[error("{0}: docker images cannot be verified (they have no signatures); pass --insecure-options=image to fetch it anyway")]
    NeedsInsecureImage(String),
    /// `--pull-policy=never` and not in the store.
    #[error("{0}: not in the store and --pull-policy=never")]
    NotInStore(String),
    /// A manifest digest differs from what was asked for.
    #[error("{image}: the registry returned manifest {actual}, not the requested {expected}")]
    ManifestDigest {
        /// Image name.
        image: String,
        /// Requested digest.
        expected: Digest,
        /// Received digest.
        actual: Digest,
    },
    /// An ACI without a readable signature (and no `--insecure-options=image`).
    #[error("{image}: no signature ({location}: {why}); ACIs must carry a detached signature by a key trusted with `podvm trust`, or pass --insecure-options=image to skip verification")]
    SignatureMissing {
        /// Image.
        image: String,
        /// The signature file or URL tried.
        location: String,
        /// Why it could not be read.
        why: String,
    },
    /// Signature verification failed.
    #[error(transparent)]
    Signature(#[from] super::signature::SignatureError),
    /// appc discovery failed.
    #[error(transparent)]
    Discovery(#[from] super::discovery::DiscoveryError),
    /// A discovered ACI names another image in its manifest.
    #[error("{image}: the discovered ACI's manifest names {actual:?}, not {expected:?}")]
    NameMismatch {
        /// Image.
        image: String,
        /// The name asked for.
        expected: String,
        /// The name in the manifest.
        actual: String,
    },
    /// ACI failure.
    #[error(transparent)]
    Aci(#[from] aci::AciError),
    /// Download of an ACI URL failed.
    #[error("{url}: download failed: {why}")]
    Download {
        /// The URL.
        url: String,
        /// The cause.
        why: String,
    },
    /// A download larger than podvm accepts.
    #[error("{url}: refused, {what} may have at most {max} bytes (set {var} to raise the limit); nothing was stored")]
    TooLarge {
        /// The URL.
        url: String,
        /// What was downloaded (`an ACI`, ...).
        what: &'static str,
        /// The limit in bytes.
        max: u64,
        /// The environment variable that sets the limit.
        var: &'static str,
    },
    /// A manifest declares a blob larger than podvm accepts (checked before downloading it;
    /// a blob is never read past the size its descriptor declares).
    #[error("{image}: {what} {digest} declares {size} bytes, more than the {max} podvm accepts{hint}; nothing was downloaded")]
    DeclaredTooLarge {
        /// Image.
        image: String,
        /// `config` or `layer`.
        what: &'static str,
        /// The blob.
        digest: Digest,
        /// Its declared size.
        size: u64,
        /// The limit.
        max: u64,
        /// How to raise the limit, if it can be.
        hint: &'static str,
    },
    /// Unknown input kind.
    #[error("{0:?}: unsupported image input (use docker://..., oci:DIR[:tag], oci-archive:FILE, docker-archive:FILE, FILE.aci, https://.../FILE.aci or an appc name such as example.com/app:v1){1}")]
    Unsupported(String, &'static str),
}

/// Where blobs come from.
pub(super) enum Source<'a> {
    Registry(&'a Client),
    Local(&'a LocalBlobs),
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
        fetch_docker(store, opts, &name)?
    } else if let Some(rest) = input.strip_prefix("oci:") {
        let (dir, tag) = local::split_tag(rest);
        let (m, blobs) = local::oci_layout_manifest(&name, Path::new(dir), tag)?;
        import_local_manifest(store, &name, &m, &blobs, Vec::new())?
    } else if let Some(rest) = input.strip_prefix("oci-archive:") {
        let (file, tag) = local::split_tag(rest);
        let dir = local::extract_archive(store, &name, Path::new(file))?;
        let r = local::oci_layout_manifest(&name, &dir, tag)
            .map_err(FetchError::from)
            .and_then(|(m, blobs)| import_local_manifest(store, &name, &m, &blobs, Vec::new()));
        let _ = std::fs::remove_dir_all(&dir);
        r?
    } else if let Some(file) = input.strip_prefix("docker-archive:") {
        let dir = local::extract_archive(store, &name, Path::new(file))?;
        let r = import_docker_archive(store, &name, &dir);
        let _ = std::fs::remove_dir_all(&dir);
        r?
    } else if input.starts_with("https://") || input.starts_with("http://") {
        fetch_aci::from_url(store, opts, &name)?
    } else if name.ends_with(".aci") || input.starts_with("file://") {
        fetch_aci::from_file(store, opts, &name, Path::new(&name))?
    } else if discovery::is_discoverable(input) {
        fetch_aci::discovered(store, opts, input, &name)?
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

fn fetch_docker(store: &Store, opts: &FetchOptions, name: &str) -> Result<ImageRecord, FetchError> {
    if !opts.insecure_image {
        return Err(FetchError::NeedsInsecureImage(name.to_string()));
    }
    let r = DockerRef::parse(name)?;
    let client = Client::connect(&r, opts.insecure_http, opts.insecure_tls, &opts.data_dir)?;
    let (mut bytes, mut digest, mut ctype) = client.manifest(&r.manifest_reference())?;
    if let Some(want) = &r.digest {
        check_digest(name, want, &digest)?;
    }
    let mut parsed = manifest::parse(name, &bytes, ctype.as_deref())?;
    if let Parsed::Index { chosen } = &parsed {
        let want = chosen.digest.clone();
        (bytes, digest, ctype) = client.manifest(&want.to_string())?;
        check_digest(name, &want, &digest)?;
        parsed = manifest::parse(name, &bytes, ctype.as_deref())?;
    }
    store.put_bytes(&bytes, Some(&digest), &format!("manifest of {name}"))?;
    import(
        store,
        name,
        &Source::Registry(&client),
        &bytes,
        parsed,
        Vec::new(),
    )
}

fn check_digest(name: &str, want: &Digest, got: &Digest) -> Result<(), FetchError> {
    if want == got {
        return Ok(());
    }
    Err(FetchError::ManifestDigest {
        image: name.to_string(),
        expected: want.clone(),
        actual: got.clone(),
    })
}

fn import_local_manifest(
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

fn import_docker_archive(store: &Store, name: &str, dir: &Path) -> Result<ImageRecord, FetchError> {
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

/// Common tail: blobs, config, render, record.
/// Validates, renders and records an image whose manifest is parsed (blobs from `src`).
pub(super) fn import(
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
    let max_layer = super::layer::Limits::from_env().max_bytes;
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
        super::config::app_defaults(name, &store.read_blob(&config.digest)?)?;
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

fn ensure_blob(
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
