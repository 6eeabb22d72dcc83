//! Retrying fallible async operations.
//!
//! Rule kept here: only errors classified transient are retried, and every
//! wait is bounded — by the attempt budget, by an optional time budget, by
//! `max_retry_after` for server-requested delays, and by cancellation.
//!
//! [`Transient`] is the one trait every supersede error enum implements, so
//! [`retry_transient`] can retry any of them without a custom classifier.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backoff::{Backoff, BackoffPolicy};
use crate::error::Error;

/// An error that knows whether trying again can help.
pub trait Transient {
    /// `true` when the same call may succeed later (timeouts, 409 conflicts,
    /// 429/5xx, connection resets); `false` when it never will as is.
    fn is_transient(&self) -> bool;

    /// How long the server asked us to wait (`Retry-After`), if it did.
    fn retry_after(&self) -> Option<Duration> {
        None
    }

    /// The [`Classification`] [`retry`] acts on.
    fn classification(&self) -> Classification {
        if self.is_transient() {
            Classification::Transient {
                retry_after: self.retry_after(),
            }
        } else {
            Classification::Permanent
        }
    }
}

impl Transient for std::io::Error {
    fn is_transient(&self) -> bool {
        use std::io::ErrorKind::*;
        matches!(
            self.kind(),
            Interrupted
                | WouldBlock
                | TimedOut
                | ConnectionRefused
                | ConnectionReset
                | ConnectionAborted
                | NotConnected
                | BrokenPipe
                | UnexpectedEof
        )
    }
}

/// What to do with one failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Classification {
    /// Try again, after at least `retry_after` if the server said so.
    Transient {
        /// The server's requested delay (`Retry-After`), if any.
        retry_after: Option<Duration>,
    },
    /// Give up now: trying again cannot help.
    Permanent,
}

/// How [`retry`] retries.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Delays between attempts (its own `max_attempts`, if set, also ends retrying).
    pub backoff: BackoffPolicy,
    /// Total attempts including the first one. At least 1.
    pub max_attempts: u32,
    /// Give up rather than start a wait that would end after this much time
    /// since the first attempt began. `None`: only `max_attempts` bounds it.
    pub max_elapsed: Option<Duration>,
    /// Upper bound on a server's `Retry-After`, so a hostile or confused
    /// server cannot park us for a day.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    /// Default backoff (1 s, ×2, ±25 %), 3 attempts, no time budget, Retry-After
    /// capped at 5 minutes.
    ///
    /// Why 3 attempts: DESIGN §2 retries a cancellation step at most 3 times;
    /// two retries ride out a conflict or a brief API blip (about 1 s + 2 s of
    /// waiting), while a longer outage is better handled by the
    /// level-triggered reconciler than by a caller blocked in a loop.
    /// The time budget is off because 3 attempts already bound the wait to
    /// about 2 × `max_retry_after` in the worst case. Five minutes covers
    /// GitHub's secondary rate-limit windows, the longest legitimate
    /// Retry-After we expect.
    fn default() -> Self {
        Self {
            backoff: BackoffPolicy::default(),
            max_attempts: 3,
            max_elapsed: None,
            max_retry_after: Duration::from_secs(5 * 60),
        }
    }
}

impl RetryPolicy {
    /// Rejects a zero attempt budget, a zero time budget and an invalid backoff.
    pub fn validate(&self) -> Result<(), Error> {
        self.backoff.validate()?;
        if self.max_attempts == 0 {
            return Err(Error::invalid("retry", "max_attempts must be at least 1"));
        }
        if self.max_elapsed.is_some_and(|d| d.is_zero()) {
            return Err(Error::invalid(
                "retry",
                "max_elapsed must be greater than zero (or None)",
            ));
        }
        Ok(())
    }
}

/// Why [`retry`] gave up.
#[derive(Debug)]
pub enum RetryError<E> {
    /// The operation failed with an error classified permanent.
    Permanent(E),
    /// Every allowed attempt failed transiently (or the time budget ran out).
    Exhausted {
        /// The last attempt's error.
        last: E,
        /// How many attempts were made.
        attempts: u32,
    },
    /// The cancellation token fired; `last` is the latest error seen, if any.
    Cancelled {
        /// The latest error before cancellation.
        last: Option<E>,
    },
}

impl<E> RetryError<E> {
    /// The underlying error, if an attempt failed before giving up.
    pub fn into_inner(self) -> Option<E> {
        match self {
            RetryError::Permanent(e) | RetryError::Exhausted { last: e, .. } => Some(e),
            RetryError::Cancelled { last } => last,
        }
    }

    /// A reference to the underlying error, if any.
    pub fn last(&self) -> Option<&E> {
        match self {
            RetryError::Permanent(e) | RetryError::Exhausted { last: e, .. } => Some(e),
            RetryError::Cancelled { last } => last.as_ref(),
        }
    }

    /// `true` when retrying stopped because of cancellation.
    pub fn is_cancelled(&self) -> bool {
        matches!(self, RetryError::Cancelled { .. })
    }
}

impl<E: fmt::Display> fmt::Display for RetryError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RetryError::Permanent(e) => write!(f, "permanent failure: {e}"),
            RetryError::Exhausted { last, attempts } => {
                write!(f, "gave up after {attempts} attempts: {last}")
            }
            RetryError::Cancelled { last: Some(e) } => write!(f, "cancelled while retrying: {e}"),
            RetryError::Cancelled { last: None } => write!(f, "cancelled before the first attempt"),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for RetryError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.last().map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl<E: Transient> Transient for RetryError<E> {
    /// An exhausted transient error is still transient: a caller with a
    /// bigger budget (or the reconciler's next cycle) may still succeed.
    fn is_transient(&self) -> bool {
        match self {
            RetryError::Exhausted { last, .. } => last.is_transient(),
            RetryError::Permanent(_) | RetryError::Cancelled { .. } => false,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            RetryError::Exhausted { last, .. } => last.retry_after(),
            RetryError::Permanent(_) | RetryError::Cancelled { .. } => None,
        }
    }
}

/// Runs `op` until it succeeds, fails permanently, runs out of attempts or
/// time, or `cancel` fires.
///
/// `op` receives the attempt number (1-based). After a transient failure the
/// wait is `max(backoff delay, min(retry_after, policy.max_retry_after))`.
/// An attempt in flight when `cancel` fires is dropped (that is how futures
/// are cancelled); an operation that must not be interrupted half-way should
/// spawn its critical part.
///
/// ```
/// use std::time::Duration;
/// use resilience::{retry, Classification, RetryError, RetryPolicy};
/// use tokio_util::sync::CancellationToken;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let result: Result<u32, RetryError<&str>> = retry(
///     &RetryPolicy::default(),
///     &CancellationToken::new(),
///     |_: &&str| Classification::Transient { retry_after: None },
///     |attempt| async move { if attempt < 3 { Err("busy") } else { Ok(attempt) } },
/// )
/// .await;
/// assert_eq!(result.unwrap(), 3);
/// # }
/// ```
pub async fn retry<T, E, Op, Fut, C>(
    policy: &RetryPolicy,
    cancel: &CancellationToken,
    classify: C,
    mut op: Op,
) -> Result<T, RetryError<E>>
where
    E: fmt::Display,
    Op: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T, E>>,
    C: Fn(&E) -> Classification,
{
    let started = Instant::now();
    let max_attempts = policy.max_attempts.max(1);
    let mut backoff = Backoff::new(policy.backoff.clone());
    let mut last: Option<E> = None;
    let mut attempt: u32 = 0;
    loop {
        if cancel.is_cancelled() {
            return Err(RetryError::Cancelled { last });
        }
        attempt += 1;
        let outcome = tokio::select! {
            biased;
            () = cancel.cancelled() => return Err(RetryError::Cancelled { last }),
            outcome = op(attempt) => outcome,
        };
        let error = match outcome {
            Ok(value) => {
                if attempt > 1 {
                    tracing::debug!(attempt, "operation succeeded after retrying");
                }
                return Ok(value);
            }
            Err(error) => error,
        };
        let retry_after = match classify(&error) {
            Classification::Permanent => {
                tracing::debug!(attempt, %error, "permanent failure, not retrying");
                return Err(RetryError::Permanent(error));
            }
            Classification::Transient { retry_after } => retry_after,
        };
        let exhausted = |error| {
            tracing::warn!(attempt, %error, "transient failure, giving up");
            Err(RetryError::Exhausted {
                last: error,
                attempts: attempt,
            })
        };
        if attempt >= max_attempts {
            return exhausted(error);
        }
        let Some(backoff_delay) = backoff.next_delay() else {
            return exhausted(error);
        };
        let delay = match retry_after {
            Some(asked) => backoff_delay.max(asked.min(policy.max_retry_after)),
            None => backoff_delay,
        };
        if policy
            .max_elapsed
            .is_some_and(|budget| started.elapsed().saturating_add(delay) > budget)
        {
            return exhausted(error);
        }
        tracing::info!(
            attempt,
            delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            retry_after_ms = retry_after.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            %error,
            "transient failure, retrying",
        );
        last = Some(error);
        tokio::select! {
            biased;
            () = cancel.cancelled() => return Err(RetryError::Cancelled { last }),
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// [`retry`] with the error's own [`Transient`] classification.
pub async fn retry_transient<T, E, Op, Fut>(
    policy: &RetryPolicy,
    cancel: &CancellationToken,
    op: Op,
) -> Result<T, RetryError<E>>
where
    E: Transient + fmt::Display,
    Op: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    retry(policy, cancel, E::classification, op).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[derive(Debug, Clone, PartialEq)]
    enum TestError {
        Busy,
        RateLimited(Duration),
        Invalid,
    }

    impl fmt::Display for TestError {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "{self:?}")
        }
    }

    impl std::error::Error for TestError {}

    impl Transient for TestError {
        fn is_transient(&self) -> bool {
            !matches!(self, TestError::Invalid)
        }
        fn retry_after(&self) -> Option<Duration> {
            match self {
                TestError::RateLimited(d) => Some(*d),
                _ => None,
            }
        }
    }

    /// Backoff without jitter so the paused clock can be asserted exactly.
    fn policy(max_attempts: u32) -> RetryPolicy {
        RetryPolicy {
            backoff: BackoffPolicy {
                jitter: 0.0,
                ..BackoffPolicy::default()
            },
            max_attempts,
            ..RetryPolicy::default()
        }
    }

    /// An operation failing with `errors` in turn, then succeeding.
    fn scripted(
        errors: Vec<TestError>,
        calls: Arc<AtomicU32>,
    ) -> impl FnMut(u32) -> futures::future::Ready<Result<u32, TestError>> {
        move |attempt| {
            calls.fetch_add(1, Ordering::SeqCst);
            let index = usize::try_from(attempt - 1).unwrap();
            futures::future::ready(match errors.get(index) {
                Some(e) => Err(e.clone()),
                None => Ok(attempt),
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn transient_failures_are_retried_with_backoff_until_success() {
        let calls = Arc::new(AtomicU32::new(0));
        let start = Instant::now();
        let result = retry_transient(
            &policy(3),
            &CancellationToken::new(),
            scripted(vec![TestError::Busy, TestError::Busy], calls.clone()),
        )
        .await;
        assert_eq!(result.unwrap(), 3);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        // 1 s then 2 s of backoff.
        assert_eq!(start.elapsed(), Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_error_stops_at_once() {
        let calls = Arc::new(AtomicU32::new(0));
        let start = Instant::now();
        let result = retry_transient(
            &policy(5),
            &CancellationToken::new(),
            scripted(vec![TestError::Busy, TestError::Invalid], calls.clone()),
        )
        .await;
        assert!(matches!(
            result,
            Err(RetryError::Permanent(TestError::Invalid))
        ));
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert_eq!(start.elapsed(), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn retrying_stops_at_max_attempts_with_the_last_error() {
        let calls = Arc::new(AtomicU32::new(0));
        let result = retry_transient(
            &policy(3),
            &CancellationToken::new(),
            scripted(vec![TestError::Busy; 10], calls.clone()),
        )
        .await;
        match result {
            Err(RetryError::Exhausted { last, attempts }) => {
                assert_eq!(last, TestError::Busy);
                assert_eq!(attempts, 3);
            }
            other => panic!("expected Exhausted, got {other:?}"),
        }
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_longer_than_the_backoff_is_honoured() {
        let calls = Arc::new(AtomicU32::new(0));
        let start = Instant::now();
        let result = retry_transient(
            &policy(3),
            &CancellationToken::new(),
            scripted(
                vec![TestError::RateLimited(Duration::from_secs(30))],
                calls.clone(),
            ),
        )
        .await;
        assert_eq!(result.unwrap(), 2);
        // The server's 30 s, not the 1 s backoff.
        assert_eq!(start.elapsed(), Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_shorter_than_the_backoff_does_not_shorten_it() {
        let start = Instant::now();
        let result = retry_transient(
            &policy(3),
            &CancellationToken::new(),
            scripted(
                vec![TestError::RateLimited(Duration::from_millis(10))],
                Arc::default(),
            ),
        )
        .await;
        assert_eq!(result.unwrap(), 2);
        assert_eq!(start.elapsed(), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn hostile_retry_after_is_capped_by_max_retry_after() {
        let start = Instant::now();
        let policy = RetryPolicy {
            max_retry_after: Duration::from_secs(90),
            ..policy(3)
        };
        let result = retry_transient(
            &policy,
            &CancellationToken::new(),
            scripted(
                vec![TestError::RateLimited(Duration::from_secs(86_400))],
                Arc::default(),
            ),
        )
        .await;
        assert_eq!(result.unwrap(), 2);
        assert_eq!(start.elapsed(), Duration::from_secs(90));
    }

    #[tokio::test(start_paused = true)]
    async fn cancellation_during_the_wait_stops_retrying_with_the_last_error() {
        let cancel = CancellationToken::new();
        let calls = Arc::new(AtomicU32::new(0));
        let canceller = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            canceller.cancel();
        });
        let start = Instant::now();
        let result = retry_transient(
            &policy(5),
            &cancel,
            scripted(vec![TestError::Busy; 10], calls.clone()),
        )
        .await;
        match result {
            Err(RetryError::Cancelled { last }) => assert_eq!(last, Some(TestError::Busy)),
            other => panic!("expected Cancelled, got {other:?}"),
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(start.elapsed(), Duration::from_millis(500));
    }

    #[tokio::test(start_paused = true)]
    async fn cancelled_token_prevents_the_first_attempt() {
        let cancel = CancellationToken::new();
        cancel.cancel();
        let calls = Arc::new(AtomicU32::new(0));
        let result = retry_transient(&policy(3), &cancel, scripted(vec![], calls.clone())).await;
        assert!(matches!(result, Err(RetryError::Cancelled { last: None })));
        assert_eq!(calls.load(Ordering::SeqCst), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn cancellation_drops_an_attempt_in_flight() {
        let cancel = CancellationToken::new();
        let canceller = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            canceller.cancel();
        });
        let start = Instant::now();
        let result: Result<(), RetryError<TestError>> =
            retry_transient(&policy(3), &cancel, |_| async {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok(())
            })
            .await;
        assert!(result.unwrap_err().is_cancelled());
        assert_eq!(start.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn time_budget_ends_retrying_before_a_wait_that_would_overrun_it() {
        let calls = Arc::new(AtomicU32::new(0));
        let policy = RetryPolicy {
            max_elapsed: Some(Duration::from_secs(5)),
            ..policy(10)
        };
        let start = Instant::now();
        let result = retry_transient(
            &policy,
            &CancellationToken::new(),
            scripted(vec![TestError::Busy; 10], calls.clone()),
        )
        .await;
        // Waits 1 s + 2 s; the next wait (4 s) would end at 7 s > 5 s.
        assert!(matches!(
            result,
            Err(RetryError::Exhausted { attempts: 3, .. })
        ));
        assert_eq!(start.elapsed(), Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn custom_classifier_overrides_the_error_itself() {
        let calls = Arc::new(AtomicU32::new(0));
        let result = retry(
            &policy(5),
            &CancellationToken::new(),
            |_: &TestError| Classification::Permanent,
            scripted(vec![TestError::Busy], calls.clone()),
        )
        .await;
        assert!(matches!(
            result,
            Err(RetryError::Permanent(TestError::Busy))
        ));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn exhausted_transient_error_is_still_transient() {
        let exhausted = RetryError::Exhausted {
            last: TestError::RateLimited(Duration::from_secs(7)),
            attempts: 3,
        };
        assert!(exhausted.is_transient());
        assert_eq!(exhausted.retry_after(), Some(Duration::from_secs(7)));
        assert!(!RetryError::Permanent(TestError::Busy).is_transient());
        assert!(!RetryError::<TestError>::Cancelled { last: None }.is_transient());
    }

    #[test]
    fn retry_error_exposes_and_describes_the_underlying_error() {
        let exhausted = RetryError::Exhausted {
            last: TestError::Busy,
            attempts: 3,
        };
        assert_eq!(exhausted.to_string(), "gave up after 3 attempts: Busy");
        assert!(std::error::Error::source(&exhausted).is_some());
        assert_eq!(exhausted.last(), Some(&TestError::Busy));
        assert_eq!(exhausted.into_inner(), Some(TestError::Busy));
        assert_eq!(
            RetryError::<TestError>::Cancelled { last: None }.into_inner(),
            None
        );
    }

    #[test]
    fn retry_policy_validation_rejects_zero_budgets() {
        assert!(RetryPolicy::default().validate().is_ok());
        let zero_attempts = RetryPolicy {
            max_attempts: 0,
            ..RetryPolicy::default()
        };
        assert!(zero_attempts.validate().is_err());
        let zero_time = RetryPolicy {
            max_elapsed: Some(Duration::ZERO),
            ..RetryPolicy::default()
        };
        assert!(zero_time.validate().is_err());
    }

    #[test]
    fn io_errors_are_classified_by_kind() {
        use std::io::{Error as IoError, ErrorKind};
        assert!(IoError::from(ErrorKind::TimedOut).is_transient());
        assert!(IoError::from(ErrorKind::ConnectionReset).is_transient());
        assert!(!IoError::from(ErrorKind::PermissionDenied).is_transient());
        assert_eq!(
            IoError::from(ErrorKind::NotFound).classification(),
            Classification::Permanent
        );
    }
}
