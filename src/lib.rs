//! # supersede
//!
//! Cancel stale AI-agent work on Kubernetes safely. This facade re-exports the
//! member crates, each behind a cargo feature of the same name, so that users
//! depend on one name:
//!
//! | feature | crate | what it is |
//! |---|---|---|
//! | `resilience` | [`resilience`] | backoff, retry, circuit breaker, termination, shutdown, health, expiring queue |
#![doc = include_str!("../README.md")]

#[cfg(feature = "resilience")]
pub use resilience;
