//! Images from an OCI distribution registry (`docker://`).

use super::import::{import, Source};
use super::options::{FetchError, FetchOptions};
use crate::image::manifest::{self, Parsed};
use crate::image::reference::DockerRef;
use crate::image::registry::Client;
use crate::store::record::ImageRecord;
use crate::store::{Digest, Store};

pub fn fetch_docker(
    store: &Store,
    opts: &FetchOptions,
    name: &str,
) -> Result<ImageRecord, FetchError> {
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
