//! Request bodies: JSON, read whatever the `Content-Type` says.
//!
//! The rule it keeps: a body that parses as the JSON an endpoint expects is
//! accepted, whatever its `Content-Type` (`curl -d` sends
//! `application/x-www-form-urlencoded`, and the cancellation story's own
//! commands are written that way); a body that does not parse is a 400
//! `INVALID_REQUEST` whose message names the problem, with serde's line and
//! column. The size limit still holds: an oversized body is a 413.

use axum::extract::{FromRequest, Request};
use axum::response::{IntoResponse, Response};
use axum::{Json, body::Bytes};
use http::StatusCode;
use serde::de::DeserializeOwned;

use crate::api::{ErrorBody, ErrorCode};

/// A request body parsed as JSON `T`, whatever its `Content-Type`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct JsonBody<T>(pub(crate) T);

/// Why a body was refused: a 400 naming the problem, or a 413.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BodyError {
    status: StatusCode,
    body: ErrorBody,
}

impl<T, S> FromRequest<S> for JsonBody<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = BodyError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes =
            Bytes::from_request(request, state)
                .await
                .map_err(|rejection| match rejection.status() {
                    StatusCode::PAYLOAD_TOO_LARGE => BodyError {
                        status: StatusCode::PAYLOAD_TOO_LARGE,
                        body: ErrorBody::new(ErrorCode::PayloadTooLarge, rejection.body_text()),
                    },
                    _ => invalid(format!(
                        "cannot read the request body: {}",
                        rejection.body_text()
                    )),
                })?;
        parse(&bytes).map(JsonBody)
    }
}

impl IntoResponse for BodyError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

/// Parses `bytes` as `T`, or says what is wrong with them.
pub(crate) fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, BodyError> {
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        None => {
            return Err(invalid(
                "the request body is empty; send a JSON object".to_owned(),
            ));
        }
        // serde reads a struct from an array too (`["test-123"]`); the
        // endpoints take objects only, and a form-encoded body
        // (`job_id=test-123`) deserves a plainer answer than serde's.
        Some(b'{') => {}
        Some(_) => {
            return Err(invalid(
                "the request body must be a JSON object, like {\"job_id\":\"job-1\"}".to_owned(),
            ));
        }
    }
    serde_json::from_slice(bytes).map_err(|error| {
        invalid(format!(
            "the request body is not the expected JSON: {error}"
        ))
    })
}

fn invalid(message: String) -> BodyError {
    BodyError {
        status: StatusCode::BAD_REQUEST,
        body: ErrorBody::new(ErrorCode::InvalidRequest, message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::CancelRequest;

    fn refusal(bytes: &str) -> (StatusCode, String, String) {
        let error = parse::<CancelRequest>(bytes.as_bytes()).unwrap_err();
        (error.status, error.body.code, error.body.message)
    }

    #[test]
    fn a_body_that_parses_is_accepted_and_one_that_does_not_is_named() {
        assert_eq!(
            parse::<CancelRequest>(br#"{"job_id":"test-123"}"#).unwrap(),
            CancelRequest {
                job_id: "test-123".to_owned()
            }
        );
        let (status, code, message) = refusal("");
        assert_eq!(
            (status, code.as_str()),
            (StatusCode::BAD_REQUEST, "INVALID_REQUEST")
        );
        assert_eq!(message, "the request body is empty; send a JSON object");
        assert_eq!(
            refusal(r#"{"job":"x"}"#).2,
            "the request body is not the expected JSON: missing field `job_id` at line 1 column 11"
        );
        assert_eq!(
            refusal(r#"{"job_id": 7}"#).2,
            "the request body is not the expected JSON: invalid type: integer `7`, expected a string at line 1 column 12"
        );
        for not_an_object in [
            "job_id=test-123",
            r#"["test-123"]"#,
            r#""test-123""#,
            "null",
        ] {
            assert_eq!(
                refusal(not_an_object).2,
                r#"the request body must be a JSON object, like {"job_id":"job-1"}"#,
                "{not_an_object} is refused, not guessed at"
            );
        }
        assert!(
            refusal("{not json")
                .2
                .contains("key must be a string at line 1 column 2")
        );
    }
}
