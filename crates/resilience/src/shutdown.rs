//! Graceful shutdown: stop taking work, finish what is in flight, cancel
//! what does not finish in time.
//!
//! Rule kept here: readiness goes off *before* anything stops, and every
//! wait is bounded: the drain by its timeout, the abort by a short grace.
//!
//! Two tokens tell tasks what to do:
//! * [`Shutdown::token`] fires when shutdown starts: stop accepting new work,
//!   finish the current item.
//! * [`Shutdown::hard_cancel_token`] fires when the drain times out (or on a
//!   second signal): abandon the current item now.
//!
//! ```
//! use std::time::Duration;
//! use resilience::Shutdown;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let shutdown = Shutdown::new();
//! let hard = shutdown.hard_cancel_token();
//! shutdown.spawn(async move {
//!     tokio::select! {
//!         () = tokio::time::sleep(Duration::from_secs(3600)) => {}
//!         () = hard.cancelled() => {} // abandoned when the drain times out
//!     }
//! });
//! shutdown.trigger(); // what SIGTERM does after listen_for_signals()
//! let report = shutdown.drain(Duration::from_secs(20)).await;
//! assert!(!report.completed);
//! assert_eq!(report.exit_code(), 1);
//! # }
//! ```

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};
use tokio::signal::unix::{SignalKind, signal};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::error::Error;
use crate::health::Health;

/// The default time tasks get to stop after the hard-cancel token fires.
pub const DEFAULT_ABORT_GRACE: Duration = Duration::from_secs(1);

/// Coordinates a service's graceful shutdown. Cheap to clone; clones share state.
#[derive(Debug, Clone)]
pub struct Shutdown {
    shared: Arc<Shared>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    /// A shutdown coordinator with its own [`Health`] (see [`Shutdown::health`]).
    pub fn new() -> Self {
        Self::with_health(Health::new())
    }

    /// A shutdown coordinator driving `health`: once shutdown starts,
    /// `/healthz` and `/readyz` answer 503.
    pub fn with_health(health: Health) -> Self {
        let metrics = ShutdownMetrics::default();
        metrics.phase.set(Phase::Running as i64);
        Self {
            shared: Arc::new(Shared {
                token: health.shutting_down_token(),
                health,
                hard: CancellationToken::new(),
                tracker: TaskTracker::new(),
                abort_grace_ms: AtomicU64::new(millis(DEFAULT_ABORT_GRACE)),
                metrics,
            }),
        }
    }

    /// How long tasks get to stop after the hard-cancel token fires
    /// (default 1 s: a task that watches the token stops within one
    /// `select!` turn; one that does not will not stop for a longer wait either).
    pub fn set_abort_grace(&self, grace: Duration) {
        self.shared
            .abort_grace_ms
            .store(millis(grace), Ordering::Relaxed);
    }

    /// The [`Health`] whose probes this shutdown turns off.
    pub fn health(&self) -> Health {
        self.shared.health.clone()
    }

    /// Fires when shutdown starts: stop taking new work.
    pub fn token(&self) -> CancellationToken {
        self.shared.token.clone()
    }

    /// Fires when the drain times out: abandon work in progress.
    pub fn hard_cancel_token(&self) -> CancellationToken {
        self.shared.hard.clone()
    }

    /// Whether shutdown has started.
    pub fn is_shutting_down(&self) -> bool {
        self.shared.token.is_cancelled()
    }

    /// Resolves once shutdown has started.
    pub async fn triggered(&self) {
        self.shared.token.cancelled().await;
    }

    /// The tracker [`drain`](Self::drain) waits for. Spawn work on it (or use
    /// [`spawn`](Self::spawn)) so a drain knows about it.
    pub fn tracker(&self) -> TaskTracker {
        self.shared.tracker.clone()
    }

    /// Spawns `task` on the tracker.
    pub fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.shared.tracker.spawn(task)
    }

    /// Serves `router` on `listener` as a tracked task until shutdown
    /// starts: then it stops accepting connections and finishes the
    /// requests in flight, so [`drain`](Self::drain) waits for them. A
    /// server that fails starts the shutdown (a process that cannot serve
    /// should not linger half-alive). Readiness is the caller's to set.
    pub fn serve(&self, listener: tokio::net::TcpListener, router: axum::Router) -> JoinHandle<()> {
        let serve = axum::serve(without_nagle(listener), router)
            .with_graceful_shutdown(self.token().cancelled_owned());
        let shutdown = self.clone();
        self.spawn(async move {
            if let Err(error) = serve.await {
                tracing::error!(%error, "server failed");
                shutdown.trigger();
            }
        })
    }

    /// Starts shutdown: readiness off, [`token`](Self::token) fired.
    /// Idempotent.
    pub fn trigger(&self) {
        if !self.shared.token.is_cancelled() {
            tracing::info!("shutdown started: readiness off, no new work");
        }
        self.shared.health.set_ready(false);
        self.shared.health.mark_shutting_down();
        self.shared.set_phase_at_least(Phase::Draining);
    }

    /// Starts shutdown if needed and fires the hard-cancel token now.
    pub fn abort(&self) {
        self.trigger();
        if !self.shared.hard.is_cancelled() {
            tracing::warn!(
                remaining = self.shared.tracker.len(),
                "aborting remaining tasks"
            );
        }
        self.shared.set_phase_at_least(Phase::Aborting);
        self.shared.hard.cancel();
    }

    /// Installs SIGTERM and SIGINT handlers: the first signal
    /// [`trigger`](Self::trigger)s shutdown, a second one [`abort`](Self::abort)s.
    /// Must be called inside a Tokio runtime. The returned task is not
    /// tracked, so it never holds up a drain.
    pub fn listen_for_signals(&self) -> Result<JoinHandle<()>, Error> {
        // Outside a runtime, registering (and spawning) would panic; refuse instead.
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|e| Error::SignalHandler(std::io::Error::other(e)))?;
        // Registered here rather than in the task, so failures reach the caller.
        let mut terminate = signal(SignalKind::terminate()).map_err(Error::SignalHandler)?;
        let mut interrupt = signal(SignalKind::interrupt()).map_err(Error::SignalHandler)?;
        let shutdown = self.clone();
        Ok(runtime.spawn(async move {
            let name = tokio::select! {
                _ = terminate.recv() => "SIGTERM",
                _ = interrupt.recv() => "SIGINT",
            };
            tracing::info!(signal = name, "shutdown signal received");
            shutdown.trigger();
            let name = tokio::select! {
                _ = terminate.recv() => "SIGTERM",
                _ = interrupt.recv() => "SIGINT",
            };
            tracing::warn!(signal = name, "second shutdown signal received");
            shutdown.abort();
        }))
    }

    /// Drains: triggers shutdown, closes the tracker, waits up to `timeout`
    /// for tracked tasks, then fires the hard-cancel token and waits up to
    /// the abort grace for the rest. Returns what happened.
    pub async fn drain(&self, timeout: Duration) -> DrainReport {
        self.trigger();
        let started = Instant::now();
        let tracker = &self.shared.tracker;
        let in_flight = tracker.len();
        tracing::info!(
            in_flight,
            timeout_ms = millis(timeout),
            "draining tracked tasks"
        );
        tracker.close();
        let completed = tokio::time::timeout(timeout, tracker.wait()).await.is_ok();
        let (cancelled, abandoned) = if completed {
            (0, 0)
        } else {
            let cancelled = tracker.len();
            tracing::warn!(
                remaining = cancelled,
                "drain timed out; cancelling the remaining tasks"
            );
            self.abort();
            let grace = Duration::from_millis(self.shared.abort_grace_ms.load(Ordering::Relaxed));
            let abandoned = match tokio::time::timeout(grace, tracker.wait()).await {
                Ok(()) => 0,
                Err(_) => tracker.len(),
            };
            if abandoned > 0 {
                tracing::error!(abandoned, "tasks ignored cancellation; abandoning them");
            }
            (cancelled, abandoned)
        };
        let elapsed = started.elapsed();
        let metrics = &self.shared.metrics;
        metrics.drain_duration.set(elapsed.as_secs_f64());
        metrics
            .abandoned
            .set(i64::try_from(abandoned).unwrap_or(i64::MAX));
        self.shared.set_phase_at_least(Phase::Stopped);
        let report = DrainReport {
            completed,
            in_flight,
            cancelled,
            abandoned,
            elapsed,
        };
        tracing::info!(?report, "drain finished");
        report
    }

    /// Registers `shutdown_phase` (0 running, 1 draining, 2 aborting,
    /// 3 stopped), `shutdown_drain_duration` (seconds) and
    /// `shutdown_abandoned_tasks`. The health metrics are registered through
    /// [`Health::register`].
    pub fn register(&self, registry: &mut Registry) {
        let metrics = &self.shared.metrics;
        registry.register(
            "shutdown_phase",
            "Shutdown phase: 0 running, 1 draining, 2 aborting, 3 stopped",
            metrics.phase.clone(),
        );
        registry.register_with_unit(
            "shutdown_drain_duration",
            "How long the last drain took",
            Unit::Seconds,
            metrics.drain_duration.clone(),
        );
        registry.register(
            "shutdown_abandoned_tasks",
            "Tracked tasks still running after the abort grace of the last drain",
            metrics.abandoned.clone(),
        );
    }
}

/// What a [`Shutdown::drain`] achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrainReport {
    /// Every tracked task finished within the drain timeout.
    pub completed: bool,
    /// Tracked tasks running when the drain began.
    pub in_flight: usize,
    /// Tasks still running at the timeout, which got the hard cancel.
    pub cancelled: usize,
    /// Tasks still running after the abort grace; left behind.
    pub abandoned: usize,
    /// How long the drain took.
    pub elapsed: Duration,
}

impl DrainReport {
    /// The process exit code: 0 after a clean drain, 1 if work had to be
    /// cancelled. Use as `std::process::ExitCode::from(report.exit_code())`.
    pub fn exit_code(&self) -> u8 {
        if self.completed { 0 } else { 1 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Running = 0,
    Draining = 1,
    Aborting = 2,
    Stopped = 3,
}

#[derive(Debug)]
struct Shared {
    health: Health,
    token: CancellationToken,
    hard: CancellationToken,
    tracker: TaskTracker,
    abort_grace_ms: AtomicU64,
    metrics: ShutdownMetrics,
}

impl Shared {
    /// Phases only move forward, whichever path gets there first.
    fn set_phase_at_least(&self, phase: Phase) {
        let value = phase as i64;
        let gauge = self.metrics.phase.inner();
        gauge.fetch_max(value, Ordering::SeqCst);
    }
}

#[derive(Debug, Default)]
struct ShutdownMetrics {
    phase: Gauge,
    drain_duration: Gauge<f64, AtomicU64>,
    abandoned: Gauge,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// `listener` with `TCP_NODELAY` set on every connection it accepts, for
/// [`axum::serve()`]: every server of the workspace serves through it.
///
/// With Nagle's algorithm on, the last, partial segment of an answer larger
/// than one segment (a metrics page, a task list) waits until the client has
/// acknowledged the previous ones, and clients delay their ACKs by up to
/// ~40 ms; a small event after another (SSE) waits the same way. Answers
/// are written whole, so nothing is gained by holding them back. A socket
/// that refuses the option is served as it is.
pub fn without_nagle(
    listener: tokio::net::TcpListener,
) -> impl axum::serve::Listener<Io = tokio::net::TcpStream, Addr = std::net::SocketAddr> {
    use axum::serve::ListenerExt;
    listener.tap_io(|tcp| {
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY on an accepted connection");
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    #[tokio::test]
    async fn every_accepted_connection_has_nagle_off() {
        use axum::serve::Listener as _;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut listener = without_nagle(listener);
        for _ in 0..2 {
            let client = tokio::net::TcpStream::connect(addr).await.unwrap();
            // A fresh socket starts with Nagle on: the listener turned it off.
            assert!(!client.nodelay().unwrap());
            let (accepted, peer) = listener.accept().await;
            assert_eq!(peer, client.local_addr().unwrap());
            assert!(accepted.nodelay().unwrap());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn drain_finishes_in_flight_work_and_cancels_the_rest_after_the_timeout() {
        let shutdown = Shutdown::new();
        let finished = Arc::new(AtomicBool::new(false));
        let aborted = Arc::new(AtomicBool::new(false));

        let done = finished.clone();
        shutdown.spawn(async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            done.store(true, Ordering::SeqCst);
        });
        let hard = shutdown.hard_cancel_token();
        let gave_up = aborted.clone();
        shutdown.spawn(async move {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(3600)) => {}
                () = hard.cancelled() => gave_up.store(true, Ordering::SeqCst),
            }
        });

        let report = shutdown.drain(Duration::from_secs(5)).await;
        assert!(
            finished.load(Ordering::SeqCst),
            "in-flight work must finish"
        );
        assert!(aborted.load(Ordering::SeqCst), "the rest must be cancelled");
        assert_eq!(
            report,
            DrainReport {
                completed: false,
                in_flight: 2,
                cancelled: 1,
                abandoned: 0,
                elapsed: Duration::from_secs(5),
            }
        );
        assert_eq!(report.exit_code(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn clean_drain_returns_as_soon_as_work_is_done_with_exit_code_zero() {
        let shutdown = Shutdown::new();
        let stop = shutdown.token();
        shutdown.spawn(async move {
            stop.cancelled().await;
            tokio::time::sleep(Duration::from_millis(300)).await;
        });
        let report = shutdown.drain(Duration::from_secs(5)).await;
        assert!(report.completed);
        assert_eq!(report.elapsed, Duration::from_millis(300));
        assert_eq!(report.exit_code(), 0);
        assert!(!shutdown.hard_cancel_token().is_cancelled());
    }

    #[tokio::test(start_paused = true)]
    async fn tasks_that_ignore_cancellation_are_reported_abandoned() {
        let shutdown = Shutdown::new();
        shutdown.set_abort_grace(Duration::from_millis(500));
        shutdown.spawn(tokio::time::sleep(Duration::from_secs(3600)));
        let report = shutdown.drain(Duration::from_secs(1)).await;
        assert_eq!(report.abandoned, 1);
        assert_eq!(report.elapsed, Duration::from_millis(1500));
    }

    #[tokio::test(start_paused = true)]
    async fn trigger_turns_readiness_and_liveness_off() {
        let shutdown = Shutdown::new();
        let health = shutdown.health();
        health.set_ready(true);
        assert!(health.readiness().await.is_ready());
        shutdown.trigger();
        assert!(shutdown.is_shutting_down());
        assert!(health.is_shutting_down());
        assert!(!health.readiness().await.is_ready());
        shutdown.triggered().await;
    }

    #[tokio::test(start_paused = true)]
    async fn phase_gauge_moves_forward_through_the_drain() {
        let shutdown = Shutdown::new();
        let mut registry = Registry::default();
        shutdown.register(&mut registry);
        let phase = |registry: &Registry| {
            let mut text = String::new();
            prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
            text.lines()
                .find_map(|l| l.strip_prefix("shutdown_phase "))
                .unwrap()
                .to_owned()
        };
        assert_eq!(phase(&registry), "0");
        shutdown.trigger();
        assert_eq!(phase(&registry), "1");
        shutdown.drain(Duration::from_secs(1)).await;
        assert_eq!(phase(&registry), "3");
        shutdown.trigger();
        assert_eq!(phase(&registry), "3");
    }
}
