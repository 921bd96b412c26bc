//! Verification of detached OpenPGP signatures of ACIs (`<image>.aci.asc`) against the keys
//! trusted for the image's name (see [`super::trust`]).

use std::path::Path;

use pgp::composed::{Deserializable, DetachedSignature, SignedPublicKey};
use pgp::types::KeyDetails;

use super::trust::{Scope, TrustedKey};

/// Why an image's signature was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    /// The signature file is not an OpenPGP signature.
    #[error("{image}: the signature {source_name} is not a valid OpenPGP signature: {why}")]
    Malformed {
        /// Image.
        image: String,
        /// Where it came from.
        source_name: String,
        /// The cause.
        why: String,
    },
    /// No key is trusted for the image's name.
    #[error("{image}: no key is trusted for {name:?}; trust the signer's key with `podvm trust --prefix {name} [KEYFILE|URL]` (without one, appc discovery finds it), or pass --insecure-options=image to skip verification")]
    NoTrustedKeys {
        /// Image.
        image: String,
        /// Its appc name.
        name: String,
    },
    /// Signed by a key that is not trusted for the name.
    #[error("{image}: signed by key {signer}, which is not trusted for {name:?}; trust it with `podvm trust --prefix {name} [KEYFILE|URL]` (without one, appc discovery finds it), or pass --insecure-options=image to skip verification")]
    Untrusted {
        /// Image.
        image: String,
        /// Its appc name.
        name: String,
        /// Issuer key id or fingerprint from the signature.
        signer: String,
    },
    /// The signature does not match the image.
    #[error("{image}: the signature by key {fingerprint} does not verify ({why}): the image or its signature was modified or corrupted")]
    Invalid {
        /// Image.
        image: String,
        /// The signing key's fingerprint.
        fingerprint: String,
        /// The cause.
        why: String,
    },
    /// The image file could not be read.
    #[error("{image}: reading {path}: {source}")]
    Io {
        /// Image.
        image: String,
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// A successful verification: who signed, and for what the key is trusted.
#[derive(Debug, Clone)]
pub struct Verified {
    /// Fingerprint (lowercase hex) of the primary key.
    pub fingerprint: String,
    /// The key's user ids.
    pub users: Vec<String>,
    /// What the key is trusted for.
    pub scope: Scope,
}

/// Parses a detached signature (armored or binary).
fn parse(image: &str, source_name: &str, sig: &[u8]) -> Result<DetachedSignature, SignatureError> {
    let bad = |why: String| SignatureError::Malformed {
        image: image.to_string(),
        source_name: source_name.to_string(),
        why,
    };
    if sig.trim_ascii_start().starts_with(b"-----BEGIN") {
        DetachedSignature::from_armor_single(sig)
            .map(|(s, _)| s)
            .map_err(|e| bad(e.to_string()))
    } else {
        DetachedSignature::from_bytes(sig).map_err(|e| bad(e.to_string()))
    }
}

/// The part of a key that issued a signature.
enum Part<'a> {
    Primary(&'a pgp::packet::PublicKey),
    Subkey(&'a pgp::composed::SignedPublicSubKey),
}

/// Whether `sig` names `key` (or one of its subkeys) as issuer; returns the matching key part.
fn issued_by<'a>(sig: &DetachedSignature, key: &'a SignedPublicKey) -> Option<Part<'a>> {
    let s = &sig.signature;
    let fps = s.issuer_fingerprint();
    let ids = s.issuer_key_id();
    let matches = |fp: pgp::types::Fingerprint, id: pgp::types::KeyId| {
        fps.iter().any(|f| **f == fp) || ids.iter().any(|i| **i == id)
    };
    if matches(key.fingerprint(), key.legacy_key_id()) {
        return Some(Part::Primary(&key.primary_key));
    }
    key.public_subkeys
        .iter()
        .find(|sk| matches(sk.key.fingerprint(), sk.key.legacy_key_id()))
        .map(Part::Subkey)
}

/// Verifies the detached signature `sig` of the file `data` for image `image` (shown in
/// messages) whose appc name is `name`, against `keys` (those trusted for `name`).
pub fn verify(
    image: &str,
    name: &str,
    data: &Path,
    sig_source: &str,
    sig: &[u8],
    keys: &[TrustedKey],
) -> Result<Verified, SignatureError> {
    let sig = parse(image, sig_source, sig)?;
    if keys.is_empty() {
        return Err(SignatureError::NoTrustedKeys {
            image: image.to_string(),
            name: name.to_string(),
        });
    }
    let Some((tk, part)) = keys
        .iter()
        .find_map(|tk| issued_by(&sig, &tk.key.key).map(|p| (tk, p)))
    else {
        let signer = sig
            .signature
            .issuer_fingerprint()
            .first()
            .map(|f| format!("{f:x}"))
            .or_else(|| {
                sig.signature
                    .issuer_key_id()
                    .first()
                    .map(|i| hex::encode(i.as_ref()))
            })
            .unwrap_or_else(|| "(unnamed)".to_string());
        return Err(SignatureError::Untrusted {
            image: image.to_string(),
            name: name.to_string(),
            signer,
        });
    };
    let f = std::fs::File::open(data).map_err(|source| SignatureError::Io {
        image: image.to_string(),
        path: data.to_path_buf(),
        source,
    })?;
    let r = std::io::BufReader::new(f);
    match part {
        Part::Primary(k) => sig.signature.verify(k, r),
        Part::Subkey(k) => sig.signature.verify(k, r),
    }
    .map_err(|e| SignatureError::Invalid {
        image: image.to_string(),
        fingerprint: tk.key.fingerprint.clone(),
        why: e
            .to_string()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" "),
    })?;
    Ok(Verified {
        fingerprint: tk.key.fingerprint.clone(),
        users: tk.key.users.clone(),
        scope: tk.scope.clone(),
    })
}
