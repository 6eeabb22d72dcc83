#![doc = include_str!("../README.md")]
//!
//! # Modules
//!
//! - [`signature`]: `X-Hub-Signature-256` with several secrets ([`WebhookSecrets`]).
//! - [`delivery`]: the delivery headers and the dedupe key ([`DeliveryKey`]).
//! - [`body`]: JSON and form-encoded bodies.
//! - [`event`]: `ping`, `push` and `pull_request` parsed (octocrab for
//!   `ping` and the known actions), the rest passed on ([`Event`]).
//! - [`route`]: the axum route ([`WebhookRoute`], [`WebhookHandler`]).
//! - [`rejection`]: what is refused, with which status ([`Rejection`]).

pub mod body;
pub mod delivery;
pub mod event;
pub mod rejection;
pub mod route;
pub mod signature;

pub use body::{BodyFormat, FormPolicy};
pub use delivery::{DeliveryHeaders, DeliveryKey, HeaderError, normalize_event_name};
pub use event::{
    Event, PayloadError, PingEvent, PullRequestAction, PullRequestEvent, PushEvent, Repository,
    UnhandledEvent, UnhandledReason, is_zero_sha, parse_event,
};
pub use rejection::{ErrorBody, Rejection};
pub use route::{
    BodyLimitError, DEFAULT_BODY_LIMIT, Delivery, MAX_BODY_LIMIT, WebhookHandler, WebhookRoute,
};
pub use signature::{SIGNATURE_HEADER, SecretsError, SignatureError, WebhookSecrets, sign};
