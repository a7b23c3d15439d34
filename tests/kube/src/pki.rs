//! Key material: the admin token, the service-account signing key, and the
//! apiserver's self-signed serving CA read back from `--cert-dir`.

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
    fn splits_bundles() {
        let a = pem("CERTIFICATE", b"leaf");
        let b = pem("CERTIFICATE", b"ca");
        let found = certificates(&format!("{a}{b}"));
        assert_eq!(found, vec![a, b]);
        assert!(certificates("nothing here").is_empty());
    }
}
