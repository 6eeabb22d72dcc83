//! A circuit breaker: stop calling a dependency that keeps failing, then
//! probe it carefully before trusting it again.
//!
//! Rule kept here: while open, calls fail fast without touching the
//! dependency; after the cool-down exactly `half_open_max_probes` calls (one
//! by default) may probe it, and only a verdict from the current state counts
//! (a slow call started before a transition cannot close or re-open it).
//!
//! ```text
//! Closed ──N consecutive failures──▶ Open ──cool-down──▶ HalfOpen
//!   ▲                                  ▲                    │
//!   └────────── probe succeeds ────────┼────────────────────┤
//!                                      └── probe fails ─────┘
//! ```
//!
//! A [`Permit`] dropped without a verdict counts as a failure, so a probe
//! whose future was cancelled cannot leave the breaker half-open forever.

use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::time::Instant;

use crate::error::Error;
use crate::metrics::NameLabel;
use crate::retry::Transient;

/// When a breaker opens and how it recovers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerPolicy {
    /// Consecutive failures that open the breaker. At least 1.
    pub failure_threshold: u32,
    /// How long the breaker stays open before letting a probe through.
    pub cool_down: Duration,
    /// Concurrent probe calls allowed while half-open. At least 1.
    pub half_open_max_probes: u32,
}

impl Default for BreakerPolicy {
    /// 5 failures, 30 s cool-down, 1 probe.
    ///
    /// Why: 5 consecutive failures is past what retries with backoff absorb
    /// (3 attempts) yet quick to react to a real outage; 30 s matches the
    /// recovery reconciler's cycle, so work deferred by an open breaker is
    /// picked up again on the next pass; a single probe is the least load we
    /// can put on a dependency that may still be down.
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            cool_down: Duration::from_secs(30),
            half_open_max_probes: 1,
        }
    }
}

impl BreakerPolicy {
    /// Rejects a zero threshold, a zero cool-down and zero probes.
    pub fn validate(&self) -> Result<(), Error> {
        if self.failure_threshold == 0 {
            return Err(Error::invalid(
                "breaker",
                "failure_threshold must be at least 1",
            ));
        }
        if self.cool_down.is_zero() {
            return Err(Error::invalid(
                "breaker",
                "cool_down must be greater than zero",
            ));
        }
        if self.half_open_max_probes == 0 {
            return Err(Error::invalid(
                "breaker",
                "half_open_max_probes must be at least 1",
            ));
        }
        Ok(())
    }

    /// Zero counts raised to 1, so a breaker can always be built.
    fn sanitized(self) -> Self {
        Self {
            failure_threshold: self.failure_threshold.max(1),
            cool_down: self.cool_down,
            half_open_max_probes: self.half_open_max_probes.max(1),
        }
    }
}

/// The three states of a breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls flow; consecutive failures are counted.
    Closed,
    /// Calls fail fast until the cool-down ends.
    Open,
    /// A limited number of probe calls decide between Closed and Open.
    HalfOpen,
}

impl BreakerState {
    /// The value of the `circuit_breaker_state` gauge: 0 closed, 1 open, 2 half-open.
    pub fn as_gauge(self) -> i64 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
        }
    }
}

impl fmt::Display for BreakerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half-open",
        })
    }
}

/// A call refused by an open (or fully probing half-open) breaker.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", describe_open(.breaker, *.state, *.remaining))]
pub struct CircuitOpen {
    /// The breaker's name.
    pub breaker: String,
    /// `Open`, or `HalfOpen` when all probe slots are taken.
    pub state: BreakerState,
    /// Time left in the cool-down (zero while half-open).
    pub remaining: Duration,
}

impl Transient for CircuitOpen {
    fn is_transient(&self) -> bool {
        true
    }

    /// The rest of the cool-down: retrying earlier would be refused again.
    fn retry_after(&self) -> Option<Duration> {
        (!self.remaining.is_zero()).then_some(self.remaining)
    }
}

/// The result of [`CircuitBreaker::call`] when it does not succeed.
#[derive(Debug)]
pub enum CallError<E> {
    /// The breaker refused the call; the operation did not run.
    Open(CircuitOpen),
    /// The operation ran and failed.
    Failed(E),
}

impl<E> CallError<E> {
    /// The operation's error, if it ran.
    pub fn into_inner(self) -> Option<E> {
        match self {
            CallError::Open(_) => None,
            CallError::Failed(e) => Some(e),
        }
    }
}

impl<E: fmt::Display> fmt::Display for CallError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::Open(open) => open.fmt(f),
            CallError::Failed(e) => e.fmt(f),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for CallError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CallError::Open(open) => Some(open),
            CallError::Failed(e) => Some(e),
        }
    }
}

impl<E: Transient> Transient for CallError<E> {
    fn is_transient(&self) -> bool {
        match self {
            CallError::Open(open) => open.is_transient(),
            CallError::Failed(e) => e.is_transient(),
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            CallError::Open(open) => open.retry_after(),
            CallError::Failed(e) => e.retry_after(),
        }
    }
}

/// Metrics of one or more breakers, told apart by the `name` label.
///
/// Register one `BreakerMetrics` once and hand it to every breaker with
/// [`CircuitBreaker::with_metrics`]; registering two sets under the same
/// names in one registry would produce duplicate metric families.
#[derive(Debug, Clone, Default)]
pub struct BreakerMetrics {
    state: Family<NameLabel, Gauge>,
    trips: Family<NameLabel, Counter>,
    rejected: Family<NameLabel, Counter>,
}

impl BreakerMetrics {
    /// Fresh, unregistered metrics.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `circuit_breaker_state`, `circuit_breaker_trips` and
    /// `circuit_breaker_rejected`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "circuit_breaker_state",
            "Circuit breaker state: 0 closed, 1 open, 2 half-open",
            self.state.clone(),
        );
        registry.register(
            "circuit_breaker_trips",
            "Times a circuit breaker opened",
            self.trips.clone(),
        );
        registry.register(
            "circuit_breaker_rejected",
            "Calls refused without trying because the breaker was open",
            self.rejected.clone(),
        );
    }
}

/// A named circuit breaker. Cheap to clone; clones share state.
///
/// ```
/// use resilience::{BreakerPolicy, CircuitBreaker, BreakerState};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let breaker = CircuitBreaker::new("github", BreakerPolicy { failure_threshold: 1, ..Default::default() });
/// let failed: Result<(), _> = breaker.call(async { Err::<(), _>("502") }).await;
/// assert!(failed.is_err());
/// assert_eq!(breaker.state(), BreakerState::Open);
/// assert!(breaker.try_acquire().is_err()); // fails fast for the cool-down
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    shared: Arc<Shared>,
}

impl CircuitBreaker {
    /// A closed breaker with its own (unregistered) metrics; see
    /// [`CircuitBreaker::register`]. Out-of-range policy values are pulled
    /// to the nearest valid one.
    pub fn new(name: &str, policy: BreakerPolicy) -> Self {
        Self::with_metrics(name, policy, &BreakerMetrics::new())
    }

    /// A closed breaker reporting into shared `metrics` under `name`.
    pub fn with_metrics(name: &str, policy: BreakerPolicy, metrics: &BreakerMetrics) -> Self {
        let policy = policy.sanitized();
        let label = NameLabel::new(name);
        metrics
            .state
            .get_or_create(&label)
            .set(BreakerState::Closed.as_gauge());
        // Touch the counters so they are exported as 0 before the first event.
        drop(metrics.trips.get_or_create(&label));
        drop(metrics.rejected.get_or_create(&label));
        Self {
            shared: Arc::new(Shared {
                name: name.to_owned(),
                policy,
                metrics: metrics.clone(),
                label,
                machine: Mutex::new(Machine {
                    phase: Phase::Closed,
                    consecutive_failures: 0,
                    generation: 0,
                }),
            }),
        }
    }

    /// Registers this breaker's metrics (see [`BreakerMetrics::register`]).
    /// Breakers built from one shared `BreakerMetrics` register it once instead.
    pub fn register(&self, registry: &mut Registry) {
        self.shared.metrics.register(registry);
    }

    /// The breaker's name (the `name` label of its metrics).
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The policy in force.
    pub fn policy(&self) -> &BreakerPolicy {
        &self.shared.policy
    }

    /// The current state. An open breaker whose cool-down has passed is
    /// reported (and becomes) half-open.
    pub fn state(&self) -> BreakerState {
        let mut machine = self.shared.lock();
        self.shared.refresh(&mut machine, Instant::now());
        machine.phase.state()
    }

    /// Asks to make one call. The returned [`Permit`] must be given a verdict
    /// with [`Permit::success`] or [`Permit::failure`]; dropping it without
    /// one counts as a failure.
    pub fn try_acquire(&self) -> Result<Permit, CircuitOpen> {
        let now = Instant::now();
        let mut machine = self.shared.lock();
        self.shared.refresh(&mut machine, now);
        let probe = match &mut machine.phase {
            Phase::Closed => false,
            Phase::HalfOpen { probes } if *probes < self.shared.policy.half_open_max_probes => {
                *probes += 1;
                tracing::info!(breaker = %self.shared.name, "circuit breaker letting a probe through");
                true
            }
            phase => {
                let (state, remaining) = match phase {
                    Phase::Open { until } => {
                        (BreakerState::Open, until.saturating_duration_since(now))
                    }
                    _ => (BreakerState::HalfOpen, Duration::ZERO),
                };
                self.shared
                    .metrics
                    .rejected
                    .get_or_create(&self.shared.label)
                    .inc();
                return Err(CircuitOpen {
                    breaker: self.shared.name.clone(),
                    state,
                    remaining,
                });
            }
        };
        Ok(Permit {
            breaker: self.clone(),
            generation: machine.generation,
            probe,
            settled: false,
        })
    }

    /// Runs `fut` through the breaker; every `Err` counts as a failure.
    pub async fn call<T, E, F>(&self, fut: F) -> Result<T, CallError<E>>
    where
        F: Future<Output = Result<T, E>>,
    {
        self.call_with(fut, |_| true).await
    }

    /// Runs `fut` through the breaker; an `Err` counts as a failure only when
    /// `is_failure` says so (a 404 or a validation error proves the
    /// dependency is up, so it should not trip the breaker).
    pub async fn call_with<T, E, F, P>(&self, fut: F, is_failure: P) -> Result<T, CallError<E>>
    where
        F: Future<Output = Result<T, E>>,
        P: FnOnce(&E) -> bool,
    {
        let permit = self.try_acquire().map_err(CallError::Open)?;
        // If this future is dropped mid-call, the permit's Drop records a failure.
        match fut.await {
            Ok(value) => {
                permit.success();
                Ok(value)
            }
            Err(error) => {
                if is_failure(&error) {
                    permit.failure();
                } else {
                    permit.success();
                }
                Err(CallError::Failed(error))
            }
        }
    }
}

/// Permission to make one call through a [`CircuitBreaker`].
#[derive(Debug)]
#[must_use = "a permit dropped without a verdict counts as a failure"]
pub struct Permit {
    breaker: CircuitBreaker,
    generation: u64,
    probe: bool,
    settled: bool,
}

impl Permit {
    /// Records that the call succeeded.
    pub fn success(mut self) {
        self.settled = true;
        self.breaker.shared.record(self.generation, true);
    }

    /// Records that the call failed.
    pub fn failure(mut self) {
        self.settled = true;
        self.breaker.shared.record(self.generation, false);
    }

    /// Gives the permit back without a verdict: the call was abandoned for a
    /// reason that says nothing about the dependency (an operator cancelled
    /// it, the process is shutting down). Closed, nothing changes; a
    /// half-open probe slot is freed for the next caller instead of the
    /// breaker closing or re-opening on no evidence.
    pub fn release(mut self) {
        self.settled = true;
        if self.probe {
            self.breaker.shared.release_probe(self.generation);
        }
    }

    /// Whether this call is a half-open probe.
    pub fn is_probe(&self) -> bool {
        self.probe
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.settled {
            tracing::debug!(
                breaker = %self.breaker.shared.name,
                probe = self.probe,
                "permit dropped without a verdict; counting it as a failure"
            );
            self.breaker.shared.record(self.generation, false);
        }
    }
}

#[derive(Debug)]
struct Shared {
    name: String,
    policy: BreakerPolicy,
    metrics: BreakerMetrics,
    label: NameLabel,
    machine: Mutex<Machine>,
}

#[derive(Debug)]
struct Machine {
    phase: Phase,
    consecutive_failures: u32,
    /// Bumped on every transition; verdicts from older permits are ignored.
    generation: u64,
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    Closed,
    Open { until: Instant },
    HalfOpen { probes: u32 },
}

impl Phase {
    fn state(self) -> BreakerState {
        match self {
            Phase::Closed => BreakerState::Closed,
            Phase::Open { .. } => BreakerState::Open,
            Phase::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Machine> {
        // The machine is updated in single assignments, so a panic elsewhere
        // while holding the lock cannot leave it half-written.
        self.machine.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Moves an open breaker whose cool-down has passed to half-open.
    fn refresh(&self, machine: &mut Machine, now: Instant) {
        if let Phase::Open { until } = machine.phase
            && now >= until
        {
            self.transition(machine, Phase::HalfOpen { probes: 0 });
        }
    }

    fn record(&self, generation: u64, success: bool) {
        let mut machine = self.lock();
        if machine.generation != generation {
            // Started before the last transition: it says nothing about now.
            return;
        }
        match (machine.phase, success) {
            (Phase::Closed, true) => machine.consecutive_failures = 0,
            (Phase::Closed, false) => {
                machine.consecutive_failures = machine.consecutive_failures.saturating_add(1);
                if machine.consecutive_failures >= self.policy.failure_threshold {
                    self.trip(&mut machine);
                }
            }
            (Phase::HalfOpen { .. }, true) => {
                machine.consecutive_failures = 0;
                self.transition(&mut machine, Phase::Closed);
            }
            (Phase::HalfOpen { .. }, false) => self.trip(&mut machine),
            // Permits are only handed out closed or half-open, and any
            // transition bumps the generation, so this is unreachable.
            (Phase::Open { .. }, _) => {}
        }
    }

    fn release_probe(&self, generation: u64) {
        let mut machine = self.lock();
        if machine.generation != generation {
            return;
        }
        if let Phase::HalfOpen { probes } = &mut machine.phase {
            *probes = probes.saturating_sub(1);
        }
    }

    fn trip(&self, machine: &mut Machine) {
        let until = Instant::now() + self.policy.cool_down;
        self.metrics.trips.get_or_create(&self.label).inc();
        self.transition(machine, Phase::Open { until });
    }

    fn transition(&self, machine: &mut Machine, to: Phase) {
        let from = machine.phase.state();
        machine.phase = to;
        machine.generation = machine.generation.wrapping_add(1);
        let state = to.state();
        self.metrics
            .state
            .get_or_create(&self.label)
            .set(state.as_gauge());
        match state {
            BreakerState::Open => tracing::warn!(
                breaker = %self.name,
                %from,
                consecutive_failures = machine.consecutive_failures,
                cool_down_ms = u64::try_from(self.policy.cool_down.as_millis()).unwrap_or(u64::MAX),
                "circuit breaker opened"
            ),
            _ => {
                tracing::info!(breaker = %self.name, %from, to = %state, "circuit breaker changed state")
            }
        }
    }
}

fn describe_open(breaker: &str, state: BreakerState, remaining: Duration) -> String {
    match state {
        BreakerState::HalfOpen => {
            format!("circuit breaker `{breaker}` is half-open and its probe is in flight")
        }
        _ => format!("circuit breaker `{breaker}` is open; retry in {remaining:.1?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;

    fn policy() -> BreakerPolicy {
        BreakerPolicy {
            failure_threshold: 3,
            cool_down: Duration::from_secs(10),
            half_open_max_probes: 1,
        }
    }

    fn fail(breaker: &CircuitBreaker, times: u32) {
        for _ in 0..times {
            breaker.try_acquire().unwrap().failure();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_the_threshold_of_consecutive_failures() {
        let breaker = CircuitBreaker::new("kube", policy());
        fail(&breaker, 2);
        assert_eq!(breaker.state(), BreakerState::Closed);
        fail(&breaker, 1);
        assert_eq!(breaker.state(), BreakerState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_resets_the_consecutive_failure_count() {
        let breaker = CircuitBreaker::new("kube", policy());
        fail(&breaker, 2);
        breaker.try_acquire().unwrap().success();
        fail(&breaker, 2);
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn fails_fast_while_open_with_the_remaining_cool_down() {
        let breaker = CircuitBreaker::new("kube", policy());
        fail(&breaker, 3);
        tokio::time::advance(Duration::from_secs(4)).await;
        let open = breaker.try_acquire().unwrap_err();
        assert_eq!(open.state, BreakerState::Open);
        assert_eq!(open.remaining, Duration::from_secs(6));
        assert_eq!(open.retry_after(), Some(Duration::from_secs(6)));
        assert_eq!(open.breaker, "kube");

        let mut ran = false;
        let result: Result<(), CallError<&str>> = breaker
            .call(async {
                ran = true;
                Ok(())
            })
            .await;
        assert!(matches!(result, Err(CallError::Open(_))));
        assert!(!ran, "an open breaker must not run the operation");
    }

    #[tokio::test(start_paused = true)]
    async fn half_opens_after_the_cool_down() {
        let breaker = CircuitBreaker::new("kube", policy());
        fail(&breaker, 3);
        tokio::time::advance(Duration::from_secs(10) - Duration::from_millis(1)).await;
        assert_eq!(breaker.state(), BreakerState::Open);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
    }

    #[tokio::test(start_paused = true)]
    async fn exactly_one_probe_is_let_through_while_half_open() {
        let breaker = CircuitBreaker::new("kube", policy());
        fail(&breaker, 3);
        tokio::time::advance(Duration::from_secs(10)).await;
        let probe = breaker.try_acquire().unwrap();
        assert!(probe.is_probe());
        let second = breaker.try_acquire().unwrap_err();
        assert_eq!(second.state, BreakerState::HalfOpen);
        assert_eq!(second.retry_after(), None);
        probe.success();
    }

    #[tokio::test(start_paused = true)]
    async fn successful_probe_closes_the_breaker() {
        let breaker = CircuitBreaker::new("kube", policy());
        fail(&breaker, 3);
        tokio::time::advance(Duration::from_secs(10)).await;
        breaker.try_acquire().unwrap().success();
        assert_eq!(breaker.state(), BreakerState::Closed);
        // Fully closed: the failure count starts from zero again.
        fail(&breaker, 2);
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn failed_probe_reopens_for_a_full_cool_down() {
        let breaker = CircuitBreaker::new("kube", policy());
        fail(&breaker, 3);
        tokio::time::advance(Duration::from_secs(10)).await;
        breaker.try_acquire().unwrap().failure();
        let open = breaker.try_acquire().unwrap_err();
        assert_eq!(open.state, BreakerState::Open);
        assert_eq!(open.remaining, Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn dropped_probe_permit_counts_as_failure() {
        let breaker = CircuitBreaker::new("kube", policy());
        fail(&breaker, 3);
        tokio::time::advance(Duration::from_secs(10)).await;
        drop(breaker.try_acquire().unwrap());
        assert_eq!(breaker.state(), BreakerState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn cancelled_probe_call_does_not_wedge_half_open() {
        let breaker = CircuitBreaker::new("kube", policy());
        fail(&breaker, 3);
        tokio::time::advance(Duration::from_secs(10)).await;
        let probe = breaker.call(async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok::<(), &str>(())
        });
        let timed_out = tokio::time::timeout(Duration::from_secs(1), probe).await;
        assert!(timed_out.is_err());
        assert_eq!(breaker.state(), BreakerState::Open);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(breaker.try_acquire().unwrap().is_probe());
    }

    #[tokio::test(start_paused = true)]
    async fn released_permits_leave_the_state_alone_and_free_the_probe_slot() {
        let breaker = CircuitBreaker::new("agents", policy());
        fail(&breaker, 2);
        breaker.try_acquire().unwrap().release();
        fail(&breaker, 1);
        assert_eq!(
            breaker.state(),
            BreakerState::Open,
            "a release is not a success: the failure count kept going"
        );
        tokio::time::advance(Duration::from_secs(10)).await;
        let probe = breaker.try_acquire().unwrap();
        assert!(probe.is_probe());
        probe.release();
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        let next = breaker.try_acquire().unwrap();
        assert!(next.is_probe(), "the released slot goes to the next caller");
        next.success();
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn stale_verdicts_from_before_a_transition_are_ignored() {
        let breaker = CircuitBreaker::new("kube", policy());
        let slow = breaker.try_acquire().unwrap();
        fail(&breaker, 3);
        // A call started while closed finishing after the trip must not close it.
        slow.success();
        assert_eq!(breaker.state(), BreakerState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn errors_the_caller_excuses_do_not_trip_the_breaker() {
        let breaker = CircuitBreaker::new("github", policy());
        for _ in 0..5 {
            let result: Result<(), _> = breaker
                .call_with(async { Err("404 not found") }, |_| false)
                .await;
            assert!(matches!(result, Err(CallError::Failed("404 not found"))));
        }
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn metrics_track_state_trips_and_rejections_per_name() {
        let metrics = BreakerMetrics::new();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let kube = CircuitBreaker::with_metrics("kube", policy(), &metrics);
        let _github = CircuitBreaker::with_metrics("github", policy(), &metrics);
        fail(&kube, 3);
        let _ = kube.try_acquire();
        let _ = kube.try_acquire();

        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(r#"circuit_breaker_state{name="kube"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"circuit_breaker_state{name="github"} 0"#),
            "{text}"
        );
        assert!(
            text.contains(r#"circuit_breaker_trips_total{name="kube"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"circuit_breaker_rejected_total{name="kube"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"circuit_breaker_rejected_total{name="github"} 0"#),
            "{text}"
        );

        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(kube.state(), BreakerState::HalfOpen);
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(r#"circuit_breaker_state{name="kube"} 2"#),
            "{text}"
        );
    }

    #[test]
    fn policy_validation_rejects_zeroes() {
        assert!(BreakerPolicy::default().validate().is_ok());
        for bad in [
            BreakerPolicy {
                failure_threshold: 0,
                ..BreakerPolicy::default()
            },
            BreakerPolicy {
                cool_down: Duration::ZERO,
                ..BreakerPolicy::default()
            },
            BreakerPolicy {
                half_open_max_probes: 0,
                ..BreakerPolicy::default()
            },
        ] {
            assert!(bad.validate().is_err());
        }
    }
}
