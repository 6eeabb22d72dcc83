//! Lease names for lock keys.
//!
//! Rule kept here: the map from keys to names is injective, and every name
//! is a valid DNS-1123 subdomain (what the API server requires of a Lease
//! name). Keys that are already valid and short map 1:1 to `<prefix>-<key>`;
//! any other key maps to `<prefix>-<readable>-<hash>`, where `readable` is a
//! sanitized, possibly shortened copy of the key and `hash` is 16 hex digits
//! of the key's SHA-256. A name is never merely truncated: whenever anything
//! is dropped or changed, the hash is there to keep keys apart.
//!
//! The two forms cannot collide: a 1:1 name is only used when it does *not*
//! end in `-` plus 16 hex digits, and every hashed name does.

use sha2::{Digest, Sha256};

use crate::error::Error;

/// The longest key accepted, in bytes. Longer input is a bug upstream, not a
/// lock name.
pub const MAX_KEY_LEN: usize = 1024;

/// The longest Lease name (a DNS-1123 subdomain).
const MAX_NAME_LEN: usize = 253;
/// The longest prefix, so that hashed names keep a readable part.
const MAX_PREFIX_LEN: usize = 63;
/// Hex digits of the key's hash in a hashed name (64 bits).
const HASH_HEX_LEN: usize = 16;

/// The Lease name for `key` under `prefix`.
///
/// ```
/// use lease_lock::lease_name;
///
/// assert_eq!(lease_name("cancel", "task-42").unwrap(), "cancel-task-42");
/// let odd = lease_name("cancel", "Task_42/agent").unwrap();
/// assert!(odd.starts_with("cancel-task-42-agent-") && odd.len() == "cancel-task-42-agent-".len() + 16);
/// assert!(lease_name("cancel", "").is_err());
/// ```
pub fn lease_name(prefix: &str, key: &str) -> Result<String, Error> {
    validate_prefix(prefix)?;
    if key.is_empty() {
        return Err(Error::invalid_key(key, "the key is empty"));
    }
    if key.len() > MAX_KEY_LEN {
        return Err(Error::invalid_key(
            key,
            format!(
                "the key is {} bytes long, more than {MAX_KEY_LEN}",
                key.len()
            ),
        ));
    }
    if key.chars().any(char::is_control) {
        return Err(Error::invalid_key(
            key,
            "the key contains control characters",
        ));
    }
    let direct = format!("{prefix}-{key}");
    if is_dns1123_subdomain(&direct) && !ends_with_hash_suffix(&direct) {
        return Ok(direct);
    }
    Ok(hashed_name(prefix, key))
}

/// Checks a lock prefix: a DNS-1123 label of at most 63 characters.
pub(crate) fn validate_prefix(prefix: &str) -> Result<(), Error> {
    let ok = !prefix.is_empty()
        && prefix.len() <= MAX_PREFIX_LEN
        && prefix
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !prefix.starts_with('-')
        && !prefix.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidConfig(format!(
            "prefix {prefix:?} must be 1-{MAX_PREFIX_LEN} lowercase letters, digits or '-', \
             starting and ending with a letter or digit"
        )))
    }
}

/// Whether `s` is a DNS-1123 subdomain: at most 253 characters, dot-separated
/// labels of lowercase alphanumerics and '-', each starting and ending with
/// an alphanumeric.
pub(crate) fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME_LEN
        && s.split('.').all(|label| {
            let b = label.as_bytes();
            let alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
            match (b.first(), b.last()) {
                (Some(first), Some(last)) => {
                    alnum(first) && alnum(last) && b.iter().all(|c| alnum(c) || *c == b'-')
                }
                _ => false,
            }
        })
}

/// A short stable hash of `s` (hex), used for names and label values.
pub(crate) fn short_hash(s: &str) -> String {
    let digest = Sha256::digest(s.as_bytes());
    let mut out = hex::encode(digest);
    out.truncate(HASH_HEX_LEN);
    out
}

fn ends_with_hash_suffix(name: &str) -> bool {
    let b = name.as_bytes();
    b.len() > HASH_HEX_LEN
        && b[b.len() - HASH_HEX_LEN - 1] == b'-'
        && b[b.len() - HASH_HEX_LEN..]
            .iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
}

fn hashed_name(prefix: &str, key: &str) -> String {
    let hash = short_hash(key);
    // prefix + '-' + readable + '-' + hash fits in MAX_NAME_LEN.
    let budget = MAX_NAME_LEN - prefix.len() - 2 - HASH_HEX_LEN;
    let mut readable = String::with_capacity(budget);
    for c in key.chars().flat_map(char::to_lowercase) {
        if readable.len() >= budget {
            break;
        }
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            readable.push(c);
        } else if !readable.is_empty() && !readable.ends_with('-') {
            // Any other character (including '.') becomes one '-', so the
            // readable part is a single DNS label fragment.
            readable.push('-');
        }
    }
    let readable = readable.trim_end_matches('-');
    if readable.is_empty() {
        format!("{prefix}-{hash}")
    } else {
        format!("{prefix}-{readable}-{hash}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn valid_short_keys_map_one_to_one() {
        assert_eq!(lease_name("lock", "task-42").unwrap(), "lock-task-42");
        assert_eq!(lease_name("lock", "a.b-c").unwrap(), "lock-a.b-c");
        let sha = "0123456789abcdef0123456789abcdef01234567";
        assert_eq!(lease_name("lock", sha).unwrap(), format!("lock-{sha}"));
    }

    #[test]
    fn odd_keys_get_a_readable_prefix_and_a_hash() {
        let name = lease_name("lock", "Task_42/Agent").unwrap();
        assert_eq!(
            name,
            format!("lock-task-42-agent-{}", short_hash("Task_42/Agent"))
        );
        let name = lease_name("lock", "___").unwrap();
        assert_eq!(name, format!("lock-{}", short_hash("___")));
        // Invalid as a subdomain even though every character is allowed.
        assert!(ends_with_hash_suffix(&lease_name("lock", "a..b").unwrap()));
        assert!(ends_with_hash_suffix(&lease_name("lock", "x-").unwrap()));
    }

    #[test]
    fn long_keys_are_hashed_never_truncated_alone() {
        let a = "a".repeat(300);
        let b = format!("{}b", "a".repeat(299));
        let (na, nb) = (
            lease_name("lock", &a).unwrap(),
            lease_name("lock", &b).unwrap(),
        );
        assert!(na.len() <= MAX_NAME_LEN && is_dns1123_subdomain(&na));
        assert_ne!(na, nb);
        assert!(ends_with_hash_suffix(&na));
    }

    #[test]
    fn a_valid_key_shaped_like_a_hashed_name_cannot_collide_with_it() {
        let odd = "Foo";
        let hashed = lease_name("lock", odd).unwrap();
        let lookalike = hashed.strip_prefix("lock-").unwrap();
        let other = lease_name("lock", lookalike).unwrap();
        assert_ne!(hashed, other);
    }

    #[test]
    fn invalid_keys_and_prefixes_are_errors_not_panics() {
        assert!(matches!(
            lease_name("lock", ""),
            Err(Error::InvalidKey { .. })
        ));
        assert!(matches!(
            lease_name("lock", "a\nb"),
            Err(Error::InvalidKey { .. })
        ));
        let huge = "k".repeat(MAX_KEY_LEN + 1);
        assert!(matches!(
            lease_name("lock", &huge),
            Err(Error::InvalidKey { .. })
        ));
        for prefix in ["", "Lock", "-lock", "lock-", "lo.ck", &"p".repeat(64)] {
            assert!(
                matches!(lease_name(prefix, "k"), Err(Error::InvalidConfig(_))),
                "{prefix:?}"
            );
        }
    }

    fn key_strategy() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z0-9.-]{1,40}",
            "[a-zA-Z0-9._/-]{1,80}",
            "[a-f0-9-]{10,30}",
            "\\PC{1,300}",
            "[a-z]{200,260}",
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn every_key_maps_to_a_valid_lease_name(key in key_strategy()) {
            let name = lease_name("cancel-task", &key).unwrap();
            prop_assert!(is_dns1123_subdomain(&name), "{name:?}");
            prop_assert!(name.starts_with("cancel-task-"));
        }

        #[test]
        fn distinct_keys_map_to_distinct_names(a in key_strategy(), b in key_strategy()) {
            prop_assume!(a != b);
            prop_assert_ne!(lease_name("lock", &a).unwrap(), lease_name("lock", &b).unwrap());
        }

        #[test]
        fn a_hashed_names_tail_as_a_key_maps_elsewhere(key in "[A-Z_/]{1,20}") {
            let hashed = lease_name("lock", &key).unwrap();
            let tail = hashed.strip_prefix("lock-").unwrap().to_owned();
            prop_assert_ne!(lease_name("lock", &tail).unwrap(), hashed);
        }
    }
}
