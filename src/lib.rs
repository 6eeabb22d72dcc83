//! # supersede
//!
//! Cancel stale AI-agent work on Kubernetes safely. This facade re-exports the
//! member crates, each behind a cargo feature of the same name (all on by
//! default), so that users depend on one name:
//!
//! | feature | module | what it is |
//! |---|---|---|
//! | `resilience` | [`resilience`] | backoff, retry, circuit breaker, termination, shutdown, health, expiring queue, SSE client |
//! | `lease-lock` | [`lease_lock`] | distributed lock on Kubernetes Leases with fencing tokens |
//! | `state-store` | [`state_store`] | task state in ConfigMaps with compare-and-swap updates |
//! | `label-cas` | [`label_cas`] | PR label transitions safe against racing writers and rate limits |
//! | `job-tracker` | [`job_tracker`] | cancellable job registry with reservations |
//! | `cancel-coordinator` | [`cancel_coordinator`] | cancel superseded CodeRuns: Workloads trait, journaled saga, coordinator |
//! | `recovery` | [`recovery`] | the reconciler: re-derives all work from stored state, repairs what disagrees, flags the rest |
//! | `github-webhook` | [`github_webhook`] | verified GitHub webhooks: signatures with rotation, guarded parsing, an axum route |
//!
//! ```
//! # #[cfg(feature = "resilience")] {
//! use supersede::resilience::{Backoff, BackoffPolicy};
//!
//! let mut backoff = Backoff::new(BackoffPolicy::default());
//! let first = backoff.next_delay().expect("the default policy never stops");
//! assert!(first.as_millis() >= 750 && first.as_millis() <= 1250);
//! # }
//! ```

#[cfg(feature = "cancel-coordinator")]
pub use cancel_coordinator;
#[cfg(feature = "github-webhook")]
pub use github_webhook;
#[cfg(feature = "job-tracker")]
pub use job_tracker;
#[cfg(feature = "label-cas")]
pub use label_cas;
#[cfg(feature = "lease-lock")]
pub use lease_lock;
#[cfg(feature = "recovery")]
pub use recovery;
#[cfg(feature = "resilience")]
pub use resilience;
#[cfg(feature = "state-store")]
pub use state_store;
