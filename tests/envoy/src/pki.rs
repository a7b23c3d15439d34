//! The mesh's certificates for Envoy tests: one CA, as Istio's, and leaf certificates whose URI SAN
//! is a SPIFFE identity (`spiffe://<trust domain>/ns/<ns>/sa/<account>`), for the sidecar's
//! listener and for each caller.

use std::path::{Path, PathBuf};

use crate::Error;

/// A certificate and its private key, both PEM.
#[derive(Debug, Clone)]
pub struct Pair {
    pub cert: String,
    pub key: String,
}

impl Pair {
    /// Writes `<stem>.pem` and `<stem>.key` in `dir`; returns their paths.
    pub fn write(&self, dir: &Path, stem: &str) -> Result<(PathBuf, PathBuf), Error> {
        let cert = dir.join(format!("{stem}.pem"));
        let key = dir.join(format!("{stem}.key"));
        std::fs::write(&cert, &self.cert).map_err(|e| Error::io(&cert, e))?;
        std::fs::write(&key, &self.key).map_err(|e| Error::io(&key, e))?;
        Ok((cert, key))
    }
}

/// A fresh ECDSA P-256 certificate authority.
pub struct Ca {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

fn crypto(what: &'static str) -> impl Fn(rcgen::Error) -> Error {
    move |e| Error::Crypto(format!("{what}: {e}"))
}

impl Ca {
    /// A self-signed CA for the trust domain `cluster.local`.
    pub fn new() -> Result<Self, Error> {
        let key = rcgen::KeyPair::generate().map_err(crypto("generating the CA key"))?;
        let mut params = rcgen::CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "cluster.local");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let issuer = rcgen::CertifiedIssuer::self_signed(params, key)
            .map_err(crypto("signing the CA certificate"))?;
        Ok(Self { issuer })
    }

    /// The CA certificate (PEM).
    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// A certificate for TLS servers and clients with the URI SAN `uri` (none if `None`) and the
    /// DNS SAN `dns` (what a client checks the server's name against).
    pub fn issue(&self, uri: Option<&str>, dns: &str) -> Result<Pair, Error> {
        let key = rcgen::KeyPair::generate().map_err(crypto("generating a key"))?;
        let mut params = rcgen::CertificateParams::new(vec![dns.to_owned()])
            .map_err(crypto("invalid DNS name"))?;
        if let Some(uri) = uri {
            let uri = rcgen::string::Ia5String::try_from(uri.to_owned())
                .map_err(crypto("invalid URI SAN"))?;
            params.subject_alt_names.push(rcgen::SanType::URI(uri));
        }
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(crypto("signing a certificate"))?;
        Ok(Pair {
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }
}
