//! The TLS configuration of the client: rustls with the ring provider, TLS 1.3 only, HTTP/2 and
//! HTTP/1.1 by ALPN, and roots from a CA PEM file the donor (or the app) supplies. The platform
//! trust store is deliberately not consulted: the intake's CA is configured explicitly.
//!
//! [`TrustAnchors::DangerousAcceptInvalidCerts`] is the only way to turn certificate verification
//! off (the CLI's `--dangerous-accept-invalid-certs`); handshake signatures are still checked, so
//! it is a development convenience and nothing else.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// Where the client's trust comes from.
#[derive(Clone)]
#[non_exhaustive]
pub enum TrustAnchors {
    /// CA certificates in PEM (e.g. the intake's dev CA file).
    CaPem(Vec<u8>),
    /// Accept any certificate. Development only.
    DangerousAcceptInvalidCerts,
}

impl std::fmt::Debug for TrustAnchors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TrustAnchors::CaPem(p) => write!(f, "CaPem({} bytes)", p.len()),
            TrustAnchors::DangerousAcceptInvalidCerts => f.write_str("DangerousAcceptInvalidCerts"),
        }
    }
}

/// TLS configuration errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The PEM does not parse or holds no certificate.
    #[error("CA file: {0}")]
    BadCa(String),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(String),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Build the rustls client configuration.
pub fn client_config(trust: &TrustAnchors) -> Result<ClientConfig, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let mut config = match trust {
        TrustAnchors::CaPem(pem) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| TlsError::BadCa(e.to_string()))?;
                roots
                    .add(cert)
                    .map_err(|e| TlsError::BadCa(e.to_string()))?;
            }
            if roots.is_empty() {
                return Err(TlsError::BadCa("no certificate in the PEM file".into()));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        TrustAnchors::DangerousAcceptInvalidCerts => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider())))
            .with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

#[derive(Debug)]
struct AcceptAnyCert(Arc<rustls::crypto::CryptoProvider>);

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
        rustls::crypto::verify_tls12_signature(
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
        rustls::crypto::verify_tls13_signature(
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
