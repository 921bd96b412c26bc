//! HTTP agents for registries, discovery and downloads: certificates verified against the
//! webpki roots, or (with `--insecure-options=tls`) any certificate accepted.

use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// Hint appended to errors that look like certificate failures.
pub const TLS_HINT: &str =
    " (for a self-signed or otherwise untrusted certificate, pass --insecure-options=tls)";

/// An agent with podvm's timeouts and user agent; `insecure_tls` accepts any server certificate.
pub fn agent(insecure_tls: bool) -> ureq::Agent {
    let mut b = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(15))
        .timeout_read(Duration::from_secs(60))
        .redirects(5)
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
