//! Exponential backoff with symmetric jitter, as an iterator of delays.
//!
//! Rule kept here: the base delay never exceeds [`BackoffPolicy::max`]; jitter
//! then spreads it by at most ±`jitter`, so no delay is ever above
//! `max · (1 + jitter)` and none below `base · (1 − jitter)`.
//!
//! # Why `backon` plus our own jitter
//!
//! The exponential growth and the cap come from `backon`'s
//! [`ExponentialBuilder`] (jitter off). `backon`'s own jitter cannot express
//! what we want: it *adds* a uniform random amount in `(0, current_delay)`, so
//! the delay lands anywhere in `[d, 2d)`, always upwards and up to +100 %.
//! We want ±25 % around the base (the spread client-go and most operators'
//! alerting expect), so the jitter is applied here, on top of backon's base.
//!
//! # Cap before jitter
//!
//! Like client-go's `wait.Backoff` (which caps `next` and jitters afterwards),
//! the cap applies to the base, before jitter. Capping after jitter would pile
//! every draw above the cap onto exactly `max`: once many clients reach the
//! cap, about half of them would retry at the same instant, which is the
//! thundering herd jitter exists to prevent. The price is that a delay can be
//! up to `max · (1 + jitter)` (75 s with the defaults).

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio_util::sync::CancellationToken;

use crate::error::Error;

/// How delays grow between attempts. Plain data: validate it with
/// [`BackoffPolicy::validate`] where it comes from configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct BackoffPolicy {
    /// The first delay (before jitter). Must be greater than zero.
    pub initial: Duration,
    /// Growth factor per attempt. Must be at least 1.
    pub multiplier: f64,
    /// The largest base delay (jitter may take a delay up to `max · (1 + jitter)`).
    pub max: Duration,
    /// Relative spread around the base delay, in `[0, 1]`: 0.25 means ±25 %.
    pub jitter: f64,
    /// How many delays to hand out before stopping; `None` never stops.
    pub max_attempts: Option<u32>,
}

impl Default for BackoffPolicy {
    /// 1 s, ×2, capped at 60 s, ±25 % jitter, unlimited.
    ///
    /// Why: 1 s is long enough not to hammer an API server that just answered
    /// 409/429/5xx and short enough that a single conflict costs little;
    /// doubling reaches the 60 s cap after 6 steps, and 60 s keeps a long
    /// outage from leaving us asleep for minutes after it ends. ±25 % spreads
    /// replicas that failed together without making delays unpredictable.
    /// Unlimited because loops that use a bare `Backoff` (watches,
    /// reconnects) run until cancelled; bounded retries use `RetryPolicy`.
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(1),
            multiplier: 2.0,
            max: Duration::from_secs(60),
            jitter: 0.25,
            max_attempts: None,
        }
    }
}

impl BackoffPolicy {
    /// Rejects values that make no sense: a zero initial delay, a multiplier
    /// below 1 (or not a number), jitter outside `[0, 1]`, `initial > max`,
    /// and `max_attempts == Some(0)`.
    pub fn validate(&self) -> Result<(), Error> {
        let invalid = |reason: String| Err(Error::invalid("backoff", reason));
        if self.initial.is_zero() {
            return invalid("initial delay must be greater than zero".into());
        }
        if !self.multiplier.is_finite() || self.multiplier < 1.0 {
            return invalid(format!(
                "multiplier must be a finite number >= 1, got {}",
                self.multiplier
            ));
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return invalid(format!("jitter must be within [0, 1], got {}", self.jitter));
        }
        if self.initial > self.max {
            return invalid(format!(
                "initial delay {:?} is larger than max {:?}",
                self.initial, self.max
            ));
        }
        if self.max_attempts == Some(0) {
            return invalid("max_attempts must be at least 1 (or None for unlimited)".into());
        }
        Ok(())
    }

    /// A copy with out-of-range values pulled to the nearest valid one, so a
    /// `Backoff` can always be built without panicking on bad input.
    fn sanitized(self) -> Self {
        let initial = self.initial.max(Duration::from_millis(1));
        let multiplier = if self.multiplier.is_finite() {
            self.multiplier.max(1.0)
        } else {
            1.0
        };
        let jitter = if self.jitter.is_nan() {
            0.0
        } else {
            self.jitter.clamp(0.0, 1.0)
        };
        Self {
            initial,
            multiplier,
            max: self.max.max(initial),
            jitter,
            max_attempts: self.max_attempts.map(|n| n.max(1)),
        }
    }

    /// The largest delay this policy can produce: `max · (1 + jitter)`.
    pub fn upper_bound(&self) -> Duration {
        let p = self.clone().sanitized();
        scale(p.max, 1.0 + p.jitter)
    }
}

/// A stream of delays following a [`BackoffPolicy`].
///
/// ```
/// use std::time::Duration;
/// use resilience::{Backoff, BackoffPolicy};
///
/// let policy = BackoffPolicy { jitter: 0.0, max_attempts: Some(3), ..BackoffPolicy::default() };
/// let delays: Vec<Duration> = Backoff::new(policy).collect();
/// assert_eq!(delays, [1, 2, 4].map(Duration::from_secs));
/// ```
#[derive(Debug)]
pub struct Backoff {
    policy: BackoffPolicy,
    base: ExponentialBackoff,
    rng: StdRng,
    attempts: u32,
}

impl Backoff {
    /// Starts a backoff. Never fails: out-of-range policy values are pulled
    /// into range (use [`BackoffPolicy::validate`] to reject them instead).
    pub fn new(policy: BackoffPolicy) -> Self {
        Self::with_rng(policy, StdRng::from_os_rng())
    }

    /// Like [`Backoff::new`] with a fixed jitter seed: the same seed gives
    /// the same delays, which makes tests reproducible.
    pub fn with_rng_seed(policy: BackoffPolicy, seed: u64) -> Self {
        Self::with_rng(policy, StdRng::seed_from_u64(seed))
    }

    fn with_rng(policy: BackoffPolicy, rng: StdRng) -> Self {
        let policy = policy.sanitized();
        Self {
            base: base_sequence(&policy),
            policy,
            rng,
            attempts: 0,
        }
    }

    /// The next delay, or `None` once `max_attempts` delays were handed out.
    pub fn next_delay(&mut self) -> Option<Duration> {
        if self
            .policy
            .max_attempts
            .is_some_and(|max| self.attempts >= max)
        {
            return None;
        }
        // backon is built without max_times, so it never runs dry; fall back
        // to the cap rather than trusting that forever.
        let base = self
            .base
            .next()
            .unwrap_or(self.policy.max)
            .min(self.policy.max);
        self.attempts = self.attempts.saturating_add(1);
        Some(self.jittered(base))
    }

    /// Starts over from the initial delay (call it after a success).
    pub fn reset(&mut self) {
        self.base = base_sequence(&self.policy);
        self.attempts = 0;
    }

    /// How many delays were handed out since creation or the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The (sanitized) policy this backoff follows.
    pub fn policy(&self) -> &BackoffPolicy {
        &self.policy
    }

    /// Sleeps for the next delay unless `cancel` fires first.
    ///
    /// Returns the delay slept, [`Error::Cancelled`] if the token fired
    /// (immediately, without sleeping, if it already had), or
    /// [`Error::BackoffExhausted`] when `max_attempts` is used up.
    ///
    /// ```
    /// # use resilience::{Backoff, BackoffPolicy, Error};
    /// # use tokio_util::sync::CancellationToken;
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let cancel = CancellationToken::new();
    /// let mut backoff = Backoff::new(BackoffPolicy::default());
    /// cancel.cancel();
    /// assert!(matches!(backoff.sleep_or_cancel(&cancel).await, Err(Error::Cancelled)));
    /// # }
    /// ```
    pub async fn sleep_or_cancel(&mut self, cancel: &CancellationToken) -> Result<Duration, Error> {
        if cancel.is_cancelled() {
            return Err(Error::Cancelled);
        }
        let delay = self.next_delay().ok_or(Error::BackoffExhausted {
            attempts: self.attempts,
        })?;
        tokio::select! {
            biased;
            () = cancel.cancelled() => Err(Error::Cancelled),
            () = tokio::time::sleep(delay) => Ok(delay),
        }
    }

    /// Spreads `base` uniformly over `[base·(1−j), base·(1+j)]`, then clamps
    /// to the documented hard bound so float rounding can never exceed it.
    fn jittered(&mut self, base: Duration) -> Duration {
        let jitter = self.policy.jitter;
        if jitter == 0.0 {
            return base;
        }
        let factor = 1.0 + jitter * self.rng.random_range(-1.0..=1.0);
        scale(base, factor).min(scale(self.policy.max, 1.0 + jitter))
    }
}

impl Iterator for Backoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        self.next_delay()
    }
}

/// backon's un-jittered exponential sequence: initial, ·m, ·m², … capped at max.
fn base_sequence(policy: &BackoffPolicy) -> ExponentialBackoff {
    // backon computes in f32: growth is exact for power-of-two factors and
    // whole-second delays, and otherwise off by well under a microsecond.
    #[allow(clippy::cast_possible_truncation)]
    let factor = policy.multiplier as f32;
    ExponentialBuilder::new()
        .with_min_delay(policy.initial)
        .with_max_delay(policy.max)
        .with_factor(factor)
        .without_max_times()
        .build()
}

/// `d · factor`, saturating instead of panicking on overflow or bad floats.
fn scale(d: Duration, factor: f64) -> Duration {
    Duration::try_from_secs_f64(d.as_secs_f64() * factor).unwrap_or(if factor > 0.0 {
        Duration::MAX
    } else {
        Duration::ZERO
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn exact(initial_secs: u64, max_secs: u64) -> BackoffPolicy {
        BackoffPolicy {
            initial: Duration::from_secs(initial_secs),
            multiplier: 2.0,
            max: Duration::from_secs(max_secs),
            jitter: 0.0,
            max_attempts: None,
        }
    }

    #[test]
    fn delays_double_from_the_initial_delay() {
        let delays: Vec<_> = Backoff::new(exact(1, 3600)).take(5).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16].map(Duration::from_secs));
    }

    #[test]
    fn base_delay_stops_growing_at_the_cap() {
        let delays: Vec<_> = Backoff::new(exact(1, 60)).take(9).collect();
        assert_eq!(
            delays,
            [1, 2, 4, 8, 16, 32, 60, 60, 60].map(Duration::from_secs)
        );
    }

    #[test]
    fn reset_starts_again_from_the_initial_delay() {
        let mut backoff = Backoff::new(exact(1, 60));
        for _ in 0..4 {
            backoff.next_delay();
        }
        assert_eq!(backoff.attempts(), 4);
        backoff.reset();
        assert_eq!(backoff.attempts(), 0);
        assert_eq!(backoff.next_delay(), Some(Duration::from_secs(1)));
        assert_eq!(backoff.next_delay(), Some(Duration::from_secs(2)));
    }

    #[test]
    fn max_attempts_ends_the_sequence_until_reset() {
        let policy = BackoffPolicy {
            max_attempts: Some(2),
            ..exact(1, 60)
        };
        let mut backoff = Backoff::new(policy);
        assert_eq!(backoff.by_ref().count(), 2);
        assert_eq!(backoff.next_delay(), None);
        backoff.reset();
        assert_eq!(backoff.next_delay(), Some(Duration::from_secs(1)));
    }

    #[test]
    fn default_policy_is_one_second_doubling_to_a_minute_with_quarter_jitter() {
        let policy = BackoffPolicy::default();
        assert_eq!(policy.initial, Duration::from_secs(1));
        assert_eq!(policy.multiplier, 2.0);
        assert_eq!(policy.max, Duration::from_secs(60));
        assert_eq!(policy.jitter, 0.25);
        assert_eq!(policy.max_attempts, None);
        assert!(policy.validate().is_ok());
        assert_eq!(policy.upper_bound(), Duration::from_secs(75));
    }

    #[test]
    fn validate_rejects_nonsense_policies() {
        let ok = BackoffPolicy::default();
        let bad = [
            BackoffPolicy {
                multiplier: 0.5,
                ..ok.clone()
            },
            BackoffPolicy {
                multiplier: f64::NAN,
                ..ok.clone()
            },
            BackoffPolicy {
                jitter: 1.5,
                ..ok.clone()
            },
            BackoffPolicy {
                jitter: -0.1,
                ..ok.clone()
            },
            BackoffPolicy {
                initial: Duration::from_secs(120),
                ..ok.clone()
            },
            BackoffPolicy {
                initial: Duration::ZERO,
                ..ok.clone()
            },
            BackoffPolicy {
                max_attempts: Some(0),
                ..ok.clone()
            },
        ];
        for policy in bad {
            let err = policy.validate().expect_err("must be rejected");
            assert!(matches!(
                err,
                Error::InvalidPolicy {
                    policy: "backoff",
                    ..
                }
            ));
        }
    }

    #[test]
    fn nonsense_policy_still_builds_a_usable_backoff() {
        let policy = BackoffPolicy {
            initial: Duration::ZERO,
            multiplier: -3.0,
            max: Duration::ZERO,
            jitter: 7.0,
            max_attempts: Some(0),
        };
        let delays: Vec<_> = Backoff::with_rng_seed(policy, 1).collect();
        assert_eq!(delays.len(), 1);
        assert!(delays[0] <= Duration::from_millis(2));
    }

    #[test]
    fn same_seed_gives_same_delays() {
        let a: Vec<_> = Backoff::with_rng_seed(BackoffPolicy::default(), 42)
            .take(10)
            .collect();
        let b: Vec<_> = Backoff::with_rng_seed(BackoffPolicy::default(), 42)
            .take(10)
            .collect();
        assert_eq!(a, b);
    }

    #[test]
    fn jitter_spreads_delays_on_both_sides_of_the_base() {
        let policy = BackoffPolicy {
            max_attempts: Some(1),
            ..BackoffPolicy::default()
        };
        let (mut below, mut above) = (0, 0);
        for seed in 0..200 {
            let d = Backoff::with_rng_seed(policy.clone(), seed)
                .next_delay()
                .unwrap();
            if d < Duration::from_secs(1) {
                below += 1;
            } else if d > Duration::from_secs(1) {
                above += 1;
            }
        }
        // Symmetric jitter: both sides get a fair share (each ~100 of 200).
        assert!(below > 50 && above > 50, "below={below} above={above}");
    }

    #[tokio::test(start_paused = true)]
    async fn sleep_or_cancel_sleeps_the_delay_on_the_paused_clock() {
        let cancel = CancellationToken::new();
        let mut backoff = Backoff::new(exact(1, 60));
        let start = tokio::time::Instant::now();
        assert_eq!(
            backoff.sleep_or_cancel(&cancel).await.unwrap(),
            Duration::from_secs(1)
        );
        assert_eq!(
            backoff.sleep_or_cancel(&cancel).await.unwrap(),
            Duration::from_secs(2)
        );
        assert_eq!(start.elapsed(), Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn sleep_or_cancel_returns_as_soon_as_the_token_fires() {
        let cancel = CancellationToken::new();
        let mut backoff = Backoff::new(exact(10, 60));
        let start = tokio::time::Instant::now();
        let canceller = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            canceller.cancel();
        });
        let result = backoff.sleep_or_cancel(&cancel).await;
        assert!(matches!(result, Err(Error::Cancelled)));
        assert_eq!(start.elapsed(), Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn sleep_or_cancel_reports_exhaustion() {
        let cancel = CancellationToken::new();
        let policy = BackoffPolicy {
            max_attempts: Some(1),
            ..exact(1, 60)
        };
        let mut backoff = Backoff::new(policy);
        backoff.sleep_or_cancel(&cancel).await.unwrap();
        assert!(matches!(
            backoff.sleep_or_cancel(&cancel).await,
            Err(Error::BackoffExhausted { attempts: 1 })
        ));
    }

    proptest! {
        #[test]
        fn every_delay_stays_within_jitter_of_its_capped_base(
            initial_ms in 1u64..5_000,
            multiplier in 1.0f64..4.0,
            max_factor in 1u64..200,
            jitter in 0.0f64..=1.0,
            seed: u64,
        ) {
            let initial = Duration::from_millis(initial_ms);
            let max = initial * u32::try_from(max_factor).unwrap();
            let policy = BackoffPolicy { initial, multiplier, max, jitter, max_attempts: None };
            prop_assert!(policy.validate().is_ok());
            let upper = policy.upper_bound();
            let mut expected_base = initial.as_secs_f64();
            for delay in Backoff::with_rng_seed(policy, seed).take(30) {
                let base = expected_base.min(max.as_secs_f64());
                let d = delay.as_secs_f64();
                // 1e-4 relative slack absorbs backon's f32 arithmetic.
                let slack = base * 1e-4 + 1e-9;
                prop_assert!(d >= base * (1.0 - jitter) - slack, "{d} < {base}·(1-{jitter})");
                prop_assert!(d <= base * (1.0 + jitter) + slack, "{d} > {base}·(1+{jitter})");
                prop_assert!(delay <= upper, "{delay:?} above the hard bound {upper:?}");
                expected_base = base * multiplier;
            }
        }
    }
}
