//! `X-Hub-Signature-256`: HMAC-SHA256 of the raw request body, sent as
//! `sha256=<64 hex digits>`, checked against one or more secrets.
//!
//! The rule it keeps: **a delivery is authentic only if one configured
//! secret's HMAC over the exact bytes received matches**, compared in
//! constant time (`hmac`'s `verify_slice`). A missing, malformed or SHA-1
//! header is an error, never a pass; every secret is tried whatever the
//! first one answered, so the time taken does not tell which one matched.

use std::fmt;

use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

/// The header GitHub signs deliveries with.
pub const SIGNATURE_HEADER: &str = "x-hub-signature-256";

/// Most secrets accepted at once: rotation needs two; a few more cover
/// several senders sharing one endpoint.
pub const MAX_SECRETS: usize = 8;

/// Length of an HMAC-SHA256 digest in bytes.
const DIGEST_LEN: usize = 32;

type HmacSha256 = Hmac<Sha256>;

/// The secrets a delivery may be signed with (the current one first, then
/// the ones being rotated out). Never printed: `Debug` shows only how many.
///
/// ```
/// use github_webhook::{WebhookSecrets, sign};
/// use secrecy::SecretString;
///
/// let secrets = WebhookSecrets::new([
///     SecretString::from("new secret"),
///     SecretString::from("old secret"),
/// ])?;
/// let body = br#"{"zen":"Keep it logically awesome."}"#;
/// let header = sign(b"old secret", body);
/// assert_eq!(secrets.verify(Some(&header), body)?, 1, "the second secret matched");
/// assert!(secrets.verify(Some(&header), b"{}").is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct WebhookSecrets {
    secrets: Vec<SecretString>,
}

impl fmt::Debug for WebhookSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WebhookSecrets({} redacted)", self.secrets.len())
    }
}

/// Why a set of secrets cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SecretsError {
    /// No secret was given: every delivery would be refused.
    #[error("no webhook secret configured")]
    None,
    /// A secret is empty (GitHub would not sign with it).
    #[error("webhook secret {index} is empty")]
    Empty {
        /// Its position (0-based).
        index: usize,
    },
    /// More than [`MAX_SECRETS`].
    #[error("{count} webhook secrets given; at most {MAX_SECRETS} are accepted")]
    TooMany {
        /// How many were given.
        count: usize,
    },
}

/// Why a delivery's signature does not authenticate it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No `X-Hub-Signature-256` header.
    #[error("missing X-Hub-Signature-256 header (is a secret set on the webhook?)")]
    Missing,
    /// The header is not `sha256=` and 64 hex digits.
    #[error("malformed X-Hub-Signature-256 header: {0}")]
    Malformed(&'static str),
    /// Well-formed, but no configured secret produces it over this body.
    #[error("X-Hub-Signature-256 does not match the body with any configured secret")]
    Mismatch,
}

impl SignatureError {
    /// A short, fixed label (`missing`, `malformed`, `mismatch`) for metrics.
    pub fn as_label(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed(_) => "malformed",
            Self::Mismatch => "mismatch",
        }
    }
}

impl WebhookSecrets {
    /// Secrets in order of preference (the current one first). At least
    /// one, none empty, at most [`MAX_SECRETS`].
    pub fn new(secrets: impl IntoIterator<Item = SecretString>) -> Result<Self, SecretsError> {
        let secrets: Vec<SecretString> = secrets.into_iter().collect();
        if secrets.is_empty() {
            return Err(SecretsError::None);
        }
        if secrets.len() > MAX_SECRETS {
            return Err(SecretsError::TooMany {
                count: secrets.len(),
            });
        }
        if let Some(index) = secrets.iter().position(|s| s.expose_secret().is_empty()) {
            return Err(SecretsError::Empty { index });
        }
        Ok(Self { secrets })
    }

    /// How many secrets are configured.
    pub fn len(&self) -> usize {
        self.secrets.len()
    }

    /// Always `false`: a `WebhookSecrets` holds at least one secret.
    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    /// Checks the header's form without the body, so a request that can
    /// never verify is refused before its body is read.
    pub fn check_header(header: Option<&str>) -> Result<(), SignatureError> {
        parse_header(header).map(|_| ())
    }

    /// Verifies `header` (the `X-Hub-Signature-256` value) over `body`,
    /// returning the index of the secret that matched.
    pub fn verify(&self, header: Option<&str>, body: &[u8]) -> Result<usize, SignatureError> {
        let expected = parse_header(header)?;
        let mut matched = None;
        for (index, secret) in self.secrets.iter().enumerate() {
            // `new_from_slice` accepts keys of any length for HMAC.
            let Ok(mut mac) = HmacSha256::new_from_slice(secret.expose_secret().as_bytes()) else {
                continue;
            };
            mac.update(body);
            if mac.verify_slice(&expected).is_ok() && matched.is_none() {
                matched = Some(index);
            }
        }
        matched.ok_or(SignatureError::Mismatch)
    }
}

/// `sha256=<hex>` of HMAC-SHA256(`secret`, `body`): the header GitHub sends
/// (for senders, tests and benchmarks).
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    // HMAC takes keys of any length, so this cannot fail; an empty digest
    // would simply never verify.
    let digest = HmacSha256::new_from_slice(secret)
        .map(|mut mac| {
            mac.update(body);
            mac.finalize().into_bytes().to_vec()
        })
        .unwrap_or_default();
    format!("sha256={}", hex::encode(digest))
}

fn parse_header(header: Option<&str>) -> Result<[u8; DIGEST_LEN], SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?.trim();
    if header.starts_with("sha1=") {
        return Err(SignatureError::Malformed(
            "a SHA-1 signature; X-Hub-Signature-256 carries sha256=",
        ));
    }
    let hex_digits = header
        .strip_prefix("sha256=")
        .ok_or(SignatureError::Malformed("does not start with sha256="))?;
    if hex_digits.len() != 2 * DIGEST_LEN {
        return Err(SignatureError::Malformed("not 64 hexadecimal digits"));
    }
    let mut digest = [0u8; DIGEST_LEN];
    hex::decode_to_slice(hex_digits, &mut digest)
        .map_err(|_| SignatureError::Malformed("not 64 hexadecimal digits"))?;
    Ok(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// GitHub's documented test vector ("Validating webhook deliveries").
    const GITHUB_SECRET: &str = "It's a Secret to Everybody";
    const GITHUB_PAYLOAD: &[u8] = b"Hello, World!";
    const GITHUB_SIGNATURE: &str =
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

    fn secrets(list: &[&str]) -> WebhookSecrets {
        WebhookSecrets::new(list.iter().map(|s| SecretString::from(*s))).unwrap()
    }

    #[test]
    fn githubs_documented_test_vector_signs_and_verifies() {
        assert_eq!(
            sign(GITHUB_SECRET.as_bytes(), GITHUB_PAYLOAD),
            GITHUB_SIGNATURE
        );
        let s = secrets(&[GITHUB_SECRET]);
        assert_eq!(s.verify(Some(GITHUB_SIGNATURE), GITHUB_PAYLOAD), Ok(0));
        let upper = format!("sha256={}", GITHUB_SIGNATURE[7..].to_uppercase());
        assert_eq!(s.verify(Some(&upper), GITHUB_PAYLOAD), Ok(0));
    }

    #[test]
    fn any_configured_secret_verifies_during_rotation() {
        let s = secrets(&["new", GITHUB_SECRET]);
        assert_eq!(s.verify(Some(GITHUB_SIGNATURE), GITHUB_PAYLOAD), Ok(1));
        let by_new = sign(b"new", GITHUB_PAYLOAD);
        assert_eq!(s.verify(Some(&by_new), GITHUB_PAYLOAD), Ok(0));
        let by_other = sign(b"retired", GITHUB_PAYLOAD);
        assert_eq!(
            s.verify(Some(&by_other), GITHUB_PAYLOAD),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn a_changed_body_does_not_verify() {
        let s = secrets(&[GITHUB_SECRET]);
        assert_eq!(
            s.verify(Some(GITHUB_SIGNATURE), b"Hello, World?"),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            s.verify(Some(GITHUB_SIGNATURE), b""),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn missing_or_malformed_headers_are_errors_not_passes() {
        let s = secrets(&[GITHUB_SECRET]);
        let body = GITHUB_PAYLOAD;
        assert_eq!(s.verify(None, body), Err(SignatureError::Missing));
        for bad in [
            "",
            "sha256=",
            "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e1",
            "sha256=z57107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
            "sha1=0123456789abcdef0123456789abcdef01234567",
            "SHA256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
        ] {
            assert!(
                matches!(s.verify(Some(bad), body), Err(SignatureError::Malformed(_))),
                "{bad:?}"
            );
            assert!(WebhookSecrets::check_header(Some(bad)).is_err(), "{bad:?}");
        }
        assert_eq!(WebhookSecrets::check_header(Some(GITHUB_SIGNATURE)), Ok(()));
    }

    #[test]
    fn secrets_are_checked_and_never_printed() {
        assert_eq!(
            WebhookSecrets::new(Vec::new()).unwrap_err(),
            SecretsError::None
        );
        assert_eq!(
            WebhookSecrets::new([SecretString::from("a"), SecretString::from("")]).unwrap_err(),
            SecretsError::Empty { index: 1 }
        );
        assert!(matches!(
            WebhookSecrets::new((0..9).map(|_| SecretString::from("a"))),
            Err(SecretsError::TooMany { count: 9 })
        ));
        let s = secrets(&[GITHUB_SECRET, "second"]);
        let shown = format!("{s:?}");
        assert_eq!(shown, "WebhookSecrets(2 redacted)");
        assert!(!shown.contains("Secret to"));
        assert_eq!(s.len(), 2);
        assert!(!s.is_empty());
    }
}
