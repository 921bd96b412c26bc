//! Fetching appc ACIs: from a file (signature `<file>.asc`), an http(s) URL (signature
//! `<url>.asc`) or an appc name resolved by discovery; the detached signature is verified
//! against the keys trusted for the image's name unless `--insecure-options=image`.

use std::io::Read;
use std::path::{Path, PathBuf};

use super::aci;
use super::discovery::{AppName, Discoverer};
use super::fetch::{import, FetchError, FetchOptions, Source};
use super::http;
use super::local::{LocalBlobs, LocalError};
use super::manifest::Parsed;
use super::signature;
use super::trust;
use crate::store::record::{BlobRef, ImageRecord};
use crate::store::{Digest, Store};

/// Largest signature accepted.
const MAX_SIGNATURE: u64 = 1 << 20;

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
    match std::fs::File::open(asc).and_then(|f| {
        let mut data = Vec::new();
        f.take(MAX_SIGNATURE).read_to_end(&mut data).map(|_| data)
    }) {
        Ok(data) => Sig::Found { source, data },
        Err(e) => Sig::Missing {
            source,
            why: e.to_string(),
        },
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
    let result = (|| {
        let mut f = std::fs::File::create(&tmp).map_err(|e| dl(url, e.to_string()))?;
        let resp = get(agent, opts, url)?;
        std::io::copy(&mut resp.into_reader(), &mut f).map_err(|e| dl(url, e.to_string()))?;
        let sig = (!opts.insecure_image).then(|| download_sig(agent, opts, asc_url));
        import_aci(store, opts, name, &tmp, sig, expect_name)
    })();
    let _ = std::fs::remove_file(&tmp);
    result
}

fn dl(url: &str, why: String) -> FetchError {
    FetchError::Download {
        url: url.to_string(),
        why,
    }
}

fn get(agent: &ureq::Agent, opts: &FetchOptions, url: &str) -> Result<ureq::Response, FetchError> {
    if url.starts_with("http://") && !opts.insecure_http {
        return Err(dl(url, "plain http needs --insecure-options=http".into()));
    }
    agent
        .get(url)
        .call()
        .map_err(|e| dl(url, http::describe(&e)))
}

fn download_sig(agent: &ureq::Agent, opts: &FetchOptions, url: &str) -> Sig {
    let read = || -> Result<Vec<u8>, String> {
        let resp = get(agent, opts, url).map_err(|e| e.to_string())?;
        let mut data = Vec::new();
        resp.into_reader()
            .take(MAX_SIGNATURE)
            .read_to_end(&mut data)
            .map_err(|e| e.to_string())?;
        Ok(data)
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
