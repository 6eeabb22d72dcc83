#![doc = include_str!("../README.md")]
//!
//! `gateway`: alerts in, exactly one `RemediationRequest` out per
//! fingerprint, whatever the number of replicas receiving them.
//!
//! - [`signal`]: the generic signal and Alertmanager's webhook payload
//!   (version 4), validated into [`Signal`]s with their fingerprints.
//! - [`crd`]: the `RemediationRequest` custom resource and its CRD YAML.
//! - [`requests`]: where requests live ([`KubeRequests`], [`MemoryRequests`]).
//! - [`dedupe`]: find or create under lease-lock's
//!   [`CreateOnce`](lease_lock::CreateOnce), then count by compare-and-swap.
//! - [`metrics`]: the `gateway_*` and `gateway_lock_*` families.
//! - `api`: the HTTP routes; [`gateway`]: the service assembled and served.
//! - [`config`]: flags and environment variables.
//!
//! See `docs/gateway.md`.

mod api;
pub mod config;
pub mod crd;
pub mod dedupe;
mod error;
pub mod gateway;
pub mod metrics;
pub mod requests;
pub mod signal;

pub use api::OPENMETRICS_CONTENT_TYPE;
pub use config::{Config, LogFormat, Settings};
pub use crd::{RemediationRequest, RemediationRequestSpec, RemediationRequestStatus, crd_yaml};
pub use dedupe::{Deduplicator, Recorded};
pub use error::Error;
pub use gateway::Gateway;
pub use metrics::Metrics;
pub use requests::{KubeRequests, MemoryRequests, RemediationRequests};
pub use signal::{Invalid, Signal};
