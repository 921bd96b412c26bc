//! `docker://` image references.

use std::fmt;

use crate::store::Digest;

/// Errors parsing a reference.
#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    /// The reference is malformed.
    #[error("invalid image reference {input:?}: {why} (expected docker://[host[:port]/]name[:tag|@sha256:<hex>])")]
    Invalid {
        /// The input.
        input: String,
        /// What is wrong.
        why: &'static str,
    },
}

/// Docker Hub as written in names.
pub const DOCKER_HUB: &str = "docker.io";
/// Docker Hub's registry API host.
pub const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// A parsed `docker://` reference, with Docker Hub defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerRef {
    /// Registry host (and port), e.g. `docker.io` or `127.0.0.1:5000`.
    pub registry: String,
    /// Repository, e.g. `library/busybox`.
    pub repository: String,
    /// Tag (`latest` when neither tag nor digest was given).
    pub tag: Option<String>,
    /// Digest, when pinned with `@sha256:...`.
    pub digest: Option<Digest>,
}

impl DockerRef {
    /// Parses `docker://...` (the `docker://` prefix is optional).
    pub fn parse(input: &str) -> Result<DockerRef, ReferenceError> {
        let bad = |why| ReferenceError::Invalid {
            input: input.to_string(),
            why,
        };
        let s = input.strip_prefix("docker://").unwrap_or(input);
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => (r, Some(d.parse::<Digest>().map_err(|_| bad("bad digest"))?)),
            None => (s, None),
        };
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(t) = tag {
            let ok = !t.is_empty()
                && t.len() <= 128
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
                && !t.starts_with(['.', '-']);
            if !ok {
                return Err(bad("bad tag"));
            }
        }
        let (registry, repo) = match name.split_once('/') {
            Some((h, r)) if h.contains(['.', ':']) || h == "localhost" => {
                (h.to_string(), r.to_string())
            }
            _ => (DOCKER_HUB.to_string(), name.to_string()),
        };
        if registry.is_empty() || repo.is_empty() {
            return Err(bad("empty registry or name"));
        }
        let repo_ok = repo.split('/').all(|c| {
            !c.is_empty()
                && c.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
                && c.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        });
        if !repo_ok {
            return Err(bad(
                "name components must be lowercase letters, digits and . _ -",
            ));
        }
        let repository = if registry == DOCKER_HUB && !repo.contains('/') {
            format!("library/{repo}")
        } else {
            repo
        };
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_string()),
            (None, None) => Some("latest".to_string()),
            (None, Some(_)) => None,
        };
        Ok(DockerRef {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// The host to talk to (Docker Hub's API host for `docker.io`).
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }

    /// What to ask the registry for: the digest if pinned, else the tag.
    pub fn manifest_reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".to_string(),
        }
    }
}

impl fmt::Display for DockerRef {
    /// The canonical name, e.g. `docker://docker.io/library/busybox:latest`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "docker://{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> DockerRef {
        DockerRef::parse(s).expect("valid reference")
    }

    #[test]
    fn hub_defaults() {
        let r = p("docker://busybox");
        assert_eq!(r.registry, "docker.io");
        assert_eq!(r.api_host(), "registry-1.docker.io");
        assert_eq!(r.repository, "library/busybox");
        assert_eq!(r.tag.as_deref(), Some("latest"));
        assert_eq!(r.to_string(), "docker://docker.io/library/busybox:latest");
        assert_eq!(p("docker://user/app:1.0").repository, "user/app");
    }

    #[test]
    fn host_port_tag_digest() {
        let r = p("docker://127.0.0.1:5000/a/b:v1");
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("127.0.0.1:5000", "a/b")
        );
        assert_eq!(r.tag.as_deref(), Some("v1"));
        let h = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let r = p(&format!("docker://localhost:5000/x@sha256:{h}"));
        assert_eq!(r.tag, None);
        assert_eq!(r.manifest_reference(), format!("sha256:{h}"));
        let r = p("localhost/x");
        assert_eq!(r.registry, "localhost");
        assert_eq!(p("reg.example:443/x").manifest_reference(), "latest");
    }

    #[test]
    fn rejects_bad() {
        for s in [
            "docker://",
            "docker://Upper",
            "docker://a:",
            "docker://a:-x",
            "docker://a@sha256:12",
            "docker://h.io/",
        ] {
            assert!(DockerRef::parse(s).is_err(), "{s} should be rejected");
        }
    }
}
