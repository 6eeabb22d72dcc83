//! Liveness and readiness probes as an axum router.
//!
//! Rule kept here: a probe answers within its bound (1 s by default), so a
//! hung dependency shows up as a named, failing check instead of a probe
//! timeout with no explanation.
//!
//! * `GET /healthz`: `200 ok` while running, `503` once shutdown has begun.
//!   During a drain the kubelet keeps probing liveness; point the liveness
//!   probe here with `failureThreshold × periodSeconds` longer than the
//!   drain timeout, so a draining pod is not restarted half-way.
//! * `GET /readyz`: `503` while not marked ready, while shutting down, or
//!   when any named check fails or does not answer in time; the JSON body
//!   names every failing check and its message. `200` otherwise.
//!
//! A `Health` starts **not ready**: call [`Health::set_ready`]`(true)` once
//! the service can do its job (caches synced, leases acquired), so a pod
//! never receives work it cannot yet handle.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use futures::FutureExt;
use futures::future::{BoxFuture, join_all};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::metrics::CheckLabel;

/// The default bound on each readiness check (and so on `/readyz`).
pub const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(1);

/// Liveness and readiness state of a service. Cheap to clone; clones share
/// state.
///
/// ```
/// use resilience::Health;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let health = Health::new();
/// health.add_check("kube", || async { Err("API server unreachable".to_string()) });
/// health.set_ready(true);
/// let readiness = health.readiness().await;
/// assert!(!readiness.is_ready());
/// assert_eq!(readiness.failed[0].check, "kube");
/// let app: axum::Router = health.router(); // serve next to /metrics
/// # drop(app);
/// # }
/// ```
#[derive(Clone)]
pub struct Health {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field("ready", &self.shared.ready.load(Ordering::Relaxed))
            .field("shutting_down", &self.is_shutting_down())
            .field("checks", &self.check_names())
            .finish()
    }
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

impl Health {
    /// Not ready, no checks, 1 s check bound.
    pub fn new() -> Self {
        Self::with_check_timeout(DEFAULT_CHECK_TIMEOUT)
    }

    /// Like [`Health::new`] with another bound on each check. A zero bound
    /// is raised to 1 ms.
    pub fn with_check_timeout(check_timeout: Duration) -> Self {
        let metrics = HealthMetrics::default();
        metrics.ready.set(0);
        Self {
            shared: Arc::new(Shared {
                ready: AtomicBool::new(false),
                shutting_down: CancellationToken::new(),
                checks: RwLock::new(Vec::new()),
                check_timeout: check_timeout.max(Duration::from_millis(1)),
                metrics,
            }),
        }
    }

    /// The manual readiness switch.
    pub fn set_ready(&self, ready: bool) {
        let was = self.shared.ready.swap(ready, Ordering::SeqCst);
        if was != ready {
            tracing::info!(ready, "readiness switched");
        }
    }

    /// Adds (or replaces) the readiness check called `name`. It runs on every
    /// `/readyz` request, concurrently with the other checks, and fails with
    /// "timed out" if it takes longer than the check bound. Keep checks cheap
    /// (read cached state), since the kubelet calls them every few seconds.
    pub fn add_check<F, Fut>(&self, name: impl Into<String>, check: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        let name = name.into();
        let check: CheckFn = Arc::new(move || check().boxed());
        let mut checks = self
            .shared
            .checks
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        match checks.iter_mut().find(|c| c.name == name) {
            Some(existing) => existing.check = check,
            None => checks.push(NamedCheck { name, check }),
        }
    }

    /// Removes the check called `name`; returns whether it existed.
    pub fn remove_check(&self, name: &str) -> bool {
        let mut checks = self
            .shared
            .checks
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let before = checks.len();
        checks.retain(|c| c.name != name);
        checks.len() != before
    }

    /// Marks the service as shutting down: `/healthz` and `/readyz` answer
    /// 503 from now on. [`crate::Shutdown`] calls this when it is triggered.
    pub fn mark_shutting_down(&self) {
        self.shared.shutting_down.cancel();
    }

    /// Whether shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.shared.shutting_down.is_cancelled()
    }

    /// Evaluates readiness now: the switch, shutdown, then every check
    /// (concurrently, each bounded by the check timeout).
    pub async fn readiness(&self) -> Readiness {
        let failed = if self.is_shutting_down() {
            vec![FailedCheck::new(SHUTDOWN_CHECK, "shutting down")]
        } else if !self.shared.ready.load(Ordering::SeqCst) {
            vec![FailedCheck::new(READY_SWITCH_CHECK, "not marked ready")]
        } else {
            self.run_checks().await
        };
        self.shared.metrics.ready.set(i64::from(failed.is_empty()));
        Readiness { failed }
    }

    /// The `/healthz` and `/readyz` routes, ready to merge into a service's router.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .with_state(self.clone())
    }

    /// Registers `health_ready` (1 when the last readiness evaluation passed)
    /// and `health_check_failures` (per check).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "health_ready",
            "1 when the last readiness evaluation passed, 0 otherwise",
            self.shared.metrics.ready.clone(),
        );
        registry.register(
            "health_check_failures",
            "Readiness check failures (including timeouts), by check",
            self.shared.metrics.check_failures.clone(),
        );
    }

    /// The token fired when shutdown begins; shared with [`crate::Shutdown`].
    pub(crate) fn shutting_down_token(&self) -> CancellationToken {
        self.shared.shutting_down.clone()
    }

    fn check_names(&self) -> Vec<String> {
        self.snapshot().into_iter().map(|c| c.name).collect()
    }

    /// Copies the check list so no lock is held while checks run.
    fn snapshot(&self) -> Vec<NamedCheck> {
        self.shared
            .checks
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    async fn run_checks(&self) -> Vec<FailedCheck> {
        let timeout = self.shared.check_timeout;
        let runs = self.snapshot().into_iter().map(|named| async move {
            // A panicking check is a failing check, not a dropped connection.
            let check = Arc::clone(&named.check);
            let run = AssertUnwindSafe(async move { check().await }).catch_unwind();
            let message = match tokio::time::timeout(timeout, run).await {
                Ok(Ok(Ok(()))) => return None,
                Ok(Ok(Err(message))) => message,
                Ok(Err(_panic)) => "check panicked".to_owned(),
                Err(_elapsed) => format!("timed out after {timeout:?}"),
            };
            Some(FailedCheck {
                check: named.name,
                message,
            })
        });
        let failed: Vec<FailedCheck> = join_all(runs).await.into_iter().flatten().collect();
        for failure in &failed {
            tracing::warn!(check = %failure.check, message = %failure.message, "readiness check failed");
            self.shared
                .metrics
                .check_failures
                .get_or_create(&CheckLabel {
                    check: failure.check.clone(),
                })
                .inc();
        }
        failed
    }
}

/// The outcome of a readiness evaluation, as served by `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Readiness {
    /// The failing checks; empty when ready.
    pub failed: Vec<FailedCheck>,
}

impl Readiness {
    /// Whether every check passed.
    pub fn is_ready(&self) -> bool {
        self.failed.is_empty()
    }
}

/// One failing readiness check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FailedCheck {
    /// The check's name (`shutdown` and `ready` are used for the built-in states).
    pub check: String,
    /// Why it failed.
    pub message: String,
}

impl FailedCheck {
    fn new(check: &str, message: &str) -> Self {
        Self {
            check: check.to_owned(),
            message: message.to_owned(),
        }
    }
}

/// Check name reported while shutting down.
const SHUTDOWN_CHECK: &str = "shutdown";
/// Check name reported while the manual switch is off.
const READY_SWITCH_CHECK: &str = "ready";

type CheckFn = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

#[derive(Clone)]
struct NamedCheck {
    name: String,
    check: CheckFn,
}

struct Shared {
    ready: AtomicBool,
    shutting_down: CancellationToken,
    checks: RwLock<Vec<NamedCheck>>,
    check_timeout: Duration,
    metrics: HealthMetrics,
}

#[derive(Debug, Default)]
struct HealthMetrics {
    ready: Gauge,
    check_failures: Family<CheckLabel, Counter>,
}

#[derive(Serialize)]
struct ReadyzBody<'a> {
    status: &'static str,
    #[serde(skip_serializing_if = "<[FailedCheck]>::is_empty")]
    failed: &'a [FailedCheck],
}

async fn healthz(State(health): State<Health>) -> Response {
    if health.is_shutting_down() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response()
    } else {
        (StatusCode::OK, "ok\n").into_response()
    }
}

async fn readyz(State(health): State<Health>) -> Response {
    let readiness = health.readiness().await;
    let (status, word) = if readiness.is_ready() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "unready")
    };
    let body = ReadyzBody {
        status: word,
        failed: &readiness.failed,
    };
    (status, Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn starts_not_ready_until_switched_on() {
        let health = Health::new();
        let readiness = health.readiness().await;
        assert_eq!(
            readiness.failed,
            [FailedCheck::new("ready", "not marked ready")]
        );
        health.set_ready(true);
        assert!(health.readiness().await.is_ready());
    }

    #[tokio::test(start_paused = true)]
    async fn failing_checks_are_all_named_with_their_messages() {
        let health = Health::new();
        health.set_ready(true);
        health.add_check("kube", || async { Ok(()) });
        health.add_check("github", || async { Err("rate limited".to_owned()) });
        health.add_check("queue", || async { Err("full".to_owned()) });
        let readiness = health.readiness().await;
        assert_eq!(
            readiness.failed,
            [
                FailedCheck::new("github", "rate limited"),
                FailedCheck::new("queue", "full")
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn hanging_checks_time_out_concurrently_within_one_bound() {
        let health = Health::new();
        health.set_ready(true);
        for name in ["a", "b", "c"] {
            health.add_check(name, std::future::pending);
        }
        let start = tokio::time::Instant::now();
        let readiness = health.readiness().await;
        assert_eq!(start.elapsed(), DEFAULT_CHECK_TIMEOUT);
        assert_eq!(readiness.failed.len(), 3);
        assert!(
            readiness
                .failed
                .iter()
                .all(|f| f.message == "timed out after 1s")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn panicking_check_fails_instead_of_breaking_the_probe() {
        let health = Health::new();
        health.set_ready(true);
        health.add_check("buggy", || async { panic!("bug in check") });
        let readiness = health.readiness().await;
        assert_eq!(
            readiness.failed,
            [FailedCheck::new("buggy", "check panicked")]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn adding_a_check_twice_replaces_it_and_removal_works() {
        let health = Health::new();
        health.set_ready(true);
        health.add_check("kube", || async { Err("down".to_owned()) });
        health.add_check("kube", || async { Ok(()) });
        assert!(health.readiness().await.is_ready());
        health.add_check("queue", || async { Err("full".to_owned()) });
        assert!(health.remove_check("queue"));
        assert!(!health.remove_check("queue"));
        assert!(health.readiness().await.is_ready());
    }

    #[tokio::test(start_paused = true)]
    async fn shutting_down_overrides_everything() {
        let health = Health::new();
        health.set_ready(true);
        health.mark_shutting_down();
        let readiness = health.readiness().await;
        assert_eq!(
            readiness.failed,
            [FailedCheck::new("shutdown", "shutting down")]
        );
    }
}
