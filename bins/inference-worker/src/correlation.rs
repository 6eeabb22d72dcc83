//! `X-Correlation-Id`: accepted when well-formed, generated otherwise, echoed
//! on the response and carried by the request's tracing span.
//!
//! The rule it keeps: every log line written while serving a request —
//! including those of its token stream, which outlives the handler — carries
//! the request's correlation id.

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use http::HeaderValue;
use http::header::HeaderName;
use tracing::Instrument;

use crate::api::is_valid_id;

/// The header name.
pub const CORRELATION_ID_HEADER: HeaderName = HeaderName::from_static("x-correlation-id");

/// The correlation id of the request being served (a request extension).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorrelationId(pub String);

/// Middleware: resolves the id, opens the request span, echoes the header.
///
/// A malformed or over-long incoming id (same rules as job ids, at most 128
/// characters) is replaced, not rejected: tracing metadata should never
/// fail a request.
pub(crate) async fn correlate(mut request: Request, next: Next) -> Response {
    let incoming = request
        .headers()
        .get(&CORRELATION_ID_HEADER)
        .and_then(|value| value.to_str().ok());
    let id = match incoming {
        Some(id) if is_valid_id(id) => id.to_owned(),
        _ => uuid::Uuid::new_v4().to_string(),
    };
    let span = tracing::info_span!(
        "request",
        correlation_id = %id,
        method = %request.method(),
        path = %request.uri().path(),
        job_id = tracing::field::Empty,
    );
    if incoming.is_some_and(|incoming| incoming != id) {
        span.in_scope(|| tracing::debug!("replaced a malformed X-Correlation-Id"));
    }
    request.extensions_mut().insert(CorrelationId(id.clone()));
    let mut response = next.run(request).instrument(span).await;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(CORRELATION_ID_HEADER, value);
    }
    response
}
