//! GitHub's rate limits, as a wrapper around any [`LabelBackend`].
//!
//! Rule kept here: **never ask GitHub for something it told us to wait
//! for** — below the remaining budget we keep in reserve we wait for the
//! window's reset; after a 403/429 rate-limit answer (which GitHub did not
//! act on) we wait as told (`retry-after`, else `x-ratelimit-reset`, else at
//! least a minute, growing on repeated rejections) before the call is sent
//! again; and mutations go out one at a time with a spacing between them
//! (GitHub's guidance for avoiding secondary limits). A block is shared by
//! every caller and read again after each sleep, so a wait that another
//! call's rejection extended meanwhile is kept to its new end. A call's
//! waits together are bounded by [`RateLimitPolicy::max_wait`], and so is a
//! mutation's wait behind the mutations queued before it; a longer one
//! is returned as [`Error::RateLimited`] for the caller to reschedule, and
//! the long ones end early with [`Error::Cancelled`] once the token given to
//! [`RateLimited::with_cancellation`] fires.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use resilience::{Backoff, BackoffPolicy};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::until_wall_clock;
use crate::{
    ETag, Error, Fetched, LabelBackend, LabelSet, Metrics, PrRef, RateLimit, RemoveOutcome, Result,
};

/// Rounding slack added to a reset time: GitHub reports it in whole seconds
/// and our clock may run slightly ahead of GitHub's.
const RESET_SLACK: Duration = Duration::from_secs(1);
/// The longest pause recorded after a rejection. GitHub asks for minutes,
/// at most an hour; a longer `retry-after` is a confused server, and beyond
/// [`RateLimitPolicy::max_wait`] callers fail fast anyway.
const LONGEST_PAUSE: Duration = Duration::from_secs(24 * 3600);
/// What a mutation that waited `max_wait` in the queue of mutations is told
/// to wait before it comes back (at least one spacing).
const QUEUE_RETRY: Duration = Duration::from_secs(1);

/// How [`RateLimited`] paces calls.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimitPolicy {
    /// When `x-ratelimit-remaining` is at or below this, calls wait for the
    /// reset (the reserve left for other users of the same token).
    pub min_remaining: u32,
    /// Pause between the end of one mutation and the start of the next.
    pub mutation_spacing: Duration,
    /// Waits after a rate-limit answer that names no time: the first is
    /// `initial` (at least a minute on GitHub), then growing. Also the
    /// floor of those waits.
    pub rejection_backoff: BackoffPolicy,
    /// Rate-limit answers absorbed per call before the error is returned.
    pub max_rejections: u32,
    /// The longest a call waits before it is sent: its waits for the
    /// budget and for blocks together, and, for a mutation, its wait for
    /// the mutations queued before it (each bounded on its own, the
    /// spacing aside); a longer one fails fast with [`Error::RateLimited`]
    /// rather than parking a worker.
    pub max_wait: Duration,
}

impl Default for RateLimitPolicy {
    /// Reserve 50 requests, 1 s between mutations, 60 s then ×2 up to
    /// 15 min after unexplained rejections, 3 rejections per call, waits of
    /// at most 15 min.
    ///
    /// Why: 1 s between mutations and at least 60 s after a rejection
    /// without `retry-after` are GitHub's published guidance; 50 requests
    /// leave room for a human's tooling on the same token; a worker parked
    /// longer than 15 min is better rescheduled by the reconciler.
    fn default() -> Self {
        Self {
            min_remaining: 50,
            mutation_spacing: Duration::from_secs(1),
            rejection_backoff: BackoffPolicy {
                initial: Duration::from_secs(60),
                multiplier: 2.0,
                max: Duration::from_secs(15 * 60),
                jitter: 0.1,
                max_attempts: None,
            },
            max_rejections: 3,
            max_wait: Duration::from_secs(15 * 60),
        }
    }
}

impl RateLimitPolicy {
    /// Rejects an invalid backoff, a zero `max_wait` and a mutation spacing
    /// longer than `max_wait`.
    pub fn validate(&self) -> Result<()> {
        self.rejection_backoff
            .validate()
            .map_err(|e| Error::Config {
                reason: e.to_string(),
            })?;
        if self.max_wait.is_zero() {
            return Err(Error::Config {
                reason: "max_wait must be greater than zero".into(),
            });
        }
        if self.mutation_spacing > self.max_wait {
            return Err(Error::Config {
                reason: format!(
                    "mutation_spacing ({:?}) must not exceed max_wait ({:?})",
                    self.mutation_spacing, self.max_wait
                ),
            });
        }
        Ok(())
    }
}

/// A [`LabelBackend`] that respects GitHub's primary and secondary rate
/// limits; wrap one per token (installation), since limits are per token.
///
/// Mutations are serial *per value*: share one `RateLimited` (behind an
/// [`Arc`](std::sync::Arc), which is itself a [`LabelBackend`]) between every
/// manager that uses the same token. Two values over the same token pace
/// independently, and so does each replica.
///
/// ```
/// use std::time::Duration;
/// use label_cas::{MemoryLabels, RateLimitPolicy, RateLimited};
///
/// let paced = RateLimited::new(
///     MemoryLabels::new(),
///     RateLimitPolicy { mutation_spacing: Duration::from_millis(5), ..RateLimitPolicy::default() },
/// )?;
/// # Ok::<_, label_cas::Error>(())
/// ```
#[derive(Debug)]
pub struct RateLimited<B> {
    inner: B,
    policy: RateLimitPolicy,
    metrics: Metrics,
    state: Mutex<State>,
    /// Held for the whole of a mutation: one at a time. Holds when the
    /// previous one finished (the spacing is measured from there, so it
    /// holds at GitHub's end too, whatever the network delays).
    mutations: tokio::sync::Mutex<Option<Instant>>,
    cancel: CancellationToken,
}

#[derive(Debug)]
struct State {
    /// No call before this (after a rejection): GitHub asks the whole
    /// integration to pause, not just the call it rejected.
    blocked_until: Option<Instant>,
    /// Rejections in a row, across calls; reset by any other answer.
    consecutive_rejections: u32,
    backoff: Backoff,
    /// The reset we already waited for, so a stale "remaining: 0" from
    /// before the reset does not make us wait twice.
    waited_for_reset: Option<jiff::Timestamp>,
}

impl<B: LabelBackend> RateLimited<B> {
    /// Wraps `inner` with `policy` (validated).
    pub fn new(inner: B, policy: RateLimitPolicy) -> Result<Self> {
        policy.validate()?;
        Ok(Self {
            state: Mutex::new(State {
                blocked_until: None,
                consecutive_rejections: 0,
                backoff: Backoff::new(policy.rejection_backoff.clone()),
                waited_for_reset: None,
            }),
            inner,
            policy,
            metrics: Metrics::default(),
            mutations: tokio::sync::Mutex::new(None),
            cancel: CancellationToken::new(),
        })
    }

    /// Counts waits into `metrics`.
    #[must_use]
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Ends rate-limit waits (for a budget reset or after a rejection) with
    /// [`Error::Cancelled`] when `cancel` fires. Calls that need no wait
    /// still go out, so an undo after cancellation can still be sent; the
    /// short mutation spacing is always kept.
    #[must_use]
    pub fn with_cancellation(mut self, cancel: CancellationToken) -> Self {
        self.cancel = cancel;
        self
    }

    /// The wrapped backend.
    pub fn inner(&self) -> &B {
        &self.inner
    }

    async fn call<T, F, Fut>(&self, mutation: bool, mut op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let mut gate = if mutation {
            // The queue of mutations counts against `max_wait` too: a caller
            // behind a long queue is told to come back rather than parked.
            match tokio::time::timeout(self.policy.max_wait, self.mutations.lock()).await {
                Ok(gate) => Some(gate),
                Err(_) => {
                    self.metrics.rate_limit_wait("queue_full");
                    return Err(Error::RateLimited {
                        retry_after: Some(self.policy.mutation_spacing.max(QUEUE_RETRY)),
                        reset: None,
                    });
                }
            }
        } else {
            None
        };
        let mut rejections = 0;
        loop {
            self.wait_for_budget().await?;
            if let Some(previous) = gate.as_deref().copied().flatten() {
                // Not cancellable: it is short (the spacing), and an undo sent
                // after cancellation must still keep GitHub's pace.
                tokio::time::sleep_until(previous + self.policy.mutation_spacing).await;
            }
            if let Some(gate) = gate.as_deref_mut() {
                // Set before sending too: if this call is dropped in flight, the
                // request may still reach GitHub, and the next one keeps its
                // distance from it.
                *gate = Some(Instant::now());
            }
            let result = op().await;
            if let Some(gate) = gate.as_deref_mut() {
                *gate = Some(Instant::now());
            }
            let error = match result {
                Err(error @ Error::RateLimited { .. }) => error,
                other => {
                    let mut state = self.state();
                    if state.consecutive_rejections > 0 {
                        state.consecutive_rejections = 0;
                        state.backoff.reset();
                    }
                    return other;
                }
            };
            rejections += 1;
            if rejections > self.policy.max_rejections {
                return Err(error);
            }
            let wait = self.block_after_rejection(&error);
            if wait > self.policy.max_wait {
                return Err(error);
            }
            tracing::warn!(wait_ms = millis(wait), %error, "GitHub rate limit: waiting before sending again");
            self.metrics.rate_limit_wait("rejected");
            // The wait itself happens in `wait_for_budget`, shared with every
            // other caller.
        }
    }

    /// How long to wait after `error`; blocks every caller until then.
    fn block_after_rejection(&self, error: &Error) -> Duration {
        let mut state = self.state();
        state.consecutive_rejections += 1;
        let floor = self.policy.rejection_backoff.initial;
        let grown = state
            .backoff
            .next_delay()
            .unwrap_or(self.policy.rejection_backoff.max)
            .max(floor);
        // GitHub: wait `retry-after` when sent, and until `x-ratelimit-reset`
        // when the budget is exhausted; both may apply, so the longer wins.
        let asked = match error {
            Error::RateLimited { retry_after, reset } => {
                (*retry_after).max(reset.map(|r| until_wall_clock(r) + RESET_SLACK))
            }
            _ => None,
        };
        let wait = match asked {
            // GitHub named the time: that is the wait, unless waiting as
            // told already failed once, in which case we back off further.
            Some(asked) if state.consecutive_rejections == 1 => asked,
            Some(asked) => asked.max(grown),
            None => grown,
        };
        // A confused server may name any time at all: keep the instant
        // representable (the caller fails fast beyond `max_wait` anyway).
        let until = Instant::now() + wait.min(LONGEST_PAUSE);
        state.blocked_until = Some(state.blocked_until.map_or(until, |b| b.max(until)));
        wait
    }

    /// Waits while blocked by a rejection or while the budget is at the
    /// reserve and the window has not reset; fails fast with
    /// [`Error::RateLimited`] instead of waiting longer than `max_wait` in
    /// all.
    ///
    /// The block is read again after every sleep: another call's rejection
    /// that arrived meanwhile (a secondary limit's `retry-after`) may have
    /// pushed it further, and GitHub asked the whole integration to wait.
    async fn wait_for_budget(&self) -> Result<()> {
        // `None`: a `max_wait` too large to add to now is no bound at all.
        let give_up = Instant::now().checked_add(self.policy.max_wait);
        let too_late = |at: Option<Instant>| match (at, give_up) {
            (Some(at), Some(give_up)) => at > give_up,
            (None, Some(_)) => true,
            (_, None) => false,
        };
        loop {
            let (blocked_until, reset) = {
                let state = self.state();
                let reset = self.inner.rate_limit().and_then(|limit| {
                    let low = limit.remaining <= self.policy.min_remaining;
                    let waited = state.waited_for_reset.is_some_and(|w| w >= limit.reset);
                    (low && !waited).then_some(limit)
                });
                (state.blocked_until, reset)
            };
            let now = Instant::now();
            if let Some(until) = blocked_until.filter(|until| *until > now) {
                let left = until - now;
                if too_late(Some(until)) {
                    return Err(Error::RateLimited {
                        retry_after: Some(left),
                        reset: None,
                    });
                }
                self.pause(left).await?;
                continue;
            }
            let Some(limit) = reset else {
                return Ok(());
            };
            let wait = until_wall_clock(limit.reset);
            if wait.is_zero() {
                return Ok(());
            }
            let wait = wait + RESET_SLACK;
            if too_late(now.checked_add(wait)) {
                return Err(Error::RateLimited {
                    retry_after: Some(wait),
                    reset: Some(limit.reset),
                });
            }
            tracing::warn!(
                remaining = limit.remaining,
                reserve = self.policy.min_remaining,
                wait_ms = millis(wait),
                "GitHub rate-limit budget at the reserve: waiting for the reset"
            );
            self.metrics.rate_limit_wait("budget");
            self.pause(wait).await?;
            let mut state = self.state();
            state.waited_for_reset = Some(
                state
                    .waited_for_reset
                    .map_or(limit.reset, |w| w.max(limit.reset)),
            );
            // Looked at again: a rejection may have blocked us meanwhile.
        }
    }

    /// Sleeps for `wait`, or fails with [`Error::Cancelled`] if the token
    /// fires first (a zero wait never fails).
    async fn pause(&self, wait: Duration) -> Result<()> {
        if wait.is_zero() {
            return Ok(());
        }
        tokio::select! {
            biased;
            () = self.cancel.cancelled() => Err(Error::Cancelled),
            () = tokio::time::sleep(wait) => Ok(()),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Plain counters and instants: a panic elsewhere cannot leave them
        // meaningless, so poisoning is ignored.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait]
impl<B: LabelBackend> LabelBackend for RateLimited<B> {
    async fn get<'a>(&self, pr: &PrRef, if_none_match: Option<&'a ETag>) -> Result<Fetched> {
        self.call(false, || self.inner.get(pr, if_none_match)).await
    }

    async fn add(&self, pr: &PrRef, names: &[String]) -> Result<LabelSet> {
        self.call(true, || self.inner.add(pr, names)).await
    }

    async fn remove(&self, pr: &PrRef, name: &str) -> Result<RemoveOutcome> {
        // A rate-limit answer means GitHub did not act, so sending the
        // DELETE again after the wait is not a blind re-send.
        self.call(true, || self.inner.remove(pr, name)).await
    }

    async fn replace(&self, pr: &PrRef, names: &[String]) -> Result<LabelSet> {
        self.call(true, || self.inner.replace(pr, names)).await
    }

    fn rate_limit(&self) -> Option<RateLimit> {
        self.inner.rate_limit()
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MockLabelBackend;
    use std::sync::Arc;

    fn pr() -> PrRef {
        PrRef::new("acme", "widgets", 7).unwrap()
    }

    fn labels() -> Fetched {
        Fetched::Labels {
            labels: LabelSet::default(),
            etag: None,
        }
    }

    /// Jitter-free backoff so paused-time assertions are exact.
    fn policy() -> RateLimitPolicy {
        RateLimitPolicy {
            rejection_backoff: BackoffPolicy {
                jitter: 0.0,
                ..RateLimitPolicy::default().rejection_backoff
            },
            ..RateLimitPolicy::default()
        }
    }

    fn budget(remaining: u32, reset_in: Duration) -> RateLimit {
        let reset = jiff::Timestamp::now() + jiff::SignedDuration::try_from(reset_in).unwrap();
        // Whole seconds, as GitHub sends them.
        let reset = jiff::Timestamp::from_second(reset.as_second()).unwrap();
        RateLimit {
            limit: 5000,
            remaining,
            used: 5000 - remaining,
            reset,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_budget_at_the_reserve_waits_for_the_reset_once() {
        let mut mock = MockLabelBackend::new();
        let low = budget(10, Duration::from_secs(30));
        mock.expect_rate_limit().returning(move || Some(low));
        mock.expect_get().times(2).returning(|_, _| Ok(labels()));
        let paced = RateLimited::new(mock, policy()).unwrap();
        let started = Instant::now();
        paced.get(&pr(), None).await.unwrap();
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(29) && waited <= Duration::from_secs(32),
            "{waited:?}"
        );
        // The same stale "remaining: 10" does not make us wait again.
        let again = Instant::now();
        paced.get(&pr(), None).await.unwrap();
        assert_eq!(again.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_budget_above_the_reserve_does_not_wait() {
        let mut mock = MockLabelBackend::new();
        let fine = budget(51, Duration::from_secs(3000));
        mock.expect_rate_limit().returning(move || Some(fine));
        mock.expect_get().times(1).returning(|_, _| Ok(labels()));
        let paced = RateLimited::new(mock, policy()).unwrap();
        let started = Instant::now();
        paced.get(&pr(), None).await.unwrap();
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_reset_beyond_the_longest_wait_fails_fast_without_a_call() {
        let mut mock = MockLabelBackend::new();
        let exhausted = budget(0, Duration::from_secs(2 * 3600));
        mock.expect_rate_limit().returning(move || Some(exhausted));
        // No get expectation: a call would panic.
        let paced = RateLimited::new(mock, policy()).unwrap();
        let err = paced.get(&pr(), None).await.unwrap_err();
        assert!(
            matches!(err, Error::RateLimited { reset: Some(_), .. }),
            "{err}"
        );
        assert!(err.retry_after().unwrap() > Duration::from_secs(3600));
    }

    #[tokio::test(start_paused = true)]
    async fn a_secondary_limit_retry_after_is_honoured_before_sending_again() {
        let mut mock = MockLabelBackend::new();
        mock.expect_rate_limit().returning(|| None);
        let mut seq = mockall::Sequence::new();
        mock.expect_remove()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_, _| {
                Err(Error::RateLimited {
                    retry_after: Some(Duration::from_secs(7)),
                    reset: None,
                })
            });
        mock.expect_remove()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_, _| Ok(RemoveOutcome::Removed(LabelSet::default())));
        let paced = RateLimited::new(mock, policy()).unwrap();
        let started = Instant::now();
        paced.remove(&pr(), "x").await.unwrap();
        // 7 s as asked; the mutation spacing (1 s) is inside that wait.
        assert_eq!(started.elapsed(), Duration::from_secs(7));
    }

    #[tokio::test(start_paused = true)]
    async fn a_rejection_that_names_no_time_waits_a_minute_then_backs_off() {
        let mut mock = MockLabelBackend::new();
        mock.expect_rate_limit().returning(|| None);
        let mut seq = mockall::Sequence::new();
        mock.expect_get()
            .times(2)
            .in_sequence(&mut seq)
            .returning(|_, _| {
                Err(Error::RateLimited {
                    retry_after: None,
                    reset: None,
                })
            });
        mock.expect_get()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_, _| Ok(labels()));
        let paced = RateLimited::new(mock, policy()).unwrap();
        let started = Instant::now();
        paced.get(&pr(), None).await.unwrap();
        assert_eq!(started.elapsed(), Duration::from_secs(60 + 120));
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limit_rejections_are_bounded_per_call() {
        let mut mock = MockLabelBackend::new();
        mock.expect_rate_limit().returning(|| None);
        mock.expect_get().times(4).returning(|_, _| {
            Err(Error::RateLimited {
                retry_after: Some(Duration::from_secs(1)),
                reset: None,
            })
        });
        let paced = RateLimited::new(
            mock,
            RateLimitPolicy {
                max_rejections: 3,
                ..policy()
            },
        )
        .unwrap();
        assert!(matches!(
            paced.get(&pr(), None).await,
            Err(Error::RateLimited { .. })
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_rejection_pauses_every_caller_not_only_the_rejected_one() {
        let mut mock = MockLabelBackend::new();
        mock.expect_rate_limit().returning(|| None);
        let calls = Arc::new(std::sync::Mutex::new(Vec::new()));
        let recorded = Arc::clone(&calls);
        let started = Instant::now();
        mock.expect_get().returning(move |pr, _| {
            let mut calls = recorded.lock().unwrap();
            calls.push((pr.number(), started.elapsed()));
            if calls.len() == 1 {
                Err(Error::RateLimited {
                    retry_after: Some(Duration::from_secs(30)),
                    reset: None,
                })
            } else {
                Ok(labels())
            }
        });
        let paced = Arc::new(RateLimited::new(mock, policy()).unwrap());
        let first = {
            let paced = Arc::clone(&paced);
            tokio::spawn(async move { paced.get(&pr(), None).await })
        };
        tokio::time::sleep(Duration::from_secs(5)).await;
        let other = PrRef::new("acme", "widgets", 8).unwrap();
        paced.get(&other, None).await.unwrap();
        first.await.unwrap().unwrap();
        let calls = calls.lock().unwrap();
        assert_eq!(calls[0], (7, Duration::ZERO));
        assert!(
            calls[1..]
                .iter()
                .all(|(_, at)| *at >= Duration::from_secs(30)),
            "{calls:?}"
        );
    }

    /// Reads whose first answer is a secondary-limit rejection: for PR
    /// `slow` it comes after `delay` and asks for `slow_wait`, for any other
    /// PR at once and asks for `fast_wait`. Every send is recorded.
    struct RejectsFirst {
        origin: Instant,
        slow: u64,
        delay: Duration,
        slow_wait: Duration,
        fast_wait: Duration,
        sends: std::sync::Mutex<Vec<(u64, Duration)>>,
    }

    impl RejectsFirst {
        fn sends_of(&self, number: u64) -> Vec<Duration> {
            let sends = self.sends.lock().unwrap();
            sends
                .iter()
                .filter(|(n, _)| *n == number)
                .map(|(_, at)| *at)
                .collect()
        }
    }

    #[async_trait]
    impl LabelBackend for RejectsFirst {
        async fn get<'a>(&self, pr: &PrRef, _: Option<&'a ETag>) -> Result<Fetched> {
            let first = {
                let mut sends = self.sends.lock().unwrap();
                let first = sends.iter().all(|(n, _)| *n != pr.number());
                sends.push((pr.number(), self.origin.elapsed()));
                first
            };
            if !first {
                return Ok(labels());
            }
            let retry_after = if pr.number() == self.slow {
                tokio::time::sleep(self.delay).await;
                self.slow_wait
            } else {
                self.fast_wait
            };
            Err(Error::RateLimited {
                retry_after: Some(retry_after),
                reset: None,
            })
        }
        async fn add(&self, _: &PrRef, _: &[String]) -> Result<LabelSet> {
            Ok(LabelSet::default())
        }
        async fn remove(&self, _: &PrRef, _: &str) -> Result<RemoveOutcome> {
            Ok(RemoveOutcome::Absent)
        }
        async fn replace(&self, _: &PrRef, _: &[String]) -> Result<LabelSet> {
            Ok(LabelSet::default())
        }
    }

    /// B (#8) goes out at 0 s and is answered at 5 s with "retry after
    /// 60 s"; A (#7) goes out at 0 s too and is told at once to wait 10 s —
    /// so while A sleeps, B's answer blocks everyone for longer. Returns
    /// A's and B's results.
    async fn a_rejection_lands_while_another_call_waits(
        policy: RateLimitPolicy,
    ) -> (
        Arc<RateLimited<RejectsFirst>>,
        Result<Fetched>,
        Result<Fetched>,
    ) {
        let backend = RejectsFirst {
            origin: Instant::now(),
            slow: 8,
            delay: Duration::from_secs(5),
            slow_wait: Duration::from_secs(60),
            fast_wait: Duration::from_secs(10),
            sends: std::sync::Mutex::default(),
        };
        let paced = Arc::new(RateLimited::new(backend, policy).unwrap());
        let b = {
            let paced = Arc::clone(&paced);
            tokio::spawn(async move { paced.get(&PrRef::new("acme", "widgets", 8)?, None).await })
        };
        tokio::task::yield_now().await;
        let a = paced.get(&pr(), None).await;
        let b = b.await.unwrap();
        (paced, a, b)
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_extended_by_another_calls_rejection_is_honoured_to_its_new_end() {
        let (paced, a, b) = a_rejection_lands_while_another_call_waits(policy()).await;
        a.unwrap();
        b.unwrap();
        let (a_sends, b_sends) = (paced.inner().sends_of(7), paced.inner().sends_of(8));
        assert_eq!((a_sends[0], b_sends[0]), (Duration::ZERO, Duration::ZERO));
        assert!(
            a_sends[1] >= Duration::from_secs(65),
            "A sent again at {:?}, inside the wait B's rejection asked for",
            a_sends[1]
        );
        assert_eq!(a_sends[1], b_sends[1], "one block releases both, no later");
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_extended_beyond_the_longest_wait_fails_fast_instead_of_parking() {
        let policy = RateLimitPolicy {
            max_wait: Duration::from_secs(30),
            ..policy()
        };
        let (paced, a, b) = a_rejection_lands_while_another_call_waits(policy).await;
        let a = a.unwrap_err();
        assert!(matches!(a, Error::RateLimited { .. }), "{a}");
        assert!(a.retry_after().unwrap() >= Duration::from_secs(55), "{a}");
        assert!(matches!(b, Err(Error::RateLimited { .. })), "{b:?}");
        assert_eq!(
            paced.inner().sends_of(7),
            [Duration::ZERO],
            "A never re-sent"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn mutations_go_out_one_at_a_time_with_the_spacing_and_reads_do_not_wait() {
        let mut mock = MockLabelBackend::new();
        mock.expect_rate_limit().returning(|| None);
        let starts = Arc::new(std::sync::Mutex::new(Vec::new()));
        let recorded = Arc::clone(&starts);
        let origin = Instant::now();
        mock.expect_add().times(3).returning(move |_, _| {
            recorded.lock().unwrap().push(origin.elapsed());
            Ok(LabelSet::default())
        });
        mock.expect_get().times(1).returning(|_, _| Ok(labels()));
        let paced = Arc::new(RateLimited::new(mock, policy()).unwrap());
        let mut tasks = Vec::new();
        for _ in 0..3 {
            let paced = Arc::clone(&paced);
            tasks.push(tokio::spawn(async move {
                paced.add(&pr(), &["a".to_owned()]).await
            }));
        }
        tokio::task::yield_now().await;
        let read_started = Instant::now();
        paced.get(&pr(), None).await.unwrap();
        assert_eq!(
            read_started.elapsed(),
            Duration::ZERO,
            "reads are not spaced"
        );
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let starts = starts.lock().unwrap();
        assert_eq!(*starts, [0, 1, 2].map(Duration::from_secs));
    }

    #[tokio::test(start_paused = true)]
    async fn an_absurd_retry_after_fails_fast_instead_of_panicking() {
        let mut mock = MockLabelBackend::new();
        mock.expect_rate_limit().returning(|| None);
        mock.expect_get().times(1).returning(|_, _| {
            Err(Error::RateLimited {
                retry_after: Some(Duration::from_secs(u64::MAX)),
                reset: None,
            })
        });
        let paced = RateLimited::new(mock, policy()).unwrap();
        let err = paced.get(&pr(), None).await.unwrap_err();
        assert!(matches!(err, Error::RateLimited { .. }), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_longer_than_the_longest_wait_makes_later_calls_fail_fast_too() {
        let mut mock = MockLabelBackend::new();
        mock.expect_rate_limit().returning(|| None);
        // Only the first call reaches GitHub: the others are told to wait
        // two hours, which is beyond `max_wait`.
        mock.expect_get().times(1).returning(|_, _| {
            Err(Error::RateLimited {
                retry_after: Some(Duration::from_secs(2 * 3600)),
                reset: None,
            })
        });
        let paced = RateLimited::new(mock, policy()).unwrap();
        assert!(paced.get(&pr(), None).await.is_err());
        let started = Instant::now();
        let err = paced.get(&pr(), None).await.unwrap_err();
        assert_eq!(started.elapsed(), Duration::ZERO, "no wait beyond max_wait");
        let asked = err.retry_after().unwrap();
        assert!(
            asked > Duration::from_secs(3600) && asked <= Duration::from_secs(2 * 3600),
            "{asked:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_budget_wait_ends_as_soon_as_the_token_fires() {
        let mut mock = MockLabelBackend::new();
        let low = budget(0, Duration::from_secs(600));
        mock.expect_rate_limit().returning(move || Some(low));
        let paced = Arc::new(
            RateLimited::new(mock, policy())
                .unwrap()
                .with_cancellation(CancellationToken::new()),
        );
        let cancel = paced.cancel.clone();
        let waiting = {
            let paced = Arc::clone(&paced);
            tokio::spawn(async move { paced.get(&pr(), None).await })
        };
        tokio::time::sleep(Duration::from_secs(5)).await;
        let started = Instant::now();
        cancel.cancel();
        let err = waiting.await.unwrap().unwrap_err();
        assert!(matches!(err, Error::Cancelled), "{err}");
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn after_cancellation_a_call_that_needs_no_wait_is_still_sent() {
        let mut mock = MockLabelBackend::new();
        mock.expect_rate_limit().returning(|| None);
        mock.expect_add()
            .times(1)
            .returning(|_, _| Ok(LabelSet::default()));
        let cancel = CancellationToken::new();
        cancel.cancel();
        let paced = RateLimited::new(mock, policy())
            .unwrap()
            .with_cancellation(cancel);
        paced.add(&pr(), &["undo".to_owned()]).await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn an_exhausted_budget_is_waited_out_even_when_retry_after_is_shorter() {
        let mut mock = MockLabelBackend::new();
        mock.expect_rate_limit().returning(|| None);
        let reset = budget(0, Duration::from_secs(120)).reset;
        let mut seq = mockall::Sequence::new();
        mock.expect_get()
            .times(1)
            .in_sequence(&mut seq)
            .returning(move |_, _| {
                Err(Error::RateLimited {
                    retry_after: Some(Duration::from_secs(10)),
                    reset: Some(reset),
                })
            });
        mock.expect_get()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_, _| Ok(labels()));
        let paced = RateLimited::new(mock, policy()).unwrap();
        let started = Instant::now();
        paced.get(&pr(), None).await.unwrap();
        // The wall clock does not move with paused time: the reset is
        // still 119–120 s away when the wait is computed.
        assert!(
            started.elapsed() >= Duration::from_secs(119),
            "{:?}",
            started.elapsed()
        );
    }

    /// A backend whose mutations take `took` and succeed.
    struct Slow {
        took: Duration,
        inner: crate::MemoryLabels,
    }

    #[async_trait]
    impl LabelBackend for Slow {
        async fn get<'a>(&self, pr: &PrRef, if_none_match: Option<&'a ETag>) -> Result<Fetched> {
            self.inner.get(pr, if_none_match).await
        }
        async fn add(&self, pr: &PrRef, names: &[String]) -> Result<LabelSet> {
            tokio::time::sleep(self.took).await;
            self.inner.add(pr, names).await
        }
        async fn remove(&self, pr: &PrRef, name: &str) -> Result<RemoveOutcome> {
            tokio::time::sleep(self.took).await;
            self.inner.remove(pr, name).await
        }
        async fn replace(&self, pr: &PrRef, names: &[String]) -> Result<LabelSet> {
            tokio::time::sleep(self.took).await;
            self.inner.replace(pr, names).await
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_mutation_behind_a_queue_longer_than_max_wait_fails_fast_instead_of_parking() {
        let metrics = Metrics::default();
        let paced = Arc::new(
            RateLimited::new(
                Slow {
                    took: Duration::from_secs(8),
                    inner: crate::MemoryLabels::new(),
                },
                RateLimitPolicy {
                    mutation_spacing: Duration::ZERO,
                    max_wait: Duration::from_secs(5),
                    ..policy()
                },
            )
            .unwrap()
            .with_metrics(metrics.clone()),
        );
        let first = tokio::spawn({
            let paced = Arc::clone(&paced);
            async move { paced.add(&pr(), &["a".to_owned()]).await }
        });
        tokio::task::yield_now().await;
        let started = Instant::now();
        let err = paced.add(&pr(), &["b".to_owned()]).await.unwrap_err();
        assert!(
            matches!(err, Error::RateLimited { retry_after: Some(after), reset: None } if after >= QUEUE_RETRY),
            "{err:?}"
        );
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        assert_eq!(metrics.rate_limit_waits("queue_full"), 1);
        // Reads do not queue behind mutations, and the one in flight lands.
        paced.get(&pr(), None).await.unwrap();
        assert!(first.await.unwrap().unwrap().contains("a"));
        let after = paced.add(&pr(), &["b".to_owned()]).await.unwrap();
        assert!(after.contains("a") && after.contains("b"));
    }

    #[test]
    fn policies_that_cannot_work_are_rejected() {
        for policy in [
            RateLimitPolicy {
                max_wait: Duration::ZERO,
                ..RateLimitPolicy::default()
            },
            RateLimitPolicy {
                mutation_spacing: Duration::MAX,
                ..RateLimitPolicy::default()
            },
        ] {
            assert!(matches!(
                RateLimited::new(MockLabelBackend::new(), policy),
                Err(Error::Config { .. })
            ));
        }
    }
}
