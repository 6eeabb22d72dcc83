//! Where tokens come from: a trait with a built-in deterministic generator
//! and an OpenAI-compatible upstream.
//!
//! The rule it keeps: a [`TokenStream`] does work only while it is polled and
//! releases everything when dropped — so a decode loop that stops polling and
//! drops it has stopped generation (for the upstream: the connection closes,
//! which is how vLLM, TGI and llama.cpp notice an abort).

mod builtin;
mod upstream;

use std::pin::Pin;

use futures::Stream;

pub use builtin::BuiltinGenerator;
pub use upstream::OpenAiUpstream;

/// Tokens of one job, in order; it ends when the source has no more.
pub type TokenStream = Pin<Box<dyn Stream<Item = Result<String, SourceError>> + Send>>;

/// What a job asks its token source for.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateRequest {
    /// The prompt to continue.
    pub prompt: String,
    /// Tokens to generate at most.
    pub max_tokens: u32,
    /// Sampling temperature.
    pub temperature: f32,
    /// Seed for reproducible sampling.
    pub seed: u64,
}

/// A producer of token streams. Implementations must be lazy (no work before
/// the first poll) and stop all work when the stream is dropped.
pub trait TokenSource: Send + Sync + 'static {
    /// Starts generating for `request`.
    fn generate(&self, request: &GenerateRequest) -> TokenStream;

    /// A short name for logs (`builtin`, `upstream`).
    fn name(&self) -> &'static str;
}

/// Why a token source failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    /// The upstream could not be reached or broke the connection.
    #[error("upstream request failed: {0}")]
    Http(#[from] reqwest::Error),
    /// The upstream answered with an error status.
    #[error("upstream answered {status}: {body}")]
    Status {
        /// The HTTP status.
        status: http::StatusCode,
        /// The start of the body (bounded).
        body: String,
    },
    /// The upstream sent something that is not an OpenAI completion chunk.
    #[error("upstream sent a malformed event: {0}")]
    Malformed(String),
}

impl SourceError {
    /// Whether trying again later can succeed (connection trouble, 429, 5xx).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Http(error) => error.is_connect() || error.is_timeout() || error.is_request(),
            Self::Status { status, .. } => {
                status.is_server_error() || *status == http::StatusCode::TOO_MANY_REQUESTS
            }
            Self::Malformed(_) => false,
        }
    }
}
