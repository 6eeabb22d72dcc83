//! [`Rejection`]: why a request is not a verified, well-formed delivery,
//! with the HTTP status it is answered with.
//!
//! The rule it keeps: a rejection's message names what to fix and never
//! repeats the body, a header's value or a secret.

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde::Serialize;

use crate::body::BodyError;
use crate::delivery::HeaderError;
use crate::event::PayloadError;
use crate::signature::SignatureError;

/// A request refused before any handler saw it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Rejection {
    /// The body is over the limit (413).
    #[error("body is over the {limit}-byte limit")]
    PayloadTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// Not JSON, nor an allowed form encoding (415).
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The signature does not authenticate the body (401).
    #[error(transparent)]
    Signature(#[from] SignatureError),
    /// A delivery header is missing or malformed (400).
    #[error(transparent)]
    Header(#[from] HeaderError),
    /// A form body without its payload field (400).
    #[error("{0}")]
    Form(&'static str),
    /// The body could not be read (the client went away, a broken chunk) (400).
    #[error("the body could not be read")]
    Unreadable,
    /// The JSON is malformed or lacks what its event needs (400).
    #[error(transparent)]
    Payload(#[from] PayloadError),
}

impl From<BodyError> for Rejection {
    fn from(e: BodyError) -> Self {
        match e {
            BodyError::UnsupportedMediaType(m) => Self::UnsupportedMediaType(m),
            BodyError::Form(m) => Self::Form(m),
        }
    }
}

impl Rejection {
    /// The status it is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Signature(_) => StatusCode::UNAUTHORIZED,
            Self::Header(_) | Self::Form(_) | Self::Unreadable | Self::Payload(_) => {
                StatusCode::BAD_REQUEST
            }
        }
    }

    /// A short, fixed label for metrics (`too_large`, `content_type`,
    /// `signature_missing`, `signature_malformed`, `signature_mismatch`,
    /// `header`, `form`, `unreadable`, `payload`).
    pub fn as_label(&self) -> &'static str {
        match self {
            Self::PayloadTooLarge { .. } => "too_large",
            Self::UnsupportedMediaType(_) => "content_type",
            Self::Signature(SignatureError::Missing) => "signature_missing",
            Self::Signature(SignatureError::Malformed(_)) => "signature_malformed",
            Self::Signature(SignatureError::Mismatch) => "signature_mismatch",
            Self::Header(_) => "header",
            Self::Form(_) => "form",
            Self::Unreadable => "unreadable",
            Self::Payload(_) => "payload",
        }
    }

    /// Whether it is a signature failure (counted apart: a burst of them
    /// is a misconfigured secret or someone probing).
    pub fn is_signature(&self) -> bool {
        matches!(self, Self::Signature(_))
    }
}

/// The JSON body of a refusal: `{"error": <label>, "message": <text>}`.
#[derive(Clone, Debug, Serialize)]
pub struct ErrorBody {
    /// The rejection's label.
    pub error: &'static str,
    /// What is wrong, in words.
    pub message: String,
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.as_label(),
            message: self.to_string(),
        };
        (self.status(), Json(body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_rejection_has_its_status_and_label() {
        let cases = [
            (Rejection::PayloadTooLarge { limit: 1 }, 413, "too_large"),
            (
                Rejection::UnsupportedMediaType("x".into()),
                415,
                "content_type",
            ),
            (
                Rejection::Signature(SignatureError::Mismatch),
                401,
                "signature_mismatch",
            ),
            (
                Rejection::Header(HeaderError::Missing("X-GitHub-Event")),
                400,
                "header",
            ),
            (Rejection::Form("no payload"), 400, "form"),
            (Rejection::Unreadable, 400, "unreadable"),
        ];
        for (rejection, status, label) in cases {
            assert_eq!(rejection.status().as_u16(), status, "{rejection:?}");
            assert_eq!(rejection.as_label(), label);
            assert_eq!(rejection.is_signature(), status == 401);
        }
    }
}
