//! What a fetch is asked to do and how it fails: the pull policy, the options, the error.

use std::path::PathBuf;

use crate::image::aci;
use crate::image::config::ConfigError;
use crate::image::discovery::DiscoveryError;
use crate::image::local::LocalError;
use crate::image::manifest::ManifestError;
use crate::image::reference::ReferenceError;
use crate::image::registry::RegistryError;
use crate::image::render::RenderError;
use crate::image::signature::SignatureError;
use crate::store::{Digest, StoreError};

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
    Config(#[from] ConfigError),
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
    Signature(#[from] SignatureError),
    /// appc discovery failed.
    #[error(transparent)]
    Discovery(#[from] DiscoveryError),
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
