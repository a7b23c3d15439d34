//! Key material: the admin token, the service-account signing key, the
//! apiserver's self-signed serving CA read back from `--cert-dir`, and a small
//! CA for the local cluster's other components (the front proxy of the
//! aggregation layer, metrics-server, KEDA, kwok's kubelet endpoint).

use base64::Engine as _;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

use crate::error::{Error, Result};

/// A random bearer token (32 hex characters).
pub(crate) fn random_token() -> Result<String> {
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| Error::Crypto("the system random generator failed".to_owned()))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// A fresh ECDSA P-256 service-account key: (PKCS#8 private key PEM, SPKI
/// public key PEM). kube-apiserver signs tokens with the former
/// (`--service-account-signing-key-file`) and verifies them with the latter
/// (`--service-account-key-file`, which does not accept PKCS#8 EC keys).
pub(crate) fn service_account_key() -> Result<(String, String)> {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
        .map_err(|_| Error::Crypto("cannot generate an ECDSA P-256 key".to_owned()))?;
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
        .map_err(|e| Error::Crypto(format!("cannot read back the generated key: {e}")))?;
    // SubjectPublicKeyInfo { id-ecPublicKey, prime256v1 } followed by the
    // 65-byte uncompressed point.
    const SPKI_P256_PREFIX: [u8; 26] = [
        0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08,
        0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
    ];
    let point = pair.public_key().as_ref();
    if point.len() != 65 {
        return Err(Error::Crypto(format!(
            "unexpected P-256 public key length {}",
            point.len()
        )));
    }
    let mut spki = SPKI_P256_PREFIX.to_vec();
    spki.extend_from_slice(point);
    Ok((pem("PRIVATE KEY", pkcs8.as_ref()), pem("PUBLIC KEY", &spki)))
}

/// A certificate and its private key, both PEM.
#[derive(Debug, Clone)]
pub(crate) struct Pair {
    /// The certificate.
    pub(crate) cert: String,
    /// Its PKCS#8 private key.
    pub(crate) key: String,
}

/// A fresh ECDSA P-256 certificate authority that signs the local cluster's
/// component certificates.
pub(crate) struct Ca {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

fn rcgen_error(what: &str) -> impl Fn(rcgen::Error) -> Error + '_ {
    move |e| Error::Crypto(format!("{what}: {e}"))
}

impl Ca {
    /// A self-signed CA whose common name is `name`.
    pub(crate) fn new(name: &str) -> Result<Self> {
        let key = rcgen::KeyPair::generate().map_err(rcgen_error("generating a CA key"))?;
        let mut params = rcgen::CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let issuer = rcgen::CertifiedIssuer::self_signed(params, key)
            .map_err(rcgen_error("signing the CA certificate"))?;
        Ok(Self { issuer })
    }

    /// The CA certificate (PEM).
    pub(crate) fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// A certificate for `common_name`, valid for TLS servers at `sans` (DNS
    /// names or IP addresses) and as a TLS client.
    pub(crate) fn issue(&self, common_name: &str, sans: &[&str]) -> Result<Pair> {
        let key = rcgen::KeyPair::generate().map_err(rcgen_error("generating a key"))?;
        let names: Vec<String> = sans.iter().map(|s| (*s).to_owned()).collect();
        let mut params = rcgen::CertificateParams::new(names)
            .map_err(rcgen_error("invalid subject alternative name"))?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::DigitalSignature,
            rcgen::KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(rcgen_error("signing a certificate"))?;
        Ok(Pair {
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }
}

/// PEM-encodes `der` with the given label.
pub(crate) fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The CERTIFICATE blocks of a PEM bundle, each re-encoded as its own PEM.
pub(crate) fn certificates(bundle: &str) -> Vec<String> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let mut out = Vec::new();
    let mut rest = bundle;
    while let Some(start) = rest.find(BEGIN) {
        let after = &rest[start..];
        let Some(end) = after.find(END) else { break };
        let block = &after[..end + END.len()];
        out.push(format!("{block}\n"));
        rest = &after[end + END.len()..];
    }
    out
}

/// Base64 (standard alphabet, padded), as kubeconfig `*-data` fields want.
pub(crate) fn base64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_hex() -> Result<()> {
        let t = random_token()?;
        assert_eq!(t.len(), 32);
        assert!(t.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(t, random_token()?);
        Ok(())
    }

    #[test]
    fn service_account_key_is_pem() -> Result<()> {
        let (private, public) = service_account_key()?;
        assert!(private.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        assert!(public.starts_with("-----BEGIN PUBLIC KEY-----\n"));
        assert!(public.ends_with("-----END PUBLIC KEY-----\n"));
        Ok(())
    }

    #[test]
    fn ca_issues_leaf_certificates() -> Result<()> {
        let ca = Ca::new("meshguard-test-ca")?;
        assert!(ca.cert_pem().starts_with("-----BEGIN CERTIFICATE-----"));
        let leaf = ca.issue("leaf", &["metrics-server.kube-system.svc", "127.0.0.1"])?;
        assert_eq!(certificates(&leaf.cert).len(), 1);
        assert!(leaf.key.starts_with("-----BEGIN PRIVATE KEY-----"));
        Ok(())
    }

    #[test]
    fn splits_bundles() {
        let a = pem("CERTIFICATE", b"leaf");
        let b = pem("CERTIFICATE", b"ca");
        let found = certificates(&format!("{a}{b}"));
        assert_eq!(found, vec![a, b]);
        assert!(certificates("nothing here").is_empty());
    }
}
