//! A development CA and server certificates for instances on one machine. Production instances
//! use certificates from their operators' own PKI (`tls_cert`, `tls_key` in `instance.toml`).

use std::path::Path;

use zeroize::Zeroizing;

use crate::files::{write_public, write_secret};
use crate::share::ShareError;

/// A throw-away CA that signs `localhost` / `127.0.0.1` server certificates. Its key lives only
/// in memory.
pub struct DevCa {
    key: rcgen::KeyPair,
    cert: rcgen::Certificate,
}

impl std::fmt::Debug for DevCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DevCa(<redacted>)")
    }
}

fn e(e: rcgen::Error) -> ShareError {
    ShareError::Invalid("development certificate".into(), e.to_string())
}

impl DevCa {
    /// A fresh CA.
    pub fn new() -> Result<Self, ShareError> {
        let key = rcgen::KeyPair::generate().map_err(e)?;
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(e)?;
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name.push(
            rcgen::DnType::CommonName,
            "Datadonor pseudonymiser development CA",
        );
        p.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let cert = p.self_signed(&key).map_err(e)?;
        Ok(Self { key, cert })
    }

    /// The CA certificate (PEM), for clients' trust anchors.
    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// Write `tls/server.pem` and `tls/server.key` (0600) into an instance directory.
    pub fn issue_into(&self, dir: &Path, index: u16) -> Result<(), ShareError> {
        let key = rcgen::KeyPair::generate().map_err(e)?;
        let mut p =
            rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .map_err(e)?;
        p.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("datadonor pseudonymiser {index} (development)"),
        );
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let cert = p.signed_by(&key, &self.cert, &self.key).map_err(e)?;
        write_public(&dir.join("tls/server.pem"), cert.pem().as_bytes())?;
        write_secret(
            &dir.join("tls/server.key"),
            Zeroizing::new(key.serialize_pem()).as_bytes(),
        )?;
        write_public(&dir.join("tls/ca.pem"), self.pem().as_bytes())
    }
}
