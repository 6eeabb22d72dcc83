//! [`LeaseLock`]: acquiring a lock on a Lease.
//!
//! Rule kept here: every decision is taken from an observed Lease and acted
//! on with a write conditioned on exactly that observation (create, or
//! replace-if-resourceVersion), so a decision taken on stale knowledge fails
//! with a conflict instead of overwriting someone else's hold.
//!
//! # The algorithm
//!
//! 1. **Free** (no Lease): one CREATE with us as holder. Uncontended
//!    acquire + release is therefore two API calls.
//! 2. **Released** (holder empty): replace-if-version taking it, with
//!    `leaseTransitions + 1` in the same write. The last state this lock saw
//!    of each Lease is cached, so re-acquiring a key this process released
//!    costs one call too.
//! 3. **Held by another**: wait. The Lease is *expired* when, as client-go's
//!    `LeaderElector` judges it, its record stayed unchanged for a full
//!    `leaseDurationSeconds` on our monotonic clock since we first saw it
//!    (and, only if [`LockConfig::max_clock_skew`] opts in, when
//!    `renewTime + leaseDurationSeconds + skew` is in the past on our wall
//!    clock). An expired Lease is taken over by
//!    replace-if-version, incrementing `leaseTransitions`. The conditional
//!    write is what makes a takeover safe even on a stale view: if the
//!    holder renewed meanwhile, the version changed and the write conflicts.
//! 4. While waiting, a watch of that one Lease wakes us the moment it is
//!    released or deleted; jittered exponential backoff (50 ms → 2 s by
//!    default) re-reads it in case the watch is slow or broken; the wait is
//!    bounded by the acquire timeout and a `CancellationToken`. A waiter
//!    that lost the CREATE (the Lease exists) does not read it: it opens
//!    its watch without a resourceVersion, whose first event is the Lease's
//!    current state (the API server's initial events) — the observation
//!    it judges and writes against, exactly as a GET's answer would be. So
//!    a contended acquisition costs CREATE + WATCH before it waits, not
//!    CREATE + GET + WATCH. A watch that reports nothing within the longest
//!    backoff delay, fails, or ends is backed up by a GET as before.
//! 5. **Turns.** A waiter does not take a released (or expired) Lease the
//!    moment it hears of it: every other waiter heard it too. It takes it
//!    at its turn, a random point of [`LockConfig::handoff_stagger`] counted
//!    only while the Lease is free (see `turn.rs`), and a waiter that sees
//!    another take it first goes back to waiting without a write. So does
//!    an acquisition that finds a Lease released while it ran, or one this
//!    process released a moment ago: waiters may be counting down for it,
//!    and cutting in would only make them conflict. A lone acquisition of a
//!    free or long-released Lease takes it at once.
//!
//! Acquisition is cancel-safe: acquiring writes run in their own task,
//! marked in flight before anything is awaited, and one that lands after —
//! or exactly as — its caller gave up (timeout, cancellation, or a dropped
//! future) is released at once instead of blocking others until it
//! expires. Lost answers are handled the same way: a write whose outcome is
//! unknown (connection dropped, 5xx) is recognised by its holder identity,
//! unique to the acquisition — adopted if the acquisition goes on, given
//! back if it ends without a guard.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use prometheus_client::registry::Registry;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use resilience::{Backoff, BackoffPolicy, Transient};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::deadlock::{self, WaitMarker};
use crate::error::Error;
use crate::guard::{GuardShared, LockGuard};
use crate::metrics::Metrics;
use crate::name::{lease_name, short_hash, validate_prefix};
use crate::turn::{MAX_DOUBLINGS, Turn};
use crate::{
    HOLDER_HASH_LABEL, LOCK_PREFIX_LABEL, Lease, LeaseBackend, LeaseEvent, LeaseSpec,
    MANAGED_BY_LABEL, MANAGED_BY_VALUE, WAITING_FOR_ANNOTATION,
};

/// How the lock behaves. Build it with [`LockConfig::new`] and override
/// fields with struct-update syntax.
///
/// ```
/// use std::time::Duration;
/// use lease_lock::LockConfig;
///
/// let config = LockConfig {
///     prefix: "cancel".into(),
///     acquire_timeout: Duration::from_secs(10),
///     ..LockConfig::new("sensor-7d9f-abcde", "supersede")
/// };
/// assert!(config.validate().is_ok());
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct LockConfig {
    /// Who we are, usually the pod name. Each guard's holder identity is
    /// `<identity>/<random>`, so two guards (or a restarted pod reusing its
    /// name) are never mistaken for one another.
    pub identity: String,
    /// Namespace of the Leases.
    pub namespace: String,
    /// Lease names are `<prefix>-<key>`; the prefix is a DNS-1123 label
    /// (≤ 63 characters). Locks sharing a namespace need prefixes of which
    /// none is another followed by `-` (`cancel` and `cancel-task` both name
    /// `cancel-task-1`): a Lease labelled with another lock's prefix is
    /// refused with [`Error::InvalidLease`].
    pub prefix: String,
    /// How long a holder's claim lasts without renewal, written to
    /// `leaseDurationSeconds` (rounded up to whole seconds). Default 30 s.
    pub lease_duration: Duration,
    /// How often a guard renews. Default 10 s (a third of the lease, so two
    /// renewals may fail before the deadline).
    pub renew_interval: Duration,
    /// A guard reports loss when no renewal succeeded within this long of
    /// the last successful one (measured from when that request was sent).
    /// Must be below `lease_duration`: the gap is what keeps a slow holder
    /// from overlapping with a waiter that takes the Lease over. Default 20 s.
    pub renew_deadline: Duration,
    /// Opt-in to a second expiry rule: a Lease is also expired when
    /// `renewTime + leaseDurationSeconds + skew` is past on our wall clock,
    /// `skew` being the largest wall-clock difference assumed between the
    /// holder's clock and ours. It takes over a long-abandoned Lease at once
    /// instead of after one lease duration of observation, but it trusts
    /// wall clocks: a holder whose clock runs more than
    /// `skew + lease_duration - renew_deadline` behind ours (15 s with a 5 s
    /// skew and the default durations) is taken over while its own
    /// [`is_valid`](crate::LockGuard::is_valid) is still true. Default
    /// `None`: expiry is judged on our monotonic observation only, which
    /// needs no clock agreement at all (client-go's rule). At most
    /// [`MAX_CLOCK_SKEW`].
    pub max_clock_skew: Option<Duration>,
    /// How long [`LeaseLock::acquire`] waits by default. Default 5 s.
    pub acquire_timeout: Duration,
    /// Delays between re-reads while waiting, and between retries of
    /// transient failures. Default 50 ms ×2 up to 2 s, ±25 % jitter.
    pub backoff: BackoffPolicy,
    /// How far apart the waiters of a released Lease spread their takeover
    /// writes, so that one of them takes it and the others see that on
    /// their watch instead of all racing one conditional write. A waiter
    /// writes after a random part of this window, counted only while the
    /// Lease is free; one whose write conflicts anyway doubles its window
    /// (up to 4 ×; more on a slow API server, up to 32 round trips of its
    /// write but at most `backoff.max`, since rivals cannot hear of it
    /// sooner). Default 25 ms:
    /// several API round trips, so a handoff
    /// among a few waiters rarely costs more than its one write, while a
    /// lone waiter's handoff is delayed by 12.5 ms on average. Zero turns
    /// it off: every waiter writes the moment it hears of the release. At
    /// most `lease_duration` / 4.
    pub handoff_stagger: Duration,
    /// Leases idle longer than this (no renewal, acquisition or release) are
    /// deleted by [`LeaseLock::collect_garbage`]. Default 24 h; at least
    /// twice `lease_duration` (whole seconds), so that a Lease is never
    /// collected while its holder may still believe it holds it, whatever
    /// the wall-clock skew between that holder and the collector up to one
    /// lease duration. Keep it far longer than any pause a holder could
    /// survive: the Lease that replaces a deleted one must be created later,
    /// in whole seconds of the API server's clock, for fencing tokens to keep
    /// increasing.
    pub retention: Duration,
}

impl LockConfig {
    /// The defaults for a process called `identity` locking in `namespace`.
    pub fn new(identity: impl Into<String>, namespace: impl Into<String>) -> Self {
        Self {
            identity: identity.into(),
            namespace: namespace.into(),
            prefix: "lock".into(),
            lease_duration: Duration::from_secs(30),
            renew_interval: Duration::from_secs(10),
            renew_deadline: Duration::from_secs(20),
            max_clock_skew: None,
            acquire_timeout: Duration::from_secs(5),
            backoff: BackoffPolicy {
                initial: Duration::from_millis(50),
                multiplier: 2.0,
                max: Duration::from_secs(2),
                jitter: 0.25,
                max_attempts: None,
            },
            handoff_stagger: Duration::from_millis(25),
            retention: Duration::from_secs(24 * 60 * 60),
        }
    }

    /// Checks that the values are consistent:
    /// `0 < renew_interval < renew_deadline < lease_duration`, a valid prefix,
    /// a non-empty identity and namespace, a valid backoff.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |m: String| Err(Error::InvalidConfig(m));
        if self.identity.is_empty() || self.identity.chars().any(char::is_control) {
            return bad(format!(
                "identity {:?} must be non-empty printable text",
                self.identity
            ));
        }
        if self.namespace.is_empty() {
            return bad("namespace must not be empty".into());
        }
        validate_prefix(&self.prefix)?;
        if self.renew_interval.is_zero()
            || self.renew_interval >= self.renew_deadline
            || self.renew_deadline >= self.lease_duration
        {
            return bad(format!(
                "need 0 < renew_interval ({:?}) < renew_deadline ({:?}) < lease_duration ({:?})",
                self.renew_interval, self.renew_deadline, self.lease_duration
            ));
        }
        if self.lease_duration > Duration::from_secs(i32::MAX as u64) {
            return bad(format!(
                "lease_duration {:?} is too long",
                self.lease_duration
            ));
        }
        if self.acquire_timeout.is_zero() || self.acquire_timeout > MAX_ACQUIRE_TIMEOUT {
            return bad(format!(
                "acquire_timeout {:?} must be in (0, {MAX_ACQUIRE_TIMEOUT:?}]",
                self.acquire_timeout
            ));
        }
        if let Some(skew) = self.max_clock_skew
            && skew > MAX_CLOCK_SKEW
        {
            return bad(format!(
                "max_clock_skew {skew:?} is over {MAX_CLOCK_SKEW:?}: clocks that far apart need fixing, not tolerating"
            ));
        }
        if self.handoff_stagger.saturating_mul(1 << MAX_DOUBLINGS) > self.lease_duration {
            return bad(format!(
                "handoff_stagger {:?} is over lease_duration / 4: a waiter's widest window \
                 (4 × handoff_stagger) must fit in one lease duration",
                self.handoff_stagger
            ));
        }
        let min_retention =
            Duration::from_secs(2 * u64::from(self.lease_duration_seconds().unsigned_abs()));
        if self.retention < min_retention {
            return bad(format!(
                "retention {:?} must be at least twice lease_duration ({min_retention:?}): \
                 a shorter one could collect a Lease whose holder still believes it holds it",
                self.retention
            ));
        }
        self.backoff
            .validate()
            .map_err(|e| Error::InvalidConfig(format!("backoff: {e}")))
    }

    /// `lease_duration` in whole seconds, rounded up (what is written to
    /// `leaseDurationSeconds`; rounding up only ever makes waiters wait longer).
    pub(crate) fn lease_duration_seconds(&self) -> i32 {
        let secs =
            self.lease_duration.as_secs() + u64::from(self.lease_duration.subsec_nanos() > 0);
        i32::try_from(secs).unwrap_or(i32::MAX)
    }
}

/// The longest wall-clock skew [`LockConfig::max_clock_skew`] accepts:
/// clocks further apart than this need fixing (NTP), not tolerating.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(10 * 60);

/// The longest wait one acquisition accepts ([`LockConfig::acquire_timeout`],
/// [`AcquireOptions::timeout`]): waiting longer is a loop of acquisitions, or
/// one bounded by [`AcquireOptions::cancel_on`] instead.
pub const MAX_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);

/// Options of one [`LeaseLock::acquire`] call.
#[derive(Clone, Default)]
pub struct AcquireOptions {
    timeout: Option<Duration>,
    cancel: Option<CancellationToken>,
    holding: Vec<Arc<GuardShared>>,
}

impl std::fmt::Debug for AcquireOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcquireOptions")
            .field("timeout", &self.timeout)
            .field("cancellable", &self.cancel.is_some())
            .field(
                "holding",
                &self
                    .holding
                    .iter()
                    .map(|g| g.name.as_str())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl AcquireOptions {
    /// Default options: the configured timeout, not cancellable, holding nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Wait at most `timeout` instead of the configured `acquire_timeout`
    /// (at most [`MAX_ACQUIRE_TIMEOUT`]; the acquisition refuses a longer one
    /// with [`Error::InvalidConfig`]).
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Give up with [`Error::Cancelled`] as soon as `token` fires.
    #[must_use]
    pub fn cancel_on(mut self, token: CancellationToken) -> Self {
        self.cancel = Some(token);
        self
    }

    /// Declares that the caller holds `guard` while it waits: the guard's
    /// Lease is marked as waiting for this key, which is what makes
    /// deadlock detection possible (see the crate documentation).
    #[must_use]
    pub fn holding(mut self, guard: &LockGuard) -> Self {
        self.holding.push(guard.shared());
        self
    }
}

/// A distributed lock over Kubernetes Leases. Cheap to clone; create one per
/// process (it is what "this process" means for [`Error::AlreadyHeld`]).
#[derive(Clone)]
pub struct LeaseLock {
    inner: Arc<LockInner>,
}

impl std::fmt::Debug for LeaseLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseLock")
            .field("identity", &self.inner.config.identity)
            .field("namespace", &self.inner.config.namespace)
            .field("prefix", &self.inner.config.prefix)
            .finish_non_exhaustive()
    }
}

impl LeaseLock {
    /// A lock over `backend` with `config` (validated).
    pub fn new(backend: impl LeaseBackend, config: LockConfig) -> Result<Self, Error> {
        Self::with_metrics(backend, config, Metrics::default())
    }

    /// Like [`new`](Self::new), reporting into `metrics` (shared with others).
    pub fn with_metrics(
        backend: impl LeaseBackend,
        config: LockConfig,
        metrics: Metrics,
    ) -> Result<Self, Error> {
        config.validate()?;
        Ok(Self {
            inner: Arc::new(LockInner {
                backend: Arc::new(backend),
                holder_hash: short_hash(&config.identity),
                config,
                metrics,
                claims: Mutex::new(HashSet::new()),
                cache: Mutex::new(HashMap::new()),
                turn_seeds: Mutex::new(StdRng::from_rng(&mut rand::rng())),
            }),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &LockConfig {
        &self.inner.config
    }

    /// The metrics this lock reports into.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Registers the lock's metrics (see [`Metrics::register`]).
    pub fn register(&self, registry: &mut Registry) {
        self.inner.metrics.register(registry);
    }

    /// The Lease name used for `key`.
    pub fn lease_name(&self, key: &str) -> Result<String, Error> {
        lease_name(&self.inner.config.prefix, key)
    }

    /// Acquires the lock on `key`, waiting while someone else holds it.
    ///
    /// Errors: [`Error::Timeout`] when still held by another at the
    /// deadline (or the last API error, when the API kept failing),
    /// [`Error::Cancelled`], [`Error::Deadlock`], [`Error::AlreadyHeld`]
    /// when this `LeaseLock` holds or is acquiring `key`,
    /// [`Error::InvalidKey`], and permanent API errors at once.
    pub async fn acquire(&self, key: &str, options: AcquireOptions) -> Result<LockGuard, Error> {
        let timeout = options.timeout.unwrap_or(self.inner.config.acquire_timeout);
        let deadline = Instant::now()
            .checked_add(timeout)
            .filter(|_| timeout <= MAX_ACQUIRE_TIMEOUT)
            .ok_or_else(|| {
                Error::InvalidConfig(format!(
                    "acquire timeout {timeout:?} is over {MAX_ACQUIRE_TIMEOUT:?}; loop, or bound the wait with cancel_on"
                ))
            })?;
        let mode = Mode::Wait {
            deadline,
            cancel: options.cancel.unwrap_or_default(),
            holding: options.holding,
        };
        match self.run(key, mode).await {
            Ok(Some(guard)) => Ok(guard),
            Ok(None) => Err(Error::Timeout {
                key: key.to_owned(),
                waited: timeout,
                holder: None,
            }),
            Err(e) => Err(e),
        }
    }

    /// Acquires the lock on `key` if that is possible without waiting.
    /// `Ok(None)` means someone else holds it; an API failure is an error,
    /// never `Ok(None)`. Expiry is judged from what this `LeaseLock`
    /// observed across calls, so calling it periodically takes an abandoned
    /// Lease over once it has expired.
    pub async fn try_acquire(&self, key: &str) -> Result<Option<LockGuard>, Error> {
        self.run(key, Mode::Try).await
    }

    pub(crate) fn inner(&self) -> &Arc<LockInner> {
        &self.inner
    }

    async fn run(&self, key: &str, mode: Mode) -> Result<Option<LockGuard>, Error> {
        let metrics = &self.inner.metrics;
        metrics.attempts.inc();
        let started = Instant::now();
        let result = match Acquisition::new(self, key, mode) {
            Ok(acquisition) => acquisition.run().await,
            Err(e) => Err(e),
        };
        let outcome = match &result {
            Ok(Some(_)) => "acquired",
            Ok(None) => "not_acquired",
            Err(Error::Timeout { .. } | Error::Unanswered { .. }) => "timeout",
            Err(Error::Cancelled { .. }) => "cancelled",
            Err(_) => "error",
        };
        metrics.waited(outcome, started.elapsed());
        match &result {
            Ok(Some(_)) => {
                metrics.acquisitions.inc();
            }
            Ok(None) => {}
            Err(e) => {
                metrics.failed(e.reason());
                if matches!(e, Error::Deadlock { .. }) {
                    metrics.deadlocks.inc();
                }
            }
        }
        result
    }
}

/// State shared by a lock, its guards and their background tasks.
pub(crate) struct LockInner {
    pub(crate) backend: Arc<dyn LeaseBackend>,
    pub(crate) config: LockConfig,
    pub(crate) metrics: Metrics,
    pub(crate) holder_hash: String,
    claims: Mutex<HashSet<String>>,
    cache: Mutex<HashMap<String, Observation>>,
    /// Seeds each acquisition's turn (random; fixed by tests).
    turn_seeds: Mutex<StdRng>,
}

/// The most Leases whose last observed state a lock remembers.
const CACHE_CAPACITY: usize = 4096;
/// How many decisions an acquisition takes back to back (create → 409 →
/// read → replace → 409 …) before it backs off: keeps churn from spinning.
const MAX_IMMEDIATE_STEPS: u32 = 4;

/// A Lease as we last saw it, and when its record (spec) last changed as
/// seen by our monotonic clock.
#[derive(Debug, Clone)]
pub(crate) struct Observation {
    pub(crate) lease: Lease,
    pub(crate) seen_at: Instant,
}

impl Observation {
    pub(crate) fn holder(&self) -> Option<&str> {
        holder_of(&self.lease)
    }
}

/// What an observation means for a would-be holder.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Judgment {
    /// Nobody holds it.
    Free,
    /// Its holder's claim has run out.
    Expired,
    /// Held; the claim runs out at `until` unless renewed.
    Held { until: Instant },
}

impl LockInner {
    /// Reserves `name` for one acquisition or guard of this lock.
    pub(crate) fn claim(self: &Arc<Self>, name: &str) -> Option<Claim> {
        lock(&self.claims).insert(name.to_owned()).then(|| Claim {
            lock: Arc::clone(self),
            name: name.to_owned(),
        })
    }

    /// Whether an acquisition or guard of this lock has `name`.
    pub(crate) fn is_claimed(&self, name: &str) -> bool {
        lock(&self.claims).contains(name)
    }

    /// Records a fresh observation of `name`; the record's change instant
    /// is kept when only metadata (not the spec) changed.
    pub(crate) fn observe(&self, name: &str, lease: Lease) -> Observation {
        let now = Instant::now();
        let mut cache = lock(&self.cache);
        let seen_at = match cache.get(name) {
            Some(old) if same_record(&old.lease, &lease) => old.seen_at,
            _ => now,
        };
        let observation = Observation { lease, seen_at };
        if cache.len() >= CACHE_CAPACITY && !cache.contains_key(name) {
            let oldest = cache
                .iter()
                .min_by_key(|(_, o)| o.seen_at)
                .map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                cache.remove(&oldest);
            }
        }
        cache.insert(name.to_owned(), observation.clone());
        observation
    }

    /// A seed for one acquisition's turn.
    fn turn_seed(&self) -> u64 {
        lock(&self.turn_seeds).random()
    }

    /// Makes the turns of this lock's acquisitions reproducible.
    #[cfg(test)]
    pub(crate) fn seed_turns(&self, seed: u64) {
        *lock(&self.turn_seeds) = StdRng::seed_from_u64(seed);
    }

    pub(crate) fn forget(&self, name: &str) {
        lock(&self.cache).remove(name);
    }

    pub(crate) fn cached(&self, name: &str) -> Option<Observation> {
        lock(&self.cache).get(name).cloned()
    }

    /// Judges an observation now.
    pub(crate) fn judge(&self, observation: &Observation) -> Judgment {
        judge(
            observation,
            &self.config,
            Instant::now(),
            jiff::Timestamp::now(),
        )
    }

    /// Releases a Lease that an abandoned acquisition won after its caller
    /// stopped waiting. Best effort: on failure the Lease simply expires.
    async fn give_back(&self, lease: Lease) {
        let name = lease.metadata.name.clone().unwrap_or_default();
        let released = released_copy(&lease);
        match self
            .backend
            .replace(&self.config.namespace, &released)
            .await
        {
            Ok(lease) => {
                self.observe(&name, lease);
            }
            Err(e) => {
                warn!(lease = %name, error = %e, "could not give back a lease won after its acquirer gave up; it will expire")
            }
        }
    }

    /// Releases `name` if `holder` — the identity of an acquisition that
    /// ended without a guard — holds it: an acquiring write whose answer was
    /// lost may have landed. Best effort: on failure the Lease expires.
    async fn give_back_if_held_by(&self, name: &str, holder: &str) {
        match self.backend.get(&self.config.namespace, name).await {
            Ok(Some(lease)) if holder_of(&lease) == Some(holder) => self.give_back(lease).await,
            Ok(_) => {}
            Err(e) => {
                warn!(lease = %name, error = %e, "could not check for a lease won by an abandoned acquisition; if it was, it will expire")
            }
        }
    }
}

/// Whether a failed write may nevertheless have been applied: the answer
/// was lost or not understood, or the server failed after accepting it.
/// Answers that refuse the write (4xx: conflict, not found, forbidden,
/// too many requests) say it was not applied.
fn may_have_landed(e: &Error) -> bool {
    match e {
        Error::Transport { .. } | Error::Client { .. } => true,
        Error::Api { status, .. } => *status >= 500,
        _ => false,
    }
}

/// The reservation of a Lease name by one acquisition or guard; dropping it
/// frees the name for the next acquisition through the same lock.
pub(crate) struct Claim {
    lock: Arc<LockInner>,
    name: String,
}

impl Drop for Claim {
    fn drop(&mut self) {
        lock(&self.lock.claims).remove(&self.name);
    }
}

enum Mode {
    Try,
    Wait {
        deadline: Instant,
        cancel: CancellationToken,
        holding: Vec<Arc<GuardShared>>,
    },
}

/// What we currently believe about the Lease.
// One per acquisition, on its stack: not worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
enum View {
    /// Never seen: assume free and try to create it.
    Unknown,
    /// Seen absent.
    Absent,
    /// Known to have changed since we saw it: read it (or wait for the watch).
    Stale,
    /// Seen in this state.
    Present(Observation),
}

impl Mode {
    /// The deadline and cancellation that bound a waiting acquisition.
    fn limits(&self) -> Option<(Instant, &CancellationToken)> {
        match self {
            Self::Try => None,
            Self::Wait {
                deadline, cancel, ..
            } => Some((*deadline, cancel)),
        }
    }
}

/// Why a bounded call was cut short.
#[derive(Clone, Copy)]
enum Interrupted {
    Cancelled,
    TimedOut,
}

/// Runs one call of an acquisition within its `limits` (a `try_acquire`
/// has none: it waits for the answer).
async fn bounded<T>(
    limits: Option<(Instant, &CancellationToken)>,
    call: impl Future<Output = T>,
) -> Result<T, Interrupted> {
    let Some((deadline, cancel)) = limits else {
        return Ok(call.await);
    };
    tokio::select! {
        biased;
        () = cancel.cancelled() => Err(Interrupted::Cancelled),
        () = tokio::time::sleep_until(deadline) => Err(Interrupted::TimedOut),
        out = call => Ok(out),
    }
}

/// The outcome of acting once on the current view.
enum Step {
    Acquired {
        lease: Lease,
        sent_at: Instant,
        takeover: bool,
    },
    /// Act again right away on the new view.
    Again(View),
    /// Held by someone else: wait for a change, or until `until` (expiry).
    Wait { until: Option<Instant> },
    /// Unknown, with a watch just opened from the current state: wait for
    /// its first event, the state a read would have returned.
    Listen,
    /// Lost a race for the Lease: wait for the watch to show the winner.
    Raced,
    /// Free (or expired), but other waiters may be about to take it: take
    /// it at `at`, our turn, unless the watch shows someone else took it.
    Turn { at: Instant },
    /// A transient failure: back off and try again.
    Failed(Error),
}

/// Why the wait phase ended.
#[allow(clippy::large_enum_variant)]
enum Wake {
    Event(Option<Result<LeaseEvent, Error>>),
    Timer { poll: bool },
}

struct Acquisition<'a> {
    lock: &'a LeaseLock,
    key: &'a str,
    name: String,
    holder: String,
    mode: Mode,
    claim: Option<Claim>,
    view: View,
    backoff: Backoff,
    watch: Option<BoxStream<'static, Result<LeaseEvent, Error>>>,
    watch_opened: bool,
    watch_heard: Option<Instant>,
    /// The watch was opened from the current state (no resourceVersion) and
    /// has not delivered that state yet.
    watch_unheard: bool,
    marker: Option<WaitMarker>,
    last_error: Option<Error>,
    last_holder: Option<String>,
    contended: bool,
    /// Whether any call of this acquisition was answered (an error answer
    /// included): a deadline with none is an unreachable server, not
    /// contention.
    answered: bool,
    /// Others may be counting down to take this Lease too (we waited for
    /// it, or we released it a moment ago): take it only at our turn.
    queued: bool,
    turn: Turn,
    /// The view is this lock's cached copy of its own release, not yet
    /// confirmed by any request: a turn taken on it stays blind (no watch),
    /// so that re-acquiring alone still costs one write.
    view_cached: bool,
    started: Instant,
    started_wall: jiff::Timestamp,
    retry_after: Option<Duration>,
    /// An acquiring write failed in a way that may have hidden its success:
    /// unless the acquisition ends with a guard, the Lease is checked and
    /// given back if it carries our holder identity.
    unconfirmed: bool,
    /// The answer of the acquiring write in flight, until it is taken.
    in_flight: Option<oneshot::Receiver<Result<Lease, Error>>>,
}

impl<'a> Acquisition<'a> {
    fn new(lock: &'a LeaseLock, key: &'a str, mode: Mode) -> Result<Self, Error> {
        let inner = lock.inner();
        let name = lock.lease_name(key)?;
        let claim = inner.claim(&name).ok_or_else(|| Error::AlreadyHeld {
            key: key.to_owned(),
        })?;
        // A turn never outlasts the longest wait between re-reads.
        let turn = Turn::new(
            inner.config.handoff_stagger,
            inner.config.backoff.max,
            inner.turn_seed(),
        );
        let mut queued = false;
        let view = match inner.cached(&name) {
            // Released when we last saw it (typically: we released it): try
            // to take it with that version, one call when nothing changed.
            // Released so recently that waiters may still be counting down
            // to take it: take a turn among them instead of cutting in.
            Some(o) if o.holder().is_none() => {
                queued = o.seen_at.elapsed() < turn.max_window();
                View::Present(o)
            }
            // Held when we last saw it: that may be old news, read it.
            Some(_) => View::Stale,
            None => View::Unknown,
        };
        let view_cached = matches!(view, View::Present(_));
        Ok(Self {
            turn,
            holder: format!("{}/{}", inner.config.identity, random_suffix()),
            backoff: Backoff::new(inner.config.backoff.clone()),
            lock,
            key,
            name,
            mode,
            claim: Some(claim),
            view,
            watch: None,
            watch_opened: false,
            watch_heard: None,
            watch_unheard: false,
            marker: None,
            last_error: None,
            last_holder: None,
            contended: false,
            answered: false,
            queued,
            view_cached,
            started: Instant::now(),
            started_wall: jiff::Timestamp::now(),
            retry_after: None,
            unconfirmed: false,
            in_flight: None,
        })
    }

    fn inner(&self) -> &Arc<LockInner> {
        self.lock.inner()
    }

    async fn run(mut self) -> Result<Option<LockGuard>, Error> {
        let mut immediate = 0;
        loop {
            self.check_deadline()?;
            let step = self.act().await;
            // Listening has not been answered yet.
            self.answered |= step.as_ref().is_ok_and(|s| !matches!(s, Step::Listen));
            let until = match step {
                Err(e) => return Err(e),
                Ok(Step::Acquired {
                    lease,
                    sent_at,
                    takeover,
                }) => return self.acquired(lease, sent_at, takeover).map(Some),
                Ok(Step::Again(view)) if immediate < MAX_IMMEDIATE_STEPS => {
                    immediate += 1;
                    self.view = view;
                    continue;
                }
                Ok(Step::Again(view)) => {
                    self.view = view;
                    None
                }
                Ok(Step::Failed(e)) => {
                    if !e.is_transient() || matches!(self.mode, Mode::Try) {
                        return Err(e);
                    }
                    debug!(lease = %self.name, error = %e, "transient failure while acquiring; backing off");
                    self.retry_after = e.retry_after();
                    self.last_error = Some(e);
                    None
                }
                Ok(Step::Turn { at }) => {
                    self.wait_for_turn(at).await?;
                    continue;
                }
                Ok(Step::Raced) => {
                    if self.watch.is_none() {
                        // Nothing will tell us who won: read it.
                        self.view = View::Stale;
                        if immediate < MAX_IMMEDIATE_STEPS {
                            immediate += 1;
                            continue;
                        }
                    }
                    self.view = View::Stale;
                    None
                }
                // Not (yet) known to be held: neither queued nor contended.
                Ok(Step::Listen) => None,
                Ok(Step::Wait { until }) => {
                    self.queued = true;
                    if !self.contended {
                        self.contended = true;
                        self.inner().metrics.contended.inc();
                    }
                    until
                }
            };
            immediate = 0;
            if matches!(self.mode, Mode::Try) {
                return Ok(None);
            }
            self.wait(until).await?;
        }
    }

    /// Acts once on the current view.
    async fn act(&mut self) -> Result<Step, Error> {
        match self.view.clone() {
            View::Unknown | View::Absent => {
                self.turn.pause(Instant::now());
                self.create().await
            }
            // It changed, and the open watch will say how: a read now would
            // only race the event (typically, the winner of a race we lost).
            View::Stale if self.watch_is_fresh() => {
                self.turn.pause(Instant::now());
                Ok(if self.watch_unheard {
                    Step::Listen
                } else {
                    Step::Wait { until: None }
                })
            }
            // Never watched (typically: our CREATE found it existing). A
            // watch from the current state reports what a GET would, and
            // goes on reporting: one request where GET + WATCH were two.
            View::Stale if matches!(self.mode, Mode::Wait { .. }) && !self.watch_opened => {
                self.turn.pause(Instant::now());
                self.open_watch_from_now();
                Ok(Step::Listen)
            }
            View::Stale => {
                self.turn.pause(Instant::now());
                self.refresh().await
            }
            View::Present(observation) => {
                self.check_owner(&observation.lease)?;
                if observation.holder() == Some(self.holder.as_str()) {
                    // One of our acquiring writes landed although its answer
                    // was lost: the holder identity is unique to this
                    // acquisition, so the Lease is ours — but since when is
                    // unknown. Renew it (conditionally) to learn a send
                    // instant the guarantee can be measured from.
                    return self.adopt(&observation.lease).await;
                }
                self.last_holder = observation.holder().map(str::to_owned);
                let judgment = self.inner().judge(&observation);
                let now = Instant::now();
                if matches!(judgment, Judgment::Held { .. }) {
                    self.turn.pause(now);
                } else if matches!(self.mode, Mode::Wait { .. })
                    && (self.queued
                        || (!self.view_cached && self.released_recently(&observation.lease)))
                {
                    let left = self.turn.remaining(now);
                    if !left.is_zero() {
                        return Ok(Step::Turn { at: now + left });
                    }
                }
                match judgment {
                    Judgment::Free => self.take(&observation.lease, false).await,
                    Judgment::Expired => self.take(&observation.lease, true).await,
                    Judgment::Held { until } => Ok(Step::Wait { until: Some(until) }),
                }
            }
        }
    }

    /// Whether `lease`, as read from the server, was released so recently
    /// that waiters may be counting down to take it: while this acquisition
    /// ran (its requests may have been slow) or less than the widest turn
    /// window before. Judged by its `renewTime`, the release instant on the
    /// releaser's wall clock (all a reader has): skew only makes us wait a
    /// turn we did not need, or not wait one.
    fn released_recently(&self, lease: &Lease) -> bool {
        let Some(released) = lease.spec.as_ref().and_then(|s| s.renew_time.as_ref()) else {
            return false;
        };
        let horizon = jiff::SignedDuration::try_from(self.turn.max_window()).unwrap_or_default();
        self.started_wall
            .checked_sub(horizon)
            .is_ok_and(|since| released.0 >= since)
    }

    /// Refuses a Lease labelled as another lock's: `cancel` + `task-1` and
    /// `cancel-task` + `1` name the same Lease, and two locks must not share
    /// one silently (nor overwrite each other's prefix label).
    fn check_owner(&self, lease: &Lease) -> Result<(), Error> {
        let prefix = &self.inner().config.prefix;
        match lease
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(LOCK_PREFIX_LABEL))
        {
            Some(owner) if owner != prefix => Err(Error::InvalidLease {
                name: self.name.clone(),
                reason: format!(
                    "it belongs to the lock with prefix {owner:?}, not {prefix:?}; \
                     give one of the two locks a prefix that is not the other's followed by '-'"
                ),
            }),
            _ => Ok(()),
        }
    }

    async fn create(&mut self) -> Result<Step, Error> {
        let lease = acquiring_lease(self.inner(), &self.name, &self.holder, None)?;
        Ok(match self.write(Write::Create(lease)).await? {
            Ok((lease, sent_at)) => Step::Acquired {
                lease,
                sent_at,
                takeover: false,
            },
            Err(Error::AlreadyExists { .. }) => Step::Again(View::Stale),
            Err(e) => Step::Failed(e),
        })
    }

    async fn take(&mut self, current: &Lease, takeover: bool) -> Result<Step, Error> {
        let lease = acquiring_lease(self.inner(), &self.name, &self.holder, Some(current))?;
        // How long the write took is how late rivals could hear of it.
        let sent = Instant::now();
        Ok(match self.write(Write::Replace(lease)).await? {
            Ok((lease, sent_at)) => Step::Acquired {
                lease,
                sent_at,
                takeover,
            },
            Err(Error::Conflict { .. }) => {
                self.inner().metrics.races_lost.inc();
                self.turn.collided(sent.elapsed());
                Step::Raced
            }
            Err(Error::NotFound { .. }) => {
                self.inner().forget(&self.name);
                Step::Again(View::Absent)
            }
            Err(e) => Step::Failed(e),
        })
    }

    async fn adopt(&mut self, ours: &Lease) -> Result<Step, Error> {
        let mut renewed = ours.clone();
        renewed
            .spec
            .get_or_insert_with(LeaseSpec::default)
            .renew_time = Some(MicroTime(jiff::Timestamp::now()));
        Ok(match self.write(Write::Replace(renewed)).await? {
            Ok((lease, sent_at)) => Step::Acquired {
                lease,
                sent_at,
                takeover: false,
            },
            Err(Error::Conflict { .. }) => Step::Raced,
            Err(Error::NotFound { .. }) => {
                self.inner().forget(&self.name);
                Step::Again(View::Absent)
            }
            Err(e) => Step::Failed(e),
        })
    }

    async fn refresh(&mut self) -> Result<Step, Error> {
        self.view_cached = false;
        // Read instead: what the watch has not said yet is known now.
        self.watch_unheard = false;
        let backend = Arc::clone(&self.inner().backend);
        let namespace = self.inner().config.namespace.clone();
        let read = bounded(self.mode.limits(), backend.get(&namespace, &self.name))
            .await
            .map_err(|i| self.interrupted(i))?;
        Ok(match read {
            Ok(Some(lease)) => Step::Again(View::Present(self.inner().observe(&self.name, lease))),
            Ok(None) => {
                self.inner().forget(&self.name);
                Step::Again(View::Absent)
            }
            Err(e) => Step::Failed(e),
        })
    }

    /// Sends an acquiring write from its own task, so that a write that
    /// lands after we stopped waiting for it is given back, not leaked.
    /// The outer error ends the acquisition (cancelled, timed out); the
    /// inner result is the API's answer.
    ///
    /// The write is marked in flight (its answer's receiver kept in `self`)
    /// before anything is awaited: whether the wait is interrupted here or
    /// the whole acquisition is dropped, [`abandon_in_flight`](Self::abandon_in_flight)
    /// then takes an answer already delivered and gives back what it won.
    async fn write(&mut self, write: Write) -> Result<Result<(Lease, Instant), Error>, Error> {
        self.view_cached = false;
        let inner = Arc::clone(self.inner());
        let (name, holder) = (self.name.clone(), self.holder.clone());
        let (tx, rx) = oneshot::channel();
        let sent_at = Instant::now();
        let limits = self
            .mode
            .limits()
            .map(|(deadline, cancel)| (deadline, cancel.clone()));
        let answer = self.in_flight.insert(rx);
        tokio::spawn(async move {
            let namespace = &inner.config.namespace;
            let result = match &write {
                Write::Create(lease) => inner.backend.create(namespace, lease).await,
                Write::Replace(lease) => inner.backend.replace(namespace, lease).await,
            };
            // Nobody is waiting for the answer any more.
            match tx.send(result) {
                Ok(()) => {}
                Err(result) => give_back_abandoned(&inner, &name, &holder, result).await,
            }
        });
        let waited = bounded(limits.as_ref().map(|(d, c)| (*d, c)), answer).await;
        let result = match waited {
            Ok(result) => {
                self.in_flight = None;
                result
            }
            Err(interrupted) => {
                self.abandon_in_flight();
                return Err(self.interrupted(interrupted));
            }
        };
        if let Ok(Err(e)) = &result
            && may_have_landed(e)
        {
            self.unconfirmed = true;
        }
        match result {
            Ok(result) => Ok(result.map(|lease| (lease, sent_at))),
            Err(_) => {
                self.unconfirmed = true;
                Ok(Err(Error::Client {
                    message: "the task sending the acquiring write stopped without an answer"
                        .into(),
                    source: None,
                }))
            }
        }
    }

    /// Gives up on the write in flight, if any: closes its channel first (so
    /// the writer cannot hand an answer over any more: one that arrives later
    /// is given back by the writer itself), then gives back what an answer
    /// already delivered won.
    fn abandon_in_flight(&mut self) {
        let Some(mut answer) = self.in_flight.take() else {
            return;
        };
        answer.close();
        match answer.try_recv() {
            Ok(result) => {
                let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                    return;
                };
                let inner = Arc::clone(self.inner());
                let (name, holder) = (self.name.clone(), self.holder.clone());
                runtime.spawn(async move {
                    give_back_abandoned(&inner, &name, &holder, result).await;
                });
            }
            // Not answered yet: the writer finds the channel closed and gives
            // back what it wins. (A writer that panicked gives nothing back:
            // what it may have won expires.)
            Err(oneshot::error::TryRecvError::Empty | oneshot::error::TryRecvError::Closed) => {}
        }
    }

    /// Waits until the watch reports a change, the next poll, the
    /// expiry instant `until`, the deadline or cancellation.
    async fn wait(&mut self, until: Option<Instant>) -> Result<(), Error> {
        let Mode::Wait {
            deadline,
            cancel,
            holding,
        } = &self.mode
        else {
            return Ok(());
        };
        let (deadline, cancel, holding) = (*deadline, cancel.clone(), holding.clone());
        let held = matches!(&self.view, View::Present(o) if o.holder().is_some());
        if held {
            self.open_watch();
            if !holding.is_empty() {
                // Its reads and writes are bounded like every other call of
                // the acquisition: by the deadline and the cancellation.
                bounded(Some((deadline, &cancel)), self.check_deadlock(&holding))
                    .await
                    .map_err(|i| self.interrupted(i))??;
            }
        }
        let delay = self
            .backoff
            .next()
            .unwrap_or(self.inner().config.backoff.max)
            // A server that asked for a pause (429 Retry-After) gets it.
            .max(self.retry_after.take().unwrap_or_default());
        let mut wake_at = Instant::now() + delay;
        let mut poll = true;
        if let Some(until) = until
            && until <= wake_at
        {
            wake_at = until;
            poll = false;
        }
        self.listen(wake_at.min(deadline), poll, held, &cancel)
            .await
    }

    /// Waits until our turn `at` to take the free Lease, the deadline or
    /// cancellation, or until the watch reports a change (someone else
    /// took it first, typically): no poll, the turn is short.
    async fn wait_for_turn(&mut self, at: Instant) -> Result<(), Error> {
        let Mode::Wait {
            deadline, cancel, ..
        } = &self.mode
        else {
            return Ok(());
        };
        let (deadline, cancel) = (*deadline, cancel.clone());
        // Without a watch we could not see another waiter take it first;
        // our own release may have none (nobody else may be waiting).
        if !self.view_cached {
            self.open_watch();
        }
        self.listen(at.min(deadline), false, false, &cancel).await
    }

    /// Sleeps until `wake_at` (re-reading then if `poll` and the watch is
    /// not fresh) unless the watch reports a change first, or `cancel` fires.
    async fn listen(
        &mut self,
        wake_at: Instant,
        poll: bool,
        held: bool,
        cancel: &CancellationToken,
    ) -> Result<(), Error> {
        let mut wake = {
            let event = next_event(&mut self.watch);
            tokio::select! {
                biased;
                () = cancel.cancelled() => return Err(self.cancelled()),
                event = event => Wake::Event(event),
                () = tokio::time::sleep_until(wake_at) => Wake::Timer { poll },
            }
        };
        // Skip to the newest state already delivered: under contention the
        // next holder's write often arrives right behind the release, and
        // acting on the release alone would only produce a doomed write.
        // What ends the skipping is not dropped: an end means the stream
        // must never be polled again, an error that the watch is not fresh.
        let mut watch_failed = false;
        while let Wake::Event(Some(Ok(_))) = wake {
            match self.watch.as_mut().and_then(|w| w.next().now_or_never()) {
                Some(newer @ Some(Ok(_))) => wake = Wake::Event(newer),
                Some(None) => {
                    debug!(lease = %self.name, "lease watch ended; falling back to polling");
                    self.watch = None;
                    break;
                }
                Some(Some(Err(e))) => {
                    debug!(lease = %self.name, error = %e, "lease watch reported an error; polling goes on");
                    watch_failed = true;
                    break;
                }
                None => break,
            }
        }
        match wake {
            Wake::Event(Some(Ok(LeaseEvent::Applied(lease)))) => {
                self.watch_unheard = false;
                self.view_cached = false;
                self.watch_heard = Some(Instant::now());
                self.view = View::Present(self.inner().observe(&self.name, lease));
            }
            Wake::Event(Some(Ok(LeaseEvent::Deleted))) => {
                self.watch_unheard = false;
                self.view_cached = false;
                self.watch_heard = Some(Instant::now());
                self.inner().forget(&self.name);
                self.view = View::Absent;
            }
            Wake::Event(Some(Err(e))) => {
                self.watch_heard = None;
                debug!(lease = %self.name, error = %e, "lease watch reported an error; polling goes on");
            }
            Wake::Event(None) => {
                debug!(lease = %self.name, "lease watch ended; falling back to polling");
                self.watch = None;
            }
            // Re-read what may have changed unseen; at the expiry instant
            // the current view is judged again as it is (the takeover is
            // conditional on its version, so an unseen renewal makes it fail).
            Wake::Timer { poll: true }
                if (held || matches!(self.view, View::Stale)) && !self.watch_is_fresh() =>
            {
                self.view = View::Stale;
            }
            Wake::Timer { .. } => {}
        }
        if watch_failed {
            self.watch_heard = None;
        }
        Ok(())
    }

    /// Whether the watch is open and was heard from (opened, or delivered
    /// an event) within the longest backoff delay: then it reports changes
    /// and a poll would only repeat it. A silent or failing watch is
    /// backed up by polls.
    fn watch_is_fresh(&self) -> bool {
        self.watch.is_some()
            && self
                .watch_heard
                .is_some_and(|heard| heard.elapsed() < self.inner().config.backoff.max)
    }

    fn open_watch(&mut self) {
        if self.watch_opened {
            return;
        }
        let View::Present(observation) = &self.view else {
            return;
        };
        self.watch_opened = true;
        self.watch_heard = Some(Instant::now());
        let inner = self.inner();
        self.watch = Some(inner.backend.watch(
            &inner.config.namespace,
            &self.name,
            observation.lease.metadata.resource_version.clone(),
        ));
    }

    /// Opens the watch without a resourceVersion: its first event is the
    /// Lease's current state (absent included), judged as a read's answer.
    fn open_watch_from_now(&mut self) {
        self.watch_opened = true;
        self.watch_unheard = true;
        self.watch_heard = Some(Instant::now());
        let inner = self.inner();
        self.watch = Some(
            inner
                .backend
                .watch(&inner.config.namespace, &self.name, None),
        );
    }

    async fn check_deadlock(&mut self, holding: &[Arc<GuardShared>]) -> Result<(), Error> {
        let View::Present(observation) = &self.view else {
            return Ok(());
        };
        let wanted = observation.lease.clone();
        if self.marker.is_none() {
            let marker = self.marker.insert(WaitMarker::new(holding, &self.name));
            marker.publish().await;
        }
        let inner = Arc::clone(self.inner());
        match deadlock::find_cycle(&inner, &wanted, holding).await {
            Ok(Some(cycle)) if cycle.we_are_victim() => Err(Error::Deadlock {
                key: self.key.to_owned(),
                cycle: cycle.lease_names(),
            }),
            Ok(Some(cycle)) => {
                debug!(lease = %self.name, cycle = ?cycle.lease_names(), "wait-for cycle found; another member backs out");
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(e) => {
                debug!(lease = %self.name, error = %e, "could not walk the wait-for graph");
                Ok(())
            }
        }
    }

    fn acquired(
        mut self,
        lease: Lease,
        sent_at: Instant,
        takeover: bool,
    ) -> Result<LockGuard, Error> {
        self.unconfirmed = false;
        let inner = Arc::clone(self.inner());
        if takeover {
            inner.metrics.takeovers.inc();
            debug!(lease = %self.name, previous = ?self.last_holder, "took over an expired lease");
        }
        inner.observe(&self.name, lease.clone());
        let claim = self.claim.take();
        let started = LockGuard::start(
            Arc::clone(&inner),
            self.key,
            self.name.clone(),
            self.holder.clone(),
            lease.clone(),
            sent_at,
            claim,
        );
        if started.is_err() {
            // Unusable (no uid or transitions): do not keep it held.
            tokio::spawn(async move { inner.give_back(lease).await });
        }
        started
    }

    fn check_deadline(&self) -> Result<(), Error> {
        if let Mode::Wait {
            deadline, cancel, ..
        } = &self.mode
        {
            if cancel.is_cancelled() {
                return Err(self.cancelled());
            }
            if Instant::now() >= *deadline {
                return Err(self.timed_out());
            }
        }
        Ok(())
    }

    fn interrupted(&self, interrupted: Interrupted) -> Error {
        match interrupted {
            Interrupted::Cancelled => self.cancelled(),
            Interrupted::TimedOut => self.timed_out(),
        }
    }

    fn cancelled(&self) -> Error {
        Error::Cancelled {
            key: self.key.to_owned(),
        }
    }

    /// The error for a deadline: the last API failure when the API was
    /// failing (an API failure is never disguised as contention), else a
    /// timeout naming the holder we saw.
    fn timed_out(&self) -> Error {
        match &self.last_error {
            Some(e) if !self.contended => clone_error(e),
            None if !self.answered => Error::Unanswered {
                key: self.key.to_owned(),
                waited: self.started.elapsed(),
            },
            _ => Error::Timeout {
                key: self.key.to_owned(),
                waited: self.started.elapsed(),
                holder: self.last_holder.clone(),
            },
        }
    }
}

impl Drop for Acquisition<'_> {
    fn drop(&mut self) {
        // Dropped while a write was in flight: its answer may already be
        // waiting in the channel, handed over and so not given back by the
        // writer.
        self.abandon_in_flight();
        if !self.unconfirmed {
            return;
        }
        // Ended without a guard (error, timeout, cancellation, a dropped
        // future) after a write whose outcome is unknown: if it landed, the
        // Lease is held by an identity nobody will renew or release, and
        // everyone — this process included — would wait for it to expire.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let inner = Arc::clone(self.inner());
        let (name, holder) = (self.name.clone(), self.holder.clone());
        runtime.spawn(async move { inner.give_back_if_held_by(&name, &holder).await });
    }
}

enum Write {
    Create(Lease),
    Replace(Lease),
}

/// Gives back what an acquiring write nobody waits for any more may have
/// won: the Lease it returned, or, when its answer was lost, whatever Lease
/// carries the acquisition's holder identity.
async fn give_back_abandoned(
    inner: &LockInner,
    name: &str,
    holder: &str,
    result: Result<Lease, Error>,
) {
    match result {
        Ok(lease) => inner.give_back(lease).await,
        Err(e) if may_have_landed(&e) => inner.give_back_if_held_by(name, holder).await,
        Err(_) => {}
    }
}

async fn next_event(
    watch: &mut Option<BoxStream<'static, Result<LeaseEvent, Error>>>,
) -> Option<Result<LeaseEvent, Error>> {
    match watch {
        Some(stream) => stream.next().await,
        None => std::future::pending().await,
    }
}

/// The Lease that makes `holder` the holder of `name`: a new one, or
/// `current` taken over (same uid and resourceVersion as preconditions,
/// `leaseTransitions + 1`, our waiting-for annotation cleared).
pub(crate) fn acquiring_lease(
    inner: &LockInner,
    name: &str,
    holder: &str,
    current: Option<&Lease>,
) -> Result<Lease, Error> {
    let config = &inner.config;
    let now = MicroTime(jiff::Timestamp::now());
    let mut lease = current.cloned().unwrap_or_else(|| Lease {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(config.namespace.clone()),
            ..ObjectMeta::default()
        },
        spec: None,
    });
    let transitions = match current.and_then(|l| l.spec.as_ref()?.lease_transitions) {
        None if current.is_none() => 0,
        None => 1,
        Some(t) => t
            .checked_add(1)
            .filter(|t| *t > 0)
            .ok_or_else(|| Error::InvalidLease {
                name: name.to_owned(),
                reason: format!("leaseTransitions {t} cannot be incremented"),
            })?,
    };
    let labels = lease.metadata.labels.get_or_insert_with(Default::default);
    labels.insert(MANAGED_BY_LABEL.to_owned(), MANAGED_BY_VALUE.to_owned());
    labels.insert(LOCK_PREFIX_LABEL.to_owned(), config.prefix.clone());
    labels.insert(HOLDER_HASH_LABEL.to_owned(), inner.holder_hash.clone());
    if let Some(annotations) = lease.metadata.annotations.as_mut() {
        annotations.remove(WAITING_FOR_ANNOTATION);
    }
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    spec.holder_identity = Some(holder.to_owned());
    spec.lease_duration_seconds = Some(config.lease_duration_seconds());
    spec.acquire_time = Some(now.clone());
    spec.renew_time = Some(now);
    spec.lease_transitions = Some(transitions);
    Ok(lease)
}

/// `lease` with its holder cleared (and the holder's label and annotation
/// removed); `leaseTransitions` and the object stay, so fencing tokens keep
/// increasing. The resourceVersion is kept: the release is conditional.
pub(crate) fn released_copy(lease: &Lease) -> Lease {
    let mut lease = lease.clone();
    if let Some(labels) = lease.metadata.labels.as_mut() {
        labels.remove(HOLDER_HASH_LABEL);
    }
    if let Some(annotations) = lease.metadata.annotations.as_mut() {
        annotations.remove(WAITING_FOR_ANNOTATION);
    }
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    spec.holder_identity = None;
    // The release instant: garbage collection measures idleness from it.
    spec.renew_time = Some(MicroTime(jiff::Timestamp::now()));
    lease
}

/// The holder of `lease`, `None` when released.
pub(crate) fn holder_of(lease: &Lease) -> Option<&str> {
    lease
        .spec
        .as_ref()?
        .holder_identity
        .as_deref()
        .filter(|h| !h.is_empty())
}

/// Whether two observations carry the same record (uid and spec): what
/// client-go compares to decide that the holder did not renew.
fn same_record(a: &Lease, b: &Lease) -> bool {
    a.metadata.uid == b.metadata.uid && a.spec == b.spec
}

/// The expiry rule (see the module documentation).
pub(crate) fn judge(
    observation: &Observation,
    config: &LockConfig,
    now: Instant,
    wall_now: jiff::Timestamp,
) -> Judgment {
    if observation.holder().is_none() {
        return Judgment::Free;
    }
    let spec = observation.lease.spec.as_ref();
    // The holder's promise; a missing or nonsensical one is replaced by ours.
    let duration = spec
        .and_then(|s| s.lease_duration_seconds)
        .and_then(|s| u64::try_from(s).ok())
        .filter(|s| *s > 0)
        .map_or(config.lease_duration, Duration::from_secs);
    let monotonic_expiry = observation.seen_at + duration;
    if now >= monotonic_expiry {
        return Judgment::Expired;
    }
    let mut until = monotonic_expiry;
    if let Some(renewed) = spec.and_then(|s| s.renew_time.as_ref()) {
        let wall_expiry = config
            .max_clock_skew
            .and_then(|skew| duration.checked_add(skew))
            .and_then(|d| jiff::SignedDuration::try_from(d).ok())
            .and_then(|d| renewed.0.checked_add(d).ok());
        if let Some(wall_expiry) = wall_expiry {
            match Duration::try_from(wall_now.duration_until(wall_expiry)) {
                // Negative: already in the past.
                Err(_) => return Judgment::Expired,
                Ok(left) if left.is_zero() => return Judgment::Expired,
                Ok(left) => until = until.min(now + left),
            }
        }
    }
    Judgment::Held { until }
}

/// Errors are not `Clone` (their sources are boxed); this keeps what a
/// caller acts on.
pub(crate) fn clone_error(e: &Error) -> Error {
    match e {
        Error::Api {
            status,
            reason,
            message,
            retry_after,
        } => Error::Api {
            status: *status,
            reason: reason.clone(),
            message: message.clone(),
            retry_after: *retry_after,
        },
        Error::Transport { message, .. } => Error::Transport {
            message: message.clone(),
            source: None,
        },
        Error::Conflict { name } => Error::Conflict { name: name.clone() },
        other => Error::Client {
            message: other.to_string(),
            source: None,
        },
    }
}

fn random_suffix() -> String {
    let n: u64 = rand::rng().random();
    format!("{n:016x}")
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section is a single map operation; a panic cannot
    // leave the data half-updated, so a poisoned lock is still usable.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
