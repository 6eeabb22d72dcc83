//! [`WebhookRoute`]: an axum route that hands only verified, well-formed
//! deliveries to a [`WebhookHandler`].
//!
//! The rule it keeps: **nothing reaches the handler before the signature
//! verified over the raw bytes received**, and the cheap refusals come
//! first, before the body is read: a declared length over the limit (413),
//! a content type that is neither JSON nor an allowed form (415), a missing
//! or malformed signature header (401). Then the body is read up to the
//! limit (413), verified (401), its headers checked (400), a form decoded
//! (400) and the event parsed (400).

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use http::HeaderMap;
use http::header::CONTENT_LENGTH;
use http_body_util::{BodyExt, LengthLimitError, Limited};

use crate::body::{BodyFormat, FormPolicy, body_format, json_document};
use crate::delivery::DeliveryHeaders;
use crate::event::{Event, parse_event};
use crate::rejection::Rejection;
use crate::signature::{SIGNATURE_HEADER, WebhookSecrets};

/// Default body limit: 1 MiB (GitHub's payloads for pushes and pull
/// requests are tens of KiB; GitHub caps them at 25 MB).
pub const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;
/// Largest body limit accepted: GitHub never sends more than 25 MB.
pub const MAX_BODY_LIMIT: usize = 25 * 1024 * 1024;

/// A verified, well-formed delivery.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// Its headers (event name normalised).
    pub headers: DeliveryHeaders,
    /// The parsed event.
    pub event: Event,
    /// Which configured secret verified it (0: the first).
    pub secret_index: usize,
    /// How the body was encoded.
    pub format: BodyFormat,
    /// The JSON document (for fields [`Event`] does not carry: parse it
    /// with octocrab's `WebhookEvent::try_from_header_and_body`).
    pub json: Bytes,
}

/// What a service does with verified deliveries.
pub trait WebhookHandler: Send + Sync + 'static {
    /// Answers one verified delivery.
    fn handle(&self, delivery: Delivery) -> impl Future<Output = Response> + Send;

    /// Called for each refused request, before it is answered, with the
    /// request's headers (count it, log it — without the body; the headers
    /// are unauthenticated when the signature failed).
    fn rejected(&self, rejection: &Rejection, headers: &HeaderMap) {
        let _ = (rejection, headers);
    }
}

/// Why a route cannot be configured so.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("body limit {0} must be between 1 and {MAX_BODY_LIMIT} bytes")]
pub struct BodyLimitError(pub usize);

/// The verified-webhook route: secrets, limits and the handler.
///
/// ```
/// use axum::response::{IntoResponse, Response};
/// use github_webhook::{Delivery, Event, WebhookHandler, WebhookRoute, WebhookSecrets};
/// use http::StatusCode;
/// use secrecy::SecretString;
///
/// struct Print;
/// impl WebhookHandler for Print {
///     async fn handle(&self, delivery: Delivery) -> Response {
///         match delivery.event {
///             Event::Ping(_) => StatusCode::OK.into_response(),
///             _ => StatusCode::ACCEPTED.into_response(),
///         }
///     }
/// }
///
/// let secrets = WebhookSecrets::new([SecretString::from("s3cret")])?;
/// let app: axum::Router = WebhookRoute::new(secrets, Print)
///     .with_body_limit(512 * 1024)?
///     .into_router("/webhook/github");
/// # drop(app);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct WebhookRoute<H> {
    secrets: WebhookSecrets,
    body_limit: usize,
    form_policy: FormPolicy,
    handler: H,
}

impl<H> std::fmt::Debug for WebhookRoute<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookRoute")
            .field("secrets", &self.secrets)
            .field("body_limit", &self.body_limit)
            .field("form_policy", &self.form_policy)
            .finish_non_exhaustive()
    }
}

impl<H: WebhookHandler> WebhookRoute<H> {
    /// A route with the default body limit that decodes form bodies.
    pub fn new(secrets: WebhookSecrets, handler: H) -> Self {
        Self {
            secrets,
            body_limit: DEFAULT_BODY_LIMIT,
            form_policy: FormPolicy::default(),
            handler,
        }
    }

    /// With another body limit (1 byte to [`MAX_BODY_LIMIT`]).
    pub fn with_body_limit(mut self, limit: usize) -> Result<Self, BodyLimitError> {
        if limit == 0 || limit > MAX_BODY_LIMIT {
            return Err(BodyLimitError(limit));
        }
        self.body_limit = limit;
        Ok(self)
    }

    /// With another policy for form-encoded bodies.
    #[must_use]
    pub fn with_form_policy(mut self, policy: FormPolicy) -> Self {
        self.form_policy = policy;
        self
    }

    /// The handler.
    pub fn handler(&self) -> &H {
        &self.handler
    }

    /// A router serving `POST path` (other methods: 405).
    pub fn into_router(self, path: &str) -> Router {
        Router::new()
            .route(path, post(serve::<H>))
            .with_state(Arc::new(self))
    }

    /// Takes a request apart as the route does: the refusals before the
    /// body, the body up to the limit, then [`receive`](Self::receive).
    pub async fn accept(&self, request: Request) -> Result<Delivery, Rejection> {
        self.take(request).await.map_err(|(rejection, _)| rejection)
    }

    /// [`accept`](Self::accept), saying with a refusal whether the whole
    /// body had been read.
    async fn take(&self, request: Request) -> Result<Delivery, (Rejection, BodyRead)> {
        let unread = |rejection: Rejection| (rejection, BodyRead::No);
        let (parts, body) = request.into_parts();
        let declared = parts
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.body_limit as u64) {
            return Err(unread(Rejection::PayloadTooLarge {
                limit: self.body_limit,
            }));
        }
        body_format(&parts.headers, self.form_policy).map_err(|e| unread(e.into()))?;
        WebhookSecrets::check_header(signature(&parts.headers)).map_err(|e| unread(e.into()))?;
        let body = match Limited::new(body, self.body_limit).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
                return Err(unread(Rejection::PayloadTooLarge {
                    limit: self.body_limit,
                }));
            }
            Err(_) => return Err(unread(Rejection::Unreadable)),
        };
        self.receive(&parts.headers, body)
            .map_err(|rejection| (rejection, BodyRead::Yes))
    }

    /// Verifies and parses a delivery whose body was read: signature,
    /// delivery headers, form decoding, event.
    pub fn receive(&self, headers: &HeaderMap, body: Bytes) -> Result<Delivery, Rejection> {
        if body.len() > self.body_limit {
            return Err(Rejection::PayloadTooLarge {
                limit: self.body_limit,
            });
        }
        let format = body_format(headers, self.form_policy)?;
        let secret_index = self.secrets.verify(signature(headers), &body)?;
        let delivery_headers = DeliveryHeaders::from_headers(headers)?;
        let decoded = match json_document(format, &body)? {
            std::borrow::Cow::Borrowed(_) => None,
            std::borrow::Cow::Owned(decoded) => Some(decoded),
        };
        let json = decoded.map_or(body, Bytes::from);
        let event = parse_event(&delivery_headers.event, &json)?;
        Ok(Delivery {
            headers: delivery_headers,
            event,
            secret_index,
            format,
            json,
        })
    }
}

async fn serve<H: WebhookHandler>(
    State(route): State<Arc<WebhookRoute<H>>>,
    request: Request,
) -> Response {
    let headers = request.headers().clone();
    match route.take(request).await {
        Ok(delivery) => route.handler.handle(delivery).await,
        Err((rejection, read)) => {
            route.handler.rejected(&rejection, &headers);
            let mut response = rejection.into_response();
            if read == BodyRead::No {
                // hyper closes a connection whose request body was left
                // unread, after the answer; said in the answer, a client
                // does not send its next request into that closing
                // connection (and lose it as an incomplete message).
                response.headers_mut().insert(
                    http::header::CONNECTION,
                    http::HeaderValue::from_static("close"),
                );
            }
            response
        }
    }
}

/// Whether a refused request's body had been read to its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyRead {
    Yes,
    No,
}

/// The signature header's value; one that is not visible ASCII reads as
/// empty, which is malformed (never as absent).
fn signature(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(SIGNATURE_HEADER)
        .map(|v| v.to_str().unwrap_or_default())
}
