//! The two content types GitHub offers for a webhook — `application/json`
//! and `application/x-www-form-urlencoded` (the JSON in a `payload=` field)
//! — and how a body of either becomes the JSON document.
//!
//! The rule it keeps: the signature is verified over the bytes received,
//! *then* the form is decoded; a form body is decoded or refused with a
//! message naming the webhook setting to change, never parsed as JSON.

use std::borrow::Cow;

use http::HeaderMap;
use http::header::CONTENT_TYPE;

/// How a body is encoded, from its `Content-Type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyFormat {
    /// `application/json` (GitHub's "Content type: application/json").
    Json,
    /// `application/x-www-form-urlencoded` (GitHub's default for
    /// repository webhooks created in the UI): the JSON is the `payload`
    /// field.
    Form,
}

/// What to do with form-encoded deliveries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FormPolicy {
    /// Decode the `payload` field (the signature still covers the whole
    /// body as sent).
    #[default]
    Decode,
    /// Refuse them (415) with a message naming the setting to change.
    Refuse,
}

/// What the body or its content type cannot be used for.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// Neither JSON nor (allowed) form encoding.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// A form body without a usable `payload` field.
    #[error("{0}")]
    Form(&'static str),
}

/// The message for a form body when forms are refused.
pub const FORM_REFUSED: &str = "form-encoded webhook bodies are not accepted: set the webhook's \
     \"Content type\" to application/json in its GitHub settings";

/// Reads `Content-Type` (parameters such as `charset` ignored).
pub fn body_format(headers: &HeaderMap, policy: FormPolicy) -> Result<BodyFormat, BodyError> {
    let raw = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = raw
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "application/json" => Ok(BodyFormat::Json),
        "application/x-www-form-urlencoded" => match policy {
            FormPolicy::Decode => Ok(BodyFormat::Form),
            FormPolicy::Refuse => Err(BodyError::UnsupportedMediaType(FORM_REFUSED.to_owned())),
        },
        "" => Err(BodyError::UnsupportedMediaType(
            "no Content-Type: set the webhook's \"Content type\" to application/json".to_owned(),
        )),
        other => Err(BodyError::UnsupportedMediaType(format!(
            "Content-Type {:?} is not application/json; set the webhook's \"Content type\" to application/json",
            other.chars().take(80).collect::<String>()
        ))),
    }
}

/// The JSON document of a body in `format`: the body itself, or its form
/// field `payload` decoded.
pub fn json_document(format: BodyFormat, body: &[u8]) -> Result<Cow<'_, [u8]>, BodyError> {
    match format {
        BodyFormat::Json => Ok(Cow::Borrowed(body)),
        BodyFormat::Form => {
            let mut payload = None;
            for (name, value) in url::form_urlencoded::parse(body) {
                if name == "payload" {
                    if payload.is_some() {
                        return Err(BodyError::Form(
                            "form-encoded body has more than one payload field",
                        ));
                    }
                    payload = Some(value.into_owned());
                }
            }
            payload
                .map(|p| Cow::Owned(p.into_bytes()))
                .ok_or(BodyError::Form(
                    "form-encoded body has no payload field (GitHub sends payload=<JSON>)",
                ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn typed(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(CONTENT_TYPE, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn json_and_form_content_types_are_recognised_with_parameters() {
        for v in ["application/json", "Application/JSON; charset=utf-8"] {
            assert_eq!(
                body_format(&typed(v), FormPolicy::Decode),
                Ok(BodyFormat::Json)
            );
        }
        assert_eq!(
            body_format(
                &typed("application/x-www-form-urlencoded"),
                FormPolicy::Decode
            ),
            Ok(BodyFormat::Form)
        );
    }

    #[test]
    fn other_or_missing_content_types_and_refused_forms_name_the_setting() {
        for headers in [
            typed("text/plain"),
            typed("multipart/form-data; boundary=x"),
            HeaderMap::new(),
        ] {
            let Err(BodyError::UnsupportedMediaType(message)) =
                body_format(&headers, FormPolicy::Decode)
            else {
                panic!("{headers:?} accepted");
            };
            assert!(message.contains("Content type"), "{message}");
        }
        let refused = body_format(
            &typed("application/x-www-form-urlencoded"),
            FormPolicy::Refuse,
        );
        assert_eq!(
            refused,
            Err(BodyError::UnsupportedMediaType(FORM_REFUSED.to_owned()))
        );
    }

    #[test]
    fn a_form_body_yields_its_decoded_payload_field() {
        let body = b"payload=%7B%22zen%22%3A%22a+b%22%7D";
        let json = json_document(BodyFormat::Form, body).unwrap();
        assert_eq!(&*json, br#"{"zen":"a b"}"#);
        assert_eq!(
            &*json_document(BodyFormat::Json, b"{}").unwrap(),
            b"{}".as_slice()
        );
    }

    #[test]
    fn a_form_body_without_exactly_one_payload_is_refused() {
        assert!(json_document(BodyFormat::Form, b"other=1").is_err());
        assert!(json_document(BodyFormat::Form, b"payload=1&payload=2").is_err());
        assert!(json_document(BodyFormat::Form, b"").is_err());
    }
}
