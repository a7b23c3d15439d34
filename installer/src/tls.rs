//! TLS for meshctl's clients: kube's `rustls-tls` feature and oci-client's
//! `rustls-tls-no-provider` both leave rustls's crypto provider to the application, which uses
//! ring's.

/// Installs ring's provider as the process default, once; every client meshctl builds calls
/// this first.
pub fn install_crypto_provider() {
    // Err means a provider is installed already, which is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
