//! Fetching appc ACIs: from a file (signature `<file>.asc`), an http(s) URL (signature
//! `<url>.asc`) or an appc name resolved by discovery; the detached signature is verified
//! against the keys trusted for the image's name unless `--insecure-options=image`.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::import::{import, Source};
use super::options::{FetchError, FetchOptions};
use crate::image::aci;
use crate::image::discovery::{AppName, Discoverer};
use crate::image::local::{LocalBlobs, LocalError};
use crate::image::manifest::Parsed;
use crate::image::{http, signature, trust};
use crate::store::record::{BlobRef, ImageRecord};
use crate::store::{Digest, Store};

/// Default cap on a downloaded ACI: 4 GiB (`PODVM_IMAGE_MAX_ACI_BYTES`).
pub const DEFAULT_MAX_ACI: u64 = 4 << 30;

/// Default cap on an ACI's detached signature: 1 MiB (`PODVM_IMAGE_MAX_SIGNATURE_BYTES`).
pub const DEFAULT_MAX_SIGNATURE: u64 = 1 << 20;

/// The environment variable overriding [`DEFAULT_MAX_ACI`] (bytes).
pub const MAX_ACI_VAR: &str = "PODVM_IMAGE_MAX_ACI_BYTES";

/// The environment variable overriding [`DEFAULT_MAX_SIGNATURE`] (bytes).
pub const MAX_SIGNATURE_VAR: &str = "PODVM_IMAGE_MAX_SIGNATURE_BYTES";

/// Bounds on what an ACI fetch reads: the ACI download (checked against its announced
/// `Content-Length` first, then while streaming) and its signature (downloaded or read from a
/// file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AciLimits {
    /// Most bytes of a downloaded ACI.
    pub max_aci: u64,
    /// Most bytes of a signature.
    pub max_signature: u64,
}

impl AciLimits {
    /// The defaults, overridden by [`MAX_ACI_VAR`] and [`MAX_SIGNATURE_VAR`] (a number of
    /// bytes; anything else is ignored).
    pub fn from_env() -> AciLimits {
        let get = |k: &str, d: u64| {
            std::env::var(k)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(d)
        };
        AciLimits {
            max_aci: get(MAX_ACI_VAR, DEFAULT_MAX_ACI),
            max_signature: get(MAX_SIGNATURE_VAR, DEFAULT_MAX_SIGNATURE),
        }
    }
}

/// An ACI's detached signature, or why there is none.
pub enum Sig {
    /// Signature bytes and where they came from.
    Found {
        /// File or URL.
        source: String,
        /// The signature.
        data: Vec<u8>,
    },
    /// No signature could be read.
    Missing {
        /// File or URL tried.
        source: String,
        /// Why it could not be read.
        why: String,
    },
}

/// Fetches the ACI file `path` (image name `name`), with its signature `<path>.asc`.
pub fn from_file(
    store: &Store,
    opts: &FetchOptions,
    name: &str,
    path: &Path,
) -> Result<ImageRecord, FetchError> {
    let mut asc = path.as_os_str().to_owned();
    asc.push(".asc");
    let asc = PathBuf::from(asc);
    let sig = if opts.insecure_image {
        None
    } else {
        Some(read_sig_file(&asc))
    };
    import_aci(store, opts, name, path, sig, None)
}

fn read_sig_file(asc: &Path) -> Sig {
    let source = asc.display().to_string();
    let max = AciLimits::from_env().max_signature;
    let read = std::fs::File::open(asc)
        .map_err(http::ReadError::from)
        .and_then(|f| http::read_capped(f, max));
    match read {
        Ok(data) => Sig::Found { source, data },
        Err(e) => Sig::Missing {
            source,
            why: sig_read_error(e),
        },
    }
}

fn sig_read_error(e: http::ReadError) -> String {
    match e {
        http::ReadError::TooBig(max) => format!(
            "the signature has more than {max} bytes, the most podvm accepts (set {MAX_SIGNATURE_VAR} to raise the limit)"
        ),
        http::ReadError::Io(e) => e.to_string(),
    }
}

/// Fetches the ACI at `url`, with its signature `<url>.asc`.
pub fn from_url(store: &Store, opts: &FetchOptions, url: &str) -> Result<ImageRecord, FetchError> {
    let agent = http::agent(opts.insecure_tls);
    download_and_import(store, opts, &agent, url, url, &format!("{url}.asc"), None)
}

/// Resolves the appc name `input` by discovery and fetches the first ACI that downloads,
/// recording it as `name`.
pub fn discovered(
    store: &Store,
    opts: &FetchOptions,
    input: &str,
    name: &str,
) -> Result<ImageRecord, FetchError> {
    let app = AppName::parse(input)?;
    let agent = http::agent(opts.insecure_tls);
    let d = Discoverer {
        agent: &agent,
        insecure_http: opts.insecure_http,
        http_flag: "--insecure-options=http",
    };
    let endpoints = d.aci_endpoints(&app)?;
    let mut last = None;
    for ep in &endpoints {
        match download_and_import(store, opts, &agent, name, &ep.aci, &ep.asc, Some(&app.name)) {
            Err(e @ FetchError::Download { .. }) => {
                eprintln!("warning: {e}; trying the next discovered location");
                last = Some(e);
            }
            other => return other,
        }
    }
    Err(last.unwrap_or_else(|| FetchError::Download {
        url: input.to_string(),
        why: "discovery returned no location".into(),
    }))
}

fn download_and_import(
    store: &Store,
    opts: &FetchOptions,
    agent: &ureq::Agent,
    name: &str,
    url: &str,
    asc_url: &str,
    expect_name: Option<&str>,
) -> Result<ImageRecord, FetchError> {
    let tmp = store
        .tmp_dir()
        .join(format!("download-{}.aci", std::process::id()));
    let limits = AciLimits::from_env();
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
            .map_err(|e| dl(url, format!("creating {}: {e}", tmp.display())))?;
        download(agent, opts, url, limits.max_aci, &mut f)?;
        let sig = (!opts.insecure_image).then(|| download_sig(agent, opts, asc_url, &limits));
        import_aci(store, opts, name, &tmp, sig, expect_name)
    })();
    let _ = std::fs::remove_file(&tmp);
    result
}

/// The error for an ACI download over `max` bytes.
fn too_large(url: &str, max: u64) -> FetchError {
    FetchError::TooLarge {
        url: url.to_string(),
        what: "an ACI",
        max,
        var: MAX_ACI_VAR,
    }
}

/// Streams the ACI at `url` into `f`, refusing more than `max` bytes (announced or received).
fn download(
    agent: &ureq::Agent,
    opts: &FetchOptions,
    url: &str,
    max: u64,
    f: &mut std::fs::File,
) -> Result<(), FetchError> {
    let resp = get(agent, opts, url)?;
    let announced = resp
        .header("Content-Length")
        .and_then(|v| v.trim().parse::<u64>().ok());
    if announced.is_some_and(|n| n > max) {
        return Err(too_large(url, max));
    }
    let mut r = http::Capped::new(resp.into_reader(), max);
    crate::store::copy_large(&mut r, f, announced).map_err(|e| match http::cap_exceeded(&e) {
        Some(max) => too_large(url, max),
        None => dl(url, e.to_string()),
    })?;
    Ok(())
}

fn dl(url: &str, why: String) -> FetchError {
    FetchError::Download {
        url: url.to_string(),
        why,
    }
}

/// GETs `url`, following redirects without ever downgrading to plain http (unless
/// `--insecure-options=http`).
fn get(agent: &ureq::Agent, opts: &FetchOptions, url: &str) -> Result<ureq::Response, FetchError> {
    let policy = http::Policy::fetch(opts.insecure_http);
    http::parse_url(url)
        .and_then(|u| http::get(agent, policy, u, &[], None))
        .map_err(|e| match e {
            http::HttpError::Status {
                url: at,
                status,
                resp,
                ..
            } => dl(
                url,
                format!("HTTP {status} from {at}: {}", http::error_excerpt(*resp)),
            ),
            e => dl(url, e.to_string()),
        })
}

fn download_sig(agent: &ureq::Agent, opts: &FetchOptions, url: &str, limits: &AciLimits) -> Sig {
    let read = || -> Result<Vec<u8>, String> {
        let resp = get(agent, opts, url).map_err(|e| e.to_string())?;
        http::read_capped(resp.into_reader(), limits.max_signature).map_err(sig_read_error)
    };
    match read() {
        Ok(data) => Sig::Found {
            source: url.to_string(),
            data,
        },
        Err(why) => Sig::Missing {
            source: url.to_string(),
            why,
        },
    }
}

/// Verifies (when `sig` is given) and imports the ACI at `path`; `expect_name` is the name
/// discovery resolved, which the manifest must carry.
fn import_aci(
    store: &Store,
    opts: &FetchOptions,
    name: &str,
    path: &Path,
    sig: Option<Sig>,
    expect_name: Option<&str>,
) -> Result<ImageRecord, FetchError> {
    let manifest = aci::read_manifest(name, path)?;
    let bare = aci::image_name(name, &manifest)?;
    if let Some(want) = expect_name {
        if bare != want {
            return Err(FetchError::NameMismatch {
                image: name.to_string(),
                expected: want.to_string(),
                actual: bare,
            });
        }
    }
    if let Some(sig) = sig {
        verify(opts, name, &bare, path, sig)?;
    }
    let io_e = |source| LocalError::Io {
        image: name.to_string(),
        what: "reading ACI",
        path: path.to_path_buf(),
        source,
    };
    let f = std::fs::File::open(path).map_err(io_e)?;
    let (digest, size) = Digest::of_reader(f).map_err(io_e)?;
    store.put_bytes(&manifest, None, &format!("manifest of {name}"))?;
    let appc = aci::appc_name(name, &manifest)?;
    let aci_blob = BlobRef {
        digest: digest.clone(),
        media_type: aci::ACI_MEDIA_TYPE.to_string(),
        size,
    };
    let blobs = LocalBlobs {
        files: [(digest, path.to_path_buf())].into_iter().collect(),
        layout: None,
    };
    let parsed = Parsed::Image {
        media_type: aci::MANIFEST_MEDIA_TYPE.to_string(),
        config: aci_blob.clone(),
        layers: vec![aci_blob],
    };
    import(
        store,
        name,
        &Source::Local(&blobs),
        &manifest,
        parsed,
        vec![appc],
    )
}

fn verify(
    opts: &FetchOptions,
    image: &str,
    appc_name: &str,
    path: &Path,
    sig: Sig,
) -> Result<(), FetchError> {
    let (source, data) = match sig {
        Sig::Found { source, data } => (source, data),
        Sig::Missing { source, why } => {
            return Err(FetchError::SignatureMissing {
                image: image.to_string(),
                location: source,
                why,
            })
        }
    };
    let keys = trust::keys_for(&opts.data_dir, appc_name);
    let v = signature::verify(image, appc_name, path, &source, &data, &keys)?;
    let who = v
        .users
        .first()
        .map(String::as_str)
        .unwrap_or("(no user id)");
    eprintln!(
        "signature verified: {appc_name} signed by {who} (key {}, trusted for {})",
        v.fingerprint, v.scope
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_default_and_env_names() {
        // The defaults the docs promise (the variables are not set in unit tests).
        if std::env::var_os(MAX_ACI_VAR).is_none() && std::env::var_os(MAX_SIGNATURE_VAR).is_none()
        {
            assert_eq!(
                AciLimits::from_env(),
                AciLimits {
                    max_aci: 4 << 30,
                    max_signature: 1 << 20
                }
            );
        }
        let e = too_large("https://h/a.aci", 1024).to_string();
        assert!(
            e.contains("https://h/a.aci") && e.contains("1024") && e.contains(MAX_ACI_VAR),
            "{e}"
        );
        let e = sig_read_error(http::ReadError::TooBig(10));
        assert!(
            e.contains("10 bytes") && e.contains(MAX_SIGNATURE_VAR),
            "{e}"
        );
    }

    fn opts() -> FetchOptions {
        FetchOptions {
            insecure_http: true,
            insecure_tls: false,
            insecure_image: true,
            pull_policy: Default::default(),
            data_dir: PathBuf::from("/nonexistent"),
        }
    }

    #[test]
    fn download_stops_at_the_cap_while_streaming() {
        // Attack: a server that announces no length and sends more than the cap; podvm must
        // stop reading at the cap (and write no more than the cap), not fill the disk.
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let s = http::test_server::serve(l, |path| match path {
            "/big.aci" => http::test_server::ok(&vec![7u8; 300_000], false),
            "/announced.aci" => http::test_server::ok(&vec![7u8; 300_000], true),
            _ => http::test_server::ok(&vec![7u8; 100_000], false),
        });
        let t = tempfile::tempdir().expect("tempdir");
        let agent = http::agent(false);
        for name in ["big.aci", "announced.aci"] {
            let url = format!("{}/{name}", s.base);
            let mut f = std::fs::File::create(t.path().join(name)).expect("create");
            let e = download(&agent, &opts(), &url, 200_000, &mut f).expect_err("over the cap");
            assert!(
                matches!(&e, FetchError::TooLarge { max: 200_000, .. })
                    && e.to_string().contains(&url),
                "{e}"
            );
            let written = f.metadata().expect("stat").len();
            assert!(written <= 200_000, "{name}: wrote {written} bytes");
        }
        let mut f = std::fs::File::create(t.path().join("ok")).expect("create");
        download(
            &agent,
            &opts(),
            &format!("{}/ok.aci", s.base),
            200_000,
            &mut f,
        )
        .expect("under the cap");
        assert_eq!(f.metadata().expect("stat").len(), 100_000);
    }
}
