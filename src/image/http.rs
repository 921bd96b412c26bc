//! HTTP agents for registries, discovery and downloads: certificates verified against the
//! webpki roots, or (with `--insecure-options=tls`) any certificate accepted.
//!
//! Redirects are followed here, not by ureq ([`get`]), so that podvm decides what crosses them:
//! * at most [`MAX_REDIRECTS`] hops, GET only;
//! * never from https to plain http, and no plain-http hop at all, unless the caller allows plain
//!   http (`--insecure-options=http`);
//! * the `Authorization` header (registry credentials or token) goes only to the origin (scheme,
//!   host and port) of the first request: a redirect to another host, such as a blob storage
//!   host, gets the request without it, and so does every later hop, even one that comes back;
//! * user names and passwords written in a `Location` are dropped.
//!
//! (ureq 2.12 itself drops `Authorization` on every redirect, but follows https to http
//! redirects; [`agent`] turns its redirect handling off.)

use std::io::{self, Read};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// Hint appended to errors that look like certificate failures.
pub const TLS_HINT: &str =
    " (for a self-signed or otherwise untrusted certificate, pass --insecure-options=tls)";

/// Most redirects [`get`] follows for one request.
pub const MAX_REDIRECTS: usize = 5;

/// Most bytes of an error response body read (for the message).
pub const MAX_ERROR_BODY: u64 = 64 << 10;

/// An agent with podvm's timeouts and user agent; `insecure_tls` accepts any server certificate.
/// It does not follow redirects: send requests with [`get`].
pub fn agent(insecure_tls: bool) -> ureq::Agent {
    let mut b = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(15))
        .timeout_read(Duration::from_secs(60))
        .redirects(0)
        .user_agent(concat!("podvm/", env!("CARGO_PKG_VERSION")));
    if insecure_tls {
        if let Some(cfg) = insecure_config() {
            b = b.tls_config(Arc::new(cfg));
        }
    }
    b.build()
}

/// A ureq error as text, with [`TLS_HINT`] when it is about a certificate.
pub fn describe(e: &ureq::Error) -> String {
    let s = e.to_string();
    if is_cert_error(&s) {
        format!("{s}{TLS_HINT}")
    } else {
        s
    }
}

/// Whether an error message is about an untrusted or invalid certificate.
pub fn is_cert_error(msg: &str) -> bool {
    let m = msg.to_ascii_lowercase();
    m.contains("certificate") || m.contains("unknownissuer")
}

/// Whether plain http may be used, and the flag that allows it (for messages).
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Plain http allowed (`--insecure-options=http`).
    pub allow_http: bool,
    /// The flag that allows plain http, e.g. `--insecure-options=http`.
    pub http_flag: &'static str,
}

impl Policy {
    /// The policy of `podvm fetch` and friends: plain http with `--insecure-options=http`.
    pub fn fetch(allow_http: bool) -> Policy {
        Policy {
            allow_http,
            http_flag: "--insecure-options=http",
        }
    }
}

/// Errors of a request sent with [`get`].
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The URL (or a redirect target) is not a usable http(s) URL.
    #[error("{url}: {why}")]
    BadUrl {
        /// The URL or `Location` as received.
        url: String,
        /// What is wrong with it.
        why: String,
    },
    /// An https URL redirected to plain http.
    #[error("{from} redirected to plain-http {to}: refused, a redirect never downgrades https to http (pass {flag} to allow plain http)")]
    Downgrade {
        /// The https URL.
        from: String,
        /// The http target.
        to: String,
        /// The flag that allows it.
        flag: &'static str,
    },
    /// A plain-http URL without the flag that allows it.
    #[error("{url}: plain http needs {flag}")]
    PlainHttp {
        /// The URL.
        url: String,
        /// The flag that allows it.
        flag: &'static str,
    },
    /// Too many redirects.
    #[error("{url}: more than {max} redirects")]
    TooManyRedirects {
        /// The first URL.
        url: String,
        /// The limit.
        max: usize,
    },
    /// Connection or protocol failure.
    #[error("{url}: {why}")]
    Transport {
        /// The URL requested.
        url: String,
        /// The cause.
        why: String,
    },
    /// The server answered with an error status (4xx/5xx).
    #[error("{url}: HTTP {status}")]
    Status {
        /// The URL that answered (after redirects).
        url: String,
        /// The status code.
        status: u16,
        /// The response (headers, body).
        resp: Box<ureq::Response>,
        /// Whether every hop so far had the origin of the first request (so `authorization`
        /// was sent to `url`).
        same_origin: bool,
    },
}

/// Parses an absolute http(s) URL.
pub fn parse_url(s: &str) -> Result<url::Url, HttpError> {
    let u = url::Url::parse(s).map_err(|e| HttpError::BadUrl {
        url: s.to_string(),
        why: e.to_string(),
    })?;
    match u.scheme() {
        "http" | "https" if u.host_str().is_some() => Ok(u),
        _ => Err(HttpError::BadUrl {
            url: s.to_string(),
            why: "not an http(s) URL with a host".into(),
        }),
    }
}

/// Whether plain http may be used for `next` (reached from `prev`, if a redirect).
fn check_scheme(next: &url::Url, prev: Option<&url::Url>, policy: Policy) -> Result<(), HttpError> {
    match next.scheme() {
        "https" => Ok(()),
        "http" if policy.allow_http => Ok(()),
        "http" => match prev {
            Some(p) if p.scheme() == "https" => Err(HttpError::Downgrade {
                from: p.to_string(),
                to: next.to_string(),
                flag: policy.http_flag,
            }),
            _ => Err(HttpError::PlainHttp {
                url: next.to_string(),
                flag: policy.http_flag,
            }),
        },
        other => Err(HttpError::BadUrl {
            url: next.to_string(),
            why: format!("unsupported scheme {other:?} (only http and https)"),
        }),
    }
}

/// GETs `url` with `headers`, following redirects by the rules of this module;
/// `authorization` (an `Authorization` header value) is sent only to `url`'s origin.
pub fn get(
    agent: &ureq::Agent,
    policy: Policy,
    url: url::Url,
    headers: &[(&str, &str)],
    authorization: Option<&str>,
) -> Result<ureq::Response, HttpError> {
    check_scheme(&url, None, policy)?;
    let origin = url.origin();
    let first = url.to_string();
    let mut url = url;
    let mut left_origin = false;
    for _ in 0..=MAX_REDIRECTS {
        // Once another host chose where to go next, nothing it names gets the credentials.
        left_origin |= url.origin() != origin;
        let same_origin = !left_origin;
        let mut req = agent.request_url("GET", &url);
        for (k, v) in headers {
            req = req.set(k, v);
        }
        if let (true, Some(a)) = (same_origin, authorization) {
            req = req.set("Authorization", a);
        }
        let resp = match req.call() {
            Ok(r) => r,
            Err(ureq::Error::Status(status, resp)) => {
                return Err(HttpError::Status {
                    url: url.to_string(),
                    status,
                    resp: Box::new(resp),
                    same_origin,
                })
            }
            Err(e) => {
                return Err(HttpError::Transport {
                    url: url.to_string(),
                    why: describe(&e),
                })
            }
        };
        if !matches!(resp.status(), 301 | 302 | 303 | 307 | 308) {
            return Ok(resp);
        }
        let location = resp.header("Location").ok_or_else(|| HttpError::BadUrl {
            url: url.to_string(),
            why: format!("HTTP {} redirect without a Location", resp.status()),
        })?;
        let mut next = url.join(location).map_err(|e| HttpError::BadUrl {
            url: location.to_string(),
            why: format!("bad redirect from {url}: {e}"),
        })?;
        // Credentials in a Location are the server's choice, never ours: drop them. (Both
        // setters only fail for URLs that cannot have them.)
        let _ = next.set_username("");
        let _ = next.set_password(None);
        check_scheme(&next, Some(&url), policy)?;
        url = next;
    }
    Err(HttpError::TooManyRedirects {
        url: first,
        max: MAX_REDIRECTS,
    })
}

/// At most the first 200 characters of an error response's body (reading at most
/// [`MAX_ERROR_BODY`] bytes of it).
pub fn error_excerpt(resp: ureq::Response) -> String {
    let mut data = Vec::new();
    let _ = resp
        .into_reader()
        .take(MAX_ERROR_BODY)
        .read_to_end(&mut data);
    String::from_utf8_lossy(&data)
        .chars()
        .filter(|c| !c.is_control() || *c == ' ')
        .take(200)
        .collect()
}

/// Why [`read_capped`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// More bytes than allowed.
    #[error("more than {0} bytes")]
    TooBig(u64),
    /// Reading failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Reads all of `r` into memory, failing (instead of truncating) when it has more than `max`
/// bytes.
pub fn read_capped(r: impl Read, max: u64) -> Result<Vec<u8>, ReadError> {
    let mut data = Vec::new();
    r.take(max.saturating_add(1)).read_to_end(&mut data)?;
    if data.len() as u64 > max {
        return Err(ReadError::TooBig(max));
    }
    Ok(data)
}

/// The error (inside an [`io::Error`]) of a [`Capped`] reader past its cap.
#[derive(Debug, thiserror::Error)]
#[error("more than {0} bytes")]
pub struct CapExceeded(pub u64);

/// The cap, if `e` is a [`Capped`] reader's "more than the cap" error.
pub fn cap_exceeded(e: &io::Error) -> Option<u64> {
    e.get_ref()
        .and_then(|i| i.downcast_ref::<CapExceeded>())
        .map(|c| c.0)
}

/// A reader that fails with [`CapExceeded`] once more than `max` bytes came through it.
pub struct Capped<R> {
    inner: R,
    left: u64,
    max: u64,
}

impl<R: Read> Capped<R> {
    /// Caps `inner` at `max` bytes.
    pub fn new(inner: R, max: u64) -> Capped<R> {
        Capped {
            inner,
            left: max,
            max,
        }
    }
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            // Anything more is over the cap; a clean end of stream is fine.
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => Err(io::Error::other(CapExceeded(self.max))),
            };
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.left -= n as u64;
        Ok(n)
    }
}

fn insecure_config() -> Option<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .ok()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
        .with_no_client_auth();
    Some(cfg)
}

/// Accepts any certificate chain and name, but still checks the handshake signatures (so the
/// peer holds the key of the certificate it presented).
#[derive(Debug)]
struct AcceptAnyCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A tiny scripted HTTP/1.1 server on 127.0.0.1 for unit tests: answers each request with the
/// reply its path maps to and records the request head it received.
#[cfg(test)]
pub(crate) mod test_server {
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;
    use std::sync::{Arc, Mutex};

    /// A running server.
    pub struct Server {
        /// `http://127.0.0.1:PORT`.
        pub base: String,
        /// The request heads received, in order (lowercased header names).
        pub requests: Arc<Mutex<Vec<String>>>,
    }

    /// Serves on `l` forever (the thread ends with the test process); `reply(path)` gives the
    /// raw response (status line, headers, blank line, body) to send, then the connection is
    /// closed.
    pub fn serve(l: TcpListener, reply: impl Fn(&str) -> Vec<u8> + Send + 'static) -> Server {
        let base = format!("http://{}", l.local_addr().expect("addr"));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let log = requests.clone();
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut head = String::new();
                let mut r = BufReader::new(conn.try_clone().expect("clone"));
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    head.push_str(&line.to_ascii_lowercase());
                }
                let path = head.split(' ').nth(1).unwrap_or("").to_string();
                log.lock().expect("lock").push(head);
                let _ = conn.write_all(&reply(&path));
            }
        });
        Server { base, requests }
    }

    /// A redirect to `location`.
    pub fn redirect(status: u16, location: &str) -> Vec<u8> {
        format!("HTTP/1.1 {status} Redirect\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").into_bytes()
    }

    /// A 200 with `body` and, if `length`, a Content-Length (else the body ends with the
    /// connection).
    pub fn ok(body: &[u8], length: bool) -> Vec<u8> {
        let len = if length {
            format!("Content-Length: {}\r\n", body.len())
        } else {
            String::new()
        };
        let mut v = format!("HTTP/1.1 200 OK\r\n{len}Connection: close\r\n\r\n").into_bytes();
        v.extend_from_slice(body);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorization_stays_with_the_first_origin() {
        // Attack: a registry (A) redirects within itself, then to another host (B) with a
        // user:password of its choosing in the Location, and B sends the client back to A. The
        // credentials must reach A while the client is still on A, never B, and not A again
        // once B chose where to go; the Location's user:password is not used either.
        let la = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let lb = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let a_base = format!("http://{}", la.local_addr().expect("addr"));
        let b_evil = format!("http://evil:pw@{}", lb.local_addr().expect("addr"));
        let back = format!("{a_base}/back");
        let a = test_server::serve(la, move |path| match path {
            "/start" => test_server::redirect(302, "/same"),
            "/same" => test_server::redirect(307, &format!("{b_evil}/x")),
            _ => test_server::ok(b"done", true),
        });
        let b = test_server::serve(lb, move |_| test_server::redirect(308, &back));
        let url = parse_url(&format!("{a_base}/start")).expect("url");
        let resp = get(
            &agent(false),
            Policy::fetch(true),
            url,
            &[("Accept", "x/y")],
            Some("Basic c2VjcmV0"),
        )
        .expect("get");
        assert_eq!(resp.into_string().expect("body"), "done");
        let a_reqs = a.requests.lock().expect("lock").clone();
        let b_reqs = b.requests.lock().expect("lock").clone();
        assert_eq!(a_reqs.len(), 3, "{a_reqs:?}");
        assert_eq!(b_reqs.len(), 1, "{b_reqs:?}");
        for (i, r) in a_reqs.iter().enumerate() {
            assert!(r.contains("accept: x/y"), "{r}");
            assert_eq!(
                r.contains("authorization: basic c2vjcmv0"),
                i < 2,
                "request {i} to A: {r}"
            );
        }
        assert!(!b_reqs[0].contains("authorization"), "B got: {}", b_reqs[0]);
    }

    #[test]
    fn redirect_loops_and_downgrades_stop() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let s = test_server::serve(l, |_| test_server::redirect(302, "/again"));
        let e = get(
            &agent(false),
            Policy::fetch(true),
            parse_url(&format!("{}/loop", s.base)).expect("url"),
            &[],
            None,
        )
        .expect_err("loop");
        assert!(matches!(e, HttpError::TooManyRedirects { .. }), "{e}");
        assert_eq!(s.requests.lock().expect("lock").len(), MAX_REDIRECTS + 1);
        // Plain http without the flag is never contacted.
        let e = get(
            &agent(false),
            Policy::fetch(false),
            parse_url(&format!("{}/x", s.base)).expect("url"),
            &[],
            None,
        )
        .expect_err("http");
        assert!(e.to_string().contains("--insecure-options=http"), "{e}");
        assert_eq!(s.requests.lock().expect("lock").len(), MAX_REDIRECTS + 1);
    }

    #[test]
    fn capped_reader_fails_past_the_cap_only() {
        let mut out = Vec::new();
        let n = std::io::copy(&mut Capped::new(&[7u8; 100][..], 100), &mut out).expect("exact");
        assert_eq!(n, 100);
        let e = std::io::copy(&mut Capped::new(&[7u8; 101][..], 100), &mut Vec::new())
            .expect_err("over the cap");
        assert!(e.to_string().contains("more than 100 bytes"), "{e}");
        assert_eq!(cap_exceeded(&e), Some(100));
        assert_eq!(cap_exceeded(&io::Error::other("x")), None);
        assert_eq!(read_capped(&[1u8; 10][..], 10).expect("fits").len(), 10);
        assert!(read_capped(&[1u8; 11][..], 10).is_err());
    }

    #[test]
    fn schemes_and_downgrades() {
        let strict = Policy::fetch(false);
        let https = parse_url("https://reg.example/v2/").expect("url");
        let http = parse_url("http://blobs.example/x").expect("url");
        assert!(check_scheme(&https, None, strict).is_ok());
        let e = check_scheme(&http, Some(&https), strict).expect_err("downgrade");
        assert!(
            matches!(e, HttpError::Downgrade { .. })
                && e.to_string().contains("--insecure-options=http"),
            "{e}"
        );
        assert!(matches!(
            check_scheme(&http, None, strict),
            Err(HttpError::PlainHttp { .. })
        ));
        assert!(check_scheme(&http, Some(&https), Policy::fetch(true)).is_ok());
        let ftp = parse_url("ftp://x/y");
        assert!(ftp.is_err());
        let file = url::Url::parse("file:///etc/passwd").expect("url");
        assert!(check_scheme(&file, Some(&https), Policy::fetch(true)).is_err());
    }
}
