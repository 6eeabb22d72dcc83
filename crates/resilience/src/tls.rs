//! The process-wide TLS crypto provider.
//!
//! supersede compiles in one rustls crypto provider, ring, for every HTTPS
//! client it builds (kube, octocrab, reqwest). reqwest is built without a
//! provider of its own, so the process default must be installed before a
//! `reqwest::Client` is built: [`ensure_crypto_provider`] does that, and
//! [`SseClient::new`](crate::sse::SseClient::new) calls it for you.
//!
//! ```
//! resilience::tls::ensure_crypto_provider();
//! let client = reqwest::Client::builder().build();
//! assert!(client.is_ok());
//! ```

/// Installs ring as the process-wide rustls crypto provider unless one is
/// installed already (by this function or by the application, whose choice
/// is kept). Cheap and idempotent: call it before building any
/// `reqwest::Client`, which otherwise panics for want of a provider.
pub fn ensure_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race to another installer is fine: one is installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}
