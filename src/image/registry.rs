//! OCI distribution v2 client (blocking, ureq): anonymous, Bearer token and Basic auth,
//! manifests, resumable verified blob downloads.
//!
//! Where credentials go (see also [`super::http`] for redirects):
//! * Basic credentials (from `<dir>/auth.d/` or the docker `config.json`) answer a `Basic`
//!   challenge of the registry's own host only; a 401 from a host the registry redirected to
//!   (blob storage) is an error, never answered with them.
//! * A `Bearer` challenge names a token realm, possibly on another host: like Docker, podvm sends
//!   the registry's credentials (Basic) there to get a token, but only over https; a plain-http
//!   realm is refused unless `--insecure-options=http`, whether or not credentials are
//!   configured (an anonymous token fetched in clear text can be swapped just as well).
//! * The token goes only to the registry's own origin.
//! * Every body read is bounded: manifests by [`MAX_MANIFEST`], token responses by
//!   [`MAX_TOKEN_RESPONSE`], error bodies by [`http::MAX_ERROR_BODY`], blobs by the size their
//!   descriptor announces.

use std::path::Path;
use std::sync::Mutex;

use super::auth::{self, parse_challenge, Credentials};
use super::http::{self, HttpError, Policy};
use super::manifest::ACCEPT;
use super::progress::Progress;
use super::reference::DockerRef;
use crate::store::record::BlobRef;
use crate::store::{BlobSink, Digest, Store, StoreError};

/// Largest manifest accepted.
pub const MAX_MANIFEST: u64 = 4 << 20;

/// Largest token response accepted.
pub const MAX_TOKEN_RESPONSE: u64 = 1 << 20;

/// Errors talking to a registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// Could not connect / transport failure.
    #[error("registry {host}: {what}: {why}")]
    Transport {
        /// Registry host.
        host: String,
        /// What was requested.
        what: String,
        /// The cause.
        why: String,
    },
    /// The registry answered with an error status.
    #[error("registry {host}: {what}: HTTP {status}{hint}")]
    Status {
        /// Registry host.
        host: String,
        /// What was requested.
        what: String,
        /// Status code.
        status: u16,
        /// Hint for the user.
        hint: String,
    },
    /// A request or redirect podvm refuses to follow (https to http, another scheme, too many
    /// redirects, an oversized answer).
    #[error("registry {host}: {what}: {why}")]
    Refused {
        /// Registry host.
        host: String,
        /// What was requested.
        what: String,
        /// Why it was refused.
        why: String,
    },
    /// The Bearer challenge names a plain-http token realm.
    #[error("registry {host}: its Bearer challenge names the plain-http token realm {realm}: refused, podvm asks a token realm for a token (with the registry's credentials, if configured) only over https; pass --insecure-options=http to allow a plain-http realm")]
    InsecureRealm {
        /// Registry host.
        host: String,
        /// The realm URL.
        realm: String,
    },
    /// Authentication failed.
    #[error("registry {host}: authentication failed: {why}")]
    Auth {
        /// Registry host.
        host: String,
        /// What went wrong.
        why: String,
    },
    /// The store failed (e.g. digest mismatch).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A client for one repository on one registry.
pub struct Client {
    agent: ureq::Agent,
    policy: Policy,
    base: String,
    host: String,
    repo: String,
    creds: Option<Credentials>,
    auth_header: Mutex<Option<String>>,
}

/// Whether `host[:port]` names the loopback interface.
fn is_loopback(host: &str) -> bool {
    let name = match host.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name == "localhost"
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl Client {
    /// Connects to the registry of `r` (https; plain http only if `allow_http`, as a fallback
    /// when https fails; any certificate accepted if `insecure_tls`) and checks the API version
    /// endpoint.
    pub fn connect(
        r: &DockerRef,
        allow_http: bool,
        insecure_tls: bool,
        data_dir: &Path,
    ) -> Result<Client, RegistryError> {
        let agent = http::agent(insecure_tls);
        let host = r.api_host().to_string();
        let mut c = Client {
            agent,
            policy: Policy::fetch(allow_http),
            base: format!("https://{host}"),
            host: host.clone(),
            repo: r.repository.clone(),
            creds: auth::lookup(data_dir, &r.registry),
            auth_header: Mutex::new(None),
        };
        if allow_http && is_loopback(&host) {
            // Like docker, a loopback registry is plain http when http is allowed.
            c.base = format!("http://{host}");
            return c.get("/v2/", "", "API check").map(|_| c);
        }
        match c.get("/v2/", "", "API check") {
            Ok(_) => Ok(c),
            Err(RegistryError::Transport { why, .. }) if allow_http => {
                eprintln!("warning: https to {host} failed ({why}); using plain http (--insecure-options=http)");
                c.base = format!("http://{host}");
                c.get("/v2/", "", "API check").map(|_| c)
            }
            Err(RegistryError::Transport { what, why, .. }) => Err(RegistryError::Transport {
                host,
                what,
                why: if http::is_cert_error(&why) {
                    why
                } else {
                    format!("{why} (for a plain-http registry, pass --insecure-options=http)")
                },
            }),
            Err(e) => Err(e),
        }
    }

    fn transport(&self, what: &str, e: impl std::fmt::Display) -> RegistryError {
        RegistryError::Transport {
            host: self.host.clone(),
            what: what.to_string(),
            why: e.to_string(),
        }
    }

    /// The error for a refused request or redirect, or a transport failure.
    fn http_error(&self, what: &str, e: HttpError) -> RegistryError {
        match e {
            HttpError::Transport { why, .. } => self.transport(what, why),
            HttpError::Status {
                url,
                status,
                resp,
                same_origin,
            } => {
                let hint = if !same_origin {
                    let auth = if status == 401 {
                        "; podvm sends the registry's credentials only to the registry itself"
                    } else {
                        ""
                    };
                    format!(" from {url}, where the registry redirected{auth}")
                } else {
                    match status {
                        401 => " (unauthorized: put credentials in ~/.docker/config.json or <dir>/auth.d/)".to_string(),
                        404 => " (no such image or tag)".to_string(),
                        _ => format!(": {}", http::error_excerpt(*resp)),
                    }
                };
                RegistryError::Status {
                    host: self.host.clone(),
                    what: what.to_string(),
                    status,
                    hint,
                }
            }
            other => RegistryError::Refused {
                host: self.host.clone(),
                what: what.to_string(),
                why: other.to_string(),
            },
        }
    }

    /// GET with auth: on 401, answers the challenge and retries once.
    fn get_range(
        &self,
        path: &str,
        accept: &str,
        what: &str,
        from: u64,
    ) -> Result<ureq::Response, RegistryError> {
        let url = http::parse_url(&format!("{}{}", self.base, path))
            .map_err(|e| self.http_error(what, e))?;
        let range = format!("bytes={from}-");
        let mut headers = Vec::new();
        if !accept.is_empty() {
            headers.push(("Accept", accept));
        }
        if from > 0 {
            headers.push(("Range", range.as_str()));
        }
        for attempt in 0..2 {
            let auth = self
                .auth_header
                .lock()
                .map(|g| g.clone())
                .unwrap_or_default();
            match http::get(
                &self.agent,
                self.policy,
                url.clone(),
                &headers,
                auth.as_deref(),
            ) {
                Ok(resp) => return Ok(resp),
                // Only the registry's own 401 is answered: a redirect target (blob storage)
                // asking for credentials gets none.
                Err(HttpError::Status {
                    status: 401,
                    resp,
                    same_origin: true,
                    ..
                }) if attempt == 0 => self.authenticate(&resp)?,
                Err(HttpError::Status {
                    status: 401,
                    same_origin: true,
                    ..
                }) => return Err(self.rejected()),
                Err(e) => return Err(self.http_error(what, e)),
            }
        }
        Err(RegistryError::Auth {
            host: self.host.clone(),
            why: "still unauthorized after authenticating (wrong credentials?)".to_string(),
        })
    }

    /// The error for credentials the registry refused after a challenge was answered.
    fn rejected(&self) -> RegistryError {
        let why = match &self.creds {
            Some(c) => format!(
                "the registry refused the credentials of user {:?} (wrong user or password?); fix them in <dir>/auth.d/ or the docker config.json",
                c.user
            ),
            None => "unauthorized and no credentials are configured for it; add them to <dir>/auth.d/ or the docker config.json".to_string(),
        };
        RegistryError::Auth {
            host: self.host.clone(),
            why,
        }
    }

    fn get(&self, path: &str, accept: &str, what: &str) -> Result<ureq::Response, RegistryError> {
        self.get_range(path, accept, what, 0)
    }

    /// Answers a 401 challenge: Basic with credentials, or Bearer by fetching a token.
    fn authenticate(&self, resp: &ureq::Response) -> Result<(), RegistryError> {
        let auth_err = |why: String| RegistryError::Auth {
            host: self.host.clone(),
            why,
        };
        let ch = resp
            .header("WWW-Authenticate")
            .and_then(parse_challenge)
            .ok_or_else(|| auth_err("401 without a WWW-Authenticate challenge".into()))?;
        let header = match ch.scheme.as_str() {
            "basic" => self
                .creds
                .as_ref()
                .map(Credentials::basic_header)
                .ok_or_else(|| {
                    auth_err("the registry wants a user and password and no credentials are configured for it; add them to <dir>/auth.d/ or the docker config.json".into())
                })?,
            "bearer" => format!("Bearer {}", self.token(&ch.params)?),
            other => return Err(auth_err(format!("unsupported auth scheme {other}"))),
        };
        if let Ok(mut g) = self.auth_header.lock() {
            *g = Some(header);
        }
        Ok(())
    }

    /// Gets a Bearer token from the challenge's realm (https only, unless plain http is
    /// allowed), sending the registry's credentials, if any, to the realm (only to its origin).
    fn token(
        &self,
        params: &std::collections::BTreeMap<String, String>,
    ) -> Result<String, RegistryError> {
        let auth_err = |why: String| RegistryError::Auth {
            host: self.host.clone(),
            why,
        };
        let realm = params
            .get("realm")
            .ok_or_else(|| auth_err("Bearer challenge without realm".into()))?;
        let mut url = http::parse_url(realm)
            .map_err(|e| auth_err(format!("Bearer challenge with a bad token realm: {e}")))?;
        if url.scheme() == "http" && !self.policy.allow_http {
            return Err(RegistryError::InsecureRealm {
                host: self.host.clone(),
                realm: realm.clone(),
            });
        }
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = params.get("service") {
                q.append_pair("service", s);
            }
            q.append_pair("scope", &format!("repository:{}:pull", self.repo));
        }
        let basic = self.creds.as_ref().map(Credentials::basic_header);
        let resp = http::get(&self.agent, self.policy, url, &[], basic.as_deref()).map_err(
            |e| match e {
                HttpError::Status { status, resp, .. } => auth_err(format!(
                    "token request to {realm}: HTTP {status}: {}",
                    http::error_excerpt(*resp)
                )),
                e => auth_err(format!("token request to {realm}: {e}")),
            },
        )?;
        let body = http::read_capped(resp.into_reader(), MAX_TOKEN_RESPONSE)
            .map_err(|e| auth_err(format!("token response from {realm}: {e}")))?;
        #[derive(serde::Deserialize)]
        struct Tok {
            token: Option<String>,
            access_token: Option<String>,
        }
        let t: Tok = serde_json::from_slice(&body)
            .map_err(|e| auth_err(format!("token response from {realm}: {e}")))?;
        t.token
            .or(t.access_token)
            .ok_or_else(|| auth_err(format!("token response from {realm} has no token")))
    }

    /// Fetches a manifest by tag or digest: its bytes, digest and Content-Type.
    pub fn manifest(
        &self,
        reference: &str,
    ) -> Result<(Vec<u8>, Digest, Option<String>), RegistryError> {
        let what = format!("manifest {}:{reference}", self.repo);
        let resp = self.get(
            &format!("/v2/{}/manifests/{reference}", self.repo),
            ACCEPT,
            &what,
        )?;
        let ctype = resp.header("Content-Type").map(|s| s.to_string());
        let data = http::read_capped(resp.into_reader(), MAX_MANIFEST).map_err(|e| match e {
            http::ReadError::TooBig(max) => RegistryError::Refused {
                host: self.host.clone(),
                what: what.clone(),
                why: format!("the manifest has more than {max} bytes, the most podvm accepts"),
            },
            http::ReadError::Io(e) => self.transport(&what, e),
        })?;
        let digest = Digest::of_bytes(&data);
        Ok((data, digest, ctype))
    }

    /// Downloads blob `b` into the store, verified, resuming a partial download if one exists.
    pub fn fetch_blob(
        &self,
        store: &Store,
        b: &BlobRef,
        progress: &Progress,
    ) -> Result<(), RegistryError> {
        let what = format!("blob {}", b.digest);
        for attempt in 0..2 {
            let Some(mut sink) = BlobSink::resume(store, &b.digest, Some(b.size), &what)? else {
                progress.inc(b.size);
                return Ok(());
            };
            let from = sink.offset();
            progress.inc(from);
            if from < b.size {
                let resp = self.get_range(
                    &format!("/v2/{}/blobs/{}", self.repo, b.digest),
                    "",
                    &what,
                    from,
                )?;
                if from > 0 && resp.status() != 206 {
                    sink.restart()?;
                    progress.inc(0);
                }
                let mut r = progress.wrap_read(resp.into_reader());
                crate::store::copy_large(&mut r, &mut sink, None).map_err(|e| {
                    match sink.io_error(e) {
                        StoreError::Io { source, .. } => self.transport(&what, source),
                        other => other.into(),
                    }
                })?;
            }
            match sink.commit() {
                Ok(()) => return Ok(()),
                // A corrupt partial file from an earlier run: it was deleted; start over once.
                Err(StoreError::DigestMismatch { .. }) if attempt == 0 && from > 0 => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}
