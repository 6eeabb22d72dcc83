//! The wire format: request bodies, responses, SSE event payloads and error
//! bodies, with the validation that guards them.
//!
//! The rule it keeps: every error the worker answers is a JSON
//! `{"code","message"}` with a stable, machine-readable code; the same codes
//! end a stream as `event: error`.

use serde::{Deserialize, Serialize};

/// The longest accepted job id (also bounds correlation ids).
pub const MAX_ID_LEN: usize = 128;

/// `POST /execute` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecuteRequest {
    /// The job's id; generated when absent. Must match
    /// `^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$`.
    #[serde(default)]
    pub job_id: Option<String>,
    /// The prompt to continue.
    pub prompt: String,
    /// Tokens to generate at most (default 16, capped by `--max-tokens-limit`).
    #[serde(default = "default_max_tokens")]
    pub max_tokens: u32,
    /// Sampling temperature, 0.0 to 2.0 (default 1.0).
    #[serde(default = "default_temperature")]
    pub temperature: f32,
    /// Seed for reproducible sampling (default 0).
    #[serde(default)]
    pub seed: u64,
}

/// `POST /cancel` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelRequest {
    /// The job to cancel.
    pub job_id: String,
}

/// `POST /cancel` answer: always 202 with this body for a well-formed id,
/// whether the job is active, finished, already cancelled or unknown, so the
/// call is idempotent and safe to retry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelResponse {
    /// Always `"cancelling"`.
    pub status: String,
    /// The job the request named.
    pub job_id: String,
}

impl CancelResponse {
    /// The answer for `job_id`.
    pub fn cancelling(job_id: impl Into<String>) -> Self {
        Self {
            status: "cancelling".to_owned(),
            job_id: job_id.into(),
        }
    }
}

/// An error answer, and the payload of a stream's `event: error`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// A stable code, for example `CANCELLED` or `INVALID_JOB_ID`.
    pub code: String,
    /// A sentence for humans.
    pub message: String,
}

impl ErrorBody {
    /// An error with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code: code.as_str().to_owned(),
            message: message.into(),
        }
    }
}

/// The error codes the worker uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The job was cancelled by a client request.
    Cancelled,
    /// The job ran past its deadline.
    DeadlineExceeded,
    /// The worker is shutting down.
    ShuttingDown,
    /// The token source (upstream server) failed.
    UpstreamError,
    /// The request body is not valid.
    InvalidRequest,
    /// The job id is empty or malformed.
    InvalidJobId,
    /// A job with this id is already running.
    DuplicateJob,
    /// The worker already runs its maximum number of jobs.
    TooManyJobs,
    /// The reservation budget cannot hold this job now.
    ReservationExhausted,
    /// The body exceeds the size limit.
    PayloadTooLarge,
    /// No such job is known.
    NotFound,
    /// A fault of the worker itself.
    Internal,
}

impl ErrorCode {
    /// The code as sent on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cancelled => "CANCELLED",
            Self::DeadlineExceeded => "DEADLINE_EXCEEDED",
            Self::ShuttingDown => "SHUTTING_DOWN",
            Self::UpstreamError => "UPSTREAM_ERROR",
            Self::InvalidRequest => "INVALID_REQUEST",
            Self::InvalidJobId => "INVALID_JOB_ID",
            Self::DuplicateJob => "DUPLICATE_JOB",
            Self::TooManyJobs => "TOO_MANY_JOBS",
            Self::ReservationExhausted => "RESERVATION_EXHAUSTED",
            Self::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            Self::NotFound => "NOT_FOUND",
            Self::Internal => "INTERNAL",
        }
    }
}

/// Payload of `event: started`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartedEvent {
    /// The job's id (generated ones are learnt here).
    pub job_id: String,
    /// The request's correlation id.
    pub correlation_id: String,
    /// Units reserved for the job (prompt tokens + max tokens).
    pub reserved_units: u64,
}

/// Payload of `event: token`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenEvent {
    /// The token's text.
    pub t: String,
    /// Its index in the stream, from 0.
    pub i: u64,
}

/// Payload of `event: end`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndEvent {
    /// The job's id.
    pub job_id: String,
    /// `"length"` when `max_tokens` was reached, `"stop"` when the source ended.
    pub finish_reason: String,
    /// Token counts.
    pub usage: Usage,
}

/// Token counts of a finished job, as OpenAI-compatible servers report them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Tokens in the prompt (whitespace-separated words).
    pub prompt_tokens: u64,
    /// Tokens generated.
    pub completion_tokens: u64,
    /// The sum of both.
    pub total_tokens: u64,
}

/// Whether `id` is a valid job id: `^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$`.
pub fn is_valid_id(id: &str) -> bool {
    let bytes = id.as_bytes();
    match bytes.split_first() {
        Some((first, rest)) => {
            first.is_ascii_alphanumeric()
                && rest.len() < MAX_ID_LEN
                && rest
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
        }
        None => false,
    }
}

/// Whitespace-separated words: a model-free stand-in for a tokenizer, used
/// for reservations and usage.
pub fn prompt_tokens(prompt: &str) -> u64 {
    u64::try_from(prompt.split_whitespace().count()).unwrap_or(u64::MAX)
}

fn default_max_tokens() -> u32 {
    16
}

fn default_temperature() -> f32 {
    1.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_follow_the_documented_pattern() {
        for valid in ["a", "job-1", "Z9._:-x", &"a".repeat(128)] {
            assert!(is_valid_id(valid), "{valid:?} should be valid");
        }
        for invalid in ["", "-a", ".a", "a b", "a/b", "é", &"a".repeat(129), "a\n"] {
            assert!(!is_valid_id(invalid), "{invalid:?} should be invalid");
        }
    }

    #[test]
    fn execute_request_fills_defaults_and_rejects_unknown_fields() {
        let request: ExecuteRequest = serde_json::from_str(r#"{"prompt":"hi"}"#).unwrap();
        assert_eq!(
            request,
            ExecuteRequest {
                job_id: None,
                prompt: "hi".into(),
                max_tokens: 16,
                temperature: 1.0,
                seed: 0,
            }
        );
        let full: ExecuteRequest = serde_json::from_str(
            r#"{"job_id":"j","prompt":"p","max_tokens":3,"temperature":0.5,"seed":7}"#,
        )
        .unwrap();
        assert_eq!(full.job_id.as_deref(), Some("j"));
        assert_eq!((full.max_tokens, full.seed), (3, 7));
        assert!(serde_json::from_str::<ExecuteRequest>(r#"{"prompt":"p","top_k":3}"#).is_err());
        assert!(serde_json::from_str::<ExecuteRequest>(r#"{"max_tokens":3}"#).is_err());
    }

    #[test]
    fn responses_and_events_have_the_documented_shape() {
        assert_eq!(
            serde_json::to_value(CancelResponse::cancelling("j1")).unwrap(),
            serde_json::json!({"status": "cancelling", "job_id": "j1"})
        );
        assert_eq!(
            serde_json::to_value(ErrorBody::new(
                ErrorCode::Cancelled,
                "Job cancelled by client request"
            ))
            .unwrap(),
            serde_json::json!({"code": "CANCELLED", "message": "Job cancelled by client request"})
        );
        assert_eq!(
            serde_json::to_value(TokenEvent {
                t: " a".into(),
                i: 4
            })
            .unwrap(),
            serde_json::json!({"t": " a", "i": 4})
        );
        let end = EndEvent {
            job_id: "j".into(),
            finish_reason: "length".into(),
            usage: Usage {
                prompt_tokens: 2,
                completion_tokens: 3,
                total_tokens: 5,
            },
        };
        let json = serde_json::to_string(&end).unwrap();
        assert_eq!(serde_json::from_str::<EndEvent>(&json).unwrap(), end);
    }

    #[test]
    fn cancel_request_reads_the_job_id_and_tolerates_extra_fields() {
        let request: CancelRequest = serde_json::from_str(r#"{"job_id":"test-123"}"#).unwrap();
        assert_eq!(
            request,
            CancelRequest {
                job_id: "test-123".into()
            }
        );
        // A client may say why it cancels; the worker does not need to know.
        let with_reason: CancelRequest =
            serde_json::from_str(r#"{"job_id":"j","reason":"user pressed stop"}"#).unwrap();
        assert_eq!(with_reason.job_id, "j");
        // The id is checked by the handler (400 INVALID_JOB_ID), not here.
        let empty: CancelRequest = serde_json::from_str(r#"{"job_id":""}"#).unwrap();
        assert_eq!(empty.job_id, "");
        // (serde would also read `["test-123"]` as this struct; the body
        // layer refuses anything but an object before serde sees it.)
        for refused in [
            "{}",
            r#"{"job_id":null}"#,
            r#"{"job_id":7}"#,
            r#""test-123""#,
        ] {
            assert!(
                serde_json::from_str::<CancelRequest>(refused).is_err(),
                "{refused} should not parse"
            );
        }
    }

    #[test]
    fn cancel_response_is_always_cancelling_with_the_job_id() {
        let response = CancelResponse::cancelling("test-123");
        assert_eq!(
            serde_json::to_string(&response).unwrap(),
            r#"{"status":"cancelling","job_id":"test-123"}"#,
            "the story's exact body, fields in this order"
        );
        let back: CancelResponse =
            serde_json::from_str(r#"{"status":"cancelling","job_id":"test-123"}"#).unwrap();
        assert_eq!(back, response);
    }

    #[test]
    fn prompt_tokens_count_words() {
        assert_eq!(prompt_tokens("  the quick\tbrown\nfox "), 4);
        assert_eq!(prompt_tokens(""), 0);
    }
}
