//! The delivery headers GitHub sends with every webhook: the event name, the
//! delivery GUID and the hook id, read and checked before the body is
//! interpreted.
//!
//! The rule it keeps: **the event name is normalised before anything
//! matches on it** (octocrab silently turns `Push` or ` push` into an
//! unknown event), and the dedupe key is the delivery GUID *together with*
//! the hook id: GitHub gives every hook subscribed to an event the same
//! GUID, and keeps it on redelivery.

use std::fmt;

use http::HeaderMap;

/// `X-GitHub-Event`: the event's name (`push`, `pull_request`, …).
pub const EVENT_HEADER: &str = "x-github-event";
/// `X-GitHub-Delivery`: the delivery's GUID, kept by redeliveries.
pub const DELIVERY_HEADER: &str = "x-github-delivery";
/// `X-GitHub-Hook-ID`: the webhook that sent it.
pub const HOOK_ID_HEADER: &str = "x-github-hook-id";

/// Longest delivery id accepted (GitHub's are 36-character GUIDs).
pub const MAX_DELIVERY_ID_LEN: usize = 128;
/// Longest event name accepted (GitHub's longest is under 40).
const MAX_EVENT_LEN: usize = 64;
/// Longest hook id accepted (a 64-bit number).
const MAX_HOOK_ID_LEN: usize = 20;

/// What the delivery headers say, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliveryHeaders {
    /// The event name, normalised (see [`normalize_event_name`]).
    pub event: String,
    /// The delivery GUID.
    pub delivery_id: String,
    /// The hook id, when sent (GitHub always sends it; some proxies drop it).
    pub hook_id: Option<String>,
}

/// A header that is missing or cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// A required header is absent.
    #[error("missing {0} header")]
    Missing(&'static str),
    /// A header's value is not of the form GitHub sends.
    #[error("malformed {header} header: {reason}")]
    Malformed {
        /// The header.
        header: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
}

impl DeliveryHeaders {
    /// Reads `X-GitHub-Event`, `X-GitHub-Delivery` and `X-GitHub-Hook-ID`.
    pub fn from_headers(headers: &HeaderMap) -> Result<Self, HeaderError> {
        let event = text(headers, EVENT_HEADER, "X-GitHub-Event")?
            .ok_or(HeaderError::Missing("X-GitHub-Event"))?;
        let event = normalize_event_name(event).ok_or(HeaderError::Malformed {
            header: "X-GitHub-Event",
            reason: "not an event name (letters and '_', at most 64)",
        })?;
        let delivery_id = text(headers, DELIVERY_HEADER, "X-GitHub-Delivery")?
            .ok_or(HeaderError::Missing("X-GitHub-Delivery"))?
            .trim();
        if delivery_id.is_empty()
            || delivery_id.len() > MAX_DELIVERY_ID_LEN
            || !delivery_id.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(HeaderError::Malformed {
                header: "X-GitHub-Delivery",
                reason: "not 1 to 128 visible ASCII characters",
            });
        }
        let hook_id = match text(headers, HOOK_ID_HEADER, "X-GitHub-Hook-ID")?.map(str::trim) {
            None | Some("") => None,
            Some(id) if id.len() <= MAX_HOOK_ID_LEN && id.bytes().all(|b| b.is_ascii_digit()) => {
                Some(id.to_owned())
            }
            Some(_) => {
                return Err(HeaderError::Malformed {
                    header: "X-GitHub-Hook-ID",
                    reason: "not a number",
                });
            }
        };
        Ok(Self {
            event,
            delivery_id: delivery_id.to_owned(),
            hook_id,
        })
    }

    /// The key that identifies this delivery across redeliveries and
    /// restarts.
    pub fn dedupe_key(&self) -> DeliveryKey {
        DeliveryKey::new(&self.delivery_id, self.hook_id.as_deref())
    }
}

/// A delivery's identity: `<GUID>:<hook id>` (`<GUID>:-` without a hook
/// id). The hook id is digits only, so the last `:` separates the two.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeliveryKey(String);

impl DeliveryKey {
    /// The key of delivery `delivery_id` sent by hook `hook_id`.
    pub fn new(delivery_id: &str, hook_id: Option<&str>) -> Self {
        Self(format!("{delivery_id}:{}", hook_id.unwrap_or("-")))
    }

    /// The key as stored.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DeliveryKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The event name as GitHub documents it: surrounding white space removed,
/// ASCII lower-cased; `None` unless it is then 1–64 characters of `[a-z_]`.
///
/// ```
/// use github_webhook::normalize_event_name;
///
/// assert_eq!(normalize_event_name(" Push ").as_deref(), Some("push"));
/// assert_eq!(normalize_event_name("PULL_REQUEST").as_deref(), Some("pull_request"));
/// assert_eq!(normalize_event_name("push\"}"), None);
/// ```
pub fn normalize_event_name(raw: &str) -> Option<String> {
    let name = raw.trim().to_ascii_lowercase();
    let valid = !name.is_empty()
        && name.len() <= MAX_EVENT_LEN
        && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
    valid.then_some(name)
}

/// A header's value as text, if present.
fn text<'a>(
    headers: &'a HeaderMap,
    name: &'static str,
    shown: &'static str,
) -> Result<Option<&'a str>, HeaderError> {
    match headers.get(name) {
        None => Ok(None),
        Some(value) => value
            .to_str()
            .map(Some)
            .map_err(|_| HeaderError::Malformed {
                header: shown,
                reason: "not visible ASCII",
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    const GUID: &str = "72d3162e-cc78-11e3-81ab-4c9367dc0958";

    #[test]
    fn the_event_header_is_normalised_before_use() {
        let h = DeliveryHeaders::from_headers(&headers(&[
            (EVENT_HEADER, " Pull_Request"),
            (DELIVERY_HEADER, GUID),
            (HOOK_ID_HEADER, "42"),
        ]))
        .unwrap();
        assert_eq!(h.event, "pull_request");
        assert_eq!(h.hook_id.as_deref(), Some("42"));
        assert_eq!(h.dedupe_key().as_str(), format!("{GUID}:42"));
    }

    #[test]
    fn the_same_guid_from_two_hooks_is_two_deliveries() {
        let a = DeliveryKey::new(GUID, Some("1"));
        let b = DeliveryKey::new(GUID, Some("2"));
        assert_ne!(a, b);
        assert_eq!(
            DeliveryKey::new(GUID, None).to_string(),
            format!("{GUID}:-")
        );
    }

    #[test]
    fn missing_and_malformed_headers_name_the_header() {
        let missing_event = DeliveryHeaders::from_headers(&headers(&[(DELIVERY_HEADER, GUID)]));
        assert_eq!(missing_event, Err(HeaderError::Missing("X-GitHub-Event")));
        let missing_delivery = DeliveryHeaders::from_headers(&headers(&[(EVENT_HEADER, "push")]));
        assert_eq!(
            missing_delivery,
            Err(HeaderError::Missing("X-GitHub-Delivery"))
        );
        for (name, value, shown) in [
            (EVENT_HEADER, "push event", "X-GitHub-Event"),
            (EVENT_HEADER, "", "X-GitHub-Event"),
            (DELIVERY_HEADER, "a b", "X-GitHub-Delivery"),
            (HOOK_ID_HEADER, "12a", "X-GitHub-Hook-ID"),
        ] {
            let mut h = headers(&[(EVENT_HEADER, "push"), (DELIVERY_HEADER, GUID)]);
            h.insert(name, HeaderValue::from_str(value).unwrap());
            match DeliveryHeaders::from_headers(&h) {
                Err(HeaderError::Malformed { header, .. }) => assert_eq!(header, shown),
                other => panic!("{name}={value:?}: {other:?}"),
            }
        }
        let mut h = headers(&[(EVENT_HEADER, "push")]);
        h.insert(
            DELIVERY_HEADER,
            HeaderValue::from_str(&"x".repeat(129)).unwrap(),
        );
        assert!(DeliveryHeaders::from_headers(&h).is_err());
    }
}
