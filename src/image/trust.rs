//! The trusted-key store, laid out as rkt's: `<dir>/trustedkeys/prefix.d/<prefix>/<fingerprint>`
//! trusts a key for images whose name is `<prefix>` or below it, `<dir>/trustedkeys/root.d/
//! <fingerprint>` for every image. Each file holds one ASCII-armored OpenPGP public key; the
//! file name is its lowercase hex fingerprint.

use std::path::{Path, PathBuf};

use pgp::composed::{ArmorOptions, Deserializable, SignedPublicKey};
use pgp::types::KeyDetails;

/// Errors of the key store.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// The key data is not an OpenPGP public key.
    #[error("{source_name}: not a valid OpenPGP public key: {why}")]
    BadKey {
        /// Where the key came from (file, URL).
        source_name: String,
        /// The cause.
        why: String,
    },
    /// The prefix is not a valid image name prefix.
    #[error("invalid prefix {0:?}: expected an image name such as example.com/app (lowercase letters, digits, - . _ ~ and / between components)")]
    BadPrefix(String),
    /// The data dir is not podvm's (another user's) or could not be made private.
    #[error(transparent)]
    Private(#[from] crate::private::PrivateError),
    /// I/O on the key store.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// What a key is trusted for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Images named `prefix` or below it.
    Prefix(String),
    /// All images.
    Root,
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::Prefix(p) => write!(f, "prefix {p:?}"),
            Scope::Root => write!(f, "all images (root key)"),
        }
    }
}

/// A public key with what podvm shows about it.
#[derive(Debug, Clone)]
pub struct Key {
    /// The parsed key.
    pub key: SignedPublicKey,
    /// Lowercase hex fingerprint.
    pub fingerprint: String,
    /// Its user ids.
    pub users: Vec<String>,
}

impl Key {
    /// The fingerprint in gpg's display form (`8B86 DE38 ...`).
    pub fn fingerprint_display(&self) -> String {
        let upper = self.fingerprint.to_ascii_uppercase();
        let groups: Vec<&str> = upper
            .as_bytes()
            .chunks(4)
            .filter_map(|c| std::str::from_utf8(c).ok())
            .collect();
        groups.join(" ")
    }
}

/// A key found in the store, with what it is trusted for.
#[derive(Debug, Clone)]
pub struct TrustedKey {
    /// The key.
    pub key: Key,
    /// What it is trusted for.
    pub scope: Scope,
}

/// Parses every public key in `data` (armored or binary); `source_name` is for messages.
pub fn parse_keys(source_name: &str, data: &[u8]) -> Result<Vec<Key>, TrustError> {
    let bad = |why: String| TrustError::BadKey {
        source_name: source_name.to_string(),
        why,
    };
    let keys: Vec<SignedPublicKey> = if data.trim_ascii_start().starts_with(b"-----BEGIN") {
        let (iter, _) = SignedPublicKey::from_armor_many(data).map_err(|e| bad(e.to_string()))?;
        iter.collect::<Result<_, _>>()
    } else {
        SignedPublicKey::from_bytes_many(data)
            .map_err(|e| bad(e.to_string()))?
            .collect::<Result<_, _>>()
    }
    .map_err(|e| bad(e.to_string()))?;
    if keys.is_empty() {
        return Err(bad("no public key in it".into()));
    }
    keys.into_iter()
        .map(|key| {
            key.verify_bindings()
                .map_err(|e| bad(format!("bad self-signature: {e}")))?;
            let fingerprint = format!("{:x}", key.fingerprint());
            let users = key
                .details
                .users
                .iter()
                .map(|u| String::from_utf8_lossy(u.id.id()).into_owned())
                .collect();
            Ok(Key {
                key,
                fingerprint,
                users,
            })
        })
        .collect()
}

/// Checks an image name prefix (`example.com/app`; a `host:port` first component is allowed).
pub fn check_prefix(prefix: &str) -> Result<(), TrustError> {
    let ok = !prefix.is_empty()
        && prefix.split('/').enumerate().all(|(i, c)| {
            !c.is_empty()
                && c != "."
                && c != ".."
                && c.bytes().all(|b| {
                    b.is_ascii_lowercase()
                        || b.is_ascii_digit()
                        || b"-._~".contains(&b)
                        || (i == 0 && b == b':')
                })
        });
    if ok {
        Ok(())
    } else {
        Err(TrustError::BadPrefix(prefix.to_string()))
    }
}

fn store_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("trustedkeys")
}

fn scope_dir(data_dir: &Path, scope: &Scope) -> PathBuf {
    match scope {
        Scope::Root => store_dir(data_dir).join("root.d"),
        Scope::Prefix(p) => store_dir(data_dir).join("prefix.d").join(p),
    }
}

/// Stores `key` as trusted for `scope`; returns the file written.
pub fn add(data_dir: &Path, scope: &Scope, key: &Key) -> Result<PathBuf, TrustError> {
    if let Scope::Prefix(p) = scope {
        check_prefix(p)?;
    }
    let dir = scope_dir(data_dir, scope);
    let io = |what, path: &Path| {
        let path = path.to_path_buf();
        move |source| TrustError::Io { what, path, source }
    };
    crate::private::ensure_dir(data_dir)?;
    crate::private::create_dir_all(&dir).map_err(io("creating", &dir))?;
    let armored = key
        .key
        .to_armored_string(ArmorOptions::default())
        .map_err(|e| TrustError::BadKey {
            source_name: key.fingerprint.clone(),
            why: e.to_string(),
        })?;
    let path = dir.join(&key.fingerprint);
    crate::private::write_atomic(&path, armored.as_bytes()).map_err(io("writing", &path))?;
    Ok(path)
}

/// The keys trusted for image `name` (without labels): those of every prefix that is `name` or
/// a parent path of it, most specific first, then the root keys. Unreadable files are skipped
/// with a warning.
pub fn keys_for(data_dir: &Path, name: &str) -> Vec<TrustedKey> {
    let mut out = Vec::new();
    let mut prefix = name.trim_end_matches('/');
    loop {
        if check_prefix(prefix).is_ok() {
            let scope = Scope::Prefix(prefix.to_string());
            read_scope(data_dir, &scope, &mut out);
        }
        match prefix.rfind('/') {
            Some(i) => prefix = &prefix[..i],
            None => break,
        }
    }
    read_scope(data_dir, &Scope::Root, &mut out);
    out
}

/// Every trusted key in the store.
pub fn list(data_dir: &Path) -> Vec<TrustedKey> {
    let mut out = Vec::new();
    read_scope(data_dir, &Scope::Root, &mut out);
    let base = store_dir(data_dir).join("prefix.d");
    let mut dirs = vec![base.clone()];
    while let Some(d) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        let mut has_keys = false;
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                dirs.push(e.path());
            } else {
                has_keys = true;
            }
        }
        if has_keys {
            if let Ok(rel) = d.strip_prefix(&base) {
                let scope = Scope::Prefix(rel.to_string_lossy().into_owned());
                read_scope(data_dir, &scope, &mut out);
            }
        }
    }
    out
}

fn read_scope(data_dir: &Path, scope: &Scope, out: &mut Vec<TrustedKey>) {
    let dir = scope_dir(data_dir, scope);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.path())
        .filter(|p| {
            !p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    files.sort();
    for path in files {
        let parsed = std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|d| parse_keys(&path.display().to_string(), &d).map_err(|e| e.to_string()));
        match parsed {
            Ok(keys) => out.extend(keys.into_iter().map(|key| TrustedKey {
                key,
                scope: scope.clone(),
            })),
            Err(e) => eprintln!("warning: ignoring trusted key {}: {e}", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes() {
        for ok in ["example.com", "example.com/app", "127.0.0.1:8080/a/b-c_d~e"] {
            assert!(check_prefix(ok).is_ok(), "{ok}");
        }
        for bad in ["", "/abs", "a//b", "a/../b", "Upper.com/x", "a/b:c", "a/b/"] {
            assert!(check_prefix(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rejects_non_keys() {
        assert!(parse_keys("x", b"hello").is_err());
        assert!(parse_keys(
            "x",
            b"-----BEGIN PGP PUBLIC KEY BLOCK-----\n\n-----END PGP PUBLIC KEY BLOCK-----\n"
        )
        .is_err());
    }
}
